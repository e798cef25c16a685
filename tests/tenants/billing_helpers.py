"""Shared steps of the billing specifications."""

from datetime import datetime

from django.utils import timezone

from tenants.billing import days_in_month
from tenants.models import UsageRecord
from tenants.periods import calendar_month
from tenants.rls import tenant_transaction
from tenants.services import record_usage


def record_usage_at(tenant, *, operation: str, units: int, key: str, at: datetime, api_key=None) -> None:
    """Meter usage as if it had happened at `at` (record_usage always stamps the present)."""
    with tenant_transaction(tenant.id):
        record_usage(tenant=tenant, api_key=api_key, operation=operation, units=units, idempotency_key=key)
        UsageRecord.objects.filter(tenant=tenant, operation=operation, idempotency_key=key).update(
            created_at=at
        )


def store_faces_all_this_month(tenant, *, faces: int) -> None:
    """Meter `faces` stored every day of the current month (face-days as the daily snapshot records them)."""
    month_start = calendar_month(timezone.now()).start
    with tenant_transaction(tenant.id):
        record_usage(
            tenant=tenant,
            api_key=None,
            operation="stored_face_months",
            units=faces * days_in_month(month_start),
            idempotency_key="snapshot:all-month",
        )
