"""Teacher faults through the live loop: the real ``evalloop worker`` against a faulty teacher.

The worker runs as a subprocess on run-specific topics, consumer group and Redis prefix, with
``EVALLOOP_STREAM_TEACHER_URL`` pointing at ``reliability.fault_teacher`` on 127.0.0.1. The suite:

1. **one fault at a time** (timeout, 429, 500, 503, malformed JSON, wrong count, grade outside the
   schema, grade off the policy scale, unknown failure mode, empty rationale): one event is
   produced, and all of its items must come back as error judgments whose reason names the fault;
   the fault server counts the attempts (retries) and their spacing (backoff). After each fault a
   healthy event must be judged ok again.
2. **a transient fault**: 503 for two attempts, then healthy: the retries absorb it (ok judgments).
3. **an outage**: the server is stopped (connection refused) while events keep arriving; the
   breaker opens and the sampler sheds (``shed`` counter) instead of queueing samples, so the
   samples topic's backlog stays flat; the server comes back on the same port, the breaker
   half-opens, the probe succeeds and ok judgments resume.
4. **windows**: every error judgment is in the Redis windows' ``err`` counters, every ok one in
   ``n``: errors are counted apart from quality.

This module also holds the live-loop harness (``LiveRun``, ``TopicTail``, ``EventFactory``, lag and
counter readers) that ``reliability.live_fuzz`` and ``reliability.soak`` reuse.

    python -m reliability.faults [--json]
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import redis
import yaml
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from reliability.fault_teacher import MODES, FaultTeacherServer, Mode
from schemas.judgments import Judgment
from schemas.policy import Policy, load_policy
from schemas.settings import Settings, load_settings
from streams.status import redis_from_settings
from streams.window_store import WindowStore

ROOT = Path(__file__).resolve().parents[1]
EVENTS_FILE = ROOT / "data" / "wands" / "events.jsonl"
STAGES = ("events", "samples", "judgments", "alerts", "dead_letters")
PARTITIONS = {"events": 2, "samples": 2, "judgments": 2, "alerts": 1, "dead_letters": 1}
#: Items judged per event in these runs: small, so a loaded 2-core box keeps up.
ITEMS_PER_EVENT = 3


# --------------------------------------------------------------------------- harness


def write_policy(directory: Path, *, rate: float = 1.0, items: int = ITEMS_PER_EVENT) -> Path:
    """The bundled policy with every category sampled at ``rate`` and ``items`` items per event."""
    doc = yaml.safe_load((ROOT / "policies" / "product-search.yaml").read_text(encoding="utf-8"))
    doc["sampling"]["default_rate"] = rate
    doc["sampling"]["max_items_per_event"] = items
    for category in doc["categories"]:
        category.pop("sample_rate", None)
    path = directory / "policy.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return path


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

    @property
    def group(self) -> str:
        """The worker's Kafka consumer group (Faust's app id)."""
        return self.env["EVALLOOP_STREAM_APP_ID"]

    @property
    def log_path(self) -> Path:
        return self.workdir / "worker.log"


def _run_settings(base: Settings, topics: dict[str, str], prefix: str, policy_path: Path) -> Settings:
    specs = {s: {"name": topics[s], "partitions": PARTITIONS[s]} for s in STAGES}
    return base.model_copy(
        update={
            "topics": base.topics.model_validate(specs),
            "redis": base.redis.model_copy(update={"key_prefix": prefix}),
            "policy_file": policy_path,
        }
    )


def make_run(tag: str, teacher_url: str, workdir: Path, extra_env: dict[str, str] | None = None) -> LiveRun:
    """A run's names and worker environment (nothing is created yet)."""
    run_id = f"{tag}-{uuid.uuid4().hex[:8]}"
    topics = {stage: f"evalloop.rel.{run_id}.{stage}" for stage in STAGES}
    prefix = f"evalloop-rel:{run_id}"
    policy_path = write_policy(workdir)
    env = {
        "EVALLOOP_POLICY_FILE": str(policy_path),
        "EVALLOOP_REDIS__KEY_PREFIX": prefix,
        "EVALLOOP_STREAM_APP_ID": f"evalloop-rel-{run_id}",
        "EVALLOOP_STREAM_TEACHER_URL": teacher_url,
        "EVALLOOP_STREAM_ALLOWED_LATENESS_S": "60",
        "EVALLOOP_STREAM_AGGREGATE_WITHIN_S": "0.2",
        "EVALLOOP_STREAM_LOG_INTERVAL_S": "1",
        "OPENBLAS_NUM_THREADS": "1",
        **(extra_env or {}),
    }
    for stage, name in topics.items():
        env[f"EVALLOOP_TOPICS__{stage.upper()}__NAME"] = name
        env[f"EVALLOOP_TOPICS__{stage.upper()}__PARTITIONS"] = str(PARTITIONS[stage])
    settings = _run_settings(load_settings(), topics, prefix, policy_path)
    return LiveRun(run_id, settings, env, topics, load_policy(policy_path), workdir)


def admin_for(settings: Settings) -> AdminClient:
    return AdminClient(dict(settings.kafka.confluent_config()))


def create_topics(run: LiveRun) -> None:
    """Create the run's topics (the worker never declares topics itself)."""
    new = [NewTopic(run.topics[s], num_partitions=PARTITIONS[s], replication_factor=1) for s in STAGES]
    admin = admin_for(run.settings)  # keep a reference: a collected client fails its futures
    for future in admin.create_topics(new).values():
        future.result(timeout=30)


def start_worker(run: LiveRun) -> subprocess.Popen[bytes]:
    """``evalloop worker`` as its own process, as in production; output to ``run.log_path``."""
    log = run.log_path.open("wb")
    env = {**os.environ, **run.env, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "evalloop.cli", "worker", "--loglevel", "info"]
    run.worker = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    return run.worker


def stop_worker(run: LiveRun) -> None:
    """SIGTERM (Faust leaves the group cleanly), SIGKILL if it hangs."""
    proc = run.worker
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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
    admin = admin_for(run.settings)
    for future in admin.delete_topics(list(run.topics.values()), operation_timeout=30).values():
        with contextlib.suppress(Exception):
            future.result(timeout=30)


@contextlib.contextmanager
def live_run(
    tag: str, teacher_url: str, extra_env: dict[str, str] | None = None, workdir: Path | None = None
) -> Iterator[LiveRun]:
    """Create topics, start the worker, yield the run; stop and delete everything afterwards."""
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="evalloop-rel-")))
        run = make_run(tag, teacher_url, workdir, extra_env)
        create_topics(run)
        try:
            start_worker(run)
            yield run
        finally:
            cleanup(run)


def make_producer(settings: Settings) -> Producer:
    # No compression: the worker's aiokafka cannot read lz4/snappy/zstd (docs/streaming.md).
    config: dict[str, Any] = dict(settings.kafka.confluent_config())
    config.update({"linger.ms": 5, "compression.type": "none", "acks": "all"})
    return Producer(config)


def produce(producer: Producer, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    """Send and wait for every delivery; raises if any failed (a lost input is a test failure)."""
    errors: list[str] = []

    def on_delivery(error: Any, _message: Any) -> None:
        if error is not None:
            errors.append(str(error))

    for key, value in records:
        producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
        producer.poll(0)
    producer.flush(60)
    if errors:
        raise RuntimeError(f"{len(errors)} deliveries failed: {errors[:3]}")


class TopicTail:
    """A background consumer that keeps every message of one topic (from the beginning)."""

    def __init__(self, settings: Settings, topic: str) -> None:
        config: dict[str, Any] = dict(settings.kafka.confluent_config())
        config.update(
            {
                "group.id": f"rel-tail-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "fetch.message.max.bytes": 2_000_000,
            }
        )
        self._consumer = Consumer(config)
        self._consumer.subscribe([topic])
        self.values: list[bytes] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"tail-{topic}")
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                message = self._consumer.poll(0.2)
                value = message.value() if message is not None and not message.error() else None
                if value is not None:
                    with self._lock:
                        self.values.append(value)
        finally:
            self._consumer.close()

    def snapshot(self) -> list[bytes]:
        with self._lock:
            return list(self.values)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def judgments_of(tail: TopicTail) -> list[Judgment]:
    return [Judgment.model_validate_json(v) for v in tail.snapshot()]


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
        with EVENTS_FILE.open("rb") as lines:
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


def worker_counters(log_path: Path) -> dict[str, int]:
    """The latest ``evalloop counters {...}`` line the worker logged (every log interval)."""
    marker = "evalloop counters "
    latest: dict[str, int] = {}
    with contextlib.suppress(FileNotFoundError), log_path.open("rb") as log:
        for line in log:
            text = line.decode("utf-8", "replace")
            if marker in text:
                with contextlib.suppress(ValueError, SyntaxError):
                    latest = ast.literal_eval(text.split(marker, 1)[1].strip())
    return latest


def end_offsets(settings: Settings, topics: list[str]) -> dict[str, int]:
    """Messages ever written per topic (sum of high watermarks over partitions)."""
    config = {**settings.kafka.confluent_config(), "group.id": f"rel-offsets-{uuid.uuid4().hex[:6]}"}
    consumer = Consumer(config)
    try:
        totals: dict[str, int] = {}
        for topic in topics:
            parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            highs = [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts]
            totals[topic] = sum(highs)
        return totals
    finally:
        consumer.close()


def group_lag(settings: Settings, group: str, topics: list[str]) -> dict[str, int]:
    """Per topic: high watermark − the group's committed offset, summed over partitions."""
    admin = admin_for(settings)
    request = [ConsumerGroupTopicPartitions(group)]
    committed: dict[tuple[str, int], int] = {}
    for future in admin.list_consumer_group_offsets(request).values():
        for tp in future.result(timeout=10).topic_partitions or []:
            committed[(tp.topic, tp.partition)] = max(tp.offset, 0)
    config = {**settings.kafka.confluent_config(), "group.id": f"rel-lag-{uuid.uuid4().hex[:6]}"}
    consumer = Consumer(config)
    try:
        lag: dict[str, int] = {}
        for topic in topics:
            parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            total = 0
            for p in parts:
                high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                total += max(0, high - committed.get((topic, p), 0))
            lag[topic] = total
        return lag
    finally:
        consumer.close()


def window_totals(run: LiveRun) -> tuple[float, float]:
    """(ok ``n``, error ``err``) summed over the run's categories for the last day."""
    client: redis.Redis = redis_from_settings(run.settings)
    store = WindowStore(client, run.settings.redis.key_prefix)
    end = time.time() + 600
    n = err = 0.0
    for category in store.categories():
        stats = store.read(category, 86400, end)
        n += stats.counters.get("n", 0.0)
        err += stats.counters.get("err", 0.0)
    return n, err


# --------------------------------------------------------------------------- the fault suite

#: Worker knobs for the suite: a short timeout and cool-down so faults take seconds, not minutes.
FAULT_ENV = {
    "EVALLOOP_STREAM_TEACHER_TIMEOUT_S": "1.0",
    "EVALLOOP_STREAM_TEACHER_RETRIES": "2",
    "EVALLOOP_STREAM_BREAKER_FAILURES": "5",
    "EVALLOOP_STREAM_BREAKER_COOLDOWN_S": "3",
}
TIMEOUT_DELAY_S = 2.5
RETRYABLE: frozenset[Mode] = frozenset({"timeout", "http_429", "http_500", "http_503"})
#: What the error judgment's reason must contain, per fault (case-insensitive).
EXPECTED_REASON: dict[Mode, str] = {
    "timeout": "timeout",
    "http_429": "http 429",
    "http_500": "http 500",
    "http_503": "http 503",
    "malformed_json": "bad teacher response",
    "wrong_count": "answered 2 judgments for 3 requests",
    "grade_over_schema": "bad teacher response",
    "out_of_scale": "off-policy teacher verdict: grade 7 is not on the policy scale",
    "unknown_mode": "off-policy teacher verdict: unknown failure modes",
    "empty_rationale": "off-policy teacher verdict: empty rationale",
}
FAULTS: tuple[Mode, ...] = tuple(m for m in MODES if m != "healthy")
Trace = list[int]


@dataclass
class FaultResult:
    """One fault's outcome."""

    fault: str
    judgments: int
    errors: int
    reason: str
    attempts: int
    min_gap_s: float | None
    recovered: bool
    ok: bool


@dataclass
class OutageResult:
    """The teacher-down phase: shedding while the breaker is open, then recovery."""

    seconds: float
    events: int
    shed: int
    sampled: int
    samples_written: int
    max_samples_lag: int
    samples_lag_trace: list[int]
    shed_trace: list[int]
    breaker_opens: int
    error_reasons: dict[str, int]
    recovery_s: float | None
    ok_after_recovery: int
    ok: bool


@dataclass
class FaultReport:
    """Everything the suite measured."""

    faults: list[FaultResult] = field(default_factory=list)
    transient: FaultResult | None = None
    outage: OutageResult | None = None
    retry_after_s: int = 0
    retry_after_gap_s: float | None = None
    judgments_ok: int = 0
    judgments_error: int = 0
    window_n: float = 0.0
    window_err: float = 0.0
    worker_pid: int = 0
    worker_alive: bool = False
    worker_counters: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        outage_ok = self.outage is not None and self.outage.ok
        transient_ok = self.transient is not None and self.transient.ok
        windows_ok = (self.window_n, self.window_err) == (self.judgments_ok, self.judgments_error)
        faults_ok = all(f.ok for f in self.faults) and len(self.faults) == len(FAULTS)
        return faults_ok and transient_ok and outage_ok and windows_ok and self.worker_alive


class FaultSuite:
    """Drives one live run through every fault; each step waits on what it produced."""

    def __init__(self, run: LiveRun, server: FaultTeacherServer, wait_s: float = 90.0) -> None:
        self.run = run
        self.server = server
        self.wait_s = wait_s
        self.events = EventFactory(run.run_id)
        self.producer = make_producer(run.settings)
        self.tail = TopicTail(run.settings, run.topics["judgments"])
        self.docs: dict[str, dict[str, Any]] = {}

    def close(self) -> None:
        self.tail.close()

    # -- producing and waiting

    def send(self, count: int = 1) -> list[str]:
        records: list[tuple[bytes | None, bytes]] = []
        ids: list[str] = []
        for _ in range(count):
            doc = self.events.doc()
            key, value = self.events.encode(doc)
            self.docs[doc["event_id"]] = doc
            ids.append(doc["event_id"])
            records.append((key, value))
        produce(self.producer, self.run.topics["events"], records)
        return ids

    def judged(self, event_ids: list[str]) -> dict[str, list[Judgment]]:
        wanted = set(event_ids)
        found: dict[str, dict[str, Judgment]] = {e: {} for e in event_ids}
        for judgment in judgments_of(self.tail):
            if judgment.event_id in wanted:
                found[judgment.event_id][judgment.judgment_id] = judgment
        return {e: list(js.values()) for e, js in found.items()}

    def wait_judged(self, event_ids: list[str], timeout_s: float | None = None) -> dict[str, list[Judgment]]:
        """Judgments per event once every event has all its items judged (or the timeout)."""
        need = {e: expected_items(self.docs[e], self.run.policy) for e in event_ids}

        def complete() -> bool:
            got = self.judged(event_ids)
            return all(len(got[e]) >= need[e] for e in event_ids)

        wait_until(complete, timeout_s or self.wait_s)
        return self.judged(event_ids)

    def recover(self, timeout_s: float = 60.0) -> bool:
        """Healthy mode; send an event about every second until one is judged ok in full (events
        shed while the breaker is still open are never judged, so keep sending)."""
        self.server.state.set_mode("healthy")
        sent: list[str] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            sent += self.send()
            if wait_until(partial(self._any_ok, sent), 1.0, every_s=0.1):
                return True
        return False

    def _any_ok(self, event_ids: list[str]) -> bool:
        for event_id, judgments in self.judged(event_ids).items():
            want = expected_items(self.docs[event_id], self.run.policy)
            if len(judgments) >= want and all(j.status == "ok" for j in judgments):
                return True
        return False

    # -- phases

    def fault(self, mode: Mode, fail_times: int | None = None) -> FaultResult:
        """One event under ``mode``: its judgments, the attempts the server saw, their spacing."""
        since = time.monotonic()
        self.server.state.set_mode(mode, fail_times)
        (event_id,) = self.send()
        judgments = self.wait_judged([event_id])[event_id]
        # Only this event's attempts: events still in flight from the previous step may be judged
        # (and fail) under this mode too; they are counted in the totals, not here.
        hits = [h.at for h in self.server.state.hits if h.at >= since and event_id in h.event_ids]
        gaps = [b - a for a, b in itertools.pairwise(hits)]
        recovered = self.recover()
        errors = [j for j in judgments if j.status == "error"]
        reason = errors[0].error or "" if errors else ""
        return FaultResult(
            fault=mode if fail_times is None else f"{mode}x{fail_times}",
            judgments=len(judgments),
            errors=len(errors),
            reason=reason[:160],
            attempts=len(hits),
            min_gap_s=round(min(gaps), 3) if gaps else None,
            recovered=recovered,
            ok=self._fault_ok(mode, fail_times, judgments, errors, reason, len(hits), recovered),
        )

    def _fault_ok(
        self,
        mode: Mode,
        fail_times: int | None,
        judgments: list[Judgment],
        errors: list[Judgment],
        reason: str,
        attempts: int,
        recovered: bool,
    ) -> bool:
        retries = int(FAULT_ENV["EVALLOOP_STREAM_TEACHER_RETRIES"])
        if fail_times is not None:  # transient: the retries absorb it
            return len(judgments) == ITEMS_PER_EVENT and not errors and attempts == fail_times + 1
        want_attempts = retries + 1 if mode in RETRYABLE else 1
        return (
            len(judgments) == ITEMS_PER_EVENT
            and len(errors) == len(judgments)
            and all(EXPECTED_REASON[mode] in (j.error or "").lower() for j in errors)
            and attempts == want_attempts
            and recovered
        )

    def outage(self, seconds: float = 15.0, rate: float = 10.0) -> OutageResult:
        """Stop the teacher while events arrive at ``rate``/s; then restart it and time recovery."""
        samples = self.run.topics["samples"]
        before = worker_counters(self.run.log_path)
        written_before = end_offsets(self.run.settings, [samples])[samples]
        self.server.stop()
        outage_ids, trace, shed_trace = self._steady(seconds, rate, before.get("shed", 0))
        written = end_offsets(self.run.settings, [samples])[samples] - written_before
        self.server.restart()
        restarted = time.monotonic()
        recovered = self.recover(timeout_s=60.0)
        recovery_s = time.monotonic() - restarted if recovered else None
        after_ids = self.send(5)
        after = self.wait_judged(after_ids)
        ok_after = sum(1 for js in after.values() for j in js if j.status == "ok")
        counters = worker_counters(self.run.log_path)
        shed = counters.get("shed", 0) - before.get("shed", 0)
        sampled = counters.get("sampled", 0) - before.get("sampled", 0)
        reasons = Counter(
            _reason_kind(j.error or "") for js in self.judged(outage_ids).values() for j in js if j.error
        )
        result = OutageResult(
            seconds=seconds,
            events=len(outage_ids),
            shed=shed,
            sampled=sampled,
            samples_written=written,
            max_samples_lag=max(trace, default=0),
            samples_lag_trace=trace,
            shed_trace=shed_trace,
            breaker_opens=breaker_opens(self.run.log_path),
            error_reasons=dict(reasons),
            recovery_s=round(recovery_s, 1) if recovery_s is not None else None,
            ok_after_recovery=ok_after,
            ok=False,
        )
        result.ok = _outage_ok(result, after_ids, self.docs, self.run.policy)
        return result

    def _steady(self, seconds: float, rate: float, shed_before: int) -> tuple[list[str], Trace, Trace]:
        """Send at ``rate``/s for ``seconds``; every second, the samples lag and the shed count."""
        ids: list[str] = []
        lag_trace: list[int] = []
        shed_trace: list[int] = []
        samples = self.run.topics["samples"]
        start = time.monotonic()
        next_probe = start
        while (now := time.monotonic()) - start < seconds:
            ids += self.send()
            if now >= next_probe:
                lag_trace.append(group_lag(self.run.settings, self.run.group, [samples])[samples])
                shed_trace.append(worker_counters(self.run.log_path).get("shed", 0) - shed_before)
                next_probe += 1.0
            time.sleep(max(0.0, start + len(ids) / rate - time.monotonic()))
        return ids, lag_trace, shed_trace

    def retry_after_gap(self) -> float | None:
        """Seconds between a call's first 429 and its retry: does the client honour Retry-After?"""
        calls: dict[frozenset[str], list[float]] = {}
        for hit in self.server.state.hits_in("http_429"):
            calls.setdefault(hit.event_ids, []).append(hit.at)
        gaps = [times[1] - times[0] for times in calls.values() if len(times) >= 2]
        return round(min(gaps), 3) if gaps else None


def breaker_opens(log_path: Path) -> int:
    """How often the worker logged its circuit opening (closed/half-open → open)."""
    with contextlib.suppress(FileNotFoundError):
        return log_path.read_bytes().count(b"teacher circuit open after")
    return 0


def _reason_kind(error: str) -> str:
    """Group error texts: 'circuit open', 'ConnectError', 'HTTP 503', ... (first clause)."""
    text = error.removeprefix("teacher call failed: ")
    return text.split(":")[0][:40]


def _outage_ok(result: OutageResult, after_ids: list[str], docs: dict[str, Any], policy: Policy) -> bool:
    # Shedding, not queueing: most outage events are shed, and few samples reach the topic (those
    # before the breaker opened plus each half-open window's probes).
    sheds_most = result.shed >= 0.5 * result.events
    bounded = result.samples_written <= 0.5 * result.events and result.max_samples_lag <= 0.5 * result.events
    want = sum(expected_items(docs[e], policy) for e in after_ids)
    return sheds_most and bounded and result.recovery_s is not None and result.ok_after_recovery == want


def run_fault_suite(server: FaultTeacherServer, outage_s: float = 15.0) -> FaultReport:
    """The whole suite against a fresh live run; the server must be started (healthy)."""
    started = time.monotonic()
    report = FaultReport(retry_after_s=server.state.retry_after_s)
    server.state.delay_s = TIMEOUT_DELAY_S
    with live_run("faults", server.url, FAULT_ENV) as run:
        assert run.worker is not None
        report.worker_pid = run.worker.pid
        suite = FaultSuite(run, server)
        try:
            if not suite.recover(timeout_s=120.0):  # the worker is up and the loop works
                raise RuntimeError(f"the loop never judged a healthy event; see {run.log_path}")
            report.faults = [suite.fault(mode) for mode in FAULTS]
            report.transient = suite.fault("http_503", fail_times=2)
            report.retry_after_gap_s = suite.retry_after_gap()
            report.outage = suite.outage(seconds=outage_s)
            _final_counts(report, suite, run)
        finally:
            suite.close()
        report.worker_alive = run.worker.poll() is None
    report.seconds = round(time.monotonic() - started, 1)
    return report


def _final_counts(report: FaultReport, suite: FaultSuite, run: LiveRun) -> None:
    unique = {j.judgment_id: j for j in judgments_of(suite.tail)}
    report.judgments_ok = sum(1 for j in unique.values() if j.status == "ok")
    report.judgments_error = len(unique) - report.judgments_ok

    def windows_caught_up() -> bool:
        report.window_n, report.window_err = window_totals(run)
        return (report.window_n, report.window_err) == (report.judgments_ok, report.judgments_error)

    wait_until(windows_caught_up, 60.0, every_s=0.5)
    # The counters are logged every second: wait for the line that includes the last judgments.
    wait_until(lambda: worker_counters(run.log_path).get("judged_error", 0) >= report.judgments_error, 10.0)
    report.worker_counters = worker_counters(run.log_path)


def render(report: FaultReport) -> str:
    """A plain-text table of the suite's results."""
    lines = [f"{'fault':<20} {'judg':>4} {'err':>4} {'tries':>5} {'min gap s':>9} {'ok':>3}  reason"]
    for f in [*report.faults, *([report.transient] if report.transient else [])]:
        gap = f"{f.min_gap_s:.2f}" if f.min_gap_s is not None else "-"
        lines.append(
            f"{f.fault:<20} {f.judgments:>4} {f.errors:>4} {f.attempts:>5} {gap:>9} "
            f"{'yes' if f.ok else 'NO':>3}  {f.reason[:70]}"
        )
    if report.outage:
        o = report.outage
        lines.append(
            f"outage {o.seconds:.0f}s: {o.events} events, {o.shed} shed, {o.sampled} sampled, "
            f"{o.samples_written} samples written, max samples lag {o.max_samples_lag}, "
            f"breaker opened {o.breaker_opens}x, shed by second {o.shed_trace}, "
            f"errors {o.error_reasons}, recovered in {o.recovery_s}s, {o.ok_after_recovery} ok after"
        )
    lines.append(
        f"judgments ok/error {report.judgments_ok}/{report.judgments_error}; windows n/err "
        f"{report.window_n:g}/{report.window_err:g}; Retry-After {report.retry_after_s}s, client retried "
        f"after {report.retry_after_gap_s}s; worker pid {report.worker_pid} alive={report.worker_alive}; "
        f"{report.seconds}s; {'PASS' if report.ok else 'FAIL'}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the suite against the local services; exit 0 when every check held."""
    parser = argparse.ArgumentParser(description="Teacher faults through the live loop.")
    parser.add_argument("--outage-s", type=float, default=15.0)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    policy = load_policy(write_policy(Path(tempfile.mkdtemp(prefix="evalloop-rel-policy-"))))
    with FaultTeacherServer(policy) as server:
        report = run_fault_suite(server, args.outage_s)
    print(json.dumps(asdict(report), indent=2) if args.json else render(report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
