"""`evalloop backtest FILE`: which alerts a policy would have sent on a recorded stream."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from evalloop.backtest import BacktestResult, backtest
from schemas.policy import PolicyError, load_policy
from streams.replay import Degradation, parse_time


def register(subparsers: Any) -> None:
    """Add the `backtest` command."""
    parser = subparsers.add_parser(
        "backtest",
        help="run the policy offline over a recorded JSONL stream and list the alerts it would send",
    )
    parser.add_argument("file", type=Path, help="JSONL events (RecommendationEvent schema)")
    parser.add_argument(
        "--policy",
        default=os.environ.get("EVALLOOP_POLICY_FILE", "policies/product-search.yaml"),
        help="policy YAML (default: $EVALLOOP_POLICY_FILE or policies/product-search.yaml)",
    )
    parser.add_argument("--teacher", default=None, help="teacher backend name (default: the policy's)")
    parser.add_argument(
        "--inject-degradation", metavar="CATEGORY", help="degrade this policy category's results"
    )
    parser.add_argument(
        "--from", dest="start", help="degradation start, event time ISO-8601 with zone (2024-06-01T10:00:00Z)"
    )
    parser.add_argument("--to", dest="end", help="degradation end, event time ISO-8601 with zone (exclusive)")
    parser.add_argument(
        "--fraction", type=float, default=0.5, help="share of the items swapped, 0-1 (default 0.5)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def _degradation(args: argparse.Namespace, categories: list[str]) -> Degradation | None:
    if not args.inject_degradation:
        return None
    if args.inject_degradation not in categories:
        known = ", ".join(categories)
        raise ValueError(
            f"--inject-degradation: unknown category {args.inject_degradation!r}; the policy has {known}"
        )
    start = parse_time(args.start) if args.start else None
    end = parse_time(args.end) if args.end else None
    return Degradation(args.inject_degradation, start, end, args.fraction)


def _summary(result: BacktestResult) -> dict[str, Any]:
    shares = {
        category: {key: round(value / sum(counts.values()), 4) for key, value in sorted(counts.items())}
        | {"judged": sum(counts.values())}
        for category, counts in sorted(result.displays_by_category().items())
    }
    alerts = [
        {
            "at": alert.updated_at.isoformat(),
            "state": alert.state,
            "rule": alert.rule,
            "category": alert.category,
        }
        for alert in result.alerts
    ]
    return {
        "events": result.events,
        "invalid": result.invalid,
        "sampled_events": result.sampled,
        "judgments": len(result.judgments),
        "categories": shares,
        "alerts": alerts,
    }


def _print_table(summary: dict[str, Any]) -> None:
    print(
        f"events {summary['events']} (invalid {summary['invalid']}), sampled {summary['sampled_events']}, "
        f"judgments {summary['judgments']}"
    )
    print(f"{'category':<30} {'judged':>7} {'show':>6} {'related':>8} {'filter':>7} {'error':>6}")
    for category, shares in summary["categories"].items():
        cells = [f"{shares.get(key, 0.0):.2f}" for key in ("show", "related", "filter", "error")]
        print(f"{category:<30} {shares['judged']:>7} {cells[0]:>6} {cells[1]:>8} {cells[2]:>7} {cells[3]:>6}")
    print("alerts:" if summary["alerts"] else "alerts: none")
    for alert in summary["alerts"]:
        print(f"  {alert['at']}  {alert['state']:<8} {alert['rule']:<24} {alert['category']}")


def run(args: argparse.Namespace) -> int:
    """Backtest and print the per-category shares and the alert timeline."""
    from judges.registry import build_teacher
    from schemas.settings import load_settings
    from streams.config import StreamSettings
    from streams.correction import find_corrector

    try:
        bucket_seconds = StreamSettings().bucket_seconds  # the worker's, so boundaries match live
        policy = load_policy(args.policy)
        degradation = _degradation(args, [category.name for category in policy.categories])
        if not args.file.is_file():
            print(f"evalloop backtest: no such file: {args.file}", file=sys.stderr)
            return 2
        teacher = build_teacher(policy, args.teacher)
        corrector, message = find_corrector(
            load_settings().calibration_dir, teacher.teacher_version, policy.version
        )
        print(message, file=sys.stderr)
        result = backtest(policy, teacher, args.file, degradation, bucket_seconds, corrector)
    except (PolicyError, ValueError, OSError) as error:
        print(f"evalloop backtest: {error}", file=sys.stderr)
        return 2
    summary = _summary(result)
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        _print_table(summary)
    return 0
