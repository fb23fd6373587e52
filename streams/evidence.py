"""What an alert shows on-call beside its figures (pure): the window it looked at, the examples
and production model versions drawn from that window, the top failure modes, and the link to the
dashboard view of the category and time. See docs/alerts.md ("What an alert carries").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import NamedTuple
from urllib.parse import urlencode

from schemas.alerts import Alert, AlertExample, FailureModeShare, ModelVersionShare
from schemas.calibration import BINARY_SIGNALS
from schemas.judgments import Judgment
from schemas.policy import AlertRule
from streams.windows import WindowStats


class EventWindow(NamedTuple):
    """Event-time interval ``(start, end]`` in epoch seconds."""

    start: float
    end: float

    @classmethod
    def ending(cls, at: datetime, seconds: int) -> EventWindow:
        """The ``seconds`` of event time up to ``at``."""
        end = at.timestamp()
        return cls(end - seconds, end)


class AlertEvidence(NamedTuple):
    """What the window shows: top failure modes, bad examples, the model-version mix."""

    failure_modes: Sequence[FailureModeShare] = ()
    examples: Sequence[AlertExample] = ()
    model_versions: Sequence[ModelVersionShare] = ()


def top_failure_modes(stats: WindowStats, limit: int = 5) -> list[FailureModeShare]:
    """The most tagged failure modes in a window, with their share of ok judgments."""
    counts = sorted(stats.failure_modes().items(), key=lambda item: (-item[1], item[0]))
    total = max(stats.samples, 1)
    return [
        FailureModeShare(failure_mode=mode, count=count, share=min(1.0, count / total))
        for mode, count in counts[:limit]
        if count > 0
    ]


def is_bad(judgment: Judgment, rule: AlertRule) -> bool:
    """Whether ``judgment`` counts toward ``rule``'s bad share (to pick alert examples)."""
    if rule.signal == "error_share":
        return judgment.status == "error"
    if judgment.status != "ok":
        return False
    if rule.signal == "failure_mode_share":
        return rule.failure_mode in judgment.failure_modes
    if rule.signal == "canary_weighted_kappa":  # a canary the teacher graded off its golden grade
        return judgment.canary is not None and judgment.grade != judgment.canary.golden_grade
    return judgment.display in BINARY_SIGNALS[rule.signal]


def example_of(judgment: Judgment) -> AlertExample:
    """An AlertExample from a judgment, rationale included."""
    return AlertExample(
        judgment_id=judgment.judgment_id,
        event_id=judgment.event_id,
        item_id=judgment.item_id,
        query=judgment.query,
        item_title=judgment.item_title,
        grade=judgment.grade,
        display=judgment.display,
        failure_modes=judgment.failure_modes,
        rationale=judgment.rationale or (judgment.error or ""),
    )


def model_version_mix(judgments: Iterable[Judgment], rule: AlertRule) -> list[ModelVersionShare]:
    """Per production ``model_version`` of the ok ``judgments``: how many, how many bad for
    ``rule``, and that share; worst share first (the version carrying the bad share leads)."""
    samples: Counter[str] = Counter()
    bad: Counter[str] = Counter()
    for judgment in judgments:
        if judgment.status == "ok" and judgment.model_version is not None:
            samples[judgment.model_version] += 1
            bad[judgment.model_version] += is_bad(judgment, rule)
    mix = [
        ModelVersionShare(model_version=v, samples=n, bad=bad[v], share=bad[v] / n)
        for v, n in samples.items()
    ]
    return sorted(mix, key=lambda m: (-m.share, -m.samples, m.model_version))


def dashboard_link(base: str, category: str, start: datetime, end: datetime) -> str:
    """The dashboard view of ``category`` over ``[start, end]`` (``evalloop dashboard``'s query)."""
    query = urlencode({"category": category, "from": start.isoformat(), "to": end.isoformat()})
    return f"{base.rstrip('/')}/?{query}"


#: How much event time a dashboard link shows before the incident started and after its update.
LINK_BEFORE = timedelta(hours=3)
LINK_AFTER = timedelta(hours=1)


def with_dashboard_link(alert: Alert, base: str | None) -> Alert:
    """``alert`` linking to its category's dashboard view around the incident (as is without a base)."""
    if base is None:
        return alert
    link = dashboard_link(base, alert.category, alert.started_at - LINK_BEFORE, alert.updated_at + LINK_AFTER)
    return alert.model_copy(update={"dashboard_url": link})
