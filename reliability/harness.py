"""Shared machinery of the reliability checks (``reliability.crash``, ``reliability.restarts``).

A check runs the real loop — ``evalloop worker`` as a subprocess, a teacher reached over HTTP,
Kafka and Redis — on run-specific topics, consumer group and Redis prefix, breaks something on
purpose, waits until the loop has drained, and then compares what the loop stored with what it
should have stored:

* every sampled event has one distinct judgment per judged item on the judgments topic (the topic
  may hold redelivered duplicates: at-least-once; they are counted, raw vs distinct);
* every Redis window bucket equals a recomputation from the distinct judgments, field by field;
* no incident was announced twice on the alerts topic.

Nothing here sleeps for a fixed time to "let things settle": waits poll a condition with a
generous deadline, so a loaded machine makes a check slower, not flaky.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import redis
import yaml
from pydantic import ValidationError

from schemas.alerts import Alert
from schemas.judgments import Judgment
from schemas.policy import Policy
from schemas.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
EVENTS = ROOT / "data" / "wands" / "events.jsonl"
STAGES = ("events", "samples", "judgments", "alerts", "dead_letters")
PARTITIONS = {"events": 2, "samples": 2, "judgments": 2, "alerts": 1, "dead_letters": 1}
#: Producer delivery timeout: long enough to ride out a broker restart (librdkafka buffers).
PRODUCER_TIMEOUT_MS = 180_000


def log(message: str) -> None:
    """Progress line on stderr (stdout carries the figures)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- run set-up


@dataclass(frozen=True)
class LoopRun:
    """One isolated loop: settings (as the worker sees them) and the env that gives them to it."""

    run_id: str
    settings: Settings
    env: dict[str, str]


def write_test_policy(directory: Path) -> Path:
    """The bundled policy with every event sampled and rules that fire on the noop teacher.

    The noop teacher grades by hash, so ~40 % of items are filtered everywhere: the first rule
    (0.2) fires early in every busy category and stays firing (a re-page would show as a second
    firing of the same dedup key); the second (0.4, at the base rate) may fire and resolve.
    """
    doc = yaml.safe_load((ROOT / "policies" / "product-search.yaml").read_text(encoding="utf-8"))
    doc["sampling"]["default_rate"] = 1.0
    for category in doc["categories"]:
        category.pop("sample_rate", None)
    common = {"windows": [{"long": "2h", "short": "1h"}], "min_samples": 20, "resolve_for": "30m"}
    doc["alerts"] = [
        {
            "id": "filtered-low-bar",
            "signal": "filtered_share",
            "threshold": 0.2,
            "severity": "page",
            **common,
        },
        {
            "id": "filtered-base-rate",
            "signal": "filtered_share",
            "threshold": 0.4,
            "severity": "ticket",
            **common,
        },
    ]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "policy.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return path


def make_run(base: Settings, policy_path: Path, teacher_url: str, tag: str) -> LoopRun:
    """Run-specific topics, consumer group and Redis prefix on ``base``'s services."""
    run_id = f"{tag}-{uuid.uuid4().hex[:8]}"
    prefix = f"evalloop-rel:{run_id}"
    specs = {s: {"name": f"evalloop.rel.{run_id}.{s}", "partitions": PARTITIONS[s]} for s in STAGES}
    env = {
        "EVALLOOP_POLICY_FILE": str(policy_path),
        "EVALLOOP_STATE_DIR": str(base.state_dir),
        "EVALLOOP_KAFKA__BOOTSTRAP_SERVERS": base.kafka.bootstrap_servers,
        "EVALLOOP_REDIS__URL": base.redis.url,
        "EVALLOOP_REDIS__KEY_PREFIX": prefix,
        "EVALLOOP_STREAM_APP_ID": f"evalloop-rel-{run_id}",
        "EVALLOOP_STREAM_TEACHER_URL": teacher_url,
        "EVALLOOP_STREAM_ALLOWED_LATENESS_S": "60",
        # A replay squeezes ~13 h of event time into ~75 s: a few wall seconds of restart are hours
        # of event time, so keep the late-data cut-off out of the way of what is being measured.
        "EVALLOOP_STREAM_RETENTION_S": "86400",
        "EVALLOOP_STREAM_AGGREGATE_WITHIN_S": "0.2",
        "EVALLOOP_STREAM_LOG_INTERVAL_S": "5",
        # Kafka's minimum: a killed member's partitions are handed over after 6 s, not 10.
        "EVALLOOP_STREAM_BROKER_SESSION_TIMEOUT_S": "6",
        "EVALLOOP_STREAM_TEACHER_RETRIES": "6",
        "PYTHONUNBUFFERED": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }
    for stage, spec in specs.items():
        env[f"EVALLOOP_TOPICS__{stage.upper()}__NAME"] = str(spec["name"])
        env[f"EVALLOOP_TOPICS__{stage.upper()}__PARTITIONS"] = str(spec["partitions"])
    settings = base.model_copy(
        update={
            "topics": base.topics.model_validate(specs),
            "redis": base.redis.model_copy(update={"key_prefix": prefix}),
            "policy_file": policy_path,
        }
    )
    return LoopRun(run_id, settings, env)


def create_topics(settings: Settings) -> None:
    """Create the run's topics (infra's own helper: partitions and retention from the settings)."""
    from infra.local import ensure_topics

    ensure_topics(settings)


def delete_topics(settings: Settings) -> None:
    """Best-effort removal of the run's topics."""
    from infra.local import admin_client

    names = [spec.name for spec in settings.topics.all()]
    with contextlib.suppress(Exception):
        for future in admin_client(settings).delete_topics(names, operation_timeout=30).values():
            with contextlib.suppress(Exception):
                future.result(timeout=30)


def redis_for(settings: Settings) -> redis.Redis:
    """A client of the run's Redis."""
    from streams.status import redis_from_settings

    return redis_from_settings(settings)


# --------------------------------------------------------------------------- worker subprocess


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
        command = [sys.executable, "-m", "evalloop.cli", "worker", "--loglevel", "info"]
        self.proc = subprocess.Popen(
            command,
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
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)


# --------------------------------------------------------------------------- replay


def replay_lines(limit: int, offset: int = 0) -> list[bytes]:
    """``limit`` lines of the bundled WANDS day, starting at line ``offset``."""
    lines = [line.rstrip(b"\n") for line in EVENTS.open("rb") if line.strip()]
    return lines[offset : offset + limit]


def write_lines(path: Path, lines: Sequence[bytes]) -> Path:
    """Write ``lines`` as a JSONL file for ``streams.replay``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def pace_for(lines: Sequence[bytes], wall_s: float) -> float:
    """The replay speed that makes ``lines``' event-time span take ``wall_s`` wall seconds."""
    times = [json.loads(line)["event_time"] for line in lines]
    from streams.replay import parse_time

    span = (parse_time(times[-1]) - parse_time(times[0])).total_seconds()
    return max(span / max(wall_s, 1.0), 1.0)


def patient_producer(settings: Settings) -> Any:
    """The replay's idempotent producer, with a delivery timeout long enough for a broker restart."""
    from confluent_kafka import Producer

    config: dict[str, Any] = dict(settings.kafka.confluent_config())
    config.update(
        {
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": PRODUCER_TIMEOUT_MS,
            "reconnect.backoff.max.ms": 1000,
            # The restart check takes the broker away on purpose: keep librdkafka's per-attempt
            # connection errors out of the output (delivery errors are still counted).
            "log_level": 2,
        }
    )
    return Producer(config)


@dataclass
class ReplayJob:
    """A replay running in a thread; ``counts`` once done."""

    thread: threading.Thread
    done: threading.Event
    result: dict[str, Any] = field(default_factory=dict)

    def wait(self, timeout_s: float) -> dict[str, Any]:
        """Join the replay; raises if it did not finish in time or failed."""
        self.thread.join(timeout_s)
        if not self.done.is_set():
            raise TimeoutError(f"replay still running after {timeout_s:.0f}s")
        if "error" in self.result:
            raise RuntimeError(f"replay failed: {self.result['error']}")
        return self.result


def start_replay(path: Path, settings: Settings, speed: float | None) -> ReplayJob:
    """Replay ``path`` onto the run's events topic in a background thread."""
    from streams.replay import replay

    done = threading.Event()
    job = ReplayJob(threading.Thread(), done)

    def work() -> None:
        try:
            counts = replay(path, settings, speed=speed, producer=patient_producer(settings))
            job.result.update(counts.as_dict())
        except Exception as error:  # reported by wait()
            job.result["error"] = repr(error)
        finally:
            done.set()

    job.thread = threading.Thread(target=work, name="replay", daemon=True)
    job.thread.start()
    return job


# --------------------------------------------------------------------------- reading topics


class TopicReader:
    """Reads a topic from the beginning, incrementally, without a consumer group commit."""

    def __init__(self, settings: Settings, topic: str) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        config: dict[str, Any] = dict(settings.kafka.confluent_config())
        config.update(
            {
                "group.id": f"rel-reader-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "log_level": 2,
            }
        )
        self.consumer = Consumer(config)
        self.topic = topic
        partitions = self.consumer.list_topics(topic, timeout=30).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(partitions)])
        self.values: list[bytes] = []

    def poll(self, seconds: float) -> list[bytes]:
        """Read what arrives within ``seconds``; returns everything read so far."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for message in self.consumer.consume(500, timeout=0.2):
                value = message.value() if message.error() is None else None
                if value is not None:
                    self.values.append(value)
        return self.values

    def close(self) -> None:
        """Leave (nothing to commit)."""
        self.consumer.close()


def parse_judgments(raws: Sequence[bytes]) -> list[Judgment]:
    """Every judgment on the topic (duplicates kept; unparsable records skipped)."""
    out: list[Judgment] = []
    for raw in raws:
        with contextlib.suppress(ValidationError):
            out.append(Judgment.model_validate_json(raw))
    return out


def distinct(judgments: Sequence[Judgment]) -> list[Judgment]:
    """First occurrence of each judgment id."""
    seen: dict[str, Judgment] = {}
    for judgment in judgments:
        seen.setdefault(judgment.judgment_id, judgment)
    return list(seen.values())


def parse_alerts(raws: Sequence[bytes]) -> list[Alert]:
    """The alerts on the alerts topic, in topic order."""
    return [Alert.model_validate_json(raw) for raw in raws]


# --------------------------------------------------------------------------- checks


def expected_pairs(lines: Sequence[bytes], policy: Policy) -> dict[str, set[str]]:
    """Event id → the item ids the teacher must judge (top ``max_items_per_event`` by rank).

    The test policy samples every event, so every valid event is expected.
    """
    expected: dict[str, set[str]] = {}
    for line in lines:
        event = json.loads(line)
        items = sorted(event["items"], key=lambda item: item["rank"])[: policy.sampling.max_items_per_event]
        expected[event["event_id"]] = {str(item["item_id"]) for item in items}
    return expected


@dataclass
class JudgmentCheck:
    """How the judgments topic compares with the sampled events."""

    raw: int
    distinct: int
    errors: int
    missing_events: list[str]
    missing_pairs: int
    extra_pairs: int
    pairs_judged_twice: int

    @property
    def mismatches(self) -> int:
        """Anything lost, invented or judged twice under different ids."""
        return len(self.missing_events) + self.missing_pairs + self.extra_pairs + self.pairs_judged_twice


def check_judgments(judgments: Sequence[Judgment], expected: dict[str, set[str]]) -> JudgmentCheck:
    """Exactly one distinct judgment per expected (event, item); nothing else."""
    unique = distinct(judgments)
    per_pair = Counter((j.event_id, j.item_id) for j in unique)
    wanted = {(event, item) for event, items in expected.items() for item in items}
    judged_events = {event for event, _ in per_pair}
    return JudgmentCheck(
        raw=len(judgments),
        distinct=len(unique),
        errors=sum(1 for j in unique if j.status != "ok"),
        missing_events=sorted(set(expected) - judged_events),
        missing_pairs=len(wanted - set(per_pair)),
        extra_pairs=len(set(per_pair) - wanted),
        pairs_judged_twice=sum(1 for count in per_pair.values() if count > 1),
    )


def _stored_buckets(client: redis.Redis, prefix: str) -> dict[tuple[str, int], dict[str, float]]:
    buckets: dict[tuple[str, int], dict[str, float]] = {}
    for key in client.scan_iter(match=f"{prefix}:win:*", count=1000):
        text = key.decode() if isinstance(key, bytes) else str(key)
        category, _, start = text[len(prefix) + len(":win:") :].rpartition(":")
        raw = client.hgetall(key)
        buckets[(category, int(start))] = {
            (k.decode() if isinstance(k, bytes) else str(k)): float(v) for k, v in raw.items()
        }
    return buckets


def window_mismatches(
    client: redis.Redis, prefix: str, judgments: Sequence[Judgment], bucket_seconds: int = 300
) -> list[str]:
    """Every Redis bucket vs a recomputation from the distinct judgments, field by field."""
    from evalloop.backtest import BucketWindowStore

    again = BucketWindowStore(bucket_seconds)
    again.apply(distinct(judgments))
    stored = _stored_buckets(client, prefix)
    problems = [f"bucket {key} missing in Redis" for key in sorted(set(again.buckets) - set(stored))]
    problems += [f"bucket {key} not in the recomputation" for key in sorted(set(stored) - set(again.buckets))]
    for key in sorted(set(stored) & set(again.buckets)):
        live, want = stored[key], again.buckets[key]
        for name in sorted(set(live) | set(want)):
            if not math.isclose(live.get(name, 0.0), want.get(name, 0.0), rel_tol=1e-9, abs_tol=1e-9):
                problems.append(f"bucket {key} field {name}: redis {live.get(name)} != {want.get(name)}")
    return problems


def windows_total(client: redis.Redis, prefix: str) -> int:
    """Judgments counted in the Redis windows (ok + error) over all buckets."""
    buckets = _stored_buckets(client, prefix)
    return round(sum(b.get("n", 0.0) + b.get("err", 0.0) for b in buckets.values()))


@dataclass
class AlertCheck:
    """What the alerts topic says about duplicate announcements."""

    firing: int
    resolved: int
    duplicate_firings: int
    repages: int

    @property
    def mismatches(self) -> int:
        """An incident announced twice, or a second page without a resolve in between."""
        return self.duplicate_firings + self.repages


def check_alerts(alerts: Sequence[Alert]) -> AlertCheck:
    """Each incident (alert id) fires once; per dedup key, firing and resolved alternate."""
    firing = Counter(a.alert_id for a in alerts if a.state == "firing")
    last: dict[str, str] = {}
    repages = 0
    for alert in alerts:
        if alert.state == "firing" and last.get(alert.dedup_key) == "firing":
            repages += 1
        last[alert.dedup_key] = alert.state
    return AlertCheck(
        firing=sum(firing.values()),
        resolved=sum(1 for a in alerts if a.state == "resolved"),
        duplicate_firings=sum(count - 1 for count in firing.values()),
        repages=repages,
    )


def wait_drained(
    reader: TopicReader,
    client: redis.Redis,
    prefix: str,
    expected_pairs_total: int,
    timeout_s: float,
    on_tick: Callable[[], object] = lambda: None,
) -> bool:
    """Until every expected pair is judged on the topic and the windows count each distinct
    judgment (two polls in a row), or the deadline; ``on_tick`` runs between polls (supervisor)."""
    deadline = time.monotonic() + timeout_s
    stable = 0
    while time.monotonic() < deadline:
        on_tick()
        unique = len({j.judgment_id for j in parse_judgments(reader.poll(1.0))})
        counted = windows_total(client, prefix)
        stable = stable + 1 if unique >= expected_pairs_total and counted == unique else 0
        if stable >= 2:
            return True
    return False


# --------------------------------------------------------------------------- teacher without Ray


def noop_teacher_server(policy: Policy) -> ThreadingHTTPServer:
    """The noop teacher behind the Serve HTTP contract, in a thread: no Ray start-up cost."""
    from judges.base import JudgeRequest
    from judges.fake import NoopTeacher

    teacher = NoopTeacher(policy)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            requests = [JudgeRequest.model_validate(item) for item in body["requests"]]
            judged = [j.model_dump_json() for j in teacher.judge(requests)]
            payload = ('{"judgments":[' + ",".join(judged) + "]}").encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, name="noop-teacher", daemon=True).start()
    return server


# --------------------------------------------------------------------------- own services


OWN_KAFKA = "127.0.0.1:29092"
OWN_REDIS = "redis://127.0.0.1:26379/0"
OWN_STATE = Path(".evalloop/reliability")


def own_settings(base: Settings, state_dir: Path = OWN_STATE) -> Settings:
    """``base`` pointed at this check's own Kafka (29092/29093) and Redis (26379)."""
    return base.model_copy(
        update={
            "state_dir": state_dir,
            "kafka": base.kafka.model_copy(update={"bootstrap_servers": OWN_KAFKA}),
            "redis": base.redis.model_copy(update={"url": OWN_REDIS}),
        }
    )


def _share_jars(paths: Any) -> None:
    """Reuse the jars `make up` resolved (a symlink) instead of a second Maven resolution."""
    from infra.local import Paths

    shared = Paths(Path(".evalloop")).kafka_libs.resolve()
    target: Path = paths.kafka_libs
    if shared.is_dir() and not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(shared, target_is_directory=True)


class OwnServices:
    """A Kafka broker and a Redis of this check only (own ports and state dir), restartable."""

    def __init__(self, settings: Settings) -> None:
        from infra.local import Paths

        self.settings = settings
        self.paths = Paths(settings.state_dir)

    def start(self) -> None:
        """Start both (idempotent)."""
        self.start_kafka()
        self.start_redis()

    def start_kafka(self) -> None:
        """Start the broker and wait until it answers."""
        from infra.local import start_kafka

        _share_jars(self.paths)
        for line in start_kafka(self.settings, self.paths):
            log(line)

    def start_redis(self) -> None:
        """Start Redis (no persistence) and wait for PING."""
        from infra.local import start_redis

        for line in start_redis(self.settings, self.paths):
            log(line)

    def stop_kafka(self) -> None:
        """SIGTERM the broker (controlled shutdown) and wait until it is gone."""
        self._stop("kafka", "kafka.Kafka")

    def stop_redis(self) -> None:
        """SIGTERM Redis; without persistence its data is gone."""
        self._stop("redis", "redis-server")

    def _stop(self, service: str, marker: str) -> None:
        from infra.local import owned_pid, stop_pid

        pid = owned_pid(self.paths, service, marker)
        if pid is not None and not stop_pid(pid):
            raise RuntimeError(f"{service} pid {pid} survived SIGKILL")
        self.paths.pid_file(service).unlink(missing_ok=True)

    def stop(self) -> list[int]:
        """Stop both; returns pids of ours still alive (should be empty)."""
        from infra.local import kafka_strays, redis_strays, stop_pid

        self.stop_kafka()
        self.stop_redis()
        for pid in kafka_strays(self.paths) + redis_strays(self.paths):
            stop_pid(pid, timeout=10)
        return kafka_strays(self.paths) + redis_strays(self.paths)


@contextlib.contextmanager
def own_services(settings: Settings) -> Iterator[OwnServices]:
    """Start own Kafka + Redis; always stop them, and fail if any of their processes is left."""
    services = OwnServices(settings)
    services.start()
    try:
        yield services
    finally:
        left = services.stop()
        if left:
            raise RuntimeError(f"own services left running: {left}")
        log("own Kafka and Redis stopped; no process left")


def emit_figures(figures: dict[str, Any], out: Path | None) -> None:
    """Print the figures as one JSON line (and write them to ``out`` for the pytest wrapper)."""
    text = json.dumps(figures, sort_keys=True, default=str)
    print(text, flush=True)
    if out is not None:
        out.write_text(text + "\n", encoding="utf-8")
