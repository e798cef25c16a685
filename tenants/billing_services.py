"""Writes of billing: the stored-faces snapshot, the DailyUsage aggregates and monthly invoices.

The policy (what is billed, in which units, how money is rounded) lives in tenants.billing.

Plan changes: a month is priced under the plan the tenant has when its invoice is computed, for the whole
month, with no proration. A draft follows plan changes while its month is open; finalization, shortly after
the month closes, prices the month one last time and keeps a snapshot of the plan on the invoice.
"""

from datetime import UTC, date, datetime, timedelta

from django.db import connection, transaction
from django.db.models import Max
from django.utils import timezone

from tenants import billing, billing_selectors
from tenants.models import DailyUsage, Invoice, InvoiceLine, Tenant
from tenants.periods import calendar_month
from tenants.services import record_usage


class InvoiceIsFinal(Exception):
    """A final invoice never changes; corrections belong on a later invoice."""


class MonthNotClosed(Exception):
    """An invoice is finalized only after its month has ended."""


# --- Stored faces ----------------------------------------------------------------------------------------


def record_stored_faces_snapshot(*, now: datetime | None = None) -> int:
    """Meter every tenant's stored faces as face-days of today (UTC); returns how many tenants were metered.

    Call it on the operator path. Keyed by the day, so only the first snapshot of a day counts and running it
    hourly is harmless; a day on which it never runs is not billed. Every record is dated at the snapshot's
    start, the day of its key: a run still writing after midnight must not bill that day to the next month.
    """
    now = now or timezone.now()
    today = now.astimezone(UTC).date()
    counts = billing_selectors.stored_face_counts()
    tenants = Tenant.objects.in_bulk(list(counts))
    metered = 0
    for tenant_id, faces in counts.items():
        metered += record_usage(
            tenant=tenants[tenant_id],
            api_key=None,
            operation="stored_face_months",
            units=faces,
            idempotency_key=f"snapshot:{today.isoformat()}",
            at=now,
        )
    return metered


# --- DailyUsage aggregates -------------------------------------------------------------------------------


def _lock(name: str) -> None:
    """Serialize writers of the same aggregate or invoice until the transaction ends."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [name])


@transaction.atomic
def rebuild_daily_usage(*, tenant: Tenant, day: date) -> list[DailyUsage]:
    """Replace the tenant's DailyUsage rows of `day` with sums of the ledger. Idempotent."""
    _lock(f"daily-usage:{tenant.id}:{day.isoformat()}")
    DailyUsage.objects.filter(tenant=tenant, day=day).delete()
    return DailyUsage.objects.bulk_create(
        DailyUsage(tenant=tenant, day=day, **row)
        for row in billing_selectors.ledger_units_of_day(tenant=tenant, day=day)
    )


def rebuild_usage_aggregates(*, first_day: date, last_day: date) -> int:
    """Rebuild every tenant's aggregates of the days first_day..last_day (UTC, inclusive) from the ledger;
    returns how many tenant-days were rebuilt. Operator path.

    A tenant-day is rebuilt when the ledger has records on it or the cache has rows for it, so that a cache
    row with nothing behind it in the ledger goes too.
    """
    rebuilt = 0
    day = first_day
    while day <= last_day:
        start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
        tenant_ids = billing_selectors.tenant_ids_with_ledger_records(
            start=start, end=start + timedelta(days=1)
        ) | billing_selectors.tenant_ids_with_daily_usage(day=day)
        for tenant in Tenant.objects.filter(id__in=tenant_ids):
            rebuild_daily_usage(tenant=tenant, day=day)
            rebuilt += 1
        day += timedelta(days=1)
    return rebuilt


def aggregate_recent_usage(*, now: datetime) -> int:
    """Rebuild today's and yesterday's aggregates (UTC); returns how many tenant-days were rebuilt. Operator
    path.

    Yesterday too, because a record stamped just before midnight may commit after the day's last run.
    """
    today = now.astimezone(UTC).date()
    return rebuild_usage_aggregates(first_day=today - timedelta(days=1), last_day=today)


# --- Invoices --------------------------------------------------------------------------------------------


def _invoice_for_update(*, tenant: Tenant, period_start: datetime) -> Invoice:
    """The month's invoice, created as an empty draft if need be, locked for this transaction."""
    month = calendar_month(period_start)
    Invoice.objects.bulk_create(
        [
            Invoice(
                tenant=tenant,
                period_start=month.start,
                period_end=month.end,
                currency=tenant.plan.currency,
                computed_at=timezone.now(),
            )
        ],
        ignore_conflicts=True,
    )
    return Invoice.objects.select_for_update().get(tenant=tenant, period_start=month.start)


def _price(invoice: Invoice, *, tenant: Tenant) -> Invoice:
    plan = tenant.plan
    priced = billing.price_month(
        plan=plan,
        ledger_units=billing_selectors.ledger_units_by_operation(
            tenant=tenant, start=invoice.period_start, end=invoice.period_end
        ),
        month_start=invoice.period_start,
    )
    invoice.currency = plan.currency
    invoice.plan_snapshot = billing.plan_snapshot(plan)
    invoice.monthly_price = priced.monthly_price
    invoice.subtotal = priced.subtotal
    invoice.total = priced.total
    invoice.computed_at = timezone.now()
    invoice.lines.all().delete()
    InvoiceLine.objects.bulk_create(
        InvoiceLine(
            invoice=invoice,
            tenant=tenant,
            operation=line.operation,
            units=line.units,
            included=line.included,
            billable=line.billable,
            unit_price_per_1000=line.unit_price_per_1000,
            amount=line.amount,
        )
        for line in priced.lines
    )
    return invoice


@transaction.atomic
def refresh_draft_invoice(*, tenant: Tenant, period_start: datetime) -> Invoice:
    """Recompute the draft invoice of the month containing `period_start` from the ledger (creating it).

    Raises InvoiceIsFinal for a month whose invoice is final.
    """
    invoice = _invoice_for_update(tenant=tenant, period_start=period_start)
    if invoice.status == Invoice.Status.FINAL:
        raise InvoiceIsFinal(f"The invoice {invoice.id} of {invoice.period_start:%Y-%m} is final.")
    _price(invoice, tenant=tenant)
    invoice.save()
    return invoice


@transaction.atomic
def finalize_invoice(*, tenant: Tenant, period_start: datetime, now: datetime) -> Invoice:
    """Price a closed month one last time and make its invoice final. A final invoice is returned unchanged.

    Raises MonthNotClosed while the month is still running at `now`.
    """
    month = calendar_month(period_start)
    if now < month.end:
        raise MonthNotClosed(f"{month.start:%Y-%m} ends at {month.end.isoformat()}.")
    invoice = _invoice_for_update(tenant=tenant, period_start=month.start)
    if invoice.status == Invoice.Status.FINAL:
        return invoice
    _price(invoice, tenant=tenant)
    invoice.status = Invoice.Status.FINAL
    invoice.finalized_at = now
    invoice.save()
    return invoice


def finalize_closed_invoices(*, now: datetime) -> list[Invoice]:
    """Finalize every closed month of every billable tenant that has no final invoice yet, and any draft left
    of an earlier month; returns the invoices finalized now. Operator path.

    Billable in a month: a tenant that existed during it and is not closed, or that recorded usage in it. A
    tenant's months are caught up from the one after its latest final invoice (from its creation when it has
    none), so a month in which this never ran (the beat was down for all of it) is invoiced late, not lost.
    """
    last_month = calendar_month(calendar_month(now).start - timedelta(microseconds=1))
    latest_final = dict(
        Invoice.objects.filter(status=Invoice.Status.FINAL)
        .values("tenant_id")
        .annotate(latest=Max("period_start"))
        .values_list("tenant_id", "latest")
    )
    due = {}
    for tenant in Tenant.objects.select_related("plan").filter(created_at__lt=last_month.end):
        finalized_until = latest_final.get(tenant.id)
        first = calendar_month(
            calendar_month(finalized_until).end if finalized_until is not None else tenant.created_at
        )
        if tenant.status == Tenant.Status.CLOSED:
            used = billing_selectors.months_with_ledger_records(
                tenant=tenant, start=first.start, end=last_month.end
            )
            due.update({(tenant.id, month_start): tenant for month_start in used})
            continue
        month = first
        while month.start <= last_month.start:
            due[(tenant.id, month.start)] = tenant
            month = calendar_month(month.end)
    for draft in Invoice.objects.select_related("tenant__plan").filter(
        status=Invoice.Status.DRAFT, period_end__lte=now
    ):
        due[(draft.tenant_id, draft.period_start)] = draft.tenant
    return [
        finalize_invoice(tenant=tenant, period_start=period_start, now=now)
        for (_, period_start), tenant in due.items()
    ]
