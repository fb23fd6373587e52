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

The run's worker, names and topic reader come from :mod:`reliability.live` and
:mod:`reliability.live_io`; the check's own Kafka and Redis from :mod:`reliability.own_services`.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import redis
import yaml

from judges.base import Teacher
from reliability.live import EVENTS as EVENTS
from reliability.live import (
    LoopRun,
    bundled_policy,
    common_env,
    drop_topics,
    run_names,
    run_settings,
    topic_env,
)
from reliability.live_io import TopicReader
from schemas.alerts import Alert
from schemas.codecs import ALERTS, JUDGMENTS
from schemas.judgments import Judgment
from schemas.policy import Policy
from schemas.settings import Settings

#: Producer delivery timeout: long enough to ride out a broker restart (librdkafka buffers).
PRODUCER_TIMEOUT_MS = 180_000


# --------------------------------------------------------------------------- run set-up


def write_test_policy(directory: Path) -> Path:
    """The bundled policy with every event sampled and rules that fire on the noop teacher.

    The noop teacher grades by hash, so ~40 % of items are filtered everywhere: the first rule
    (0.2) fires early in every busy category and stays firing (a re-page would show as a second
    firing of the same dedup key); the second (0.4, at the base rate) may fire and resolve.
    """
    doc = bundled_policy(1.0)
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


def make_run(
    base: Settings, policy_path: Path, teacher_url: str, tag: str, partitions: dict[str, int] | None = None
) -> LoopRun:
    """Run-specific topics (``partitions`` per stage), consumer group and Redis prefix on ``base``."""
    names = run_names(tag)
    env = {
        **common_env(names, policy_path, teacher_url),
        "EVALLOOP_STATE_DIR": str(base.state_dir),
        "EVALLOOP_KAFKA__BOOTSTRAP_SERVERS": base.kafka.bootstrap_servers,
        "EVALLOOP_REDIS__URL": base.redis.url,
        # A replay squeezes ~13 h of event time into ~75 s: a few wall seconds of restart are hours
        # of event time, so keep the late-data cut-off out of the way of what is being measured.
        "EVALLOOP_STREAM_RETENTION_S": "86400",
        "EVALLOOP_STREAM_LOG_INTERVAL_S": "5",
        # Kafka's minimum: a killed member's partitions are handed over after 6 s, not 10.
        "EVALLOOP_STREAM_BROKER_SESSION_TIMEOUT_S": "6",
        "EVALLOOP_STREAM_TEACHER_RETRIES": "6",
        "PYTHONUNBUFFERED": "1",
    }
    env.update(topic_env(names.topics, partitions))
    return LoopRun(names.run_id, run_settings(base, names, policy_path, partitions), env)


def create_topics(settings: Settings) -> None:
    """Create the run's topics (infra's own helper: partitions and retention from the settings)."""
    from infra.kafka_server import ensure_topics

    ensure_topics(settings)


def delete_topics(settings: Settings) -> None:
    """Best-effort removal of the run's topics."""
    names = [spec.name for spec in settings.topics.all()]
    with contextlib.suppress(Exception):
        drop_topics(settings, names)


def clear_redis(settings: Settings) -> None:
    """Delete the run's Redis keys (windows, seen-markers, alert and loop state)."""
    from streams.window_store import WindowStore

    client = redis_for(settings)
    try:
        WindowStore(client, settings.redis.key_prefix).clear()
    finally:
        client.close()


def redis_for(settings: Settings) -> redis.Redis:
    """A client of the run's Redis."""
    from streams.status import redis_from_settings

    return redis_from_settings(settings)


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

    config: dict[str, Any] = dict(settings.kafka.producer_config())
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


def parse_judgments(raws: Sequence[bytes]) -> list[Judgment]:
    """Every judgment on the topic (duplicates kept; unparsable records skipped)."""
    return JUDGMENTS.decode_all(list(raws))[0]


def distinct(judgments: Sequence[Judgment]) -> list[Judgment]:
    """First occurrence of each judgment id."""
    seen: dict[str, Judgment] = {}
    for judgment in judgments:
        seen.setdefault(judgment.judgment_id, judgment)
    return list(seen.values())


def parse_alerts(raws: Sequence[bytes]) -> list[Alert]:
    """The alerts on the alerts topic, in topic order (a record that is not an alert fails the check)."""
    alerts, bad = ALERTS.decode_all(list(raws))
    if bad:
        raise ValueError(f"{bad} record(s) on the alerts topic are not alerts")
    return alerts


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
    from judges.fake import NoopTeacher

    return teacher_server(NoopTeacher(policy))


def teacher_server(teacher: Teacher) -> ThreadingHTTPServer:
    """Any in-process teacher behind the Serve HTTP contract, in a thread: ``POST`` judges,
    ``GET`` answers the info a worker checks at start-up (its version and policy identity)."""
    from judges.base import JudgeRequest

    info = {"teacher_version": teacher.teacher_version, **teacher.policy.identity(), "healthy": True}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._send(json.dumps(info).encode())

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            requests = [JudgeRequest.model_validate(item) for item in body["requests"]]
            judged = [j.model_dump_json() for j in teacher.judge(requests)]
            self._send(('{"judgments":[' + ",".join(judged) + "]}").encode())

        def _send(self, payload: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, name="teacher-server", daemon=True).start()
    return server


def emit_figures(figures: dict[str, Any], out: Path | None) -> None:
    """Print the figures as one JSON line (and write them to ``out`` for the pytest wrapper)."""
    text = json.dumps(figures, sort_keys=True, default=str)
    print(text, flush=True)
    if out is not None:
        out.write_text(text + "\n", encoding="utf-8")
