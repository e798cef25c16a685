import re

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from tenants.rls import tenant_transaction
from tenants.services import record_usage
from tests.tenants.billing_helpers import store_faces_all_this_month
from tests.tenants.factories import api_client_for, make_api_key, make_plan, make_tenant

PLACEHOLDER_ID = "00000000-0000-4000-8000-000000000000"


@pytest.mark.django_db
def test_get_tenant_describes_the_callers_tenant_plan_settings_usage_and_key():
    plan = make_plan(name="growth", requests_per_second=50, burst=100, included_identify=500)
    tenant, raw_key = make_api_key(
        tenant=make_tenant(
            name="Acme", plan=plan, store_images=True, webhook_url="https://acme.example/hooks"
        ),
        scopes=["read", "identify"],
        name="front desk",
    )
    with tenant_transaction(tenant.id):
        record_usage(tenant=tenant, api_key=None, operation="identify", units=7, idempotency_key="request:1")

    response = api_client_for(raw_key).get("/v1/tenant")

    body = response.json()
    assert response.status_code == 200
    assert (body["id"], body["slug"], body["name"], body["status"]) == (
        str(tenant.id),
        tenant.slug,
        "Acme",
        "active",
    )
    assert body["plan"]["name"] == "growth"
    assert (body["plan"]["requests_per_second"], body["plan"]["burst"]) == (50, 100)
    assert body["settings"] == {
        "default_match_threshold": None,
        "store_images": True,
        "image_retention_days": 30,
        "webhook_url": "https://acme.example/hooks",
    }
    assert body["usage_this_month"]["identify"] == {"used": 7, "included": 500}
    assert body["api_key"]["name"] == "front desk"
    assert body["api_key"]["scopes"] == ["read", "identify"]
    assert raw_key.startswith(body["api_key"]["prefix"] + "_")


@pytest.mark.django_db
def test_get_tenant_reports_stored_faces_in_face_months_as_the_plan_counts_them():
    tenant, raw_key = make_api_key(tenant=make_tenant(plan=make_plan(included_stored_face_months=10)))
    store_faces_all_this_month(tenant, faces=3)

    body = api_client_for(raw_key).get("/v1/tenant").json()

    assert body["usage_this_month"]["stored_face_months"] == {"used": 3, "included": 10}


@pytest.mark.django_db
def test_get_tenant_reveals_no_secret():
    tenant, raw_key = make_api_key()
    secret = raw_key.rsplit("_", 1)[-1]

    text = api_client_for(raw_key).get("/v1/tenant").content.decode()

    assert secret not in text
    assert tenant.webhook_secret not in text
    assert "secret" not in text


@pytest.mark.django_db
def test_another_tenants_key_sees_its_own_tenant():
    tenant_a, key_a = make_api_key()
    tenant_b, key_b = make_api_key()

    assert api_client_for(key_a).get("/v1/tenant").json()["id"] == str(tenant_a.id)
    assert api_client_for(key_b).get("/v1/tenant").json()["id"] == str(tenant_b.id)


def _v1_routes(patterns=None, prefix: str = "") -> list[tuple[str, object]]:
    routes = []
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            routes += _v1_routes(pattern.url_patterns, route)
        elif isinstance(pattern, URLPattern) and route.startswith("v1/"):
            routes.append((route, pattern.callback))
    return routes


def _v1_requests() -> list[tuple[str, str]]:
    requests = []
    for route, view in _v1_routes():
        path = "/" + re.sub(r"<(?:\w+:)?\w+>", PLACEHOLDER_ID, route)
        view_class = getattr(view, "cls", None) or getattr(view, "view_class", None)
        methods = [m for m in ("get", "post", "put", "patch", "delete") if hasattr(view_class, m)]
        requests += [(method, path) for method in methods]
    return requests


@pytest.mark.django_db
@pytest.mark.parametrize(("method", "path"), _v1_requests())
def test_every_v1_endpoint_refuses_a_request_without_an_api_key(client, method, path):
    response = getattr(client, method)(path)

    assert response.status_code == 401, response.content
    assert response["Content-Type"] == "application/problem+json"
