"""Reading Gate 1 ratings from JSONL: one ``{"item_id", "rater_id", "label"}`` object per line.

Extra fields are ignored (the bundled crowd data carries ``topic_id``, ``source``, ...).
Blank lines are skipped. Every problem is reported with the file and 1-based line number
and, where it concerns one field, the field's name, so a bad export can be fixed by hand.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from judges.agreement import Rating
from schemas.jsonl import iter_objects, load_jsonl, require_some

REQUIRED_FIELDS = ("item_id", "rater_id", "label")


class RatingsFormatError(ValueError):
    """A ratings file that cannot be read; the message names the line and field."""


def load_ratings(path: str | Path) -> list[Rating]:
    """Read every rating in the JSONL file at ``path``; raise ``RatingsFormatError`` on any bad line."""
    return load_jsonl(path, RatingsFormatError, "ratings", parse_ratings)


def parse_ratings(lines: Iterable[str], source: str = "<ratings>") -> list[Rating]:
    """Parse JSONL ``lines`` into ratings; ``source`` names the input in error messages."""
    ratings = [_rating(record, where) for where, record in iter_objects(lines, source, RatingsFormatError)]
    return require_some(ratings, source, RatingsFormatError, "ratings")


def _rating(record: dict[str, Any], where: str) -> Rating:
    """One JSON object -> ``Rating``; ``where`` is ``file:line`` for the error message."""
    missing = [name for name in REQUIRED_FIELDS if name not in record]
    if missing:
        raise RatingsFormatError(f"{where}: missing field(s) {', '.join(repr(m) for m in missing)}")
    return Rating(
        item_id=_identifier(record["item_id"], "item_id", where),
        rater_id=_identifier(record["rater_id"], "rater_id", where),
        label=_label(record["label"], where),
    )


def _identifier(value: Any, name: str, where: str) -> str:
    """A non-empty string id; integer ids are accepted and turned into strings."""
    # bool is an int subclass, but `true` as an id is certainly a mistake.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value
    raise RatingsFormatError(f"{where}: field {name!r} must be a non-empty string, got {value!r}")


def _label(value: Any, where: str) -> int:
    """An integer grade; floats and strings are refused rather than guessed at."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise RatingsFormatError(f"{where}: field 'label' must be an integer, got {value!r}")
