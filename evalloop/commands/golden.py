"""`evalloop golden check FILE`: is a golden set well-formed and on the policy's scale?
`evalloop golden diff OLD NEW`: what changed between two versions of a golden set.

Exit codes: 0 when the check passes (warnings allowed), 1 when it finds errors, 2 when the file
or the policy cannot be read. See docs/golden.md.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from judges.golden import GoldenFormatError, check_golden, format_report, load_golden
from schemas.policy import PolicyError, load_policy

DEFAULT_POLICY = "policies/product-search.yaml"


def register(subparsers: Any) -> None:
    """Add ``golden check`` to the top-level ``evalloop`` parser."""
    parser = subparsers.add_parser("golden", help="golden-set tools (check, diff)")
    actions = parser.add_subparsers(dest="golden_command", metavar="ACTION", required=True)
    check = actions.add_parser(
        "check",
        help="check a golden JSONL file against the policy",
        description="Check a golden JSONL file: grades on the policy scale, reasons present unless "
        "imported, unique ids; warn on items labelled under another policy version.",
    )
    check.add_argument("file", metavar="FILE", help="golden JSONL file")
    check.add_argument("--policy", default=DEFAULT_POLICY, help=f"policy YAML (default {DEFAULT_POLICY})")
    check.set_defaults(func=run)
    diff = actions.add_parser(
        "diff",
        help="list what changed between two golden files",
        description="Items added and removed; per item kept, changed grades, labels, reasons and their "
        "provenance. Exit 0 when they are the same, 1 when they differ, 2 when a file cannot be read.",
    )
    diff.add_argument("old", metavar="OLD", help="the earlier golden JSONL file")
    diff.add_argument("new", metavar="NEW", help="the later golden JSONL file")
    diff.add_argument("--limit", type=int, default=50, help="changes listed per field (default 50)")
    diff.set_defaults(func=run_diff)


def run(args: argparse.Namespace) -> int:
    """Check ``args.file``; print the summary; return the exit code."""
    try:
        policy = load_policy(args.policy)
        items = load_golden(args.file)
    except (GoldenFormatError, PolicyError) as exc:
        print(f"evalloop golden: error: {exc}", file=sys.stderr)
        return 2
    report = check_golden(items, policy)
    print(format_report(report, args.file))
    return 0 if report.ok else 1


def run_diff(args: argparse.Namespace) -> int:
    """Print the diff of ``args.old`` → ``args.new``; 0 same, 1 different, 2 unreadable."""
    from judges.golden_diff import diff_golden, format_diff

    try:
        old, new = load_golden(args.old), load_golden(args.new)
    except GoldenFormatError as exc:
        print(f"evalloop golden: error: {exc}", file=sys.stderr)
        return 2
    result = diff_golden(old, new)
    print(format_diff(result, args.old, args.new, args.limit))
    return 0 if result.empty else 1
