"""The whole loop against real Kafka + Redis (+ Ray Serve): replay → worker → judgments, windows.

A worker run (an ``evalloop worker`` subprocess on its own throwaway topics, consumer group and
Redis prefix, so reruns never see old data) with the ``noop`` teacher behind Ray Serve: every
sampled event judged exactly once, windows equal a recomputation from the judgments topic, bad
events dead-lettered with reasons while the loop goes on. The degradation run that fires an
alert is tests/integration/test_alert_run.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from schemas.judgments import Judgment
from schemas.policy import Policy, load_policy
from schemas.settings import Settings
from streams.export import export_judgments
from streams.pipeline import MemoryWindowStore
from streams.replay import replay
from streams.window_store import WindowStore
from tests.support.loop_run import EVENTS, PARTITIONS, ROOT, STAGES, Run, consume, make_run
from tests.support.policies import burn_rate_policy

pytestmark = pytest.mark.integration

SLICE = 150
DEGRADED = "Furniture & Office"


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
    run = make_run(settings, policy_path, noop_teacher_url, "noop")
    topics_for(run)
    proc = worker(run)
    bad = _bad_events()
    started = time.monotonic()
    counts = replay(_write_replay_file(tmp_path, bad), run.settings, speed=None)
    assert counts.produced == SLICE + len(bad) and counts.delivery_errors == 0

    expected = _expected_items(policy)
    total = sum(expected.values())
    raw = consume(run.settings, run.topics["judgments"], lambda v: len(v) >= total, timeout=120)
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
        json.loads(v) for v in consume(run.settings, run.topics["dead_letters"], lambda v: len(v) >= 5, 30)
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
