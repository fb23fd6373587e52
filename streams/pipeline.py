"""Stage functions the Faust agents call: pure or behind small Protocols, so unit tests need no Kafka.

validate → sample → to_requests (→ teacher) → aggregate → evaluate_alerts. Each function takes
its collaborators (sampler, watermark, stores) as arguments; the agents in ``streams.app`` only
move bytes between topics and call these.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import NamedTuple, Protocol

from schemas.alerts import Alert, AlertExample, ModelVersionShare
from schemas.base import SchemaError
from schemas.deadletter import DeadLetter, SourcePosition
from schemas.events import (
    JudgeRequest,
    RecommendationEvent,
    Sample,
    UnknownFields,
    parse_event_report,
    requests_from_sample,
)
from schemas.judgments import Judgment
from schemas.policy import AlertRule, Policy
from streams.alerting import (
    AlertState,
    Correction,
    Emit,
    RuleEvaluation,
    build_alert,
    cusum_statistic,
    evaluate_cusum,
    evaluate_rule,
    required_windows,
    transition,
)
from streams.canary import evaluate_health
from streams.correction import WindowCorrector
from streams.deadletter import dead_letter, from_schema_error
from streams.evidence import (
    AlertEvidence,
    EventWindow,
    example_of,
    is_bad,
    model_version_mix,
    top_failure_modes,
)
from streams.sampling import SampleDecision, Sampler
from streams.watermark import PairedWatermarks, PartitionedWatermark
from streams.windows import WindowAggregate, WindowStats

#: Recent judgments kept per category to pick alert examples from.
RECENT_PER_CATEGORY = 2000
#: The window a rule without burn windows (CUSUM) draws its examples from.
EXAMPLES_WINDOW_S = 3600


# --------------------------------------------------------------------------- validate


@dataclass(frozen=True)
class Valid:
    """An event that parsed and validated, with the unknown fields it carried (ignored)."""

    event: RecommendationEvent
    unknown_fields: tuple[str, ...] = ()


def validate(
    raw: bytes | None,
    source: SourcePosition | None = None,
    *,
    watermark: WatermarkLike | None = None,
    retention_s: float | None = None,
    now: datetime | None = None,
    max_future_s: float | None = None,
    unknown_fields: UnknownFields = "ignore",
) -> Valid | DeadLetter:
    """Parse ``raw``; a bad or too-late event becomes a DeadLetter naming the reason.

    With a ``watermark``, an event older than ``watermark - retention_s`` is dead-lettered as
    "late" (no window that could still alert holds it); a merely late one passes and, since the
    watermark is a running maximum, does not move it.
    """
    try:
        parsed = parse_event_report(raw, unknown_fields)
    except SchemaError as error:
        return from_schema_error(raw, error, source, now)
    event = parsed.event
    if max_future_s is not None and _too_far_ahead(event.event_time, now, max_future_s):
        # One event from a clock that is years ahead would drag the watermark with it and make
        # every real event "late" from then on: refuse it before it is observed.
        detail = f"event_time {event.event_time.isoformat()} is more than {max_future_s:.0f}s ahead of now"
        return dead_letter(
            raw, "future", field="event_time", detail=detail, event_id=event.event_id, source=source, now=now
        )
    if watermark is not None:
        if is_expired(event.event_time, watermark, retention_s):
            detail = f"event_time {event.event_time.isoformat()} is older than the window retention"
            return dead_letter(
                raw,
                "late",
                field="event_time",
                detail=detail,
                event_id=event.event_id,
                source=source,
                now=now,
            )
        observe(watermark, event.event_time, source.partition if source else None)
    return Valid(event, parsed.unknown_fields)


def _too_far_ahead(event_time: datetime, now: datetime | None, max_future_s: float) -> bool:
    wall = now or datetime.now(UTC)
    return (event_time - wall).total_seconds() > max_future_s


def is_expired(event_time: datetime, watermark: WatermarkLike, retention_s: float | None) -> bool:
    """True when ``event_time`` is before the watermark by more than the retention."""
    mark = watermark.value
    if mark is None or retention_s is None:
        return False
    return event_time < mark - timedelta(seconds=retention_s)


class WatermarkLike(Protocol):
    """What the stages need of a watermark (``Watermark`` or ``PartitionedWatermark``)."""

    @property
    def value(self) -> datetime | None: ...

    def observe(self, event_time: datetime) -> None: ...


def observe(watermark: WatermarkLike, event_time: datetime, partition: int | None) -> None:
    """Advance ``watermark``; a ``PartitionedWatermark`` advances ``partition``'s own mark (a
    ``PairedWatermarks`` the pair ``partition`` encodes)."""
    if isinstance(watermark, PartitionedWatermark | PairedWatermarks):
        watermark.observe(event_time, partition or 0)
    else:
        watermark.observe(event_time)


# --------------------------------------------------------------------------- sample


@dataclass(frozen=True)
class SampleOutcome:
    """The sampler's decision and, when sampled, the Sample to publish."""

    decision: SampleDecision
    sample: Sample | None


def sample(event: RecommendationEvent, sampler: Sampler, now: float) -> SampleOutcome:
    """Ask the sampler about ``event``; build the Sample (with its inclusion probability) if chosen."""
    decision = sampler.decide(event, now)
    if not decision.sampled:
        return SampleOutcome(decision, None)
    chosen = Sample(
        event=event,
        inclusion_probability=decision.inclusion_probability,
        policy_version=sampler.policy.version,
    )
    return SampleOutcome(decision, chosen)


# --------------------------------------------------------------------------- teacher requests


#: The teacher's wire form and how a sample becomes requests live in ``schemas`` (shared with
#: the Serve side, which streams must not import); the streams' names for them:
TeacherRequest = JudgeRequest
to_requests = requests_from_sample


# --------------------------------------------------------------------------- aggregate


class WindowStoreLike(Protocol):
    """What the aggregate stage needs of ``streams.window_store.WindowStore``."""

    bucket_seconds: int

    def apply(self, judgments: Sequence[Judgment]) -> int: ...

    def read(self, category: str, window_s: int, end_epoch: float) -> WindowStats: ...

    def categories(self) -> Iterable[str]: ...


@dataclass(frozen=True)
class AggregateResult:
    """What one batch of judgments did to the windows."""

    applied: int
    duplicates: int
    late: list[Judgment]
    categories: frozenset[str]


def aggregate(
    judgments: Sequence[Judgment],
    store: WindowStoreLike,
    watermark: WatermarkLike,
    retention_s: float | None,
    partitions: Sequence[int] | None = None,
) -> AggregateResult:
    """Apply on-time judgments to the windows (idempotently) and advance the watermark.

    Judgments older than the retention are returned as ``late`` (the caller dead-letters them).
    ``partitions`` (one per judgment) feed a ``PartitionedWatermark``.
    The expiry check uses the watermark from *before* this batch so a batch's own order does not
    decide which of its members expire.
    """
    on_time = [j for j in judgments if not is_expired(j.event_time, watermark, retention_s)]
    late = [j for j in judgments if is_expired(j.event_time, watermark, retention_s)]
    applied = store.apply(on_time) if on_time else 0
    sources: Sequence[int | None] = partitions if partitions is not None else [None] * len(judgments)
    for judgment, partition in zip(judgments, sources, strict=True):
        if not is_expired(judgment.event_time, watermark, retention_s):
            observe(watermark, judgment.event_time, partition)
    return AggregateResult(
        applied=applied,
        duplicates=len(on_time) - applied,
        late=late,
        categories=frozenset(j.category for j in on_time),
    )


class RecentExamples:
    """The latest judgments per category (bounded, in memory, since the worker started), so an
    alert can show examples and the production model versions of the window it fired on."""

    def __init__(self, per_category: int = RECENT_PER_CATEGORY) -> None:
        self._per_category = per_category
        self._by_category: dict[str, deque[Judgment]] = {}

    def add(self, judgments: Iterable[Judgment]) -> None:
        """Remember ``judgments`` (bounded per category; oldest dropped first)."""
        for judgment in judgments:
            kept = self._by_category.setdefault(judgment.category, deque(maxlen=self._per_category))
            kept.append(judgment)

    def in_window(self, category: str, window: EventWindow) -> list[Judgment]:
        """The kept judgments of ``category`` whose event time is in ``window``, newest (event
        time, then arrival) first."""
        kept = self._by_category.get(category, ())
        inside = [j for j in reversed(kept) if window.start < j.event_time.timestamp() <= window.end]
        return sorted(inside, key=lambda j: j.event_time, reverse=True)

    def examples(
        self, category: str, rule: AlertRule, window: EventWindow | None = None, limit: int = 5
    ) -> list[AlertExample]:
        """Up to ``limit`` bad judgments (for ``rule``) from ``window`` (default: any kept), newest
        first, one per (query, item): a redelivered or repeated pair is shown once."""
        candidates = self.in_window(category, window or EventWindow(float("-inf"), float("inf")))
        chosen: dict[tuple[str, str], Judgment] = {}
        for judgment in candidates:
            if is_bad(judgment, rule):
                chosen.setdefault((judgment.query, judgment.item_id), judgment)
                if len(chosen) >= limit:
                    break
        return [example_of(j) for j in chosen.values()]

    def model_versions(self, category: str, rule: AlertRule, window: EventWindow) -> list[ModelVersionShare]:
        """The production model versions among the window's kept ok judgments, worst bad share first."""
        return model_version_mix(self.in_window(category, window), rule)


# --------------------------------------------------------------------------- alerts


class AlertStateStoreLike(Protocol):
    """What alert evaluation needs of ``streams.window_store.AlertStateStore``."""

    def get(self, rule_id: str, category: str) -> AlertState: ...

    def put(
        self, rule_id: str, category: str, state: AlertState, expected_version: int
    ) -> AlertState | None: ...


class RuleWindows(NamedTuple):
    """A rule that applies to a category and the window lengths it reads (seconds)."""

    rule: AlertRule
    windows: list[int]


def rule_windows(policy: Policy, category: str) -> list[RuleWindows]:
    """``category``'s rules with their windows (the alert engine keeps this per category)."""
    return [RuleWindows(rule, required_windows(rule)) for rule in policy.rules_for(category)]


def evaluate_alerts(
    category: str,
    policy: Policy,
    store: WindowStoreLike,
    states: AlertStateStoreLike,
    at: datetime,
    examples: RecentExamples | None = None,
    rules: Sequence[RuleWindows] | None = None,
    corrector: WindowCorrector | None = None,
) -> list[Alert]:
    """Evaluate every rule of ``category`` at event time ``at`` (the watermark).

    Each window length is read once for all the rules that use it. State changes are stored
    with check-and-set; an Alert is returned only for a transition that emits (firing or
    resolved) and that this worker won, so two workers never announce the same one.
    ``rules``: ``rule_windows(policy, category)``, when the caller keeps it. ``corrector``: the
    running teacher's calibration (figures carry corrected shares; see docs/calibration.md).
    """
    alerts: list[Alert] = []
    reader = _Reader(store, category, at, {})
    correction = Correction(corrector, category) if corrector is not None else None
    for rule, windows in rules if rules is not None else rule_windows(policy, category):
        state = states.get(rule.id, category)
        verdict = _verdict(rule, windows, state, reader, correction, policy)
        if verdict.new_state == state:
            continue
        stored = states.put(rule.id, category, verdict.new_state, state.version)
        if stored is None or verdict.emit is None:
            continue
        context = _context(
            examples, category, rule, EventWindow.ending(at, max(windows, default=EXAMPLES_WINDOW_S))
        )
        evidence = AlertEvidence(top_failure_modes(verdict.widest), *context)
        alerts.append(build_alert(rule, category, stored, verdict.evaluation, evidence, policy.version, at))
    return alerts


def _context(
    examples: RecentExamples | None, category: str, rule: AlertRule, window: EventWindow
) -> tuple[list[AlertExample], list[ModelVersionShare]]:
    if examples is None:
        return [], []
    return examples.examples(category, rule, window), examples.model_versions(category, rule, window)


@dataclass
class _Reader:
    """Reads each window length once per (category, boundary), for every rule that needs it."""

    store: WindowStoreLike
    category: str
    at: datetime
    read: dict[int, WindowStats]

    def __call__(self, window_s: int) -> WindowStats:
        if window_s not in self.read:
            self.read[window_s] = self.store.read(self.category, window_s, self.at.timestamp())
        return self.read[window_s]


class Verdict(NamedTuple):
    """A rule's evaluation at a boundary, the state it leads to, and its widest window."""

    evaluation: RuleEvaluation
    new_state: AlertState
    emit: Emit | None
    widest: WindowStats


def _verdict(
    rule: AlertRule,
    windows: Sequence[int],
    state: AlertState,
    reader: _Reader,
    correction: Correction | None = None,
    policy: Policy | None = None,
) -> Verdict:
    if rule.kind == "cusum":
        step_s = reader.store.bucket_seconds
        bucket = reader(step_s)  # the bucket that ends at this boundary
        statistic = cusum_statistic(rule, state, bucket, reader.at, step_s)
        evaluation = evaluate_cusum(rule, statistic, bucket, step_s)
        step = transition(state, evaluation, reader.at, rule)
        moved = replace(step.new_state, statistic=statistic, statistic_through=reader.at)
        return Verdict(evaluation, moved, step.emit, bucket)
    stats = {window: reader(window) for window in windows}
    if rule.kind == "teacher_health":
        if policy is None:
            raise ValueError(f"rule {rule.id}: a teacher_health rule needs the policy's scale")
        evaluation = evaluate_health(rule, stats, policy.grades, policy.gates.gate2.weights)
    else:
        evaluation = evaluate_rule(rule, stats, correction)
    step = transition(state, evaluation, reader.at, rule)
    return Verdict(evaluation, step.new_state, step.emit, stats[max(stats)])


@dataclass
class MemoryAlertStateStore:
    """An in-process AlertStateStoreLike for unit tests, with the same check-and-set."""

    states: dict[tuple[str, str], AlertState] = field(default_factory=dict)

    def get(self, rule_id: str, category: str) -> AlertState:
        """The stored state, or the initial one."""
        return self.states.get((rule_id, category), AlertState())

    def put(self, rule_id: str, category: str, state: AlertState, expected_version: int) -> AlertState | None:
        """Store as ``expected_version + 1`` if nobody else stored meanwhile."""
        if self.get(rule_id, category).version != expected_version:
            return None
        stored = replace(state, version=expected_version + 1)
        self.states[(rule_id, category)] = stored
        return stored


# --------------------------------------------------------------------------- in-memory fakes


@dataclass
class MemoryWindowStore:
    """An in-process WindowStoreLike for unit tests: the same idempotency as the Redis store."""

    bucket_seconds: int = 300
    judgments: dict[str, Judgment] = field(default_factory=dict)

    def apply(self, judgments: Sequence[Judgment]) -> int:
        """Add unseen judgments; returns how many were new."""
        new = 0
        for judgment in judgments:
            if judgment.judgment_id not in self.judgments:
                self.judgments[judgment.judgment_id] = judgment
                new += 1
        return new

    def read(self, category: str, window_s: int, end_epoch: float) -> WindowStats:
        """Recompute the window from the stored judgments."""
        window = WindowAggregate(window_s, end_epoch, self.bucket_seconds)
        window.extend(j for j in self.judgments.values() if j.category == category)
        return window.result()

    def categories(self) -> list[str]:
        """Categories with at least one judgment."""
        return sorted({j.category for j in self.judgments.values()})


def utc_from_epoch(epoch: float) -> datetime:
    """Epoch seconds → aware UTC datetime."""
    return datetime.fromtimestamp(epoch, UTC)


def policy_retention_s(policy: Policy) -> float:
    """Longest window any rule reads: older judgments can no longer change an alert."""
    longest = [w.long_seconds for rule in policy.alerts for w in rule.windows]
    return float(max(longest, default=24 * 3600))
