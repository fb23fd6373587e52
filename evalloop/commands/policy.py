"""`evalloop policy check FILE`: validate a policy and print a readable summary.
`evalloop policy export-rules`: Prometheus alerting rules and a Grafana dashboard from it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from schemas.policy import AlertRule, Policy, PolicyError, load_policy

EXPORT_DIR = Path("infra/monitoring")
RULES_FILE, DASHBOARD_FILE = "prometheus-rules.yaml", "grafana-dashboard.json"


def register(subparsers: Any) -> None:
    """Add the `policy` command group."""
    parser = subparsers.add_parser("policy", help="validate and summarise a policy file")
    actions = parser.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="validate a policy YAML and print its summary")
    check.add_argument("file", help="policy YAML file")
    check.set_defaults(func=run_check)
    export = actions.add_parser(
        "export-rules",
        help="write Prometheus alerting rules and a Grafana dashboard generated from the policy",
        description="Writes prometheus-rules.yaml and grafana-dashboard.json (docs/metrics.md).",
    )
    export.add_argument("--policy", default=None, help="policy YAML (default: settings.policy_file)")
    export.add_argument(
        "--out", type=Path, default=EXPORT_DIR, help=f"directory to write to (default {EXPORT_DIR})"
    )
    export.add_argument(
        "--dashboard-url", default=None, help="evalloop dashboard base URL for the rules' links"
    )
    export.set_defaults(func=run_export)
    impact = actions.add_parser(
        "impact",
        help="what a policy change does: backtest a recorded stream under both, compare",
        description="Backtests EVENTS under --old and --new with the same teacher backend and reports "
        "grades, display decisions, failure modes and alerts per category, and every display flip "
        "(docs/policy-impact.md).",
    )
    impact.add_argument("--old", type=Path, required=True, help="the policy in use (YAML)")
    impact.add_argument("--new", type=Path, required=True, help="the proposed policy (YAML)")
    impact.add_argument("--events", type=Path, required=True, help="recorded events (JSONL)")
    impact.add_argument("--teacher", default=None, help="teacher backend (default: the old policy's)")
    impact.add_argument("--flips", type=int, default=20, help="flips to list (default 20; --json lists all)")
    impact.add_argument(
        "--raw", action="store_true", help="judge raw shares on both sides (no teacher calibration)"
    )
    impact.add_argument("--json", action="store_true", help="print one JSON object")
    impact.set_defaults(func=run_impact)


def _rubric_lines(policy: Policy) -> list[str]:
    return [
        f"  {level.grade}  {level.name:<12} {level.display:<8} {len(level.examples)} example(s)"
        for level in policy.rubric
    ]


def _cusum_line(rule: AlertRule) -> str:
    from streams.alerting import cusum_design
    from streams.windows import DEFAULT_BUCKET_SECONDS

    assert rule.cusum is not None
    target = f"{rule.signal}({rule.failure_mode})" if rule.failure_mode else rule.signal
    design = cusum_design(rule, DEFAULT_BUCKET_SECONDS)
    return (
        f"  {rule.id}: CUSUM {target} {rule.cusum.in_control:g} -> {rule.threshold:g}, false alarm "
        f"every {rule.cusum.false_alarm_every} at {rule.cusum.judgments_per_hour:g}/h: alarm level "
        f"{design.threshold:.2f} (5-minute buckets), {rule.severity}"
    )


def _alert_lines(policy: Policy) -> list[str]:
    lines = []
    for rule in policy.alerts:
        if rule.kind == "cusum":
            lines.append(_cusum_line(rule))
            continue
        windows = ", ".join(f"{w.long}/{w.short}×{w.factor:g}" for w in rule.windows)
        target = f"{rule.signal}({rule.failure_mode})" if rule.failure_mode else rule.signal
        lines.append(
            f"  {rule.id}: {target} > {rule.threshold:g} in {windows}, "
            f"min {rule.min_samples} samples, {rule.confidence:.0%} bound, {rule.severity}"
        )
    return lines


def summarise(policy: Policy) -> str:
    """A human-readable summary of a validated policy."""
    categories = ", ".join(f"{c.name} ({policy.sample_rate(c.name):g})" for c in policy.categories)
    budget = policy.sampling.max_judgments_per_second
    lines = [
        f"policy {policy.name} version {policy.version}: OK",
        f"rubric ({policy.min_grade}-{policy.max_grade}):",
        *_rubric_lines(policy),
        f"failure modes: {', '.join(policy.failure_mode_ids()) or '(none)'}",
        f"categories (sample rate): {categories}",
        f"sampling: default {policy.sampling.default_rate:g}, budget "
        f"{f'{budget:g} judgments/s' if budget else 'unlimited'}, "
        f"up to {policy.sampling.max_items_per_event} items per event",
        f"alert rules ({len(policy.alerts)}):",
        *_alert_lines(policy),
        f"gates: gate1 clear > {policy.gates.gate1.clear:g}, ambiguous < {policy.gates.gate1.ambiguous:g}; "
        f"gate2 {policy.gates.gate2.weights} κ ≥ {policy.gates.gate2.min_kappa:g}",
        f"golden set: {policy.golden.file} (label map {policy.golden.label_map or 'none'})",
        f"teacher: {policy.teacher.backend} ({policy.teacher.artifact})",
    ]
    return "\n".join(lines)


def run_check(args: argparse.Namespace) -> int:
    """Exit 0 and print the summary when valid; exit 1 naming the bad field otherwise."""
    try:
        policy = load_policy(args.file)
    except PolicyError as error:
        print(f"evalloop policy: {args.file} is invalid: {error}", file=sys.stderr)
        return 1
    print(summarise(policy))
    from judges.registry import unreachable_rules

    for warning in unreachable_rules(policy):
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def export_texts(policy: Policy, dashboard_url: str | None = None) -> dict[str, str]:
    """File name → content of the generated monitoring files (stable, for a freshness test)."""
    from streams.grafana import dashboard
    from streams.monitoring import prometheus_rules

    header = f"# Generated by `evalloop policy export-rules` from policy {policy.name} {policy.version}.\n"
    rules = header + yaml.safe_dump(
        prometheus_rules(policy, dashboard_url), sort_keys=False, allow_unicode=True, width=1000
    )
    return {
        RULES_FILE: rules,
        DASHBOARD_FILE: json.dumps(dashboard(policy), indent=2, ensure_ascii=False) + "\n",
    }


def run_export(args: argparse.Namespace) -> int:
    """Write the files; exit 1 on an invalid policy or an unwritable directory."""
    from schemas.settings import load_settings

    path = args.policy or load_settings().policy_file
    try:
        policy = load_policy(path)
        args.out.mkdir(parents=True, exist_ok=True)
        for name, text in export_texts(policy, args.dashboard_url).items():
            (args.out / name).write_text(text, encoding="utf-8")
            print(f"wrote {args.out / name}")
    except (PolicyError, OSError) as error:
        print(f"evalloop policy export-rules: error: {error}", file=sys.stderr)
        return 1
    return 0


def _impact_side(policy: Policy, backend: str, events: Path, raw: bool) -> tuple[Any, str]:
    """One side's backtest (the same backend, built for its policy) and what its rules judged:
    corrected shares where a calibration of that teacher for that policy version exists."""
    from evalloop.backtest import backtest
    from judges.registry import build_teacher
    from schemas.settings import load_settings
    from streams.config import StreamSettings
    from streams.correction import find_corrector

    teacher = build_teacher(policy, backend)
    corrector = None
    if not raw:
        directory = load_settings().calibration_dir
        corrector, _message = find_corrector(directory, teacher.teacher_version, policy.version)
    estimate = "raw shares (--raw)" if raw else "raw shares: no calibration record for this version"
    if corrector is not None:
        estimate = f"corrected shares where rules ask (calibration of {teacher.teacher_version})"
    result = backtest(policy, teacher, events, None, StreamSettings().bucket_seconds, corrector, ())
    return result, estimate


def run_impact(args: argparse.Namespace) -> int:
    """Backtest under both policies and print the comparison; exit 2 on bad input."""
    from evalloop.impact import compare, render, report_json

    try:
        old, new = load_policy(args.old), load_policy(args.new)
        if not args.events.is_file():
            raise ValueError(f"no such file: {args.events}")
        backend = args.teacher or old.teacher.backend
        # The same backend for both, each built for its policy (display and taxonomy are the policy's).
        sides = [_impact_side(p, backend, args.events, args.raw) for p in (old, new)]
    except (PolicyError, ValueError, OSError) as error:
        print(f"evalloop policy impact: error: {error}", file=sys.stderr)
        return 2
    report = compare(sides[0][0], sides[1][0], old.version, new.version)
    report.estimates = (sides[0][1], sides[1][1])
    if args.json:
        print(json.dumps(report_json(report), ensure_ascii=False))
    else:
        print(render(report, args.flips))
    return 0
