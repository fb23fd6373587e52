"""Dead letters on the wire: an input the loop could not use, why, its original bytes, and where
it was read. Producers' tooling and dashboards read these (JSON Schema in
``schemas/json/dead_letter.schema.json``); ``streams.deadletter`` builds them."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_DETAIL_CHARS = 2000

#: Why an input was set aside; one stable token per cause so dashboards can group by it.
Reason = Literal[
    "oversized",
    "invalid_utf8",
    "malformed_json",
    "missing_field",
    "absurd_timestamp",
    "schema",
    "late",
    "future",
    "tombstone",
    "empty",
    "unknown_field",
    "processing_error",
    "skipped",
]


class SourcePosition(BaseModel):
    """Where a message was read: enough to find it again in Kafka."""

    model_config = ConfigDict(frozen=True)

    topic: str | None = None
    partition: int | None = None
    offset: int | None = None


class DeadLetter(BaseModel):
    """One dead-lettered input, as published (JSON) to the dead-letter topic."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reason: Reason
    field: str = ""
    detail: str = Field(default="", max_length=MAX_DETAIL_CHARS)
    event_id: str | None = None
    original_b64: str
    original_bytes: int = Field(ge=0)
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    dead_lettered_at: datetime

    def original(self) -> bytes:
        """The payload exactly as it was received."""
        return base64.b64decode(self.original_b64)

    def to_bytes(self) -> bytes:
        """The wire form (UTF-8 JSON)."""
        return self.model_dump_json().encode("utf-8")
