"""Fixtures for the identity API: tenants with keys, an authenticated client, and generated face images."""

from dataclasses import dataclass

import boto3
import pytest
from django.conf import settings
from django.test import Client

from tenants.actors import Actor
from tenants.models import Plan, Tenant
from tenants.rls import operator_transaction, tenant_transaction
from tenants.services import create_tenant_with_api_key

ALL_SCOPES = ["read", "enroll", "identify", "manage"]


@dataclass
class TenantApi:
    """A tenant, its raw API key and a test client that sends the key with every request."""

    tenant: Tenant
    key: str
    client: Client

    def get(self, path, **kwargs):
        return self.client.get(path, headers=self._headers(kwargs), **kwargs)

    def post(self, path, data=None, **kwargs):
        return self.client.post(path, data, headers=self._headers(kwargs), **kwargs)

    def patch(self, path, data=None, **kwargs):
        return self.client.patch(
            path, data, content_type="application/json", headers=self._headers(kwargs), **kwargs
        )

    def delete(self, path, **kwargs):
        return self.client.delete(path, headers=self._headers(kwargs), **kwargs)

    def _headers(self, kwargs) -> dict:
        return {"Authorization": f"Bearer {self.key}", **kwargs.pop("headers", {})}

    def create_gallery(self, name: str = "Staff") -> dict:
        response = self.post("/v1/galleries", {"name": name}, content_type="application/json")
        assert response.status_code == 201, response.content
        return response.json()

    def create_subject(self, gallery_id: str, external_id: str, **fields) -> dict:
        response = self.post(
            f"/v1/galleries/{gallery_id}/subjects",
            {"external_id": external_id, **fields},
            content_type="application/json",
        )
        assert response.status_code == 201, response.content
        return response.json()

    def enroll(self, subject_id: str, image: bytes, **query):
        query_string = "&".join(f"{key}={value}" for key, value in {"wait": "true", **query}.items())
        return self.post(f"/v1/subjects/{subject_id}/faces?{query_string}", {"image": upload_file(image)})


def upload_file(image: bytes):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile("face.jpg", image, content_type="image/jpeg")


def make_tenant_api(name: str, *, scopes=ALL_SCOPES, store_images: bool = True) -> TenantApi:
    with operator_transaction():
        tenant, issued = create_tenant_with_api_key(
            name=name, actor=Actor.system("tests"), key_name="tests", scopes=scopes, plan=_roomy_plan()
        )
        tenant.store_images = store_images
        tenant.save(update_fields=["store_images"])
    return TenantApi(tenant=tenant, key=issued.raw_key, client=Client())


def _roomy_plan() -> Plan:
    """A plan whose limits no functional test reaches (transactional tests flush the default plan)."""
    plan, _ = Plan.objects.get_or_create(
        name="functional-tests",
        defaults={
            "allows_overage": True,
            "requests_per_second": 1000,
            "burst": 1000,
            "max_gallery_faces": 100_000,
            "max_tenant_faces": 100_000,
        },
    )
    return plan


@pytest.fixture
def tenant_api(db) -> TenantApi:
    return make_tenant_api("Acme")


@pytest.fixture
def other_tenant_api(db) -> TenantApi:
    return make_tenant_api("Globex")


@pytest.fixture
def jobs_not_dispatched(monkeypatch):
    """Enrollment jobs stay queued: they are never sent to the Celery worker."""
    from identity import services

    monkeypatch.setattr(services, "_dispatch_enrollment", lambda job: None)


def seeded_gallery(*, templates: int, seed: int):
    """(tenant, gallery, bench.seed.SyntheticGallery): a new tenant's gallery of `templates` realistic
    synthetic templates, written as the search benchmark writes them."""
    import numpy as np

    from bench.seed import seed_gallery, synthetic_gallery
    from identity import services
    from tests.tenants.factories import make_tenant

    tenant = make_tenant()
    with tenant_transaction(tenant.id):
        gallery = services.create_gallery(tenant=tenant, actor=Actor.system("tests"), name=f"seeded-{seed}")
    data = synthetic_gallery(templates, rng=np.random.default_rng(seed))
    seed_gallery(tenant=tenant, gallery=gallery, data=data)
    return tenant, gallery, data


def bucket_keys(prefix: str) -> list[str]:
    options = settings.STORAGES["default"]["OPTIONS"]
    client = boto3.client(
        "s3",
        endpoint_url=options["endpoint_url"],
        aws_access_key_id=options["access_key"],
        aws_secret_access_key=options["secret_key"],
        region_name=options["region_name"],
    )
    listing = client.list_objects_v2(Bucket=options["bucket_name"], Prefix=prefix)
    return [item["Key"] for item in listing.get("Contents", [])]


def require_mask_synthesis():
    """The service's face pipeline, or a clear skip when it has no mask templates to synthesise masks with."""
    from identity.face_pipeline import get_face_pipeline

    pipeline = get_face_pipeline()
    if pipeline.mask_synthesizer is None:
        pytest.skip(
            f"no mask templates in {settings.VISOR_MASK_TEMPLATES_DIR} (VISOR_MASK_TEMPLATES_DIR): "
            "this test needs ../shared/data/mask_templates"
        )
    return pipeline
