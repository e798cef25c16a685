import base64
import time
import uuid
from collections import Counter
from datetime import timedelta

import cv2
import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone

from identity import services
from identity.models import Face, FaceTemplate, Gallery, IdempotentRequest, Job
from tenants.rls import operator_transaction
from tests.face_images import CartoonPerson, draw_face, encode, face_photo, person_image
from tests.identity.conftest import bucket_keys, make_tenant_api, require_mask_synthesis, upload_file
from workers.pipeline.matching import STUDENT_FLIP_30BAB81A449B_K1, calibration_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("celery_worker")]


@pytest.fixture
def subject(tenant_api):
    gallery = tenant_api.create_gallery()
    return tenant_api.create_subject(gallery["id"], "emp-1", name="Ada")


def test_enrolling_with_wait_answers_201_with_the_indexed_face(tenant_api, subject):
    response = tenant_api.enroll(subject["id"], person_image(1))

    face = response.json()
    assert response.status_code == 201, face
    assert face["subject_id"] == subject["id"]
    assert face["bbox"]["width"] > 50
    assert set(face["landmarks"]) == {"right_eye", "left_eye", "nose", "mouth_right", "mouth_left"}
    assert 0 <= face["mask"]["probability"] <= 1
    assert face["quality"]["issues"] == []
    with operator_transaction():
        stored = FaceTemplate.objects.filter(face_id=face["id"])
        assert stored.filter(kind="original").count() == 1
        assert np.linalg.norm(np.asarray(stored.first().embedding)) == pytest.approx(1.0, abs=1e-3)


def test_enrollment_stores_as_many_synthetic_mask_templates_as_the_models_calibration_asks(
    tenant_api, subject
):
    """The default model matches masked probes best with its original templates alone (docs/accuracy.md);
    a gallery made with an earlier model that was calibrated with a synthetic-mask template keeps getting
    one from that model until `manage.py reembed` moves it over."""
    current = require_mask_synthesis()
    earlier = STUDENT_FLIP_30BAB81A449B_K1
    with operator_transaction():
        Gallery.objects.filter(id=subject["gallery_id"]).update(model_version=earlier.model_version)

    face = tenant_api.enroll(subject["id"], person_image(4)).json()

    with operator_transaction():
        templates = list(FaceTemplate.objects.filter(face_id=face["id"]))
    kinds = Counter((t.model_version, t.kind) for t in templates)
    assert kinds == {
        (current.model_version, "original"): 1,
        (earlier.model_version, "original"): 1,
        (earlier.model_version, "synthetic_mask"): earlier.synthetic_templates,
    }
    assert current.augmentation.variants == calibration_for(current.model_version).synthetic_templates == 0
    [original] = [
        np.asarray(t.embedding)
        for t in templates
        if t.model_version == earlier.model_version and t.kind == "original"
    ]
    [synthetic] = [np.asarray(t.embedding) for t in templates if t.kind == "synthetic_mask"]
    assert np.linalg.norm(synthetic) == pytest.approx(1.0, abs=1e-3)
    # The same face with its lower half covered: related to the original, never a copy of it.
    assert 0.2 < float(synthetic @ original) < 0.999
    assert {str(t.subject_id) for t in templates} == {subject["id"]}


def test_enrolling_without_wait_answers_202_with_a_job_that_completes(tenant_api, subject):
    response = tenant_api.post(f"/v1/subjects/{subject['id']}/faces", {"image": upload_file(person_image(2))})

    assert response.status_code == 202
    job_id = response.json()["job"]["id"]
    assert response["Location"] == f"/v1/jobs/{job_id}"
    job = _finished(tenant_api, response["Location"])
    assert job["status"] == "succeeded"
    assert job["result"]["face"]["subject_id"] == subject["id"]
    assert job["error"] is None


def test_an_image_can_be_sent_as_base64_json(tenant_api, subject):
    encoded = base64.b64encode(person_image(3)).decode()

    response = tenant_api.post(
        f"/v1/subjects/{subject['id']}/faces?wait=true",
        {"image_base64": encoded},
        content_type="application/json",
    )

    assert response.status_code == 201, response.content


def test_line_wrapped_base64_is_accepted(tenant_api, subject):
    encoded = base64.encodebytes(person_image(3)).decode()  # MIME's 76-column lines

    response = tenant_api.post(
        f"/v1/subjects/{subject['id']}/faces?wait=true",
        {"image_base64": encoded},
        content_type="application/json",
    )

    assert encoded.count("\n") > 100
    assert response.status_code == 201, response.content


@pytest.mark.parametrize(
    ("encoded", "error"),
    [
        ("bm90IGFuIGltYWdl!", "This is not valid base64 (RFC 4648's standard alphabet, padded)."),
        (["bm90"], "Send the image's bytes as a base64 string."),
    ],
)
def test_an_image_base64_that_is_not_base64_says_so(tenant_api, subject, encoded, error):
    response = tenant_api.post(
        f"/v1/subjects/{subject['id']}/faces", {"image_base64": encoded}, content_type="application/json"
    )

    assert response.status_code == 400
    assert response.json()["errors"] == {"image_base64": [error]}


def test_an_image_without_a_face_is_rejected_with_reason_no_face(tenant_api, subject):
    blank = encode(np.full((480, 640, 3), 200, dtype=np.uint8))

    response = tenant_api.enroll(subject["id"], blank)

    assert response.status_code == 422
    assert response.json()["type"].endswith("/face-rejected")
    assert response.json()["reasons"] == ["NO_FACE"]


def test_two_faces_are_refused_unless_the_largest_is_asked_for(tenant_api, subject):
    image = np.full((480, 800, 3), 200, dtype=np.uint8)
    draw_face(image, 220, 240, 110, CartoonPerson.from_seed(4))
    draw_face(image, 600, 240, 80, CartoonPerson.from_seed(5))

    refused = tenant_api.enroll(subject["id"], encode(image))
    accepted = tenant_api.enroll(subject["id"], encode(image), largest="true")

    assert refused.status_code == 422
    assert refused.json()["reasons"] == ["MULTIPLE_FACES"]
    assert accepted.status_code == 201
    assert accepted.json()["bbox"]["x"] < 400, "the largest face is the one on the left"


def test_a_small_face_in_the_background_does_not_make_a_portrait_ambiguous(tenant_api, subject):
    image = np.full((480, 800, 3), 200, dtype=np.uint8)
    draw_face(image, 300, 240, 120, CartoonPerson.from_seed(4))
    draw_face(image, 680, 120, 50, CartoonPerson.from_seed(5))  # a third of the width: a passer-by

    detected = tenant_api.post("/v1/detect", {"image": upload_file(encode(image))}).json()["faces"]
    enrolled = tenant_api.enroll(subject["id"], encode(image))

    assert len(detected) == 2
    assert enrolled.status_code == 201, enrolled.content
    assert enrolled.json()["bbox"]["x"] < 400, "the portrait's face, not the passer-by"


def blurred_portrait(sigma: float) -> bytes:
    return encode(cv2.GaussianBlur(face_photo(size=110), (0, 0), sigma))


def test_quality_filter_chooses_how_strict_enrollment_is(tenant_api, subject):
    slightly_blurred, very_blurred = blurred_portrait(4), blurred_portrait(6)

    auto = tenant_api.enroll(subject["id"], slightly_blurred)
    low = tenant_api.enroll(subject["id"], slightly_blurred, quality_filter="low")
    low_refused = tenant_api.enroll(subject["id"], very_blurred, quality_filter="low")
    none = tenant_api.enroll(subject["id"], very_blurred, quality_filter="none")

    assert auto.status_code == 422
    assert auto.json()["reasons"] == ["BLURRY"]
    assert low.status_code == 201, low.content
    assert low.json()["quality"]["issues"] == ["BLURRY"], "judged by the enrollment floors, enrolled anyway"
    assert low_refused.status_code == 422
    assert low_refused.json()["reasons"] == ["BLURRY"]
    assert none.status_code == 201, none.content
    assert none.json()["quality"]["issues"] == ["BLURRY"], "the stored face still says what is wrong with it"


def test_a_job_queued_before_quality_filter_existed_is_judged_by_the_enrollment_floors(tenant_api, subject):
    with operator_transaction():
        job = Job.objects.create(
            tenant=tenant_api.tenant,
            kind=Job.Kind.ENROLL_FACE,
            subject_id=subject["id"],
            options={"largest": False},
            input_image=blurred_portrait(4),
        )

    finished = services.process_face_enrollment(job_id=str(job.id), tenant_id=str(tenant_api.tenant.id))

    assert finished.status == Job.Status.FAILED
    assert finished.error["reasons"] == ["BLURRY"]


def test_an_idempotency_key_reused_with_another_quality_filter_is_refused(tenant_api, subject):
    headers = {"Idempotency-Key": "enroll-blurred"}
    path = f"/v1/subjects/{subject['id']}/faces?wait=true"
    image = blurred_portrait(4)
    first = tenant_api.post(path, {"image": upload_file(image)}, headers=headers)

    retry_as_low = tenant_api.post(
        f"{path}&quality_filter=low", {"image": upload_file(image)}, headers=headers
    )

    assert first.status_code == 422
    assert retry_as_low.status_code == 422
    assert retry_as_low.json()["type"].endswith("/idempotency-key-reused")


def test_an_unknown_quality_filter_is_a_validation_problem(tenant_api, subject):
    response = tenant_api.enroll(subject["id"], person_image(1), quality_filter="strict")

    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    assert "quality_filter" in response.json()["errors"]


def test_a_face_too_small_to_enroll_says_so(tenant_api, subject):
    response = tenant_api.enroll(subject["id"], encode(face_photo(size=40)))

    assert response.status_code == 422
    assert "SMALL_FACE" in response.json()["reasons"]


@pytest.mark.parametrize(
    ("payload", "status", "reason"),
    [
        (b"", 400, "EMPTY_IMAGE"),
        (b"this is plain text, not a JPEG", 415, "UNSUPPORTED_FORMAT"),
    ],
)
def test_unusable_files_are_refused_at_once_with_a_4xx_problem(tenant_api, subject, payload, status, reason):
    response = tenant_api.enroll(subject["id"], payload)

    assert response.status_code == status
    assert response.json()["reason"] == reason
    with operator_transaction():
        assert not Job.objects.exists(), "no job is queued for a file that cannot be decoded"


def test_a_truncated_jpeg_is_refused_at_once(tenant_api, subject):
    truncated = person_image(6)[:2000]

    response = tenant_api.enroll(subject["id"], truncated)

    assert 400 <= response.status_code < 500
    assert response["Content-Type"] == "application/problem+json"


def test_a_request_without_an_image_is_a_validation_problem(tenant_api, subject):
    response = tenant_api.post(f"/v1/subjects/{subject['id']}/faces", {}, content_type="application/json")

    assert response.status_code == 400
    assert "image" in response.json()["errors"]


def test_a_retried_request_with_the_same_idempotency_key_creates_one_face(tenant_api, subject):
    headers = {"Idempotency-Key": "enroll-ada-1"}
    image = person_image(7)

    first = tenant_api.post(
        f"/v1/subjects/{subject['id']}/faces?wait=true", {"image": upload_file(image)}, headers=headers
    )
    retry = tenant_api.post(
        f"/v1/subjects/{subject['id']}/faces?wait=true", {"image": upload_file(image)}, headers=headers
    )

    assert first.status_code == retry.status_code == 201
    assert first.json()["id"] == retry.json()["id"]
    with operator_transaction():
        assert Face.objects.filter(subject_id=subject["id"]).count() == 1


def test_an_idempotency_key_reused_for_a_different_image_is_refused(tenant_api, subject):
    headers = {"Idempotency-Key": "enroll-ada-2"}
    tenant_api.post(
        f"/v1/subjects/{subject['id']}/faces?wait=true",
        {"image": upload_file(person_image(8))},
        headers=headers,
    )

    response = tenant_api.post(
        f"/v1/subjects/{subject['id']}/faces?wait=true",
        {"image": upload_file(person_image(9))},
        headers=headers,
    )

    assert response.status_code == 422
    assert response.json()["type"].endswith("/idempotency-key-reused")


def test_the_image_is_stored_under_the_tenants_prefix_when_the_tenant_stores_images(tenant_api, subject):
    face = tenant_api.enroll(subject["id"], person_image(10)).json()

    assert face["image_stored"] is True
    assert bucket_keys(f"tenants/{tenant_api.tenant.id}/") == [
        f"tenants/{tenant_api.tenant.id}/faces/{face['id']}"
    ]


def test_no_image_is_kept_when_the_tenant_opts_out(db):
    private = make_tenant_api("Private", store_images=False)
    gallery = private.create_gallery()
    subject = private.create_subject(gallery["id"], "p-1")

    face = private.enroll(subject["id"], person_image(11)).json()

    assert face["image_stored"] is False
    assert bucket_keys(f"tenants/{private.tenant.id}/") == []
    with operator_transaction():
        assert Job.objects.get(result__face__id=face["id"]).input_image is None


def test_faces_of_a_subject_are_listed(tenant_api, subject):
    enrolled = [tenant_api.enroll(subject["id"], person_image(seed)).json()["id"] for seed in (12, 13)]

    listed = tenant_api.get(f"/v1/subjects/{subject['id']}/faces").json()["data"]

    assert [face["id"] for face in listed] == enrolled


def _unfinished_job(tenant_api, subject, *, dispatched_minutes_ago: float) -> Job:
    """A queued enrollment job whose task message never reached a worker (lost with a killed one)."""
    with operator_transaction():
        return Job.objects.create(
            tenant=tenant_api.tenant,
            kind=Job.Kind.ENROLL_FACE,
            subject_id=subject["id"],
            input_image=person_image(9),
            dispatched_at=timezone.now() - timedelta(minutes=dispatched_minutes_ago),
        )


def test_a_job_whose_task_was_lost_is_sent_again_and_completes(tenant_api, subject):
    lost = _unfinished_job(tenant_api, subject, dispatched_minutes_ago=30)
    recent = _unfinished_job(tenant_api, subject, dispatched_minutes_ago=1)

    assert services.redispatch_stalled_jobs() == 1

    job = _settled_job(lost.id)
    assert job.status == Job.Status.SUCCEEDED
    assert job.dispatched_at > lost.dispatched_at
    # A job sent a minute ago is waiting in the queue, not lost: it is left alone.
    assert (_job(recent.id).status, _job(recent.id).dispatched_at) == (
        Job.Status.QUEUED,
        recent.dispatched_at,
    )
    assert services.redispatch_stalled_jobs() == 0


def test_a_retried_job_replaces_the_image_an_interrupted_attempt_left_in_the_bucket(tenant_api, subject):
    job = _unfinished_job(tenant_api, subject, dispatched_minutes_ago=0)
    key = services.image_key(tenant_id=tenant_api.tenant.id, face_id=uuid.uuid5(job.id, "face"))
    # An earlier attempt wrote the object, then died before its transaction committed.
    default_storage.save(key, ContentFile(b"left by an interrupted attempt"))

    finished = services.process_face_enrollment(job_id=str(job.id), tenant_id=str(tenant_api.tenant.id))

    assert finished.status == Job.Status.SUCCEEDED
    assert bucket_keys(f"tenants/{tenant_api.tenant.id}/") == [key]
    with default_storage.open(key, "rb") as stored:
        assert stored.read() == person_image(9)


def test_a_sweep_sends_at_most_its_batch_oldest_first(tenant_api, subject):
    oldest = _unfinished_job(tenant_api, subject, dispatched_minutes_ago=50)
    older = _unfinished_job(tenant_api, subject, dispatched_minutes_ago=40)
    old = _unfinished_job(tenant_api, subject, dispatched_minutes_ago=30)

    assert services.redispatch_stalled_jobs(batch_size=2) == 2

    assert _job(old.id).dispatched_at == old.dispatched_at
    assert _job(oldest.id).dispatched_at > oldest.dispatched_at
    assert _job(older.id).dispatched_at > older.dispatched_at
    # Finished before the test ends: the database is emptied after each test, which a worker still
    # storing a face would deadlock with.
    assert {_settled_job(job.id).status for job in (oldest, older)} == {Job.Status.SUCCEEDED}


def test_idempotency_keys_are_forgotten_after_their_lifetime(tenant_api, subject):
    headers = {"Idempotency-Key": "enroll-once"}
    first = tenant_api.post(
        f"/v1/subjects/{subject['id']}/faces", {"image": upload_file(person_image(5))}, headers=headers
    )
    with operator_transaction():
        IdempotentRequest.objects.filter(key="enroll-once").update(
            created_at=timezone.now() - timedelta(hours=25)
        )
        IdempotentRequest.objects.create(
            tenant=tenant_api.tenant, key="recent", fingerprint="0" * 64, status_code=200, body={}
        )

    assert services.purge_expired_idempotency_keys() == 1
    # The key may now serve a new request: a different image makes a new job instead of a 422.
    again = tenant_api.post(
        f"/v1/subjects/{subject['id']}/faces", {"image": upload_file(person_image(6))}, headers=headers
    )
    assert first.status_code == again.status_code == 202
    assert again["Location"] != first["Location"]
    with operator_transaction():
        assert IdempotentRequest.objects.filter(key="recent").exists()
    # Both jobs must finish before the next test empties the tables under the worker.
    assert {_finished(tenant_api, r["Location"])["status"] for r in (first, again)} == {"succeeded"}


def _finished(tenant_api, job_location: str) -> dict:
    deadline = time.monotonic() + 60
    while (job := tenant_api.get(job_location).json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    return job


def _job(job_id) -> Job:
    with operator_transaction():
        return Job.objects.get(id=job_id)


def _settled_job(job_id, timeout: float = 60) -> Job:
    """The job once the worker has finished it."""
    deadline = time.monotonic() + timeout
    while (job := _job(job_id)).status in (Job.Status.QUEUED, Job.Status.RUNNING):
        assert time.monotonic() < deadline, "the re-sent job did not finish"
        time.sleep(0.2)
    return job
