"""Inter-rater agreement statistics for Gate 1 (and reusable by Gate 2).

Gate 1 asks whether human raters agree on what the product policy means: if several people
grade the same items with the policy's rubric and disagree, the policy is ambiguous and a
teacher model graded against it cannot be expected to do better. Gate 2 (teacher vs golden
set) reuses :func:`cohen_kappa`. Cohen's kappa lives in :mod:`judges.pairwise` and the input
type in :mod:`judges.ratings`; both are re-exported here.

Everything here is pure: no files, no printing, no global state. Inputs are sequences of
:class:`Rating`; loading them from JSONL lives in :mod:`judges.gate1_io`.

Conventions
-----------
* Labels are integers (rubric grades, 0-4 in evalloop policies; 0/1 in the bundled crowd data).
* A kappa is ``float('nan')`` when it is undefined, i.e. when the chance-expected
  disagreement is zero (every rating used carries the same label). NaN is never silently
  turned into a number; the JSON form writes it as ``null``.
* Repeated (item, rater) ratings are dropped, keeping the first; :func:`deduplicate` says
  how many were dropped.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from judges.pairwise import WEIGHTS as WEIGHTS
from judges.pairwise import PairAgreement as PairAgreement
from judges.pairwise import PairwiseSummary as PairwiseSummary
from judges.pairwise import Weights as Weights
from judges.pairwise import cohen_kappa as cohen_kappa
from judges.pairwise import pairwise_cohen as pairwise_cohen
from judges.pairwise import summarise_pairs as summarise_pairs
from judges.ratings import Rating as Rating
from judges.ratings import deduplicate as deduplicate
from judges.ratings import labels_by_item

AlphaLevel = Literal["nominal", "ordinal", "interval"]
Verdict = Literal["clear", "needs refinement", "ambiguous"]

ALPHA_LEVELS: tuple[AlphaLevel, ...] = ("nominal", "ordinal", "interval")


# --------------------------------------------------------------------------- Fleiss' kappa


@dataclass(frozen=True, slots=True)
class FleissResult:
    """Fleiss' kappa with its parts: ``kappa = (observed - expected) / (1 - expected)``."""

    observed: float
    expected: float
    kappa: float
    items_used: int
    ratings_used: int


def fleiss_kappa(ratings: Sequence[Rating]) -> FleissResult:
    """Fleiss' kappa generalised to a varying number of ratings per item.

    Only items with at least two ratings are used (a single rating cannot agree with anyone).
    For item i with n_i ratings of which n_ij carry label j:

    * P_i = sum_j n_ij (n_ij - 1) / (n_i (n_i - 1))  -- share of agreeing ordered rater pairs
    * observed  = mean of P_i over the items used (each item weighs the same)
    * p_j       = sum_i n_ij / sum_i n_i over the items used (pooled label proportions)
    * expected  = sum_j p_j^2
    * kappa     = (observed - expected) / (1 - expected); NaN when expected == 1.

    This is the definition the bundled TREC 2011 data's build script used for its reference
    value (kappa 0.2918, observed 0.6459, expected 0.5). Raises ``ValueError`` when no item
    has two ratings.
    """
    ratings, _ = deduplicate(ratings)
    counts = _count_matrix(labels_by_item(ratings).values())
    if counts.shape[0] == 0:
        raise ValueError("fleiss_kappa: no item has at least two ratings")
    n_i = counts.sum(axis=1)
    p_i = (counts * (counts - 1)).sum(axis=1) / (n_i * (n_i - 1))
    observed = float(p_i.mean())
    p_j = counts.sum(axis=0) / n_i.sum()
    expected = float((p_j**2).sum())
    kappa = (observed - expected) / (1 - expected) if expected < 1 else math.nan
    return FleissResult(observed, expected, kappa, int(counts.shape[0]), int(n_i.sum()))


def _count_matrix(label_lists: Iterable[Sequence[int]]) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Items (with >= 2 ratings) x labels matrix of rating counts, as floats."""
    kept = [labels for labels in label_lists if len(labels) >= 2]
    categories = sorted({label for labels in kept for label in labels})
    column = {label: j for j, label in enumerate(categories)}
    counts = np.zeros((len(kept), len(categories)), dtype=np.float64)
    for i, labels in enumerate(kept):
        for label in labels:
            counts[i, column[label]] += 1
    return counts


# --------------------------------------------------------------------------- Krippendorff's alpha


def krippendorff_alpha(ratings: Sequence[Rating], level: AlphaLevel = "nominal") -> float:
    """Krippendorff's alpha (``krippendorff`` package) over a raters x items reliability matrix.

    Missing ratings are NaN in the matrix, so raters need not rate every item; items with a
    single rating carry no pairable information and drop out. ``level`` is the measurement
    level: ``nominal`` (labels are categories), ``ordinal`` (ranks matter, rubric grades) or
    ``interval`` (distances matter). NaN when fewer than two labels occur (alpha undefined).
    """
    if level not in ALPHA_LEVELS:
        raise ValueError(f"krippendorff_alpha: level must be one of {ALPHA_LEVELS}, not {level!r}")
    ratings, _ = deduplicate(ratings)
    labels = sorted({r.label for r in ratings})
    if len(labels) < 2:
        return math.nan
    raters = {rater: row for row, rater in enumerate(sorted({r.rater_id for r in ratings}))}
    items = {item: col for col, item in enumerate(sorted({r.item_id for r in ratings}))}
    matrix = np.full((len(raters), len(items)), np.nan)
    for rating in ratings:
        matrix[raters[rating.rater_id], items[rating.item_id]] = rating.label
    import krippendorff  # lazily, like scikit-learn in cohen_kappa

    # value_domain is given so an ordinal scale is the label set itself, in numeric order.
    return float(krippendorff.alpha(reliability_data=matrix, level_of_measurement=level, value_domain=labels))


# --------------------------------------------------------------------------- verdict


class ThresholdsLike(Protocol):
    """Anything with ``clear`` and ``ambiguous`` floats, e.g. a policy's gate-1 settings."""

    @property
    def clear(self) -> float: ...

    @property
    def ambiguous(self) -> float: ...


@dataclass(frozen=True, slots=True)
class GateThresholds:
    """Kappa cut-offs: above ``clear`` the policy is clear, below ``ambiguous`` it is ambiguous."""

    clear: float = 0.8
    ambiguous: float = 0.6

    def __post_init__(self) -> None:
        if not -1.0 <= self.ambiguous <= self.clear <= 1.0:
            raise ValueError(
                f"thresholds need -1 <= ambiguous <= clear <= 1, got ambiguous={self.ambiguous}, "
                f"clear={self.clear}"
            )


DEFAULT_THRESHOLDS = GateThresholds()


def verdict(kappa: float, thresholds: ThresholdsLike = DEFAULT_THRESHOLDS) -> Verdict:
    """Gate verdict for an agreement statistic.

    ``kappa > clear`` -> "clear"; ``kappa < ambiguous`` -> "ambiguous"; otherwise (both
    bounds inclusive) "needs refinement". An undefined (NaN) kappa is "ambiguous": data in
    which agreement cannot be measured cannot show that the policy is clear, and a gate
    must fail closed.
    """
    if math.isnan(kappa) or kappa < thresholds.ambiguous:
        return "ambiguous"
    if kappa > thresholds.clear:
        return "clear"
    return "needs refinement"


# --------------------------------------------------------------------------- where raters disagree


@dataclass(frozen=True, slots=True)
class BoundaryDispute:
    """How often two labels were given to the same item by different raters."""

    label_a: int
    label_b: int
    disagreeing_pairs: int  # unordered rater pairs on one item, one saying label_a, the other label_b
    items: int  # items on which both labels occur
    share: float  # of all disagreeing rater pairs in the data

    @property
    def adjacent(self) -> bool:
        """Whether the two grades are neighbours on the scale (e.g. 2 vs 3)."""
        return abs(self.label_b - self.label_a) == 1


def disputed_boundaries(ratings: Sequence[Rating]) -> list[BoundaryDispute]:
    """Label pairs (a < b) ranked by how many rater pairs split between them on one item.

    On an item with n_a ratings of a and n_b of b there are n_a * n_b disagreeing rater
    pairs across that boundary. For a rubric this points at the grade boundary the policy
    describes least clearly (e.g. most disputes between 2 and 3). Sorted by count, largest
    first, then by labels.
    """
    ratings, _ = deduplicate(ratings)
    pair_counts: Counter[tuple[int, int]] = Counter()
    item_counts: Counter[tuple[int, int]] = Counter()
    for labels in labels_by_item(ratings).values():
        per_label = Counter(labels)
        for a, b in itertools.combinations(sorted(per_label), 2):
            pair_counts[(a, b)] += per_label[a] * per_label[b]
            item_counts[(a, b)] += 1
    total = sum(pair_counts.values())
    disputes = [
        BoundaryDispute(a, b, count, item_counts[(a, b)], count / total)
        for (a, b), count in pair_counts.items()
    ]
    disputes.sort(key=lambda d: (-d.disagreeing_pairs, d.label_a, d.label_b))
    return disputes


@dataclass(frozen=True, slots=True)
class ItemDispute:
    """One item's ratings and how spread its labels are."""

    item_id: str
    n: int
    label_counts: Mapping[int, int]
    disagreement: float  # 1 - sum_j p_j^2 over the item's label shares p_j


def most_disputed_items(ratings: Sequence[Rating], top: int = 10) -> list[ItemDispute]:
    """The ``top`` items (with >= 2 ratings) whose raters disagree most.

    Disagreement is 1 - sum_j p_j^2 (p_j: the item's share of label j), the chance that two
    ratings drawn from the item differ. It is deliberately not 1 - P_i of Fleiss' kappa,
    which draws without replacement and so ranks every 1-1 split on two ratings above a
    10-10 split on twenty. Ties go to the item with more ratings (stronger evidence), then id.
    """
    if top < 0:
        raise ValueError(f"most_disputed_items: top must be >= 0, not {top}")
    ratings, _ = deduplicate(ratings)
    disputes = []
    for item_id, labels in labels_by_item(ratings).items():
        n = len(labels)
        if n < 2:
            continue
        per_label = Counter(labels)
        spread = 1 - sum((c / n) ** 2 for c in per_label.values())
        disputes.append(ItemDispute(item_id, n, dict(sorted(per_label.items())), spread))
    disputes.sort(key=lambda d: (-d.disagreement, -d.n, d.item_id))
    return disputes[:top]


# --------------------------------------------------------------------------- the report

VERDICT_STATISTIC = "fleiss_kappa"


@dataclass(frozen=True)
class Gate1Report:
    """Everything Gate 1 says about one set of ratings.

    The verdict is taken on Fleiss' kappa: it is the one statistic that uses every rater on
    every item, whereas pairwise kappas only exist for the few pairs with enough overlap
    (and are noisy for each of them). The pairwise median is reported next to it, as is
    Krippendorff's alpha, which agrees closely with Fleiss' kappa on many ratings per item.
    """

    n_items: int
    n_raters: int
    n_ratings: int
    duplicates_dropped: int
    labels: tuple[int, ...]
    fleiss: FleissResult
    krippendorff_alpha: float
    alpha_level: AlphaLevel
    min_shared: int
    weights: Weights
    pairs: tuple[PairAgreement, ...]
    pairwise: PairwiseSummary
    thresholds: GateThresholds
    verdict: Verdict
    boundaries: tuple[BoundaryDispute, ...]
    disputed_items: tuple[ItemDispute, ...]
    verdict_statistic: str = field(default=VERDICT_STATISTIC)

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; undefined (NaN) statistics become ``null``."""
        return {
            "n_items": self.n_items,
            "n_raters": self.n_raters,
            "n_ratings": self.n_ratings,
            "duplicates_dropped": self.duplicates_dropped,
            "labels": list(self.labels),
            "fleiss_kappa": _num(self.fleiss.kappa),
            "fleiss": {
                "observed": _num(self.fleiss.observed),
                "expected": _num(self.fleiss.expected),
                "kappa": _num(self.fleiss.kappa),
                "items_used": self.fleiss.items_used,
                "ratings_used": self.fleiss.ratings_used,
            },
            "krippendorff_alpha": _num(self.krippendorff_alpha),
            "krippendorff_level": self.alpha_level,
            "verdict": self.verdict,
            "verdict_statistic": self.verdict_statistic,
            "thresholds": {"clear": self.thresholds.clear, "ambiguous": self.thresholds.ambiguous},
            "pairwise": {
                "min_shared": self.min_shared,
                "weights": self.weights,
                "n_pairs": self.pairwise.n_pairs,
                "n_undefined": self.pairwise.n_undefined,
                "median": _num(self.pairwise.median),
                "mean": _num(self.pairwise.mean),
                "weighted_mean": _num(self.pairwise.weighted_mean),
                "min": _num(self.pairwise.min),
                "max": _num(self.pairwise.max),
            },
            "pairs": [
                {"rater_a": p.rater_a, "rater_b": p.rater_b, "n": p.n, "kappa": _num(p.kappa)}
                for p in self.pairs
            ],
            "disputed_boundaries": [
                {
                    "label_a": b.label_a,
                    "label_b": b.label_b,
                    "adjacent": b.adjacent,
                    "disagreeing_pairs": b.disagreeing_pairs,
                    "items": b.items,
                    "share": b.share,
                }
                for b in self.boundaries
            ],
            "disputed_items": [
                {
                    "item_id": d.item_id,
                    "n": d.n,
                    "label_counts": {str(k): v for k, v in d.label_counts.items()},
                    "disagreement": d.disagreement,
                }
                for d in self.disputed_items
            ],
        }


def _num(value: float) -> float | None:
    """NaN -> None, because JSON has no NaN."""
    return None if math.isnan(value) else value


def gate1_report(
    ratings: Sequence[Rating],
    *,
    min_shared: int = 30,
    weights: Weights = None,
    thresholds: ThresholdsLike = DEFAULT_THRESHOLDS,
    top: int = 10,
    alpha_level: AlphaLevel = "nominal",
    labels: Sequence[int] | None = None,
) -> Gate1Report:
    """Compute every Gate 1 statistic for ``ratings`` (deduplicated first) and the verdict.

    ``thresholds`` may be a :class:`GateThresholds` or any object with ``clear`` and
    ``ambiguous`` (a policy's gate-1 section); ``labels`` is the grade scale for weighted
    pairwise kappa (see :func:`pairwise_cohen`).
    """
    kept, dropped = deduplicate(ratings)
    if not kept:
        raise ValueError("gate1: no ratings")
    cutoffs = GateThresholds(clear=thresholds.clear, ambiguous=thresholds.ambiguous)  # validates them
    fleiss = fleiss_kappa(kept)
    pairs = pairwise_cohen(kept, min_shared=min_shared, weights=weights, labels=labels)
    return Gate1Report(
        n_items=len({r.item_id for r in kept}),
        n_raters=len({r.rater_id for r in kept}),
        n_ratings=len(kept),
        duplicates_dropped=dropped,
        labels=tuple(sorted({r.label for r in kept})),
        fleiss=fleiss,
        krippendorff_alpha=krippendorff_alpha(kept, alpha_level),
        alpha_level=alpha_level,
        min_shared=min_shared,
        weights=weights,
        pairs=tuple(pairs),
        pairwise=summarise_pairs(pairs),
        thresholds=cutoffs,
        verdict=verdict(fleiss.kappa, cutoffs),
        boundaries=tuple(disputed_boundaries(kept)),
        disputed_items=tuple(most_disputed_items(kept, top)),
    )
