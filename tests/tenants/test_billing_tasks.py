"""The beat tasks of billing (tenants/tasks.py) run by a real Celery worker process, and the month logic
behind finalization with the clock as a parameter."""

import json
import shutil
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.conf import settings
from django.db import IntegrityError
from django.utils import timezone

from tenants.billing_services import (
    InvoiceIsFinal,
    finalize_closed_invoices,
    finalize_invoice,
    record_stored_faces_snapshot,
    refresh_draft_invoice,
)
from tenants.exporters import invoice_document, invoice_file_stem
from tenants.models import DailyUsage, Invoice, Tenant, UsageRecord
from tenants.periods import calendar_month
from tenants.rls import operator_transaction, tenant_transaction
from tenants.services import close_tenant, suspend_tenant
from tenants.tasks import aggregate_usage, export_invoice, finalize_invoices, snapshot_stored_faces
from tests.face_images import person_image
from tests.identity.conftest import make_tenant_api
from tests.tenants.billing_helpers import record_usage_at
from tests.tenants.factories import TEST_ACTOR, api_client_for, make_api_key, make_plan, make_tenant

DECEMBER = datetime(2025, 12, 1, tzinfo=UTC)
JANUARY = datetime(2026, 1, 1, tzinfo=UTC)
FEBRUARY = datetime(2026, 2, 1, tzinfo=UTC)


def _today():
    return timezone.now().astimezone(UTC).date()


def _noon(day) -> datetime:
    return datetime(day.year, day.month, day.day, 12, tzinfo=UTC)


def _created_at(tenant, moment: datetime) -> None:
    """Backdate a tenant, so that it existed during an earlier month."""
    Tenant.objects.filter(id=tenant.id).update(created_at=moment)


def _identify_plan(**overrides):
    return make_plan(
        included_identify=1_000,
        overage_identify_per_1000=Decimal("5.0000"),
        monthly_price=Decimal("10"),
        allows_overage=True,
        **overrides,
    )


def _invoice(tenant, period_start: datetime) -> Invoice:
    with tenant_transaction(tenant.id):
        return Invoice.objects.prefetch_related("lines").get(tenant=tenant, period_start=period_start)


def _line(invoice, operation: str):
    """From the lines prefetched inside the tenant's scope (outside it row-level security shows none)."""
    return next(line for line in invoice.lines.all() if line.operation == operation)


def _export_paths(invoice):
    folder = settings.VISOR_INVOICE_EXPORT_DIR / str(invoice.tenant_id)
    stem = invoice_file_stem(invoice)
    return folder / f"{stem}.json", folder / f"{stem}.csv"


@pytest.fixture
def worker_exports():
    """The suite's worker writes exports where this process's settings say (they share the environment);
    the folders of the tenants a test names are removed afterwards."""
    tenants = []
    yield tenants.append
    for tenant in tenants:
        shutil.rmtree(settings.VISOR_INVOICE_EXPORT_DIR / str(tenant.id), ignore_errors=True)


def _wait_for_file(path, *, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} was not written within {timeout} s"
        time.sleep(0.2)
    return path


# --- Stored-faces snapshot --------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_snapshot_meters_each_tenants_stored_faces_once_per_utc_day(celery_worker):
    acme, globex = make_tenant_api("Acme", store_images=False), make_tenant_api("Globex", store_images=False)
    make_tenant_api("Idle", store_images=False)
    for api, seeds in ((acme, (1, 2)), (globex, (3,))):
        subject = api.create_subject(api.create_gallery()["id"], "emp-1")
        for seed in seeds:
            assert api.enroll(subject["id"], person_image(seed)).status_code == 201

    first, second = (snapshot_stored_faces.delay().get(timeout=60) for _ in range(2))

    assert (first, second) == (2, 0), "hourly runs after the day's first meter nothing"
    with operator_transaction():
        records = set(
            UsageRecord.objects.filter(operation="stored_face_months").values_list(
                "tenant_id", "units", "idempotency_key", "api_key"
            )
        )
    key = f"snapshot:{_today().isoformat()}"
    # Face-days, without an API key (no key caused them); a tenant without faces has no record.
    assert records == {(acme.tenant.id, 2, key, None), (globex.tenant.id, 1, key, None)}


@pytest.mark.django_db(transaction=True)
def test_a_snapshot_still_writing_after_midnight_bills_its_own_day(celery_worker):
    acme = make_tenant_api("Acme", store_images=False)
    subject = acme.create_subject(acme.create_gallery()["id"], "emp-1")
    assert acme.enroll(subject["id"], person_image(1)).status_code == 201
    started = datetime(2026, 3, 31, 23, 59, 59, 900000, tzinfo=UTC)

    with operator_transaction():
        record_stored_faces_snapshot(now=started)
        record = UsageRecord.objects.get(operation="stored_face_months")

    assert record.idempotency_key == "snapshot:2026-03-31"
    assert record.created_at == started, "in March, whenever the insert ran"


# --- Daily aggregates -------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_aggregation_rebuilds_today_and_yesterday_from_the_ledger_and_any_day_since_on_request(
    celery_worker,
):
    tenant, raw_key = make_api_key(scopes=["read"])
    api_key = tenant.api_keys.get()
    today = _today()
    yesterday, four_days_ago, five_days_ago = (today - timedelta(days=n) for n in (1, 4, 5))
    record_usage_at(tenant, operation="identify", units=3, key="r:1", at=_noon(today), api_key=api_key)
    record_usage_at(tenant, operation="identify", units=1, key="r:2", at=_noon(today), api_key=api_key)
    record_usage_at(tenant, operation="verify", units=2, key="r:3", at=_noon(today))
    record_usage_at(tenant, operation="detect", units=4, key="r:4", at=_noon(yesterday))
    record_usage_at(tenant, operation="enroll", units=5, key="job:5", at=_noon(five_days_ago))
    # A damaged cache: a wrong row today and five days ago, and one four days ago with no ledger behind it.
    with tenant_transaction(tenant.id):
        for day, operation, prefix, units in (
            (today, "identify", "gone", 99),
            (five_days_ago, "enroll", "", 1),
            (four_days_ago, "detect", "", 7),
        ):
            DailyUsage.objects.create(
                tenant=tenant, day=day, operation=operation, api_key_prefix=prefix, units=units
            )

    def cache():
        with tenant_transaction(tenant.id):
            return set(DailyUsage.objects.values_list("day", "operation", "api_key_prefix", "units"))

    assert aggregate_usage.delay().get(timeout=60) == 2
    assert cache() == {
        (today, "identify", api_key.prefix, 4),
        (today, "verify", "", 2),
        (yesterday, "detect", "", 4),
        # Older days are left as they are by the beat run...
        (five_days_ago, "enroll", "", 1),
        (four_days_ago, "detect", "", 7),
    }

    # ...and rebuilt when an operator asks for them. Counted: the tenant-days with ledger records or cache
    # rows; the second run finds nothing left four days ago and leaves the same rows.
    rebuilt = [aggregate_usage.delay(since=five_days_ago.isoformat()).get(timeout=60) for _ in range(2)]
    assert rebuilt == [4, 3]
    assert cache() == {
        (today, "identify", api_key.prefix, 4),
        (today, "verify", "", 2),
        (yesterday, "detect", "", 4),
        (five_days_ago, "enroll", "", 5),
    }
    usage = api_client_for(raw_key).get(f"/v1/usage?from={five_days_ago}&to={today}").json()
    assert usage["totals"] == {"identify": 4, "verify": 2, "detect": 4, "enroll": 5}


# --- Finalization and export ------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_after_the_month_closes_its_draft_becomes_a_final_immutable_invoice_and_is_exported(
    celery_worker, worker_exports
):
    this_month = calendar_month(timezone.now())
    last_month = calendar_month(this_month.start - timedelta(microseconds=1))
    tenant = make_tenant(plan=_identify_plan())
    worker_exports(tenant)
    _created_at(tenant, last_month.start)  # an earlier month would be due too: it was never invoiced
    record_usage_at(tenant, operation="identify", units=1_500, key="batch:1", at=last_month.start)
    record_usage_at(tenant, operation="identify", units=7, key="batch:2", at=this_month.start)
    with tenant_transaction(tenant.id):
        draft = refresh_draft_invoice(tenant=tenant, period_start=last_month.start)

    assert finalize_invoices.delay().get(timeout=60) == 1

    final = _invoice(tenant, last_month.start)
    assert (final.id, final.status) == (draft.id, Invoice.Status.FINAL)
    assert final.finalized_at >= last_month.end
    identify = _line(final, "identify")
    # 500 over the included 1,000 at 5.00 per 1,000, plus the monthly 10.00; this month's 7 are not on it.
    assert (identify.units, identify.billable, identify.amount) == (1_500, 500, Decimal("2.50"))
    assert (final.subtotal, final.total) == (Decimal("2.50"), Decimal("12.50"))
    json_path, csv_path = _export_paths(final)
    assert json.loads(_wait_for_file(json_path).read_text()) == invoice_document(final)
    assert _wait_for_file(csv_path).read_text().splitlines()[-1] == "total,,,,,12.50"

    # Usage that reaches the ledger late cannot change it: finalization skips it, refreshing refuses, and
    # the database refuses a direct change.
    record_usage_at(tenant, operation="identify", units=500, key="batch:late", at=last_month.start)
    assert finalize_invoices.delay().get(timeout=60) == 0
    again = _invoice(tenant, last_month.start)
    assert (again.total, again.computed_at, _line(again, "identify").units) == (
        final.total,
        final.computed_at,
        1_500,
    )
    with pytest.raises(InvoiceIsFinal), tenant_transaction(tenant.id):
        refresh_draft_invoice(tenant=tenant, period_start=last_month.start)
    with pytest.raises(IntegrityError), operator_transaction():
        Invoice.objects.filter(id=final.id).update(total=Decimal("0.00"))


@pytest.mark.django_db(transaction=True)
def test_exporting_an_invoice_again_writes_the_same_documents(celery_worker, worker_exports):
    tenant = make_tenant(plan=_identify_plan())
    worker_exports(tenant)
    record_usage_at(tenant, operation="identify", units=2_345, key="batch:1", at=JANUARY + timedelta(days=3))
    with operator_transaction():
        invoice = finalize_invoice(tenant=tenant, period_start=JANUARY, now=FEBRUARY)

    exported = []
    for _ in range(2):
        assert export_invoice.delay(invoice_id=str(invoice.id), tenant_id=str(tenant.id)).get(
            timeout=60
        ) == str(invoice.id)
        exported.append(tuple(path.read_bytes() for path in _export_paths(invoice)))

    assert exported[0] == exported[1]
    assert json.loads(exported[0][0])["total"] == "16.73"
    assert sorted(path.name for path in _export_paths(invoice)[0].parent.iterdir()) == sorted(
        path.name for path in _export_paths(invoice)
    )


@pytest.mark.django_db
def test_a_month_is_finalized_in_the_first_run_after_it_closes_and_only_then():
    tenant = make_tenant(plan=_identify_plan())
    _created_at(tenant, JANUARY + timedelta(days=9))
    record_usage_at(
        tenant, operation="identify", units=1_001, key="batch:1", at=FEBRUARY - timedelta(seconds=1)
    )

    def finalized_at(now):
        with operator_transaction():
            return [
                (invoice.tenant_id, invoice.period_start) for invoice in finalize_closed_invoices(now=now)
            ]

    assert finalized_at(FEBRUARY - timedelta(microseconds=1)) == []
    assert finalized_at(FEBRUARY) == [(tenant.id, JANUARY)]
    assert finalized_at(FEBRUARY + timedelta(hours=1)) == []
    invoice = _invoice(tenant, JANUARY)
    assert (invoice.status, invoice.finalized_at, invoice.total) == (
        Invoice.Status.FINAL,
        FEBRUARY,
        Decimal("10.01"),
    )


@pytest.mark.django_db
def test_months_in_which_finalization_never_ran_are_invoiced_late_not_lost():
    plan = _identify_plan()
    invoiced_until_november, never_invoiced, closed_in_january = (
        make_tenant(name=name, plan=plan)
        for name in ("Invoiced until November", "Never invoiced", "Closed in January")
    )
    _created_at(invoiced_until_november, DECEMBER - timedelta(days=60))
    _created_at(never_invoiced, DECEMBER + timedelta(days=4))
    _created_at(closed_in_january, DECEMBER - timedelta(days=60))
    record_usage_at(
        closed_in_january, operation="identify", units=10, key="b:2", at=DECEMBER + timedelta(days=2)
    )
    with operator_transaction():
        finalize_invoice(tenant=closed_in_january, period_start=DECEMBER - timedelta(days=1), now=DECEMBER)
        close_tenant(tenant=closed_in_january, actor=TEST_ACTOR)
    with operator_transaction():
        finalize_invoice(
            tenant=invoiced_until_november, period_start=DECEMBER - timedelta(days=1), now=DECEMBER
        )
    record_usage_at(
        never_invoiced, operation="identify", units=2_000, key="b:1", at=DECEMBER + timedelta(days=9)
    )

    # The beat was down from December 1 to March 1: no run at all in January or February.
    with operator_transaction():
        finalized = finalize_closed_invoices(now=FEBRUARY + timedelta(days=28, minutes=5))
        again = finalize_closed_invoices(now=FEBRUARY + timedelta(days=28, hours=1))

    assert sorted((invoice.tenant.name, invoice.period_start.date()) for invoice in finalized) == [
        ("Closed in January", DECEMBER.date()),  # its months of use only
        ("Invoiced until November", DECEMBER.date()),
        ("Invoiced until November", JANUARY.date()),
        ("Invoiced until November", FEBRUARY.date()),
        ("Never invoiced", DECEMBER.date()),
        ("Never invoiced", JANUARY.date()),
        ("Never invoiced", FEBRUARY.date()),
    ]
    assert {invoice.status for invoice in finalized} == {Invoice.Status.FINAL}
    totals = {(invoice.tenant.name, invoice.period_start): invoice.total for invoice in finalized}
    assert totals[("Never invoiced", DECEMBER)] == Decimal("15.00"), "the month price plus 1,000 over"
    assert totals[("Never invoiced", JANUARY)] == Decimal("10.00")
    assert again == []


@pytest.mark.django_db
def test_every_billable_tenant_gets_a_final_invoice_for_the_closed_month():
    plan = _identify_plan()
    active, suspended, closed_after_use, closed_idle, newcomer, late_payer = (
        make_tenant(name=name, plan=plan)
        for name in ("Active", "Suspended", "Closed after use", "Closed idle", "Newcomer", "Late")
    )
    for tenant in (active, suspended, closed_after_use, closed_idle):
        _created_at(tenant, JANUARY + timedelta(days=9))
    _created_at(newcomer, FEBRUARY + timedelta(minutes=30))
    _created_at(late_payer, DECEMBER + timedelta(days=4))
    record_usage_at(
        closed_after_use, operation="identify", units=3, key="b:1", at=JANUARY + timedelta(days=20)
    )
    with operator_transaction():
        suspend_tenant(tenant=suspended, actor=TEST_ACTOR)
        close_tenant(tenant=closed_after_use, actor=TEST_ACTOR)
        close_tenant(tenant=closed_idle, actor=TEST_ACTOR)
    # A draft of an older month that was never finalized (the beat task did not run then).
    with tenant_transaction(late_payer.id):
        refresh_draft_invoice(tenant=late_payer, period_start=DECEMBER + timedelta(days=20))

    with operator_transaction():
        finalized = finalize_closed_invoices(now=FEBRUARY + timedelta(minutes=59))

    assert {(invoice.tenant.name, invoice.period_start) for invoice in finalized} == {
        ("Active", JANUARY),
        ("Suspended", JANUARY),
        ("Closed after use", JANUARY),
        ("Late", JANUARY),
        ("Late", DECEMBER),
    }
    # A tenant pays the plan's monthly price for a month it existed in, with or without usage.
    assert {invoice.total for invoice in finalized} == {Decimal("10.00")}
