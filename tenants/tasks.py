"""Celery beat tasks of metering and billing. Each is safe to run twice."""

from datetime import UTC, date

from celery import shared_task
from django.db import transaction
from django.utils import timezone

from tenants import billing_selectors, billing_services, exporters
from tenants.models import Tenant
from tenants.rls import operator_transaction, tenant_transaction


@shared_task(name="maintenance.snapshot_stored_faces")
def snapshot_stored_faces() -> int:
    """Beat task, hourly: the first run of each UTC day meters that day's stored faces."""
    with operator_transaction():
        return billing_services.record_stored_faces_snapshot()


@shared_task(name="maintenance.aggregate_usage")
def aggregate_usage(*, since: str | None = None) -> int:
    """Beat task: refresh the DailyUsage aggregates of today and yesterday.

    With `since` (YYYY-MM-DD) it rebuilds every day from then to today instead, for an operator repairing
    the cache: `celery -A infra call maintenance.aggregate_usage --kwargs '{"since": "2026-01-01"}'`.
    """
    now = timezone.now()
    with operator_transaction():
        if since is None:
            return billing_services.aggregate_recent_usage(now=now)
        return billing_services.rebuild_usage_aggregates(
            first_day=date.fromisoformat(since), last_day=now.astimezone(UTC).date()
        )


@shared_task(name="maintenance.finalize_invoices")
def finalize_invoices() -> int:
    """Beat task: finalize the invoices of closed months, then export each one."""
    with operator_transaction():
        finalized = billing_services.finalize_closed_invoices(now=timezone.now())
        for invoice in finalized:
            transaction.on_commit(
                lambda invoice_id=str(invoice.id), tenant_id=str(invoice.tenant_id): export_invoice.delay(
                    invoice_id=invoice_id, tenant_id=tenant_id
                )
            )
    return len(finalized)


@shared_task(name="maintenance.export_invoice", bind=True, max_retries=10)
def export_invoice(self, *, invoice_id: str, tenant_id: str) -> str:
    try:
        with tenant_transaction(tenant_id):
            tenant = Tenant.objects.get(id=tenant_id)
            invoice = billing_selectors.invoice_of_tenant(tenant=tenant, invoice_id=invoice_id)
            exporters.configured_exporter().export(invoice)
    except Exception as error:
        # The invoice is final already; only the hand-off failed (disk, provider), so try again later.
        # At most 50 minutes: a countdown at Redis's one-hour visibility timeout is delivered twice.
        raise self.retry(exc=error, countdown=min(3000, 30 * 2**self.request.retries)) from error
    return invoice_id
