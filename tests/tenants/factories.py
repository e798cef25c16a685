"""Tenants, keys and clients for tests, made through the real services. Reusable by every app's tests:

    tenant, raw_key = make_api_key(scopes=["read"])
    response = api_client_for(raw_key).get("/v1/tenant")

They need database access (`@pytest.mark.django_db`). Plans made here are generous (rate limits and
quotas out of the way) unless a test asks otherwise.
"""

import uuid
from datetime import datetime

from rest_framework.test import APIClient

from tenants import services
from tenants.actors import Actor
from tenants.models import Plan, Scope, Tenant
from tenants.rls import operator_transaction

TEST_ACTOR = Actor.system("test factory")


def make_plan(**overrides) -> Plan:
    values = {
        "name": f"test-plan-{uuid.uuid4().hex[:8]}",
        "included_enroll": 100_000,
        "included_identify": 100_000,
        "included_verify": 100_000,
        "included_detect": 100_000,
        "included_stored_face_months": 100_000,
        "requests_per_second": 1_000,
        "burst": 1_000,
        "max_gallery_faces": 100_000,
        "max_tenant_faces": 100_000,
        **overrides,
    }
    return Plan.objects.create(**values)


def make_tenant(*, name: str | None = None, plan: Plan | None = None, **settings) -> Tenant:
    """A new active tenant; keyword arguments set its settings (store_images=True, webhook_url=...)."""
    with operator_transaction():
        tenant = services.create_tenant(
            name=name or f"Tenant {uuid.uuid4().hex[:6]}", plan=plan or make_plan(), actor=TEST_ACTOR
        )
        if settings:
            services.update_tenant(tenant=tenant, actor=TEST_ACTOR, changes=settings)
    return tenant


def make_api_key(
    *,
    tenant: Tenant | None = None,
    scopes=tuple(Scope.values),
    expires_at: datetime | None = None,
    name: str = "test key",
) -> tuple[Tenant, str]:
    """(tenant, raw key); a new tenant when none is given."""
    tenant = tenant or make_tenant()
    with operator_transaction():
        issued = services.create_api_key(
            tenant=tenant, actor=TEST_ACTOR, name=name, scopes=list(scopes), expires_at=expires_at
        )
    return tenant, issued.raw_key


def api_client_for(raw_key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return client
