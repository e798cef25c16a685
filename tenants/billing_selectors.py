"""Reads of the usage ledger, the DailyUsage aggregates and invoices.

Like tenants.selectors: reads of tenant data take the tenant and filter by it, on top of row-level security;
call them inside `tenant_transaction`. The cross-tenant reads say so and need `operator_transaction`.
"""

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from django.apps import apps
from django.db.models import Count, F, QuerySet, Sum
from django.db.models.functions import TruncMonth

from tenants.models import DailyUsage, Invoice, Tenant, UsageRecord


def _day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time.min, tzinfo=UTC)
    return start, start + timedelta(days=1)


def ledger_units_by_operation(*, tenant: Tenant, start: datetime, end: datetime) -> dict[str, int]:
    """Units per operation recorded in [start, end)."""
    return dict(
        UsageRecord.objects.filter(tenant=tenant, created_at__gte=start, created_at__lt=end)
        .values("operation")
        .annotate(units=Sum("units"))
        .values_list("operation", "units")
    )


def ledger_units_of_day(*, tenant: Tenant, day: date) -> list[dict]:
    """The ledger's units of one UTC day per operation and API key prefix ("" for none)."""
    start, end = _day_bounds(day)
    rows = (
        UsageRecord.objects.filter(tenant=tenant, created_at__gte=start, created_at__lt=end)
        .values("operation", "api_key__prefix")
        .annotate(units=Sum("units"))
    )
    return [
        {"operation": row["operation"], "api_key_prefix": row["api_key__prefix"] or "", "units": row["units"]}
        for row in rows
    ]


def tenant_ids_with_ledger_records(*, start: datetime, end: datetime) -> set[uuid.UUID]:
    """Tenants with usage recorded in [start, end). Operator path."""
    return set(
        UsageRecord.objects.filter(created_at__gte=start, created_at__lt=end)
        .values_list("tenant_id", flat=True)
        .distinct()
    )


def months_with_ledger_records(*, tenant, start: datetime, end: datetime) -> set[datetime]:
    """The starts of the UTC calendar months in which the tenant recorded usage in [start, end). Operator
    path."""
    return set(
        UsageRecord.objects.filter(tenant=tenant, created_at__gte=start, created_at__lt=end)
        .annotate(month=TruncMonth("created_at", tzinfo=UTC))
        .values_list("month", flat=True)
        .distinct()
    )


def tenant_ids_with_daily_usage(*, day: date) -> set[uuid.UUID]:
    """Tenants with DailyUsage rows on `day`. Operator path."""
    return set(DailyUsage.objects.filter(day=day).values_list("tenant_id", flat=True).distinct())


def stored_face_counts() -> dict[uuid.UUID, int]:
    """Faces stored now, per tenant that has any and is not closed (a closed tenant's faces are being erased,
    and it is billed nothing more for them). Operator path."""
    # By name rather than imported: identity depends on tenants, not the other way round.
    face_model = apps.get_model("identity", "Face")
    return dict(
        face_model.objects.exclude(tenant__status=Tenant.Status.CLOSED)
        .values("tenant_id")
        .annotate(faces=Count("id"))
        .values_list("tenant_id", "faces")
    )


@dataclass(frozen=True)
class UsageRow:
    period: str
    operation: str
    api_key_prefix: str
    units: int


@dataclass(frozen=True)
class UsageReport:
    first_day: date
    last_day: date
    granularity: str
    rows: list[UsageRow]
    totals: dict[str, int]


def usage_report(*, tenant: Tenant, first_day: date, last_day: date, granularity: str) -> UsageReport:
    """The DailyUsage aggregates of the days first_day..last_day (inclusive), per day or per month
    ("YYYY-MM"), operation and key, and the totals per operation."""
    days = DailyUsage.objects.filter(tenant=tenant, day__gte=first_day, day__lte=last_day)
    grouped = days.annotate(period=TruncMonth("day") if granularity == "month" else F("day"))
    rows = [
        UsageRow(
            period=row["period"].strftime("%Y-%m") if granularity == "month" else row["period"].isoformat(),
            operation=row["operation"],
            api_key_prefix=row["api_key_prefix"],
            units=row["units"],
        )
        for row in grouped.values("period", "operation", "api_key_prefix")
        .annotate(units=Sum("units"))
        .order_by("period", "operation", "api_key_prefix")
    ]
    totals: dict[str, int] = {}
    for row in rows:
        totals[row.operation] = totals.get(row.operation, 0) + row.units
    return UsageReport(
        first_day=first_day, last_day=last_day, granularity=granularity, rows=rows, totals=totals
    )


def invoices_of_tenant(*, tenant: Tenant) -> QuerySet[Invoice]:
    """Newest month first, with their lines."""
    return Invoice.objects.filter(tenant=tenant).prefetch_related("lines").order_by("-period_start")


def invoice_of_tenant(*, tenant: Tenant, invoice_id: uuid.UUID) -> Invoice | None:
    return invoices_of_tenant(tenant=tenant).filter(id=invoice_id).first()


def invoice_of_month(*, tenant: Tenant, period_start: datetime) -> Invoice | None:
    return invoices_of_tenant(tenant=tenant).filter(period_start=period_start).first()
