"""Event-time watermark: how far the stream has certainly progressed, allowing for lateness.

Windows and alerts are evaluated at the watermark, never at wall time, so replaying a recorded
day at full speed produces the same windows and alerts as the live run did.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any


class Watermark:
    """The maximum event time seen, minus ``allowed_lateness_s``; it never moves backwards."""

    def __init__(self, allowed_lateness_s: float) -> None:
        if allowed_lateness_s < 0:
            raise ValueError("allowed_lateness_s must be >= 0")
        self.allowed_lateness = timedelta(seconds=allowed_lateness_s)
        self._max_event_time: datetime | None = None

    def observe(self, event_time: datetime) -> None:
        """Advance the maximum event time seen (an older time is ignored: monotone)."""
        if self._max_event_time is None or event_time > self._max_event_time:
            self._max_event_time = event_time

    @property
    def max_event_time(self) -> datetime | None:
        """The latest event time observed, or None before the first event."""
        return self._max_event_time

    @property
    def value(self) -> datetime | None:
        """Max event time − allowed lateness; None until an event has been observed."""
        if self._max_event_time is None:
            return None
        return self._max_event_time - self.allowed_lateness

    def is_late(self, event_time: datetime) -> bool:
        """True when ``event_time`` is strictly before the watermark (its windows are closed)."""
        watermark = self.value
        return watermark is not None and event_time < watermark


class PartitionedWatermark:
    """The minimum of per-partition watermarks, so one fast partition cannot run ahead.

    Partitions are consumed independently; with a single max-based watermark a partition drained
    early (a replay at full speed) would push the watermark past another partition's data, which
    would then expire as "late" and alerts would be evaluated only at the end. A partition stops
    holding the watermark back when it is *idle*: it has delivered nothing for ``idle_s`` wall
    seconds (or never did, ``idle_s`` after the first observation) AND ``caught_up(partition)``
    says it has nothing left to read (its consumer is at the end, or it is another worker's).
    Silence alone is not idleness: a partition whose backlog simply has not been fetched yet
    while another is drained is behind, not idle, and must not let the watermark run past it.
    """

    def __init__(
        self,
        allowed_lateness_s: float,
        partitions: int = 1,
        idle_s: float = 10.0,
        clock: Any = time.monotonic,
        caught_up: Callable[[int], bool] | None = None,
    ) -> None:
        self.allowed_lateness_s = allowed_lateness_s
        self.partitions = partitions
        self.idle_s = idle_s
        self._clock = clock
        self.caught_up: Callable[[int], bool] = caught_up or (lambda _partition: True)
        self._marks: dict[int, Watermark] = {}
        self._last_seen: dict[int, float] = {}
        self._started: float | None = None

    def observe(self, event_time: datetime, partition: int = 0) -> None:
        """Advance ``partition``'s watermark."""
        now = self._clock()
        self._started = self._started if self._started is not None else now
        self._marks.setdefault(partition, Watermark(self.allowed_lateness_s)).observe(event_time)
        self._last_seen[partition] = now

    def _idle(self, partition: int, now: float) -> bool:
        assert self._started is not None
        last = self._last_seen.get(partition, self._started)
        return now - last >= self.idle_s and self.caught_up(partition)

    @property
    def value(self) -> datetime | None:
        """Min over partitions still holding the watermark back; None while one is unknown."""
        if self._started is None:
            return None
        now = self._clock()
        values: list[datetime] = []
        for partition in set(range(self.partitions)) | set(self._marks):
            if self._idle(partition, now):
                continue  # idle and caught up, or another worker's: do not wait for it
            mark = self._marks.get(partition)
            if mark is None or mark.value is None:
                return None
            values.append(mark.value)
        if values:
            return min(values)
        known = [m.value for m in self._marks.values() if m.value is not None]
        return max(known) if known else None


class PairedWatermarks:
    """The aggregate stage's watermarks: one ``PartitionedWatermark`` over the source (samples)
    partitions for each judgments partition.

    All of a category's judgments land on one judgments partition, and each source partition's
    judgments arrive there in event-time order; across judgments partitions nothing is ordered
    (the consumer drains one partition ahead of another). So a category's rules may run up to
    the watermark of *its* judgments partition (``at``), never one advanced by judgments read
    from another partition. ``observe`` takes the pair as ``key(judgments, source)``; ``value``
    (the least over judgments partitions seen) is what the expiry check uses.
    """

    SOURCES = 1 << 16

    def __init__(
        self, allowed_lateness_s: float, sources: int, idle_s: float, clock: Any = time.monotonic
    ) -> None:
        self._args = (allowed_lateness_s, sources, idle_s, clock)
        self._by_partition: dict[int, PartitionedWatermark] = {}

    @classmethod
    def key(cls, judgments_partition: int, source_partition: int) -> int:
        """One int for the (judgments partition, source partition) pair."""
        return judgments_partition * cls.SOURCES + source_partition

    def observe(self, event_time: datetime, key: int = 0) -> None:
        """Advance the source partition's mark on its judgments partition."""
        partition, source = divmod(key, self.SOURCES)
        held = self._by_partition.get(partition)
        if held is None:
            held = self._by_partition[partition] = PartitionedWatermark(*self._args)
        held.observe(event_time, source)

    def at(self, judgments_partition: int) -> datetime | None:
        """How far a category on ``judgments_partition`` may be evaluated (None: not yet)."""
        held = self._by_partition.get(judgments_partition)
        return held.value if held is not None else None

    @property
    def value(self) -> datetime | None:
        """The least watermark over the judgments partitions seen (None while one is unknown)."""
        values = [held.value for held in self._by_partition.values()]
        if not values or any(value is None for value in values):
            return None
        return min(value for value in values if value is not None)
