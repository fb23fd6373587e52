"""Shared base model, bounded types and the error type that names the offending field."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
)

# Event times outside this range are absurd for a production stream (clock bugs, ms-vs-s mixups).
MIN_EVENT_TIME = datetime(2000, 1, 1, tzinfo=UTC)
MAX_EVENT_TIME = datetime(2100, 1, 1, tzinfo=UTC)

Identifier = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@/+-]+$")]
ShortText = Annotated[str, Field(min_length=1, max_length=200)]
# NaN/Infinity are not JSON: accepting them would re-serialise as null and corrupt the record.
AttributeValue = str | int | Annotated[float, Field(allow_inf_nan=False)] | bool | None
Attributes = Annotated[dict[Annotated[str, Field(max_length=64)], AttributeValue], Field(max_length=64)]


def _in_sane_range(value: datetime) -> datetime:
    if not MIN_EVENT_TIME <= value < MAX_EVENT_TIME:
        raise ValueError(f"timestamp {value.isoformat()} is outside [2000-01-01, 2100-01-01)")
    return value.astimezone(UTC)


def _iso_text(value: object) -> object:
    # Text must be ISO-8601: pydantic alone would read "1700000000" as epoch seconds while
    # rejecting the number 1700000000, one ambiguous spelling accepted by accident. Parsing here
    # also keeps strict mode working on JSON input (a before-validator sees a Python str).
    if not isinstance(value, str):
        return value
    if value.strip().lstrip("-").replace(".", "", 1).isdigit():
        raise ValueError("timestamp must be ISO-8601 with a zone (e.g. 2024-06-01T10:00:00Z), not epoch text")
    try:
        return datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"timestamp {value[:40]!r} is not ISO-8601") from None


Timestamp = Annotated[AwareDatetime, BeforeValidator(_iso_text), AfterValidator(_in_sane_range)]


class StrictModel(BaseModel):
    """Frozen, strict, no unknown fields: a typo in a producer's payload is an error, not a drop."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class SchemaError(ValueError):
    """Input that does not fit a schema; ``field`` is the dotted path of the first bad field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason


def _dotted(location: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in location)


def describe_validation_error(error: ValidationError) -> SchemaError:
    """Turn pydantic's error into a SchemaError naming every bad field (first one as ``field``)."""
    issues = error.errors(include_url=False)
    first_field = (_dotted(issues[0]["loc"]) or "<root>") if issues else "<root>"
    # The first field leads the message (SchemaError prefixes it); later ones name themselves.
    parts = [issues[0]["msg"]] if issues else ["invalid input"]
    parts += [f"{_dotted(issue['loc']) or '<root>'}: {issue['msg']}" for issue in issues[1:5]]
    if len(issues) > 5:
        parts.append(f"... and {len(issues) - 5} more")
    return SchemaError(first_field, "; ".join(parts))
