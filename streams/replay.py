"""Replay a recorded JSONL day onto the events topic, paced by event time, optionally degraded.

Lines go out byte-for-byte (a malformed line is produced as-is so it reaches the dead-letter topic,
as it would live). Pacing: event ``t`` is sent ``(t - t0) / speed`` wall seconds after start;
``speed=None`` ("max") sends as fast as the producer allows. Because windows and alerts run on
event time (the watermark), any speed yields the same judgments, windows and alerts.

Degradation (``--inject-degradation``): within ``[from, to)`` event time, a ``fraction`` of the
target category's items are swapped for items of events of a *different* category, chosen by a
seeded RNG, so the run is reproducible and the teacher should grade those items irrelevant.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from schemas.settings import Settings

KeyBy = Literal["event_id", "category"]


@dataclass(frozen=True)
class Degradation:
    """Swap ``fraction`` of ``category``'s items for other categories' items in ``[start, end)``."""

    category: str
    start: datetime | None = None
    end: datetime | None = None
    fraction: float = 0.5
    seed: int = 7
    #: The production ``model_version`` degraded events carry (a bad rollout); None: unchanged.
    model_version: str | None = None

    def applies(self, category: str, event_time: datetime) -> bool:
        """Whether an event of ``category`` at ``event_time`` is degraded."""
        if category != self.category:
            return False
        return (self.start is None or event_time >= self.start) and (
            self.end is None or event_time < self.end
        )


@dataclass
class ReplayCounts:
    """What a replay produced."""

    lines: int = 0
    #: Records handed to the producer; ``produced`` counts only those the broker acknowledged.
    sent: int = 0
    produced: int = 0
    unparsed: int = 0
    degraded_events: int = 0
    swapped_items: int = 0
    delivery_errors: int = 0
    seconds: float = 0.0
    by_category: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """For ``--json`` output and logs."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class Record:
    """One line to produce: its bytes, key and event time (None when it does not parse)."""

    value: bytes
    key: bytes | None
    event_time: datetime | None
    category: str | None


class Producer(Protocol):
    """The part of ``confluent_kafka.Producer`` replay uses."""

    def produce(self, topic: str, value: bytes, key: bytes | None = ..., on_delivery: Any = ...) -> None: ...

    def poll(self, timeout: float) -> int: ...

    def flush(self, timeout: float) -> int: ...


def parse_time(text: str) -> datetime:
    """ISO-8601 with a zone (``2024-06-01T06:00:00Z``)."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError(f"time {text!r} needs a zone (e.g. Z)")
    return value


def read_lines(path: Path, limit: int | None = None) -> list[bytes]:
    """Non-empty lines of ``path`` as bytes (no decoding: bad bytes must survive)."""
    lines: list[bytes] = []
    with path.open("rb") as handle:
        for line in handle:
            stripped = line.rstrip(b"\r\n")
            if stripped.strip():
                lines.append(stripped)
                if limit is not None and len(lines) >= limit:
                    break
    return lines


def _loads(line: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _event_time(data: dict[str, Any]) -> datetime | None:
    try:
        return parse_time(str(data["event_time"]))
    except (KeyError, ValueError):
        return None


def _item_pool(docs: list[dict[str, Any] | None]) -> list[tuple[str, dict[str, Any]]]:
    pool: list[tuple[str, dict[str, Any]]] = []
    for doc in docs:
        if doc and isinstance(doc.get("items"), list):
            pool += [(str(doc.get("category")), item) for item in doc["items"] if isinstance(item, dict)]
    return pool


def degrade(
    doc: dict[str, Any], pool: list[tuple[str, dict[str, Any]]], rng: random.Random, fraction: float
) -> int:
    """Swap ``fraction`` of ``doc``'s items (in place) for pool items of another category.

    The replacement keeps the original rank; its id must not clash with the event's other items.
    Reference labels, when the event carries them, mark the swapped item "Irrelevant".
    Returns how many items were swapped.
    """
    items: list[dict[str, Any]] = doc["items"]
    foreign = [item for category, item in pool if category != doc.get("category")]
    if not foreign:
        return 0
    count = round(len(items) * fraction)
    swapped = 0
    for position in sorted(rng.sample(range(len(items)), count)):
        taken = {item.get("item_id") for item in items}
        candidates = [
            item for item in rng.sample(foreign, min(len(foreign), 20)) if item.get("item_id") not in taken
        ]
        if not candidates:
            continue
        old = items[position]
        new = {**candidates[0], "rank": old.get("rank", position + 1)}
        items[position] = new
        labels = doc.get("reference_labels")
        if isinstance(labels, dict):
            labels.pop(str(old.get("item_id")), None)
            labels[str(new["item_id"])] = "Irrelevant"
        swapped += 1
    return swapped


def build_records(
    lines: list[bytes], key_by: KeyBy = "event_id", degradation: Degradation | None = None
) -> tuple[list[Record], ReplayCounts]:
    """Turn lines into records (keys, times), applying the degradation deterministically."""
    docs = [_loads(line) for line in lines]
    pool = _item_pool(docs) if degradation else []
    rng = random.Random(degradation.seed if degradation else 0)
    counts = ReplayCounts(lines=len(lines))
    records: list[Record] = []
    for line, doc in zip(lines, docs, strict=True):
        event_time = _event_time(doc) if doc else None
        if doc is None or event_time is None:
            counts.unparsed += 1
            records.append(Record(line, None, None, None))
            continue
        category = str(doc.get("category"))
        value = line
        if degradation and degradation.applies(category, event_time) and isinstance(doc.get("items"), list):
            swapped = degrade(doc, pool, rng, degradation.fraction)
            if swapped:
                counts.degraded_events += 1
                counts.swapped_items += swapped
                if degradation.model_version is not None:
                    doc["model_version"] = degradation.model_version
                value = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
        key_text = doc.get(key_by)
        key = str(key_text).encode() if key_text is not None else None
        records.append(Record(value, key, event_time, category))
    return records, counts


def paced(
    records: Iterable[Record],
    speed: float | None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Record]:
    """Yield records, sleeping so event-time gaps take ``gap / speed`` wall seconds."""
    start_wall: float | None = None
    start_event: datetime | None = None
    for record in records:
        if speed is not None and record.event_time is not None:
            if start_event is None:
                start_event, start_wall = record.event_time, clock()
            else:
                assert start_wall is not None
                due = start_wall + (record.event_time - start_event).total_seconds() / speed
                delay = due - clock()
                if delay > 0:
                    sleep(delay)
        yield record


def produce(
    records: Iterable[Record], producer: Producer, topic: str, counts: ReplayCounts, speed: float | None
) -> ReplayCounts:
    """Produce every record (paced), wait for all deliveries, and fill in ``counts``."""
    started = time.monotonic()

    def on_delivery(error: Any, _message: Any) -> None:
        if error is not None:
            counts.delivery_errors += 1
        else:
            counts.produced += 1

    for record in paced(records, speed):
        while True:
            try:
                producer.produce(topic, record.value, key=record.key, on_delivery=on_delivery)
                break
            except BufferError:  # local queue full: serve callbacks and try again
                producer.poll(0.1)
        producer.poll(0)
        counts.sent += 1
        if record.category:
            counts.by_category[record.category] = counts.by_category.get(record.category, 0) + 1
    remaining = producer.flush(60.0)
    counts.delivery_errors += remaining  # never acknowledged: not produced
    counts.seconds = round(time.monotonic() - started, 3)
    return counts


def make_producer(settings: Settings) -> Producer:
    """An idempotent confluent-kafka producer for the configured cluster."""
    from confluent_kafka import Producer as KafkaProducer

    from streams.services import kafka_client_config

    config: dict[str, Any] = kafka_client_config(settings, producer=True)
    config.update({"enable.idempotence": True, "acks": "all", "linger.ms": 5})
    producer: Producer = KafkaProducer(config)  # type: ignore[assignment]  # stubs are wider than the Protocol
    return producer


def replay(
    path: Path,
    settings: Settings,
    *,
    speed: float | None = None,
    key_by: KeyBy = "event_id",
    degradation: Degradation | None = None,
    limit: int | None = None,
    extra_lines: Iterable[bytes] = (),
    producer: Producer | None = None,
) -> ReplayCounts:
    """Replay ``path`` (first ``limit`` lines, plus ``extra_lines``) onto the events topic."""
    lines = read_lines(path, limit) + list(extra_lines)
    records, counts = build_records(lines, key_by, degradation)
    return produce(records, producer or make_producer(settings), settings.topics.events.name, counts, speed)
