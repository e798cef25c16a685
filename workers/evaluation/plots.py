"""ROC and DET curves as standalone SVG files (matplotlib is not a dependency): polylines, axes, legend."""

from __future__ import annotations

import math
from html import escape

import numpy as np

COLOURS = ("#222222", "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
WIDTH, HEIGHT = 720, 480
LEFT, RIGHT, TOP, BOTTOM = 70, 250, 40, 55


class _Axis:
    def __init__(self, low: float, high: float, log: bool, start: float, end: float) -> None:
        if log and low <= 0:
            raise ValueError("a log axis needs a positive lower bound")
        self.low, self.high, self.log, self.start, self.end = low, high, log, start, end

    def _unit(self, value: float) -> float:
        if self.log:
            return (math.log10(value) - math.log10(self.low)) / (math.log10(self.high) - math.log10(self.low))
        return (value - self.low) / (self.high - self.low)

    def __call__(self, value: float) -> float:
        value = min(max(value, self.low), self.high)
        return self.start + (self.end - self.start) * self._unit(value)

    def ticks(self) -> list[tuple[float, str]]:
        if self.log:
            first, last = math.floor(math.log10(self.low)), math.ceil(math.log10(self.high))
            return [
                (10.0**e, f"1e{e}" if e < -2 else f"{10.0**e:g}")
                for e in range(first, last + 1)
                if self.low <= 10.0**e <= self.high
            ]
        step = (self.high - self.low) / 5
        return [(self.low + i * step, f"{self.low + i * step:.2f}") for i in range(6)]


def line_chart(
    series: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    x_range: tuple[float, float],
    y_range: tuple[float, float],
    x_log: bool = True,
    y_log: bool = False,
) -> str:
    """An SVG document with one polyline per series (points outside a log axis's range are clipped)."""
    x_axis = _Axis(*x_range, x_log, LEFT, WIDTH - RIGHT)
    y_axis = _Axis(*y_range, y_log, HEIGHT - BOTTOM, TOP)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="22" text-anchor="middle" font-size="14">'
        f"{escape(title)}</text>",
    ]
    for value, label in x_axis.ticks():
        x = x_axis(value)
        parts.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{HEIGHT - BOTTOM}" stroke="#e5e5e5"/>')
        parts.append(
            f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">{escape(label)}</text>'
        )
    for value, label in y_axis.ticks():
        y = y_axis(value)
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(label)}</text>')
    parts.append(
        f'<rect x="{LEFT}" y="{TOP}" width="{WIDTH - RIGHT - LEFT}" height="{HEIGHT - BOTTOM - TOP}" '
        'fill="none" stroke="#444"/>'
    )
    parts.append(
        f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 15}" text-anchor="middle">'
        f"{escape(x_label)}</text>"
    )
    parts.append(
        f'<text x="18" y="{(TOP + HEIGHT - BOTTOM) / 2}" text-anchor="middle" '
        f'transform="rotate(-90 18 {(TOP + HEIGHT - BOTTOM) / 2})">{escape(y_label)}</text>'
    )
    for number, (name, (xs, ys)) in enumerate(series.items()):
        colour = COLOURS[number % len(COLOURS)]
        points = [
            f"{x_axis(float(x)):.1f},{y_axis(float(y)):.1f}"
            for x, y in zip(np.asarray(xs), np.asarray(ys), strict=True)
            if np.isfinite(x) and np.isfinite(y) and (not x_log or x > 0) and (not y_log or y > 0)
        ]
        if points:
            parts.append(
                f'<polyline fill="none" stroke="{colour}" stroke-width="1.8" points="{" ".join(points)}"/>'
            )
        legend_y = TOP + 10 + 18 * number
        parts.append(
            f'<line x1="{WIDTH - RIGHT + 12}" y1="{legend_y}" x2="{WIDTH - RIGHT + 32}" y2="{legend_y}" '
            f'stroke="{colour}" stroke-width="2.5"/>'
        )
        parts.append(
            f'<text x="{WIDTH - RIGHT + 38}" y="{legend_y + 4}" font-size="11">{escape(name)}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def roc_svg(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str) -> str:
    """TAR against FAR (log x)."""
    smallest = min(
        (float(np.min(far[far > 0])) for far, _ in curves.values() if np.any(far > 0)), default=1e-4
    )
    low = 10.0 ** math.floor(math.log10(max(smallest, 1e-6)))
    return line_chart(
        curves,
        title=title,
        x_label="false accept rate",
        y_label="true accept rate",
        x_range=(low, 1.0),
        y_range=(0.0, 1.0),
    )


def det_svg(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str) -> str:
    """FNIR against FPIR, both log (the NIST FRVT 1:N error trade-off)."""
    smallest = min((float(np.min(x[x > 0])) for x, _ in curves.values() if np.any(x > 0)), default=1e-3)
    low = 10.0 ** math.floor(math.log10(max(smallest, 1e-6)))
    floor_y = min((float(np.min(y[y > 0])) for _, y in curves.values() if np.any(y > 0)), default=1e-2)
    low_y = 10.0 ** math.floor(math.log10(max(floor_y, 1e-4)))
    return line_chart(
        curves,
        title=title,
        x_label="false positive identification rate (FPIR)",
        y_label="false negative identification rate (FNIR)",
        x_range=(low, 1.0),
        y_range=(low_y, 1.0),
        y_log=True,
    )
