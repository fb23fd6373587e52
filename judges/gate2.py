"""Gate 2 scoring: does the teacher agree with the golden set? (pure; no I/O, no teacher calls)

Cohen's kappa, unweighted and weighted as the policy says (``gates.gate2.weights``), over the
policy's grades; a bootstrap CI that resamples whole queries (the golden set is clustered by
query, so resampling pairs would understate the uncertainty); the confusion matrix; per-category
kappa; error judgments counted apart (they are not scored); the largest disagreements.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from sklearn.metrics import cohen_kappa_score

from judges.golden import GoldenItem, golden_version_of
from schemas.judgments import Judgment
from schemas.kappa import kappas
from schemas.policy import Gate2Thresholds, Policy

Weights = Literal["quadratic", "linear"] | None
F64 = npt.NDArray[np.float64]
CI_LEVEL = 0.95


def sklearn_weights(policy_weights: str) -> Weights:
    """The policy's ``gates.gate2.weights`` ('none' | 'linear' | 'quadratic') for sklearn."""
    if policy_weights == "quadratic":
        return "quadratic"
    if policy_weights == "linear":
        return "linear"
    return None


def kappa(
    truth: Sequence[int], predicted: Sequence[int], grades: Sequence[int], weights: Weights
) -> float | None:
    """sklearn's Cohen's kappa over ``grades``; None when undefined (e.g. one grade only)."""
    if not truth:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the undefined case warns and returns nan
        value = float(cohen_kappa_score(truth, predicted, labels=list(grades), weights=weights))
    return None if math.isnan(value) else value


def confusion(truth: Sequence[int], predicted: Sequence[int], grades: Sequence[int]) -> F64:
    """Counts, rows = golden grade, columns = teacher grade, both in ``grades`` order."""
    index = {g: i for i, g in enumerate(grades)}
    matrix = np.zeros((len(grades), len(grades)), dtype=np.float64)
    for t, p in zip(truth, predicted, strict=True):
        matrix[index[t], index[p]] += 1
    return matrix


def kappa_from_confusion(matrix: F64, weights: Weights) -> float:
    """Cohen's kappa of a confusion matrix (equals sklearn's; nan when undefined)."""
    return float(kappas(matrix, weights)[0])


def cluster_bootstrap_ci(
    truth: Sequence[int],
    predicted: Sequence[int],
    groups: Sequence[str],
    grades: Sequence[int],
    weights: Weights,
    replicates: int = 1000,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile CI of kappa, resampling whole groups (queries) with replacement.

    Each group's confusion matrix is computed once; a replicate is the sum over the drawn groups,
    so 1000 replicates cost milliseconds. None when there are no replicates or fewer than 2 groups.
    """
    names = sorted(set(groups))
    if replicates < 1 or len(names) < 2:
        return None
    by_group: dict[str, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for t, p, g in zip(truth, predicted, groups, strict=True):
        by_group[g][0].append(t)
        by_group[g][1].append(p)
    stack = np.stack([confusion(*by_group[name], grades) for name in names])
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(names), size=(replicates, len(names)))
    values = kappas(np.stack([stack[row].sum(axis=0) for row in draws]), weights)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    tail = (1 - CI_LEVEL) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class GroupKappa:
    """Agreement within one category (or query)."""

    n: int
    kappa: float | None
    weighted_kappa: float | None


@dataclass(frozen=True)
class Disagreement:
    """A golden item the teacher graded far from the golden grade."""

    id: str
    query: str
    title: str
    category: str
    golden_grade: int
    teacher_grade: int
    golden_reason: str
    teacher_rationale: str


@dataclass(frozen=True)
class OriginalAgreement:
    """Agreement with the imported labels, before the author's adjudications."""

    kappa: float | None
    weighted_kappa: float | None
    ci: tuple[float, float] | None


@dataclass
class Gate2Report:
    """Everything `evalloop gate2` prints; ``to_json_dict`` is the --json output."""

    n_total: int
    n: int
    grades: list[int]
    weights: str
    kappa: float | None
    weighted_kappa: float | None
    ci: tuple[float, float] | None
    confusion: list[list[int]]
    min_kappa: float
    passed: bool
    verdict: str
    teacher_version: str
    errors: int
    error_examples: list[dict[str, str]] = field(default_factory=list)
    per_category: dict[str, GroupKappa] = field(default_factory=dict)
    per_query: dict[str, GroupKappa] = field(default_factory=dict)
    worst: list[Disagreement] = field(default_factory=list)
    bootstrap: int = 0
    seed: int = 0
    #: Distinct queries among the scored pairs, and whether pairs and queries meet the policy's
    #: minimum evidence (``gates.gate2.min_pairs`` / ``min_queries``): without it, no PASS.
    queries: int = 0
    sufficient: bool = True
    #: The golden version scored against, how many of its items carry an adjudication, and the
    #: agreement with the labels as imported (before adjudication), on the same pairs.
    golden_version: str = ""
    adjudicated: int = 0
    original: OriginalAgreement | None = None

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples as lists)."""
        out = asdict(self)
        out["ci"] = list(self.ci) if self.ci else None
        return out


def _group_kappas(
    keys: Sequence[str], truth: Sequence[int], predicted: Sequence[int], grades: list[int], weights: Weights
) -> dict[str, GroupKappa]:
    members: dict[str, list[int]] = defaultdict(list)
    for position, key in enumerate(keys):
        members[key].append(position)
    out: dict[str, GroupKappa] = {}
    for key in sorted(members):
        t = [truth[i] for i in members[key]]
        p = [predicted[i] for i in members[key]]
        out[key] = GroupKappa(len(t), kappa(t, p, grades, None), kappa(t, p, grades, weights))
    return out


def evidence_shortfall(pairs: int, queries: int, gate: Gate2Thresholds) -> str | None:
    """Why ``pairs`` scored pairs over ``queries`` queries are too little to pass, or None."""
    missing = []
    if pairs < gate.min_pairs:
        missing.append(f"{pairs} scored pairs < gates.gate2.min_pairs {gate.min_pairs}")
    if queries < gate.min_queries:
        missing.append(f"{queries} queries < gates.gate2.min_queries {gate.min_queries}")
    return "; ".join(missing) or None


def _verdict(
    weighted: float | None,
    gate: Gate2Thresholds,
    ci: tuple[float, float] | None,
    scored: int,
    shortfall: str | None,
) -> str:
    if weighted is None:
        return f"FAIL: weighted kappa is undefined ({scored} graded pairs)"
    figure = f"weighted kappa {weighted:.4f}"
    if shortfall is not None:
        return f"INSUFFICIENT EVIDENCE: {shortfall} ({figure}; no PASS on this little)"
    if weighted < gate.min_kappa:
        return f"FAIL: {figure} < the policy's gates.gate2.min_kappa {gate.min_kappa}"
    verdict = f"PASS: {figure} >= {gate.min_kappa}"
    if ci is not None and ci[0] < gate.min_kappa:
        verdict += f" (but the CI's lower bound {ci[0]:.4f} is under it: not a confident pass)"
    return verdict


def gate2_report(
    items: Sequence[GoldenItem],
    judgments: Sequence[Judgment],
    policy: Policy,
    bootstrap: int = 1000,
    seed: int = 0,
    worst: int | None = 10,
) -> Gate2Report:
    """Score ``judgments`` (one per golden item, same order) against the golden grades."""
    if len(items) != len(judgments):
        raise ValueError(f"{len(items)} golden items but {len(judgments)} judgments")
    scored = [
        (i, j) for i, j in zip(items, judgments, strict=True) if j.status == "ok" and j.grade is not None
    ]
    failed = [(i, j) for i, j in zip(items, judgments, strict=True) if j.status != "ok"]
    grades, gate = policy.grades, policy.gates.gate2
    weights = sklearn_weights(gate.weights)
    truth = [i.grade for i, _ in scored]
    predicted = [int(j.grade) for _, j in scored if j.grade is not None]
    weighted = kappa(truth, predicted, grades, weights)
    queries = len({i.query for i, _ in scored})
    shortfall = evidence_shortfall(len(scored), queries, gate)
    ci = cluster_bootstrap_ci(
        truth, predicted, [i.query for i, _ in scored], grades, weights, bootstrap, seed
    )
    passed = shortfall is None and weighted is not None and weighted >= gate.min_kappa
    verdict = _verdict(weighted, gate, ci, len(scored), shortfall)
    return Gate2Report(
        n_total=len(items),
        n=len(scored),
        grades=grades,
        weights=gate.weights,
        kappa=kappa(truth, predicted, grades, None),
        weighted_kappa=weighted,
        ci=ci,
        confusion=confusion(truth, predicted, grades).astype(int).tolist(),
        min_kappa=gate.min_kappa,
        passed=passed,
        verdict=verdict,
        teacher_version=judgments[0].teacher_version if judgments else "",
        queries=queries,
        sufficient=shortfall is None,
        errors=len(failed),
        error_examples=[{"id": i.id, "error": j.error or ""} for i, j in failed[:worst]],
        per_category=_group_kappas([i.category for i, _ in scored], truth, predicted, grades, weights),
        per_query=_group_kappas([i.query for i, _ in scored], truth, predicted, grades, weights),
        worst=_worst(scored, worst),
        bootstrap=bootstrap,
        seed=seed,
        golden_version=golden_version_of(items),
        adjudicated=sum(item.adjudication is not None for item in items),
        original=_original(scored, predicted, grades, weights, bootstrap, seed),
    )


def _original(
    scored: Sequence[tuple[GoldenItem, Judgment]],
    predicted: Sequence[int],
    grades: list[int],
    weights: Weights,
    bootstrap: int,
    seed: int,
) -> OriginalAgreement | None:
    """Agreement with the imported labels; None when no scored item was adjudicated."""
    if not any(item.adjudication for item, _ in scored):
        return None
    truth = [item.original_grade for item, _ in scored]
    queries = [item.query for item, _ in scored]
    return OriginalAgreement(
        kappa=kappa(truth, predicted, grades, None),
        weighted_kappa=kappa(truth, predicted, grades, weights),
        ci=cluster_bootstrap_ci(truth, predicted, queries, grades, weights, bootstrap, seed),
    )


def disagreements(items: Sequence[GoldenItem], judgments: Sequence[Judgment]) -> list[Disagreement]:
    """Every graded item whose teacher grade differs from its golden grade, worst first."""
    scored = [
        (i, j) for i, j in zip(items, judgments, strict=True) if j.status == "ok" and j.grade is not None
    ]
    return _worst(scored, None)


def _worst(scored: Sequence[tuple[GoldenItem, Judgment]], limit: int | None) -> list[Disagreement]:
    ranked = sorted(scored, key=lambda pair: (-abs(pair[0].grade - (pair[1].grade or 0)), pair[0].id))
    return [
        Disagreement(
            id=item.id,
            query=item.query,
            title=item.item.title,
            category=item.category,
            golden_grade=item.grade,
            teacher_grade=int(judgment.grade or 0),
            golden_reason=item.reason,
            teacher_rationale=judgment.rationale,
        )
        for item, judgment in ranked[:limit]
        if item.grade != judgment.grade
    ]
