"""`evalloop events check FILE`: validate a JSONL file of recommendation events."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from schemas.base import SchemaError
from schemas.events import parse_event

MAX_REPORTED = 20


def register(subparsers: Any) -> None:
    """Add the `events` command group."""
    parser = subparsers.add_parser("events", help="validate recommendation events")
    actions = parser.add_subparsers(dest="events_command", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="validate a JSONL file of events, one per line")
    check.add_argument("file", type=Path, help="JSONL file ('-' for standard input)")
    check.set_defaults(func=run_check)


def _lines(path: Path) -> list[bytes]:
    data = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    return data.splitlines()


def run_check(args: argparse.Namespace) -> int:
    """Print one line per invalid event (line number, field, reason); exit 1 if any is invalid."""
    valid = invalid = 0
    for number, raw in enumerate(_lines(args.file), start=1):
        if not raw.strip():
            continue
        try:
            parse_event(raw)
            valid += 1
        except SchemaError as error:
            invalid += 1
            if invalid <= MAX_REPORTED:
                print(f"line {number}: {error}", file=sys.stderr)
    print(f"{valid} valid, {invalid} invalid event(s) in {args.file}")
    return 1 if invalid else 0
