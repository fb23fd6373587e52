"""The worker against real Kafka and Redis when something is wrong at start-up or in the log:
a teacher of another policy, a teacher or Redis that is away, and a record batch the worker's
Kafka client cannot read (a codec it lacks), which stops it with one line naming the offsets
and the `evalloop offsets skip` command that moves past them, dead-lettered."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from confluent_kafka import Producer

from reliability.harness import noop_teacher_server
from reliability.live import EventFactory, LiveRun, create_topics, drop_topics, make_live_run, wait_until
from reliability.live_io import TopicReader
from schemas.judgments import Judgment
from schemas.policy import load_policy
from streams.services import librdkafka_logger

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _worker(
    run: LiveRun, extra: dict[str, str], args: tuple[str, ...] = (), timeout: float = 60
) -> tuple[int, str]:
    env = {**os.environ, **run.env, **extra, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "evalloop.cli", "worker", "--loglevel", "warning", *args]
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    return done.returncode, done.stderr


@pytest.fixture
def run(tmp_path: Path, kafka_bootstrap: str) -> Iterator[LiveRun]:
    policy = load_policy(ROOT / "policies" / "product-search.yaml")
    server = noop_teacher_server(policy)
    live = make_live_run("startup", f"http://127.0.0.1:{server.server_address[1]}/teacher", tmp_path)
    create_topics(live)
    yield live
    server.shutdown()
    drop_topics(live.settings, list(live.topics.values()))


def _policy_variant(tmp_path: Path, **changes: object) -> Path:
    doc = yaml.safe_load((ROOT / "policies" / "product-search.yaml").read_text(encoding="utf-8"))
    doc.update(changes)
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return path


def test_a_teacher_of_another_policy_is_refused_in_one_line(run: LiveRun, tmp_path: Path) -> None:
    bumped = _policy_variant(tmp_path, version="product-search-2026.12.1")
    code, err = _worker(run, {"EVALLOOP_POLICY_FILE": str(bumped)})
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "product-search-2026.11.2" in lines[0] and "--allow-policy-version-bump" in lines[0]
    renamed = _policy_variant(tmp_path, name="job-matching", version="job-matching-2026.12.1")
    code, err = _worker(run, {"EVALLOOP_POLICY_FILE": str(renamed)}, ("--allow-policy-version-bump",))
    assert code == 2 and "policy_name 'product-search'" in err and len(err.strip().splitlines()) == 1


def test_a_compatible_version_bump_starts_with_the_flag(run: LiveRun, tmp_path: Path) -> None:
    bumped = _policy_variant(tmp_path, version="product-search-2026.12.1")
    env = {**os.environ, **run.env, "EVALLOOP_POLICY_FILE": str(bumped), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "evalloop.cli", "worker", "--allow-policy-version-bump"]
    log = (tmp_path / "worker.log").open("wb")
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        assert wait_until(lambda: b"Worker ready" in (tmp_path / "worker.log").read_bytes(), 60)
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            {
                "EVALLOOP_STREAM_TEACHER_URL": "http://127.0.0.1:1/teacher",
                "EVALLOOP_STREAM_TEACHER_STARTUP_WAIT_S": "1",
            },
            "the teacher is not reachable at http://127.0.0.1:1/teacher",
        ),
        ({"EVALLOOP_REDIS__URL": "redis://127.0.0.1:1/0"}, "Redis is not reachable at redis://127.0.0.1:1/0"),
    ],
)
def test_a_service_that_is_away_at_start_is_one_line(
    run: LiveRun, extra: dict[str, str], expected: str
) -> None:
    code, err = _worker(run, extra)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and expected in lines[0], err


def _hide_codecs(directory: Path) -> str:
    """A module path where ``import cramjam`` fails: aiokafka then lacks snappy, lz4 and zstd."""
    directory.mkdir()
    (directory / "cramjam.py").write_text('raise ImportError("hidden by the test")\n', encoding="utf-8")
    return str(directory)


def test_an_unreadable_batch_stops_the_worker_with_the_skip_command(run: LiveRun, tmp_path: Path) -> None:
    hidden = {"PYTHONPATH": _hide_codecs(tmp_path / "nocodec")}
    factory = EventFactory("unreadable")
    topic, base = (
        run.topics["events"],
        {
            **run.settings.kafka.confluent_config(),
            "logger": librdkafka_logger(),
            "topic.metadata.refresh.interval.ms": -1,
        },
    )
    snappy = Producer({**base, "compression.type": "snappy"})
    key, unreadable = factory.encode(factory.doc())
    snappy.produce(topic, unreadable, key=key, partition=0)
    assert snappy.flush(30) == 0
    code, err = _worker(run, hidden, timeout=120)
    line = err.strip().splitlines()[-1]
    assert code == 3, err[-3000:]
    assert f"cannot read the record batch at {topic}[0] offsets 0..0" in line
    assert "Libraries for snappy" in line
    command = line.split("skip it, dead-lettered: ", 1)[1].split()
    assert command[:3] == ["evalloop", "offsets", "skip"]
    env = {**os.environ, **run.env}
    done = subprocess.run(
        [sys.executable, "-m", "evalloop.cli", *command[1:]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "1 record(s) dead-lettered" in done.stderr
    plain = Producer(base)
    later = [factory.encode(factory.doc()) for _ in range(3)]
    for key, value in later:
        plain.produce(topic, value, key=key, partition=0)
    assert plain.flush(30) == 0
    worker = subprocess.Popen(
        [sys.executable, "-m", "evalloop.cli", "worker"],
        cwd=ROOT,
        env={**env, **hidden},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    judgments, letters = (
        TopicReader(run.settings, run.topics["judgments"]),
        TopicReader(run.settings, run.topics["dead_letters"]),
    )
    try:
        wanted = {json.loads(v)["event_id"] for _, v in later}
        assert wait_until(
            lambda: {Judgment.model_validate_json(v).event_id for v in judgments.poll(0.5)} >= wanted, 90
        )
        assert worker.poll() is None
        (letter,) = [json.loads(v) for v in letters.poll(1.0)]
        assert letter["reason"] == "skipped" and letter["offset"] == 0 and letter["partition"] == 0
        assert base64.b64decode(letter["original_b64"]) == unreadable  # skipped, not lost
    finally:
        worker.terminate()
        worker.wait(30)
        judgments.close()
        letters.close()
