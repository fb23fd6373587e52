"""streams.rebuild without services: de-duplication, reading up to end offsets, alert-state
restoration (apply all, then evaluate at each boundary == the live incremental order) and the
cross-check with the alerts topic."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from evalloop.backtest import BucketWindowStore, judge_all, load_events, sample_requests
from judges.fake import NoopTeacher
from reliability.harness import EVENTS, write_test_policy
from schemas.alerts import Alert
from schemas.judgments import Judgment
from schemas.policy import Policy, load_policy
from streams import pipeline
from streams.alerting import AlertState, alert_id_for
from streams.evaluation import every_point
from streams.kafka_reader import messages_to_end
from streams.rebuild import (
    RebuildCounts,
    compare_with_alerts,
    distinct_judgments,
    first_seen,
    last_alerts,
    latest_event_time,
    live_watermark,
    reconcile,
    restore_alert_states,
    restored_states,
)

LATENESS = 60.0


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Policy:
    return load_policy(write_test_policy(tmp_path_factory.mktemp("policy")))


@pytest.fixture(scope="module")
def judgments(policy: Policy) -> list[Judgment]:
    events, _ = load_events(EVENTS, None)
    requests, _ = sample_requests(policy, events[:200])
    return judge_all(NoopTeacher(policy), requests)


def test_distinct_judgments_counts_duplicates_and_invalid(judgments: list[Judgment]) -> None:
    raws = [j.model_dump_json().encode() for j in judgments[:50]]
    counts = RebuildCounts()
    unique = distinct_judgments([*raws, *raws[:7], b"{not json"], counts)
    assert [j.judgment_id for j in unique] == [j.judgment_id for j in judgments[:50]]
    assert (counts.judgments_read, counts.distinct, counts.duplicates, counts.invalid) == (58, 50, 7, 1)


def boundaries(judgments: list[Judgment], lateness: float = LATENESS) -> list[float]:
    """The live loop's boundaries: after the first judgment's bucket, up to the live watermark."""
    mark = live_watermark(latest_event_time(judgments), lateness)
    if mark is None:
        return []
    return every_point(None, min(first_seen(judgments).values()), mark, 300)


def test_boundaries_stop_at_the_live_watermark(judgments: list[Judgment]) -> None:
    base = datetime(2024, 6, 1, tzinfo=UTC)
    few = [replace_time(judgments[0], base + timedelta(seconds=s)) for s in (10, 700, 1290)]
    # first boundary after the first bucket; last at floor(1290 - 600) = 600
    assert boundaries(few, 600.0) == [base.timestamp() + 300, base.timestamp() + 600]
    assert boundaries([], 600.0) == []
    many = [replace_time(judgments[0], base + timedelta(days=d)) for d in (0, 3)]
    assert len(boundaries(many, 0.0)) == 3 * 288, "a rebuild is not capped at one round's 288 points"


def replace_time(judgment: Judgment, at: datetime) -> Judgment:
    return judgment.model_copy(update={"event_time": at})


def _incremental(
    policy: Policy, judgments: list[Judgment], boundaries: list[float]
) -> tuple[Any, list[Alert]]:
    """The live order: apply what is before each boundary, then evaluate (alerts emitted)."""
    ordered = sorted(judgments, key=lambda j: j.event_time)
    times = [j.event_time.timestamp() for j in ordered]
    store, states, alerts, applied = BucketWindowStore(), pipeline.MemoryAlertStateStore(), [], 0
    for boundary in boundaries:
        upto = bisect.bisect_left(times, boundary)
        store.apply(ordered[applied:upto])
        applied = upto
        for category in store.categories():
            alerts += pipeline.evaluate_alerts(
                category, policy, store, states, pipeline.utc_from_epoch(boundary)
            )
    return states, alerts


def test_restore_equals_the_live_incremental_evaluation(policy: Policy, judgments: list[Judgment]) -> None:
    live_states, live_alerts = _incremental(policy, judgments, boundaries(judgments))
    assert any(a.state == "firing" for a in live_alerts), "the test policy should fire on the noop teacher"

    store, states = BucketWindowStore(), pipeline.MemoryAlertStateStore()
    store.apply(judgments)
    mark = live_watermark(latest_event_time(judgments), LATENESS)
    assert mark is not None
    restored_marks = restore_alert_states(policy, store, states, first_seen(judgments), mark)
    assert set(restored_marks.through) == set(store.categories()) and restored_marks.evaluations > 0
    restored = restored_states(policy, store.categories(), states)
    assert {k: v for k, v in restored.items() if v.state != "ok"} == live_states.states
    topic = [a.model_dump_json().encode() for a in live_alerts]
    assert compare_with_alerts(restored, last_alerts(topic)) == []


def _firing(
    policy: Policy, judgments: list[Judgment]
) -> tuple[dict[tuple[str, str], AlertState], list[Alert]]:
    states, alerts = _incremental(policy, judgments, boundaries(judgments))
    return dict(states.states), alerts


def test_compare_flags_lost_state_and_unannounced_firing(policy: Policy, judgments: list[Judgment]) -> None:
    states, alerts = _firing(policy, judgments)
    announced = last_alerts([a.model_dump_json().encode() for a in alerts])
    firing_key = next(k for k, a in announced.items() if a.state == "firing")
    lost = {**states, firing_key: AlertState()}  # Redis lost it and nothing restored it
    assert [p for p in compare_with_alerts(lost, announced) if p.startswith(f"{firing_key[0]}/")]
    silent = {k: v for k, v in announced.items() if k != firing_key}  # the page was never sent
    problems = compare_with_alerts(states, silent)
    assert len(problems) == 1 and "says nothing" in problems[0]


def test_compare_wants_the_same_incident(policy: Policy, judgments: list[Judgment]) -> None:
    states, alerts = _firing(policy, judgments)
    announced = last_alerts([a.model_dump_json().encode() for a in alerts])
    key = next(k for k, a in announced.items() if a.state == "firing")
    started = states[key].started_at
    assert started is not None
    later = started + timedelta(hours=1)
    other = {**states, key: replace(states[key], started_at=later)}
    assert alert_id_for(key[0], key[1], later) != announced[key].alert_id
    assert len(compare_with_alerts(other, announced)) == 1


@dataclass
class _Message:
    part: int
    off: int
    payload: bytes | None = b"x"

    def error(self) -> None:
        return None

    def partition(self) -> int:
        return self.part

    def offset(self) -> int:
        return self.off

    def value(self) -> bytes | None:
        return self.payload


class _Consumer:
    def __init__(self, batches: list[list[_Message]]) -> None:
        self.batches = batches

    def consume(self, _n: int, timeout: float) -> list[_Message]:
        return self.batches.pop(0) if self.batches else []


def test_read_until_stops_at_the_end_offsets_captured_at_start() -> None:
    consumer = _Consumer(
        [
            [_Message(0, 0, b"a"), _Message(1, 0, b"b")],
            [_Message(0, 1, b"c"), _Message(0, 2, b"later"), _Message(1, 1, b"d")],
            [_Message(1, 2, b"never read")],
        ]
    )
    values = [m.value() for m in messages_to_end(consumer, {0: 2, 1: 2}, idle_timeout_s=5.0)]
    assert values == [b"a", b"b", b"c", b"d"]
    assert consumer.batches == [[_Message(1, 2, b"never read")]]


def test_read_until_gives_up_when_idle() -> None:
    assert list(messages_to_end(_Consumer([]), {0: 5}, idle_timeout_s=0.6)) == []


def test_policy_file_is_written(tmp_path: Path) -> None:
    doc = load_policy(write_test_policy(tmp_path))
    assert doc.sampling.default_rate == 1.0 and [r.id for r in doc.alerts] == [
        "filtered-low-bar",
        "filtered-base-rate",
    ]


def test_reconcile_adopts_the_announced_incident(policy: Policy, judgments: list[Judgment]) -> None:
    states, alerts = _firing(policy, judgments)
    announced = last_alerts([a.model_dump_json().encode() for a in alerts])
    key = next(k for k, a in announced.items() if a.state == "firing")
    started = states[key].started_at
    assert started is not None
    store = pipeline.MemoryAlertStateStore(dict(states))
    # the re-evaluation opened the incident an hour later than the live worker announced it
    shifted = replace(states[key], started_at=started + timedelta(hours=1), incident_id="other")
    store.states[key] = shifted
    silent_key = next(k for k in states if k != key)
    store.states[silent_key] = replace(states[silent_key], state="firing")
    restored = dict(store.states)
    announced_without = {k: v for k, v in announced.items() if k != silent_key}
    assert reconcile(store, restored, announced_without) >= 2
    assert compare_with_alerts(dict(store.states), announced_without) == []
    assert store.states[key].started_at == started and store.states[key].state == "firing"
    assert store.states[silent_key].state == "ok"  # never announced: the next breach pages
