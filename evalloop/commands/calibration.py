"""`evalloop calibration check`: raw and bias-corrected shares against the human labels.

Replays the events through sampling and the teacher (as `evalloop backtest` does), loads the
calibration of that teacher version, and prints per category the raw, corrected and human
share over the whole stream, then the coverage of each interval over windows of event time.
Exit 0 when every category with n >= 30 has a corrected interval containing the human share,
1 when one does not (or none could be corrected), 2 on bad input. See docs/calibration.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DEFAULT_EVENTS = "data/wands/events.jsonl"


def register(subparsers: Any) -> None:
    """Add `calibration check`."""
    parser = subparsers.add_parser(
        "calibration", help="teacher calibration: check corrected shares against humans"
    )
    sub = parser.add_subparsers(dest="calibration_command", required=True)
    check = sub.add_parser("check", help="raw and corrected shares vs the events' human labels")
    check.add_argument(
        "--events", type=Path, default=Path(DEFAULT_EVENTS), help=f"JSONL (default {DEFAULT_EVENTS})"
    )
    check.add_argument(
        "--policy", type=Path, default=None, help="policy YAML (default: settings.policy_file)"
    )
    check.add_argument("--teacher", default=None, help="teacher backend (default: the policy's)")
    check.add_argument(
        "--signal",
        default="filtered_share",
        choices=("filtered_share", "not_shown_share", "shown_share", "related_share"),
        help="the share to check (default filtered_share)",
    )
    check.add_argument("--window", default="1h", help="window of event time for coverage (default 1h)")
    check.add_argument("--calibration-dir", type=Path, default=None, help="default EVALLOOP_CALIBRATION_DIR")
    check.add_argument("--svg", type=Path, default=None, help="also write the per-category plot here")
    check.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    check.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    """Run the check; print the table (or JSON); return the exit code."""
    from evalloop.backtest import judge_all, load_events, sample_requests
    from evalloop.humancheck import check_windows, coverage, human_displays, svg_plot
    from judges.registry import build_teacher
    from schemas.policy import PolicyError, load_policy, parse_duration
    from schemas.settings import load_settings
    from streams.correction import find_corrector

    try:
        settings = load_settings()
        policy = load_policy(args.policy or settings.policy_file)
        window_s = parse_duration(args.window)
        if not args.events.is_file():
            raise OSError(f"no such file: {args.events}")
        events, _invalid = load_events(args.events, None)
        teacher = build_teacher(policy, args.teacher)
    except (PolicyError, ValueError, OSError, ImportError, RuntimeError) as error:
        print(f"evalloop calibration check: {error}", file=sys.stderr)
        return 2
    corrector, message = find_corrector(
        args.calibration_dir or settings.calibration_dir, teacher.teacher_version, policy.version
    )
    requests, _sampled = sample_requests(policy, events)
    judgments = judge_all(teacher, requests)
    humans = human_displays(events, policy)
    whole = check_windows(judgments, humans, args.signal, None, corrector)
    windowed = check_windows(judgments, humans, args.signal, window_s, corrector)
    covered = coverage(windowed)
    report = {
        "signal": args.signal,
        "teacher_version": teacher.teacher_version,
        "calibration": message,
        "categories": [_row_json(c) for c in whole],
        "window": args.window,
        "coverage": covered.as_dict(),
    }
    if args.svg is not None:
        judged = len(judgments)
        title = f"{args.signal}: teacher {teacher.teacher_version} vs human labels ({judged} judged items)"
        args.svg.write_text(svg_plot(whole, title), encoding="utf-8")
    print(json.dumps(report, ensure_ascii=False) if args.json else _table(report))
    return 0 if corrector is not None and all(_covered(c) for c in whole if c.n >= 30) else 1


def _covered(check: Any) -> bool:
    return bool(check.corrected_covers)


def _row_json(check: Any) -> dict[str, Any]:
    corrected = check.corrected
    return {
        "category": check.category,
        "n": check.n,
        "raw": {
            "share": round(check.raw.rate, 4),
            "lower": round(check.raw.lower, 4),
            "upper": round(check.raw.upper, 4),
        },
        "corrected": None
        if corrected is None
        else {
            "status": corrected.status,
            "share": None if corrected.value is None else round(corrected.value, 4),
            "lower": None if corrected.lower is None else round(corrected.lower, 4),
            "upper": None if corrected.upper is None else round(corrected.upper, 4),
        },
        "human": round(check.human, 4),
        "raw_covers": check.raw_covers,
        "corrected_covers": check.corrected_covers,
    }


def _interval(figure: dict[str, Any] | None) -> str:
    if figure is None:
        return "-"
    if figure.get("status", "corrected") != "corrected":
        return str(figure["status"]).replace("_", " ")
    return f"{figure['share']:.3f} [{figure['lower']:.3f}, {figure['upper']:.3f}]"


def _table(report: dict[str, Any]) -> str:
    lines = [
        f"{report['signal']}: teacher {report['teacher_version']} vs the events' human labels",
        report["calibration"],
        f"{'category':<30} {'n':>5}  {'raw [95% CI]':<24} {'corrected [95% CI]':<24} {'human':>6}  covered",
    ]
    for row in report["categories"]:
        covers = {True: "yes", False: "NO", None: "-"}[row["corrected_covers"]]
        lines.append(
            f"{row['category'][:30]:<30} {row['n']:>5}  {_interval(row['raw']):<24} "
            f"{_interval(row['corrected']):<24} {row['human']:>6.3f}  {covers}"
        )
    cov = report["coverage"]
    lines.append(
        f"coverage over {report['window']} windows with n >= 30 ({cov['windows']}): corrected "
        f"{cov['corrected_coverage']:.0%} ({cov['corrected_covered']}; {cov['uncorrected']} without a "
        f"corrected interval, {cov['coverage_when_corrected']:.0%} of the rest), "
        f"raw {cov['raw_coverage']:.0%} ({cov['raw_covered']}); nominal 95%"
    )
    return "\n".join(lines)
