"""`evalloop policy check FILE`: validate a policy and print a readable summary."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from schemas.policy import AlertRule, Policy, PolicyError, load_policy


def register(subparsers: Any) -> None:
    """Add the `policy` command group."""
    parser = subparsers.add_parser("policy", help="validate and summarise a policy file")
    actions = parser.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="validate a policy YAML and print its summary")
    check.add_argument("file", help="policy YAML file")
    check.set_defaults(func=run_check)


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
