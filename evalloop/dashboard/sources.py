"""Where the dashboard's figures come from (I/O edge): the Redis windows, alert states and loop
state that ``evalloop status`` reads, the judgments and alerts topics followed from Kafka, the
running teacher's calibration record (offline Gate 2 confusion) and a Gate 1 ratings file."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import redis
from pydantic import BaseModel

from schemas.codecs import ALERTS, JUDGMENTS, Codec, Undecodable
from schemas.policy import Policy
from schemas.settings import Settings
from streams import kafka_reader
from streams.correction import WindowCorrector, find_corrector
from streams.status import LoopStateStore, collect
from streams.window_store import WindowStore

log = logging.getLogger("evalloop.dashboard")
M = TypeVar("M", bound=BaseModel)


class TopicFollower(Generic[M]):
    """Follows every partition of a topic in a daemon thread (no group membership, nothing
    committed), keeping the newest ``keep`` decoded records; starts ``tail`` records before each
    partition's end (None: from the beginning). A missing topic or broker is retried."""

    def __init__(self, settings: Settings, topic: str, codec: Codec[M], keep: int, tail: int | None) -> None:
        self.settings, self.topic, self.codec, self.tail = settings, topic, codec, tail
        self._held: deque[M] = deque(maxlen=keep)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"follow-{topic}", daemon=True)
        self.undecodable = 0

    def start(self) -> TopicFollower[M]:
        """Start following; returns self."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop and wait for the thread."""
        self._stop.set()
        self._thread.join(timeout=10)

    def items(self) -> list[M]:
        """The records held, oldest first."""
        with self._lock:
            return list(self._held)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow()
            except Exception as error:  # the broker or topic is away: try again shortly
                log.warning("dashboard: following %s failed (%s); retrying", self.topic, error)
                self._stop.wait(2.0)

    def _follow(self) -> None:
        client = kafka_reader.consumer(self.settings, f"evalloop-dashboard-{uuid.uuid4().hex[:8]}")
        try:
            self._assign(client)
            while not self._stop.is_set():
                for message in client.consume(500, timeout=0.5):
                    if message.error() is None and message.value() is not None:
                        self._keep(message.value())
        finally:
            client.close()

    def _assign(self, client: Any) -> None:
        from confluent_kafka import TopicPartition

        meta = client.list_topics(self.topic, timeout=10).topics.get(self.topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise LookupError(f"topic {self.topic} not found")
        assignment = []
        for partition in sorted(meta.partitions):
            low, high = client.get_watermark_offsets(TopicPartition(self.topic, partition), timeout=10)
            start = low if self.tail is None else max(low, high - self.tail)
            assignment.append(TopicPartition(self.topic, partition, start))
        client.assign(assignment)

    def _keep(self, raw: bytes) -> None:
        decoded = self.codec.decode(raw)
        if isinstance(decoded, Undecodable):
            self.undecodable += 1
            return
        with self._lock:
            self._held.append(decoded)


class Sources:
    """Everything the page reads, behind one object the server holds."""

    def __init__(self, settings: Settings, policy: Policy, client: redis.Redis, bucket_seconds: int) -> None:
        self.settings, self.policy, self.client = settings, policy, client
        self.bucket_seconds = bucket_seconds
        prefix = settings.redis.key_prefix
        self.windows = WindowStore(client, prefix, bucket_seconds=bucket_seconds)
        self.loop_state = LoopStateStore(client, prefix)
        self.judgments = TopicFollower(settings, settings.topics.judgments.name, JUDGMENTS, 20_000, 2_000)
        self.alerts = TopicFollower(settings, settings.topics.alerts.name, ALERTS, 5_000, None)
        self._gate1: dict[str, Any] | None = None
        self.gate1_file: Path | None = None

    def start(self) -> Sources:
        """Start following the topics."""
        self.judgments.start()
        self.alerts.start()
        return self

    def stop(self) -> None:
        """Stop following."""
        self.judgments.stop()
        self.alerts.stop()

    def status(self, window_s: int) -> dict[str, Any]:
        """``evalloop status``'s report for ``window_s``."""
        return collect(self.settings, self.policy, self.client, window_s, self.bucket_seconds)

    def corrector(self) -> WindowCorrector | None:
        """The calibration of the teacher version the worker recorded, if there is one."""
        version = self.loop_state.teacher_version()
        if version is None:
            return None
        return find_corrector(self.settings.calibration_dir, version, self.policy.version)[0]

    def buckets(self, category: str, first: int, last: int) -> dict[int, dict[str, float]]:
        """The stored buckets of ``category`` from ``first`` to ``last`` (bucket starts)."""
        starts = list(range(first - first % self.bucket_seconds, last + 1, self.bucket_seconds))
        return self.windows.read_buckets(category, starts)

    def gate1(self, compute: Callable[[Path], dict[str, Any]]) -> dict[str, Any] | None:
        """The Gate 1 report of ``gate1_file`` (computed once), or None without a file."""
        if self._gate1 is None and self.gate1_file is not None:
            started = time.monotonic()
            self._gate1 = compute(self.gate1_file)
            log.info("dashboard: Gate 1 on %s in %.1fs", self.gate1_file, time.monotonic() - started)
        return self._gate1
