"""`evalloop golden check FILE`: is a golden set well-formed and on the policy's scale?

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
    parser = subparsers.add_parser("golden", help="golden-set tools (check)")
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
