from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import IntegrityError

from tenants import billing
from tenants.billing_services import (
    InvoiceIsFinal,
    MonthNotClosed,
    finalize_invoice,
    refresh_draft_invoice,
)
from tenants.models import Invoice
from tenants.rls import operator_transaction, tenant_transaction
from tenants.services import update_tenant
from tests.tenants.billing_helpers import record_usage_at
from tests.tenants.factories import TEST_ACTOR, make_plan, make_tenant

JANUARY = datetime(2026, 1, 1, tzinfo=UTC)
FEBRUARY = datetime(2026, 2, 1, tzinfo=UTC)
MID_JANUARY = datetime(2026, 1, 15, 12, tzinfo=UTC)


def _lines(invoice) -> dict:
    return {line.operation: line for line in invoice.lines.all()}


def _draft(tenant, month=JANUARY):
    with tenant_transaction(tenant.id):
        invoice = refresh_draft_invoice(tenant=tenant, period_start=month)
        return Invoice.objects.prefetch_related("lines").get(id=invoice.id)


def _identify_plan(**overrides):
    return make_plan(
        included_identify=1_000, overage_identify_per_1000=Decimal("5.0000"), allows_overage=True, **overrides
    )


def _identifies(tenant, count: int, *, at=MID_JANUARY) -> None:
    record_usage_at(tenant, operation="identify", units=count, key=f"batch:{at.isoformat()}", at=at)


@pytest.mark.django_db
def test_usage_exactly_at_the_included_units_bills_nothing():
    tenant = make_tenant(plan=_identify_plan())
    _identifies(tenant, 1_000)

    line = _lines(_draft(tenant))["identify"]

    assert (line.units, line.included, line.billable, line.amount) == (1_000, 1_000, 0, Decimal("0.00"))


@pytest.mark.django_db
def test_one_unit_over_is_billed_and_rounded_half_up_to_the_cent():
    tenant = make_tenant(plan=_identify_plan())
    _identifies(tenant, 1_001)

    invoice = _draft(tenant)

    line = _lines(invoice)["identify"]
    # 1 x 5.0000 / 1,000 = 0.005, which rounds half-up to 0.01.
    assert (line.billable, line.unit_price_per_1000, line.amount) == (1, Decimal("5.0000"), Decimal("0.01"))
    assert invoice.subtotal == Decimal("0.01")


@pytest.mark.django_db
def test_zero_usage_bills_only_the_monthly_price_with_a_line_per_operation():
    tenant = make_tenant(plan=_identify_plan(monthly_price=Decimal("49.995")))

    invoice = _draft(tenant)

    assert set(_lines(invoice)) == {"enroll", "identify", "verify", "detect", "stored_face_months"}
    assert all(line.units == 0 and line.amount == 0 for line in invoice.lines.all())
    assert (invoice.subtotal, invoice.monthly_price, invoice.total) == (
        Decimal("0.00"),
        Decimal("50.00"),
        Decimal("50.00"),
    )


@pytest.mark.django_db
def test_a_record_belongs_to_the_utc_month_it_was_made_in():
    tenant = make_tenant(plan=_identify_plan())
    _identifies(tenant, 1_001, at=FEBRUARY - timedelta(microseconds=1))
    _identifies(tenant, 3, at=FEBRUARY)

    assert _lines(_draft(tenant, JANUARY))["identify"].units == 1_001
    assert _lines(_draft(tenant, FEBRUARY))["identify"].units == 3


@pytest.mark.django_db
def test_the_plan_in_force_when_the_invoice_is_computed_prices_the_whole_month():
    tenant = make_tenant(plan=_identify_plan())
    _identifies(tenant, 2_000)
    assert _draft(tenant).total == Decimal("5.00")

    pricier = _identify_plan(name="pricier", monthly_price=Decimal("10"))
    pricier.overage_identify_per_1000 = Decimal("7.5")
    pricier.save()
    with operator_transaction():
        update_tenant(tenant=tenant, actor=TEST_ACTOR, changes={"plan": pricier})
    with operator_transaction():
        invoice = finalize_invoice(tenant=tenant, period_start=JANUARY, now=FEBRUARY)

    assert (invoice.subtotal, invoice.total) == (Decimal("7.50"), Decimal("17.50"))
    assert invoice.plan_snapshot["name"] == "pricier"


@pytest.mark.django_db
def test_a_month_is_finalized_only_after_it_closes():
    tenant = make_tenant(plan=_identify_plan())

    with pytest.raises(MonthNotClosed), operator_transaction():
        finalize_invoice(tenant=tenant, period_start=JANUARY, now=FEBRUARY - timedelta(microseconds=1))


@pytest.mark.django_db
def test_a_final_invoice_never_changes():
    tenant = make_tenant(plan=_identify_plan())
    _identifies(tenant, 1_500)
    with operator_transaction():
        final = finalize_invoice(tenant=tenant, period_start=JANUARY, now=FEBRUARY)
    _identifies(tenant, 500, at=MID_JANUARY + timedelta(seconds=1))

    with operator_transaction():
        again = finalize_invoice(tenant=tenant, period_start=JANUARY, now=FEBRUARY + timedelta(days=1))
    assert (again.total, again.finalized_at) == (final.total, FEBRUARY)
    with pytest.raises(InvoiceIsFinal), tenant_transaction(tenant.id):
        refresh_draft_invoice(tenant=tenant, period_start=JANUARY)
    with pytest.raises(IntegrityError), operator_transaction():
        Invoice.objects.filter(id=final.id).update(total=Decimal("0"))
    with pytest.raises(IntegrityError), operator_transaction():
        final.lines.all().delete()


@pytest.mark.parametrize(
    ("face_days", "days", "face_months"),
    [(30_000, 30, 1_000), (15, 30, 1), (14, 30, 0), (45, 30, 2), (44, 30, 1), (0, 31, 0)],
)
def test_face_days_become_face_months_rounded_half_up(face_days, days, face_months):
    assert billing.face_months(face_days=face_days, days_in_month=days) == face_months


@pytest.mark.django_db
def test_stored_faces_are_billed_in_face_months_of_the_invoice_month():
    tenant = make_tenant(plan=make_plan(included_stored_face_months=10, allows_overage=True))
    # 12 faces every day of February 2026 (28 days): 336 face-days, 12 face-months, 2 over.
    for day in range(28):
        at = FEBRUARY + timedelta(days=day, hours=1)
        record_usage_at(tenant, operation="stored_face_months", units=12, key=f"snapshot:{day}", at=at)

    line = _lines(_draft(tenant, FEBRUARY))["stored_face_months"]

    assert (line.units, line.included, line.billable) == (12, 10, 2)
