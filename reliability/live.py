"""The live-loop harness shared by the reliability checks.

A check runs the real loop — ``evalloop worker`` as a subprocess, a teacher reached over HTTP,
Kafka and Redis — on run-specific topics, consumer group and Redis prefix. This module holds
what the checks share: the test policy, the run's names, settings and worker environment, the
worker process (:class:`LoopRun` and :class:`Worker` for the crash/restart checks of
:mod:`reliability.harness`; :class:`LiveRun` and :func:`live_run` for :mod:`reliability.faults`,
:mod:`reliability.live_fuzz` and :mod:`reliability.soak`), and fresh events. Producing to and
reading from a run (topics, lag, windows, logged counters) is in :mod:`reliability.live_io`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka.cimpl import NewTopic

from schemas.policy import Policy, load_policy
from schemas.settings import Settings, load_settings
from streams.status import redis_from_settings
from streams.window_store import WindowStore

ROOT = Path(__file__).resolve().parents[1]
EVENTS = ROOT / "data" / "wands" / "events.jsonl"
STAGES = ("events", "samples", "judgments", "alerts", "dead_letters")
PARTITIONS = {"events": 2, "samples": 2, "judgments": 2, "alerts": 1, "dead_letters": 1}
#: Items judged per event in the fault, fuzz and soak runs: small, so a loaded 2-core box keeps up.
ITEMS_PER_EVENT = 3
#: How every check starts the worker: ``evalloop worker`` as its own process, as in production.
WORKER_COMMAND = (sys.executable, "-m", "evalloop.cli", "worker", "--loglevel", "info")


def log(message: str) -> None:
    """Progress line on stderr (stdout carries the figures)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- policy


def bundled_policy(rate: float) -> dict[str, Any]:
    """The bundled policy document with every category sampled at ``rate``, without golden
    canaries (the checks here count production pairs exactly; docs/canaries.md has their own)."""
    doc: dict[str, Any] = yaml.safe_load(
        (ROOT / "policies" / "product-search.yaml").read_text(encoding="utf-8")
    )
    doc.pop("canaries", None)
    doc["alerts"] = [rule for rule in doc["alerts"] if rule.get("kind") != "teacher_health"]
    doc["sampling"]["default_rate"] = rate
    for category in doc["categories"]:
        category.pop("sample_rate", None)
    return doc


def write_policy(directory: Path, *, rate: float = 1.0, items: int = ITEMS_PER_EVENT) -> Path:
    """The bundled policy with every category sampled at ``rate`` and ``items`` items per event."""
    doc = bundled_policy(rate)
    doc["sampling"]["max_items_per_event"] = items
    path = directory / "policy.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- run names and settings


@dataclass(frozen=True)
class RunNames:
    """A run's id and what is named after it: topics, Redis key prefix, consumer group."""

    run_id: str
    topics: dict[str, str]
    prefix: str
    app_id: str


def run_names(tag: str) -> RunNames:
    """Fresh names for a run tagged ``tag`` (nothing is created)."""
    run_id = f"{tag}-{uuid.uuid4().hex[:8]}"
    topics = {stage: f"evalloop.rel.{run_id}.{stage}" for stage in STAGES}
    return RunNames(run_id, topics, f"evalloop-rel:{run_id}", f"evalloop-rel-{run_id}")


def common_env(names: RunNames, policy_path: Path, teacher_url: str) -> dict[str, str]:
    """Worker environment every check sets: policy, Redis prefix, group, teacher, stream knobs."""
    return {
        "EVALLOOP_POLICY_FILE": str(policy_path),
        "EVALLOOP_REDIS__KEY_PREFIX": names.prefix,
        "EVALLOOP_STREAM_APP_ID": names.app_id,
        "EVALLOOP_STREAM_TEACHER_URL": teacher_url,
        "EVALLOOP_STREAM_ALLOWED_LATENESS_S": "60",
        "EVALLOOP_STREAM_AGGREGATE_WITHIN_S": "0.2",
        "OPENBLAS_NUM_THREADS": "1",
    }


def topic_env(topics: dict[str, str], partitions: dict[str, int] | None = None) -> dict[str, str]:
    """The ``EVALLOOP_TOPICS__*`` variables naming the run's topics and their partitions."""
    counts = partitions or PARTITIONS
    env: dict[str, str] = {}
    for stage, name in topics.items():
        env[f"EVALLOOP_TOPICS__{stage.upper()}__NAME"] = name
        env[f"EVALLOOP_TOPICS__{stage.upper()}__PARTITIONS"] = str(counts[stage])
    return env


def run_settings(
    base: Settings, names: RunNames, policy_path: Path, partitions: dict[str, int] | None = None
) -> Settings:
    """``base`` with the run's topics, Redis prefix and policy (what the worker sees)."""
    counts = partitions or PARTITIONS
    specs = {s: {"name": names.topics[s], "partitions": counts[s]} for s in STAGES}
    return base.model_copy(
        update={
            "topics": base.topics.model_validate(specs),
            "redis": base.redis.model_copy(update={"key_prefix": names.prefix}),
            "policy_file": policy_path,
        }
    )


def drop_topics(settings: Settings, names: list[str]) -> None:
    """Delete the topics ``names``; a deletion that fails or times out (30 s) is ignored."""
    from infra.kafka_server import admin_client

    admin = admin_client(settings)  # keep a reference: a collected client fails its futures
    for future in admin.delete_topics(names, operation_timeout=30).values():
        with contextlib.suppress(Exception):
            future.result(timeout=30)


# --------------------------------------------------------------------------- worker subprocess


@dataclass(frozen=True)
class LoopRun:
    """One isolated loop: settings (as the worker sees them) and the env that gives them to it."""

    run_id: str
    settings: Settings
    env: dict[str, str]


def terminate(proc: subprocess.Popen[bytes] | None, timeout_s: float, kill_wait_s: float | None) -> None:
    """SIGTERM (Faust commits and leaves the group), SIGKILL if it hangs; waits until gone.

    ``kill_wait_s`` bounds the wait after SIGKILL (None: wait as long as it takes).
    """
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(kill_wait_s)


class Worker:
    """``evalloop worker`` as a subprocess that can be killed (SIGKILL) and started again."""

    def __init__(self, run: LoopRun, log_dir: Path) -> None:
        self.run = run
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0

    def start(self) -> None:
        """Start a fresh worker process (same consumer group: it resumes at the committed offsets)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_file = (self.log_dir / f"worker-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(
            list(WORKER_COMMAND),
            cwd=ROOT,
            env={**os.environ, **self.run.env},
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log_file.close()
        self.starts += 1

    def wait_ready(self, timeout_s: float) -> bool:
        """Until the current process logs Faust's "Worker ready" (partitions assigned) or dies."""
        path = self.log_dir / f"worker-{self.starts - 1}.log"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.alive():
            if b"Worker ready" in path.read_bytes():
                return True
            time.sleep(0.2)
        return False

    def alive(self) -> bool:
        """Whether the current process runs."""
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        """SIGKILL: no shutdown hooks, no offset commit, no leaving the group — a real crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
            self.kills += 1

    def ensure_running(self) -> bool:
        """Restart the worker if it exited on its own (what a supervisor would do); True if it did."""
        if self.proc is not None and self.proc.poll() is not None:
            log(f"worker exited with {self.proc.returncode}; restarting it")
            self.start()
            return True
        return False

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (Faust commits and leaves the group), SIGKILL if it hangs; waits until gone."""
        terminate(self.proc, timeout_s, kill_wait_s=30)


# --------------------------------------------------------------------------- live runs


@dataclass
class LiveRun:
    """One isolated loop: topics, consumer group and Redis prefix of its own, and its worker."""

    run_id: str
    settings: Settings
    env: dict[str, str]
    topics: dict[str, str]
    policy: Policy
    workdir: Path
    worker: subprocess.Popen[bytes] | None = None
    partitions: dict[str, int] = field(default_factory=lambda: dict(PARTITIONS))

    @property
    def group(self) -> str:
        """The worker's Kafka consumer group (Faust's app id)."""
        return self.env["EVALLOOP_STREAM_APP_ID"]

    @property
    def log_path(self) -> Path:
        return self.workdir / "worker.log"


@dataclass(frozen=True)
class RunLayout:
    """What a run may choose beyond the defaults: partitions per stage and its own policy file."""

    partitions: dict[str, int] = field(default_factory=lambda: dict(PARTITIONS))
    policy_path: Path | None = None


def make_live_run(
    tag: str,
    teacher_url: str,
    workdir: Path,
    extra_env: dict[str, str] | None = None,
    layout: RunLayout | None = None,
) -> LiveRun:
    """A run's names and worker environment (nothing is created yet)."""
    layout = layout or RunLayout()
    names = run_names(tag)
    policy_path = layout.policy_path or write_policy(workdir)
    env = {
        **common_env(names, policy_path, teacher_url),
        "EVALLOOP_STREAM_LOG_INTERVAL_S": "1",
        **(extra_env or {}),
    }
    env.update(topic_env(names.topics, layout.partitions))
    settings = run_settings(load_settings(), names, policy_path, layout.partitions)
    policy = load_policy(policy_path)
    return LiveRun(names.run_id, settings, env, names.topics, policy, workdir, None, dict(layout.partitions))


def create_topics(run: LiveRun) -> None:
    """Create the run's topics (the worker never declares topics itself)."""
    counts = run.partitions
    new = [NewTopic(run.topics[s], num_partitions=counts[s], replication_factor=1) for s in STAGES]
    from infra.kafka_server import admin_client

    admin = admin_client(run.settings)  # keep a reference: a collected client fails its futures
    for future in admin.create_topics(new).values():
        future.result(timeout=30)


def start_worker(run: LiveRun) -> subprocess.Popen[bytes]:
    """``evalloop worker`` as its own process, as in production; output to ``run.log_path``."""
    log = run.log_path.open("wb")
    env = {**os.environ, **run.env, "PYTHONUNBUFFERED": "1"}
    run.worker = subprocess.Popen(
        list(WORKER_COMMAND), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    return run.worker


def stop_worker(run: LiveRun) -> None:
    """SIGTERM (Faust leaves the group cleanly), SIGKILL if it hangs."""
    terminate(run.worker, timeout_s=20, kill_wait_s=None)


#: Worker logs are kept here after a run (the run's own directory may be temporary).
LOG_DIR = Path(tempfile.gettempdir()) / "evalloop-rel-logs"


def cleanup(run: LiveRun) -> None:
    """Stop the worker, keep its log, delete the run's topics and Redis keys (best effort)."""
    stop_worker(run)
    with contextlib.suppress(OSError):
        LOG_DIR.mkdir(exist_ok=True)
        (LOG_DIR / f"{run.run_id}.log").write_bytes(run.log_path.read_bytes())
    with contextlib.suppress(Exception):
        WindowStore(redis_from_settings(run.settings), run.settings.redis.key_prefix).clear()
    drop_topics(run.settings, list(run.topics.values()))


@contextlib.contextmanager
def live_run(
    tag: str,
    teacher_url: str,
    extra_env: dict[str, str] | None = None,
    workdir: Path | None = None,
    layout: RunLayout | None = None,
) -> Iterator[LiveRun]:
    """Create topics, start the worker, yield the run; stop and delete everything afterwards."""
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="evalloop-rel-")))
        run = make_live_run(tag, teacher_url, workdir, extra_env, layout)
        create_topics(run)
        try:
            start_worker(run)
            yield run
        finally:
            cleanup(run)


# --------------------------------------------------------------------------- events


def wait_until(check: Callable[[], bool], timeout_s: float, every_s: float = 0.2) -> bool:
    """Poll ``check`` until true or ``timeout_s`` passes; returns the last result."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every_s)
    return check()


class EventFactory:
    """Valid events built from the bundled WANDS day with fresh ids and times (now, UTC)."""

    def __init__(self, tag: str, limit: int = 300) -> None:
        with EVENTS.open("rb") as lines:
            self._docs = [json.loads(line) for _, line in zip(range(limit), lines, strict=False)]
        self._tag = tag
        self._count = 0

    def doc(self, event_time: datetime | None = None) -> dict[str, Any]:
        """A fresh event document."""
        doc: dict[str, Any] = copy.deepcopy(self._docs[self._count % len(self._docs)])
        self._count += 1
        doc["event_id"] = f"{self._tag}-{self._count:07d}"
        when = event_time or datetime.now(UTC)
        doc["event_time"] = when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return doc

    @staticmethod
    def encode(doc: dict[str, Any]) -> tuple[bytes, bytes]:
        """(key, value) as the producer sends them: keyed by event id, compact JSON."""
        value = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
        return str(doc["event_id"]).encode(), value

    def record(self, event_time: datetime | None = None) -> tuple[str, tuple[bytes, bytes]]:
        """A fresh event's id and its Kafka record."""
        doc = self.doc(event_time)
        return str(doc["event_id"]), self.encode(doc)


def expected_items(doc: dict[str, Any], policy: Policy) -> int:
    return min(len(doc["items"]), policy.sampling.max_items_per_event)
