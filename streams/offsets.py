"""The worker group's positions on the loop's topics: lag, and moving past a record on purpose.

``evalloop offsets`` (show / skip / reset) is the operator's tool when one record cannot be read
at all (a batch in a codec the client cannot decode, a corrupt batch): the worker stops with one
line naming the partition and offsets (``undecodable_batch``), the operator skips them, and every
skipped record goes to the dead-letter topic first (reason ``skipped``, its original bytes and
position, read with librdkafka, which decodes every codec), so skipping never loses data.

Offsets can only be committed for a group with no live members: stop the workers first.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from schemas.deadletter import SourcePosition
from schemas.settings import Settings
from streams import kafka_reader
from streams.deadletter import dead_letter
from streams.services import kafka_client_config


@dataclass(frozen=True)
class PartitionLag:
    """One partition of one topic for the group."""

    topic: str
    partition: int
    committed: int | None
    low: int
    high: int

    @property
    def lag(self) -> int:
        """Records not yet consumed (from the start of the log when nothing is committed)."""
        start = self.committed if self.committed is not None and self.committed >= 0 else self.low
        return max(0, self.high - start)


@dataclass(frozen=True)
class BatchPosition:
    """Where a record batch the worker could not read sits: ``[first, next_offset)``."""

    topic: str
    partition: int
    first: int
    next_offset: int


def resolve_topic(settings: Settings, name: str) -> str:
    """A stage name (``events``, ``dead_letters``, ...) or a topic name → the topic name."""
    stages = {"events", "samples", "judgments", "alerts", "dead_letters", "dead-letters"}
    if name in stages:
        stage = name.replace("-", "_")
        spec = getattr(settings.topics, stage)
        return str(spec.name)
    return name


def group_lag(settings: Settings, group: str, topics: list[str]) -> list[PartitionLag]:
    """Committed offset, log start/end and lag of every partition of ``topics`` for ``group``."""
    from confluent_kafka import TopicPartition

    consumer = kafka_reader.consumer(settings, group)
    try:
        rows: list[PartitionLag] = []
        for topic in topics:
            meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
            if meta is None or meta.error is not None:
                raise ValueError(f"no topic {topic!r} on {settings.kafka.bootstrap_servers}")
            parts = [TopicPartition(topic, p) for p in sorted(meta.partitions)]
            for tp in consumer.committed(parts, timeout=10):
                low, high = consumer.get_watermark_offsets(tp, timeout=10)
                committed = tp.offset if tp.offset >= 0 else None
                rows.append(PartitionLag(topic, tp.partition, committed, low, high))
        return rows
    finally:
        consumer.close()


def _records(consumer: Any, start: int, stop: int, timeout_s: float) -> Iterator[Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is None or message.error() is not None:
            continue
        if message.offset() >= stop:
            return
        yield message
        if message.offset() + 1 >= stop:
            return
    raise TimeoutError(f"offsets {start}..{stop - 1} could not be read within {timeout_s:.0f}s")


def skip(settings: Settings, group: str, topic: str, partition: int, to: int, timeout_s: float = 30.0) -> int:
    """Dead-letter the group's records of ``topic[partition]`` before offset ``to`` (from its
    committed offset), then commit ``to``. Returns how many records were dead-lettered."""
    from confluent_kafka import Producer, TopicPartition

    consumer = kafka_reader.consumer(settings, group)
    try:
        (committed,) = consumer.committed([TopicPartition(topic, partition)], timeout=10)
        low, _high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        start = committed.offset if committed.offset >= 0 else low
        if to <= start:
            raise ValueError(f"--to {to} is not past the group's position {start} on {topic}[{partition}]")
        consumer.assign([TopicPartition(topic, partition, start)])
        producer = Producer(kafka_client_config(settings, producer=True))
        skipped = 0
        for message in _records(consumer, start, to, timeout_s):
            source = SourcePosition(topic=topic, partition=partition, offset=message.offset())
            detail = f"skipped by `evalloop offsets skip` (group {group}) to offset {to}"
            letter = dead_letter(message.value(), "skipped", detail=detail, source=source)
            producer.produce(settings.topics.dead_letters.name, letter.to_bytes())
            skipped += 1
        if producer.flush(30) != 0:
            raise TimeoutError("the dead letters of the skipped records were not all acknowledged")
        consumer.commit(offsets=[TopicPartition(topic, partition, to)], asynchronous=False)
        return skipped
    finally:
        consumer.close()


def reset(
    settings: Settings, group: str, topic: str, partitions: list[int] | None, to: str
) -> list[PartitionLag]:
    """Commit ``to`` (``earliest``, ``latest`` or an offset) for the group on ``topic``'s partitions."""
    from confluent_kafka import TopicPartition

    rows = [r for r in group_lag(settings, group, [topic]) if partitions is None or r.partition in partitions]
    if not rows:
        raise ValueError(f"no partition {partitions} on topic {topic!r}")
    targets = [TopicPartition(topic, r.partition, _target(r, to)) for r in rows]
    consumer = kafka_reader.consumer(settings, group)
    try:
        consumer.commit(offsets=targets, asynchronous=False)
    finally:
        consumer.close()
    return group_lag(settings, group, [topic])


def _target(row: PartitionLag, to: str) -> int:
    if to == "earliest":
        return row.low
    if to == "latest":
        return row.high
    if not to.isdigit():
        raise ValueError(f"--to must be earliest, latest or an offset, not {to!r}")
    return int(to)


def undecodable_batch(error: BaseException | None) -> BatchPosition | None:
    """Where the Kafka client failed to read a record batch (codec missing, corrupt batch), from
    the failing frame of aiokafka's record reader, or None when ``error`` is something else."""
    seen = 0
    while error is not None and seen < 5:
        position = _batch_in_traceback(error.__traceback__)
        if position is not None:
            return position
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


def _batch_in_traceback(tb: TracebackType | None) -> BatchPosition | None:
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "_unpack_records" and "next_batch" in frame.f_locals:
            tp, batch = frame.f_locals.get("tp"), frame.f_locals["next_batch"]
            if tp is not None:
                return BatchPosition(tp.topic, tp.partition, int(batch.base_offset), int(batch.next_offset))
        tb = tb.tb_next
    return None
