"""Reading Gate 1 ratings from JSONL: one ``{"item_id", "rater_id", "label"}`` object per line.

Extra fields are ignored (the bundled crowd data carries ``topic_id``, ``source``, ...).
Blank lines are skipped. Every problem is reported with the file and 1-based line number
and, where it concerns one field, the field's name, so a bad export can be fixed by hand.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from judges.agreement import Rating

REQUIRED_FIELDS = ("item_id", "rater_id", "label")


class RatingsFormatError(ValueError):
    """A ratings file that cannot be read; the message names the line and field."""


def load_ratings(path: str | Path) -> list[Rating]:
    """Read every rating in the JSONL file at ``path``; raise ``RatingsFormatError`` on any bad line."""
    source = str(path)
    try:
        with open(path, encoding="utf-8") as handle:
            return parse_ratings(handle, source=source)
    except OSError as exc:
        raise RatingsFormatError(f"{source}: cannot read ratings file: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise RatingsFormatError(f"{source}: not UTF-8 text ({exc.reason})") from exc


def parse_ratings(lines: Iterable[str], source: str = "<ratings>") -> list[Rating]:
    """Parse JSONL ``lines`` into ratings; ``source`` names the input in error messages."""
    ratings = [
        _parse_line(line, f"{source}:{number}") for number, line in enumerate(lines, start=1) if line.strip()
    ]
    if not ratings:
        raise RatingsFormatError(f"{source}: no ratings (the file is empty)")
    return ratings


def _parse_line(line: str, where: str) -> Rating:
    """One JSONL line -> ``Rating``; ``where`` is ``file:line`` for the error message."""
    try:
        record: Any = json.loads(line)
    except json.JSONDecodeError as exc:
        raise RatingsFormatError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict):
        raise RatingsFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
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
