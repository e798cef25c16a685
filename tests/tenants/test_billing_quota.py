"""The stored-faces quota counts face-months, as the plan and the invoice do, not the ledger's face-days."""

from datetime import UTC, datetime

import pytest

from tenants import services
from tenants.billing_services import refresh_draft_invoice
from tenants.problems import QuotaExceeded
from tenants.rls import tenant_transaction
from tests.tenants.billing_helpers import record_usage_at
from tests.tenants.factories import make_plan, make_tenant

MARCH = datetime(2031, 3, 1, tzinfo=UTC)  # 31 days
MID_MARCH = datetime(2031, 3, 20, 9, tzinfo=UTC)


def _tenant_with_face_days(face_days: int):
    tenant = make_tenant(plan=make_plan(included_stored_face_months=10, allows_overage=False))
    record_usage_at(tenant, operation="stored_face_months", units=face_days, key="snapshot:m", at=MID_MARCH)
    return tenant


@pytest.mark.django_db
def test_one_face_month_under_the_quota_may_add_the_one_that_reaches_it():
    # 294 face-days of a 31-day month are 9.48 face-months, 9 as invoiced.
    tenant = _tenant_with_face_days(294)

    with tenant_transaction(tenant.id):
        services.check_quota(tenant=tenant, operation="stored_face_months", units=1, now=MID_MARCH)


@pytest.mark.django_db
def test_at_the_quota_one_face_month_more_is_refused():
    # 295 face-days are 9.52 face-months, 10 as invoiced: the included 10 are used up.
    tenant = _tenant_with_face_days(295)

    with pytest.raises(QuotaExceeded) as raised, tenant_transaction(tenant.id):
        services.check_quota(tenant=tenant, operation="stored_face_months", units=1, now=MID_MARCH)

    assert raised.value.extra == {
        "quota": "stored_face_months",
        "limit": 10,
        "used": 10,
        "resets_at": "2031-04-01T00:00:00+00:00",
    }


@pytest.mark.django_db
def test_the_quota_and_the_invoice_count_the_same_face_months():
    tenant = _tenant_with_face_days(295)

    with tenant_transaction(tenant.id):
        invoice = refresh_draft_invoice(tenant=tenant, period_start=MARCH)
        line = invoice.lines.get(operation="stored_face_months")

    assert (line.units, line.included, line.billable) == (10, 10, 0)
