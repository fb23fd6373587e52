"""Stage functions of streams.pipeline, the teacher client, replay records and dead letters."""

from __future__ import annotations

import base64
import itertools
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from schemas.deadletter import DeadLetter, SourcePosition
from schemas.events import Sample, parse_event
from schemas.judgments import Judgment
from schemas.policy import Policy, load_policy
from streams.pipeline import (
    MemoryAlertStateStore,
    MemoryWindowStore,
    Valid,
    aggregate,
    evaluate_alerts,
    sample,
    to_requests,
    validate,
)
from streams.replay import Degradation, build_records, paced, parse_time
from streams.sampling import Sampler
from streams.teacher_client import CircuitBreaker, ServeTeacherClient, error_judgment_for
from streams.watermark import PartitionedWatermark, Watermark

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "data" / "wands" / "events.jsonl"
GOOD = EVENTS.open("rb").readline().strip()
GOOD_DOC = json.loads(GOOD)


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(ROOT / "policies" / "product-search.yaml")


def _variant(**changes: Any) -> bytes:
    doc = {k: v for k, v in GOOD_DOC.items() if changes.get(k, ...) is not None}
    doc.update({k: v for k, v in changes.items() if v is not None})
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("raw", "reason", "field"),
    [
        (b'{"event_id": "x", ', "malformed_json", "<root>"),
        (b"\xff\xfe{}", "invalid_utf8", "<payload>"),
        (b'{"x": "' + b"a" * 300_000 + b'"}', "oversized", "<payload>"),
        (_variant(event_id=None), "missing_field", "event_id"),
        (_variant(event_time="1970-01-01T00:00:00Z"), "absurd_timestamp", "event_time"),
        (_variant(event_time="2999-01-01T00:00:00Z"), "absurd_timestamp", "event_time"),
        (_variant(items=[]), "schema", "items"),
        (b"[1, 2]", "schema", "<root>"),
    ],
)
def test_validate_dead_letters_with_the_right_reason(raw: bytes, reason: str, field: str) -> None:
    source = SourcePosition(topic="events", partition=3, offset=42)
    outcome = validate(raw, source)
    assert isinstance(outcome, DeadLetter)
    assert (outcome.reason, outcome.field) == (reason, field)
    assert outcome.original() == raw and base64.b64decode(outcome.original_b64) == raw
    assert (outcome.topic, outcome.partition, outcome.offset) == ("events", 3, 42)
    assert DeadLetter.model_validate_json(outcome.to_bytes()) == outcome


def test_validate_accepts_a_good_event() -> None:
    outcome = validate(GOOD)
    assert isinstance(outcome, Valid) and outcome.event.event_id == GOOD_DOC["event_id"]


def test_validate_dead_letters_events_older_than_the_retention_but_keeps_late_ones() -> None:
    watermark = Watermark(allowed_lateness_s=600)
    newer = parse_event(GOOD).event_time + timedelta(hours=3)
    assert isinstance(
        validate(_variant(event_time=newer.isoformat()), watermark=watermark, retention_s=3600), Valid
    )
    late = newer - timedelta(minutes=30)  # behind the watermark, inside the retention: counted
    assert isinstance(
        validate(_variant(event_time=late.isoformat()), watermark=watermark, retention_s=3600), Valid
    )
    assert watermark.max_event_time == newer  # a late event does not move the watermark
    expired = validate(GOOD, watermark=watermark, retention_s=3600)  # 3 h older
    assert isinstance(expired, DeadLetter) and expired.reason == "late"


def test_partitioned_watermark_waits_for_the_slowest_partition() -> None:
    clock = {"t": 0.0}
    mark = PartitionedWatermark(allowed_lateness_s=0, partitions=2, idle_s=5, clock=lambda: clock["t"])
    early, late = parse_event(GOOD).event_time, parse_event(GOOD).event_time + timedelta(hours=5)
    mark.observe(late, 0)
    assert mark.value is None  # partition 1 has said nothing yet
    mark.observe(early, 1)
    assert mark.value == early  # the slow partition holds the watermark back
    clock["t"] = 6.0
    mark.observe(late, 0)
    assert mark.value == late  # partition 1 idle for 6 s: no longer waited for


def test_sample_carries_the_inclusion_probability(policy: Policy) -> None:
    sampler = Sampler(policy)
    events = [parse_event(line.strip()) for line in list(EVENTS.open("rb"))[:60]]
    outcomes = [sample(event, sampler, 0.0) for event in events]
    chosen = [o.sample for o in outcomes if o.sample is not None]
    assert 0 < len(chosen) < len(events)
    for s in chosen:
        assert s.inclusion_probability == policy.sample_rate(s.event.category)
        assert s.policy_version == policy.version
    sampler.shed_while(True)
    shed = [sample(event, sampler, 0.0) for event in events]
    assert all(o.sample is None for o in shed) and any(o.decision.shed for o in shed)


def test_to_requests_takes_the_top_items_by_rank(policy: Policy) -> None:
    event = parse_event(GOOD)
    requests = to_requests(Sample(event=event, inclusion_probability=0.5, policy_version=policy.version), 3)
    assert [r.item.rank for r in requests] == [1, 2, 3]
    assert {r.inclusion_probability for r in requests} == {0.5}
    assert requests[0].query == event.request.intent_text()


def _judgments(policy: Policy, grade: int, lines: int = 30) -> list[Judgment]:
    out: list[Judgment] = []
    for line in list(EVENTS.open("rb"))[:lines]:
        event = parse_event(line.strip())
        for r in to_requests(
            Sample(event=event, inclusion_probability=1.0, policy_version=policy.version), 10
        ):
            bad = error_judgment_for(r, policy.version, "x", teacher_version="t")
            fields = bad.model_dump(exclude={"status", "error", "grade", "display", "rationale"})
            out.append(
                Judgment(**fields, status="ok", grade=grade, display=policy.display_for(grade), rationale="r")
            )
    return out


def test_aggregate_is_idempotent_and_returns_expired_judgments(policy: Policy) -> None:
    store, watermark = MemoryWindowStore(), Watermark(0)
    judgments = _judgments(policy, grade=4)
    first = aggregate(judgments, store, watermark, retention_s=None)
    again = aggregate(judgments, store, watermark, retention_s=None)
    assert (first.applied, first.duplicates) == (len(judgments), 0)
    assert (again.applied, again.duplicates) == (0, len(judgments))
    old = aggregate(judgments[:3], store, watermark, retention_s=60)
    assert len(old.late) == 3 and old.applied == 0


def test_evaluate_alerts_fires_once_then_holds(policy: Policy) -> None:
    strict = policy.model_copy(
        update={"alerts": [r.model_copy(update={"min_samples": 5}) for r in policy.alerts]}
    )
    store, states, watermark = MemoryWindowStore(), MemoryAlertStateStore(), Watermark(0)
    judgments = [j for j in _judgments(strict, grade=0) if j.category == "Furniture & Office"]
    aggregate(judgments, store, watermark, None)
    at = watermark.value
    assert at is not None
    fired = evaluate_alerts("Furniture & Office", strict, store, states, at)
    assert {a.rule for a in fired} >= {"filtered-share-burn"} and {a.state for a in fired} == {"firing"}
    assert evaluate_alerts("Furniture & Office", strict, store, states, at) == []


# --------------------------------------------------------------------------- teacher client


def _client(handler: Any, **kwargs: Any) -> ServeTeacherClient:
    async def no_sleep(_: float) -> None:
        return None

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return ServeTeacherClient("http://teacher/teacher", "pv", http=http, sleep=no_sleep, **kwargs)


def _requests(policy: Policy) -> list[Any]:
    return to_requests(Sample(event=parse_event(GOOD), inclusion_probability=1.0, policy_version="pv"), 2)


async def test_client_retries_then_succeeds(policy: Policy) -> None:
    calls = {"n": 0}
    requests = _requests(policy)

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] < 3:
            return httpx.Response(503, text="busy")
        body = json.loads(request.content)["requests"]
        assert len(body) == 2 and set(body[0]) == {
            "event_id",
            "category",
            "event_time",
            "query",
            "item",
            "inclusion_probability",
        }
        judged = [error_judgment_for(r, "pv", "graded elsewhere") for r in requests]
        return httpx.Response(200, json={"judgments": [json.loads(j.model_dump_json()) for j in judged]})

    client = _client(handler, retries=3)
    judgments = await client.judge(requests)
    assert calls["n"] == 3 and client.counters.retries == 2 and len(judgments) == 2
    assert client.breaker.state == "closed"


async def test_client_gives_error_judgments_and_the_breaker_opens(policy: Policy) -> None:
    now = {"t": 0.0}
    breaker = CircuitBreaker(failure_threshold=2, cooldown_s=5, clock=lambda: now["t"])
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        raise httpx.ConnectError("refused")

    client = _client(handler, retries=1, breaker=breaker)
    judgments = await client.judge(_requests(policy))
    assert [j.status for j in judgments] == ["error", "error"]
    assert judgments[0].teacher_version == "unavailable" and "teacher call failed" in (
        judgments[0].error or ""
    )
    assert breaker.is_open and calls["n"] == 2
    await client.judge(_requests(policy))  # fails fast: no call while open
    assert calls["n"] == 2 and client.counters.rejected_by_breaker == 1
    now["t"] = 6.0  # cool-down over: half-open, one probe goes out
    assert not breaker.is_open and breaker.allow() and not breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed"


async def test_client_does_not_retry_a_bad_request(policy: Policy) -> None:
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        return httpx.Response(400, text="invalid request")

    client = _client(handler, retries=3)
    judgments = await client.judge(_requests(policy))
    assert calls["n"] == 1 and all(j.status == "error" for j in judgments)
    assert client.breaker.state == "closed"


# --------------------------------------------------------------------------- replay


def test_degradation_swaps_items_for_other_categories_deterministically() -> None:
    lines = [line.rstrip(b"\n") for line in list(EVENTS.open("rb"))[:100]]
    degradation = Degradation(
        "Furniture & Office",
        parse_time("2024-06-01T01:00:00Z"),
        parse_time("2024-06-01T04:00:00Z"),
        0.5,
        seed=3,
    )
    records, counts = build_records([*lines, b"{oops"], "event_id", degradation)
    again, _ = build_records([*lines, b"{oops"], "event_id", degradation)
    assert [r.value for r in records] == [r.value for r in again]
    assert counts.degraded_events > 0 and counts.unparsed == 1 and records[-1].key is None
    for line, record in zip(lines, records, strict=False):
        before, after = json.loads(line), json.loads(record.value)
        if before == after:
            continue
        assert before["category"] == "Furniture & Office"
        assert degradation.applies(before["category"], parse_time(before["event_time"]))
        new_ids = {i["item_id"] for i in after["items"]} - {i["item_id"] for i in before["items"]}
        assert len(new_ids) == round(len(before["items"]) * 0.5)
        assert len({i["item_id"] for i in after["items"]}) == len(after["items"])
        assert all(after["reference_labels"][i] == "Irrelevant" for i in new_ids)
        assert [i["rank"] for i in after["items"]] == [i["rank"] for i in before["items"]]


def test_paced_replay_sleeps_by_event_time_over_speed() -> None:
    lines = [line.rstrip(b"\n") for line in list(EVENTS.open("rb"))[:3]]
    records, _ = build_records(lines)
    clock = {"t": 0.0}
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock["t"] += seconds

    list(paced(records, 60.0, clock=lambda: clock["t"], sleep=sleep))
    gaps = [(b.event_time - a.event_time).total_seconds() / 60 for a, b in itertools.pairwise(records)]
    assert slept == pytest.approx(gaps)


async def test_client_honours_retry_after(policy: Policy) -> None:
    requests = _requests(policy)
    pauses: list[float] = []
    calls = {"n": 0}

    async def record_sleep(seconds: float) -> None:
        pauses.append(seconds)

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            return httpx.Response(429, headers={"Retry-After": "2"}, text="slow down")
        judged = [error_judgment_for(r, "pv", "graded elsewhere") for r in requests]
        return httpx.Response(200, json={"judgments": [json.loads(j.model_dump_json()) for j in judged]})

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    client = ServeTeacherClient("http://teacher/teacher", "pv", http=http, sleep=record_sleep, retries=2)
    assert len(await client.judge(requests)) == 2
    assert len(pauses) == 1 and pauses[0] >= 2.0


def test_far_future_event_is_dead_lettered_and_does_not_poison_the_watermark() -> None:
    from datetime import UTC, datetime

    from streams.watermark import PartitionedWatermark

    now = datetime(2024, 6, 1, 12, tzinfo=UTC)
    watermark = PartitionedWatermark(60, 1)
    future = json.loads(GOOD)
    future["event_time"] = "2099-01-01T00:00:00Z"
    letter = validate(
        json.dumps(future).encode(), watermark=watermark, retention_s=86400, now=now, max_future_s=3600
    )
    assert isinstance(letter, DeadLetter) and letter.reason == "future" and letter.field == "event_time"
    assert watermark.value is None
    assert isinstance(
        validate(GOOD, watermark=watermark, retention_s=86400, now=now, max_future_s=3600), Valid
    )
