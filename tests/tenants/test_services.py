from datetime import UTC, datetime, timedelta

import pytest
from django.core.exceptions import ValidationError

from infra.request_id import current_request_id
from tenants import services
from tenants.actors import Actor, ApiKeyPrincipal
from tenants.api_keys import split_key
from tenants.models import ApiKey, AuditEvent, Tenant, UsageRecord
from tenants.problems import CapacityExceeded, QuotaExceeded
from tenants.rls import operator_transaction, tenant_transaction
from tests.tenants.factories import TEST_ACTOR, api_client_for, make_api_key, make_plan, make_tenant

MID_MONTH = datetime(2031, 3, 14, 15, 9, tzinfo=UTC)


def _use(tenant, operation: str, units: int, *, key: str, at: datetime | None = None) -> None:
    with tenant_transaction(tenant.id):
        services.record_usage(
            tenant=tenant, api_key=None, operation=operation, units=units, idempotency_key=key
        )
        if at is not None:
            UsageRecord.objects.filter(tenant=tenant, idempotency_key=key).update(created_at=at)


# --- Quotas -----------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_past_the_included_units_without_overage_the_quota_problem_names_the_quota_and_its_reset():
    tenant = make_tenant(plan=make_plan(name="starter", included_identify=3, allows_overage=False))
    _use(tenant, "identify", 3, key="batch", at=MID_MONTH)

    with pytest.raises(QuotaExceeded) as raised, tenant_transaction(tenant.id):
        services.check_quota(tenant=tenant, operation="identify", now=MID_MONTH)

    problem = raised.value
    assert problem.status_code == 429
    assert problem.extra == {
        "quota": "identify",
        "limit": 3,
        "used": 3,
        "resets_at": "2031-04-01T00:00:00+00:00",
    }
    assert "identify" in str(problem.detail)
    assert "2031-04-01T00:00:00+00:00" in str(problem.detail)
    assert int(problem.headers["Retry-After"]) == int(
        (datetime(2031, 4, 1, tzinfo=UTC) - MID_MONTH).total_seconds()
    )


@pytest.mark.django_db
def test_within_the_included_units_the_quota_allows_the_request():
    tenant = make_tenant(plan=make_plan(included_identify=3))
    _use(tenant, "identify", 2, key="batch", at=MID_MONTH)

    with tenant_transaction(tenant.id):
        services.check_quota(tenant=tenant, operation="identify", now=MID_MONTH)


@pytest.mark.django_db
def test_the_quota_counts_the_units_the_request_would_add():
    tenant = make_tenant(plan=make_plan(included_enroll=3))
    _use(tenant, "enroll", 2, key="batch", at=MID_MONTH)

    with pytest.raises(QuotaExceeded), tenant_transaction(tenant.id):
        services.check_quota(tenant=tenant, operation="enroll", units=2, now=MID_MONTH)


@pytest.mark.django_db
def test_with_overage_allowed_the_quota_never_refuses():
    tenant = make_tenant(plan=make_plan(included_identify=1, allows_overage=True))
    _use(tenant, "identify", 50, key="batch", at=MID_MONTH)

    with tenant_transaction(tenant.id):
        services.check_quota(tenant=tenant, operation="identify", now=MID_MONTH)


@pytest.mark.django_db
def test_last_months_usage_and_other_operations_do_not_count_against_this_months_quota():
    tenant = make_tenant(plan=make_plan(included_identify=3))
    _use(tenant, "identify", 10, key="last-month", at=MID_MONTH - timedelta(days=20))
    _use(tenant, "verify", 10, key="verify", at=MID_MONTH)

    with tenant_transaction(tenant.id):
        services.check_quota(tenant=tenant, operation="identify", now=MID_MONTH)


@pytest.mark.django_db
def test_another_tenants_usage_does_not_count():
    plan = make_plan(included_identify=3)
    busy, quiet = make_tenant(plan=plan), make_tenant(plan=plan)
    _use(busy, "identify", 10, key="batch", at=MID_MONTH)

    with tenant_transaction(quiet.id):
        services.check_quota(tenant=quiet, operation="identify", now=MID_MONTH)


# --- Capacity ---------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_capacity_allows_a_gallery_and_a_tenant_up_to_the_plans_limits():
    tenant = make_tenant(plan=make_plan(max_gallery_faces=5, max_tenant_faces=8))

    services.check_capacity(tenant=tenant, gallery_faces=5, tenant_faces=8)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("counts", "limit_name", "limit"),
    [
        ({"gallery_faces": 6}, "max_gallery_faces", 5),
        ({"gallery_faces": 2, "tenant_faces": 9}, "max_tenant_faces", 8),
    ],
)
def test_capacity_refuses_a_write_that_would_pass_a_limit_and_names_it(counts, limit_name, limit):
    tenant = make_tenant(plan=make_plan(max_gallery_faces=5, max_tenant_faces=8))

    with pytest.raises(CapacityExceeded) as raised:
        services.check_capacity(tenant=tenant, **counts)

    assert raised.value.status_code == 409
    assert raised.value.extra["limit_name"] == limit_name
    assert raised.value.extra["limit"] == limit


# --- Usage ledger -----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_usage_is_counted_once_per_idempotency_key_and_operation():
    tenant = make_tenant()

    with tenant_transaction(tenant.id):
        first = services.record_usage(
            tenant=tenant, api_key=None, operation="identify", units=1, idempotency_key="request:1"
        )
        retried = services.record_usage(
            tenant=tenant, api_key=None, operation="identify", units=1, idempotency_key="request:1"
        )
        other_operation = services.record_usage(
            tenant=tenant, api_key=None, operation="detect", units=1, idempotency_key="request:1"
        )
        rows = UsageRecord.objects.filter(tenant=tenant).count()

    assert (first, retried, other_operation) == (True, False, True)
    assert rows == 2


@pytest.mark.django_db
def test_an_unknown_operation_is_not_metered():
    tenant = make_tenant()

    with pytest.raises(ValueError, match="teleport"), tenant_transaction(tenant.id):
        services.record_usage(tenant=tenant, api_key=None, operation="teleport", units=1, idempotency_key="x")


# --- Audit ------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_audit_event_names_the_api_key_and_the_request_it_came_from():
    tenant, raw_key = make_api_key()
    api_key = ApiKey.objects.get(prefix=split_key(raw_key)[0])
    token = current_request_id.set("req-audit-0001")
    try:
        with tenant_transaction(tenant.id):
            event = services.record_audit_event(
                tenant=tenant,
                actor=ApiKeyPrincipal(api_key=api_key, tenant=tenant),
                action="gallery.created",
                object_type="gallery",
                object_id="g-1",
                details={"name": "lobby"},
            )
    finally:
        current_request_id.reset(token)

    assert (event.actor_type, event.actor_id, event.actor_label) == (
        "api_key",
        str(api_key.id),
        api_key.prefix,
    )
    assert event.request_id == "req-audit-0001"
    assert (event.action, event.object_type, event.object_id) == ("gallery.created", "gallery", "g-1")
    assert event.details == {"name": "lobby"}


@pytest.mark.django_db
def test_an_operators_write_is_audited_with_the_operator_as_actor(operator_user):
    tenant = make_tenant()

    with operator_transaction():
        services.suspend_tenant(tenant=tenant, actor=operator_user, reason="unpaid invoice")
        event = AuditEvent.objects.get(tenant=tenant, action="tenant.suspended")

    assert (event.actor_type, event.actor_label) == ("operator", "operator")
    assert event.details == {"reason": "unpaid invoice"}


@pytest.mark.django_db
def test_an_actor_must_be_someone():
    tenant = make_tenant()

    with pytest.raises(TypeError), operator_transaction():
        services.record_audit_event(tenant=tenant, actor=None, action="x", object_type="y", object_id=1)


# --- Tenants and keys -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_new_tenant_gets_a_unique_slug_a_webhook_secret_and_without_a_plan_the_default_plan():
    with operator_transaction():
        first = services.create_tenant(name="Acme Corp", actor=TEST_ACTOR)
        second = services.create_tenant(name="Acme Corp", actor=TEST_ACTOR)

    assert first.slug == "acme-corp"
    assert second.slug.startswith("acme-corp-")
    assert first.plan.name == services.DEFAULT_PLAN_NAME
    assert first.webhook_secret.startswith("whsec_")
    assert first.webhook_secret != second.webhook_secret
    assert first.status == Tenant.Status.ACTIVE


@pytest.mark.django_db
def test_a_taken_slug_is_refused():
    taken = make_tenant(name="Acme").slug

    with pytest.raises(ValidationError, match="taken"), operator_transaction():
        services.create_tenant(name="Other", slug=taken, actor=TEST_ACTOR)


@pytest.mark.django_db
def test_scopes_must_be_a_non_empty_subset_of_the_known_ones():
    tenant = make_tenant()

    for scopes in ([], ["read", "superpowers"]):
        with pytest.raises(ValidationError), operator_transaction():
            services.create_api_key(tenant=tenant, actor=TEST_ACTOR, name="bad", scopes=scopes)


@pytest.mark.django_db
def test_rotating_a_key_issues_a_working_replacement_and_revokes_the_old_one():
    tenant, old_key = make_api_key(scopes=["read", "identify"], name="kiosk")
    old = ApiKey.objects.get(prefix=split_key(old_key)[0])

    with operator_transaction():
        issued = services.rotate_api_key(api_key=old, actor=TEST_ACTOR)

    assert api_client_for(old_key).get("/v1/tenant").status_code == 401
    assert api_client_for(issued.raw_key).get("/v1/tenant").status_code == 200
    assert (issued.api_key.name, issued.api_key.scopes, issued.api_key.tenant) == (
        "kiosk",
        ["read", "identify"],
        tenant,
    )


@pytest.mark.django_db
def test_a_closed_tenant_cannot_be_reactivated_or_suspended():
    tenant = make_tenant()
    with operator_transaction():
        services.close_tenant(tenant=tenant, actor=TEST_ACTOR)

    for change in (services.reactivate_tenant, services.suspend_tenant):
        with pytest.raises(ValidationError), operator_transaction():
            change(tenant=tenant, actor=TEST_ACTOR)


@pytest.mark.django_db
def test_only_names_plans_and_settings_change_through_update_tenant():
    tenant = make_tenant()

    with pytest.raises(ValidationError, match="status"), operator_transaction():
        services.update_tenant(tenant=tenant, actor=Actor.system("test"), changes={"status": "active"})


@pytest.mark.django_db
def test_a_status_change_decided_on_a_stale_copy_cannot_reopen_a_closed_tenant():
    tenant = make_tenant()
    loaded_before_the_closure = Tenant.objects.get(id=tenant.id)
    with operator_transaction():
        services.close_tenant(tenant=tenant, actor=TEST_ACTOR)

    for change in (services.reactivate_tenant, services.suspend_tenant):
        with pytest.raises(ValidationError), operator_transaction():
            change(tenant=loaded_before_the_closure, actor=TEST_ACTOR)

    assert Tenant.objects.get(id=tenant.id).status == Tenant.Status.CLOSED


@pytest.mark.django_db
def test_a_closed_tenant_gets_no_new_api_key():
    tenant = make_tenant()
    with operator_transaction():
        services.close_tenant(tenant=tenant, actor=TEST_ACTOR)

    with pytest.raises(ValidationError, match="closed"), operator_transaction():
        services.create_api_key(tenant=tenant, actor=TEST_ACTOR, name="late", scopes=["read"])

    assert not ApiKey.objects.filter(tenant=tenant, revoked_at__isnull=True).exists()


@pytest.mark.django_db
def test_an_expired_or_revoked_key_is_not_rotated_into_a_replacement_that_cannot_work():
    _, expired_key = make_api_key(name="expired")
    _, revoked_key = make_api_key(name="revoked")
    expired = ApiKey.objects.get(prefix=split_key(expired_key)[0])
    revoked = ApiKey.objects.get(prefix=split_key(revoked_key)[0])
    with operator_transaction():
        ApiKey.objects.filter(id=expired.id).update(expires_at=datetime.now(UTC) - timedelta(days=1))
        expired.refresh_from_db()
        services.revoke_api_key(api_key=revoked, actor=TEST_ACTOR)

    for key in (expired, revoked):
        with pytest.raises(ValidationError, match="revoked or expired"), operator_transaction():
            services.rotate_api_key(api_key=key, actor=TEST_ACTOR)

    assert set(ApiKey.objects.values_list("name", flat=True)) == {"expired", "revoked"}, "nothing issued"
