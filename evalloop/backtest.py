"""Backtest a policy offline: the loop's own pure stages over a recorded stream, in one process.

The same sampling, teacher, window math, alert rules and state machine as the live loop, but the
teacher is called in-process and windows live in memory. Each rule is evaluated at every bucket
boundary once all judgments before it are in: the answer a live run converges to when its
watermark's lateness covers the stream's disorder. Use it to tune a policy's alert rules on a
recorded day before shipping it, and as the reference a live replay is checked against.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from judges.base import JudgeRequest, Teacher, requests_from_sample
from schemas.alerts import Alert
from schemas.base import SchemaError
from schemas.events import RecommendationEvent, parse_event
from schemas.golden import GoldenItem, load_canaries
from schemas.judgments import CanaryTag, Judgment
from schemas.policy import Policy
from streams import pipeline
from streams.canary import canary_samples, tag_canary
from streams.correction import WindowCorrector
from streams.engine import AlertEngine, EngineWindows
from streams.evaluation import close_out_point
from streams.replay import Degradation, build_records, read_lines
from streams.sampling import Sampler
from streams.windows import (
    DEFAULT_BUCKET_SECONDS,
    WindowAggregate,
    WindowStats,
    bucket_start,
    counter_updates,
    merge_counts,
)

TEACHER_BATCH = 256


@dataclass
class BucketWindowStore:
    """In-memory windows with the Redis store's bucket layout and idempotency: the backtest's
    durable store under the alert engine, and (``read``, O(buckets)) the plain recomputation
    the engine and the Redis store are checked against."""

    bucket_seconds: int = DEFAULT_BUCKET_SECONDS
    buckets: dict[tuple[str, int], dict[str, float]] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)

    def apply(self, judgments: Sequence[Judgment]) -> int:
        """Count unseen judgments into their event-time buckets; returns how many were new."""
        return len(self.apply_new(judgments))

    def apply_new(self, judgments: Sequence[Judgment]) -> list[Judgment]:
        """Count unseen judgments into their event-time buckets; returns the new ones."""
        new: list[Judgment] = []
        for judgment in judgments:
            if judgment.judgment_id in self.seen:
                continue
            self.seen.add(judgment.judgment_id)
            start = bucket_start(judgment.event_time.timestamp(), self.bucket_seconds)
            merge_counts(self.buckets.setdefault((judgment.category, start), {}), counter_updates(judgment))
            new.append(judgment)
        return new

    def read_buckets(self, category: str, starts: Sequence[int]) -> dict[int, dict[str, float]]:
        """Copies of ``category``'s buckets at ``starts`` (empty where none)."""
        return {start: dict(self.buckets.get((category, start), {})) for start in starts}

    def read(self, category: str, window_s: int, end_epoch: float) -> WindowStats:
        """The window ``[end - window_s, end)`` of ``category``."""
        window = WindowAggregate(window_s, end_epoch, self.bucket_seconds)
        for start in window.covering_buckets():
            counters = self.buckets.get((category, start))
            if counters:
                window.update(start, counters)
        return window.result()

    def categories(self) -> list[str]:
        """Categories with at least one judgment."""
        return sorted({category for category, _ in self.buckets})


@dataclass
class BacktestResult:
    """What a backtest saw and which alerts it would have sent."""

    events: int = 0
    invalid: int = 0
    sampled: int = 0
    judgments: list[Judgment] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    windows: BucketWindowStore = field(default_factory=BucketWindowStore)

    def displays_by_category(self) -> dict[str, Counter[str]]:
        """Counts of show/related/filter/error per category over the whole stream."""
        result: dict[str, Counter[str]] = {}
        for judgment in self.judgments:
            result.setdefault(judgment.category, Counter())[judgment.display or "error"] += 1
        return result


def load_events(path: Path, degradation: Degradation | None) -> tuple[list[RecommendationEvent], int]:
    """The stream's valid events in event-time order (degraded as asked) and the invalid count."""
    records, _ = build_records(read_lines(path), "event_id", degradation)
    events: list[RecommendationEvent] = []
    invalid = 0
    for record in records:
        try:
            events.append(parse_event(record.value))
        except SchemaError:
            invalid += 1
    events.sort(key=lambda event: event.event_time)
    return events, invalid


def judge_all(teacher: Teacher, requests: Sequence[JudgeRequest]) -> list[Judgment]:
    """Judge in batches, as the Serve deployment would."""
    judgments: list[Judgment] = []
    for start in range(0, len(requests), TEACHER_BATCH):
        judgments += teacher.judge(requests[start : start + TEACHER_BATCH])
    return judgments


def sample_requests(policy: Policy, events: Iterable[RecommendationEvent]) -> tuple[list[JudgeRequest], int]:
    """The pairs the loop would send to the teacher (sampling on event time, deterministic)."""
    pairs = sample_pairs(policy, events)
    return pairs.requests, pairs.sampled


class SampledPairs(NamedTuple):
    """The pairs to judge, each one's canary tag (None: production) and the sampled event count."""

    requests: list[JudgeRequest]
    tags: list[CanaryTag | None]
    sampled: int


def sample_pairs(
    policy: Policy, events: Iterable[RecommendationEvent], canaries: Sequence[GoldenItem] = ()
) -> SampledPairs:
    """What the sample stage sends: each sampled event's pairs, then its canary if it has one."""
    sampler = Sampler(policy)
    out = SampledPairs([], [], 0)
    limit = policy.sampling.max_items_per_event
    for event in events:
        outcome = pipeline.sample(event, sampler, event.event_time.timestamp())
        if outcome.sample is None:
            continue
        for chosen in (outcome.sample, *canary_samples(outcome.sample, canaries, policy)):
            pairs = requests_from_sample(chosen, limit)
            out.requests.extend(pairs)
            out.tags.extend([chosen.canary] * len(pairs))
        out = out._replace(sampled=out.sampled + 1)
    return out


def replay_alerts(
    policy: Policy,
    judgments: Sequence[Judgment],
    store: BucketWindowStore,
    corrector: WindowCorrector | None = None,
) -> list[Alert]:
    """Apply judgments in event-time order, evaluating every rule at each bucket boundary.

    Boundaries run from the first after a category's first judgment to where the live loop's
    idle close-out stops once the stream has gone quiet (docs/alerts.md), through the same
    ``AlertEngine`` the live worker drives.
    """
    ordered = sorted(judgments, key=lambda j: j.event_time)
    times = [j.event_time.timestamp() for j in ordered]
    if not ordered:
        return []
    step = store.bucket_seconds
    examples = pipeline.RecentExamples()
    windows = EngineWindows.for_policy(store, policy)
    engine = AlertEngine(policy, windows, pipeline.MemoryAlertStateStore(), examples, corrector)
    first_seen: dict[str, float] = {}
    alerts: list[Alert] = []
    applied = 0
    for boundary in range(
        bucket_start(times[0], step) + step, int(close_out_point(times[-1], step)) + 1, step
    ):
        upto = bisect.bisect_left(times, boundary)
        windows.apply(ordered[applied:upto])
        examples.add(ordered[applied:upto])
        for judgment in ordered[applied:upto]:
            first_seen.setdefault(judgment.category, judgment.event_time.timestamp())
        applied = upto
        # A category is evaluated from the first boundary after its first judgment, as live.
        for category in sorted(first_seen):
            alerts += engine.evaluate(category, [float(boundary)])
    return alerts


def backtest(
    policy: Policy,
    teacher: Teacher,
    path: Path,
    degradation: Degradation | None = None,
    bucket_seconds: int = DEFAULT_BUCKET_SECONDS,
    corrector: WindowCorrector | None = None,
    canaries: Sequence[GoldenItem] | None = None,
) -> BacktestResult:
    """Run the whole offline loop over ``path`` (``bucket_seconds``: the worker's, from
    ``StreamSettings``, so the backtest evaluates the boundaries the live loop does;
    ``corrector``: the teacher's calibration, as the live worker loads it; ``canaries``: the
    golden canary split, by default the policy's, sent as the live sample stage sends them)."""
    events, invalid = load_events(path, degradation)
    pairs = sample_pairs(policy, events, load_canaries(policy) if canaries is None else canaries)
    judged = judge_all(teacher, pairs.requests)
    judgments = [tag_canary(j, tag) for j, tag in zip(judged, pairs.tags, strict=True)]
    result = BacktestResult(
        events=len(events),
        invalid=invalid,
        sampled=pairs.sampled,
        judgments=judgments,
        windows=BucketWindowStore(bucket_seconds),
    )
    result.alerts = replay_alerts(policy, judgments, result.windows, corrector)
    return result
