"""The operator console's usage chart: stacked daily bars, drawn as inline SVG on the server (no scripts)."""

from dataclasses import dataclass

from tenants.models import Operation
from tenants.selectors import DailyUsage

OPERATION_COLORS = {
    Operation.ENROLL: "#4e79a7",
    Operation.IDENTIFY: "#f28e2b",
    Operation.VERIFY: "#59a14f",
    Operation.DETECT: "#e15759",
    Operation.STORED_FACE_MONTHS: "#76b7b2",
}


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    color: str
    title: str


@dataclass(frozen=True)
class UsageChart:
    width: int
    height: int
    bars: list[Bar]
    peak: int
    first_day: str
    last_day: str
    legend: list[tuple[str, str]]


def usage_chart(days: list[DailyUsage], *, width: int = 720, height: int = 160) -> UsageChart:
    peak = max((day.total for day in days), default=0)
    slot = width / max(len(days), 1)
    bars = []
    for index, day in enumerate(days):
        top = float(height)
        for operation, color in OPERATION_COLORS.items():
            units = day.units.get(operation, 0)
            if not units:
                continue
            bar_height = units / peak * height
            top -= bar_height
            bars.append(
                Bar(
                    x=round(index * slot + 1, 2),
                    y=round(top, 2),
                    width=round(slot - 2, 2),
                    height=round(bar_height, 2),
                    color=color,
                    title=f"{day.day.isoformat()}: {units} {operation.label.lower()}",
                )
            )
    return UsageChart(
        width=width,
        height=height,
        bars=bars,
        peak=peak,
        first_day=days[0].day.isoformat() if days else "",
        last_day=days[-1].day.isoformat() if days else "",
        legend=[(operation.label, color) for operation, color in OPERATION_COLORS.items()],
    )
