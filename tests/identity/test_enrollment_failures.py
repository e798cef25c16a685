"""An enrollment whose job fails for a reason that is not its image is not reported as a rejected face.

The jobs here are not sent to the Celery worker: the test plays the worker's part itself, in a thread, with
the service calls the worker makes, while the request waits for the job (an infrastructure outage that lasts
through every retry, or a subject deleted at just the right time, cannot be staged for real against a live
worker).
"""

import threading
import time
from collections.abc import Callable

import pytest
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from django.db import connections

from identity import services
from identity.models import Face, Job, PendingObjectDeletion, Subject
from identity.tasks import enroll_face
from tenants.actors import Actor
from tenants.models import UsageRecord
from tenants.rls import operator_transaction, tenant_transaction
from tenants.services import reactivate_tenant, suspend_tenant
from tests.face_images import person_image
from tests.identity.conftest import bucket_keys, upload_file

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("jobs_not_dispatched")]


@pytest.fixture
def subject(tenant_api):
    gallery = tenant_api.create_gallery()
    return tenant_api.create_subject(gallery["id"], "emp-1", name="Ada")


def _while_waiting(tenant_api, worker: Callable[[Job], None], request: Callable):
    """The answer of `request`, while a thread runs `worker` on the first job it queues."""
    tenant_id = tenant_api.tenant.id
    ran = threading.Event()

    def run_worker():
        try:
            deadline = time.monotonic() + 60  # the first request of a process loads the face pipeline
            while time.monotonic() < deadline:
                with tenant_transaction(tenant_id):
                    job = Job.objects.first()
                if job is not None:
                    worker(job)
                    ran.set()
                    return
                time.sleep(0.05)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run_worker)
    thread.start()
    response = request()
    thread.join(timeout=60)
    assert ran.is_set(), "the request queued no job for the worker's part"
    return response


def test_an_enrollment_that_failed_on_the_services_side_is_a_503_and_may_be_retried_with_its_key(
    tenant_api, subject
):
    tenant_id = str(tenant_api.tenant.id)
    path = f"/v1/subjects/{subject['id']}/faces"
    headers = {"Idempotency-Key": "badge-photo-7"}

    def fail_as_the_task_does_after_its_last_retry(job):
        services.fail_enrollment_job(job_id=str(job.id), tenant_id=tenant_id, detail="S3 unreachable")

    failed = _while_waiting(
        tenant_api,
        fail_as_the_task_does_after_its_last_retry,
        lambda: tenant_api.post(
            f"{path}?wait=true", {"image": upload_file(person_image(7))}, headers=headers
        ),
    )
    retried = tenant_api.post(path, {"image": upload_file(person_image(7))}, headers=headers)

    assert failed.status_code == 503
    assert failed["Content-Type"] == "application/problem+json"
    assert failed["Retry-After"] == "30"
    body = failed.json()
    assert body["type"].endswith("/enrollment-failed")
    assert "reasons" not in body, "nothing is wrong with the image"
    assert tenant_api.get(f"/v1/jobs/{body['job_id']}").json()["error"]["reason"] == "INTERNAL_ERROR"
    assert retried.status_code == 202
    assert retried.json()["job"]["id"] != body["job_id"], "the retry makes a new job"


def test_a_subject_deleted_while_its_enrollment_is_awaited_is_a_404(tenant_api, subject):
    tenant_id = str(tenant_api.tenant.id)

    def delete_the_subject_then_process_the_job(job):
        with tenant_transaction(tenant_id):
            services.delete_subject(
                tenant=tenant_api.tenant,
                actor=Actor.system("tests"),
                subject=Subject.objects.get(id=subject["id"]),
            )
        services.process_face_enrollment(job_id=str(job.id), tenant_id=tenant_id)

    response = _while_waiting(
        tenant_api,
        delete_the_subject_then_process_the_job,
        lambda: tenant_api.enroll(subject["id"], person_image(8), timeout=30),
    )

    assert response.status_code == 404
    assert response.json()["type"].endswith("/not-found")
    assert response.json()["detail"] == "The subject does not exist."
    with tenant_transaction(tenant_id):
        assert Job.objects.get().error["reason"] == "SUBJECT_DELETED"


class _DatabaseLost(Exception):
    pass


@pytest.mark.parametrize("ending", ["subject deleted", "out of retries"])
def test_an_image_written_by_an_attempt_whose_transaction_was_lost_is_deleted_when_the_job_fails(
    tenant_api, subject, monkeypatch, ending
):
    tenant_id = str(tenant_api.tenant.id)
    job_id = tenant_api.enroll(subject["id"], person_image(9), wait="false").json()["job"]["id"]
    key = services.image_key(tenant_id=tenant_api.tenant.id, face_id=services.enrolled_face_id(job_id))

    def lose_the_database_after_the_upload(**_):
        raise _DatabaseLost("connection lost before the face was stored")

    with monkeypatch.context() as patched:
        patched.setattr(services, "_store_face", lose_the_database_after_the_upload)
        with pytest.raises(_DatabaseLost):
            services.process_face_enrollment(job_id=job_id, tenant_id=tenant_id)
    assert bucket_keys(f"tenants/{tenant_id}/") == [key], "the lost attempt left its image behind"

    if ending == "subject deleted":
        assert tenant_api.delete(f"/v1/subjects/{subject['id']}").status_code == 204
        services.process_face_enrollment(job_id=job_id, tenant_id=tenant_id)
    else:
        services.fail_enrollment_job(job_id=job_id, tenant_id=tenant_id, detail="database unreachable")
    services.purge_deleted_images(tenant_id=tenant_id)

    assert tenant_api.get(f"/v1/jobs/{job_id}").json()["status"] == "failed"
    assert bucket_keys(f"tenants/{tenant_id}/") == []
    with tenant_transaction(tenant_id):
        assert not PendingObjectDeletion.objects.exists()


def test_an_enrollment_queued_before_its_tenant_was_suspended_is_not_processed_nor_billed(
    tenant_api, subject
):
    tenant = tenant_api.tenant
    path = f"/v1/subjects/{subject['id']}/faces"
    headers = {"Idempotency-Key": "badge-photo-10"}

    def suspend_the_tenant_then_process_the_job(job):
        with operator_transaction():
            suspend_tenant(tenant=tenant, actor=Actor.system("tests"), reason="unpaid invoice")
        services.process_face_enrollment(job_id=str(job.id), tenant_id=str(tenant.id))

    refused = _while_waiting(
        tenant_api,
        suspend_the_tenant_then_process_the_job,
        lambda: tenant_api.post(
            f"{path}?wait=true", {"image": upload_file(person_image(10))}, headers=headers
        ),
    )
    with operator_transaction():
        [job] = Job.objects.filter(tenant=tenant)
        faces = Face.objects.filter(tenant=tenant).count()
        billed = UsageRecord.objects.filter(tenant=tenant, operation="enroll").count()
        reactivate_tenant(tenant=tenant, actor=Actor.system("tests"), reason="paid")
    retried = tenant_api.post(path, {"image": upload_file(person_image(10))}, headers=headers)

    assert refused.status_code == 403
    assert refused.json()["type"].endswith("/tenant-suspended")
    assert job.status == Job.Status.FAILED
    assert job.error["reason"] == "TENANT_INACTIVE"
    assert (faces, billed) == (0, 0)
    assert retried.status_code == 202
    assert retried.json()["job"]["id"] != str(job.id), "the key was released: the retry makes a new job"


def test_a_job_whose_every_attempt_took_its_worker_down_fails_instead_of_running_for_ever(
    tenant_api, subject
):
    tenant_id = str(tenant_api.tenant.id)
    path, headers = f"/v1/subjects/{subject['id']}/faces", {"Idempotency-Key": "badge-photo-11"}
    queued = tenant_api.post(path, {"image": upload_file(person_image(11))}, headers=headers)
    job_id = queued.json()["job"]["id"]
    with tenant_transaction(tenant_id):
        Job.objects.filter(id=job_id).update(
            status=Job.Status.RUNNING, attempts=services.MAX_ENROLLMENT_ATTEMPTS
        )

    services.process_face_enrollment(job_id=job_id, tenant_id=tenant_id)

    retried = tenant_api.post(path, {"image": upload_file(person_image(11))}, headers=headers)

    job = tenant_api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "failed"
    assert job["error"]["reason"] == "UNPROCESSABLE_IMAGE"
    assert "attempted 10 times" in job["error"]["detail"]
    assert retried.status_code == 422, "the key is kept: answered as the job ended, no new job made"
    assert retried.json()["reasons"] == ["UNPROCESSABLE_IMAGE"]
    with tenant_transaction(tenant_id):
        assert Job.objects.count() == 1
    with tenant_transaction(tenant_id):
        assert not Face.objects.exists()


@pytest.mark.parametrize("limit", ["soft", "hard"])
def test_an_enrollment_past_its_time_limit_is_an_unprocessable_image_not_a_retry(
    tenant_api, subject, monkeypatch, limit
):
    tenant_id = str(tenant_api.tenant.id)
    path, headers = f"/v1/subjects/{subject['id']}/faces", {"Idempotency-Key": f"slow-photo-{limit}"}
    job_id = tenant_api.post(path, {"image": upload_file(person_image(12))}, headers=headers).json()["job"][
        "id"
    ]
    kwargs = {"job_id": job_id, "tenant_id": tenant_id}

    if limit == "soft":  # raised inside the task, where Celery's soft limit interrupts it

        def decode_that_never_ends(**_):
            raise SoftTimeLimitExceeded()

        monkeypatch.setattr(services, "process_face_enrollment", decode_that_never_ends)
        assert enroll_face.apply(kwargs=kwargs).state == "SUCCESS", "not retried"
    else:  # the pool kills the process; the parent reports the task's failure
        enroll_face.on_failure(TimeLimitExceeded(150), "task-1", (), kwargs, None)
    retried = tenant_api.post(path, {"image": upload_file(person_image(12))}, headers=headers)

    job = tenant_api.get(f"/v1/jobs/{job_id}").json()
    assert (job["status"], job["error"]["reason"]) == ("failed", "UNPROCESSABLE_IMAGE")
    assert retried.status_code == 422, "the key is kept: the same answer, no new job"
    with tenant_transaction(tenant_id):
        assert Job.objects.count() == 1
