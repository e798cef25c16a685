"""Invoice exports (tenants/exporters.py): the file exporter's JSON and CSV say what the invoice says, and
exporting again changes nothing."""

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.files.storage import default_storage

from tenants import exporters
from tenants.billing_services import finalize_invoice
from tenants.exporters import FileExporter, StorageExporter, invoice_csv, invoice_document, invoice_file_stem
from tenants.models import Invoice
from tenants.rls import operator_transaction, tenant_transaction
from tests.identity.conftest import bucket_keys
from tests.tenants.billing_helpers import record_usage_at
from tests.tenants.factories import api_client_for, make_api_key, make_plan, make_tenant

JANUARY = datetime(2026, 1, 1, tzinfo=UTC)
FEBRUARY = datetime(2026, 2, 1, tzinfo=UTC)


class PaymentProviderExporter:
    """Stands for another InvoiceExporter, a payment provider's integration, chosen by dotted path."""

    def export(self, invoice) -> None:
        raise NotImplementedError


@pytest.fixture
def invoice(db) -> Invoice:
    """January's final invoice: 2,345 identifies (1,000 included, 5.00 per 1,000) and 301 enrollments (100
    included, 12.50 per 1,000) on a plan of 49.99 a month."""
    plan = make_plan(
        name="growth",
        monthly_price=Decimal("49.99"),
        allows_overage=True,
        included_identify=1_000,
        overage_identify_per_1000=Decimal("5.0000"),
        included_enroll=100,
        overage_enroll_per_1000=Decimal("12.5000"),
    )
    tenant = make_tenant(plan=plan)
    mid_january = JANUARY + timedelta(days=14)
    record_usage_at(tenant, operation="identify", units=2_345, key="batch:identify", at=mid_january)
    record_usage_at(tenant, operation="enroll", units=301, key="batch:enroll", at=mid_january)
    with operator_transaction():
        final = finalize_invoice(tenant=tenant, period_start=JANUARY, now=FEBRUARY)
    with tenant_transaction(tenant.id):
        return Invoice.objects.prefetch_related("lines").get(id=final.id)


def _exported(tmp_path, invoice) -> tuple[dict, list[dict]]:
    stem = tmp_path / str(invoice.tenant_id) / f"visor-invoice-2026-01-{invoice.id}"
    document = json.loads(stem.with_suffix(".json").read_text())
    rows = list(csv.DictReader(io.StringIO(stem.with_suffix(".csv").read_text())))
    return document, rows


def test_the_json_export_holds_the_invoices_lines_and_totals_as_the_api_shows_them(invoice, tmp_path):
    FileExporter(tmp_path).export(invoice)

    document, _ = _exported(tmp_path, invoice)
    assert [
        (line["operation"], line["units"], line["billable"], line["amount"]) for line in document["lines"]
    ] == [
        ("detect", 0, 0, "0.00"),
        # 201 x 12.50 / 1,000 = 2.5125, rounded half-up to the cent.
        ("enroll", 301, 201, "2.51"),
        # 1,345 x 5.00 / 1,000 = 6.725, rounded half-up to the cent.
        ("identify", 2_345, 1_345, "6.73"),
        ("stored_face_months", 0, 0, "0.00"),
        ("verify", 0, 0, "0.00"),
    ]
    assert (document["monthly_price"], document["subtotal"], document["total"]) == ("49.99", "9.24", "59.23")
    assert (document["status"], document["currency"], document["plan"]) == ("final", "USD", "growth")
    _, raw_key = make_api_key(tenant=invoice.tenant, scopes=["read"])
    assert document == api_client_for(raw_key).get(f"/v1/invoices/{invoice.id}").json()


def test_the_csv_export_has_a_row_per_line_then_the_monthly_price_subtotal_and_total(invoice, tmp_path):
    FileExporter(tmp_path).export(invoice)

    _, rows = _exported(tmp_path, invoice)
    lines = {row["operation"]: row for row in rows[:-3]}
    assert list(rows[0]) == ["operation", "units", "included", "billable", "unit_price_per_1000", "amount"]
    assert lines["identify"] == {
        "operation": "identify",
        "units": "2345",
        "included": "1000",
        "billable": "1345",
        "unit_price_per_1000": "5.0000",
        "amount": "6.73",
    }
    assert (lines["enroll"]["billable"], lines["enroll"]["amount"]) == ("201", "2.51")
    assert set(lines) == {"detect", "enroll", "identify", "stored_face_months", "verify"}
    assert [(row["operation"], row["units"], row["amount"]) for row in rows[-3:]] == [
        ("monthly_price", "", "49.99"),
        ("subtotal", "", "9.24"),
        ("total", "", "59.23"),
    ]
    # The subtotal is the sum of the rounded line amounts.
    assert sum(Decimal(row["amount"]) for row in lines.values()) == Decimal(rows[-2]["amount"])


def test_exporting_again_rewrites_the_same_two_files(invoice, tmp_path):
    exporter = FileExporter(tmp_path)
    exporter.export(invoice)
    first = {path.name: path.read_bytes() for path in (tmp_path / str(invoice.tenant_id)).iterdir()}

    exporter.export(invoice)

    again = {path.name: path.read_bytes() for path in (tmp_path / str(invoice.tenant_id)).iterdir()}
    assert again == first
    assert sorted(first) == [
        f"visor-invoice-2026-01-{invoice.id}.csv",
        f"visor-invoice-2026-01-{invoice.id}.json",
    ]


def test_the_configured_exporter_is_the_file_exporter_unless_another_is_named(invoice, tmp_path, settings):
    settings.VISOR_INVOICE_EXPORT_DIR = tmp_path
    exporters.configured_exporter().export(invoice)
    assert _exported(tmp_path, invoice)[0]["id"] == str(invoice.id)

    settings.VISOR_INVOICE_EXPORTER = f"{__name__}.PaymentProviderExporter"
    assert isinstance(exporters.configured_exporter(), PaymentProviderExporter)


@pytest.mark.django_db(transaction=True)
def test_the_storage_exporter_puts_both_documents_in_the_object_store(invoice):
    StorageExporter().export(invoice)
    StorageExporter().export(invoice)  # a retried export replaces them

    stem = f"billing/invoices/{invoice.tenant_id}/{invoice_file_stem(invoice)}"
    assert sorted(bucket_keys(f"billing/invoices/{invoice.tenant_id}/")) == [f"{stem}.csv", f"{stem}.json"]
    with default_storage.open(f"{stem}.json", "rb") as stored:
        assert json.loads(stored.read()) == invoice_document(invoice)
    with default_storage.open(f"{stem}.csv", "rb") as stored:
        assert stored.read().decode() == invoice_csv(invoice)
