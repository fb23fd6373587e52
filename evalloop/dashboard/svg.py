"""Inline SVG line charts (pure): lines, interval bands, threshold rules and shaded spans.

Rendered in Python so the page needs no chart library, no JavaScript and no network. Each chart
is ``<svg class="chart" data-series=N data-points=M>`` so a browser test can tell it holds data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")
Xy = tuple[float, float]


@dataclass(frozen=True)
class Line:
    """A named line; ``dashed`` for a second estimate of the same quantity."""

    name: str
    points: Sequence[Xy]
    color: str = PALETTE[0]
    dashed: bool = False


@dataclass(frozen=True)
class Band:
    """An interval band: (x, lower, upper) triples."""

    name: str
    points: Sequence[tuple[float, float, float]]
    color: str = PALETTE[0]


@dataclass(frozen=True)
class Rule:
    """A horizontal threshold line."""

    name: str
    value: float
    color: str = "#555555"


@dataclass(frozen=True)
class Span:
    """A shaded x interval (an alert incident)."""

    name: str
    start: float
    end: float
    color: str = "#d62728"


@dataclass
class Chart:
    """What one chart draws; x is epoch seconds (UTC), y a share in [0, y_max]."""

    title: str
    x_range: tuple[float, float]
    lines: list[Line] = field(default_factory=list)
    bands: list[Band] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    y_max: float = 1.0
    width: int = 920
    height: int = 260


MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 48, 210, 28, 30


class _Scale:
    def __init__(self, chart: Chart) -> None:
        self.x0, self.x1 = chart.x_range
        self.left, self.right = MARGIN_LEFT, chart.width - MARGIN_RIGHT
        self.top, self.bottom = MARGIN_TOP, chart.height - MARGIN_BOTTOM
        self.y_max = chart.y_max

    def x(self, value: float) -> float:
        span = max(self.x1 - self.x0, 1.0)
        return self.left + (min(max(value, self.x0), self.x1) - self.x0) / span * (self.right - self.left)

    def y(self, value: float) -> float:
        return self.bottom - min(max(value, 0.0), self.y_max) / self.y_max * (self.bottom - self.top)


def _axes(chart: Chart, scale: _Scale) -> list[str]:
    parts = []
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        value = tick * chart.y_max
        y = scale.y(value)
        parts.append(f'<line class="grid" x1="{scale.left}" x2="{scale.right}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(
            f'<text class="tick" x="{scale.left - 6}" y="{y + 4:.1f}" text-anchor="end">{value:.0%}</text>'
        )
    for at in _time_ticks(chart.x_range):
        x = scale.x(at)
        label = datetime.fromtimestamp(at, UTC).strftime("%m-%d %H:%M")
        parts.append(f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{scale.top}" y2="{scale.bottom}"/>')
        parts.append(
            f'<text class="tick" x="{x:.1f}" y="{scale.bottom + 16}" text-anchor="middle">{label}</text>'
        )
    return parts


def _time_ticks(x_range: tuple[float, float], count: int = 6) -> list[float]:
    start, end = x_range
    step = max(3600.0, round((end - start) / count / 3600.0) * 3600.0)
    first = (start // step + 1) * step
    ticks = []
    while first < end:
        ticks.append(first)
        first += step
    return ticks


def _polyline(points: Sequence[Xy], scale: _Scale) -> str:
    return " ".join(f"{scale.x(x):.1f},{scale.y(y):.1f}" for x, y in points)


def _band(band: Band, scale: _Scale) -> str:
    upper = [(x, hi) for x, _lo, hi in band.points]
    lower = [(x, lo) for x, lo, _hi in reversed(band.points)]
    points = _polyline([*upper, *lower], scale)
    title = f"<title>{escape(band.name)}</title>"
    return (
        f'<polygon class="band" points="{points}" fill="{band.color}" fill-opacity="0.15">{title}</polygon>'
    )


def _legend(chart: Chart) -> list[str]:
    entries = [(line.name, line.color, line.dashed) for line in chart.lines]
    entries += [(rule.name, rule.color, True) for rule in chart.rules]
    entries += [(span.name, span.color, False) for span in chart.spans[:1]]
    x = chart.width - MARGIN_RIGHT + 12
    parts = []
    for row, (name, color, dashed) in enumerate(entries[:10]):
        y = MARGIN_TOP + 14 * row
        dash = ' stroke-dasharray="4 3"' if dashed else ""
        parts.append(
            f'<line x1="{x}" x2="{x + 18}" y1="{y}" y2="{y}" stroke="{color}" stroke-width="2"{dash}/>'
        )
        parts.append(f'<text class="legend" x="{x + 24}" y="{y + 4}">{escape(name)}</text>')
    return parts


def render(chart: Chart) -> str:
    """The chart as an ``<svg>`` element."""
    scale = _Scale(chart)
    body = [
        f'<text class="title" x="{MARGIN_LEFT}" y="16">{escape(chart.title)}</text>',
        *_axes(chart, scale),
    ]
    for span in chart.spans:
        x0, x1 = scale.x(span.start), scale.x(span.end)
        body.append(
            f'<rect class="incident" x="{x0:.1f}" y="{scale.top}" width="{max(x1 - x0, 1.0):.1f}" '
            f'height="{scale.bottom - scale.top}" fill="{span.color}" fill-opacity="0.12">'
            f"<title>{escape(span.name)}</title></rect>"
        )
    body += [_band(band, scale) for band in chart.bands if band.points]
    for rule in chart.rules:
        y = scale.y(rule.value)
        body.append(
            f'<line class="threshold" x1="{scale.left}" x2="{scale.right}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="{rule.color}" stroke-dasharray="4 3"><title>{escape(rule.name)}</title></line>'
        )
    for line in chart.lines:
        if line.points:
            dash = ' stroke-dasharray="6 3"' if line.dashed else ""
            body.append(
                f'<polyline class="series" data-name="{escape(line.name)}" '
                f'points="{_polyline(line.points, scale)}" fill="none" stroke="{line.color}" '
                f'stroke-width="2"{dash}/>'
            )
    body += _legend(chart)
    drawn = [line for line in chart.lines if line.points]
    return (
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" '
        f'width="{chart.width}" height="{chart.height}" '
        f'viewBox="0 0 {chart.width} {chart.height}" role="img" aria-label="{escape(chart.title)}" '
        f'data-series="{len(drawn)}" data-points="{sum(len(line.points) for line in drawn)}">'
        + "".join(body)
        + "</svg>"
    )
