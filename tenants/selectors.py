"""Reads of tenants, keys and usage.

Selectors of tenant data take the tenant and filter by it explicitly, on top of row-level security; call them
inside `tenant_transaction` (or `operator_transaction` for the operator views that span tenants).
Control-plane lookups (keys, tenants) need no scope.
"""

import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from django.db.models import Q, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from tenants import billing
from tenants.models import ApiKey, Operation, Tenant, UsageRecord
from tenants.periods import calendar_month


def api_key_for_authentication(*, prefix: str) -> ApiKey | None:
    """The key with this prefix, with its tenant and plan, read fresh: a suspension applies at once."""
    return ApiKey.objects.select_related("tenant__plan").filter(prefix=prefix).first()


def tenant_by_slug_or_id(*, slug_or_id: str) -> Tenant:
    """Raises Tenant.DoesNotExist."""
    try:
        return Tenant.objects.get(id=uuid.UUID(slug_or_id))
    except ValueError:
        return Tenant.objects.get(slug=slug_or_id)


def units_used_this_month(*, tenant: Tenant, operation: str, now: datetime | None = None) -> int:
    """This month's units of `operation` in the plan's unit (face-months for stored faces)."""
    month = calendar_month(now or timezone.now())
    used = UsageRecord.objects.filter(
        tenant=tenant, operation=operation, created_at__gte=month.start, created_at__lt=month.end
    ).aggregate(units=Sum("units"))["units"]
    return billing.month_units(operation=operation, ledger_units=used or 0, month_start=month.start)


@dataclass(frozen=True)
class QuotaUsage:
    used: int
    included: int


def quota_usage_this_month(*, tenant: Tenant, now: datetime | None = None) -> dict[str, QuotaUsage]:
    """Units used this month against the plan's included units, for every operation, in the plan's units."""
    month = calendar_month(now or timezone.now())
    used = dict(
        UsageRecord.objects.filter(tenant=tenant, created_at__gte=month.start, created_at__lt=month.end)
        .values("operation")
        .annotate(units=Sum("units"))
        .values_list("operation", "units")
    )
    return {
        operation: QuotaUsage(used=units, included=tenant.plan.included_units(operation))
        for operation, units in _in_plan_units(used, month_start=month.start).items()
    }


def _in_plan_units(ledger_units: dict[str, int], *, month_start: datetime) -> dict[str, int]:
    """A month's ledger units per operation (zero where none) in the units plans count: face-months for
    stored faces, as quotas and invoices count them."""
    return {
        operation: billing.month_units(
            operation=operation, ledger_units=ledger_units.get(operation) or 0, month_start=month_start
        )
        for operation in Operation.values
    }


def _usage_field(operation: str) -> str:
    return f"usage_{operation}"


def tenants_with_usage_this_month(*, now: datetime | None = None) -> QuerySet[Tenant]:
    """Every tenant with `usage_<operation>` annotations (ledger units) for this month. Operator path only."""
    month = calendar_month(now or timezone.now())
    this_month = Q(usage_records__created_at__gte=month.start, usage_records__created_at__lt=month.end)
    return Tenant.objects.select_related("plan").annotate(
        **{
            _usage_field(operation): Sum(
                "usage_records__units", filter=this_month & Q(usage_records__operation=operation)
            )
            for operation in Operation.values
        }
    )


def usage_annotations(tenant: Tenant, *, now: datetime | None = None) -> dict[str, int]:
    """This month's units per operation of a tenant from `tenants_with_usage_this_month`, in the plan's
    units (face-months for stored faces, as its quota and invoice count them), zero where none."""
    return _in_plan_units(
        {operation: getattr(tenant, _usage_field(operation)) for operation in Operation.values},
        month_start=calendar_month(now or timezone.now()).start,
    )


@dataclass(frozen=True)
class DailyUsage:
    day: date
    units: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.units.values())


def daily_usage(*, tenant: Tenant, days: int = 30, today: date | None = None) -> list[DailyUsage]:
    """Units per operation for each of the last `days` days (UTC) up to today, days without usage included."""
    today = today or timezone.now().date()
    first = today - timedelta(days=days - 1)
    rows = (
        UsageRecord.objects.filter(tenant=tenant, created_at__date__gte=first, created_at__date__lte=today)
        .annotate(day=TruncDate("created_at"))
        .values("day", "operation")
        .annotate(units=Sum("units"))
    )
    by_day: dict[date, dict[str, int]] = {first + timedelta(days=offset): {} for offset in range(days)}
    for row in rows:
        by_day[row["day"]][row["operation"]] = row["units"]
    return [DailyUsage(day=day, units=units) for day, units in by_day.items()]
