"""`evalloop windows rebuild`: restore Redis windows and alert states from the judgments topic."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the `windows` subcommand."""
    parser = subparsers.add_parser(
        "windows",
        help="maintain the Redis windows (rebuild them from the judgments topic)",
        description=(
            "rebuild: clear the run's Redis prefix, re-apply every distinct judgment from the "
            "judgments topic, restore alert states without emitting, and cross-check them with "
            "the alerts topic. Run it with the workers stopped or idle (docs/reliability.md)."
        ),
    )
    parser.add_argument("action", choices=["rebuild"], help="what to do")
    parser.add_argument(
        "--policy", type=Path, default=None, help="policy YAML (default: settings.policy_file)"
    )
    parser.add_argument(
        "--idle-timeout", type=float, default=10.0, help="stop reading after this long without data"
    )
    parser.add_argument("--json", action="store_true", help="print the counts as one JSON object")
    parser.add_argument(
        "--fail-on-mismatch",
        action="store_true",
        help="exit 1 when restored states disagree with the alerts topic",
    )
    parser.set_defaults(func=run)


def _describe(counts: dict[str, Any]) -> str:
    lines = [
        f"judgments read {counts['judgments_read']} ({counts['distinct']} distinct, "
        f"{counts['duplicates']} duplicates, {counts['invalid']} invalid)",
        f"cleared {counts['keys_cleared']} keys; applied {counts['applied']} judgments "
        f"in {counts['categories']} categories",
        f"alert states restored (not ok) {counts['alert_states_restored']} after "
        f"{counts['evaluations']} evaluations; {counts['alerts_on_topic']} alerts on the topic",
        f"reconciled with the alerts topic: {len(counts['reconciled'])}",
    ]
    lines += [f"  {problem}" for problem in counts["reconciled"]]
    lines.append(f"mismatches vs the alerts topic after reconciling: {len(counts['mismatches'])}")
    lines += [f"  {problem}" for problem in counts["mismatches"]]
    lines.append(f"watermark {counts['watermark']}; took {counts['seconds']:.1f}s")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Rebuild and print the counts."""
    from schemas.policy import load_policy
    from schemas.settings import load_settings
    from streams.config import StreamSettings
    from streams.rebuild import rebuild
    from streams.services import require_kafka, require_redis

    settings = load_settings()
    stream = StreamSettings()
    policy = load_policy(args.policy or settings.policy_file)
    require_kafka(settings, topics=(settings.topics.judgments.name, settings.topics.alerts.name))
    require_redis(settings)
    counts = rebuild(
        settings,
        policy,
        calibration_dir=settings.calibration_dir,
        bucket_seconds=stream.bucket_seconds,
        ttl_seconds=stream.window_ttl_s,
        allowed_lateness_s=stream.allowed_lateness_s,
        idle_timeout_s=args.idle_timeout,
    ).as_dict()
    print(json.dumps(counts) if args.json else _describe(counts))
    return 1 if args.fail_on_mismatch and counts["mismatches"] else 0
