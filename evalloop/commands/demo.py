"""`evalloop demo`: the whole loop on the bundled data with an injected degradation (`make run`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from evalloop.demo import DemoConfig, run_demo


def register(subparsers: Any) -> None:
    """Add the `demo` command."""
    defaults = DemoConfig()
    parser = subparsers.add_parser(
        "demo", help="run the whole loop on the bundled WANDS day with a degradation injected (make run)"
    )
    parser.add_argument(
        "--events",
        type=Path,
        default=defaults.events_file,
        help=f"JSONL events (default {defaults.events_file})",
    )
    parser.add_argument(
        "--policy",
        type=Path,
        default=defaults.policy_file,
        help=f"policy YAML (default {defaults.policy_file})",
    )
    parser.add_argument(
        "--category",
        default=defaults.category,
        help=f"policy category to degrade (default {defaults.category!r})",
    )
    parser.add_argument(
        "--from",
        dest="start",
        default=defaults.degrade_from,
        help=f"degradation start, event time ISO-8601 with zone (default {defaults.degrade_from})",
    )
    parser.add_argument(
        "--to",
        dest="end",
        default=defaults.degrade_to,
        help=f"degradation end, event time, exclusive (default {defaults.degrade_to})",
    )
    parser.add_argument(
        "--fraction",
        type=float,
        default=defaults.fraction,
        help=f"share of the category's items swapped, 0-1 (default {defaults.fraction})",
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=defaults.speed,
        help=f"event seconds replayed per wall second (default {defaults.speed:g}x)",
    )
    parser.add_argument("--teacher", default=None, help="teacher backend name (default: the policy's)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo with the given options."""
    config = DemoConfig(
        events_file=args.events,
        policy_file=args.policy,
        category=args.category,
        degrade_from=args.start,
        degrade_to=args.end,
        fraction=args.fraction,
        speed=args.speed,
        backend=args.teacher,
    )
    return run_demo(config)
