"""The three Faust agents under ``agent.test_context()`` with fakes: no Kafka, Redis or Ray."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faust
import pytest

from schemas.events import Sample, parse_event
from schemas.judgments import Judgment, judgment_id_for
from schemas.policy import Policy, load_policy
from schemas.settings import Settings, TopicSettings, TopicSpec
from streams.app import Components, StreamSettings, create_app
from streams.pipeline import MemoryAlertStateStore, MemoryWindowStore, TeacherRequest, to_requests
from streams.teacher_client import error_judgment_for

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "data" / "wands" / "events.jsonl"


class RecordingOutputs:
    """Outputs that keep what was sent, by topic name."""

    def __init__(self) -> None:
        self.sent: dict[str, list[tuple[bytes | None, bytes]]] = {}

    async def send(self, topic: str, records: Sequence[tuple[bytes | None, bytes]]) -> None:
        self.sent.setdefault(topic, []).extend(records)


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
    one = {
        n: TopicSpec(name=f"t.{n}", partitions=1)
        for n in ("events", "samples", "judgments", "alerts", "dead_letters")
    }
    components = Components(
        settings=Settings().model_copy(update={"topics": TopicSettings(**one)}),
        stream=StreamSettings(),
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
