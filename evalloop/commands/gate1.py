"""`evalloop gate1`: do human raters agree on the policy?

Reads ratings (JSONL, one ``{"item_id", "rater_id", "label"}`` per line), computes Fleiss'
kappa, Krippendorff's alpha and pairwise Cohen's kappa, and prints the Gate 1 verdict with
the grade boundaries and items raters dispute most. See docs/gate1.md.

Exit codes: 0 on success whatever the verdict (unless ``--fail-unless-clear``), 1 when
``--fail-unless-clear`` is given and the verdict is not "clear", 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from judges.agreement import (
    ALPHA_LEVELS,
    Gate1Report,
    GateThresholds,
    Weights,
    gate1_report,
)
from judges.gate1_io import RatingsFormatError, load_ratings
from schemas.policy import load_policy

_WEIGHT_CHOICES: dict[str, Weights] = {"none": None, "linear": "linear", "quadratic": "quadratic"}


def register(subparsers: Any) -> None:
    """Add the ``gate1`` subcommand to the top-level ``evalloop`` parser."""
    p = subparsers.add_parser(
        "gate1",
        help="Gate 1: do human raters agree on the policy? (Fleiss' kappa, Krippendorff's alpha, Cohen)",
        description="Do human raters agree on the policy? Verdict on Fleiss' kappa: "
        "> --clear is clear, < --ambiguous is ambiguous, otherwise needs refinement.",
    )
    p.add_argument(
        "ratings", metavar="RATINGS", help='JSONL file, one {"item_id","rater_id","label"} per line'
    )
    p.add_argument(
        "--min-shared",
        type=_positive_int,
        default=30,
        metavar="N",
        help="pairwise Cohen's kappa for rater pairs sharing at least N items (default 30)",
    )
    p.add_argument(
        "--weights",
        choices=list(_WEIGHT_CHOICES),
        default="none",
        help="weighting of pairwise Cohen's kappa (default none; linear/quadratic for ordinal grades)",
    )
    p.add_argument(
        "--alpha-level",
        choices=ALPHA_LEVELS,
        default="nominal",
        help="measurement level for Krippendorff's alpha (default nominal)",
    )
    p.add_argument(
        "--top",
        type=_non_negative_int,
        default=10,
        metavar="N",
        help="how many disputed items and rater pairs to show (default 10)",
    )
    p.add_argument(
        "--clear",
        type=float,
        default=GateThresholds().clear,
        metavar="K",
        help="kappa above K is 'clear' (default 0.8)",
    )
    p.add_argument(
        "--ambiguous",
        type=float,
        default=GateThresholds().ambiguous,
        metavar="K",
        help="kappa below K is 'ambiguous' (default 0.6)",
    )
    p.add_argument(
        "--policy",
        metavar="FILE",
        help="take clear/ambiguous from this policy's gates.gate1 (overrides the flags)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of the table")
    p.add_argument(
        "--fail-unless-clear", action="store_true", help="exit 1 when the verdict is not 'clear' (for CI)"
    )
    p.set_defaults(func=run)


def _thresholds(args: argparse.Namespace) -> GateThresholds:
    """The verdict thresholds: the policy's gates.gate1 when --policy is given, else the flags."""
    if args.policy:
        gate1 = load_policy(args.policy).gates.gate1
        return GateThresholds(clear=gate1.clear, ambiguous=gate1.ambiguous)
    return GateThresholds(clear=args.clear, ambiguous=args.ambiguous)


def run(args: argparse.Namespace) -> int:
    """Run Gate 1 on ``args.ratings``; return the exit code."""
    try:
        thresholds = _thresholds(args)
        ratings = load_ratings(args.ratings)
        report = gate1_report(
            ratings,
            min_shared=args.min_shared,
            weights=_WEIGHT_CHOICES[args.weights],
            thresholds=thresholds,
            top=args.top,
            alpha_level=args.alpha_level,
        )
    except (RatingsFormatError, ValueError) as exc:  # PolicyError is a ValueError
        print(f"evalloop gate1: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        # allow_nan=False: _num() already turned NaN into null; fail loudly if one slipped through.
        print(json.dumps(report.to_json_dict(), allow_nan=False))
    else:
        print(format_report(report, top=args.top))
    if args.fail_unless_clear and report.verdict != "clear":
        return 1
    return 0


def format_report(report: Gate1Report, top: int = 10) -> str:
    """The human-readable Gate 1 report."""
    sections = [
        _overview(report),
        _boundaries(report, top),
        _disputed_items(report),
        _top_pairs(report, top),
    ]
    return "\n\n".join(s for s in sections if s)


def _overview(report: Gate1Report) -> str:
    fleiss, pw, th = report.fleiss, report.pairwise, report.thresholds
    weights = report.weights or "unweighted"
    lines = [
        "Gate 1 — inter-rater agreement",
        f"  ratings            {report.n_ratings}  (duplicates dropped: {report.duplicates_dropped})",
        f"  items              {report.n_items}  ({fleiss.items_used} with >= 2 ratings)",
        f"  raters             {report.n_raters}",
        f"  labels             {', '.join(str(label) for label in report.labels)}",
        f"  Fleiss' kappa      {_f(fleiss.kappa)}  "
        f"(observed {_f(fleiss.observed)}, expected {_f(fleiss.expected)})",
        f"  Krippendorff alpha {_f(report.krippendorff_alpha)}  ({report.alpha_level})",
        f"  pairwise Cohen     {pw.n_pairs} pairs sharing >= {report.min_shared} items ({weights})"
        + (f", {pw.n_undefined} undefined" if pw.n_undefined else ""),
        f"                     median {_f(pw.median)}, mean {_f(pw.mean)}, n-weighted mean "
        f"{_f(pw.weighted_mean)}, range {_f(pw.min)} .. {_f(pw.max)}",
        f"  verdict            {report.verdict.upper()}  (on Fleiss' kappa; clear > {th.clear}, "
        f"ambiguous < {th.ambiguous})",
    ]
    return "\n".join(lines)


def _boundaries(report: Gate1Report, top: int) -> str:
    if not report.boundaries:
        return ""
    lines = [
        "Most disputed label boundaries (rater pairs split across them on one item)",
        f"  {'labels':<10}{'pairs':>10}{'share':>8}{'items':>8}",
    ]
    for b in report.boundaries[:top]:
        lines.append(
            f"  {f'{b.label_a} vs {b.label_b}':<10}{b.disagreeing_pairs:>10}{b.share:>8.1%}{b.items:>8}"
        )
    return "\n".join(lines)


def _disputed_items(report: Gate1Report) -> str:
    if not report.disputed_items:
        return ""
    lines = [
        "Most disputed items (disagreement: chance two of its ratings differ)",
        f"  {'disagreement':>12}  {'n':>4}  {'label counts':<20}item",
    ]
    for d in report.disputed_items:
        counts = " ".join(f"{label}:{count}" for label, count in d.label_counts.items())
        lines.append(f"  {d.disagreement:>12.3f}  {d.n:>4}  {counts:<20}{d.item_id}")
    return "\n".join(lines)


def _top_pairs(report: Gate1Report, top: int) -> str:
    if not report.pairs or top == 0:
        return ""
    lines = [
        f"Rater pairs with the most shared items (top {min(top, len(report.pairs))} of {len(report.pairs)})",
        f"  {'rater_a':<12}{'rater_b':<12}{'n':>6}{'kappa':>9}",
    ]
    for p in report.pairs[:top]:
        lines.append(f"  {p.rater_a:<12}{p.rater_b:<12}{p.n:>6}{_f(p.kappa):>9}")
    return "\n".join(lines)


def _f(value: float) -> str:
    """Four decimals, or 'n/a' for an undefined statistic."""
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value
