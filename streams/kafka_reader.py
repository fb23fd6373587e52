"""The one Kafka reader of the confluent-kafka tools: rebuild, export, offsets, the checks.

``consumer`` builds a client from the settings (security, quiet librdkafka logging) for a group
that never commits on its own. ``read_to_end`` assigns every partition of a topic, from offset 0
or from the group's committed offsets, and yields records up to the end offsets captured when
it started, so it terminates on a live topic. The Faust agents read through aiokafka instead.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from schemas.settings import Settings
from streams.services import kafka_client_config


def consumer(settings: Settings, group: str, **overrides: Any) -> Any:
    """A confluent-kafka Consumer for ``group``: no auto-commit, earliest when nothing committed."""
    from confluent_kafka import Consumer

    config: dict[str, Any] = kafka_client_config(settings)
    config.update({"group.id": group, "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    config.update(overrides)
    return Consumer(config)


def assign_to_end(client: Any, topic: str, from_beginning: bool = True) -> dict[int, int]:
    """Assign every partition (from 0, or from the committed offset); partition → end offset
    to stop at, for the partitions that hold something to read."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    partitions = sorted(client.list_topics(topic, timeout=30).topics[topic].partitions)
    committed: dict[int, int] = {}
    if not from_beginning:
        found = client.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        committed = {tp.partition: tp.offset for tp in found}
    ends: dict[int, int] = {}
    assignment = []
    for partition in partitions:
        low, high = client.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
        start = max(committed.get(partition, -1), low)
        if high > start:
            ends[partition] = high
        begin = OFFSET_BEGINNING if from_beginning or committed.get(partition, -1) < 0 else start
        assignment.append(TopicPartition(topic, partition, begin))
    client.assign(assignment)
    return ends


def messages_to_end(client: Any, ends: dict[int, int], idle_timeout_s: float = 10.0) -> Iterator[Any]:
    """Records of the assigned partitions below ``ends``; stops early when nothing arrives for
    ``idle_timeout_s`` (a partition truncated under us, say). Error events are skipped."""
    remaining = dict(ends)
    last = time.monotonic()
    while remaining and time.monotonic() - last < idle_timeout_s:
        for message in client.consume(1000, timeout=0.5):
            if message.error() is not None:
                continue
            last = time.monotonic()
            partition, offset = message.partition(), message.offset()
            if partition not in remaining or offset >= remaining[partition]:
                continue  # written after we started: the live worker handles it
            if offset >= remaining[partition] - 1:
                del remaining[partition]
            yield message


def read_topic(settings: Settings, topic: str, idle_timeout_s: float = 10.0) -> list[bytes]:
    """Every record value (tombstones left out) of ``topic`` from offset 0 up to its end now.

    Assigns all partitions: no consumer-group membership, nothing committed.
    """
    client = consumer(settings, "evalloop-reader")
    try:
        ends = assign_to_end(client, topic)
        return [m.value() for m in messages_to_end(client, ends, idle_timeout_s) if m.value() is not None]
    finally:
        client.close()
