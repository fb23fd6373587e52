"""`evalloop gate2`: does the teacher agree with the golden set?

Turns every golden item into a ``JudgeRequest`` and runs the teacher's ``judge`` in batches, the
code path production uses, then scores the grades (judges.gate2). See docs/gate2.md.

Exit codes: 0 when the weighted kappa reaches the policy's ``gates.gate2.min_kappa``, 1 when it
does not (or is undefined), 2 on bad input or a teacher that cannot start.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from judges.calibration import Graded, Source
from judges.gate2 import Gate2Report, GroupKappa, gate2_report
from judges.golden import GoldenFormatError, GoldenItem, check_golden, golden_requests, load_golden
from judges.registry import backend_names, build_teacher
from schemas.judgments import Judgment
from schemas.policy import Policy, PolicyError, load_policy
from schemas.settings import resolve_path

DEFAULT_POLICY = "policies/product-search.yaml"


def register(subparsers: Any) -> None:
    """Add the ``gate2`` subcommand to the top-level ``evalloop`` parser."""
    p = subparsers.add_parser(
        "gate2",
        help="Gate 2: does the teacher agree with the golden set? (Cohen's kappa, cluster bootstrap CI)",
        description="Judge every golden item with the teacher and compare with the golden grades. "
        "Exit 1 when the weighted kappa is under the policy's gates.gate2.min_kappa.",
    )
    p.add_argument("--teacher", default=None, choices=backend_names(), help="backend (default: the policy's)")
    p.add_argument("--golden", default=None, help="golden JSONL (default: the policy's golden.file)")
    p.add_argument("--policy", default=DEFAULT_POLICY, help=f"policy YAML (default {DEFAULT_POLICY})")
    p.add_argument("--artifact", default=None, help="embedding teacher artifact (default: the policy's)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument(
        "--bootstrap", type=_non_negative, default=1000, help="bootstrap replicates (default 1000)"
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--worst", type=_non_negative, default=10, help="disagreements to show (default 10)")
    p.add_argument("--batch-size", type=_positive, default=64, help="requests per judge() call (default 64)")
    p.add_argument(
        "--calibration-dir",
        default=None,
        help="where to write the teacher calibration record (default EVALLOOP_CALIBRATION_DIR or "
        "artifacts/calibration); written only when scoring the policy's own golden file",
    )
    p.add_argument("--no-calibration", action="store_true", help="do not write a calibration record")
    p.add_argument(
        "--review-out",
        type=Path,
        default=None,
        help="where to write every disagreement for the dashboard's review page (default "
        ".evalloop/gate2-review.json, written only when scoring the policy's own golden file)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run Gate 2; return the exit code."""
    try:
        policy = load_policy(args.policy)
        golden_path = Path(args.golden or policy.golden.file)
        items = load_golden(golden_path)
        check = check_golden(items, policy)
        if not check.ok:
            raise GoldenFormatError(f"{golden_path} fails the golden check: {'; '.join(check.errors)}")
        options = {"artifact": args.artifact} if args.artifact else {}
        teacher = build_teacher(policy, args.teacher, **options)
    except (GoldenFormatError, PolicyError, ValueError, RuntimeError, ImportError, OSError) as exc:
        print(f"evalloop gate2: error: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    requests = golden_requests(items)
    judgments: list[Judgment] = []
    for start in range(0, len(requests), args.batch_size):
        judgments.extend(teacher.judge(requests[start : start + args.batch_size]))
    judge_seconds = time.perf_counter() - started
    report = gate2_report(
        items, judgments, policy, bootstrap=args.bootstrap, seed=args.seed, worst=args.worst
    )
    if args.json:
        out = report.to_json_dict()
        out.update(
            golden=str(golden_path), policy_version=policy.version, judge_seconds=round(judge_seconds, 2)
        )
        print(json.dumps(out, ensure_ascii=False, allow_nan=False))
    else:
        print(format_report(report, str(golden_path), judge_seconds))
    if not args.no_calibration:
        print(write_calibration(args, policy, golden_path, items, judgments, teacher), file=sys.stderr)
    print(write_review(args, policy, golden_path, items, judgments), file=sys.stderr)
    if not report.passed:
        print(f"evalloop gate2: {report.verdict}", file=sys.stderr)
        return 1
    return 0


def is_policy_golden(golden_path: Path, policy: Policy) -> bool:
    """Whether ``golden_path`` is the policy's own golden file (only it calibrates or is reviewed)."""
    return golden_path.resolve() == resolve_path(policy.golden.file).resolve()


def write_review(
    args: argparse.Namespace,
    policy: Policy,
    golden_path: Path,
    items: Sequence[GoldenItem],
    judgments: Sequence[Judgment],
) -> str:
    """Write the review file for the dashboard's /review page; one line saying where (or why not)."""
    from evalloop.review import DEFAULT_REVIEW_FILE, write_review_file
    from judges.gate2 import disagreements

    path = args.review_out or (DEFAULT_REVIEW_FILE if is_policy_golden(golden_path, policy) else None)
    if path is None:
        return (
            f"review: not written: {golden_path} is not the policy's golden file (--review-out to write one)"
        )
    found = disagreements(items, judgments)
    version = judgments[0].teacher_version if judgments else "unknown"
    try:
        write_review_file(path, found, golden_path, items, version)
    except OSError as exc:
        return f"review: not written: cannot write {path}: {exc.strerror or exc}"
    return f"review: wrote {len(found)} disagreements to {path} (the dashboard's /review page)"


def write_calibration(
    args: argparse.Namespace,
    policy: Policy,
    golden_path: Path,
    items: Sequence[GoldenItem],
    judgments: Sequence[Judgment],
    teacher: object,
) -> str:
    """Write the teacher's calibration record; one line saying where (or why not)."""
    from judges.calibration import build_calibration
    from schemas.calibration import dump_calibration, file_name
    from schemas.settings import load_settings

    if not is_policy_golden(golden_path, policy):
        return (
            f"calibration: not written: {golden_path} is not the policy's golden file "
            f"({policy.golden.file}); only golden labels may calibrate a teacher"
        )
    raw = golden_path.read_bytes()
    try:
        graded, source = calibration_grades(items, judgments, teacher, raw)
    except ValueError as exc:
        return f"calibration: not written: {exc}"
    version = judgments[0].teacher_version if judgments else "unknown"
    golden = (str(policy.golden.file), hashlib.sha256(raw).hexdigest())
    tags = {
        item.id: list(j.failure_modes) for item, j in zip(items, judgments, strict=True) if j.status == "ok"
    }
    if any(item.failure_modes for item in items):
        source = Source(source.kind, source.method + "; failure modes: its own tags")
    record = build_calibration(graded, policy, version, source, golden, args.bootstrap, args.seed, tags)
    directory = Path(args.calibration_dir) if args.calibration_dir else load_settings().calibration_dir
    path = directory / file_name(record.teacher_version, record.policy_version)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        path.write_text(dump_calibration(record), encoding="utf-8")
    except OSError as exc:
        return f"calibration: not written: cannot write {path}: {exc.strerror or exc}"
    filtered = record.signals["filtered_share"]
    return (
        f"calibration: wrote {path} ({record.source}, {record.n} pairs, {record.queries} queries; "
        f"filtered share: sensitivity {filtered.sensitivity:.3f}, specificity {filtered.specificity:.3f})"
    )


def calibration_grades(
    items: Sequence[GoldenItem], judgments: Sequence[Judgment], teacher: object, golden_bytes: bytes
) -> tuple[list[Graded], Source]:
    """The grades a calibration may use: a fitted teacher's out-of-fold grades on the items it
    was fitted on and its own grades on the canary items it never saw; any other teacher's
    grades as they are. Error judgments are left out."""
    graded = {
        item.id: Graded(item, int(j.grade))
        for item, j in zip(items, judgments, strict=True)
        if j.status == "ok" and j.grade is not None
    }
    artifact = getattr(teacher, "artifact", None)
    if not isinstance(artifact, dict):
        return list(graded.values()), Source("as_is", "the teacher's grades on the golden set")
    if artifact["fitted_on"]["sha256"] != hashlib.sha256(golden_bytes).hexdigest():
        raise ValueError("the teacher was fitted on another version of the golden file; refit it first")
    out_of_fold: dict[str, int] = artifact["cv"]["out_of_fold"]
    for item in items:
        if item.id in out_of_fold:
            graded[item.id] = Graded(item, out_of_fold[item.id])
    method = (
        f"{artifact['cv']['method']}: out-of-fold grades for the {len(out_of_fold)} fitted items; "
        f"the teacher's own grades for the {len(items) - len(out_of_fold)} canary items it never saw"
    )
    return [graded[item.id] for item in items if item.id in graded], Source("out_of_fold", method)


def _original_lines(report: Gate2Report) -> list[str]:
    """The figures against the imported labels, when the author adjudicated some."""
    if report.original is None:
        return [f"  adjudications      {report.adjudicated}"]
    ci = report.original.ci
    bounds = f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "n/a"
    return [
        f"  adjudications      {report.adjudicated} items: the figures above use the adjudicated grades",
        f"  vs imported labels kappa {_f(report.original.kappa)}, weighted kappa "
        f"{_f(report.original.weighted_kappa)}  95% CI {bounds} (the labels before adjudication)",
    ]


def format_report(report: Gate2Report, source: str, seconds: float) -> str:
    """The human-readable Gate 2 report."""
    ci = f"[{report.ci[0]:.4f}, {report.ci[1]:.4f}]" if report.ci else "n/a"
    lines = [
        "Gate 2 — teacher vs golden set",
        f"  golden             {source}: {report.n_total} items ({report.errors} errors, not scored)",
        f"  golden version     {report.golden_version}",
        f"  teacher            {report.teacher_version}  ({seconds:.1f}s to judge)",
        f"  scored pairs       {report.n} over {report.queries} queries "
        f"({'enough' if report.sufficient else 'NOT enough'} evidence for the policy's minimum)",
        f"  kappa              {_f(report.kappa)}",
        f"  weighted kappa     {_f(report.weighted_kappa)}  ({report.weights})  95% CI {ci} "
        f"(bootstrap by query, {report.bootstrap} replicates, seed {report.seed})",
        f"  verdict            {report.verdict}",
        *_original_lines(report),
        "",
        "Confusion (rows golden grade, columns teacher grade)",
        "  " + " " * 8 + "".join(f"{g:>7}" for g in report.grades),
    ]
    lines += [
        f"  {g:>8}" + "".join(f"{n:>7}" for n in row)
        for g, row in zip(report.grades, report.confusion, strict=True)
    ]
    lines += ["", _groups("Per category", report.per_category), "", _groups("Per query", report.per_query)]
    if report.worst:
        lines += ["", "Worst disagreements (golden vs teacher grade)"]
        for d in report.worst:
            lines.append(
                f"  {d.golden_grade} vs {d.teacher_grade}  {d.id}  query '{d.query}'  item '{d.title}'"
            )
            lines.append(f"      golden reason: {d.golden_reason}")
            lines.append(f"      teacher:       {d.teacher_rationale}")
    if report.error_examples:
        lines += ["", "Error judgments"] + [f"  {e['id']}: {e['error']}" for e in report.error_examples]
    return "\n".join(lines)


def _groups(title: str, groups: dict[str, GroupKappa]) -> str:
    width = max([len(name) for name in groups] + [10])
    lines = [f"{title}", f"  {'':<{width}} {'n':>5} {'kappa':>8} {'weighted':>9}"]
    for name, g in groups.items():
        lines.append(f"  {name:<{width}} {g.n:>5} {_f(g.kappa):>8} {_f(g.weighted_kappa):>9}")
    return "\n".join(lines)


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value
