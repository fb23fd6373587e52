"""Pure alert-rule evaluation and the per-(rule, category) alert state machine.

A rule breaches when, for any of its burn-window pairs, BOTH windows hold at least
``min_samples`` judgments AND the Wilson *lower* bound of the signal's rate exceeds
``threshold × factor`` in both: the long window shows the problem is real, the short one that it
is still happening, and the lower bound means a handful of bad items cannot page anyone. It has
recovered when every pair's short window has enough samples and its *point* rate is at or under
``threshold × factor``. Anything else (too few samples) holds the current state. See docs/alerts.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal, NamedTuple

from schemas.alerts import Alert, CorrectedFigure, WindowFigure
from schemas.calibration import BINARY_SIGNALS, FAILURE_MODE_SIGNAL
from schemas.policy import AlertRule, parse_duration
from streams.correction import CorrectedShare, WindowCorrector
from streams.cusum import CusumDesign, bucket_design, update
from streams.evidence import AlertEvidence, example_of, is_bad, top_failure_modes
from streams.windows import RateEstimate, WindowStats, signal_rate, window_name

__all__ = ["example_of", "is_bad", "top_failure_modes"]  # re-exported: callers import them here

StateName = Literal["ok", "pending", "firing", "resolved"]
Emit = Literal["firing", "resolved"]


@dataclass(frozen=True)
class WindowFigureData:
    """One window of one burn pair as evaluated: its rate, bounds and whether it breaches."""

    window: str
    seconds: int
    role: Literal["long", "short"]
    samples: int
    weighted_samples: float
    bad: int
    rate: float
    lower: float
    upper: float
    threshold: float
    enough_samples: bool
    breaching: bool
    #: The bias-corrected share (None without a calibration of this signal) and the estimate judged.
    corrected: CorrectedShare | None = None
    estimate: Literal["raw", "corrected"] = "raw"

    @property
    def point(self) -> float:
        """The share the rule judged: the corrected value when it judged that, else the raw rate."""
        if self.estimate == "corrected" and self.corrected is not None and self.corrected.value is not None:
            return self.corrected.value
        return self.rate

    def to_schema(self) -> WindowFigure:
        """As the alert payload's WindowFigure."""
        return WindowFigure(
            window=self.window,
            seconds=self.seconds,
            samples=self.samples,
            weighted_samples=self.weighted_samples,
            bad=self.bad,
            rate=self.rate,
            lower=self.lower,
            upper=self.upper,
            threshold=self.threshold,
            corrected=_corrected_figure(self.corrected),
            estimate=self.estimate,
        )


def _corrected_figure(share: CorrectedShare | None) -> CorrectedFigure | None:
    if share is None:
        return None
    return CorrectedFigure(
        status=share.status,
        value=share.value,
        lower=share.lower,
        upper=share.upper,
        youden=min(max(share.youden, -1.0), 1.0),
    )


@dataclass(frozen=True)
class RuleEvaluation:
    """A rule's verdict on one category at one watermark (a CUSUM rule adds its statistic)."""

    breaching: bool
    recovered: bool
    figures: list[WindowFigureData]
    statistic: float | None = None
    alarm_level: float | None = None
    #: The teacher version whose calibration corrected the figures (None: raw only).
    calibration: str | None = None


class Correction(NamedTuple):
    """What a rule's figures are corrected with: the corrector and the category it applies to."""

    corrector: WindowCorrector
    category: str


def required_windows(rule: AlertRule) -> list[int]:
    """The window lengths (seconds) ``evaluate_rule`` needs stats for, ascending."""
    return sorted({s for w in rule.windows for s in (w.long_seconds, w.short_seconds)})


def _figure(
    name: str,
    role: Literal["long", "short"],
    stats: WindowStats,
    rule: AlertRule,
    threshold: float,
    correction: Correction | None = None,
) -> WindowFigureData:
    estimate: RateEstimate = signal_rate(stats, rule)
    corrected = _correct(estimate, rule, correction)
    judged: Literal["raw", "corrected"] = (
        "corrected" if rule.estimate == "corrected" and corrected is not None else "raw"
    )
    enough = estimate.samples >= rule.required_samples
    lower = estimate.lower
    if judged == "corrected" and corrected is not None:
        # A share the teacher cannot identify is no evidence either way: it holds the state.
        enough = enough and corrected.status == "corrected"
        lower = corrected.lower if corrected.lower is not None else 0.0
    return WindowFigureData(
        window=name,
        seconds=stats.window_s,
        role=role,
        samples=estimate.samples,
        weighted_samples=stats.weighted_samples,
        bad=estimate.bad,
        rate=estimate.rate,
        lower=estimate.lower,
        upper=estimate.upper,
        threshold=threshold,
        enough_samples=enough,
        breaching=enough and lower > threshold,
        corrected=corrected,
        estimate=judged,
    )


def _correct(estimate: RateEstimate, rule: AlertRule, correction: Correction | None) -> CorrectedShare | None:
    if correction is None or (rule.signal not in BINARY_SIGNALS and rule.failure_mode is None):
        return None
    signal = rule.signal if rule.failure_mode is None else f"{FAILURE_MODE_SIGNAL}{rule.failure_mode}"
    return correction.corrector.correct(correction.category, signal, estimate, rule.confidence)


def _stats(stats_by_window: Mapping[int, WindowStats], seconds: int, rule: AlertRule) -> WindowStats:
    try:
        return stats_by_window[seconds]
    except KeyError:
        raise KeyError(f"rule {rule.id} needs stats for the {seconds}s window") from None


def evaluate_rule(
    rule: AlertRule, stats_by_window: Mapping[int, WindowStats], correction: Correction | None = None
) -> RuleEvaluation:
    """Evaluate ``rule`` against window stats keyed by window seconds (see ``required_windows``);
    with ``correction``, figures carry corrected shares and a ``estimate: corrected`` rule judges them."""
    figures: list[WindowFigureData] = []
    breaching = False
    recovered = True
    for pair in rule.windows:
        threshold = rule.threshold * pair.factor
        long_stats = _stats(stats_by_window, pair.long_seconds, rule)
        long = _figure(pair.long, "long", long_stats, rule, threshold, correction)
        short_stats = _stats(stats_by_window, pair.short_seconds, rule)
        short = _figure(pair.short, "short", short_stats, rule, threshold, correction)
        figures += [long, short]
        breaching = breaching or (long.breaching and short.breaching)
        # A pair vouches for recovery only with enough recent evidence that the rate is back down.
        recovered = recovered and short.enough_samples and short.point <= threshold
    return RuleEvaluation(
        breaching=breaching,
        recovered=recovered and not breaching,
        figures=figures,
        calibration=correction.corrector.teacher_version if correction is not None else None,
    )


def cusum_design(rule: AlertRule, bucket_seconds: int) -> CusumDesign:
    """The rule's CUSUM (increments and alarm level) for buckets of ``bucket_seconds``."""
    if rule.cusum is None:
        raise ValueError(f"rule {rule.id} is not a cusum rule")
    per_bucket = rule.cusum.judgments_per_hour * bucket_seconds / 3600.0
    target = rule.cusum.false_alarm_seconds / bucket_seconds
    return bucket_design(rule.cusum.in_control, rule.threshold, per_bucket, target)


def cusum_statistic(
    rule: AlertRule, state: AlertState, bucket: WindowStats, at: datetime, bucket_seconds: int
) -> float:
    """The statistic once the bucket ending at ``at`` is added (unchanged if it already was)."""
    if state.statistic_through is not None and at <= state.statistic_through:
        return state.statistic
    estimate = signal_rate(bucket, rule)
    return update(state.statistic, estimate.bad, estimate.samples, cusum_design(rule, bucket_seconds))


def evaluate_cusum(
    rule: AlertRule, statistic: float, bucket: WindowStats, bucket_seconds: int
) -> RuleEvaluation:
    """A CUSUM rule's verdict: breaching at the alarm level, recovered back at zero; the figure
    is the bucket just added (its rate against the rule's threshold)."""
    design = cusum_design(rule, bucket_seconds)
    figure = _figure(window_name(bucket.window_s), "short", bucket, rule, rule.threshold)
    breaching = statistic >= design.threshold
    return RuleEvaluation(
        breaching=breaching,
        recovered=statistic <= 0.0,
        figures=[replace(figure, breaching=breaching)],
        statistic=statistic,
        alarm_level=design.threshold,
    )


@dataclass(frozen=True)
class AlertState:
    """Stored state of one (rule, category). Times are event times (the watermark).

    ``version`` increments on every stored change; the store uses it for check-and-set.
    """

    state: StateName = "ok"
    since: datetime | None = None
    started_at: datetime | None = None
    fired_at: datetime | None = None
    last_breach_at: datetime | None = None
    recovered_since: datetime | None = None
    resolved_at: datetime | None = None
    incident_id: str | None = None
    version: int = 0
    #: A CUSUM rule's statistic and the last boundary whose bucket it holds (None: never).
    statistic: float = 0.0
    statistic_through: datetime | None = None

    def to_dict(self) -> dict[str, str]:
        """Flat strings for a Redis hash; None becomes ''."""
        out: dict[str, str] = {}
        for name in _STATE_FIELDS:
            value = getattr(self, name)
            out[name] = (
                "" if value is None else value.isoformat() if isinstance(value, datetime) else str(value)
            )
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, str]) -> AlertState:
        """Inverse of ``to_dict``; an empty mapping is the initial 'ok' state."""
        if not data:
            return cls()
        times = {n: datetime.fromisoformat(data[n]) if data.get(n) else None for n in _TIME_FIELDS}
        state = data.get("state") or "ok"
        if state not in ("ok", "pending", "firing", "resolved"):
            raise ValueError(f"unknown alert state {state!r}")
        return cls(
            state=state,  # type: ignore[arg-type]  # checked just above
            incident_id=data.get("incident_id") or None,
            version=int(data.get("version") or 0),
            statistic=float(data.get("statistic") or 0.0),
            **times,
        )


_TIME_FIELDS = (
    "since",
    "started_at",
    "fired_at",
    "last_breach_at",
    "recovered_since",
    "resolved_at",
    "statistic_through",
)
_STATE_FIELDS = ("state", *_TIME_FIELDS, "incident_id", "version", "statistic")


@dataclass(frozen=True)
class Transition:
    """The next state and what to announce: None, or exactly one 'firing' / 'resolved'."""

    new_state: AlertState
    emit: Emit | None


def incident_id_for(rule_id: str, started_at: datetime) -> str:
    """Deterministic incident id: a replay of the same day names incidents identically."""
    key = f"{rule_id}\x1f{started_at.isoformat()}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _elapsed(since: datetime | None, now: datetime) -> timedelta:
    # Out-of-order evaluation (now before since) counts as no time passed.
    return max(timedelta(0), now - since) if since is not None else timedelta(0)


def _open_incident(rule: AlertRule, now: datetime) -> Transition:
    pending = AlertState(
        state="pending",
        since=now,
        started_at=now,
        last_breach_at=now,
        incident_id=incident_id_for(rule.id, now),
    )
    if rule.pending_for is None:
        return Transition(replace(pending, state="firing", fired_at=now), "firing")
    return Transition(pending, None)


def _from_pending(
    state: AlertState, evaluation: RuleEvaluation, now: datetime, rule: AlertRule
) -> Transition:
    if not evaluation.breaching:
        return Transition(AlertState(state="ok", since=now), None)
    held = _elapsed(state.since, now) >= timedelta(seconds=parse_duration(rule.pending_for or "1s"))
    if rule.pending_for is None or held:
        return Transition(
            replace(state, state="firing", since=now, fired_at=now, last_breach_at=now), "firing"
        )
    return Transition(replace(state, last_breach_at=now), None)


def _from_firing(state: AlertState, evaluation: RuleEvaluation, now: datetime, rule: AlertRule) -> Transition:
    if evaluation.breaching:
        return Transition(replace(state, last_breach_at=now, recovered_since=None), None)
    if not evaluation.recovered:
        return Transition(state, None)  # too little evidence either way: hold
    recovered_since = state.recovered_since or now
    if _elapsed(recovered_since, now) >= timedelta(seconds=parse_duration(rule.resolve_for)):
        resolved = replace(
            state, state="resolved", since=now, resolved_at=now, recovered_since=recovered_since
        )
        return Transition(resolved, "resolved")
    return Transition(replace(state, recovered_since=recovered_since), None)


def transition(
    state: AlertState, evaluation: RuleEvaluation, now_event_time: datetime, rule: AlertRule
) -> Transition:
    """Advance the state machine ok → pending → firing → resolved (see docs/alerts.md).

    Emits 'firing' once per incident and 'resolved' once; flapping inside a firing incident only
    resets the resolve timer. The returned state keeps ``version``; the store bumps it on put.
    """
    now = now_event_time
    if state.state in ("ok", "resolved"):
        if evaluation.breaching:
            opened = _open_incident(rule, now)
            return Transition(replace(opened.new_state, version=state.version), opened.emit)
        return Transition(state, None)
    if state.state == "pending":
        return _from_pending(state, evaluation, now, rule)
    return _from_firing(state, evaluation, now, rule)


def alert_id_for(rule_id: str, category: str, started_at: datetime) -> str:
    """Deterministic alert id from rule, category and incident start."""
    key = f"{rule_id}\x1f{category}\x1f{started_at.isoformat()}"
    return "alert-" + hashlib.sha256(key.encode()).hexdigest()[:24]


def dedup_key_for(rule_id: str, category: str) -> str:
    """One open alert per (rule, category): the key PagerDuty and consumers deduplicate on."""
    return f"{rule_id}/{category}"


def build_alert(
    rule: AlertRule,
    category: str,
    state: AlertState,
    evaluation: RuleEvaluation,
    evidence: AlertEvidence,
    policy_version: str,
    now: datetime,
) -> Alert:
    """The Alert to publish for ``state`` (pending, firing or resolved; never 'ok'), with what
    on-call needs to act: failure modes, examples and model versions of the window (``evidence``),
    the rule's runbook, and on resolve how long the incident lasted."""
    if state.state == "ok" or state.started_at is None:
        raise ValueError("an 'ok' state has no alert to build")
    resolved_at = state.resolved_at if state.state == "resolved" else None
    return Alert(
        alert_id=alert_id_for(rule.id, category, state.started_at),
        dedup_key=dedup_key_for(rule.id, category),
        category=category,
        rule=rule.id,
        description=rule.description.strip()[:1000],
        severity=rule.severity,
        state=state.state,
        signal=rule.signal if rule.failure_mode is None else f"{rule.signal}:{rule.failure_mode}",
        threshold=rule.threshold,
        windows=[figure.to_schema() for figure in evaluation.figures][:16],
        top_failure_modes=list(evidence.failure_modes)[:16],
        examples=list(evidence.examples)[:10],
        model_versions=list(evidence.model_versions)[:16],
        runbook_url=rule.runbook_url,
        policy_version=policy_version,
        estimate="corrected" if any(f.estimate == "corrected" for f in evaluation.figures) else "raw",
        calibration=evaluation.calibration,
        statistic=evaluation.statistic,
        alarm_level=evaluation.alarm_level,
        started_at=state.started_at,
        fired_at=state.fired_at,
        resolved_at=resolved_at,
        duration_seconds=(resolved_at - state.started_at).total_seconds() if resolved_at else None,
        updated_at=now,
    )
