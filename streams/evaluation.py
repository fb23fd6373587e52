"""Who evaluates a category's alert rules, at which event times, and when a quiet input closes out.

Three rules, pure (no I/O), shared by the live aggregate stage and ``evalloop backtest``:

* **Ownership.** Judgments are keyed by category, so all of a category's judgments land on one
  partition of the judgments topic: ``category_partition``. The worker that is assigned that
  partition is the one evaluator of the category's rules; after a rebalance the new owner goes on
  from the category's ``evaluated_through`` mark (stored in Redis beside the windows), so every
  bucket boundary is evaluated once, in order, whoever owns it.
* **Boundaries.** Rules run at every bucket boundary after the category's mark up to the
  watermark (``category_points``). A category never evaluated starts at the first boundary after
  the first judgment of it this worker saw, as the backtest does.
* **Idle close-out.** When no judgment has arrived for ``idle_close_s`` wall seconds the input is
  caught up: the watermark is allowed to jump to ``close_out_point(latest event time)``, the end
  of the bucket after the one holding the latest judgment any worker applied. The backtest ends
  its evaluation at the same point, so live and backtest agree when traffic stops.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from aiokafka.partitioner import murmur2

from streams.windows import bucket_start

#: At most this many evaluation points per category per round (a day of 5-minute buckets).
MAX_POINTS_PER_ROUND = 288


def category_partition(category: str, partitions: int) -> int:
    """The judgments partition a category's judgments land on (Kafka's default murmur2 partitioner)."""
    hashed: int = murmur2(category.encode("utf-8"))
    return (hashed & 0x7FFFFFFF) % partitions


def owned_categories(categories: Iterable[str], partitions: int, owned: frozenset[int] | None) -> list[str]:
    """The categories this worker evaluates: those whose partition it owns (all when ``owned`` is None)."""
    ordered = sorted(set(categories))
    if owned is None:
        return ordered
    return [c for c in ordered if category_partition(c, partitions) in owned]


def close_out_point(latest_event_epoch: float, bucket_seconds: int) -> float:
    """Where a caught-up (idle) input's watermark may go: the end of the bucket after the latest one."""
    return float(bucket_start(latest_event_epoch, bucket_seconds) + 2 * bucket_seconds)


def category_points(
    through: float | None, first_seen: float | None, target: float, bucket_seconds: int
) -> list[float]:
    """Boundaries in ``(through, target]`` to evaluate; from ``first_seen``'s next boundary if never.

    Evaluating at boundaries, not at whatever the watermark is when a batch ends, makes alert
    transitions independent of batching, so a replay at any speed fires and resolves at the same
    event times as live.
    """
    if through is None:
        if first_seen is None:
            return []
        through = float(bucket_start(first_seen, bucket_seconds))
    first = bucket_start(through, bucket_seconds) + bucket_seconds
    last = bucket_start(target, bucket_seconds)
    points = [float(t) for t in range(int(first), int(last) + 1, bucket_seconds)]
    return points[:MAX_POINTS_PER_ROUND]


def every_point(
    through: float | None, first_seen: float | None, target: float, bucket_seconds: int
) -> list[float]:
    """Every boundary ``category_points`` would give round after round, past its per-round cap
    (a rebuild catching up days in one go)."""
    points: list[float] = []
    batch = category_points(through, first_seen, target, bucket_seconds)
    while batch:
        points += batch
        batch = category_points(batch[-1], first_seen, target, bucket_seconds)
    return points


class LoopStateLike(Protocol):
    """Loop-wide marks shared by the workers (Redis: ``streams.status.LoopStateStore``)."""

    def set_watermark(self, epoch: float) -> None: ...

    def get_watermark(self) -> float | None: ...

    def note_event_time(self, epoch: float) -> None: ...

    def latest_event_time(self) -> float | None: ...

    def evaluated_through(self, categories: list[str]) -> dict[str, float | None]: ...

    def set_evaluated_through(self, marks: Mapping[str, float]) -> None: ...


@dataclass
class MemoryLoopState:
    """An in-process LoopStateLike (unit tests, backtests): the same max-only semantics."""

    watermark: float | None = None
    latest: float | None = None
    through: dict[str, float] = field(default_factory=dict)

    def set_watermark(self, epoch: float) -> None:
        """Keep the larger watermark."""
        self.watermark = epoch if self.watermark is None else max(self.watermark, epoch)

    def get_watermark(self) -> float | None:
        """The stored watermark."""
        return self.watermark

    def note_event_time(self, epoch: float) -> None:
        """Keep the latest event time applied."""
        self.latest = epoch if self.latest is None else max(self.latest, epoch)

    def latest_event_time(self) -> float | None:
        """The latest event time applied by any worker."""
        return self.latest

    def evaluated_through(self, categories: list[str]) -> dict[str, float | None]:
        """Each category's last evaluated boundary, or None."""
        return {category: self.through.get(category) for category in categories}

    def set_evaluated_through(self, marks: Mapping[str, float]) -> None:
        """Advance each category's mark (never backwards)."""
        for category, epoch in marks.items():
            self.through[category] = max(self.through.get(category, epoch), epoch)
