"""`evalloop teacher fit`: fit the embedding teacher on the golden set and write its artifact.

The artifact is JSON with no timestamp, so the same golden set, policy and embedder give the
same bytes (tests check the committed artifact reproduces). See docs/teacher.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from judges.embedding_teacher import cv_summary, dump_artifact, fit_artifact
from judges.golden import GoldenFormatError, check_golden, parse_golden
from schemas.policy import PolicyError, load_policy

DEFAULT_POLICY = "policies/product-search.yaml"


def register(subparsers: Any) -> None:
    """Add ``teacher fit`` to the top-level ``evalloop`` parser."""
    parser = subparsers.add_parser("teacher", help="teacher tools (fit the embedding teacher)")
    actions = parser.add_subparsers(dest="teacher_command", metavar="ACTION", required=True)
    fit = actions.add_parser(
        "fit",
        help="fit the embedding teacher on the golden set (grouped CV by query) and write its artifact",
    )
    fit.add_argument("--policy", default=DEFAULT_POLICY, help=f"policy YAML (default {DEFAULT_POLICY})")
    fit.add_argument("--golden", default=None, help="golden JSONL (default: the policy's golden.file)")
    fit.add_argument("--out", default=None, help="artifact path (default: the policy's teacher.artifact)")
    fit.add_argument(
        "--model-dir", default=None, help="all-MiniLM-L6-v2 directory (default: installed package)"
    )
    fit.set_defaults(func=run_fit)


def run_fit(args: argparse.Namespace) -> int:
    """Fit, print the CV figures, write the artifact; return the exit code."""
    started = time.perf_counter()
    try:
        policy = load_policy(args.policy)
        golden_path = Path(args.golden or policy.golden.file)
        raw = golden_path.read_bytes()
        items = parse_golden(raw.decode("utf-8").splitlines(), source=str(golden_path))
    except FileNotFoundError as exc:
        print(f"evalloop teacher fit: no such file: {exc.filename}", file=sys.stderr)
        return 2
    except (GoldenFormatError, PolicyError, OSError, UnicodeDecodeError) as exc:
        print(f"evalloop teacher fit: error: {exc}", file=sys.stderr)
        return 2
    report = check_golden(items, policy)
    if not report.ok:
        print(f"evalloop teacher fit: {golden_path} fails the golden check: {report.errors}", file=sys.stderr)
        return 2
    from judges.minilm import MiniLMEmbedder

    embedder = MiniLMEmbedder(model_dir=Path(args.model_dir) if args.model_dir else None)
    artifact = fit_artifact(items, raw, policy, embedder)
    out = Path(args.out or policy.teacher.artifact)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dump_artifact(artifact), encoding="utf-8")
    held_out = artifact["fitted_on"]["canaries_excluded"]
    print(
        f"fitted on {golden_path} (golden version {report.golden_version}): "
        f"{artifact['fitted_on']['n']} items, {report.queries} queries ({held_out} canary items held out)"
    )
    print(cv_summary(artifact))
    print(f"wrote {out} ({artifact['teacher_version']}) in {time.perf_counter() - started:.1f}s")
    return 0
