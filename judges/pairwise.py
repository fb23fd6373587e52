"""Cohen's kappa, for two raters and for every rater pair; re-exported by :mod:`judges.agreement`.

A kappa is ``float('nan')`` when it is undefined (every rating used carries the same label).
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from judges.ratings import Rating, deduplicate

__all__ = [
    "WEIGHTS",
    "PairAgreement",
    "PairwiseSummary",
    "Weights",
    "cohen_kappa",
    "pairwise_cohen",
    "summarise_pairs",
]

Weights = Literal["linear", "quadratic"] | None
WEIGHTS: tuple[Weights, ...] = (None, "linear", "quadratic")


def cohen_kappa(
    a: Sequence[int],
    b: Sequence[int],
    labels: Sequence[int] | None = None,
    weights: Weights = None,
) -> float:
    """Cohen's kappa between two aligned label sequences (scikit-learn's implementation).

    ``labels`` fixes the label set and order; weighted kappa penalises a disagreement by the
    distance between *positions* in that list, so for rubric grades pass the full grade
    range (e.g. ``range(5)``) even if some grade is unused. Without it, the labels seen in
    ``a`` and ``b`` are used, sorted.

    Degenerate cases:
      * different lengths, or a label outside ``labels`` -> ``ValueError`` (scikit-learn
        would silently ignore such ratings);
      * empty input -> NaN (nothing to measure);
      * both raters used one and the same label throughout -> NaN: expected disagreement
        is zero, so kappa is 0/0. (If they use two different constant labels kappa is 0.)
    """
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa: sequences differ in length ({len(a)} vs {len(b)})")
    if weights not in WEIGHTS:
        raise ValueError(f"cohen_kappa: weights must be None, 'linear' or 'quadratic', not {weights!r}")
    if not a:
        return math.nan
    used = set(a) | set(b)
    if labels is not None:
        unknown = used - set(labels)
        if unknown:
            raise ValueError(f"cohen_kappa: labels {sorted(unknown)} are not in labels={list(labels)}")
    if len(used) < 2:
        return math.nan
    label_list = list(labels) if labels is not None else sorted(used)
    # Imported here: every CLI command module is imported at start-up, and scikit-learn
    # alone takes about a second to import; only gate runs should pay for it.
    from sklearn.metrics import cohen_kappa_score

    return float(cohen_kappa_score(a, b, labels=label_list, weights=weights))


@dataclass(frozen=True, slots=True)
class PairAgreement:
    """Cohen's kappa between two raters over the ``n`` items both rated."""

    rater_a: str
    rater_b: str
    n: int
    kappa: float


def _paired_label_codes(ratings: Sequence[Rating], scale: Sequence[int]) -> dict[tuple[str, str], list[int]]:
    """(rater_a, rater_b) with a < b -> one code per shared item, ``pos(label_a) * K + pos(label_b)``.

    Walking each item's raters only ever touches pairs that overlap, which is far cheaper
    than intersecting all ~310k pairs of 788 raters. Raises ``ValueError`` for a label
    outside ``scale``.
    """
    position = {label: k for k, label in enumerate(scale)}
    unknown = {r.label for r in ratings} - position.keys()
    if unknown:
        raise ValueError(f"pairwise_cohen: labels {sorted(unknown)} are not in labels={list(scale)}")
    by_item: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for rating in ratings:
        by_item[rating.item_id].append((rating.rater_id, position[rating.label]))
    size = len(scale)
    codes: dict[tuple[str, str], list[int]] = defaultdict(list)
    for entries in by_item.values():
        for (rater_a, pos_a), (rater_b, pos_b) in itertools.combinations(sorted(entries), 2):
            codes[(rater_a, rater_b)].append(pos_a * size + pos_b)
    return codes


def _weight_matrix(size: int, weights: Weights) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Disagreement weights between scale positions, as scikit-learn defines them."""
    distance = np.abs(np.subtract.outer(np.arange(size), np.arange(size))).astype(np.float64)
    if weights is None:
        return (distance > 0).astype(np.float64)
    return distance if weights == "linear" else distance**2


def _kappas(confusions: np.ndarray[Any, np.dtype[np.float64]], weights: Weights) -> list[float]:
    """Cohen's kappa of each K x K confusion matrix in a (P, K, K) stack; NaN where undefined.

    Same formula as ``sklearn.metrics.cohen_kappa_score``: 1 - sum(W * O) / sum(W * E) with
    E the outer product of the marginals scaled to the same total.
    """
    weight = _weight_matrix(confusions.shape[1], weights)
    totals = confusions.sum(axis=(1, 2))
    expected = np.einsum("pi,pj->pij", confusions.sum(axis=2), confusions.sum(axis=1)) / totals[:, None, None]
    observed_disagreement = (confusions * weight).sum(axis=(1, 2))
    expected_disagreement = (expected * weight).sum(axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = 1 - observed_disagreement / expected_disagreement
    kappa[expected_disagreement == 0] = np.nan  # both raters used one and the same label
    return [float(k) for k in kappa]


def pairwise_cohen(
    ratings: Sequence[Rating],
    min_shared: int = 30,
    weights: Weights = None,
    labels: Sequence[int] | None = None,
) -> list[PairAgreement]:
    """Cohen's kappa for every rater pair that shares at least ``min_shared`` items.

    Sorted by ``n`` descending, then rater ids. Every pair uses the same label scale,
    ``labels``; by default the labels in ``ratings`` for unweighted kappa, and every integer
    from the lowest to the highest label for weighted kappa (weights count positions, so an
    unused middle grade must still be on the scale). Pairs whose kappa is undefined (both
    raters used one label) are kept, with NaN.

    The kappas are those of :func:`cohen_kappa` (scikit-learn), computed for all pairs in one
    numpy pass: scikit-learn's ~2 ms of input validation per call made a thousand pairs the
    slowest part of Gate 1. The tests check the two agree.
    """
    if min_shared < 1:
        raise ValueError(f"pairwise_cohen: min_shared must be >= 1, not {min_shared}")
    if weights not in WEIGHTS:
        raise ValueError(f"pairwise_cohen: weights must be None, 'linear' or 'quadratic', not {weights!r}")
    ratings, _ = deduplicate(ratings)
    scale = list(labels) if labels is not None else _default_scale(ratings, weights)
    kept = [
        (pair, codes)
        for pair, codes in _paired_label_codes(ratings, scale).items()
        if len(codes) >= min_shared
    ]
    if not kept:
        return []
    size = len(scale)
    confusions = np.stack([np.bincount(codes, minlength=size * size) for _, codes in kept]).astype(np.float64)
    kappas = _kappas(confusions.reshape(len(kept), size, size), weights)
    pairs = [
        PairAgreement(a, b, len(codes), kappa) for ((a, b), codes), kappa in zip(kept, kappas, strict=True)
    ]
    pairs.sort(key=lambda p: (-p.n, p.rater_a, p.rater_b))
    return pairs


def _default_scale(ratings: Sequence[Rating], weights: Weights) -> list[int]:
    """The labels seen, or for weighted kappa the full integer range they span."""
    seen = sorted({r.label for r in ratings})
    if weights is None or not seen:
        return seen
    return list(range(seen[0], seen[-1] + 1))


@dataclass(frozen=True, slots=True)
class PairwiseSummary:
    """Distribution of pairwise kappas; undefined (NaN) kappas are counted, not averaged."""

    n_pairs: int
    n_undefined: int
    median: float
    mean: float
    weighted_mean: float  # weighted by shared items: a pair on 300 items says more than one on 30
    min: float
    max: float


def summarise_pairs(pairs: Sequence[PairAgreement]) -> PairwiseSummary:
    """Median, mean, n-weighted mean, min and max of the defined pairwise kappas (NaN if none)."""
    defined = [p for p in pairs if not math.isnan(p.kappa)]
    if not defined:
        nan = math.nan
        return PairwiseSummary(len(pairs), len(pairs), nan, nan, nan, nan, nan)
    kappas = [p.kappa for p in defined]
    total_n = sum(p.n for p in defined)
    return PairwiseSummary(
        n_pairs=len(pairs),
        n_undefined=len(pairs) - len(defined),
        median=statistics.median(kappas),
        mean=statistics.fmean(kappas),
        weighted_mean=sum(p.kappa * p.n for p in defined) / total_n,
        min=min(kappas),
        max=max(kappas),
    )
