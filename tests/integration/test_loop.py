"""The whole loop against real Kafka + Redis (+ Ray Serve): replay → worker → judgments, windows, alerts.

Two worker runs (``evalloop worker`` subprocesses, each on its own throwaway topics, consumer group
and Redis prefix, so reruns never see old data):

1. the ``noop`` teacher behind Ray Serve: every sampled event judged exactly once, windows equal a
   recomputation from the judgments topic, bad events dead-lettered with reasons while the loop
   goes on;
2. a content-sensitive stub teacher speaking the same HTTP protocol (the noop teacher grades by
   hash, so it cannot notice a degradation): an injected degradation of one category fires an
   alert for that category only, and it resolves after recovery.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from prometheus_client.parser import text_string_to_metric_families

from schemas.alerts import Alert
from schemas.judgments import Judgment
from schemas.policy import Policy, load_policy
from schemas.settings import Settings
from streams.export import export_judgments
from streams.notify import pagerduty_payload, slack_payload
from streams.pipeline import MemoryWindowStore
from streams.replay import Degradation, parse_time, replay
from streams.window_store import WindowStore
from tests.support.payload_rules import pagerduty_problems, slack_problems
from tests.support.policies import burn_rate_policy
from tests.support.stub_teacher import stub_server

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "data" / "wands" / "events.jsonl"
SLICE = 150
DEGRADED = "Furniture & Office"
STAGES = ("events", "samples", "judgments", "alerts", "dead_letters")
PARTITIONS = {"events": 2, "samples": 2, "judgments": 2, "alerts": 1, "dead_letters": 1}


def _bad_events() -> dict[str, bytes]:
    good = json.loads(EVENTS.open("rb").readline())
    missing_id = {k: v for k, v in good.items() if k != "event_id"}
    absurd = {**good, "event_id": "bad-time", "event_time": "1970-01-01T00:00:00Z"}
    return {
        "malformed_json": b'{"event_id": "broken", ',
        "invalid_utf8": b'{"event_id": "\xff\xfe"}',
        "missing_field": json.dumps(missing_id).encode(),
        "absurd_timestamp": json.dumps(absurd).encode(),
        "oversized": b'{"pad": "' + b"x" * 300_000 + b'"}',
    }


@dataclass
class Run:
    """One isolated loop: its topic names, Redis prefix, settings and env for the worker."""

    settings: Settings
    env: dict[str, str]
    topics: dict[str, str]
    prefix: str


def _make_run(base: Settings, policy_path: Path, teacher_url: str, tag: str) -> Run:
    run_id = f"{tag}-{uuid.uuid4().hex[:8]}"
    topics = {stage: f"evalloop.it.{run_id}.{stage}" for stage in STAGES}
    prefix = f"evalloop-it:{run_id}"
    env = {
        "EVALLOOP_POLICY_FILE": str(policy_path),
        "EVALLOOP_REDIS__KEY_PREFIX": prefix,
        "EVALLOOP_STREAM_APP_ID": f"evalloop-it-{run_id}",
        "EVALLOOP_STREAM_TEACHER_URL": teacher_url,
        "EVALLOOP_STREAM_ALLOWED_LATENESS_S": "60",
        "EVALLOOP_STREAM_AGGREGATE_WITHIN_S": "0.2",
        "EVALLOOP_STREAM_LOG_INTERVAL_S": "5",
    }
    for stage, name in topics.items():
        env[f"EVALLOOP_TOPICS__{stage.upper()}__NAME"] = name
        env[f"EVALLOOP_TOPICS__{stage.upper()}__PARTITIONS"] = str(PARTITIONS[stage])
    specs = {s: {"name": topics[s], "partitions": PARTITIONS[s]} for s in STAGES}
    settings = base.model_copy(
        update={
            "topics": base.topics.model_validate(specs),
            "redis": base.redis.model_copy(update={"key_prefix": prefix}),
            "policy_file": policy_path,
        }
    )
    return Run(settings, env, topics, prefix)


@pytest.fixture
def topics_for(kafka_admin: AdminClient) -> Iterator[Callable[[Run], None]]:
    created: list[str] = []

    def create(run: Run) -> None:
        new = [NewTopic(run.topics[s], num_partitions=PARTITIONS[s], replication_factor=1) for s in STAGES]
        for future in kafka_admin.create_topics(new).values():
            future.result(timeout=30)
        created.extend(run.topics.values())

    yield create
    if created:
        for future in kafka_admin.delete_topics(created, operation_timeout=30).values():
            with contextlib.suppress(Exception):  # cleanup is best effort
                future.result(timeout=30)


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Callable[[Run], subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(run: Run) -> subprocess.Popen[bytes]:
        log = (tmp_path / f"worker-{len(procs)}.log").open("wb")
        env = {**os.environ, **run.env, "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "evalloop.cli", "worker", "--loglevel", "info"]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _consume(
    settings: Settings, topic: str, done: Callable[[list[bytes]], bool], timeout: float
) -> list[bytes]:
    config: dict[str, Any] = dict(settings.kafka.confluent_config())
    config.update({"group.id": f"it-reader-{uuid.uuid4().hex[:8]}", "auto.offset.reset": "earliest"})
    consumer = Consumer(config)
    consumer.subscribe([topic])
    values: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not done(values):
            message = consumer.poll(0.5)
            if message is not None and not message.error():
                values.append(message.value())
    finally:
        consumer.close()
    return values


def _write_replay_file(tmp: Path, bad: dict[str, bytes]) -> Path:
    lines = [line.rstrip(b"\n") for line in EVENTS.open("rb")][:SLICE]
    mixed = lines[: SLICE // 2] + list(bad.values()) + lines[SLICE // 2 :]
    path = tmp / "replay.jsonl"
    path.write_bytes(b"\n".join(mixed) + b"\n")
    return path


def _expected_items(policy: Policy) -> dict[str, int]:
    expected: dict[str, int] = {}
    for line in list(EVENTS.open("rb"))[:SLICE]:
        event = json.loads(line)
        expected[event["event_id"]] = min(len(event["items"]), policy.sampling.max_items_per_event)
    return expected


@pytest.fixture(scope="module")
def noop_teacher_url() -> Iterator[str]:
    """The noop teacher deployed on Ray Serve (Ray started once for this module)."""
    from schemas.settings import load_settings
    from workers.deployment import deploy
    from workers.runtime import shutdown

    settings = load_settings()
    deploy(settings, ROOT / "policies" / "product-search.yaml", backend="noop")
    yield f"http://{settings.ray.serve_host}:{settings.ray.serve_port}/teacher"
    shutdown()


def test_loop_noop_teacher_exactly_once_windows_and_dead_letters(
    settings: Settings,
    redis_client: redis.Redis,
    tmp_path: Path,
    topics_for: Callable[[Run], None],
    worker: Callable[[Run], subprocess.Popen[bytes]],
    noop_teacher_url: str,
) -> None:
    policy_path = burn_rate_policy(tmp_path)
    policy = load_policy(policy_path)
    run = _make_run(settings, policy_path, noop_teacher_url, "noop")
    topics_for(run)
    proc = worker(run)
    bad = _bad_events()
    started = time.monotonic()
    counts = replay(_write_replay_file(tmp_path, bad), run.settings, speed=None)
    assert counts.produced == SLICE + len(bad) and counts.delivery_errors == 0

    expected = _expected_items(policy)
    total = sum(expected.values())
    raw = _consume(run.settings, run.topics["judgments"], lambda v: len(v) >= total, timeout=120)
    elapsed = time.monotonic() - started
    assert proc.poll() is None, "worker died"
    judgments = [Judgment.model_validate_json(v) for v in raw]
    assert len(judgments) == total, f"{len(judgments)} judgments of {total} after {elapsed:.0f}s"
    assert len({j.judgment_id for j in judgments}) == total
    per_event: dict[str, int] = {}
    for judgment in judgments:
        per_event[judgment.event_id] = per_event.get(judgment.event_id, 0) + 1
    assert per_event == expected
    print(f"\nnoop run: {total} judgments of {len(expected)} events in {elapsed:.1f}s")

    letters = [
        json.loads(v) for v in _consume(run.settings, run.topics["dead_letters"], lambda v: len(v) >= 5, 30)
    ]
    assert sorted(letter["reason"] for letter in letters) == sorted(bad)
    assert all(letter["original_b64"] and letter["topic"] == run.topics["events"] for letter in letters)

    try:
        _assert_windows_match(run, redis_client, judgments)
    finally:
        WindowStore(redis_client, run.prefix).clear()

    out = io.StringIO()
    exported = export_judgments(run.settings, out, from_beginning=True, idle_timeout_s=5)
    assert exported.written == total and exported.duplicates == 0
    assert {json.loads(line)["judgment_id"] for line in out.getvalue().splitlines()} == {
        j.judgment_id for j in judgments
    }


def _assert_windows_match(run: Run, client: redis.Redis, judgments: list[Judgment]) -> None:
    store = WindowStore(client, run.prefix)
    recomputed = MemoryWindowStore()
    recomputed.apply(judgments)
    end = max(j.event_time for j in judgments).timestamp() + 300
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the aggregate stage may lag the judgments topic a little
        if sum(store.read(c, 86400, end).samples for c in recomputed.categories()) >= len(judgments):
            break
        time.sleep(0.5)
    assert store.categories() == set(recomputed.categories())
    for category in recomputed.categories():
        live, again = store.read(category, 86400, end), recomputed.read(category, 86400, end)
        assert live.samples == again.samples
        assert live.counters.keys() == again.counters.keys()
        for name, value in again.counters.items():
            assert live.counters[name] == pytest.approx(value), (category, name)


# --------------------------------------------------------------------------- degradation → alert


def test_loop_degradation_fires_and_resolves_for_that_category_only(
    settings: Settings,
    redis_client: redis.Redis,
    tmp_path: Path,
    topics_for: Callable[[Run], None],
    worker: Callable[[Run], subprocess.Popen[bytes]],
) -> None:
    policy_path = burn_rate_policy(tmp_path, runbook_url=RUNBOOK)
    server = stub_server(load_policy(policy_path))
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/teacher"
        run = _make_run(settings, policy_path, url, "alert")
        run.env["EVALLOOP_DASHBOARD_URL"] = DASHBOARD
        metrics_url = _serve_metrics(run)
        topics_for(run)
        worker(run)
        before = _scrape_when_up(metrics_url)
        degradation = Degradation(
            DEGRADED,
            parse_time("2024-06-01T02:00:00Z"),
            parse_time("2024-06-01T05:00:00Z"),
            fraction=0.8,
            model_version=ROLLOUT,
        )
        counts = replay(EVENTS, run.settings, speed=None, degradation=degradation, limit=SLICE)
        assert counts.degraded_events > 0 and counts.swapped_items > 0

        def fired_and_resolved(values: list[bytes]) -> bool:
            return {json.loads(v)["state"] for v in values} >= {"firing", "resolved"}

        alerts = [
            json.loads(v) for v in _consume(run.settings, run.topics["alerts"], fired_and_resolved, 120)
        ]
        time.sleep(1.5)  # one gauge refresh after the resolve
        check_scrapes(before, _scrape(metrics_url))
    finally:
        server.shutdown()
        WindowStore(redis_client, run.prefix).clear()
    assert {a["category"] for a in alerts} == {DEGRADED}, alerts
    assert [a["state"] for a in alerts] == ["firing", "resolved"]
    firing = alerts[0]
    assert firing["examples"] and firing["top_failure_modes"][0]["failure_mode"] == "off_department"
    assert parse_time(firing["started_at"]) >= degradation.start  # type: ignore[operator]
    check_actionable(firing, alerts[1], policy_path)


def _serve_metrics(run: Run) -> str:
    """Point the worker's /metrics at a free loopback port, refreshing the gauges every second."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    run.env.update({"EVALLOOP_STREAM_METRICS_PORT": str(port), "EVALLOOP_STREAM_METRICS_REFRESH_S": "1"})
    return f"http://127.0.0.1:{port}/metrics"


Scrape = dict[str, list[Any]]


def _scrape(url: str) -> Scrape:
    samples: Scrape = {}
    for family in text_string_to_metric_families(httpx.get(url, timeout=5).text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def _scrape_when_up(url: str, timeout_s: float = 60.0) -> Scrape:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return _scrape(url)
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _total(scrape: Scrape, name: str, **labels: str) -> float:
    return sum(s.value for s in scrape.get(name, []) if labels.items() <= s.labels.items())


def check_scrapes(before: Scrape, after: Scrape) -> None:
    """The counters and histograms moved during the run; the gauges show the category's window,
    its resolved alert and the group's (caught-up) lag."""
    for name in ("evalloop_events_seen_total", "evalloop_judged_ok_total", "evalloop_windows_applied_total"):
        assert _total(after, name) > _total(before, name), name
    assert _total(after, "evalloop_alerts_emitted_total", category=DEGRADED) == 2
    assert _total(after, "evalloop_teacher_call_duration_seconds_count", outcome="ok") > 0
    assert _total(after, "evalloop_teacher_call_pairs_sum") >= _total(after, "evalloop_judged_ok_total")
    share = {"category": DEGRADED, "share": "filtered", "estimate": "raw", "bound": "point"}
    assert 0.0 < _total(after, "evalloop_window_share", **share) <= 1.0
    state = {"rule": "filtered-share-burn", "category": DEGRADED}
    assert _total(after, "evalloop_alert_state", **state, state="resolved") == 1.0
    assert after.get("evalloop_consumer_lag"), "no consumer lag gauge"


RUNBOOK = "https://runbooks.example.org/evalloop/filtered-share-burn"
DASHBOARD = "http://127.0.0.1:8050"
ROLLOUT = "ranker-rollout-v2"
#: Where the test leaves the fired alert's webhook bodies (docs/webhooks.md shows them).
PAYLOADS_DIR = ROOT / ".evalloop" / "test-artifacts" / "alert-payloads"


def check_actionable(firing: dict[str, Any], resolved: dict[str, Any], policy_path: Path) -> None:
    """What on-call needs: examples from the firing window only (by event time, no pair twice),
    the bad rollout named first among model versions, links, runbook, start and duration; the
    Slack and PagerDuty bodies valid under their published rules, saved for the docs."""
    policy = load_policy(policy_path)
    at = parse_time(firing["updated_at"]).timestamp()
    longest = max(w["seconds"] for w in firing["windows"])
    times = {
        json.loads(line)["event_id"]: parse_time(json.loads(line)["event_time"]) for line in EVENTS.open()
    }
    for example in firing["examples"]:
        assert at - longest < times[example["event_id"]].timestamp() <= at, (example, firing["updated_at"])
    pairs = [(e["query"], e["item_id"]) for e in firing["examples"]]
    assert len(pairs) == len(set(pairs))
    assert firing["model_versions"][0]["model_version"] == ROLLOUT and firing["model_versions"][0]["bad"] > 0
    assert firing["runbook_url"] == RUNBOOK and firing["dashboard_url"].startswith(DASHBOARD + "/?category=")
    assert resolved["duration_seconds"] == pytest.approx(
        (parse_time(resolved["resolved_at"]) - parse_time(resolved["started_at"])).total_seconds()
    )
    assert policy.alerts[0].runbook_url == RUNBOOK
    PAYLOADS_DIR.mkdir(parents=True, exist_ok=True)
    for state, doc in (("firing", firing), ("resolved", resolved)):
        alert = Alert.model_validate_json(json.dumps(doc))
        slack, pd = slack_payload(alert), pagerduty_payload(alert, "R" * 32)
        assert slack_problems(slack) == [] and pagerduty_problems(pd) == []
        for kind, body in (("slack", slack), ("pagerduty", pd)):
            (PAYLOADS_DIR / f"{kind}-{state}.json").write_text(json.dumps(body, indent=2, ensure_ascii=False))
