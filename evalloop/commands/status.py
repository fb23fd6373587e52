"""`evalloop status`: per-category window figures and alert states from Redis."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the `status` subcommand."""
    parser = subparsers.add_parser("status", help="per-category quality figures and alert states (Redis)")
    parser.add_argument(
        "--window",
        default=None,
        help="window ending at the watermark, with a unit: 30m, 2h, 1d (default: the longest rule window)",
    )
    parser.add_argument(
        "--policy", type=Path, default=None, help="policy YAML (default: settings.policy_file)"
    )
    parser.add_argument(
        "--json", action="store_true", help="one JSON object: as_of, latest_event_time, categories"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the status table (or JSON)."""
    from schemas.policy import load_policy, parse_duration
    from schemas.settings import load_settings
    from streams.config import StreamSettings
    from streams.services import require_redis
    from streams.status import collect, known_windows, redis_from_settings, render_json, render_table

    settings = load_settings()
    policy = load_policy(args.policy or settings.policy_file)
    windows = known_windows(policy)
    window_s = parse_duration(args.window) if args.window else (windows[-1] if windows else 3600)
    client = redis_from_settings(settings)
    require_redis(settings, client)
    try:
        report = collect(settings, policy, client, window_s, StreamSettings().bucket_seconds)
    finally:
        client.close()
    print(render_json(report) if args.json else render_table(report))
    return 0
