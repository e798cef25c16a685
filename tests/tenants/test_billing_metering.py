from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
from django.db import connection
from django.db.models import Sum
from django.utils import timezone

from tenants.billing_services import rebuild_daily_usage
from tenants.models import DailyUsage, UsageRecord
from tenants.rls import tenant_transaction
from tenants.services import record_usage
from tests.tenants.billing_helpers import record_usage_at
from tests.tenants.factories import make_api_key, make_tenant

DISTINCT_REQUESTS = 30
RETRIES_PER_REQUEST = 3


def _ledger(tenant, operation: str):
    with tenant_transaction(tenant.id):
        rows = UsageRecord.objects.filter(tenant=tenant, operation=operation)
        return rows.count(), rows.aggregate(units=Sum("units"))["units"]


@pytest.mark.django_db(transaction=True)
def test_parallel_identifies_with_retries_are_billed_once_per_distinct_key():
    tenant = make_tenant()
    attempts = [f"request:{n}" for n in range(DISTINCT_REQUESTS) for _ in range(RETRIES_PER_REQUEST)]

    def identify_like(key: str) -> bool:
        try:
            with tenant_transaction(tenant.id):
                return record_usage(
                    tenant=tenant, api_key=None, operation="identify", units=1, idempotency_key=key
                )
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=8) as pool:
        counted = list(pool.map(identify_like, attempts))

    assert sum(counted) == DISTINCT_REQUESTS
    assert _ledger(tenant, "identify") == (DISTINCT_REQUESTS, DISTINCT_REQUESTS)
    today = timezone.now().astimezone(UTC).date()
    with tenant_transaction(tenant.id):
        rebuild_daily_usage(tenant=tenant, day=today)
        aggregated = DailyUsage.objects.filter(tenant=tenant, operation="identify").aggregate(
            units=Sum("units")
        )["units"]
    assert aggregated == DISTINCT_REQUESTS


@pytest.mark.django_db
def test_a_redelivered_enrollment_task_cannot_bill_twice():
    tenant = make_tenant()

    outcomes = []
    for _delivery in range(2):
        with tenant_transaction(tenant.id):
            outcomes.append(
                record_usage(
                    tenant=tenant, api_key=None, operation="enroll", units=1, idempotency_key="job:42"
                )
            )

    assert outcomes == [True, False]
    assert _ledger(tenant, "enroll") == (1, 1)


@pytest.mark.django_db
def test_daily_usage_is_rebuilt_from_the_ledger_per_operation_and_key_idempotently():
    tenant, _ = make_api_key()
    front_desk = tenant.api_keys.get()
    day = datetime(2026, 3, 9, tzinfo=UTC)
    record_usage_at(tenant, operation="identify", units=1, key="request:a", at=day, api_key=front_desk)
    record_usage_at(tenant, operation="identify", units=1, key="request:b", at=day, api_key=front_desk)
    record_usage_at(tenant, operation="stored_face_months", units=40, key="snapshot:d", at=day)
    record_usage_at(tenant, operation="identify", units=1, key="request:c", at=day.replace(day=10))

    with tenant_transaction(tenant.id):
        rebuild_daily_usage(tenant=tenant, day=day.date())
        rebuild_daily_usage(tenant=tenant, day=day.date())
        rows = set(
            DailyUsage.objects.filter(tenant=tenant).values_list(
                "day", "operation", "api_key_prefix", "units"
            )
        )

    assert rows == {
        (day.date(), "identify", front_desk.prefix, 2),
        (day.date(), "stored_face_months", "", 40),
    }
