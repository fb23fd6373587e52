"""`evalloop replay FILE --speed N|max`: produce a recorded JSONL day onto the events topic."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _speed(text: str) -> float | None:
    if text == "max":
        return None
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("speed must be > 0 or 'max'")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError("fraction must be in (0, 1]")
    return value


def register(subparsers: Any) -> None:
    """Add the `replay` subcommand."""
    parser = subparsers.add_parser("replay", help="replay a recorded JSONL of events onto the events topic")
    parser.add_argument("file", type=Path, help="JSONL of recommendation events (one per line)")
    parser.add_argument(
        "--speed", type=_speed, default=None, help="event-time speed-up N, or 'max' (default)"
    )
    parser.add_argument("--key", choices=["event_id", "category"], default="event_id", help="message key")
    parser.add_argument("--limit", type=int, default=None, help="only the first N lines")
    parser.add_argument("--inject-degradation", metavar="CATEGORY", default=None)
    parser.add_argument("--from", dest="start", default=None, help="degradation start (ISO event time)")
    parser.add_argument("--to", dest="end", default=None, help="degradation end (ISO event time, exclusive)")
    parser.add_argument(
        "--fraction", type=_fraction, default=0.5, help="share of items swapped (default 0.5)"
    )
    parser.add_argument("--seed", type=int, default=7, help="RNG seed of the degradation")
    parser.add_argument("--json", action="store_true", help="print the counts as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Replay and print the counts; exit 1 if any record failed delivery."""
    from schemas.settings import load_settings
    from streams.replay import Degradation, parse_time, replay
    from streams.services import require_kafka

    if not args.file.is_file():
        print(f"evalloop replay: no such file: {args.file}", file=sys.stderr)
        return 2
    settings = load_settings()
    require_kafka(settings, topics=(settings.topics.events.name,))
    degradation = None
    if args.inject_degradation:
        degradation = Degradation(
            category=args.inject_degradation,
            start=parse_time(args.start) if args.start else None,
            end=parse_time(args.end) if args.end else None,
            fraction=args.fraction,
            seed=args.seed,
        )
    counts = replay(
        args.file,
        settings,
        speed=args.speed,
        key_by=args.key,
        degradation=degradation,
        limit=args.limit,
    )
    if args.json:
        print(json.dumps(counts.as_dict(), ensure_ascii=False))
    else:
        print(
            f"produced {counts.produced} of {counts.lines} lines (acknowledged by Kafka) "
            f"in {counts.seconds:.1f}s "
            f"({counts.unparsed} unparsed, {counts.degraded_events} events degraded, "
            f"{counts.swapped_items} items swapped, {counts.delivery_errors} delivery errors)"
        )
    return 1 if counts.delivery_errors else 0
