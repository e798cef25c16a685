"""Invoice documents (JSON, CSV) and the pluggable hand-off of final invoices to a billing system.

`VISOR_INVOICE_EXPORTER` names the exporter class by dotted path: FileExporter (the default of `make run`)
writes both documents under `VISOR_INVOICE_EXPORT_DIR` (default var/invoices); StorageExporter (the default
of the containers, whose file systems are read-only) writes them to the object store under
`billing/invoices/`. A payment provider integration is another class with the same `export` method; none is
bundled.
"""

import csv
import io
import json
import uuid
from pathlib import Path
from typing import Protocol

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils.module_loading import import_string

from tenants.models import Invoice

CSV_COLUMNS = ["operation", "units", "included", "billable", "unit_price_per_1000", "amount"]


def invoice_document(invoice: Invoice) -> dict:
    """The invoice as the API returns it and the JSON export holds it; money as decimal strings."""
    return {
        "id": str(invoice.id),
        "period_start": invoice.period_start.isoformat(),
        "period_end": invoice.period_end.isoformat(),
        "status": invoice.status,
        "currency": invoice.currency,
        "plan": invoice.plan_snapshot.get("name", ""),
        "lines": [
            {
                "operation": line.operation,
                "units": line.units,
                "included": line.included,
                "billable": line.billable,
                "unit_price_per_1000": str(line.unit_price_per_1000),
                "amount": str(line.amount),
            }
            for line in sorted(invoice.lines.all(), key=lambda line: line.operation)
        ],
        "monthly_price": str(invoice.monthly_price),
        "subtotal": str(invoice.subtotal),
        "total": str(invoice.total),
        "finalized_at": invoice.finalized_at.isoformat() if invoice.finalized_at else None,
    }


def invoice_csv(invoice: Invoice) -> str:
    """One row per line, then the monthly price, subtotal and total rows (only `amount` filled)."""
    document = invoice_document(invoice)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(document["lines"])
    for summary in ("monthly_price", "subtotal", "total"):
        writer.writerow({"operation": summary, "amount": document[summary]})
    return out.getvalue()


def invoice_file_stem(invoice: Invoice) -> str:
    return f"visor-invoice-{invoice.period_start:%Y-%m}-{invoice.id}"


class InvoiceExporter(Protocol):
    def export(self, invoice: Invoice) -> None:
        """Hand a final invoice over. Must be idempotent: a retried export task calls it again."""


class FileExporter:
    """Writes `<dir>/<tenant id>/<stem>.json` and `.csv`; rewriting the same final invoice is harmless."""

    def __init__(self, directory: Path | str | None = None):
        self.directory = Path(directory or settings.VISOR_INVOICE_EXPORT_DIR)

    def export(self, invoice: Invoice) -> None:
        folder = self.directory / str(invoice.tenant_id)
        folder.mkdir(parents=True, exist_ok=True)
        stem = invoice_file_stem(invoice)
        _write_atomically(folder / f"{stem}.json", json.dumps(invoice_document(invoice), indent=2) + "\n")
        _write_atomically(folder / f"{stem}.csv", invoice_csv(invoice))


class StorageExporter:
    """Writes `billing/invoices/<tenant id>/<stem>.json` and `.csv` to the object store (S3), where a billing
    system picks them up; a PUT replaces an object whole, so a retried export leaves no partial document."""

    PREFIX = "billing/invoices"

    def export(self, invoice: Invoice) -> None:
        stem = f"{self.PREFIX}/{invoice.tenant_id}/{invoice_file_stem(invoice)}"
        document = json.dumps(invoice_document(invoice), indent=2) + "\n"
        default_storage.save(f"{stem}.json", ContentFile(document.encode()))
        default_storage.save(f"{stem}.csv", ContentFile(invoice_csv(invoice).encode()))


def _write_atomically(path: Path, text: str) -> None:
    # A worker killed mid-write must not leave a truncated document for a billing system that picks files up
    # from the directory: a rename within a directory is atomic. The partial name is unique per write, so
    # that two overlapping exports of one invoice (a retry racing a slow first run) never share one.
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    partial.write_text(text)
    partial.replace(path)


def configured_exporter() -> InvoiceExporter:
    return import_string(settings.VISOR_INVOICE_EXPORTER)()
