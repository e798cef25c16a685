"""Shared steps of the billing specifications."""

from datetime import datetime

from tenants.models import UsageRecord
from tenants.rls import tenant_transaction
from tenants.services import record_usage


def record_usage_at(tenant, *, operation: str, units: int, key: str, at: datetime, api_key=None) -> None:
    """Meter usage as if it had happened at `at` (record_usage always stamps the present)."""
    with tenant_transaction(tenant.id):
        record_usage(tenant=tenant, api_key=api_key, operation=operation, units=units, idempotency_key=key)
        UsageRecord.objects.filter(tenant=tenant, operation=operation, idempotency_key=key).update(
            created_at=at
        )
