"""One codec per topic: a record's bytes ↔ its schema model, validated once where it enters.

The agents (``streams.stages``), the rebuild, the export, the demo's alert feed and the
reliability checks all decode and encode through these, so a record is parsed one way
everywhere and a bad one is described the same way (tombstone, empty, schema) wherever it
turns up. Events have their own, stricter reader (``schemas.events.parse_event_report``:
size, UTF-8, duplicate keys, unknown fields).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, Literal, NamedTuple, TypeVar

from pydantic import BaseModel, ValidationError

from schemas.alerts import Alert
from schemas.deadletter import DeadLetter
from schemas.events import Sample
from schemas.judgments import Judgment

M = TypeVar("M", bound=BaseModel)

Problem = Literal["tombstone", "empty", "schema"]


class Undecodable(NamedTuple):
    """Why a record's value is not a ``model``: its reason (a dead-letter reason) and detail."""

    reason: Problem
    detail: str


@dataclass(frozen=True)
class Codec(Generic[M]):
    """Bytes of one topic ↔ its model (``topic`` is the stage name, for messages)."""

    model: type[M]
    topic: str

    def decode(self, raw: bytes | None) -> M | Undecodable:
        """The record as the model, or why not (a null value, an empty one, or the schema's words)."""
        if raw is None or not raw.strip():
            reason: Problem = "tombstone" if raw is None else "empty"
            return Undecodable(reason, f"{reason} value on the {self.topic} topic")
        try:
            return self.model.model_validate_json(raw)
        except ValidationError as error:
            return Undecodable("schema", f"bad {self.model.__name__.lower()}: {str(error)[:500]}")

    def decode_all(self, raws: Iterable[bytes]) -> tuple[list[M], int]:
        """The records that decode, in order, and how many did not."""
        decoded = [self.decode(raw) for raw in raws]
        good = [value for value in decoded if not isinstance(value, Undecodable)]
        return good, len(decoded) - len(good)

    def encode(self, value: M) -> bytes:
        """The record's wire form: UTF-8 JSON."""
        return value.model_dump_json().encode("utf-8")


SAMPLES = Codec(Sample, "samples")
JUDGMENTS = Codec(Judgment, "judgments")
ALERTS = Codec(Alert, "alerts")
DEAD_LETTERS = Codec(DeadLetter, "dead-letters")
