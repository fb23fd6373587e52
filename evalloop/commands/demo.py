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
    parser.add_argument("--events", type=Path, default=defaults.events_file)
    parser.add_argument("--policy", type=Path, default=defaults.policy_file)
    parser.add_argument("--category", default=defaults.category, help="category to degrade")
    parser.add_argument("--from", dest="start", default=defaults.degrade_from, help="degradation start")
    parser.add_argument("--to", dest="end", default=defaults.degrade_to, help="degradation end")
    parser.add_argument("--fraction", type=float, default=defaults.fraction)
    parser.add_argument("--speed", type=float, default=defaults.speed, help="event-time speed-up")
    parser.add_argument("--teacher", default=None, help="teacher backend (default: the policy's)")
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
