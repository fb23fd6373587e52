"""The owner's in-memory windows (``CachedWindows``) read exactly what Redis holds: write-through
of newly applied judgments, lazy loading of buckets it has not seen, duplicates ignored, a reset
when ownership changes, old buckets evicted. The Redis side is a fake with the store's interface
(``apply_new`` / ``read_buckets``); tests/integration/test_window_store.py runs it on real Redis."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from evalloop.backtest import BucketWindowStore
from schemas.judgments import Judgment, judgment_id_for
from streams.window_store import CachedWindows

T0 = datetime(2024, 6, 1, tzinfo=UTC)
CATEGORIES = ("Furniture & Office", "Other")


class FakeRedisWindows(BucketWindowStore):
    """BucketWindowStore with the WindowStore methods CachedWindows uses; counts bucket reads."""

    bucket_reads: int = 0

    def apply_new(self, judgments: Sequence[Judgment]) -> list[Judgment]:
        new = [j for j in judgments if j.judgment_id not in self.seen]
        self.apply(new)
        return new

    def read_buckets(self, category: str, starts: Sequence[int]) -> dict[int, dict[str, float]]:
        self.bucket_reads += len(starts)
        return {start: dict(self.buckets.get((category, start), {})) for start in starts}


def _judgment(rng: random.Random, n: int) -> Judgment:
    grade = rng.choice([0, 2, 4])
    when = T0 + timedelta(seconds=rng.uniform(0, 6 * 3600))
    return Judgment(
        judgment_id=judgment_id_for(f"e{n}", "i", "p", "t"),
        event_id=f"e{n}",
        item_id="i",
        category=rng.choice(CATEGORIES),
        event_time=when,
        status="ok",
        grade=grade,
        display={0: "filter", 2: "related", 4: "show"}[grade],
        failure_modes=("off_department",) if grade == 0 else (),
        rationale="r",
        policy_version="p",
        teacher_version="t",
        inclusion_probability=rng.choice([0.5, 1.0]),
        judged_at=when,
    )


def test_cached_reads_equal_the_store_through_applies_duplicates_and_resets() -> None:
    rng = random.Random(7)
    judgments = [_judgment(rng, n) for n in range(600)]
    store = FakeRedisWindows(300)
    cached = CachedWindows(store, keep_s=3 * 3600)  # type: ignore[arg-type]
    for step, start in enumerate(range(0, 600, 50)):
        batch = judgments[start : start + 50] + judgments[max(0, start - 10) : start]  # redelivered tail
        assert cached.apply(batch) == 50
        end = (T0 + timedelta(minutes=30 * (step + 1))).timestamp()
        for category in CATEGORIES:
            for window in (1800, 3600, 3 * 3600):
                assert cached.read(category, window, end) == store.read(category, window, end)
        if step == 6:
            cached.reset()
    end = (T0 + timedelta(hours=6, minutes=10)).timestamp()
    first = [cached.read(category, 3 * 3600, end) for category in CATEGORIES]
    reads_before = store.bucket_reads
    again = [cached.read(category, 3600, end) for category in CATEGORIES]
    assert store.bucket_reads == reads_before, "warm buckets come from memory, not the store"
    assert again == [store.read(category, 3600, end) for category in CATEGORIES] and first


def test_buckets_older_than_the_longest_window_are_evicted() -> None:
    rng = random.Random(3)
    store = FakeRedisWindows(300)
    cached = CachedWindows(store, keep_s=3600)  # type: ignore[arg-type]
    cached.apply([_judgment(rng, n) for n in range(100)])
    cached.read("Other", 3600, (T0 + timedelta(hours=2)).timestamp())
    cached.read("Other", 3600, (T0 + timedelta(hours=6)).timestamp())
    kept = cached._buckets["Other"]
    oldest = (T0 + timedelta(hours=6)).timestamp() - 3600 - 300
    assert kept and min(kept) >= oldest
