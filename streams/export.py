"""`evalloop export judgments`: the judgments topic → JSONL training data.

Reads up to the end offsets captured at start (so the command terminates on a live topic), drops
duplicates by judgment id (redelivery), and by default keeps ok judgments only: error judgments
carry no label. Golden canaries (docs/canaries.md) are never exported: they are checks of the
teacher on labelled items, not production traffic. ``--from-beginning`` reads every partition
from offset 0 without a consumer group commit; otherwise a committed consumer group
(``evalloop-export``) makes exports incremental.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import IO, Any

from schemas.codecs import JUDGMENTS, Undecodable
from schemas.judgments import Judgment
from schemas.settings import Settings
from streams import kafka_reader

EXPORT_GROUP = "evalloop-export"


@dataclass
class ExportCounts:
    """What an export read and wrote."""

    read: int = 0
    written: int = 0
    duplicates: int = 0
    errors_skipped: int = 0
    canaries_skipped: int = 0
    invalid: int = 0
    by_category: dict[str, int] = field(default_factory=dict)


def training_row(judgment: Judgment) -> dict[str, Any]:
    """One JSONL row: the judgment as JSON (all fields, so rows can be filtered later)."""
    row: dict[str, Any] = json.loads(judgment.model_dump_json())
    return row


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
    consumer = kafka_reader.consumer(settings, group, **{"enable.partition.eof": False})
    seen: set[str] = set()
    try:
        ends = kafka_reader.assign_to_end(consumer, settings.topics.judgments.name, from_beginning)
        for message in kafka_reader.messages_to_end(consumer, ends, idle_timeout_s):
            counts.read += 1
            _write(message.value(), out, counts, seen, include_errors)
        if not from_beginning and counts.read:
            consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return counts


def _write(raw: bytes, out: IO[str], counts: ExportCounts, seen: set[str], include_errors: bool) -> None:
    judgment = JUDGMENTS.decode(raw)
    if isinstance(judgment, Undecodable):
        counts.invalid += 1
        return
    if judgment.judgment_id in seen:
        counts.duplicates += 1
        return
    seen.add(judgment.judgment_id)
    if judgment.canary is not None:
        counts.canaries_skipped += 1
        return
    if judgment.status != "ok" and not include_errors:
        counts.errors_skipped += 1
        return
    out.write(json.dumps(training_row(judgment), ensure_ascii=False) + "\n")
    counts.written += 1
    counts.by_category[judgment.category] = counts.by_category.get(judgment.category, 0) + 1
