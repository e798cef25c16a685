"""The operator console at /admin/, driven through Django's test client as a signed-in staff user."""

import re
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.http import HttpResponse
from django.test import RequestFactory
from django.utils import timezone

from tenants.api_keys import split_key
from tenants.middleware import OperatorConsoleMiddleware
from tenants.models import ApiKey, AuditEvent, Plan, Tenant, UsageRecord
from tenants.rls import operator_transaction, tenant_transaction
from tenants.services import record_usage
from tests.tenants.billing_helpers import store_faces_all_this_month
from tests.tenants.factories import api_client_for, make_api_key, make_plan, make_tenant

ISSUED_KEY = re.compile(r'<code class="issued-api-key"[^>]*>([^<]+)</code>')


def _issued_keys(response) -> list[str]:
    assert response.status_code == 200, response.content
    return ISSUED_KEY.findall(response.content.decode())


def _audit(action: str) -> AuditEvent:
    with operator_transaction():
        return AuditEvent.objects.filter(action=action).latest("created_at")


@pytest.mark.django_db
def test_creating_a_tenant_issues_its_first_key_shown_once(console):
    plan = make_plan(name="pro")

    response = console.post(
        "/admin/tenants/tenant/add/",
        {"name": "Acme", "slug": "", "plan": plan.id, "key_name": "first", "scopes": ["read", "identify"]},
    )

    [raw_key] = _issued_keys(response)
    tenant = Tenant.objects.get(name="Acme")
    assert tenant.plan == plan
    assert api_client_for(raw_key).get("/v1/tenant").json()["slug"] == tenant.slug
    assert "no-store" in response["Cache-Control"]
    change_page = console.get(f"/admin/tenants/tenant/{tenant.id}/change/").content.decode()
    assert split_key(raw_key)[0] in change_page
    assert raw_key not in change_page
    assert _audit("tenant.created").actor_label == "operator"


@pytest.mark.django_db
def test_the_onboarding_form_reports_a_taken_slug(console):
    taken = make_tenant().slug

    response = console.post(
        "/admin/tenants/tenant/add/",
        {"name": "Again", "slug": taken, "plan": make_plan().id, "key_name": "k", "scopes": ["read"]},
    )

    assert response.status_code == 200
    assert "is taken" in response.content.decode()
    assert _issued_keys(response) == []


@pytest.mark.django_db
def test_the_tenant_list_shows_status_plan_and_usage_this_month_at_a_glance(console):
    tenant = make_tenant(name="Busy", plan=make_plan(name="metered", included_identify=1000))
    with tenant_transaction(tenant.id):
        record_usage(tenant=tenant, api_key=None, operation="identify", units=1234, idempotency_key="a")

    page = console.get("/admin/tenants/tenant/").content.decode()

    assert "Busy" in page
    assert "metered" in page
    assert "identify 1,234 / 1,000" in page


@pytest.mark.django_db
def test_the_tenant_list_counts_stored_faces_in_face_months_not_ledger_face_days(console):
    tenant = make_tenant(name="Archive", plan=make_plan(included_stored_face_months=5))
    store_faces_all_this_month(tenant, faces=2)

    page = console.get("/admin/tenants/tenant/").content.decode()

    assert "stored_face_months 2 / 5" in page


@pytest.mark.django_db
def test_the_tenant_page_draws_the_last_30_days_of_usage(console):
    tenant = make_tenant()
    with tenant_transaction(tenant.id):
        record_usage(tenant=tenant, api_key=None, operation="identify", units=3, idempotency_key="a")
        record_usage(tenant=tenant, api_key=None, operation="enroll", units=2, idempotency_key="b")

    page = console.get(f"/admin/tenants/tenant/{tenant.id}/change/").content.decode()

    today = timezone.now().date().isoformat()
    assert "<svg" in page
    assert f"<title>{today}: 3 identify</title>" in page
    assert f"<title>{today}: 2 enroll</title>" in page


@pytest.mark.django_db
def test_suspend_and_reactivate_actions(console):
    tenant, raw_key = make_api_key()

    console.post("/admin/tenants/tenant/", {"action": "suspend_tenants", "_selected_action": [tenant.id]})
    suspended = api_client_for(raw_key).get("/v1/tenant").status_code
    console.post("/admin/tenants/tenant/", {"action": "reactivate_tenants", "_selected_action": [tenant.id]})
    reactivated = api_client_for(raw_key).get("/v1/tenant").status_code

    assert (suspended, reactivated) == (403, 200)
    assert _audit("tenant.suspended").actor_label == "operator"


@pytest.mark.django_db
def test_editing_a_tenants_settings_goes_through_the_service_and_is_audited(console):
    tenant = make_tenant(name="Old name")
    form = {
        "name": "New name",
        "plan": tenant.plan_id,
        "default_match_threshold": "0.42",
        "store_images": "on",
        "image_retention_days": "7",
        "webhook_url": "",
        "api_keys-TOTAL_FORMS": "0",
        "api_keys-INITIAL_FORMS": "0",
    }

    response = console.post(f"/admin/tenants/tenant/{tenant.id}/change/", form)

    tenant.refresh_from_db()
    assert response.status_code == 302
    assert (tenant.name, tenant.default_match_threshold, tenant.store_images) == ("New name", 0.42, True)
    assert set(_audit("tenant.updated").details["changed"]) >= {
        "name",
        "default_match_threshold",
        "store_images",
    }


@pytest.mark.django_db
def test_revoking_keys_from_the_console(console):
    _, raw_key = make_api_key()
    api_key = ApiKey.objects.get(prefix=split_key(raw_key)[0])

    console.post("/admin/tenants/apikey/", {"action": "revoke_keys", "_selected_action": [api_key.id]})

    assert api_client_for(raw_key).get("/v1/tenant").status_code == 401
    assert _audit("api_key.revoked").actor_label == "operator"


@pytest.mark.django_db
def test_rotating_keys_from_the_console_shows_each_replacement_once(console):
    tenant, first = make_api_key()
    _, second = make_api_key(tenant=tenant)
    selected = [ApiKey.objects.get(prefix=split_key(key)[0]).id for key in (first, second)]

    response = console.post("/admin/tenants/apikey/", {"action": "rotate_keys", "_selected_action": selected})

    replacements = _issued_keys(response)
    assert len(replacements) == 2
    assert [api_client_for(key).get("/v1/tenant").status_code for key in (first, second)] == [401, 401]
    assert [api_client_for(key).get("/v1/tenant").status_code for key in replacements] == [200, 200]


def _issue_read_key(console, tenant, *, expires_in_days: str):
    return console.post(
        "/admin/tenants/apikey/add/",
        {"tenant": tenant.id, "name": "kiosk", "scopes": ["read"], "expires_in_days": expires_in_days},
    )


@pytest.mark.django_db
def test_issuing_a_key_for_an_existing_tenant(console):
    tenant = make_tenant()

    response = _issue_read_key(console, tenant, expires_in_days="90")

    [raw_key] = _issued_keys(response)
    api_key = ApiKey.objects.get(prefix=split_key(raw_key)[0])
    assert (api_key.tenant, api_key.scopes) == (tenant, ["read"])
    assert api_key.expires_at is not None
    assert api_client_for(raw_key).get("/v1/tenant").status_code == 200


@pytest.mark.django_db
def test_a_key_expiry_beyond_ten_years_is_a_form_error_not_a_crash(console):
    tenant = make_tenant()

    response = _issue_read_key(console, tenant, expires_in_days="3000000")

    assert response.status_code == 200
    assert "Ensure this value is less than or equal to 3650." in response.content.decode()
    assert not ApiKey.objects.filter(tenant=tenant).exists()


@pytest.mark.django_db
def test_keys_cannot_be_edited_or_deleted_only_revoked(console):
    _, raw_key = make_api_key()
    api_key = ApiKey.objects.get(prefix=split_key(raw_key)[0])

    page = console.get(f"/admin/tenants/apikey/{api_key.id}/change/").content.decode()
    delete = console.get(f"/admin/tenants/apikey/{api_key.id}/delete/")

    assert 'name="_save"' not in page
    assert delete.status_code == 403


def _plan_form(**overrides) -> dict:
    return {
        "name": "scale",
        "monthly_price": "499.0000",
        "currency": "EUR",
        "allows_overage": "on",
        **{
            f"included_{op}": "1000"
            for op in ("enroll", "identify", "verify", "detect", "stored_face_months")
        },
        **{
            f"overage_{op}_per_1000": "1.5000"
            for op in ("enroll", "identify", "verify", "detect", "stored_face_months")
        },
        "requests_per_second": "100",
        "burst": "200",
        "max_gallery_faces": "100000",
        "max_tenant_faces": "1000000",
        **overrides,
    }


@pytest.mark.django_db
def test_creating_a_plan_is_audited_as_an_operator_action_of_no_tenant(console):
    response = console.post("/admin/tenants/plan/add/", _plan_form())

    assert response.status_code == 302, response.content
    assert Plan.objects.get(name="scale").allows_overage is True
    event = _audit("plan.created")
    assert event.tenant is None
    assert event.details["name"] == "scale"


@pytest.mark.django_db
def test_the_audit_log_spans_tenants_and_is_read_only(console):
    tenant_a, _ = make_tenant(name="Alpha"), make_tenant(name="Bravo")

    page = console.get("/admin/tenants/auditevent/").content.decode()
    add = console.get("/admin/tenants/auditevent/add/")
    with operator_transaction():
        event = AuditEvent.objects.filter(tenant=tenant_a).first()
    change = console.post(f"/admin/tenants/auditevent/{event.id}/change/", {"action": "forged"})

    assert "Alpha" in page
    assert "Bravo" in page
    assert add.status_code == 403
    assert change.status_code == 403


@pytest.mark.django_db
def test_the_operator_path_is_only_for_staff_and_only_under_the_admin():
    tenant = make_tenant()
    with tenant_transaction(tenant.id):
        record_usage(tenant=tenant, api_key=None, operation="detect", units=1, idempotency_key="a")
    User = get_user_model()
    staff = User.objects.create_user("staff", password="x" * 20, is_staff=True)
    customer = User.objects.create_user("customer", password="x" * 20)

    def rows_seen(user, path: str) -> int:
        request = RequestFactory().get(path)
        request.user = user
        seen = OperatorConsoleMiddleware(lambda _: HttpResponse(str(UsageRecord.objects.count())))(request)
        return int(seen.content)

    assert rows_seen(staff, "/admin/tenants/usagerecord/") == 1
    assert rows_seen(customer, "/admin/tenants/usagerecord/") == 0
    assert rows_seen(staff, "/v1/tenant") == 0


@pytest.mark.django_db
def test_the_console_needs_a_staff_login(client):
    response = client.get("/admin/tenants/tenant/")

    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


@pytest.mark.django_db
@pytest.mark.parametrize("price", ["monthly_price", "overage_identify_per_1000"])
def test_a_plan_with_a_negative_price_is_refused_by_the_form_and_by_the_database(console, price):
    response = console.post("/admin/tenants/plan/add/", _plan_form(name="refund", **{price: "-50"}))

    assert response.status_code == 200, "the form is shown again with its error"
    assert "greater than or equal to 0" in response.content.decode()
    assert not Plan.objects.filter(name="refund").exists()
    with pytest.raises(IntegrityError), transaction.atomic():
        make_plan(name="refund", **{price: Decimal("-50")})
