"""The page's model: which category and time range, built from ``Sources`` with ``views``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from evalloop.dashboard import views
from evalloop.dashboard.sources import Sources
from evalloop.dashboard.svg import PALETTE, Band, Chart, Line, Rule, Span
from schemas.judgments import Judgment
from streams.correction import WindowCorrector
from streams.status import known_windows
from streams.windows import window_name

DEFAULT_RANGE_S = 24 * 3600
MAX_POINTS = 120


@dataclass(frozen=True)
class Query:
    """What the URL asks for (``?category=&from=&to=&grade=&failure_mode=&model_version=``)."""

    category: str | None = None
    start: float | None = None
    end: float | None = None
    filters: views.JudgmentFilter = field(default_factory=views.JudgmentFilter)


@dataclass
class PageModel:
    """Everything the HTML shows."""

    policy_version: str
    status: dict[str, Any]
    categories: list[str]
    category: str | None
    charts: list[Chart]
    incidents: list[views.Incident]
    judgments: list[Judgment]
    choices: dict[str, list[str]]
    query: Query
    confusion: dict[str, Any] | None
    gate1: dict[str, Any] | None
    window_s: int


def parse_time(text: str | None) -> float | None:
    """An ISO time (``Z`` or offset) → epoch seconds; None for empty or unparsable text."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def time_range(query: Query, watermark: float | None, bucket_seconds: int) -> views.TimeRange | None:
    """The window ends to draw: the asked range clipped to data, or the last day to the watermark."""
    end = query.end if query.end is not None else watermark
    if end is None:
        return None
    start = query.start if query.start is not None and query.start < end else end - DEFAULT_RANGE_S
    step = max(1, math.ceil((end - start) / MAX_POINTS / bucket_seconds)) * bucket_seconds
    first = int(start // bucket_seconds * bucket_seconds)
    return views.TimeRange(first, int(end // bucket_seconds * bucket_seconds), step)


def _share_chart(title: str, points: list[views.SharePoint], x_range: tuple[float, float]) -> Chart:
    chart = Chart(title, x_range)
    chart.bands.append(Band("raw 95% interval", [(p.at, p.lower, p.upper) for p in points], PALETTE[0]))
    chart.lines.append(Line("raw", [(p.at, p.raw) for p in points], PALETTE[0]))
    corrected = [p for p in points if p.corrected is not None]
    if corrected:
        bounds = [(p.at, p.corrected_lower or 0.0, p.corrected_upper or 1.0) for p in corrected]
        chart.bands.append(Band("corrected 95% interval", bounds, PALETTE[2]))
        chart.lines.append(
            Line("corrected", [(p.at, p.corrected or 0.0) for p in corrected], PALETTE[2], True)
        )
    return chart


def category_charts(
    sources: Sources, category: str, span: views.TimeRange, window_s: int, corrector: WindowCorrector | None
) -> list[Chart]:
    """Quality (filtered and related shares, raw and corrected, thresholds) and failure modes."""
    buckets = sources.buckets(category, span.start - window_s, span.end)
    windows = [views.window_stats(buckets, window_s, end, sources.bucket_seconds) for end in span.ends()]
    first = next((stats.end_epoch for stats in windows if stats.samples), float(span.start))
    x_range = (max(float(span.start), first - span.step_s), float(span.end))  # from the first data
    name = window_name(window_s)
    filtered = _share_chart(
        f"{category}: filtered share ({name} windows)",
        views.share_series(windows, "filtered", category, corrector),
        x_range,
    )
    related = _share_chart(
        f"{category}: related share ({name} windows)",
        views.share_series(windows, "related", category, corrector),
        x_range,
    )
    for rule in sources.policy.rules_for(category):
        if rule.signal == "filtered_share":
            filtered.rules.append(Rule(f"{rule.id} {rule.threshold:.0%}", rule.threshold))
    modes = views.failure_mode_series(windows)
    chart_modes = Chart(f"{category}: failure modes (share of ok judgments)", x_range)
    chart_modes.lines = [
        Line(mode, pts, PALETTE[i % len(PALETTE)]) for i, (mode, pts) in enumerate(modes.items())
    ]
    return [filtered, related, chart_modes]


def build(sources: Sources, query: Query, window_s: int, gate1: dict[str, Any] | None) -> PageModel:
    """The page for ``query``."""
    windows = known_windows(sources.policy)
    status = sources.status(windows[-1] if windows else 3600)
    categories = sorted(status.get("categories", {}))
    category = query.category if query.category in categories else (categories[0] if categories else None)
    alerts = sources.alerts.items()
    all_incidents = views.incidents(alerts)
    charts: list[Chart] = []
    corrector = sources.corrector()  # read once per page: the charts and the confusion use it
    span = time_range(query, sources.loop_state.get_watermark(), sources.bucket_seconds)
    if category is not None and span is not None:
        charts = category_charts(sources, category, span, window_s, corrector)
        shaded = [i for i in all_incidents if i.category == category]
        for chart in charts[:2]:
            chart.spans = [_incident_span(i, span.end) for i in shaded]
    held = sources.judgments.items()
    return PageModel(
        policy_version=sources.policy.version,
        status=status,
        categories=categories,
        category=category,
        charts=charts,
        incidents=sorted(all_incidents, key=lambda i: i.started_at, reverse=True),
        judgments=views.latest_judgments(held, query.filters),
        choices=views.filter_choices(held),
        query=query,
        confusion=None if corrector is None else _confusion(corrector),
        gate1=gate1,
        window_s=window_s,
    )


def _incident_span(incident: views.Incident, end: float) -> Span:
    start = incident.started_at.timestamp()
    stop = incident.resolved_at.timestamp() if incident.resolved_at else end
    return Span(f"{incident.severity} incident", start, stop)


def _confusion(corrector: WindowCorrector) -> dict[str, Any]:
    record = corrector.record
    return {
        "grades": record.grades,
        "counts": record.confusion,
        "teacher_version": record.teacher_version,
        "n": record.n,
        "source": record.source,
    }
