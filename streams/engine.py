"""The alert engine: the policy's rules evaluated at bucket boundaries over windows kept in memory.

One engine serves the live worker (``streams.stages``), ``evalloop backtest``, ``evalloop windows
rebuild`` and the demo, so all of them evaluate the same boundaries (``streams.evaluation``) with
the same bucket size, window sums and state machine.

* ``EngineWindows`` keeps, per category, the recent buckets and one ``SlidingSum`` per window
  length the rules read. A boundary slides each sum by one bucket (add the bucket that enters,
  subtract the one that leaves): arithmetic, not a read of 36–72 buckets. A judgment applied to a
  bucket inside a sum's span is added to that sum at once, so late judgments count exactly as
  they would in a recomputation. Each sum is recomputed from its buckets once per window length
  of sliding, which bounds the rounding that add-and-subtract accumulates.
* The durable store (``DurableWindows``: Redis ``WindowStore`` live, ``BucketWindowStore`` in a
  backtest) stays the idempotent source of truth: ``apply`` goes to it first and only the
  judgments it counted as new are folded into memory. Buckets are loaded from it the first time a
  window covers them (and a few ahead), that is at start and after ``reset`` (the owned
  partitions changed), never again while this worker owns the category.
* ``CachedStates`` keeps each (rule, category) alert state in memory in front of the
  check-and-set store: a boundary that changes nothing reads nothing; a lost race drops the
  cached state so the next read sees the winner's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

from schemas.alerts import Alert
from schemas.judgments import Judgment
from schemas.policy import Policy
from streams import pipeline
from streams.alerting import AlertState, required_windows
from streams.correction import WindowCorrector
from streams.windows import WindowStats, bucket_start, counter_updates, merge_counts, stats_from_counters

#: Buckets loaded ahead of a window's end when it needs a load (an hour of 5-minute buckets).
PREFETCH_BUCKETS = 12

#: Counter families: a count field, then the weight fields that go with it.
_FAMILY_PREFIXES = ("display:", "grade:", "fm:")

Buckets = dict[int, dict[str, float]]
BucketLoader = Callable[[Sequence[int]], Buckets]
#: The latest event time any worker has applied (``LoopStateLike.latest_event_time``).
Horizon = Callable[[], float | None]


class DurableWindows(Protocol):
    """What the engine needs of the durable, idempotent bucket store."""

    bucket_seconds: int

    def apply_new(self, judgments: Sequence[Judgment]) -> list[Judgment]: ...

    def read_buckets(self, category: str, starts: Sequence[int]) -> Buckets: ...

    def categories(self) -> Iterable[str]: ...


def drop_empty(counters: dict[str, float], names: Iterable[str] | None = None) -> None:
    """Remove counter families whose count is back to zero (after subtracting buckets), so a
    slid window holds exactly the fields a recomputation would, not ±1e-17 leftovers.
    ``names``: the fields that changed (the others cannot have reached zero); None: all."""
    for name in list(counters if names is None else names):
        if name not in counters:
            continue
        if name in ("n", "err"):
            family: tuple[str, ...] = (name, "w", "w2") if name == "n" else ("err", "err_w", "err_w2")
        elif name.startswith(_FAMILY_PREFIXES):
            prefix, _, value = name.partition(":")
            family = (name, f"{prefix}_w:{value}")
        else:
            continue
        if round(counters[name]) == 0:
            for member in family:
                counters.pop(member, None)


class SlidingSum:
    """The merged counters of one category's window ``[end - window_s, end)``, slid by bucket."""

    def __init__(self, window_s: int, bucket_seconds: int) -> None:
        if window_s <= 0 or window_s % bucket_seconds:
            raise ValueError(f"window {window_s}s is not a positive multiple of {bucket_seconds}s buckets")
        self.window_s = window_s
        self.step = bucket_seconds
        self.end: int | None = None
        self.counters: dict[str, float] = {}
        self._slid_s = 0

    def covers(self, start: int) -> bool:
        """Whether the bucket starting at ``start`` is inside the current span."""
        return self.end is not None and self.end - self.window_s <= start < self.end

    def span(self, end: int) -> range:
        """Bucket starts of the window ending at ``end`` (a bucket boundary)."""
        return range(end - self.window_s, end, self.step)

    def fold(self, start: int, updates: Mapping[str, float]) -> None:
        """Add a newly applied judgment's ``updates`` when its bucket is inside the span."""
        if self.covers(start):
            merge_counts(self.counters, updates)

    def invalidate(self) -> None:
        """Forget the sum (a bucket in its span changed without being folded): recompute next."""
        self.end = None

    def needs_recompute(self, end: int) -> bool:
        """Whether moving to ``end`` sums the whole span (first use, backwards, or due)."""
        previous = self.end
        return previous is None or end < previous or self._slid_s + end - previous >= self.window_s

    def needed(self, end: int) -> range:
        """The bucket starts ``move_to(end)`` reads that are not already in the sum."""
        if self.needs_recompute(end):
            return self.span(end)
        assert self.end is not None
        return range(self.end, end, self.step)

    def move_to(self, end: int, buckets: Mapping[int, Mapping[str, float]]) -> dict[str, float]:
        """Slide (or recompute) to the window ending at ``end``; ``buckets`` must hold ``needed``."""
        previous = self.end
        if previous is None or self.needs_recompute(end):
            self._recompute(end, buckets)
            return self.counters
        for entering in range(previous, end, self.step):
            merge_counts(self.counters, buckets.get(entering, {}))
            leaving = buckets.get(entering - self.window_s)
            if leaving:
                merge_counts(self.counters, {name: -value for name, value in leaving.items()})
                drop_empty(self.counters, leaving)
        self._slid_s += end - previous
        self.end = end
        return self.counters

    def _recompute(self, end: int, buckets: Mapping[int, Mapping[str, float]]) -> None:
        self.counters = {}
        for start in self.span(end):
            merge_counts(self.counters, buckets.get(start, {}))
        self.end, self._slid_s = end, 0


class CategoryWindows:
    """One category's buckets in memory (loaded on first need) and its sliding sums.

    ``horizon`` gives the latest event time any worker has applied (None: unknown). A load
    reads every bucket up to it, after which the store holds nothing newer for this category
    that this owner did not write itself: buckets past it are known to be empty until a judgment
    this worker applies creates them in memory, so steady-state boundaries read nothing.
    """

    def __init__(
        self, bucket_seconds: int, load: BucketLoader, keep_s: int, horizon: Horizon | None = None
    ) -> None:
        self.step = bucket_seconds
        self.load = load
        self.keep_s = keep_s
        self.horizon = horizon
        #: Buckets starting after this are empty unless in memory (None: not known yet).
        self.complete_after: int | None = None
        self.buckets: Buckets = {}
        self.sums: dict[int, SlidingSum] = {}
        self._oldest_kept = -(2**62)

    def fold(self, judgment: Judgment) -> None:
        """Fold a judgment the durable store just counted as new into memory."""
        start = bucket_start(judgment.event_time.timestamp(), self.step)
        bucket = self.buckets.get(start)
        if bucket is None and self.complete_after is not None and start > self.complete_after:
            bucket = self.buckets[start] = {}  # past the horizon: nothing in the store but ours
        if bucket is None:
            # Not loaded: a later load reads it from the store, this judgment included. A sum
            # whose span holds it would miss it, so it starts over.
            for total in self.sums.values():
                if total.covers(start):
                    total.invalidate()
            return
        updates = counter_updates(judgment)
        merge_counts(bucket, updates)
        for total in self.sums.values():
            total.fold(start, updates)

    def counters(self, window_s: int, end: int) -> dict[str, float]:
        """The merged counters of ``[end - window_s, end)``; ``end`` is a bucket boundary."""
        total = self.sums.get(window_s)
        if total is None:
            total = self.sums[window_s] = SlidingSum(window_s, self.step)
            self.keep_s = max(self.keep_s, window_s)
        if total.end != end:
            self._ensure(total.needed(end), end)
            total.move_to(end, self.buckets)
            self._evict(end)
        return total.counters

    def _ensure(self, starts: range, end: int) -> None:
        missing = [start for start in starts if start not in self.buckets]
        if self.complete_after is not None:
            for start in [start for start in missing if start > self.complete_after]:
                self.buckets[start] = {}
            missing = [start for start in missing if start <= self.complete_after]
        if not missing:
            return
        latest = self.horizon() if self.horizon is not None else None
        upto = end + PREFETCH_BUCKETS * self.step
        if latest is not None:
            upto = max(end, bucket_start(latest, self.step) + self.step)
        missing += [start for start in range(end, upto, self.step) if start not in self.buckets]
        self.buckets.update(self.load(missing))
        if latest is not None:
            self.complete_after = max(self.complete_after or upto - self.step, upto - self.step)

    def _evict(self, end: int) -> None:
        oldest = end - self.keep_s - self.step
        if self._oldest_kept >= oldest:
            return
        for start in [start for start in self.buckets if start < oldest]:
            del self.buckets[start]
        self._oldest_kept = oldest


def aligned_end(end_epoch: float, bucket_seconds: int) -> int:
    """The bucket boundary whose window holds the same buckets as a window ending at ``end_epoch``
    (buckets starting before ``end_epoch`` are those starting before the next boundary)."""
    return -(-math.ceil(end_epoch) // bucket_seconds) * bucket_seconds


class EngineWindows:
    """The windows the rules read, in memory in front of a durable store (a ``WindowStoreLike``).

    ``keep_s``: how far back buckets stay in memory (the longest window the rules read).
    ``horizon``: the latest event time any worker applied (see ``CategoryWindows``); without it
    buckets are loaded ``PREFETCH_BUCKETS`` at a time as the windows slide onto them.
    """

    def __init__(self, durable: DurableWindows, keep_s: int, horizon: Horizon | None = None) -> None:
        self.durable = durable
        self.bucket_seconds = durable.bucket_seconds
        self.keep_s = keep_s
        self.horizon = horizon
        self._by_category: dict[str, CategoryWindows] = {}
        #: Buckets read from the durable store since start (resets included).
        self.buckets_loaded = 0

    @classmethod
    def for_policy(
        cls, durable: DurableWindows, policy: Policy, horizon: Horizon | None = None
    ) -> EngineWindows:
        """Windows that keep what ``policy``'s longest rule window needs."""
        lengths = [w for rule in policy.alerts for w in required_windows(rule)]
        return cls(durable, max(lengths, default=durable.bucket_seconds), horizon)

    def apply(self, judgments: Sequence[Judgment]) -> int:
        """Apply to the durable store; fold the judgments it counted as new into memory."""
        new = self.durable.apply_new(judgments)
        for judgment in new:
            held = self._by_category.get(judgment.category)
            if held is not None:
                held.fold(judgment)
        return len(new)

    def read(self, category: str, window_s: int, end_epoch: float) -> WindowStats:
        """The window ``[end_epoch - window_s, end_epoch)`` of ``category``."""
        end = aligned_end(end_epoch, self.bucket_seconds)
        held = self._by_category.get(category)
        if held is None:
            load = lambda starts: self._load(category, starts)  # noqa: E731
            held = CategoryWindows(self.bucket_seconds, load, self.keep_s, self.horizon)
            self._by_category[category] = held
        return stats_from_counters(window_s, end_epoch, held.counters(window_s, end))

    def _load(self, category: str, starts: Sequence[int]) -> Buckets:
        self.buckets_loaded += len(starts)
        return self.durable.read_buckets(category, starts)

    def categories(self) -> Iterable[str]:
        """Every category the durable store has had a judgment for."""
        return self.durable.categories()

    def reset(self) -> None:
        """Forget everything in memory (ownership changed): reload from the durable store."""
        self._by_category.clear()


class CachedStates:
    """Alert states in memory in front of a check-and-set store (an ``AlertStateStoreLike``)."""

    def __init__(self, store: pipeline.AlertStateStoreLike) -> None:
        self.store = store
        self._states: dict[tuple[str, str], AlertState] = {}
        self.reads = 0

    def get(self, rule_id: str, category: str) -> AlertState:
        """The state, from memory after the first read."""
        key = (rule_id, category)
        if key not in self._states:
            self._states[key] = self.store.get(rule_id, category)
            self.reads += 1
        return self._states[key]

    def put(self, rule_id: str, category: str, state: AlertState, expected_version: int) -> AlertState | None:
        """Check-and-set in the store; remember the stored state, or forget a state that lost."""
        stored = self.store.put(rule_id, category, state, expected_version)
        if stored is None:
            self._states.pop((rule_id, category), None)
        else:
            self._states[(rule_id, category)] = stored
        return stored

    def reset(self) -> None:
        """Forget every state (ownership changed)."""
        self._states.clear()


class AlertEngine:
    """Evaluates a category's rules at its boundaries, in order (see the module docstring)."""

    def __init__(
        self,
        policy: Policy,
        windows: pipeline.WindowStoreLike,
        states: pipeline.AlertStateStoreLike,
        examples: pipeline.RecentExamples | None = None,
        corrector: WindowCorrector | None = None,
    ) -> None:
        self.policy = policy
        self.windows = windows
        self.states = states
        self.examples = examples
        #: The running teacher's calibration; rules with ``estimate: corrected`` judge its shares.
        self.corrector = corrector
        self.boundaries = 0
        self._rules: dict[str, list[pipeline.RuleWindows]] = {}

    def evaluate(self, category: str, points: Iterable[float]) -> list[Alert]:
        """Every rule of ``category`` at each point; the alerts whose transition emitted."""
        alerts: list[Alert] = []
        rules = self._rules.get(category)
        if rules is None:
            rules = self._rules[category] = pipeline.rule_windows(self.policy, category)
        for point in points:
            at = pipeline.utc_from_epoch(point)
            alerts += pipeline.evaluate_alerts(
                category, self.policy, self.windows, self.states, at, self.examples, rules, self.corrector
            )
            self.boundaries += 1
        return alerts

    def reset(self) -> None:
        """Drop what is held in memory (windows and states): the owned partitions changed."""
        for held in (self.windows, self.states):
            if isinstance(held, EngineWindows | CachedStates):
                held.reset()
