"""Producing to and reading from a live run (see :mod:`reliability.live`).

Producers, topic readers (:class:`TopicReader` reads on demand from the beginning,
:class:`TopicTail` keeps a background consumer), and readers of topic offsets, consumer lag,
the Redis windows and the counters the worker logs.
"""

from __future__ import annotations

import ast
import contextlib
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition

from reliability.live import LiveRun
from schemas.judgments import Judgment
from schemas.settings import Settings
from streams.status import redis_from_settings
from streams.window_store import WindowStore

# --------------------------------------------------------------------------- producing and reading


def make_producer(settings: Settings) -> Producer:
    config: dict[str, Any] = dict(settings.kafka.producer_config())
    config.update({"linger.ms": 5, "acks": "all"})
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


# --------------------------------------------------------------------------- lag, offsets, counters


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


def breaker_opens(log_path: Path) -> int:
    """How often the worker logged its circuit opening (closed/half-open → open)."""
    with contextlib.suppress(FileNotFoundError):
        return log_path.read_bytes().count(b"teacher circuit open after")
    return 0


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
    from infra.kafka_server import admin_client

    admin = admin_client(settings)
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
