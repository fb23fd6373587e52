"""Cohen's kappa of confusion matrices, vectorised (pure numpy; no I/O).

Shared by Gate 2's bootstrap (``judges.gate2``) and the live canaries (``streams.canary``), which
may not import each other. Equals scikit-learn's ``cohen_kappa_score`` (tested against it).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
#: sklearn's spelling ("none" is the policy's spelling of unweighted).
Weighting = Literal["quadratic", "linear", "none"] | None


def disagreement_weights(k: int, weights: Weighting) -> F64:
    """The (k, k) disagreement weights sklearn uses: squared or absolute distance between label
    positions, or 0/1 for unweighted kappa."""
    i, j = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
    if weights == "quadratic":
        return np.asarray((i - j) ** 2, dtype=np.float64)
    if weights == "linear":
        return np.asarray(np.abs(i - j), dtype=np.float64)
    return np.asarray(i != j, dtype=np.float64)


def kappas(matrices: F64, weights: Weighting) -> F64:
    """Kappa of each (k, k) matrix in a stack (rows truth, columns rater); nan when undefined."""
    stack = matrices.reshape(-1, *matrices.shape[-2:])
    w = disagreement_weights(stack.shape[-1], weights)
    totals = stack.sum(axis=(1, 2))
    outer = np.einsum("ni,nj->nij", stack.sum(axis=2), stack.sum(axis=1))
    expected = outer / np.where(totals, totals, 1)[:, None, None]
    denominator = (w * expected).sum(axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        values = 1.0 - (w * stack).sum(axis=(1, 2)) / denominator
    return np.where((totals > 0) & (denominator > 0), values, np.nan)
