"""What production topics carry, handled by the stages without a broker: codecs, tombstones and
empty values at every stage, records that make a stage raise, partitions drained at very
different speeds, quiet inputs (the idle close-out) and one evaluator per category."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from aiokafka import codec
from aiokafka.partitioner import DefaultPartitioner

from evalloop.backtest import BucketWindowStore, judge_all, load_events, replay_alerts, sample_requests
from schemas.alerts import Alert
from schemas.deadletter import SourcePosition
from schemas.judgments import Judgment
from schemas.policy import Policy, load_policy
from schemas.settings import KafkaSettings, Settings, TopicSettings, TopicSpec
from streams import retry
from streams.config import StreamSettings, faust_config
from streams.evaluation import (
    MemoryLoopState,
    category_partition,
    category_points,
    close_out_point,
    owned_categories,
)
from streams.pipeline import MemoryAlertStateStore, MemoryWindowStore, validate
from streams.replay import Degradation, parse_time
from streams.stages import (
    Components,
    Incoming,
    OutRecord,
    handle_event,
    handle_idle,
    handle_judgments,
    handle_sample,
)
from streams.watermark import PartitionedWatermark
from tests.support.policies import burn_rate_policy
from tests.support.stub_teacher import StubTeacher

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "data" / "wands" / "events.jsonl"


class Recording:
    """Outputs that keep what was sent, by topic name."""

    def __init__(self) -> None:
        self.sent: dict[str, list[OutRecord]] = {}

    async def send(self, topic: str, records: Sequence[OutRecord]) -> None:
        self.sent.setdefault(topic, []).extend(records)

    def values(self, topic: str) -> list[dict[str, Any]]:
        return [json.loads(r.value) for r in self.sent.get(topic, [])]


class NoSleep:
    """Replaces the back-off sleep so retries run at once; counts the pauses."""

    def __init__(self) -> None:
        self.pauses: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.pauses.append(seconds)


@pytest.fixture
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> NoSleep:
    sleeper = NoSleep()
    monkeypatch.setattr(retry.asyncio, "sleep", sleeper)
    return sleeper


class CountingLoopState(MemoryLoopState):
    """Counts the category-mark reads an evaluation round makes."""

    reads: int = 0

    def evaluated_through(self, categories: list[str]) -> dict[str, float | None]:
        self.reads += 1
        return super().evaluated_through(categories)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _components(policy: Policy, teacher: Any = None, partitions: int = 4, **shared: Any) -> Components:
    # One source (samples) partition, so the watermark moves with what is fed; ``partitions``
    # judgments partitions, which decide who owns a category.
    specs = {
        n: TopicSpec(name=f"t.{n}", partitions=1) for n in ("events", "samples", "alerts", "dead_letters")
    }
    specs["judgments"] = TopicSpec(name="t.judgments", partitions=partitions)
    return Components(
        settings=Settings().model_copy(update={"topics": TopicSettings(**specs)}),
        stream=StreamSettings(allowed_lateness_s=600, idle_close_s=5, record_attempts=3),
        policy=policy,
        teacher=teacher or StubTeacherAsync(policy),
        windows=shared.get("windows", MemoryWindowStore()),
        alert_states=shared.get("states", MemoryAlertStateStore()),
        loop_state=shared.get("loop_state", MemoryLoopState()),
        outputs=shared.get("outputs", Recording()),
        owned_partitions=shared.get("owned", lambda: None),
        clock=shared.get("clock", Clock()),
    )


class StubTeacherAsync:
    def __init__(self, policy: Policy) -> None:
        self.inner = StubTeacher(policy)

    async def judge(self, requests: Sequence[Any]) -> list[Judgment]:
        return self.inner.judge(requests)


# --------------------------------------------------------------------------- codecs and settings


@pytest.mark.parametrize("name", ["gzip", "snappy", "lz4", "zstd"])
def test_every_kafka_codec_is_available_to_the_worker(name: str) -> None:
    assert getattr(codec, f"has_{name}")(), (
        f"aiokafka cannot decode {name}: install cramjam (requirements.lock)"
    )
    payload = b'{"event_id":"e1"}' * 50
    assert getattr(codec, f"{name}_decode")(getattr(codec, f"{name}_encode")(payload)) == payload


@pytest.mark.parametrize(("setting", "faust_value"), [("none", None), ("lz4", "lz4"), ("zstd", "zstd")])
def test_own_producers_compress_as_configured(setting: str, faust_value: str | None) -> None:
    settings = Settings().model_copy(update={"kafka": KafkaSettings(compression_type=setting)})  # type: ignore[arg-type]
    assert settings.kafka.producer_config()["compression.type"] == setting
    assert "compression.type" not in settings.kafka.confluent_config()  # consumers and admin: no warning
    assert faust_config(settings, StreamSettings())["producer_compression_type"] == faust_value


# --------------------------------------------------------------------------- tombstones and empty values


async def test_tombstones_and_empty_values_are_dead_lettered_at_every_stage(tmp_path: Path) -> None:
    policy = load_policy(burn_rate_policy(tmp_path))
    c = _components(policy)
    out: Recording = c.outputs  # type: ignore[assignment]
    source = SourcePosition(topic="t.events", partition=0, offset=7)
    assert await handle_event(c, None, source) == "dead_letter:tombstone"
    assert await handle_event(c, b"", source) == "dead_letter:empty"
    assert await handle_sample(c, None, source) == []
    assert await handle_sample(c, b"  ", source) == []
    assert await handle_judgments(c, [None, b""], [0, 0]) == []
    reasons = [letter["reason"] for letter in out.values("t.dead_letters")]
    assert reasons == ["tombstone", "empty", "tombstone", "empty", "tombstone", "empty"]
    assert out.values("t.dead_letters")[0]["offset"] == 7


# --------------------------------------------------------------------------- records that make a stage raise


async def test_a_record_that_keeps_failing_is_dead_lettered_and_the_stage_moves_on(no_sleep: NoSleep) -> None:
    c = _components(load_policy(ROOT / "policies" / "product-search.yaml"))
    attempts = 0

    async def poison() -> str:
        nonlocal attempts
        attempts += 1
        raise KeyError("a bug this record hits")

    give_up = retry.dead_lettering(
        c, "validate", b"raw bytes", SourcePosition(topic="t", partition=1, offset=3), "x"
    )
    assert await retry.until_done(c, "validate", poison, give_up) == "x"
    assert attempts == c.stream.record_attempts == 3
    (letter,) = c.outputs.values("t.dead_letters")  # type: ignore[union-attr]
    assert letter["reason"] == "processing_error" and "KeyError" in letter["detail"]
    assert letter["original_b64"] and letter["offset"] == 3
    assert c.metrics.snapshot()["processing_errors"] == 1


@pytest.mark.parametrize(
    "error",
    [redis.ConnectionError("redis away"), ConnectionRefusedError("kafka away"), TimeoutError("slow")],
)
async def test_a_dependency_that_is_away_is_retried_until_it_is_back(
    no_sleep: NoSleep, error: Exception
) -> None:
    c = _components(load_policy(ROOT / "policies" / "product-search.yaml"))
    attempts = 0

    async def flaky() -> str:
        nonlocal attempts
        attempts += 1
        if attempts <= 6:  # twice the record budget: a record error would have been given up
            raise error
        return "done"

    async def never(_: BaseException) -> str:
        raise AssertionError("a dependency outage must not dead-letter the record")

    assert await retry.until_done(c, "aggregate", flaky, never) == "done"
    assert attempts == 7 and len(no_sleep.pauses) == 6


class PoisonWindows(MemoryWindowStore):
    """Raises (a bug) whenever a batch holds one particular judgment."""

    poison: str = ""

    def apply(self, judgments: Sequence[Judgment]) -> int:
        if any(j.judgment_id == self.poison for j in judgments):
            raise TypeError("cannot sum this judgment")
        return super().apply(judgments)


async def test_a_poison_judgment_is_isolated_from_its_batch(tmp_path: Path, no_sleep: NoSleep) -> None:
    from streams.app import aggregate_batch

    policy = load_policy(burn_rate_policy(tmp_path))
    judgments = _stream_judgments(policy, tmp_path, limit=5)
    windows = PoisonWindows()
    windows.poison = judgments[2].judgment_id
    c = _components(policy, windows=windows)
    batch = [
        Incoming(j.model_dump_json().encode(), SourcePosition(topic="t.judgments", partition=0, offset=i), 0)
        for i, j in enumerate(judgments)
    ]
    await aggregate_batch(c, batch)
    assert set(windows.judgments) == {j.judgment_id for j in judgments} - {windows.poison}
    (letter,) = c.outputs.values("t.dead_letters")  # type: ignore[union-attr]
    assert letter["reason"] == "processing_error" and letter["offset"] == 2


# --------------------------------------------------------------------------- partitions drained unevenly


def _at(hours: float) -> datetime:
    return datetime(2024, 6, 1, tzinfo=UTC) + timedelta(hours=hours)


@pytest.mark.parametrize(("behind_caught_up", "late"), [(False, False), (True, True)])
def test_a_silent_partition_with_a_backlog_is_behind_not_idle(behind_caught_up: bool, late: bool) -> None:
    """Max-speed replay: partition 0 is drained for 12 wall seconds (00:05 → 09:00 event time)
    before partition 1's backlog, which starts at 00:05, is fetched at all. Only a partition with
    nothing left to read may stop holding the watermark back; the old rule (silence alone, the
    second row) made 00:05 on partition 1 "late", which is the bug the bench saw."""
    clock = Clock()
    mark = PartitionedWatermark(
        600, partitions=2, idle_s=10, clock=clock, caught_up=lambda p: behind_caught_up
    )
    for step in range(120):
        clock.now += 0.1
        mark.observe(_at(0.08 + step * 0.075), partition=0)
    raw = json.loads(EVENTS.open("rb").readline())
    raw["event_time"] = "2024-06-01T00:05:00Z"
    outcome = validate(json.dumps(raw).encode(), watermark=mark, retention_s=3 * 3600, now=_at(24))
    assert (getattr(outcome, "reason", None) == "late") is late


# --------------------------------------------------------------------------- quiet inputs and ownership


def _stream_judgments(policy: Policy, directory: Path, limit: int = 63) -> list[Judgment]:
    """The stub teacher's judgments of the first ``limit`` bundled events, one category degraded."""
    path = directory / "stream.jsonl"
    path.write_bytes(b"".join(list(EVENTS.open("rb"))[:limit]))
    start, end = parse_time("2024-06-01T02:00:00Z"), parse_time("2024-06-01T05:00:00Z")
    events, _ = load_events(path, Degradation("Furniture & Office", start, end, 0.8))
    requests, _ = sample_requests(policy, events)
    return judge_all(StubTeacher(policy), requests)


def _timeline(alerts: Sequence[Alert]) -> list[tuple[str, str, str]]:
    return sorted((a.updated_at.isoformat(), a.state, a.category) for a in alerts)


async def _feed(c: Components, judgments: Sequence[Judgment], batch: int = 40) -> list[Alert]:
    alerts: list[Alert] = []
    ordered = sorted(judgments, key=lambda j: j.event_time)
    for start in range(0, len(ordered), batch):
        chunk = ordered[start : start + batch]
        alerts += await handle_judgments(c, [j.model_dump_json().encode() for j in chunk], [0] * len(chunk))
    return alerts


async def test_the_idle_close_out_makes_live_equal_the_backtest(tmp_path: Path) -> None:
    policy = load_policy(burn_rate_policy(tmp_path))
    judgments = _stream_judgments(policy, tmp_path)
    expected = _timeline(replay_alerts(policy, judgments, BucketWindowStore()))
    assert [state for _, state, _ in expected] == ["firing", "resolved"]
    clock, loop_state = Clock(), CountingLoopState()
    c = _components(policy, partitions=1, clock=clock, loop_state=loop_state)
    live = await _feed(c, judgments)
    assert _timeline(live) == expected[:1], "with lateness 600 s the 06:40 resolve is not reached yet"
    clock.now += 4.9
    assert await handle_idle(c) == []  # not idle for idle_close_s yet
    clock.now += 0.2
    live += await handle_idle(c)
    assert _timeline(live) == expected
    latest = max(j.event_time for j in judgments).timestamp()
    assert c.loop_state.get_watermark() == close_out_point(latest, 300)
    reads = loop_state.reads
    for _ in range(3):  # the timer ticks on: a closed-out input costs no evaluation
        clock.now += 1.0
        assert await handle_idle(c) == []
    assert loop_state.reads == reads and c.metrics.value("idle_advances") == 1
    await _feed(c, judgments[-3:])  # a redelivery: the next quiet spell closes out again
    clock.now += 6.0
    assert await handle_idle(c) == [] and c.metrics.value("idle_advances") == 2


async def test_each_category_has_one_evaluator_and_the_union_equals_one_worker(tmp_path: Path) -> None:
    policy = load_policy(burn_rate_policy(tmp_path))
    judgments = _stream_judgments(policy, tmp_path, limit=150)
    single = _components(policy, partitions=4)
    alone = await _feed(single, judgments)
    shared = {
        "windows": MemoryWindowStore(),
        "states": MemoryAlertStateStore(),
        "loop_state": MemoryLoopState(),
        "outputs": Recording(),
    }
    owners = [frozenset({0, 1}), frozenset({2, 3})]
    workers = [_components(policy, partitions=4, owned=lambda o=o: o, **shared) for o in owners]
    per_worker = [await _feed(worker, judgments) for worker in workers]  # each sees every judgment
    assert alone and _timeline(per_worker[0] + per_worker[1]) == _timeline(alone)
    for owned, alerts in zip(owners, per_worker, strict=True):
        assert all(category_partition(alert.category, 4) in owned for alert in alerts)
    evaluated = [set(owned_categories(shared["windows"].categories(), 4, o)) for o in owners]
    assert evaluated[0].isdisjoint(evaluated[1]) and evaluated[0] | evaluated[1] == set(
        shared["windows"].categories()
    )


@pytest.mark.parametrize("category", ["Furniture & Office", "Décor & Art", "Other", "Bed, Bath & Kids"])
@pytest.mark.parametrize("partitions", [1, 4, 6])
def test_category_partition_is_where_the_producer_puts_the_key(category: str, partitions: int) -> None:
    expected = DefaultPartitioner()(category.encode(), list(range(partitions)), list(range(partitions)))
    assert category_partition(category, partitions) == expected


@pytest.mark.parametrize(
    ("through", "first_seen", "target", "expected"),
    [
        (None, None, 1900.0, []),
        (None, 950.0, 1900.0, [1200.0, 1500.0, 1800.0]),
        (1500.0, 950.0, 1900.0, [1800.0]),
        (1800.0, 950.0, 1850.0, []),
        (1800.0, None, 2400.0, [2100.0, 2400.0]),
    ],
)
def test_category_points(
    through: float | None, first_seen: float | None, target: float, expected: list[float]
) -> None:
    assert category_points(through, first_seen, target, 300) == expected


def test_close_out_point_is_the_end_of_the_bucket_after_the_latest() -> None:
    assert close_out_point(1000.0, 300) == 1500.0
    assert close_out_point(1200.0, 300) == 1800.0


def test_status_says_what_it_is_as_of_and_when_a_firing_rule_has_no_data() -> None:
    from streams.status import render_table

    share = {"share": 0.5, "lower": 0.1, "upper": 0.9}
    row = {"judged": 0, "errors": 0, "weighted": 0.0, "shown": share, "related": share, "filtered": share}
    report = {
        "as_of": "2024-06-01T06:45:00+00:00",
        "latest_event_time": "2024-06-01T06:38:01+00:00",
        "categories": {
            "Furniture & Office": {
                **row,
                "top_failure_modes": [],
                "alerts": {"filtered-share-burn": "firing"},
            },
            "Other": {**row, "judged": 12, "top_failure_modes": [], "alerts": {"filtered-share-burn": "ok"}},
        },
    }
    lines = render_table(report).splitlines()
    assert lines[0].startswith("as of 2024-06-01T06:45:00+00:00") and "06:38:01" in lines[0]
    assert lines[1] == "calibration: none"
    assert lines[4].endswith("filtered-share-burn (no data)")
    assert lines[5].endswith("ok")
    assert (
        render_table({"as_of": None, "latest_event_time": None, "categories": {}})
        == "no judgments aggregated yet"
    )


async def test_late_and_bad_judgments_keep_their_original_bytes_and_position(tmp_path: Path) -> None:
    policy = load_policy(burn_rate_policy(tmp_path))
    judgments = _stream_judgments(policy, tmp_path, limit=5)
    c = _components(policy, partitions=1)
    out: Recording = c.outputs  # type: ignore[assignment]
    recent = judgments[-1]
    await handle_judgments(c, [recent.model_dump_json().encode()], [0])
    old = judgments[0].model_copy(update={"event_time": recent.event_time - timedelta(days=3)})
    old_raw = b" " + old.model_dump_json().encode()  # bytes as they were on the topic, not re-serialised
    here = SourcePosition(topic="t.judgments", partition=0, offset=41)
    there = SourcePosition(topic="t.judgments", partition=0, offset=42)
    await handle_judgments(c, [old_raw, b'{"judgment_id": 1}'], [0, 0], [here, there])
    bad, late = out.values("t.dead_letters")  # unparsable first, then what the windows refused
    assert late["reason"] == "late" and late["offset"] == 41 and late["event_id"] == old.event_id
    assert base64.b64decode(late["original_b64"]) == old_raw
    assert bad["reason"] == "schema" and bad["offset"] == 42
