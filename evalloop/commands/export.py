"""`evalloop export judgments`: the judgments topic as JSONL training data."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the `export` subcommand."""
    parser = subparsers.add_parser("export", help="export judgments from Kafka as JSONL training data")
    parser.add_argument("what", choices=["judgments"], help="what to export")
    parser.add_argument("--out", type=Path, default=None, help="output file (default: stdout)")
    parser.add_argument("--from-beginning", action="store_true", help="read from offset 0, commit nothing")
    parser.add_argument("--include-errors", action="store_true", help="also write error judgments")
    parser.add_argument("--idle-timeout", type=float, default=10.0, help="stop after this long without data")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export and print the counts to stderr."""
    from schemas.settings import load_settings
    from streams.export import export_judgments
    from streams.services import require_kafka

    settings = load_settings()
    require_kafka(settings, topics=(settings.topics.judgments.name,))
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(args.out.open("w", encoding="utf-8")) if args.out else sys.stdout
        counts = export_judgments(
            settings,
            out,
            from_beginning=args.from_beginning,
            include_errors=args.include_errors,
            idle_timeout_s=args.idle_timeout,
        )
    print(json.dumps(counts.__dict__), file=sys.stderr)
    return 0
