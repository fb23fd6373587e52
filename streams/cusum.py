"""The sequential rule kind: a Bernoulli CUSUM on the per-judgment "bad" indicator (pure math).

Each judgment adds ``up = ln(p1/p0)`` when bad and ``down = ln((1-p1)/(1-p0))`` (< 0) when not:
the log-likelihood ratio of "the bad share is p1" against "it is p0" (Page 1954). The loop adds a
whole bucket at a time at its boundary, ``S = min(cap, max(0, S + bad*up + (n-bad)*down))``, so
live, backtest and rebuild see the same statistic whatever the arrival order inside a bucket.

The alarm level ``h`` comes from the policy's target false-alarm interval: the in-control average
run length (ARL0) of the bucketed statistic is computed with the Markov-chain method of Brook and
Evans (1972) on a grid of ``1/RESOLUTION`` of ``|down|``; a bucket's judgments are Poisson with
the policy's expected rate, so its bad and good counts are independent Poissons (thinning) and
the bucket increment ``up*X + down*Y`` has an exact distribution on that grid. ``h`` is the
smallest level whose ARL0 reaches the target (bisection). ``judgment_arl`` does the same for the
classical per-judgment CUSUM, the optimal detector the benchmark compares against at the same
false-alarm rate. tests/unit/test_cusum.py checks both against simulation.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from scipy.stats import poisson

#: Grid steps per |down|: the Markov chain's resolution (ARLs within ~1 % of simulation).
RESOLUTION = 4
#: Largest grid the chain is built on (states); coarser grids are used above it.
MAX_STATES = 1500

FloatArray = npt.NDArray[np.float64]


class CusumDesign(NamedTuple):
    """A CUSUM's increments, its alarm level and the cap that bounds how long recovery takes."""

    up: float
    down: float
    threshold: float

    @property
    def cap(self) -> float:
        """The statistic never exceeds ``threshold + up``: once alarmed, recovery starts near h."""
        return self.threshold + self.up


def increments(in_control: float, shifted: float) -> tuple[float, float]:
    """(up, down): the log-likelihood ratio of a bad and of a good judgment, p1 against p0."""
    if not 0.0 < in_control < shifted < 1.0:
        raise ValueError(f"need 0 < in_control ({in_control}) < shifted ({shifted}) < 1")
    return math.log(shifted / in_control), math.log((1.0 - shifted) / (1.0 - in_control))


def update(statistic: float, bad: int, total: int, design: CusumDesign) -> float:
    """The statistic after a bucket of ``total`` judgments, ``bad`` of them bad."""
    moved = statistic + bad * design.up + (total - bad) * design.down
    return min(design.cap, max(0.0, moved))


def _arl(step_probabilities: FloatArray, offset: int, states: int) -> float:
    """Expected steps from 0 until the chain on 0..states-1 reaches ``states`` or beyond.

    ``step_probabilities[k]`` is the probability of moving ``k - offset`` grid units; the chain is
    reflected at 0 (the CUSUM's max(0, .)) and absorbed at ``states`` (the alarm).
    """
    here = np.arange(states)
    moves = here[None, :] - here[:, None] + offset  # index of the step from i to j
    inside = (moves >= 0) & (moves < step_probabilities.size)
    chain = np.where(inside, step_probabilities[np.clip(moves, 0, step_probabilities.size - 1)], 0.0)
    cumulative = np.cumsum(step_probabilities)
    to_zero = np.clip(offset - here, -1, step_probabilities.size - 1)  # steps landing at or below 0
    chain[:, 0] = np.where(to_zero >= 0, cumulative[np.maximum(to_zero, 0)], 0.0)
    expected = np.linalg.solve(np.eye(states) - chain, np.ones(states))
    return float(expected[0])


def _grid(design: CusumDesign) -> tuple[float, int, int]:
    """(up in grid units, down steps, states): a grid of ``|down| / RESOLUTION`` (coarser when
    that would exceed ``MAX_STATES``), on which ``down`` is a whole number of steps."""
    down = RESOLUTION
    while design.threshold / (abs(design.down) / down) > MAX_STATES and down > 1:
        down -= 1
    unit = abs(design.down) / down
    return design.up / unit, down, max(1, round(design.threshold / unit))


def _spread(probabilities: FloatArray, position: float, chance: float) -> None:
    """Add ``chance`` at the fractional index ``position``, split between its two neighbours so
    the step's mean is exact (a bad judgment's ``up`` is rarely a whole number of grid steps)."""
    low = math.floor(position)
    weight = position - low
    probabilities[low] += chance * (1.0 - weight)
    if weight > 0.0:
        probabilities[low + 1] += chance * weight


def judgment_arl(design: CusumDesign, bad_share: float) -> float:
    """Expected judgments to the alarm of the per-judgment CUSUM (from 0) at ``bad_share``."""
    up, down, states = _grid(design)
    probabilities = np.zeros(math.ceil(up) + down + 2)
    probabilities[0] = 1.0 - bad_share  # index 0 = a step of -down units
    _spread(probabilities, up + down, bad_share)
    return _arl(probabilities, down, states)


def bucket_arl(design: CusumDesign, bad_share: float, per_bucket: float) -> float:
    """Expected buckets to the alarm of the bucketed CUSUM (from 0) at ``bad_share``, with a
    Poisson number of judgments (mean ``per_bucket``) in each bucket."""
    up, down, states = _grid(design)
    bad = _poisson_pmf(per_bucket * bad_share)
    good = _poisson_pmf(per_bucket * (1.0 - bad_share))
    offset = down * (good.size - 1)
    probabilities = np.zeros(math.ceil(up * (bad.size - 1)) + offset + 2)
    for count, chance in enumerate(bad):
        # index = up*count + down*(good.size - 1 - good count): spread each over its neighbours
        for good_count, good_chance in enumerate(good):
            _spread(probabilities, up * count + down * (good.size - 1 - good_count), chance * good_chance)
    return _arl(probabilities, offset, states)


def _poisson_pmf(mean: float) -> FloatArray:
    """P(k) for k = 0..the 1-1e-12 quantile, renormalised to sum 1."""
    top = int(poisson.ppf(1.0 - 1e-12, mean)) if mean > 0 else 0
    pmf: FloatArray = np.asarray(poisson.pmf(np.arange(top + 1), mean), dtype=np.float64)
    normalised: FloatArray = pmf / pmf.sum()
    return normalised


@functools.lru_cache(maxsize=256)
def bucket_design(in_control: float, shifted: float, per_bucket: float, target_buckets: float) -> CusumDesign:
    """The bucketed CUSUM whose in-control ARL is ``target_buckets`` (the smallest such ``h``)."""
    up, down = increments(in_control, shifted)
    return _smallest(up, down, target_buckets, lambda d: bucket_arl(d, in_control, per_bucket))


@functools.lru_cache(maxsize=256)
def judgment_design(in_control: float, shifted: float, target_judgments: float) -> CusumDesign:
    """The per-judgment CUSUM whose in-control ARL is ``target_judgments``."""
    up, down = increments(in_control, shifted)
    return _smallest(up, down, target_judgments, lambda d: judgment_arl(d, in_control))


def _smallest(up: float, down: float, target: float, arl: Callable[[CusumDesign], float]) -> CusumDesign:
    low, high = 0.0, up
    while arl(CusumDesign(up, down, high)) < target:
        low, high = high, high * 2.0
        if high > 1e4:
            raise ValueError(f"no alarm level reaches an in-control ARL of {target:g}")
    for _ in range(40):
        middle = (low + high) / 2.0
        if arl(CusumDesign(up, down, middle)) < target:
            low = middle
        else:
            high = middle
        if high - low < 1e-3 * high:
            break
    return CusumDesign(up, down, high)
