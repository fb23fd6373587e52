"""The alert engine (``streams.engine``): sliding window sums equal a plain recomputation through
out-of-order applies, redeliveries, resets and evictions; a boundary reads nothing from the
durable store once loaded; alert states are read once; and the backtest driven through the
engine gives exactly the alerts of plain per-boundary evaluation over the recomputed windows.
tests/integration/test_window_store.py runs the same windows on real Redis."""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from evalloop.backtest import BucketWindowStore, judge_all, load_events, replay_alerts, sample_requests
from judges.fake import NoopTeacher
from reliability.harness import EVENTS, write_test_policy
from schemas.alerts import Alert
from schemas.judgments import Judgment, judgment_id_for
from schemas.policy import Policy, load_policy
from streams import pipeline
from streams.alerting import AlertState
from streams.engine import CachedStates, EngineWindows, SlidingSum, aligned_end, drop_empty
from streams.evaluation import close_out_point
from streams.windows import WindowStats, bucket_start

T0 = datetime(2024, 6, 1, tzinfo=UTC)
CATEGORIES = ("Furniture & Office", "Other")
WINDOWS = (300, 1800, 3600, 3 * 3600)


class CountingStore(BucketWindowStore):
    """The in-memory durable store, counting how many buckets the engine reads from it."""

    bucket_reads: int = 0

    def read_buckets(self, category: str, starts: Sequence[int]) -> dict[int, dict[str, float]]:
        self.bucket_reads += len(starts)
        return super().read_buckets(category, starts)


def _judgment(rng: random.Random, n: int, hours: float = 6.0) -> Judgment:
    grade = rng.choice([0, 2, 4])
    when = T0 + timedelta(seconds=rng.uniform(0, hours * 3600))
    return Judgment(
        judgment_id=judgment_id_for(f"e{n}", "i", "p", "t"),
        event_id=f"e{n}",
        item_id="i",
        category=rng.choice(CATEGORIES),
        event_time=when,
        status="ok" if n % 17 else "error",
        grade=grade if n % 17 else None,
        display={0: "filter", 2: "related", 4: "show"}[grade] if n % 17 else None,
        failure_modes=("off_department",) if grade == 0 and n % 17 else (),
        rationale="r",
        error=None if n % 17 else "teacher failed",
        policy_version="p",
        teacher_version="t",
        inclusion_probability=rng.choice([0.3, 0.5, 1.0]),
        judged_at=when,
    )


def assert_same(got: WindowStats, want: WindowStats) -> None:
    """Equal windows: same counts and fields; weights equal up to float rounding."""
    assert (got.window_s, got.samples, got.errors, got.end_epoch) == (
        want.window_s,
        want.samples,
        want.errors,
        want.end_epoch,
    )
    assert set(got.counters) == set(want.counters)
    for name, value in want.counters.items():
        assert got.counters[name] == pytest.approx(value, rel=1e-9, abs=1e-9), name


class Latest:
    """The horizon: the latest event time applied so far (``LoopStateLike.latest_event_time``)."""

    def __init__(self) -> None:
        self.epoch: float | None = None

    def note(self, judgments: Sequence[Judgment]) -> None:
        for judgment in judgments:
            self.epoch = max(self.epoch or 0.0, judgment.event_time.timestamp())

    def __call__(self) -> float | None:
        return self.epoch


@pytest.mark.parametrize("with_horizon", [False, True], ids=["prefetch", "horizon"])
@pytest.mark.parametrize(
    ("case", "delay_s", "reset_at"),
    [
        ("in order", 0.0, None),
        ("late judgments land inside the sums' spans", 2 * 3600.0, None),
        ("late judgments and a reset midway (ownership moved)", 1800.0, 30),
    ],
)
def test_sliding_windows_equal_a_recomputation(
    case: str, delay_s: float, reset_at: int | None, with_horizon: bool
) -> None:
    rng = random.Random(7)
    judgments = sorted((_judgment(rng, n) for n in range(1500)), key=lambda j: j.event_time)
    # Every 5th judgment arrives delay_s after its event time: by then the sums have slid past
    # its bucket's boundary, so it must be added to the spans that already hold its bucket.
    late = {j.judgment_id for j in judgments[::5]} if delay_s else set()
    arrival = {
        j.judgment_id: j.event_time.timestamp() + (delay_s if j.judgment_id in late else 0.0)
        for j in judgments
    }
    store, latest = CountingStore(300), Latest()
    engine = EngineWindows(store, keep_s=3 * 3600, horizon=latest if with_horizon else None)
    first = int(T0.timestamp()) + 300
    previous = 0.0
    for step, boundary in enumerate(range(first, first + 9 * 3600, 300)):
        batch = [j for j in judgments if previous <= arrival[j.judgment_id] < boundary]
        assert engine.apply(batch + batch[:3]) == len(batch), "a redelivery counts once"
        latest.note(batch)
        previous = boundary
        if step == reset_at:
            engine.reset()
        for category in CATEGORIES:
            for window in WINDOWS:
                assert_same(engine.read(category, window, boundary), store.read(category, window, boundary))


def test_with_a_horizon_boundaries_read_nothing_after_the_first_load() -> None:
    rng = random.Random(5)
    judgments = sorted((_judgment(rng, n, hours=8) for n in range(800)), key=lambda j: j.event_time)
    store, latest = CountingStore(300), Latest()
    engine = EngineWindows(store, keep_s=3 * 3600, horizon=latest)
    times = [j.event_time.timestamp() for j in judgments]
    applied, reads_after_first = 0, []
    for boundary in range(int(T0.timestamp()) + 300, int(T0.timestamp()) + 8 * 3600, 300):
        upto = bisect.bisect_left(times, boundary + 600)  # judgments run 10 minutes ahead
        engine.apply(judgments[applied:upto])
        latest.note(judgments[applied:upto])
        applied = upto
        for category in CATEGORIES:
            for window in WINDOWS:
                assert_same(engine.read(category, window, boundary), store.read(category, window, boundary))
        reads_after_first.append(store.bucket_reads)
    assert reads_after_first[0] > 0
    assert reads_after_first[-1] == reads_after_first[0], "no bucket read after the first boundary"


def test_a_boundary_costs_no_store_read_once_loaded() -> None:
    rng = random.Random(3)
    store = CountingStore(300)
    engine = EngineWindows(store, keep_s=3 * 3600)
    engine.apply([_judgment(rng, n) for n in range(400)])
    start = int(T0.timestamp()) + 3 * 3600
    engine.read("Other", 3 * 3600, start)
    first_load = store.bucket_reads
    assert first_load >= 36, "the first read loads the whole span"
    boundaries = range(start + 300, start + 3 * 3600, 300)
    for boundary in boundaries:
        engine.apply([_judgment(rng, 1000 + boundary % 977)])
        for window in WINDOWS:
            engine.read("Other", window, boundary)
    loads_per_boundary = (store.bucket_reads - first_load) / len(boundaries)
    assert loads_per_boundary <= 1.0, "later boundaries load only buckets ahead, a batch at a time"


def test_buckets_older_than_the_longest_window_are_evicted() -> None:
    rng = random.Random(3)
    store = CountingStore(300)
    engine = EngineWindows(store, keep_s=3600)
    engine.apply([_judgment(rng, n) for n in range(100)])
    engine.read("Other", 3600, (T0 + timedelta(hours=2)).timestamp())
    engine.read("Other", 3600, (T0 + timedelta(hours=6)).timestamp())
    kept = engine._by_category["Other"].buckets
    oldest = (T0 + timedelta(hours=6)).timestamp() - 3600 - 300
    assert kept and min(kept) >= oldest


def test_an_emptied_window_has_no_leftover_fields() -> None:
    # Fractional weights added then subtracted leave ±1e-17 behind; the slid window must be {}.
    total = SlidingSum(600, 300)
    buckets = {0: {"n": 3.0, "w": 0.1 + 0.2 + 0.7, "w2": 0.3, "display:filter": 1.0, "display_w:filter": 0.1}}
    total.move_to(300, buckets)
    assert total.counters["n"] == 3.0
    total.move_to(900, buckets)
    assert total.counters == {}
    leftovers = {"n": 1e-17, "w": 1e-17, "fm:x": 0.0, "fm_w:x": -1e-17, "grade:4": 2.0, "grade_w:4": 2.0}
    drop_empty(leftovers)
    assert leftovers == {"grade:4": 2.0, "grade_w:4": 2.0}


@pytest.mark.parametrize(
    ("end", "expected"),
    [(600.0, 600), (600.5, 900), (899.0, 900), (901.0, 1200)],
)
def test_aligned_end_holds_the_same_buckets(end: float, expected: int) -> None:
    assert aligned_end(end, 300) == expected
    starts = [b for b in range(0, 3000, 300) if end - 600 <= b < end]
    assert starts == [b for b in range(0, 3000, 300) if expected - 600 <= b < expected]


def test_cached_states_read_once_and_forget_a_lost_race() -> None:
    store = pipeline.MemoryAlertStateStore()
    states = CachedStates(store)
    first = states.get("r", "c")
    assert states.get("r", "c") is first and states.reads == 1
    stored = states.put("r", "c", AlertState(state="pending"), first.version)
    assert stored is not None and states.get("r", "c") == stored and states.reads == 1
    store.states[("r", "c")] = AlertState(state="firing", version=9)  # another worker won
    assert states.put("r", "c", AlertState(state="ok"), stored.version) is None
    assert states.get("r", "c").state == "firing" and states.reads == 2


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Policy:
    return load_policy(write_test_policy(tmp_path_factory.mktemp("policy")))


def _plain_replay(policy: Policy, judgments: list[Judgment]) -> list[Alert]:
    """The reference: recompute every window from its buckets at each boundary (no engine)."""
    ordered = sorted(judgments, key=lambda j: j.event_time)
    times = [j.event_time.timestamp() for j in ordered]
    store, states = BucketWindowStore(300), pipeline.MemoryAlertStateStore()
    examples = pipeline.RecentExamples()
    alerts: list[Alert] = []
    applied = 0
    for boundary in range(bucket_start(times[0], 300) + 300, int(close_out_point(times[-1], 300)) + 1, 300):
        upto = bisect.bisect_left(times, boundary)
        store.apply(ordered[applied:upto])
        examples.add(ordered[applied:upto])
        applied = upto
        at = pipeline.utc_from_epoch(boundary)
        for category in store.categories():
            alerts += pipeline.evaluate_alerts(category, policy, store, states, at, examples)
    return alerts


def test_backtest_through_the_engine_equals_plain_evaluation(policy: Policy) -> None:
    events, _ = load_events(EVENTS, None)
    requests, _ = sample_requests(policy, events)
    judgments = judge_all(NoopTeacher(policy), requests)
    expected = _plain_replay(policy, judgments)
    got = replay_alerts(policy, judgments, BucketWindowStore(300))
    assert any(a.state == "firing" for a in expected), "the test policy should fire on the noop teacher"
    timeline = [(a.alert_id, a.state, a.updated_at, a.category) for a in got]
    assert timeline == [(a.alert_id, a.state, a.updated_at, a.category) for a in expected]
    for mine, theirs in zip(got, expected, strict=True):
        assert [w.samples for w in mine.windows] == [w.samples for w in theirs.windows]
        assert [w.rate for w in mine.windows] == pytest.approx([w.rate for w in theirs.windows])
