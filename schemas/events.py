"""Recommendation events (what production showed) and samples (what the loop chose to judge)."""

from __future__ import annotations

import json
from typing import Annotated, Any

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

#: Largest accepted event on the wire; bigger payloads go to the dead-letter topic unparsed.
MAX_EVENT_BYTES = 256 * 1024
MAX_ITEMS_PER_EVENT = 100

Text = Annotated[str, Field(min_length=1, max_length=2000)]


class Item(StrictModel):
    """One recommended item as the production model showed it."""

    item_id: Identifier
    title: Text
    description: Annotated[str, Field(max_length=8000)] | None = None
    category: Annotated[str, Field(max_length=500)] | None = None
    attributes: Attributes = Field(default_factory=dict)
    rank: int = Field(ge=1, le=10_000)


class RequestContext(StrictModel):
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


class RecommendationEvent(StrictModel):
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


def parse_event(raw: bytes) -> RecommendationEvent:
    """Parse one event from the wire, raising SchemaError that names the field and why.

    Size and encoding are checked before JSON parsing so an oversized or non-UTF-8 payload gets
    a specific reason rather than a generic parse error.
    """
    if len(raw) > MAX_EVENT_BYTES:
        raise SchemaError("<payload>", f"event is {len(raw)} bytes, over the {MAX_EVENT_BYTES}-byte limit")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SchemaError("<payload>", f"invalid UTF-8 at byte {error.start}") from None
    _reject_duplicate_keys(text)
    try:
        return RecommendationEvent.model_validate_json(raw)
    except ValidationError as error:
        raise describe_validation_error(error) from None


def _pairs_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        duplicated = sorted({key for key in keys if keys.count(key) > 1})
        raise SchemaError(duplicated[0], f"key {duplicated[0]!r} appears twice in one JSON object")
    return dict(pairs)


def _reject_duplicate_keys(text: str) -> None:
    """Duplicate keys are valid JSON but ambiguous (parsers disagree on which wins): refuse them.

    pydantic's parser silently keeps the last one, so this one extra stdlib parse checks first;
    malformed JSON is left for pydantic to report with its position.
    """
    try:
        json.loads(text, object_pairs_hook=_pairs_without_duplicates)
    except (json.JSONDecodeError, RecursionError):
        return  # pydantic reports these, with the position / its own depth limit
