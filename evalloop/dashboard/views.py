"""What the dashboard shows, computed from window buckets, alerts and judgments (pure).

Quality over time: at each step the window of ``window_s`` ending there, its raw display share
with the Wilson interval and, with a calibration, the bias-corrected share and interval (the same
estimators as status and the alert rules). Failure modes over time: each mode's share of the ok
judgments of the same windows. The alert timeline pairs each incident's firing and resolve.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from schemas.alerts import Alert
from schemas.judgments import Judgment
from streams.correction import WindowCorrector
from streams.windows import WindowAggregate, WindowStats, display_rate

Buckets = Mapping[int, Mapping[str, float]]
#: The display share each chart line shows, and the signal its correction and thresholds use.
SHARES = {"filtered": (("filter",), "filtered_share"), "related": (("related",), "related_share")}


@dataclass(frozen=True)
class SharePoint:
    """One window's share: raw with its interval, corrected with its interval where identifiable."""

    at: float
    samples: int
    raw: float
    lower: float
    upper: float
    corrected: float | None = None
    corrected_lower: float | None = None
    corrected_upper: float | None = None


@dataclass(frozen=True)
class TimeRange:
    """Window ends from ``start`` to ``end`` (epoch seconds), every ``step_s``."""

    start: int
    end: int
    step_s: int

    def ends(self) -> range:
        """The window ends, oldest first."""
        return range(self.start, self.end + 1, self.step_s)


def window_stats(buckets: Buckets, window_s: int, end: float, bucket_seconds: int) -> WindowStats:
    """The window of ``window_s`` ending at ``end`` from stored buckets."""
    aggregate = WindowAggregate(window_s, end, bucket_seconds)
    for start in aggregate.covering_buckets():
        if start in buckets:
            aggregate.update(start, buckets[start])
    return aggregate.result()


def share_series(
    windows: Sequence[WindowStats], share: str, category: str, corrector: WindowCorrector | None
) -> list[SharePoint]:
    """``share`` (``filtered`` or ``related``) of each non-empty window, raw and corrected."""
    displays, signal = SHARES[share]
    points = []
    for stats in windows:
        if stats.samples == 0:
            continue
        raw = display_rate(stats.counters, displays, 0.95)
        fixed = corrector.correct(category, signal, raw, 0.95) if corrector is not None else None
        points.append(
            SharePoint(
                stats.end_epoch,
                stats.samples,
                raw.rate,
                raw.lower,
                raw.upper,
                *((fixed.value, fixed.lower, fixed.upper) if fixed is not None else (None, None, None)),
            )
        )
    return points


def failure_mode_series(windows: Sequence[WindowStats], top: int = 5) -> dict[str, list[tuple[float, float]]]:
    """The ``top`` most tagged failure modes over the range: (window end, share of ok judgments)."""
    totals: dict[str, float] = {}
    for stats in windows:
        for mode, count in stats.failure_modes().items():
            totals[mode] = totals.get(mode, 0.0) + count
    chosen = sorted((m for m, c in totals.items() if c > 0), key=lambda m: (-totals[m], m))[:top]
    return {
        mode: [(s.end_epoch, s.failure_modes().get(mode, 0.0) / s.samples) for s in windows if s.samples]
        for mode in chosen
    }


@dataclass
class Incident:
    """One alert incident: when it started, fired and resolved (None while open), and its rule."""

    alert_id: str
    rule: str
    category: str
    severity: str
    started_at: datetime
    fired_at: datetime | None = None
    resolved_at: datetime | None = None
    states: list[str] = field(default_factory=list)


def incidents(alerts: Iterable[Alert]) -> list[Incident]:
    """Alerts folded per incident (``alert_id``), oldest start first."""
    found: dict[str, Incident] = {}
    for alert in alerts:
        incident = found.setdefault(
            alert.alert_id,
            Incident(alert.alert_id, alert.rule, alert.category, alert.severity, alert.started_at),
        )
        incident.fired_at = incident.fired_at or alert.fired_at
        incident.resolved_at = alert.resolved_at or incident.resolved_at
        if alert.state not in incident.states:
            incident.states.append(alert.state)
    return sorted(found.values(), key=lambda i: (i.started_at, i.rule))


@dataclass(frozen=True)
class JudgmentFilter:
    """The judgments table's filters; None matches everything."""

    category: str | None = None
    grade: int | None = None
    failure_mode: str | None = None
    model_version: str | None = None

    def matches(self, judgment: Judgment) -> bool:
        """Whether ``judgment`` passes every set filter."""
        return (
            (self.category is None or judgment.category == self.category)
            and (self.grade is None or judgment.grade == self.grade)
            and (self.failure_mode is None or self.failure_mode in judgment.failure_modes)
            and (self.model_version is None or judgment.model_version == self.model_version)
        )


def latest_judgments(
    judgments: Iterable[Judgment], wanted: JudgmentFilter, limit: int = 50
) -> list[Judgment]:
    """The newest (by event time) production judgments that pass ``wanted``, one per id."""
    unique = {j.judgment_id: j for j in judgments if j.canary is None and wanted.matches(j)}
    return sorted(unique.values(), key=lambda j: (j.event_time, j.judgment_id), reverse=True)[:limit]


def filter_choices(judgments: Iterable[Judgment]) -> dict[str, list[str]]:
    """The values each filter can take, from the judgments held."""
    choices: dict[str, set[str]] = {"failure_mode": set(), "model_version": set(), "grade": set()}
    for judgment in judgments:
        choices["failure_mode"].update(judgment.failure_modes)
        if judgment.model_version is not None:
            choices["model_version"].add(judgment.model_version)
        if judgment.grade is not None:
            choices["grade"].add(str(judgment.grade))
    return {name: sorted(values) for name, values in choices.items()}
