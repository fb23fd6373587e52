"""Build a teacher calibration record (``schemas.calibration``) from golden grades and the
teacher's grades on the same items, graded without having been fitted on them.

Sensitivity and specificity of each binary signal come with (co)variances from a bootstrap that
resamples whole queries: the golden set is a few queries with many pairs each, and a teacher's
error rate moves with the query, so resampling pairs would understate the uncertainty.
See docs/calibration.md.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from judges.golden import GoldenItem, golden_version_of
from schemas.calibration import (
    BINARY_SIGNALS,
    CalibrationRecord,
    CategoryRule,
    ConfusionCell,
    SignalCalibration,
)
from schemas.policy import Policy

I64 = npt.NDArray[np.int64]
#: A category gets its own calibration only with this much evidence; else the pooled one.
CATEGORY_RULE = CategoryRule(min_positives=30, min_negatives=30, min_queries=5)


class Graded(NamedTuple):
    """A golden item and the teacher's grade for it."""

    item: GoldenItem
    teacher_grade: int


class Source(NamedTuple):
    """Where the teacher grades came from (``CalibrationRecord.source`` and ``method``)."""

    kind: str
    method: str


def build_calibration(
    graded: Sequence[Graded],
    policy: Policy,
    teacher_version: str,
    source: Source,
    golden: tuple[str, str],
    replicates: int = 1000,
    seed: int = 0,
    teacher_tags: Mapping[str, Sequence[str]] | None = None,
) -> CalibrationRecord:
    """The record for ``graded`` (``golden`` = (file name, sha256 of its bytes)); the golden
    version is the graded items'. With ``teacher_tags`` (golden id → the failure modes the teacher
    tagged) and golden items that carry failure modes, each mode's tag is calibrated too."""
    grades = policy.grades
    cells = _cells(graded, grades)
    confusion = np.zeros((len(grades), len(grades)), dtype=np.int64)
    for cell in cells:
        confusion += np.asarray(cell.counts, dtype=np.int64)
    displays = {g: policy.display_for(g) for g in grades}
    signals = {
        name: _signal(cells, grades, displays, positive, replicates, seed)
        for name, positive in BINARY_SIGNALS.items()
    }
    return CalibrationRecord(
        teacher_version=teacher_version,
        policy_version=policy.version,
        grades=grades,
        source=source.kind,  # type: ignore[arg-type]  # "out_of_fold" | "as_is" by the callers
        method=source.method,
        golden_file=golden[0],
        golden_sha256=golden[1],
        golden_version=golden_version_of([g.item for g in graded]) if graded else None,
        n=len(graded),
        queries=len({g.item.query for g in graded}),
        bootstrap_replicates=replicates,
        bootstrap_seed=seed,
        cells=cells,
        confusion=confusion.tolist(),
        signals=signals,
        category_rule=CATEGORY_RULE,
        per_category=_per_category(cells, grades, displays, replicates, seed),
        failure_modes=failure_mode_signals(graded, teacher_tags or {}, policy, replicates, seed),
    )


def failure_mode_signals(
    graded: Sequence[Graded],
    teacher_tags: Mapping[str, Sequence[str]],
    policy: Policy,
    replicates: int,
    seed: int,
) -> dict[str, SignalCalibration]:
    """Per failure mode, the teacher's tag against the golden items' tags (pooled, by query
    bootstrap): only modes with golden positives and negatives, and only when golden carries
    tags at all (a golden set without tags says nothing about them)."""
    tagged = [g for g in graded if g.item.id in teacher_tags]
    if not any(g.item.failure_modes for g in tagged):
        return {}
    out: dict[str, SignalCalibration] = {}
    for mode in policy.failure_mode_ids():
        rows: dict[str, I64] = defaultdict(lambda: np.zeros(4, np.int64))
        for g in tagged:
            truth, said = mode in g.item.failure_modes, mode in teacher_tags[g.item.id]
            rows[g.item.query] += np.array([truth and said, truth, not truth and not said, not truth])
        signal = signal_from_counts(
            np.array([rows[q] for q in sorted(rows)], dtype=np.int64), replicates, seed
        )
        if signal.positives and signal.negatives:
            out[mode] = signal
    return out


def _cells(graded: Sequence[Graded], grades: Sequence[int]) -> list[ConfusionCell]:
    index = {g: i for i, g in enumerate(grades)}
    counts: dict[tuple[str, str], I64] = defaultdict(lambda: np.zeros((len(grades), len(grades)), np.int64))
    for item, teacher in graded:
        counts[(item.category, item.query)][index[item.grade], index[teacher]] += 1
    return [
        ConfusionCell(category=category, query=query, counts=matrix.tolist())
        for (category, query), matrix in sorted(counts.items())
    ]


def _per_category(
    cells: Sequence[ConfusionCell],
    grades: Sequence[int],
    displays: Mapping[int, str],
    replicates: int,
    seed: int,
) -> dict[str, dict[str, SignalCalibration]]:
    out: dict[str, dict[str, SignalCalibration]] = {}
    for category in sorted({c.category for c in cells}):
        own = [c for c in cells if c.category == category]
        signals = {
            name: _signal(own, grades, displays, positive, replicates, seed)
            for name, positive in BINARY_SIGNALS.items()
        }
        qualified = {name: s for name, s in signals.items() if _qualifies(s)}
        if qualified:
            out[category] = qualified
    return out


def _qualifies(signal: SignalCalibration) -> bool:
    rule = CATEGORY_RULE
    return (
        signal.positives >= rule.min_positives
        and signal.negatives >= rule.min_negatives
        and signal.queries >= rule.min_queries
    )


def binary_counts(
    cells: Sequence[ConfusionCell],
    grades: Sequence[int],
    displays: Mapping[int, str],
    positive: Sequence[str],
) -> I64:
    """Per query: (true positives, positives, true negatives, negatives) of one binary signal,
    a (queries, 4) array (a query spread over categories is one row)."""
    is_positive = np.array([displays[g] in positive for g in grades])
    rows: dict[str, I64] = defaultdict(lambda: np.zeros(4, np.int64))
    for cell in cells:
        counts = np.asarray(cell.counts, dtype=np.int64)
        truth_pos, truth_neg = counts[is_positive], counts[~is_positive]
        rows[cell.query] += np.array(
            [
                truth_pos[:, is_positive].sum(),
                truth_pos.sum(),
                truth_neg[:, ~is_positive].sum(),
                truth_neg.sum(),
            ]
        )
    return np.array([rows[q] for q in sorted(rows)], dtype=np.int64).reshape(-1, 4)


def _signal(
    cells: Sequence[ConfusionCell],
    grades: Sequence[int],
    displays: Mapping[int, str],
    positive: Sequence[str],
    replicates: int,
    seed: int,
) -> SignalCalibration:
    return signal_from_counts(binary_counts(cells, grades, displays, positive), replicates, seed)


def signal_from_counts(per_query: I64, replicates: int, seed: int) -> SignalCalibration:
    """Sensitivity and specificity from per-query (tp, positives, tn, negatives) rows, with their
    query-bootstrap (co)variances."""
    per_query = per_query.reshape(-1, 4)
    tp, pos, tn, neg = per_query.sum(axis=0) if len(per_query) else np.zeros(4, np.int64)
    sensitivity = float(tp / pos) if pos else 0.0
    specificity = float(tn / neg) if neg else 0.0
    var_se, var_sp, cov = cluster_bootstrap(per_query, replicates, seed, sensitivity, specificity)
    return SignalCalibration(
        sensitivity=sensitivity,
        specificity=specificity,
        positives=int(pos),
        negatives=int(neg),
        queries=len(per_query),
        var_sensitivity=var_se,
        var_specificity=var_sp,
        covariance=cov,
    )


def cluster_bootstrap(
    per_query: I64, replicates: int, seed: int, sensitivity: float, specificity: float
) -> tuple[float, float, float]:
    """(var sensitivity, var specificity, covariance) over ``replicates`` draws of whole queries.

    Replicates without a positive or a negative pair are skipped. Under 2 queries (or too few
    usable replicates) the binomial variances stand in, with covariance 0."""
    pos, neg = (
        int(per_query[:, 1].sum()) if len(per_query) else 0,
        int(per_query[:, 3].sum()) if len(per_query) else 0,
    )
    binomial = (
        sensitivity * (1 - sensitivity) / max(pos, 1),
        specificity * (1 - specificity) / max(neg, 1),
        0.0,
    )
    if len(per_query) < 2 or replicates < 2:
        return binomial
    rng = np.random.default_rng(seed)
    draws = per_query[rng.integers(0, len(per_query), size=(replicates, len(per_query)))].sum(axis=1)
    usable = draws[(draws[:, 1] > 0) & (draws[:, 3] > 0)]
    if len(usable) < 2:
        return binomial
    pair = np.vstack([usable[:, 0] / usable[:, 1], usable[:, 2] / usable[:, 3]])
    covariance = np.cov(pair)
    return float(covariance[0, 0]), float(covariance[1, 1]), float(covariance[0, 1])
