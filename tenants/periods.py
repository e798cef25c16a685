"""Quotas and usage count per calendar month in UTC."""

from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class Month:
    start: datetime
    end: datetime


def calendar_month(moment: datetime) -> Month:
    moment = moment.astimezone(UTC)
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return Month(start=start, end=end)
