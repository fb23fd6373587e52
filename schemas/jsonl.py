"""Line-numbered JSONL reading shared by the golden-set and Gate 1 ratings loaders.

Every problem names the file and 1-based line (``file:line``), so a bad export can be fixed by
hand; each loader raises its own error type and turns each object into its own record.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def load_jsonl(
    path: str | Path, error: type[ValueError], what: str, parse: Callable[[Iterable[str], str], list[T]]
) -> list[T]:
    """Open ``path`` as UTF-8 and ``parse(lines, source)`` it; unreadable files raise ``error``."""
    source = str(path)
    try:
        with open(path, encoding="utf-8") as handle:
            return parse(handle, source)
    except OSError as exc:
        raise error(f"{source}: cannot read {what} file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{source}: not UTF-8 text ({exc.reason})") from None


def iter_objects(
    lines: Iterable[str], source: str, error: type[ValueError]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(file:line, object)`` for each non-blank line, in order; a line that is not a JSON
    object raises ``error`` when reached, so the first bad line is the one reported."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            record: Any = json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(record, dict):
            raise error(f"{where}: expected a JSON object, got {type(record).__name__}")
        yield where, record


def require_some(records: list[T], source: str, error: type[ValueError], noun: str) -> list[T]:
    """``records`` unchanged, or ``error`` when the input held none."""
    if not records:
        raise error(f"{source}: no {noun} (the file is empty)")
    return records
