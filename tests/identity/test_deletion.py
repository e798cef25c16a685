import time
from datetime import timedelta

import pytest
from celery.exceptions import Retry
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone

from identity import services
from identity.models import Face, FaceTemplate, Gallery, PendingObjectDeletion, Subject
from identity.tasks import erase_closed_tenants, purge_deleted_images
from tenants.actors import Actor
from tenants.billing_selectors import stored_face_counts
from tenants.models import AuditEvent
from tenants.rls import operator_transaction, tenant_transaction
from tenants.services import close_tenant
from tests.face_images import person_image
from tests.identity.conftest import bucket_keys

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("celery_worker")]


def _wait_for_purge(prefix: str, timeout: float = 60) -> list[str]:
    """The keys left under `prefix` once the purge has finished or `timeout` passed. The purge removes each
    outbox row only after its object, so the bucket empties a moment before the outbox does."""
    deadline = time.monotonic() + timeout
    while ((keys := bucket_keys(prefix)) or _purge_pending()) and time.monotonic() < deadline:
        time.sleep(0.3)
    return keys


def _purge_pending() -> bool:
    with operator_transaction():
        return PendingObjectDeletion.objects.exists()


@pytest.fixture
def enrolled_face(tenant_api):
    gallery = tenant_api.create_gallery()
    subject = tenant_api.create_subject(gallery["id"], "emp-1")
    face = tenant_api.enroll(subject["id"], person_image(5)).json()
    assert bucket_keys(f"tenants/{tenant_api.tenant.id}/")
    return gallery, subject, face


def test_deleting_a_face_removes_its_templates_at_once_and_its_image_from_the_bucket(
    tenant_api, enrolled_face
):
    _, _, face = enrolled_face

    response = tenant_api.delete(f"/v1/faces/{face['id']}")

    assert response.status_code == 204
    with operator_transaction():
        assert not FaceTemplate.objects.filter(face_id=face["id"]).exists()
        assert AuditEvent.objects.filter(action="face.deleted", object_id=face["id"]).exists()
    assert _wait_for_purge(f"tenants/{tenant_api.tenant.id}/") == []
    with operator_transaction():
        assert not PendingObjectDeletion.objects.exists()


def test_deleting_a_subject_removes_its_faces_templates_and_images(tenant_api, enrolled_face):
    _, subject, face = enrolled_face

    assert tenant_api.delete(f"/v1/subjects/{subject['id']}").status_code == 204

    with operator_transaction():
        assert not Face.objects.filter(id=face["id"]).exists()
        assert not FaceTemplate.objects.exists()
    assert _wait_for_purge(f"tenants/{tenant_api.tenant.id}/") == []


def test_deleting_a_gallery_leaves_nothing_in_the_tables_or_the_bucket(tenant_api, enrolled_face):
    gallery, _, _ = enrolled_face

    assert tenant_api.delete(f"/v1/galleries/{gallery['id']}").status_code == 204

    with operator_transaction():
        assert not Gallery.objects.exists()
        assert not Subject.objects.exists()
        assert not Face.objects.exists()
        assert not FaceTemplate.objects.exists()
        assert AuditEvent.objects.filter(action="gallery.deleted", object_id=gallery["id"]).exists()
    assert _wait_for_purge(f"tenants/{tenant_api.tenant.id}/") == []
    with operator_transaction():
        assert not PendingObjectDeletion.objects.exists()


def test_a_deleted_face_is_no_longer_identified(tenant_api, enrolled_face):
    gallery, _, face = enrolled_face
    tenant_api.delete(f"/v1/faces/{face['id']}")

    from tests.identity.conftest import upload_file

    response = tenant_api.post(
        f"/v1/galleries/{gallery['id']}/identify", {"image": upload_file(person_image(5))}
    )

    [probe] = response.json()["faces"]
    assert probe["match"] is None
    assert probe["candidates"] == []


def test_a_closed_tenant_is_erased_and_billed_no_more_stored_faces(
    tenant_api, other_tenant_api, enrolled_face
):
    other_gallery = other_tenant_api.create_gallery()
    other_subject = other_tenant_api.create_subject(other_gallery["id"], "emp-1")
    assert other_tenant_api.enroll(other_subject["id"], person_image(6)).status_code == 201
    with operator_transaction():
        close_tenant(tenant=tenant_api.tenant, actor=Actor.system("tests"), reason="contract ended")
        still_counted = stored_face_counts()

    erased = erase_closed_tenants()

    assert erased == 1
    assert tenant_api.tenant.id not in still_counted, "billing stops when the tenant closes"
    assert still_counted[other_tenant_api.tenant.id] == 1
    with operator_transaction():
        assert not Gallery.objects.filter(tenant=tenant_api.tenant).exists()
        assert not FaceTemplate.objects.filter(tenant=tenant_api.tenant).exists()
        assert FaceTemplate.objects.filter(tenant=other_tenant_api.tenant).exists()
        assert AuditEvent.objects.filter(action="gallery.deleted", actor_label="tenant-closure").exists()
    assert _wait_for_purge(f"tenants/{tenant_api.tenant.id}/") == []
    assert bucket_keys(f"tenants/{other_tenant_api.tenant.id}/")
    assert erase_closed_tenants() == 0, "nothing is left to erase"


class _StorageThatCannotDelete:
    """The real storage, except that S3 refuses to delete the given keys (DeleteObjects reports an error for
    each, as for an object under a legal hold)."""

    def __init__(self, storage, refused: set[str]):
        self._bucket, self._refused = storage.bucket, refused

    @property
    def bucket(self):
        return self

    def delete_objects(self, *, Delete):  # boto3 names the argument
        objects = [item for item in Delete["Objects"] if item["Key"] not in self._refused]
        answer = self._bucket.delete_objects(Delete={**Delete, "Objects": objects}) if objects else {}
        refusals = [
            {"Key": item["Key"], "Code": "AccessDenied", "Message": "Access Denied"}
            for item in Delete["Objects"]
            if item["Key"] in self._refused
        ]
        return {**answer, "Errors": answer.get("Errors", []) + refusals}


def test_deletions_that_keep_failing_back_off_and_do_not_hold_newer_ones_back(tenant_api, monkeypatch):
    tenant = tenant_api.tenant
    keys = [f"tenants/{tenant.id}/faces/{name}" for name in ("refused-1", "refused-2", "deleted-later")]
    for key in keys:
        default_storage.save(key, ContentFile(b"image"))
    with tenant_transaction(tenant.id):
        for key in keys:  # oldest first
            PendingObjectDeletion.objects.create(tenant=tenant, key=key)
    monkeypatch.setattr(services, "default_storage", _StorageThatCannotDelete(default_storage, set(keys[:2])))

    first_sweep = services.purge_deleted_images(tenant_id=str(tenant.id), batch_size=2)
    second_sweep = services.purge_deleted_images(tenant_id=str(tenant.id), batch_size=2)

    assert (first_sweep, second_sweep) == (0, 1)
    assert sorted(bucket_keys(f"tenants/{tenant.id}/")) == keys[:2]
    with tenant_transaction(tenant.id):
        refused = list(PendingObjectDeletion.objects.order_by("key"))
    assert [row.key for row in refused] == keys[:2], "kept, to be tried again"
    for row in refused:
        assert row.attempts == 1
        assert row.last_error == "AccessDenied: Access Denied"
        assert row.retry_at > timezone.now()


def test_a_failing_deletion_waits_longer_after_each_attempt_up_to_an_hour():
    waits = [services.object_deletion_backoff(attempts=n) for n in (1, 2, 3, 10, 1000)]

    assert waits == [
        timedelta(seconds=10),
        timedelta(seconds=20),
        timedelta(seconds=40),
        timedelta(hours=1),
        timedelta(hours=1),
    ]


def test_a_deleted_gallery_of_many_stored_images_leaves_the_bucket_in_one_sweep(tenant_api):
    tenant = tenant_api.tenant
    keys = [f"tenants/{tenant.id}/faces/{number:04d}" for number in range(1_200)]
    for key in keys:
        default_storage.save(key, ContentFile(b"image"))
    with tenant_transaction(tenant.id):
        PendingObjectDeletion.objects.bulk_create(
            PendingObjectDeletion(tenant=tenant, key=key) for key in keys
        )

    swept = [services.purge_deleted_images(tenant_id=str(tenant.id)) for _ in range(2)]

    assert swept == [1_000, 200], "a thousand keys a request, the most S3 takes"
    assert bucket_keys(f"tenants/{tenant.id}/") == []
    with tenant_transaction(tenant.id):
        assert not PendingObjectDeletion.objects.exists()


@pytest.mark.parametrize(
    ("due_in", "comes_back"), [(timedelta(seconds=30), True), (timedelta(hours=2), False)]
)
def test_the_purge_comes_back_for_rows_due_soon_and_leaves_later_ones_to_the_sweep(
    tenant_api, monkeypatch, due_in, comes_back
):
    tenant = tenant_api.tenant
    with tenant_transaction(tenant.id):
        PendingObjectDeletion.objects.create(
            tenant=tenant, key=f"tenants/{tenant.id}/faces/refused", retry_at=timezone.now() + due_in
        )
    countdowns = []

    def record_retry(*, countdown):
        countdowns.append(countdown)
        return Retry(when=countdown)

    monkeypatch.setattr(purge_deleted_images, "retry", record_retry)

    result = purge_deleted_images.apply(kwargs={"tenant_id": str(tenant.id)})

    assert result.state == ("RETRY" if comes_back else "SUCCESS")
    assert [round(countdown) for countdown in countdowns] == ([30] if comes_back else [])
