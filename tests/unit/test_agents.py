"""The three Faust agents under ``agent.test_context()`` with fakes: no Kafka, Redis or Ray."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import faust
import pytest

from schemas.events import Sample, parse_event
from schemas.judgments import Judgment, judgment_id_for
from schemas.policy import Policy, load_policy
from streams.app import create_app
from streams.config import StreamSettings
from streams.pipeline import MemoryAlertStateStore, MemoryWindowStore, TeacherRequest, to_requests
from streams.stages import Components, OutRecord
from streams.teacher_client import error_judgment_for
from tests.support.topics import topic_settings

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "data" / "wands" / "events.jsonl"


class RecordingOutputs:
    """Outputs that keep what was sent, by topic name."""

    def __init__(self) -> None:
        self.sent: dict[str, list[tuple[bytes | None, bytes]]] = {}
        self.full: dict[str, list[OutRecord]] = {}

    async def send(self, topic: str, records: Sequence[OutRecord]) -> None:
        self.sent.setdefault(topic, []).extend((r.key, r.value) for r in records)
        self.full.setdefault(topic, []).extend(records)


class FakeTeacher:
    """Grades every item 0 (filtered) unless ``grade`` says otherwise; ``fail`` → error judgments."""

    def __init__(self, policy: Policy, grade: int = 0, fail: bool = False) -> None:
        self.policy, self.grade, self.fail = policy, grade, fail
        self.calls = 0

    async def judge(self, requests: Sequence[TeacherRequest]) -> list[Judgment]:
        self.calls += 1
        if self.fail:
            return [error_judgment_for(r, self.policy.version, "down") for r in requests]
        return [self._ok(r) for r in requests]

    def _ok(self, r: TeacherRequest) -> Judgment:
        return Judgment(
            judgment_id=judgment_id_for(r.event_id, r.item.item_id, self.policy.version, "fake"),
            event_id=r.event_id,
            item_id=r.item.item_id,
            category=r.category,
            event_time=r.event_time,
            query=r.query,
            item_title=r.item.title,
            status="ok",
            grade=self.grade,
            display=self.policy.display_for(self.grade),
            failure_modes=("wrong_product_type",) if self.grade <= 1 else (),
            rationale="fake",
            policy_version=self.policy.version,
            teacher_version="fake",
            inclusion_probability=r.inclusion_probability,
            judged_at=r.event_time,
        )


@pytest.fixture
def policy() -> Policy:
    return load_policy(ROOT / "policies" / "product-search.yaml")


@pytest.fixture
def raw_events() -> list[bytes]:
    with EVENTS.open("rb") as handle:
        return [next(handle).strip() for _ in range(40)]


def _loop(policy: Policy, teacher: Any, name: str) -> tuple[Any, RecordingOutputs, Components]:
    outputs = RecordingOutputs()
    # One partition per topic: test_context delivers everything on partition 0.
    components = Components(
        settings=topic_settings(),
        # One judge actor: under test_context every actor's take_events buffer sees each put
        # (against Kafka the actors share one queue; test_production_kafka checks nothing doubles).
        stream=StreamSettings(judge_concurrency=1, ingest_within_s=0.01, judge_within_s=0.01),
        policy=policy,
        teacher=teacher,
        windows=MemoryWindowStore(),
        alert_states=MemoryAlertStateStore(),
        outputs=outputs,
    )
    app = faust.App(f"test-{name}", store="memory://", autodiscover=False)
    return create_app(components, faust_app=app), outputs, components


async def test_validate_agent_dead_letters_bad_and_samples_good(
    policy: Policy, raw_events: list[bytes]
) -> None:
    loop, outputs, components = _loop(policy, FakeTeacher(policy), "validate")
    names = components.topic_names
    async with loop.validate_agent.test_context() as agent:
        for raw in raw_events:
            await agent.put(raw)
        await agent.put(b"{not json")
        await agent.put(b"\xff\xfe")
    letters = [json.loads(v) for _, v in outputs.sent[names["dead_letters"]]]
    assert [letter["reason"] for letter in letters] == ["malformed_json", "invalid_utf8"]
    samples = [Sample.model_validate_json(v) for _, v in outputs.sent[names["samples"]]]
    counts = components.metrics.snapshot()
    assert counts["events_seen"] == 42 and counts["events_invalid"] == 2
    assert counts["sampled"] == len(samples) > 0
    assert counts["sampled"] + counts["not_sampled"] == 40
    for key, value in outputs.sent[names["samples"]]:
        assert key == Sample.model_validate_json(value).event.event_id.encode()


async def test_judge_agent_publishes_one_judgment_per_item_keyed_by_category(
    policy: Policy, raw_events: list[bytes]
) -> None:
    loop, outputs, components = _loop(policy, FakeTeacher(policy, grade=4), "judge")
    event = parse_event(raw_events[0])
    chosen = Sample(event=event, inclusion_probability=0.5, policy_version=policy.version)
    async with loop.judge_agent.test_context() as agent:
        await agent.put(chosen.model_dump_json().encode())
        await agent.put(b"not a sample")
    judged = outputs.sent[components.topic_names["judgments"]]
    assert len(judged) == min(len(event.items), policy.sampling.max_items_per_event)
    assert {key for key, _ in judged} == {event.category.encode()}
    assert components.metrics.snapshot()["judged_ok"] == len(judged)
    assert len(outputs.sent[components.topic_names["dead_letters"]]) == 1


async def test_judge_agent_counts_teacher_errors_apart(policy: Policy, raw_events: list[bytes]) -> None:
    loop, outputs, components = _loop(policy, FakeTeacher(policy, fail=True), "judge-errors")
    chosen = Sample(
        event=parse_event(raw_events[1]), inclusion_probability=1.0, policy_version=policy.version
    )
    async with loop.judge_agent.test_context() as agent:
        await agent.put(chosen.model_dump_json().encode())
    judged = [Judgment.model_validate_json(v) for _, v in outputs.sent[components.topic_names["judgments"]]]
    assert judged and all(j.status == "error" for j in judged)
    assert components.metrics.snapshot()["judged_error"] == len(judged)


async def test_aggregate_agent_is_idempotent_and_fires_an_alert(
    policy: Policy, raw_events: list[bytes]
) -> None:
    # A slice of 40 events is thin per category: lower min_samples so the rules can decide.
    policy = policy.model_copy(
        update={"alerts": [r.model_copy(update={"min_samples": 5}) for r in policy.alerts]}
    )
    teacher = FakeTeacher(policy, grade=0)
    loop, outputs, components = _loop(policy, teacher, "aggregate")
    judgments: list[Judgment] = []
    for raw in raw_events:
        event = parse_event(raw)
        chosen = Sample(event=event, inclusion_probability=1.0, policy_version=policy.version)
        judgments += await teacher.judge(to_requests(chosen, 10))
    async with loop.aggregate_agent.test_context() as agent:
        for judgment in judgments + judgments[:5]:  # the tail is a redelivery
            await agent.put(judgment.model_dump_json().encode(), wait=False)
        await agent.put(judgments[0].model_dump_json().encode())
    counts = components.metrics.snapshot()
    assert counts["windows_applied"] == len(judgments)
    assert counts["duplicates_ignored"] == 6
    alerts = [json.loads(v) for _, v in outputs.sent.get(components.topic_names["alerts"], [])]
    assert alerts, "all-filtered judgments should fire the filtered-share rule"
    assert {a["state"] for a in alerts} == {"firing"}
    assert {a["rule"] for a in alerts} >= {"filtered-share-burn"}
    assert all(a["examples"] for a in alerts if a["rule"] == "filtered-share-burn")
    assert len({a["dedup_key"] for a in alerts}) == len(alerts)


# --------------------------------------------------------------------------- partition-aware watermark


def _components(policy: Policy, teacher: Any, partitions: int) -> tuple[Components, RecordingOutputs]:
    outputs = RecordingOutputs()
    components = Components(
        settings=topic_settings("p", partitions),
        stream=StreamSettings(allowed_lateness_s=600),
        policy=policy,
        teacher=teacher,
        windows=MemoryWindowStore(),
        alert_states=MemoryAlertStateStore(),
        outputs=outputs,
    )
    return components, outputs


async def test_samples_keep_their_event_partition_and_judgments_name_it(
    policy: Policy, raw_events: list[bytes]
) -> None:
    from schemas.deadletter import SourcePosition
    from streams.stages import SOURCE_PARTITION_HEADER, handle_event, handle_sample

    components, outputs = _components(policy, FakeTeacher(policy, grade=4), partitions=4)
    names = components.topic_names
    for offset, raw in enumerate(raw_events[:20]):
        await handle_event(components, raw, SourcePosition(topic="p.events", partition=3, offset=offset))
    samples = outputs.full[names["samples"]]
    assert samples and {record.partition for record in samples} == {3}
    await handle_sample(
        components, samples[0].value, SourcePosition(topic="p.samples", partition=3, offset=0)
    )
    judged = outputs.full[names["judgments"]]
    assert judged and all(r.headers == ((SOURCE_PARTITION_HEADER, b"3"),) for r in judged)


class _Message:
    def __init__(self, partition: int, headers: Any) -> None:
        self.partition, self.headers = partition, headers


class _Event:
    def __init__(self, partition: int, headers: Any) -> None:
        self.message = _Message(partition, headers)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([("evalloop-source-partition", b"2")], 2),
        ({"evalloop-source-partition": b"1"}, 1),
        ([("other", b"9")], 5),
        (None, 5),
        ([("evalloop-source-partition", b"not a number")], 5),
    ],
)
def test_source_partition_reads_the_header(headers: Any, expected: int) -> None:
    from streams.app import source_partition

    assert source_partition(_Event(5, headers)) == expected


async def test_a_slow_source_partition_holds_the_watermark_and_loses_nothing(
    policy: Policy, raw_events: list[bytes]
) -> None:
    """Source partition 0 is hours ahead of partition 1 (max-speed replay): partition 1's older
    judgments must still count, and rules must not be evaluated past partition 1's progress."""
    from streams.stages import handle_judgments

    components, outputs = _components(policy, FakeTeacher(policy, grade=0), partitions=2)
    teacher = FakeTeacher(policy, grade=0)
    early = [parse_event(raw) for raw in raw_events[:5]]
    late = [parse_event(raw) for raw in raw_events[-5:]]
    assert (late[0].event_time - early[-1].event_time).total_seconds() > 3600

    def judged(events: list[Any]) -> list[bytes]:
        requests = [
            r
            for e in events
            for r in to_requests(
                Sample(event=e, inclusion_probability=1.0, policy_version=policy.version), 10
            )
        ]
        return [teacher._ok(r).model_dump_json().encode() for r in requests]

    ahead, behind = judged(late), judged(early)
    await handle_judgments(components, ahead, [0] * len(ahead))
    assert components.state.judgment_watermark.value is None  # partition 1 unknown: hold back
    await handle_judgments(components, behind, [1] * len(behind))
    assert len(components.windows.judgments) == len(ahead) + len(behind)
    assert not outputs.sent.get(components.topic_names["dead_letters"])
    watermark = components.state.judgment_watermark.value
    assert watermark is not None and watermark <= early[-1].event_time


async def test_the_injected_wall_clock_decides_what_is_too_far_ahead(
    policy: Policy, raw_events: list[bytes]
) -> None:
    """Stage 1 reads the wall clock it is given: with a clock two days before the bundled
    events, every one of them is more than max_future_s ahead and is dead-lettered "future"."""
    loop, outputs, components = _loop(policy, FakeTeacher(policy), "clock")
    first = json.loads(raw_events[0])["event_time"]
    before = datetime.fromisoformat(first.replace("Z", "+00:00")).timestamp() - 2 * 86400
    components.wall_clock = lambda: before
    async with loop.validate_agent.test_context() as agent:
        await agent.put(raw_events[0])
    [letter] = [json.loads(v) for _, v in outputs.sent[components.topic_names["dead_letters"]]]
    assert letter["reason"] == "future"
