"""Recommendation events (what production showed) and samples (what the loop chose to judge)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from schemas.base import (
    Attributes,
    Identifier,
    SchemaError,
    ShortText,
    StrictModel,
    Timestamp,
    describe_validation_error,
)
from schemas.judgments import CanaryTag

#: Largest accepted event on the wire; bigger payloads go to the dead-letter topic unparsed.
MAX_EVENT_BYTES = 256 * 1024
MAX_ITEMS_PER_EVENT = 100

Text = Annotated[str, Field(min_length=1, max_length=2000)]

#: What ``parse_event`` does with fields the schema does not know (``EVALLOOP_STREAM_UNKNOWN_FIELDS``).
UnknownFields = Literal["ignore", "reject"]

_UNKNOWN_FIELDS_NOTE = (
    "Fields not listed here are accepted and ignored by default (counted per field name); "
    "a worker with EVALLOOP_STREAM_UNKNOWN_FIELDS=reject dead-letters them as 'unknown_field'."
)


class ProducerModel(StrictModel):
    """Strict types, frozen, but producers may add fields: ``parse_event`` decides what they mean.

    Producers evolve their payloads (an ``experiment_arm``, a ``price`` on an item) faster than the
    loop's schema; refusing every event over one added field would dead-letter a whole stream.
    """

    model_config = ConfigDict(
        strict=True,
        extra="ignore",
        frozen=True,
        json_schema_extra={"additionalProperties": True, "$comment": _UNKNOWN_FIELDS_NOTE},
    )


class Item(ProducerModel):
    """One recommended item as the production model showed it."""

    item_id: Identifier
    title: Text
    description: Annotated[str, Field(max_length=8000)] | None = None
    category: Annotated[str, Field(max_length=500)] | None = None
    attributes: Attributes = Field(default_factory=dict)
    rank: int = Field(ge=1, le=10_000)


class RequestContext(ProducerModel):
    """What the user asked for: a free-text query and/or a stated goal, plus attributes."""

    query: Text | None = None
    user_goal: Text | None = None
    attributes: Attributes = Field(default_factory=dict)

    @model_validator(mode="after")
    def _has_intent(self) -> RequestContext:
        if not (self.query or self.user_goal):
            raise ValueError("request needs a query or a user_goal")
        return self

    def intent_text(self) -> str:
        """The text the teacher judges relevance against."""
        return " — ".join(part for part in (self.query, self.user_goal) if part)


class RecommendationEvent(ProducerModel):
    """One production recommendation: a request and the ranked items the model returned."""

    event_id: Identifier
    event_time: Timestamp
    category: ShortText
    surface: ShortText = "search"
    request: RequestContext
    items: Annotated[list[Item], Field(min_length=1, max_length=MAX_ITEMS_PER_EVENT)]
    model_version: Identifier
    #: Human labels by item id when the stream carries them (replayed, labelled data); checking only.
    reference_labels: Annotated[dict[Identifier, ShortText], Field(max_length=MAX_ITEMS_PER_EVENT)] | None = (
        None
    )

    @field_validator("items")
    @classmethod
    def _unique_item_ids(cls, items: list[Item]) -> list[Item]:
        seen: set[str] = set()
        for position, item in enumerate(items):
            if item.item_id in seen:
                raise ValueError(f"item_id {item.item_id!r} appears twice (position {position})")
            seen.add(item.item_id)
        return items


class Sample(StrictModel):
    """An event chosen for judging, with the probability it had of being chosen.

    ``inclusion_probability`` lets window estimates weight each judgment by ``1 / p`` so
    per-category rates estimate the whole stream, not just the sample.
    """

    event: RecommendationEvent
    inclusion_probability: float = Field(gt=0.0, le=1.0)
    policy_version: Identifier
    #: Set when the event is a golden canary built by the sample stage (docs/canaries.md).
    canary: CanaryTag | None = None


class JudgeRequest(StrictModel):
    """One (request, item) pair for the teacher, with what its judgment must carry back.

    The wire form between the streams and the Ray Serve teacher; both sides import it from here.
    Lax (not strict) like any model read from HTTP JSON by ``model_validate``; the nested item
    stays strict.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: Identifier
    category: ShortText
    event_time: Timestamp
    query: Annotated[str, Field(min_length=1, max_length=4100)]
    item: Item
    inclusion_probability: float = Field(default=1.0, gt=0.0, le=1.0)


def requests_from_sample(sample: Sample, max_items: int) -> list[JudgeRequest]:
    """The pairs of a sampled event the teacher grades: its top ``max_items`` items by rank."""
    event = sample.event
    items = sorted(event.items, key=lambda item: item.rank)[:max_items]
    return [
        JudgeRequest(
            event_id=event.event_id,
            category=event.category,
            event_time=event.event_time,
            query=event.request.intent_text(),
            item=item,
            inclusion_probability=sample.inclusion_probability,
        )
        for item in items
    ]


@dataclass(frozen=True)
class ParsedEvent:
    """An event that validated, and the dotted names of the fields it carried that we ignore."""

    event: RecommendationEvent
    unknown_fields: tuple[str, ...] = ()


def parse_event(raw: bytes, unknown_fields: UnknownFields = "ignore") -> RecommendationEvent:
    """Parse one event from the wire, raising SchemaError that names the field and why."""
    return parse_event_report(raw, unknown_fields).event


def parse_event_report(raw: bytes | None, unknown_fields: UnknownFields = "ignore") -> ParsedEvent:
    """Parse one event and report the unknown fields it carried (``reject``: they are an error).

    Size and encoding are checked before JSON parsing so an oversized or non-UTF-8 payload gets
    a specific reason rather than a generic parse error. A null value (a Kafka tombstone) and an
    empty one are errors of their own (field ``<payload>``).
    """
    if raw is None:
        raise SchemaError("<payload>", "null value (a tombstone): an event needs a JSON object")
    if not raw.strip():
        raise SchemaError("<payload>", "empty value: an event needs a JSON object")
    if len(raw) > MAX_EVENT_BYTES:
        raise SchemaError("<payload>", f"event is {len(raw)} bytes, over the {MAX_EVENT_BYTES}-byte limit")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SchemaError("<payload>", f"invalid UTF-8 at byte {error.start}") from None
    document = _document_without_duplicate_keys(text)
    try:
        event = RecommendationEvent.model_validate_json(raw)
    except ValidationError as error:
        raise describe_validation_error(error) from None
    unknown = unknown_event_fields(document)
    if unknown and unknown_fields == "reject":
        raise SchemaError(
            unknown[0], "unknown field (the worker runs with EVALLOOP_STREAM_UNKNOWN_FIELDS=reject)"
        )
    return ParsedEvent(event, unknown)


def _unknown_keys(data: object, model: type[ProducerModel], path: str) -> list[str]:
    if not isinstance(data, Mapping):
        return []
    known = set(model.model_fields)
    return [f"{path}{key}" for key in data if key not in known]


def unknown_event_fields(document: object) -> tuple[str, ...]:
    """Dotted names of the fields of an event document the schema does not know, sorted.

    Items' unknown fields are named once as ``items.<field>`` whichever items carry them.
    """
    found = set(_unknown_keys(document, RecommendationEvent, ""))
    if isinstance(document, Mapping):
        found.update(_unknown_keys(document.get("request"), RequestContext, "request."))
        items = document.get("items")
        for item in items if isinstance(items, list) else []:
            found.update(_unknown_keys(item, Item, "items."))
    return tuple(sorted(found))


def _pairs_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # One dict build, compared by size: the common case costs no more than json.loads' own.
    document = dict(pairs)
    if len(document) != len(pairs):
        keys = [key for key, _ in pairs]
        duplicated = sorted({key for key in keys if keys.count(key) > 1})
        raise SchemaError(duplicated[0], f"key {duplicated[0]!r} appears twice in one JSON object")
    return document


def _document_without_duplicate_keys(text: str) -> object:
    """Duplicate keys are valid JSON but ambiguous (parsers disagree on which wins): refuse them.

    pydantic's parser silently keeps the last one, so this one extra stdlib parse checks first
    (and its result names the unknown fields); malformed JSON is left for pydantic to report with
    its position, and then there is no document (None).
    """
    try:
        return json.loads(text, object_pairs_hook=_pairs_without_duplicates)
    except (json.JSONDecodeError, RecursionError):
        return None  # pydantic reports these, with the position / its own depth limit
