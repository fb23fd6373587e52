"""Dead-letter records: an input the loop could not use, why, and its original bytes.

A dead letter keeps the payload byte-for-byte (base64) plus where it came from (topic, partition,
offset), so an operator can fix the producer and re-publish the exact message. The loop never
stops on a bad input: it writes one of these and moves on.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime

from schemas.base import SchemaError
from schemas.deadletter import MAX_DETAIL_CHARS, DeadLetter, Reason, SourcePosition

_PAYLOAD_REASONS: tuple[tuple[str, Reason], ...] = (
    ("tombstone", "tombstone"),
    ("empty value", "empty"),
    ("UTF-8", "invalid_utf8"),
)


def classify(error: SchemaError) -> Reason:
    """Map a parse error to a stable reason token (the free text stays in ``detail``)."""
    text = error.reason
    if error.field == "<payload>":
        for token, reason in _PAYLOAD_REASONS:
            if token in text:
                return reason
        return "oversized"
    if "EVALLOOP_STREAM_UNKNOWN_FIELDS=reject" in text:
        return "unknown_field"
    if "Invalid JSON" in text or "json_invalid" in text:
        return "malformed_json"
    if "Field required" in text:
        return "missing_field"
    if "outside [2000-01-01" in text:
        return "absurd_timestamp"
    return "schema"


def dead_letter(
    raw: bytes | None,
    reason: Reason,
    *,
    field: str = "",
    detail: str = "",
    event_id: str | None = None,
    source: SourcePosition | None = None,
    now: datetime | None = None,
) -> DeadLetter:
    """Build a dead letter for ``raw`` (None for a tombstone); ``now`` defaults to the current UTC time."""
    position = source or SourcePosition()
    raw = raw or b""
    return DeadLetter(
        reason=reason,
        field=field,
        detail=detail[:MAX_DETAIL_CHARS],
        event_id=event_id,
        original_b64=base64.b64encode(raw).decode("ascii"),
        original_bytes=len(raw),
        topic=position.topic,
        partition=position.partition,
        offset=position.offset,
        dead_lettered_at=now or datetime.now(UTC),
    )


def from_schema_error(
    raw: bytes | None, error: SchemaError, source: SourcePosition | None = None, now: datetime | None = None
) -> DeadLetter:
    """A dead letter for an event that failed ``parse_event``."""
    return dead_letter(raw, classify(error), field=error.field, detail=str(error), source=source, now=now)
