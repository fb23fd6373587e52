"""`evalloop offsets`: the worker group's lag per partition; skip past or reset a partition."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

LOOP_TOPICS = ("events", "samples", "judgments")


def register(subparsers: Any) -> None:
    """Add the `offsets` command group."""
    parser = subparsers.add_parser(
        "offsets",
        help="the worker group's committed offsets and lag; skip or reset a partition (workers stopped)",
        description=(
            "show: committed offset, log end and lag per partition of the loop's input topics. "
            "skip: dead-letter (reason 'skipped') and move the group past records it cannot read. "
            "reset: move the group to earliest, latest or an offset. skip and reset need the "
            "group's workers stopped (Kafka refuses commits to a group with live members)."
        ),
    )
    actions = parser.add_subparsers(dest="offsets_command", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="lag per topic and partition")
    _common(show)
    show.add_argument("--json", action="store_true", help="one JSON object per partition, as a list")
    show.set_defaults(func=run_show)
    skip = actions.add_parser("skip", help="dead-letter and skip the records before --to on one partition")
    _common(skip)
    skip.add_argument("--topic", required=True, help="topic name or stage (events, samples, judgments)")
    skip.add_argument("--partition", type=int, required=True, help="partition number")
    skip.add_argument(
        "--to", type=int, required=True, help="first offset to keep (records before it are skipped)"
    )
    skip.set_defaults(func=run_skip)
    reset = actions.add_parser("reset", help="move the group on a topic to earliest, latest or an offset")
    _common(reset)
    reset.add_argument("--topic", required=True, help="topic name or stage (events, samples, judgments)")
    reset.add_argument("--partition", type=int, action="append", help="partition (repeatable; default: all)")
    reset.add_argument("--to", required=True, help="earliest, latest or an offset number")
    reset.set_defaults(func=run_reset)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--group", default=None, help="consumer group (default: the worker's, EVALLOOP_STREAM_APP_ID)"
    )


def _context(args: argparse.Namespace) -> tuple[Any, str]:
    from schemas.settings import load_settings
    from streams.config import StreamSettings
    from streams.services import require_kafka

    settings = load_settings()
    require_kafka(settings)
    return settings, args.group or StreamSettings().app_id


def _print(rows: list[Any]) -> None:
    print(f"{'topic':<40} {'part':>4} {'committed':>10} {'end':>10} {'lag':>8}")
    for row in rows:
        committed = "-" if row.committed is None else str(row.committed)
        print(f"{row.topic:<40} {row.partition:>4} {committed:>10} {row.high:>10} {row.lag:>8}")


def run_show(args: argparse.Namespace) -> int:
    """Print the group's lag on the events, samples and judgments topics."""
    from streams.offsets import group_lag, resolve_topic

    settings, group = _context(args)
    rows = group_lag(settings, group, [resolve_topic(settings, t) for t in LOOP_TOPICS])
    if args.json:
        print(json.dumps([{**row.__dict__, "lag": row.lag} for row in rows]))
    else:
        print(f"group {group}")
        _print(rows)
    return 0


def run_skip(args: argparse.Namespace) -> int:
    """Dead-letter the records before --to and commit --to."""
    from streams.offsets import resolve_topic, skip

    settings, group = _context(args)
    topic = resolve_topic(settings, args.topic)
    skipped = skip(settings, group, topic, args.partition, args.to)
    print(
        f"group {group}: {topic}[{args.partition}] now at offset {args.to}; {skipped} record(s) "
        f"dead-lettered to {settings.topics.dead_letters.name} (reason 'skipped')",
        file=sys.stderr,
    )
    return 0


def run_reset(args: argparse.Namespace) -> int:
    """Commit the new position and print the lag after it."""
    from streams.offsets import reset, resolve_topic

    settings, group = _context(args)
    rows = reset(settings, group, resolve_topic(settings, args.topic), args.partition, args.to)
    print(f"group {group}")
    _print(rows)
    return 0
