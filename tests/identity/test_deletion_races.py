"""A subject or gallery deleted while an enrollment adds a face to it leaves neither the face nor its image.

The enrollment is run by the test, in a thread, with the service call the worker makes, and held just after
it has written the image (its transaction still open) while the deletion is sent: the moment a live worker
would only hit by chance.
"""

import threading
import time

import pytest
from django.db import connections

from identity import services
from identity.models import Face, Job, PendingObjectDeletion
from tenants.rls import operator_transaction
from tests.face_images import person_image
from tests.identity.conftest import bucket_keys, upload_file

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("celery_worker", "jobs_not_dispatched"),
]


class _StorageHeldAfterSave:
    """The real storage, whose `save` stops after writing until `release` is set."""

    def __init__(self, storage):
        self.storage = storage
        self.saved = threading.Event()
        self.release = threading.Event()

    def save(self, *args, **kwargs):
        name = self.storage.save(*args, **kwargs)
        self.saved.set()
        assert self.release.wait(30), "the test never released the enrollment"
        return name

    def __getattr__(self, attribute):
        return getattr(self.storage, attribute)


def _in_thread(target) -> tuple[threading.Thread, dict]:
    result = {}

    def run():
        try:
            result["value"] = target()
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


@pytest.mark.parametrize("deleted", ["subject", "gallery"])
def test_a_subject_or_gallery_deleted_while_a_face_is_being_stored_leaves_no_face_and_no_image(
    tenant_api, monkeypatch, deleted
):
    gallery = tenant_api.create_gallery()
    subject = tenant_api.create_subject(gallery["id"], "emp-1")
    queued = tenant_api.post(f"/v1/subjects/{subject['id']}/faces", {"image": upload_file(person_image(9))})
    job_id, tenant_id = queued.json()["job"]["id"], str(tenant_api.tenant.id)
    storage = _StorageHeldAfterSave(services.default_storage)
    monkeypatch.setattr(services, "default_storage", storage)

    enrollment, _ = _in_thread(lambda: services.process_face_enrollment(job_id=job_id, tenant_id=tenant_id))
    assert storage.saved.wait(60), "the enrollment never wrote its image"
    path = f"/v1/subjects/{subject['id']}" if deleted == "subject" else f"/v1/galleries/{gallery['id']}"
    deletion, answer = _in_thread(lambda: tenant_api.delete(path))
    time.sleep(1)  # the deletion reaches the database while the face is still being stored
    assert deletion.is_alive(), "the deletion waits for the face being stored"
    storage.release.set()
    enrollment.join(60)
    deletion.join(60)

    assert answer["value"].status_code == 204
    with operator_transaction():
        assert not Face.objects.filter(tenant_id=tenant_id).exists()
        assert Job.objects.get(id=job_id).status == Job.Status.SUCCEEDED
    deadline = time.monotonic() + 60
    while (bucket_keys(f"tenants/{tenant_id}/") or _purge_pending()) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert bucket_keys(f"tenants/{tenant_id}/") == []


def _purge_pending() -> bool:
    with operator_transaction():
        return PendingObjectDeletion.objects.exists()
