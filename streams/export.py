"""`evalloop export judgments`: the judgments topic → JSONL training data.

Reads up to the end offsets captured at start (so the command terminates on a live topic), drops
duplicates by judgment id (redelivery), and by default keeps ok judgments only: error judgments
carry no label. ``--from-beginning`` reads every partition from offset 0 without a consumer group
commit; otherwise a committed consumer group (``evalloop-export``) makes exports incremental.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from pydantic import ValidationError

from schemas.judgments import Judgment
from schemas.settings import Settings

EXPORT_GROUP = "evalloop-export"


@dataclass
class ExportCounts:
    """What an export read and wrote."""

    read: int = 0
    written: int = 0
    duplicates: int = 0
    errors_skipped: int = 0
    invalid: int = 0
    by_category: dict[str, int] = field(default_factory=dict)


def training_row(judgment: Judgment) -> dict[str, Any]:
    """One JSONL row: the judgment as JSON (all fields, so rows can be filtered later)."""
    row: dict[str, Any] = json.loads(judgment.model_dump_json())
    return row


def _consumer(settings: Settings, from_beginning: bool, group: str) -> Any:
    from confluent_kafka import Consumer

    from streams.services import kafka_client_config

    config: dict[str, Any] = kafka_client_config(settings)
    config.update(
        {
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
        }
    )
    return Consumer(config)


def _assign(consumer: Any, topic: str, from_beginning: bool) -> dict[int, int]:
    """Assign every partition; returns partition → end offset to stop at."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    metadata = consumer.list_topics(topic, timeout=10)
    partitions = sorted(metadata.topics[topic].partitions)
    ends: dict[int, int] = {}
    assignment = []
    committed = (
        {}
        if from_beginning
        else {
            tp.partition: tp.offset
            for tp in consumer.committed([TopicPartition(topic, p) for p in partitions], 10)
        }
    )
    for partition in partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        start = OFFSET_BEGINNING if from_beginning else max(committed.get(partition, -1), low)
        if high > (low if start == OFFSET_BEGINNING or start < 0 else start):
            ends[partition] = high
        assignment.append(TopicPartition(topic, partition, start if start >= 0 else OFFSET_BEGINNING))
    consumer.assign(assignment)
    return ends


def _messages(consumer: Any, ends: dict[int, int], idle_timeout_s: float) -> Iterator[Any]:
    remaining = dict(ends)
    last = time.monotonic()
    while remaining and time.monotonic() - last < idle_timeout_s:
        message = consumer.poll(0.5)
        if message is None or message.error():
            continue
        last = time.monotonic()
        partition = message.partition()
        if partition in remaining and message.offset() >= remaining[partition] - 1:
            del remaining[partition]
        yield message


def export_judgments(
    settings: Settings,
    out: IO[str],
    *,
    from_beginning: bool = False,
    include_errors: bool = False,
    group: str = EXPORT_GROUP,
    idle_timeout_s: float = 10.0,
) -> ExportCounts:
    """Write the judgments topic (up to its current end) to ``out`` as JSONL."""
    counts = ExportCounts()
    consumer = _consumer(settings, from_beginning, group)
    seen: set[str] = set()
    try:
        ends = _assign(consumer, settings.topics.judgments.name, from_beginning)
        for message in _messages(consumer, ends, idle_timeout_s):
            counts.read += 1
            _write(message.value(), out, counts, seen, include_errors)
        if not from_beginning and counts.read:
            consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return counts


def _write(raw: bytes, out: IO[str], counts: ExportCounts, seen: set[str], include_errors: bool) -> None:
    try:
        judgment = Judgment.model_validate_json(raw)
    except ValidationError:
        counts.invalid += 1
        return
    if judgment.judgment_id in seen:
        counts.duplicates += 1
        return
    seen.add(judgment.judgment_id)
    if judgment.status != "ok" and not include_errors:
        counts.errors_skipped += 1
        return
    out.write(json.dumps(training_row(judgment), ensure_ascii=False) + "\n")
    counts.written += 1
    counts.by_category[judgment.category] = counts.by_category.get(judgment.category, 0) + 1
