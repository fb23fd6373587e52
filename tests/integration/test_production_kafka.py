"""Production Kafka reality against the real broker and a real ``evalloop worker``.

* An outside producer (confluent-kafka here, not ``evalloop replay``) writes what producers
  write: a tombstone, an empty value, one valid event per codec (gzip, snappy, lz4, zstd), events
  with fields the schema does not know (top level and item), a null key with odd headers, an
  event with no items, then 40 valid events: the worker stays up, every valid event is judged, the
  bad records are dead letters with their reasons.
* Quiet hours: a short degraded-then-recovered stream on 4 partitions, then silence. The live
  alert timeline (fired and resolved) equals ``evalloop backtest`` of the same stream once the
  idle close-out has run (docs/alerts.md, "Quiet hours").
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from evalloop.backtest import backtest
from reliability.harness import noop_teacher_server
from reliability.live import EventFactory, RunLayout, expected_items, live_run, wait_until, write_policy
from reliability.live_io import TopicReader, worker_counters
from schemas.alerts import Alert
from schemas.judgments import Judgment
from schemas.policy import load_policy
from streams.replay import Degradation, parse_time, replay
from streams.services import librdkafka_logger
from tests.support.policies import burn_rate_policy
from tests.support.stub_teacher import StubTeacher, stub_server

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "data" / "wands" / "events.jsonl"
CODECS = ("gzip", "snappy", "lz4", "zstd")
Figures = Callable[[str, dict[str, object]], None]


@pytest.fixture(scope="module")
def noop_url(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> Iterator[str]:
    policy = load_policy(write_policy(Path(tmp_path_factory.mktemp("noop-policy"))))
    server = noop_teacher_server(policy)
    yield f"http://127.0.0.1:{server.server_address[1]}/teacher"
    server.shutdown()


def _send(config: dict[str, Any], topic: str, records: list[dict[str, Any]]) -> None:
    """Produce ``records`` (kwargs of ``Producer.produce``) in one batch; fail on any delivery error."""
    errors: list[str] = []
    quiet = {"logger": librdkafka_logger(), "topic.metadata.refresh.interval.ms": -1}
    producer = Producer({**config, "linger.ms": 50, "acks": "all", **quiet})
    for record in records:
        producer.produce(topic, on_delivery=lambda e, _m: errors.append(str(e)) if e else None, **record)
    assert producer.flush(30) == 0 and not errors, errors


def test_outside_producer_every_record_a_producer_can_write(noop_url: str, report_figures: Figures) -> None:
    factory = EventFactory("outside")
    with live_run("outside", noop_url) as run:
        topic, base = run.topics["events"], dict(run.settings.kafka.confluent_config())
        valid: dict[str, int] = {}

        def event(change: Callable[[dict[str, Any]], None] = lambda d: None, **extra: Any) -> dict[str, Any]:
            doc = factory.doc()
            change(doc)
            valid[doc["event_id"]] = expected_items(doc, run.policy)
            key, value = factory.encode(doc)
            return {"key": key, "value": value, **extra}

        _send(base, topic, [{"key": b"tomb", "value": None}, {"key": b"blank", "value": b""}])
        for codec in CODECS:
            _send({**base, "compression.type": codec}, topic, [event() for _ in range(3)])
        added = [
            event(lambda d: d.update(experiment_arm="B")),
            event(lambda d: d["items"][0].update(price=19.99)),
            {**event(), "key": None, "headers": [("x-odd", b"\xff\x00"), ("empty", b""), ("x-none", None)]},
        ]
        no_items = factory.doc()
        no_items["items"] = []
        _send(base, topic, [*added, {"key": b"no-items", "value": factory.encode(no_items)[1]}])
        _send(base, topic, [event() for _ in range(40)])

        judgments = TopicReader(run.settings, run.topics["judgments"])
        letters = TopicReader(run.settings, run.topics["dead_letters"])
        total = sum(valid.values())

        def distinct_judged() -> int:
            return len({Judgment.model_validate_json(v).judgment_id for v in judgments.poll(0.5)})

        assert wait_until(lambda: distinct_judged() >= total, 120), f"{distinct_judged()} of {total} judged"
        assert wait_until(lambda: len(letters.poll(0.5)) >= 3, 30)
        assert run.worker is not None and run.worker.poll() is None, "worker died"
        judged_events = {Judgment.model_validate_json(v).event_id for v in judgments.poll(2.0)}
        assert len(judgments.values) == total, "no crash here: every judgment is published once"
        assert judged_events == set(valid)
        reasons = sorted(json.loads(v)["reason"] for v in letters.values)
        assert reasons == ["empty", "schema", "tombstone"], reasons
        assert wait_until(lambda: worker_counters(run.log_path).get("unknown_fields", 0) >= 2, 15)
        counters = worker_counters(run.log_path)
        assert b"Traceback" not in run.log_path.read_bytes()
        judgments.close()
        letters.close()
    report_figures(
        "outside producer",
        {"valid_events": len(valid), "judgments": total, "dead_letters": len(reasons), **counters},
    )


# --------------------------------------------------------------------------- quiet hours

QUIET_LIMIT = 63  # the stream ends at 06:38; the degraded category resolves at the 06:40 boundary
QUIET_PARTITIONS = {"events": 4, "samples": 4, "judgments": 4, "alerts": 1, "dead_letters": 1}
IDLE_CLOSE_S = 5.0


def _timeline(alerts: list[Alert]) -> list[tuple[str, str, str, str]]:
    return sorted((a.updated_at.isoformat(), a.state, a.rule, a.category) for a in alerts)


def test_quiet_hours_live_alerts_equal_the_backtest(tmp_path: Path, report_figures: Figures) -> None:
    policy_path = burn_rate_policy(tmp_path, "quiet-policy.yaml")
    policy = load_policy(policy_path)
    stream = tmp_path / "quiet.jsonl"
    stream.write_bytes(b"".join(list(EVENTS.open("rb"))[:QUIET_LIMIT]))
    degradation = Degradation(
        "Furniture & Office", parse_time("2024-06-01T02:00:00Z"), parse_time("2024-06-01T05:00:00Z"), 0.8
    )
    expected = _timeline(backtest(policy, StubTeacher(policy), stream, degradation).alerts)
    assert [state for _, state, _, _ in expected] == ["firing", "resolved"]
    server = stub_server(policy)
    env = {
        # The default lateness: without the idle close-out the watermark would stop 10 min short of
        # the last event, and the 06:40 resolve would never be evaluated.
        "EVALLOOP_STREAM_ALLOWED_LATENESS_S": "600",
        "EVALLOOP_STREAM_IDLE_CLOSE_S": str(IDLE_CLOSE_S),
    }
    layout = RunLayout(QUIET_PARTITIONS, policy_path)
    try:
        with live_run(
            "quiet", f"http://127.0.0.1:{server.server_address[1]}/teacher", env, layout=layout
        ) as run:
            counts = replay(stream, run.settings, speed=None, degradation=degradation)
            assert counts.produced == QUIET_LIMIT
            reader = TopicReader(run.settings, run.topics["alerts"])

            def live() -> list[tuple[str, str, str, str]]:
                return _timeline([Alert.model_validate_json(v) for v in reader.poll(0.5)])

            assert wait_until(lambda: live() == expected, 90), f"live {live()} != backtest {expected}"
            reader.close()
    finally:
        server.shutdown()
    report_figures(
        "quiet hours", {"events": QUIET_LIMIT, "alerts": len(expected), "idle_close_s": IDLE_CLOSE_S}
    )
