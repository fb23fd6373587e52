"""Bias-corrected window shares: what the windows' shares would be if the teacher graded like the
golden set, with intervals that carry the calibration's uncertainty (pure; no I/O).

Binary signals (filtered, not shown, shown, related) are corrected with Rogan–Gladen,
p = (q + Sp − 1) / (Se + Sp − 1), from the teacher's sensitivity Se and specificity Sp on golden
labels it was not fitted on (``schemas.calibration``). The interval is the delta-method (plug-in)
interval of Lee et al. (2026): the window's own variance (from its Wilson interval on Kish's
effective n) plus the calibration's, whose variances and covariance come from a bootstrap over
golden *queries*. When Se + Sp − 1 is not clearly above zero the teacher's call says too little
about the truth: the share is reported as not identifiable, never as a wild number. When even
the interval lies outside [0, 1] (the raw share is beyond what a teacher with this Se and Sp can
produce), this window's teacher errors are not the golden set's: reported as out of range.

The grade mix is corrected by inverting the confusion matrix under the constraint that the
result is a distribution (non-negative least squares with a heavily weighted sum-to-one row),
with percentile intervals from a bootstrap over golden queries and the window's counts.
See docs/windows.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from schemas.calibration import CalibrationRecord, SignalCalibration, find_calibration
from streams.windows import RateEstimate, WindowStats, kish_ess, z_for

F64 = npt.NDArray[np.float64]
#: The lower confidence bound of Se + Sp − 1 must exceed this for a correction to be reported.
MIN_YOUDEN = 0.10
#: Weight of the sum-to-one row in the constrained inversion (large: the constraint holds).
SIMPLEX_WEIGHT = 1e3
MIX_REPLICATES = 200
METHOD = "Rogan-Gladen; delta-method interval with query-bootstrap calibration variance"
Status = Literal["corrected", "not_identifiable", "out_of_range"]


class CorrectedShare(NamedTuple):
    """A corrected share and its interval, or why there is none."""

    status: Status
    value: float | None
    lower: float | None
    upper: float | None
    youden: float
    youden_lower: float


def _clip(value: float) -> float:
    return min(max(value, 0.0), 1.0)


def rogan_gladen(raw: RateEstimate, calibration: SignalCalibration, confidence: float) -> CorrectedShare:
    """The corrected share of ``raw`` under ``calibration`` at ``confidence``."""
    z = z_for(confidence)
    youden = calibration.youden
    youden_lower = youden - z * math.sqrt(calibration.var_youden)
    if youden_lower <= MIN_YOUDEN:
        return CorrectedShare("not_identifiable", None, None, None, youden, youden_lower)
    point = (raw.rate + calibration.specificity - 1.0) / youden
    p = _clip(point)
    var_window = ((raw.upper - raw.lower) / (2.0 * z)) ** 2
    var_calibration = (
        p * p * calibration.var_sensitivity
        + (1.0 - p) ** 2 * calibration.var_specificity
        - 2.0 * p * (1.0 - p) * calibration.covariance
    )
    half = z * math.sqrt(max(var_window + var_calibration, 0.0)) / youden
    if point + half < 0.0 or point - half > 1.0:
        return CorrectedShare("out_of_range", None, None, None, youden, youden_lower)
    return CorrectedShare("corrected", p, _clip(point - half), _clip(point + half), youden, youden_lower)


class GradeMix(NamedTuple):
    """The window's grade mix, raw and corrected; grades golden never uses are not identifiable."""

    grades: list[int]
    raw: list[float]
    corrected: list[float | None]
    lower: list[float | None]
    upper: list[float | None]
    status: Status


class WindowCorrector:
    """Corrects a category's window figures with one calibration record."""

    def __init__(self, record: CalibrationRecord) -> None:
        self.record = record
        self.teacher_version = record.teacher_version
        self._mix = _MixModel(record)

    def calibration(self, category: str, signal: str) -> SignalCalibration | None:
        """The category's (or the pooled) calibration of ``signal``; None if it has none."""
        return self.record.for_category(category, signal)

    def correct(
        self, category: str, signal: str, raw: RateEstimate, confidence: float
    ) -> CorrectedShare | None:
        """``raw`` corrected, or None when ``signal`` is not calibrated (error or failure-mode shares
        without golden tags)."""
        calibration = self.calibration(category, signal)
        return None if calibration is None else rogan_gladen(raw, calibration, confidence)

    def grade_mix(self, stats: WindowStats, confidence: float = 0.95, seed: int = 0) -> GradeMix:
        """The window's grade mix, raw and corrected (pooled calibration)."""
        return self._mix.correct(stats, confidence, seed)


class _MixModel:
    """The confusion-matrix inversion for the grade mix, with its query bootstrap."""

    def __init__(self, record: CalibrationRecord) -> None:
        self.grades = record.grades
        by_query: dict[str, F64] = {}
        for cell in record.cells:
            counts = np.asarray(cell.counts, dtype=np.float64)
            by_query[cell.query] = by_query.get(cell.query, 0.0) + counts
        self.per_query = np.stack([by_query[q] for q in sorted(by_query)]) if by_query else None
        total = self.per_query.sum(axis=0) if self.per_query is not None else None
        self.supported = [i for i in range(len(self.grades)) if total is not None and total[i].sum() > 0]

    def correct(self, stats: WindowStats, confidence: float, seed: int) -> GradeMix:
        raw = self._raw(stats)
        unknown: list[float | None] = [None] * len(self.grades)
        if self.per_query is None or sum(raw) == 0 or len(self.supported) < 2:
            return GradeMix(self.grades, raw, unknown, unknown, unknown, "not_identifiable")
        point = invert_confusion(self.per_query.sum(axis=0), np.asarray(raw), self.supported)
        if point is None:
            return GradeMix(self.grades, raw, unknown, unknown, unknown, "not_identifiable")
        draws = self._bootstrap(
            np.asarray(raw), kish_ess(stats.counters.get("w", 0.0), stats.counters.get("w2", 0.0)), seed
        )
        tail = (1.0 - confidence) / 2.0 * 100.0
        low, high = np.percentile(draws, [tail, 100.0 - tail], axis=0) if len(draws) else (point, point)
        pick = self._supported_only
        return GradeMix(self.grades, raw, pick(point), pick(low), pick(high), "corrected")

    def _supported_only(self, values: F64) -> list[float | None]:
        keep = set(self.supported)
        return [float(values[i]) if i in keep else None for i in range(len(self.grades))]

    def _raw(self, stats: WindowStats) -> list[float]:
        weights = [stats.counters.get(f"grade_w:{g}", 0.0) for g in self.grades]
        total = sum(weights)
        return [w / total if total else 0.0 for w in weights]

    def _bootstrap(self, raw: F64, ess: float, seed: int) -> F64:
        assert self.per_query is not None
        rng = np.random.default_rng(seed)
        n = max(round(ess), 1)
        draws = []
        for _ in range(MIX_REPLICATES):
            confusion = self.per_query[rng.integers(0, len(self.per_query), len(self.per_query))].sum(axis=0)
            observed = rng.multinomial(n, raw / raw.sum()) / n
            solved = invert_confusion(confusion, observed, self.supported)
            if solved is not None:
                draws.append(solved)
        return np.asarray(draws, dtype=np.float64)


def invert_confusion(confusion: F64, observed: F64, supported: Sequence[int]) -> F64 | None:
    """The true-grade distribution π (zero outside ``supported``) that best explains the observed
    teacher-grade mix: min ‖Mᵀπ − q‖ with π ≥ 0 and Σπ = 1, M the row-normalised confusion.
    None when a supported row has no pairs in this (resampled) confusion."""
    from scipy.optimize import nnls

    rows = confusion[list(supported)]
    totals = rows.sum(axis=1, keepdims=True)
    if np.any(totals == 0):
        return None
    m = rows / totals
    system = np.vstack([m.T, SIMPLEX_WEIGHT * np.ones((1, len(supported)))])
    target = np.concatenate([observed, [SIMPLEX_WEIGHT]])
    solution, _residual = nnls(system, target)
    total = solution.sum()
    if total <= 0:
        return None
    out = np.zeros(confusion.shape[0])
    out[list(supported)] = solution / total
    return out


def find_corrector(
    directory: Path, teacher_version: str, policy_version: str
) -> tuple[WindowCorrector | None, str]:
    """The corrector for this teacher and policy version from ``directory`` (None if there is no
    usable calibration) and the one line that says which, or why none."""
    found = find_calibration(directory, teacher_version, policy_version)
    return (WindowCorrector(found.record) if found.record is not None else None), found.message


def corrected_json(share: CorrectedShare | None) -> Mapping[str, object] | None:
    """A JSON-ready dict of ``share`` (None when the signal is not calibrated)."""
    if share is None:
        return None
    return {
        "status": share.status,
        "value": share.value,
        "lower": share.lower,
        "upper": share.upper,
        "youden": round(share.youden, 6),
        "youden_lower": round(share.youden_lower, 6),
        "method": METHOD,
    }
