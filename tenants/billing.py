"""The metering and pricing policy: what is billed, in which units, and how money is rounded. Pure arithmetic.

What is metered, and where (every call goes through `tenants.services.record_usage`, idempotent per key):

- enroll: 1 unit per face indexed, recorded by `identity.services.process_face_enrollment` in the same
  transaction that stores the face, keyed `job:<job id>`, so a redelivered task cannot bill twice.
- identify, verify, detect: 1 unit per request (per image, not per face found), recorded after the work
  succeeded, keyed `idempotency:<claim id>:<Idempotency-Key>` when the client sends one (so its retries count
  once, and the key reused after it expired counts again),
  else `request:<request id>`. A request that fails (4xx, 5xx) raises before `record_usage` runs, or rolls
  back the transaction holding it, so it is never billed.
- stored_face_months: the number of stored faces, recorded once per UTC day by the stored-faces snapshot
  (`tenants.billing_services.record_stored_faces_snapshot`), keyed `snapshot:<YYYY-MM-DD>`. Its ledger
  units are face-days; invoices and quotas convert the month's face-days to face-months (`month_units`).

Invoices are computed from the ledger (UsageRecord) itself, not from the DailyUsage cache, so they are exact
whatever the aggregation lag.
"""

import calendar
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal

from tenants.models import Operation, Plan

CENT = Decimal("0.01")
PRICE_UNIT = 1000


def face_months(*, face_days: int, days_in_month: int) -> int:
    """Face-days over the days of the month, rounded half-up to a whole face-month.

    The rounding applies to the tenant's month total, not per face: 1,000 faces stored all of a 30-day month
    are 30,000 face-days and 1,000 face-months; 15 face-days in that month are 0.5 and round up to 1.
    """
    return int((Decimal(face_days) / Decimal(days_in_month)).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def month_units(*, operation: str, ledger_units: int, month_start: datetime) -> int:
    """A month's ledger units of `operation` in the unit plans include and invoices bill.

    The same for every operation but stored faces, whose ledger counts face-days and whose plans count
    face-months; mixing the two would let a plan's face-months be used up by face-days.
    """
    if operation == Operation.STORED_FACE_MONTHS:
        return face_months(face_days=ledger_units, days_in_month=days_in_month(month_start))
    return ledger_units


def line_amount(*, billable: int, unit_price_per_1000: Decimal) -> Decimal:
    """billable * price per 1,000 / 1,000, rounded half-up to the cent, per line."""
    return (Decimal(billable) * unit_price_per_1000 / PRICE_UNIT).quantize(CENT, rounding=ROUND_HALF_UP)


def days_in_month(month_start: datetime) -> int:
    return calendar.monthrange(month_start.year, month_start.month)[1]


def month_of(day: date) -> datetime:
    """The first instant (UTC) of the calendar month `day` falls in."""
    return datetime(day.year, day.month, 1, tzinfo=UTC)


@dataclass(frozen=True)
class PricedLine:
    operation: str
    units: int
    included: int
    billable: int
    unit_price_per_1000: Decimal
    amount: Decimal


@dataclass(frozen=True)
class PricedInvoice:
    lines: list[PricedLine]
    monthly_price: Decimal
    subtotal: Decimal
    total: Decimal


def price_month(*, plan: Plan, ledger_units: dict[str, int], month_start: datetime) -> PricedInvoice:
    """Price one month of ledger units under `plan`: one line per billable operation, zero lines included.

    Units past the included ones are billed at the plan's overage price, also on a plan without overage
    (where only concurrent requests at the edge of the quota can pass it; such plans usually price overage at
    zero). Subtotal = the sum of the rounded line amounts; total = subtotal + the plan's monthly price.
    """
    lines = []
    for operation in Operation.values:
        units = month_units(
            operation=operation, ledger_units=ledger_units.get(operation, 0), month_start=month_start
        )
        included = plan.included_units(operation)
        billable = max(0, units - included)
        price = Decimal(getattr(plan, f"overage_{operation}_per_1000"))
        lines.append(
            PricedLine(
                operation=operation,
                units=units,
                included=included,
                billable=billable,
                unit_price_per_1000=price,
                amount=line_amount(billable=billable, unit_price_per_1000=price),
            )
        )
    subtotal = sum((line.amount for line in lines), Decimal("0.00"))
    monthly_price = Decimal(plan.monthly_price).quantize(CENT, rounding=ROUND_HALF_UP)
    return PricedInvoice(
        lines=lines, monthly_price=monthly_price, subtotal=subtotal, total=subtotal + monthly_price
    )


def plan_snapshot(plan: Plan) -> dict:
    """What an invoice keeps of its plan, so that later edits of the plan leave the invoice readable."""
    return {
        "name": plan.name,
        "currency": plan.currency,
        "monthly_price": str(plan.monthly_price),
        "allows_overage": plan.allows_overage,
        **{f"included_{op}": plan.included_units(op) for op in Operation.values},
        **{f"overage_{op}_per_1000": str(getattr(plan, f"overage_{op}_per_1000")) for op in Operation.values},
    }
