"""Events/s through the validate-and-sample stage: the real Faust agent vs a raw Kafka consumer.

~1 KB events (WANDS events trimmed to ~1 KB, fresh ids, monotonic event times) are produced once
to a run-specific events topic. Then, over that same topic in the same run:

* **evalloop**: a worker subprocess (``python -m bench.bench_ingest --stage1-worker``) runs the
  real Faust app of ``streams.app.create_app`` with only its first agent,
  ``validate_and_sample`` (``handle_event``: parse + validate, sample, publish the sample and
  wait for the broker's acknowledgement). Its rate is read from the run-specific samples topic:
  the expected number of samples is known in advance (the sampler is a deterministic hash), and
  the rate is taken between the first sample appearing and the last, so Faust's start-up and
  group join are not counted.
* **raw baseline**: a confluent-kafka consumer (own group) polling batches and ``json.loads``-ing
  every value, timed from its first message to the last.
* **in-process**: ``pipeline.validate`` + ``pipeline.sample`` per event with no Kafka at all, to
  show how much of the agent's time is our code versus Faust/aiokafka.

Topics are created for the run and deleted afterwards. This module also holds the Kafka helpers
the end-to-end benchmark reuses (event shaping, run environments, topic clean-up).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from bench.common import BenchResult, BenchSkipped
from schemas.settings import Settings, load_settings

NAME = "ingest"
EVENTS_FILE = Path("data/wands/events.jsonl")
POLICY = "policies/product-search.yaml"
TARGET_BYTES = 1024
T0 = datetime(2026, 1, 1, tzinfo=UTC)
WORKER_FLAG = "--stage1-worker"
POLL_S = 0.05


# --------------------------------------------------------------------------- events


def shape_event(
    doc: dict[str, Any], event_id: str, event_time: datetime, target: int = TARGET_BYTES
) -> bytes:
    """``doc`` as compact JSON of about ``target`` bytes, with a new id and event time.

    Items are dropped from the end (at least one kept, with their reference labels) until the
    event fits, then ``request.attributes.pad`` pads it up to ``target`` (never over, unless a
    single item is already bigger).
    """
    shaped = {**doc, "event_id": event_id, "event_time": event_time.isoformat().replace("+00:00", "Z")}
    shaped["request"] = {**doc["request"], "attributes": dict(doc["request"].get("attributes") or {})}
    items = list(doc["items"])
    while True:
        shaped["items"] = items
        labels = doc.get("reference_labels")
        if isinstance(labels, dict):
            kept = {str(item["item_id"]) for item in items}
            shaped["reference_labels"] = {k: v for k, v in labels.items() if k in kept}
        raw = _dumps(shaped)
        if len(raw) <= target or len(items) == 1:
            break
        items = items[:-1]
    room = target - len(raw) - len(',"pad":""')
    if room > 0:
        shaped["request"]["attributes"]["pad"] = "x" * room
        raw = _dumps(shaped)
    return raw


def _dumps(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def make_events(count: int, run_id: str, target: int = TARGET_BYTES, spacing_s: float = 1.0) -> list[bytes]:
    """``count`` events cycled from the WANDS day: fresh ids, event times ``spacing_s`` apart."""
    docs = [json.loads(line) for line in EVENTS_FILE.read_bytes().splitlines() if line.strip()]
    return [
        shape_event(docs[i % len(docs)], f"{run_id}-{i}", T0 + timedelta(seconds=i * spacing_s), target)
        for i in range(count)
    ]


def event_key(raw: bytes) -> bytes:
    """The record key the replay uses (the event id)."""
    return str(json.loads(raw)["event_id"]).encode()


# --------------------------------------------------------------------------- run environment


def new_run_id(kind: str) -> str:
    """A run id for topic names, Redis prefixes and consumer groups."""
    return f"bench-{kind}-{datetime.now(UTC):%H%M%S}-{uuid.uuid4().hex[:6]}"


@contextmanager
def scoped_env(env: dict[str, str]) -> Iterator[None]:
    """Set ``env`` in ``os.environ`` for the block; restore the previous values afterwards."""
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_env(run_id: str) -> dict[str, str]:
    """The demo's run-specific settings overrides (topics, Redis prefix, consumer group)."""
    from evalloop.demo import run_environment

    return {**run_environment(run_id), "OPENBLAS_NUM_THREADS": "1"}


def require_kafka(settings: Settings) -> None:
    """BenchSkipped when the brokers do not answer."""
    from infra.kafka_server import kafka_healthy

    if not kafka_healthy(settings):
        raise BenchSkipped(f"Kafka at {settings.kafka.bootstrap_servers} is not reachable; run `make up`")


def create_topics(settings: Settings) -> None:
    """The run's topics, with the configured partitions."""
    from infra.kafka_server import ensure_topics

    ensure_topics(settings)


def delete_topics(settings: Settings, extra: Sequence[str] = ()) -> None:
    """Delete the run's topics (best effort: they are run-specific, nobody else reads them)."""
    from infra.kafka_server import admin_client

    names = [spec.name for spec in settings.topics.all()] + list(extra)
    with suppress(Exception):
        for future in admin_client(settings).delete_topics(names, operation_timeout=30).values():
            with suppress(Exception):
                future.result(timeout=30)


def produce_all(settings: Settings, topic: str, values: Sequence[bytes]) -> float:
    """Produce ``values`` keyed by event id as fast as possible; returns seconds (after flush)."""
    from streams.replay import make_producer

    producer = make_producer(settings)
    started = time.perf_counter()
    for value in values:
        while True:
            try:
                producer.produce(topic, value, key=event_key(value))
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    if producer.flush(120.0):
        raise RuntimeError("events were not all delivered")
    return time.perf_counter() - started


def topic_end(settings: Settings, topic: str, consumer: Any | None = None) -> int:
    """Sum over partitions of the topic's high watermark (records ever written)."""
    from confluent_kafka import Consumer, TopicPartition

    own = consumer is None
    client = consumer or Consumer({**settings.kafka.confluent_config(), "group.id": "evalloop-bench-probe"})
    try:
        meta = client.list_topics(topic, timeout=10).topics[topic]
        return sum(
            client.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in meta.partitions
        )
    finally:
        if own:
            client.close()


def wait_for_count(
    read: Callable[[], int], expected: int, timeout_s: float, alive: Callable[[], bool] = lambda: True
) -> tuple[float, int, float]:
    """Poll ``read`` until it reaches ``expected``: (time of first progress, count then, end time)."""
    deadline = time.monotonic() + timeout_s
    first: tuple[float, int] | None = None
    while time.monotonic() < deadline:
        count = read()
        now = time.perf_counter()
        if count > 0 and first is None:
            first = (now, count)
        if count >= expected:
            assert first is not None
            return first[0], first[1], now
        if not alive():
            raise RuntimeError("the worker process exited early")
        time.sleep(POLL_S)
    raise TimeoutError(f"only {read()} of {expected} after {timeout_s:.0f}s")


# --------------------------------------------------------------------------- the stage-1 worker


class _NoTeacher:
    """Stage 1 never calls the teacher."""

    async def judge(self, requests: Sequence[Any]) -> list[Any]:
        raise RuntimeError("the ingest benchmark runs stage 1 only")


def stage1_worker() -> int:
    """Run the real Faust app with only the validate-and-sample agent (settings from the env)."""
    import faust

    from schemas.policy import load_policy
    from streams.app import create_app
    from streams.config import StreamSettings
    from streams.pipeline import MemoryAlertStateStore, MemoryWindowStore
    from streams.stages import Components

    settings = load_settings()
    components = Components(
        settings=settings,
        stream=StreamSettings(),
        policy=load_policy(POLICY),
        teacher=_NoTeacher(),
        windows=MemoryWindowStore(),
        alert_states=MemoryAlertStateStore(),
    )
    loop = create_app(components)
    for name in ("evalloop.judge", "evalloop.aggregate_and_alert"):
        loop.app.agents.pop(name)
    faust.Worker(loop.app, loglevel="warning", quiet=True).execute_from_commandline()
    return 0


def start_stage1_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """``python -m bench.bench_ingest --stage1-worker`` with the run's environment."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "bench.bench_ingest", WORKER_FLAG]
    with log_path.open("wb") as log:
        return subprocess.Popen(
            command, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


# --------------------------------------------------------------------------- measurements


def in_process(values: Sequence[bytes]) -> tuple[float, int]:
    """Seconds of ``validate`` + ``sample`` over ``values`` (no Kafka) and how many were sampled."""
    from schemas.policy import load_policy
    from streams.pipeline import Valid, sample, validate
    from streams.sampling import Sampler

    sampler = Sampler(load_policy(POLICY))
    sampled = 0
    started = time.perf_counter()
    for raw in values:
        outcome = validate(raw)
        if not isinstance(outcome, Valid):
            raise AssertionError(f"bench event failed validation: {outcome}")
        chosen = sample(outcome.event, sampler, time.time())
        if chosen.sample is not None:
            chosen.sample.model_dump_json().encode()  # the agent serialises what it publishes
            sampled += 1
    return time.perf_counter() - started, sampled


def raw_consume(settings: Settings, topic: str, count: int, timeout_s: float = 120.0) -> float:
    """A confluent-kafka consumer reading ``count`` records with ``json.loads``; seconds from the first."""
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            **settings.kafka.confluent_config(),
            "group.id": f"{topic}-raw-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    seen, started = 0, 0.0
    deadline = time.monotonic() + timeout_s
    try:
        while seen < count and time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.5):
                value = message.value()
                if message.error() or value is None:
                    continue
                if seen == 0:
                    started = time.perf_counter()
                json.loads(value)
                seen += 1
    finally:
        consumer.close()
    if seen < count:
        raise TimeoutError(f"raw consumer read {seen} of {count}")
    return time.perf_counter() - started


def baseline_topic(settings: Settings) -> str:
    """Where the same-work baseline publishes its samples (apart from the agent's samples topic)."""
    return f"{settings.topics.samples.name}.baseline"


def create_baseline_topic(settings: Settings) -> None:
    """The baseline's output topic, partitioned like the samples topic."""
    from confluent_kafka.cimpl import NewTopic

    from infra.kafka_server import admin_client

    spec = settings.topics.samples
    topic = NewTopic(baseline_topic(settings), num_partitions=spec.partitions, replication_factor=1)
    admin = admin_client(settings)  # kept alive until the futures resolve
    for future in admin.create_topics([topic], operation_timeout=30).values():
        future.result(timeout=30)


def same_work_consume(settings: Settings, topic: str, count: int, timeout_s: float = 180.0) -> SameWork:
    """The same work as the agent without Faust: a confluent-kafka loop that consumes a batch,
    validates each event (the agent's call: watermark, retention, future check), samples it,
    produces each sample with acks=all (idempotent producer), flushes, and only then commits the
    batch's offsets (at-least-once, as the agent). Seconds from the first message to the last commit."""
    from confluent_kafka import Consumer

    from schemas.policy import load_policy
    from streams.config import StreamSettings
    from streams.pipeline import Valid, policy_retention_s, sample, validate
    from streams.replay import make_producer
    from streams.sampling import Sampler
    from streams.watermark import PartitionedWatermark

    policy, stream = load_policy(POLICY), StreamSettings()
    sampler, producer = Sampler(policy), make_producer(settings)
    watermark = PartitionedWatermark(stream.allowed_lateness_s, settings.topics.events.partitions)
    consumer = Consumer(
        {
            **settings.kafka.confluent_config(),
            "group.id": f"{topic}-same-work-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    retention_s = policy_retention_s(policy)
    out, seen, sampled, started = baseline_topic(settings), 0, 0, 0.0
    deadline = time.monotonic() + timeout_s
    try:
        while seen < count and time.monotonic() < deadline:
            batch = [m for m in consumer.consume(stream.ingest_batch, 0.5) if not m.error()]
            if not batch:
                continue
            started = started or time.perf_counter()
            for message in batch:
                outcome = validate(
                    message.value(),
                    watermark=watermark,
                    retention_s=retention_s,
                    max_future_s=stream.max_future_s,
                )
                seen += 1
                if not isinstance(outcome, Valid):
                    continue
                chosen = sample(outcome.event, sampler, time.time()).sample
                if chosen is not None:
                    producer.produce(
                        out, chosen.model_dump_json().encode(), key=chosen.event.event_id.encode()
                    )
                    sampled += 1
            if producer.flush(60.0):
                raise RuntimeError("the baseline's samples were not all acknowledged")
            consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    if seen < count:
        raise TimeoutError(f"same-work consumer read {seen} of {count}")
    return SameWork(time.perf_counter() - started, sampled)


class SameWork(NamedTuple):
    """The same-work baseline's seconds and how many samples it published."""

    seconds: float
    sampled: int


def faust_stage(settings: Settings, env: dict[str, str], count: int, expected: int) -> dict[str, float]:
    """Run the stage-1 worker over the produced topic; events/s between first and last sample."""
    log_path = settings.state_dir / "logs" / f"{env['EVALLOOP_STREAM_APP_ID']}-ingest.log"
    worker = start_stage1_worker(env, log_path)
    samples_topic = settings.topics.samples.name
    try:
        first_t, first_n, end_t = wait_for_count(
            lambda: topic_end(settings, samples_topic), expected, 300.0, lambda: worker.poll() is None
        )
    finally:
        _stop(worker)
    share = (expected - first_n) / expected
    return {"events_per_s": count * share / max(end_t - first_t, 1e-9), "seconds": end_t - first_t}


def _stop(process: subprocess.Popen[bytes]) -> None:
    from evalloop.demo import stop_worker

    stop_worker(process, 20.0)


def run(quick: bool) -> BenchResult:
    """Faust validate-and-sample vs raw consume + json.loads over the same topic, plus in-process cost."""
    count = 5000 if quick else 20000
    run_id = new_run_id("ingest")
    env = run_env(run_id)
    with scoped_env(env):
        settings = load_settings()
        require_kafka(settings)
        values = make_events(count, run_id)
        stage_s, expected = in_process(values)
        create_topics(settings)
        create_baseline_topic(settings)
        try:
            produce_s = produce_all(settings, settings.topics.events.name, values)
            raw_s = raw_consume(settings, settings.topics.events.name, count)
            same = same_work_consume(settings, settings.topics.events.name, count)
            agent = faust_stage(settings, env, count, expected)
        finally:
            delete_topics(settings, extra=[baseline_topic(settings)])
    if same.sampled != expected:
        raise AssertionError(f"the same-work baseline sampled {same.sampled}, the agent {expected}")
    return _result(count, values, expected, Rates(produce_s, raw_s, same.seconds, stage_s), agent)


class Rates(NamedTuple):
    """Seconds each side took over the same ``count`` events."""

    produce_s: float
    raw_s: float
    same_work_s: float
    in_process_s: float


#: The issue's targets for stage 1 (docs/performance.md).
TARGET_SAME_WORK_RATIO = 0.25
TARGET_EVENTS_PER_S = 1160.0


def _result(
    count: int, values: Sequence[bytes], expected: int, seconds: Rates, agent: dict[str, float]
) -> BenchResult:
    same_rate, raw_rate = count / seconds.same_work_s, count / seconds.raw_s
    stage_rate, agent_rate = count / seconds.in_process_s, agent["events_per_s"]
    result = BenchResult(name=NAME)
    result.rows.append(
        {
            "events": count,
            "avg_bytes": round(sum(map(len, values)) / count),
            "sampled": expected,
            "faust_agent_ev/s": agent_rate,
            "same_work_loop_ev/s": same_rate,
            "raw_consume_ev/s": raw_rate,
            "in_process_ev/s": stage_rate,
            "produce_ev/s": count / seconds.produce_s,
            "agent_us/ev": 1e6 / agent_rate,
            "stage_code_us/ev": 1e6 / stage_rate,
        }
    )
    result.ratios[
        f"faust validate-and-sample / same-work confluent loop (events/s; target >= {TARGET_SAME_WORK_RATIO})"
    ] = round(agent_rate / same_rate, 4)
    result.ratios[f"faust agent events/s / {TARGET_EVENTS_PER_S:.0f} (100 M a day; target >= 1)"] = round(
        agent_rate / TARGET_EVENTS_PER_S, 3
    )
    result.ratios["context: faust validate-and-sample / raw consume + json.loads"] = round(
        agent_rate / raw_rate, 4
    )
    result.ratios["share of the agent's time in validate + sample (our code)"] = round(
        agent_rate / stage_rate, 3
    )
    result.notes += [
        f"{count} events of ~{TARGET_BYTES} B (WANDS, trimmed/padded, fresh ids), {expected} sampled "
        f"({expected / count:.0%}); 4 partitions; one Faust worker process",
        "faust rate: between the first and the last sample on the samples topic (start-up and "
        "group join excluded); a batch's samples are acknowledged (acks=all) before its offsets are",
        "same-work loop (the baseline): confluent-kafka consume(batch) -> the agent's validate "
        "(watermark, retention, future check) -> sample -> produce with acks=all -> flush -> "
        "commit, one process, same batch size; from its first message to its last commit",
        "raw (context only): confluent-kafka consume(1000) + json.loads, from its first message to the last",
        "in-process: pipeline.validate + pipeline.sample + Sample JSON, no Kafka",
    ]
    return result


if __name__ == "__main__":
    if WORKER_FLAG in sys.argv:
        sys.argv = [sys.argv[0]]
        sys.exit(stage1_worker())
    print("usage: python -m bench.bench_ingest --stage1-worker (run it via `python -m bench --only ingest`)")
