"""streams.window_store against the real Redis (`make up`): idempotency, reads, TTL, CAS, speed."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from schemas.judgments import Judgment, judgment_id_for
from streams.alerting import AlertState
from streams.window_store import AlertStateStore, WindowStore
from streams.windows import WindowAggregate

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
END = int(T0.timestamp())
CATEGORIES = ("Kitchen & Dining", "Décor & Art")
MODES = ("wrong_product_type", "off_department", "attribute_mismatch")


@pytest.fixture
def store(redis_client: redis.Redis) -> Iterator[WindowStore]:
    """A WindowStore under a unique prefix, cleared afterwards (the shared Redis stays clean)."""
    window_store = WindowStore(redis_client, f"evalloop-test-{uuid.uuid4().hex[:8]}", ttl_seconds=3600)
    yield window_store
    window_store.clear()


def make_judgments(count: int, seed: int = 7) -> list[Judgment]:
    rng = random.Random(seed)
    out = []
    for k in range(count):
        grade = rng.choice([0, 1, 2, 3, 4])
        error = rng.random() < 0.05
        fields: dict[str, Any] = {
            "judgment_id": judgment_id_for(f"e{k}", "i", "p1", "t1"),
            "event_id": f"e{k}",
            "item_id": "i",
            "category": rng.choice(CATEGORIES),
            "event_time": T0 - timedelta(seconds=rng.uniform(0, 7200)),
            "status": "error" if error else "ok",
            "grade": None if error else grade,
            "display": None if error else ("show" if grade >= 3 else "related" if grade == 2 else "filter"),
            "failure_modes": () if error or grade > 1 else (rng.choice(MODES),),
            "error": "timeout" if error else None,
            "inclusion_probability": rng.choice([1.0, 0.5, 0.25]),
            "policy_version": "p1",
            "teacher_version": "t1",
            "judged_at": T0,
        }
        out.append(Judgment.model_validate(fields, strict=False))
    return out


def recompute(judgments: list[Judgment], category: str, window_s: int) -> WindowAggregate:
    aggregate = WindowAggregate(window_s, END)
    aggregate.extend(j for j in judgments if j.category == category)
    return aggregate


def test_apply_twice_counts_once(store: WindowStore) -> None:
    judgments = make_judgments(300)
    assert store.apply(judgments) == 300
    assert store.apply(judgments) == 0
    assert store.apply(judgments[:10] + judgments[:10]) == 0
    stats = store.read(CATEGORIES[0], 7200, END)
    expected = recompute(judgments, CATEGORIES[0], 7200).result()
    assert stats.samples == expected.samples and stats.errors == expected.errors


def test_duplicate_inside_one_batch_counts_once(store: WindowStore) -> None:
    [single] = make_judgments(1)
    assert store.apply([single, single, single]) == 1
    assert store.read(single.category, 7200, END).samples + store.read(single.category, 7200, END).errors == 1


@pytest.mark.parametrize("window_s", [300, 1800, 3600, 7200])
def test_read_equals_recomputation(store: WindowStore, window_s: int) -> None:
    judgments = make_judgments(1200)
    store.apply(judgments)
    for category in CATEGORIES:
        stats = store.read(category, window_s, END)
        expected = recompute(judgments, category, window_s).result()
        assert (stats.samples, stats.errors) == (expected.samples, expected.errors)
        assert stats.weighted_samples == pytest.approx(expected.weighted_samples)
        assert stats.counters == pytest.approx(expected.counters)
        for signal, estimate in expected.rates.items():
            assert tuple(stats.rates[signal]) == pytest.approx(tuple(estimate))


def test_ttl_set_and_categories(store: WindowStore, redis_client: redis.Redis) -> None:
    [judgment] = make_judgments(1)
    store.apply([judgment])
    bucket = store.bucket_key(judgment.category, int(judgment.event_time.timestamp()) // 300 * 300)
    assert 0 < redis_client.ttl(bucket) <= 3600
    assert 0 < redis_client.ttl(store.seen_key(judgment.judgment_id)) <= 3600
    assert store.categories() == {judgment.category}


def test_clear(store: WindowStore, redis_client: redis.Redis) -> None:
    store.apply(make_judgments(50))
    assert store.clear() > 0
    assert not list(redis_client.scan_iter(match=f"{store.prefix}:*"))
    assert store.apply(make_judgments(50)) == 50  # cleared seen-markers: a rebuild re-applies


def test_alert_state_check_and_set(redis_client: redis.Redis) -> None:
    states = AlertStateStore(redis_client, f"evalloop-test-{uuid.uuid4().hex[:8]}")
    try:
        initial = states.get("rule", "cat")
        assert initial == AlertState()
        firing = AlertState(state="firing", since=T0, started_at=T0, fired_at=T0, incident_id="abc")
        stored = states.put("rule", "cat", firing, expected_version=initial.version)
        assert stored is not None and stored.version == 1
        assert states.get("rule", "cat") == stored
        # A second worker that read version 0 loses the race: it must not emit.
        assert states.put("rule", "cat", firing, expected_version=0) is None
    finally:
        redis_client.delete(states.key("rule", "cat"))


def test_throughput(store: WindowStore) -> None:
    judgments = make_judgments(20_000, seed=11)
    started = time.perf_counter()
    for offset in range(0, len(judgments), 2000):
        store.apply(judgments[offset : offset + 2000])
    elapsed = time.perf_counter() - started
    started = time.perf_counter()
    store.read(CATEGORIES[0], 86400, END)
    read_ms = (time.perf_counter() - started) * 1000
    print(f"\nwindow store: {len(judgments) / elapsed:,.0f} judgments/s applied; 24h read {read_ms:.1f} ms")


def test_engine_windows_read_what_redis_holds(store: WindowStore) -> None:
    """The alert engine's in-memory windows over real Redis: every read (sliding boundary by
    boundary) equals the store's, duplicates are ignored, and warm reads touch no bucket in Redis."""
    from streams.engine import EngineWindows

    judgments = sorted(make_judgments(800, seed=11), key=lambda j: j.event_time)
    engine = EngineWindows(store, keep_s=7200)
    ends = [END - 7200 + 300 * k for k in range(1, 25)]
    for start, end in zip(range(0, 800, 100), ends[::3], strict=False):
        assert engine.apply(judgments[start : start + 100] + judgments[:5]) == 100  # the 5: redelivered
        for category in CATEGORIES:
            for window in (1800, 3600, 7200):
                stats, want = engine.read(category, window, end), store.read(category, window, end)
                assert (stats.samples, stats.errors) == (want.samples, want.errors)
                assert stats.counters == pytest.approx(want.counters)
    loaded = engine.buckets_loaded
    for category in CATEGORIES:
        engine.read(category, 7200, ends[21])
    assert engine.buckets_loaded == loaded
