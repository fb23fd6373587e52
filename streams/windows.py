"""Pure window math: per-bucket counters from judgments, window aggregation, Wilson bounds.

A category's judgments land in event-time buckets of ``bucket_seconds`` (300 s by default). Each
bucket is a flat ``dict[str, float]`` of counters (a Redis hash in production; see
docs/windows.md). A window of ``window_s`` ending at ``end`` merges the buckets whose start lies
in ``[end - window_s, end)``.

Counter fields (all increments are floats; ``w`` = weight = 1 / inclusion_probability):

============================  ================================================================
``n``, ``w``, ``w2``          ok judgments: count, Σw, Σw² (Σw² gives Kish's effective n)
``err``, ``err_w``, ``err_w2`` error judgments (teacher failed): count, Σw, Σw²; apart from quality
``display:<d>``               ok judgments with display d ∈ show|related|filter (count)
``display_w:<d>``             … their Σw
``grade:<g>``, ``grade_w:<g>`` ok judgments with grade g (count, Σw)
``fm:<id>``, ``fm_w:<id>``    ok judgments tagged with failure mode id (count, Σw)
``cm:<golden>:<grade>``       golden canaries only: golden grade vs teacher grade (count)
============================  ================================================================
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from statistics import NormalDist
from typing import NamedTuple

from schemas.calibration import BINARY_SIGNALS
from schemas.judgments import Judgment
from schemas.policy import AlertRule, parse_duration

DEFAULT_BUCKET_SECONDS = 300
#: Signals whose rate needs no extra argument; failure-mode rates are keyed "failure_mode_share:<id>".
PLAIN_SIGNALS = ("filtered_share", "not_shown_share", "error_share")


def parse_window(text: str) -> int:
    """'5m' → 300: window names use the policy's duration syntax."""
    return parse_duration(text)


def window_name(seconds: int) -> str:
    """300 → '5m', 7200 → '2h': the largest unit that divides evenly."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def bucket_start(ts_epoch: float, bucket_seconds: int = DEFAULT_BUCKET_SECONDS) -> int:
    """Start (epoch seconds) of the bucket holding ``ts_epoch``; a boundary time opens its bucket."""
    return math.floor(ts_epoch / bucket_seconds) * bucket_seconds


def counter_updates(judgment: Judgment) -> dict[str, float]:
    """The counter increments one judgment contributes to its bucket (field → increment)."""
    weight = judgment.weight
    if judgment.status == "error":
        return {"err": 1.0, "err_w": weight, "err_w2": weight * weight}
    updates = {"n": 1.0, "w": weight, "w2": weight * weight}
    # The schema guarantees display and grade on ok judgments.
    updates[f"display:{judgment.display}"] = 1.0
    updates[f"display_w:{judgment.display}"] = weight
    updates[f"grade:{judgment.grade}"] = 1.0
    updates[f"grade_w:{judgment.grade}"] = weight
    for mode in dict.fromkeys(judgment.failure_modes):  # a mode tagged twice counts once
        updates[f"fm:{mode}"] = 1.0
        updates[f"fm_w:{mode}"] = weight
    if judgment.canary is not None:
        updates[f"cm:{judgment.canary.golden_grade}:{judgment.grade}"] = 1.0
    return updates


def merge_counts(into: dict[str, float], updates: Mapping[str, float]) -> None:
    """Add ``updates`` into ``into`` field by field (what HINCRBYFLOAT does in Redis)."""
    for name, value in updates.items():
        into[name] = into.get(name, 0.0) + value


class Interval(NamedTuple):
    """A confidence interval for a proportion."""

    lower: float
    upper: float


class RateEstimate(NamedTuple):
    """A signal's weighted rate in one window, its Wilson bounds, and the raw counts behind it."""

    rate: float
    lower: float
    upper: float
    samples: int
    bad: int


@functools.lru_cache(maxsize=64)
def z_for(confidence: float) -> float:
    """Two-sided normal quantile: 0.95 → 1.95996."""
    return NormalDist().inv_cdf(1.0 - (1.0 - confidence) / 2.0)


def wilson_interval(successes: float, n: float, confidence: float = 0.95) -> Interval:
    """Wilson score interval for successes/n; (0, 1) when n is 0. Works for fractional n (ESS)."""
    if n <= 0:
        return Interval(0.0, 1.0)
    p = min(max(successes / n, 0.0), 1.0)
    z = z_for(confidence)
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2.0 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n))
    lower = 0.0 if p == 0.0 else max(0.0, centre - half)
    upper = 1.0 if p == 1.0 else min(1.0, centre + half)
    return Interval(lower, upper)


def kish_ess(sum_w: float, sum_w2: float) -> float:
    """Kish's effective sample size (Σw)²/Σw²: n for equal weights, less for unequal ones."""
    return 0.0 if sum_w2 <= 0 else sum_w * sum_w / sum_w2


def weighted_rate(
    bad_w: float, total_w: float, total_w2: float, samples: int, bad: int, confidence: float
) -> RateEstimate:
    """Weighted share bad_w/total_w with a Wilson interval on Kish's effective sample size."""
    if total_w <= 0:
        return RateEstimate(0.0, 0.0, 1.0, samples, bad)
    rate = min(max(bad_w / total_w, 0.0), 1.0)
    ess = kish_ess(total_w, total_w2)
    interval = wilson_interval(rate * ess, ess, confidence)
    return RateEstimate(rate, interval.lower, interval.upper, samples, bad)


@dataclass(frozen=True)
class WindowStats:
    """One category's window: counts, the merged counters, and every signal's rate.

    ``rates`` (computed on first use: alert evaluation needs only its rules' signals) holds the
    plain signals and ``failure_mode_share:<id>`` for every mode seen, at ``confidence``;
    ``signal_rate`` computes one rule's rate at that rule's confidence.
    """

    window_s: int
    samples: int
    weighted_samples: float
    errors: int
    counters: dict[str, float] = field(default_factory=dict)
    end_epoch: int = 0
    confidence: float = 0.95

    @cached_property
    def rates(self) -> dict[str, RateEstimate]:
        """Every signal's rate in this window (plain signals and each failure mode seen)."""
        counters = self.counters
        rates = {s: rate_from_counters(counters, s, None, self.confidence) for s in PLAIN_SIGNALS}
        for name in counters:
            if name.startswith("fm:"):
                mode = name[3:]
                key = f"failure_mode_share:{mode}"
                rates[key] = rate_from_counters(counters, "failure_mode_share", mode, self.confidence)
        return rates

    def failure_modes(self) -> dict[str, int]:
        """Failure mode id → count of ok judgments tagged with it."""
        return {k[3:]: round(v) for k, v in self.counters.items() if k.startswith("fm:")}


def stats_from_counters(
    window_s: int, end_epoch: float, counters: Mapping[str, float], confidence: float = 0.95
) -> WindowStats:
    """A window's WindowStats from its merged counters (copied)."""
    return WindowStats(
        window_s=window_s,
        samples=round(_get(counters, "n")),
        weighted_samples=_get(counters, "w"),
        errors=round(_get(counters, "err")),
        counters=dict(counters),
        end_epoch=math.ceil(end_epoch),
        confidence=confidence,
    )


def _get(counters: Mapping[str, float], name: str) -> float:
    return counters.get(name, 0.0)


def rate_from_counters(
    counters: Mapping[str, float], signal: str, failure_mode: str | None, confidence: float
) -> RateEstimate:
    """A signal's RateEstimate from merged counters (see the module docstring for fields)."""
    if signal == "error_share":
        return weighted_rate(
            _get(counters, "err_w"),
            _get(counters, "w") + _get(counters, "err_w"),
            _get(counters, "w2") + _get(counters, "err_w2"),
            round(_get(counters, "n") + _get(counters, "err")),
            round(_get(counters, "err")),
            confidence,
        )
    if signal == "failure_mode_share":
        if failure_mode is None:
            raise ValueError("failure_mode_share needs a failure_mode")
        bad_w, bad = _get(counters, f"fm_w:{failure_mode}"), _get(counters, f"fm:{failure_mode}")
    elif signal in BINARY_SIGNALS:
        return display_rate(counters, BINARY_SIGNALS[signal], confidence)
    else:
        raise ValueError(f"unknown signal {signal!r}")
    n = round(_get(counters, "n"))
    return weighted_rate(bad_w, _get(counters, "w"), _get(counters, "w2"), n, round(bad), confidence)


def display_rate(counters: Mapping[str, float], displays: Iterable[str], confidence: float) -> RateEstimate:
    """The weighted share of ok judgments whose display is in ``displays``, with Wilson bounds."""
    shown = tuple(displays)
    bad_w = sum(_get(counters, f"display_w:{d}") for d in shown)
    bad = sum(_get(counters, f"display:{d}") for d in shown)
    n = round(_get(counters, "n"))
    return weighted_rate(bad_w, _get(counters, "w"), _get(counters, "w2"), n, round(bad), confidence)


def signal_rate(stats: WindowStats, rule: AlertRule) -> RateEstimate:
    """The rule's signal rate in ``stats``, with Wilson bounds at the rule's confidence."""
    return rate_from_counters(stats.counters, rule.signal, rule.failure_mode, rule.confidence)


class WindowAggregate:
    """Merges bucket counters for the buckets covering ``[end_epoch - window_s, end_epoch)``.

    Use like a streaming stat: ``update(bucket_start, counters)`` per bucket (buckets outside the
    window are ignored), then ``result()``. ``window_s`` must be a multiple of ``bucket_seconds``.
    """

    def __init__(
        self,
        window_s: int,
        end_epoch: float,
        bucket_seconds: int = DEFAULT_BUCKET_SECONDS,
        confidence: float = 0.95,
    ) -> None:
        if window_s <= 0 or window_s % bucket_seconds:
            raise ValueError(f"window {window_s}s is not a positive multiple of {bucket_seconds}s buckets")
        self.window_s = window_s
        self.end_epoch = end_epoch
        self.bucket_seconds = bucket_seconds
        self.confidence = confidence
        self._buckets = frozenset(self.covering_buckets())
        self._counters: dict[str, float] = {}

    def covering_buckets(self) -> list[int]:
        """Bucket starts ``b`` with ``end - window_s <= b < end``, oldest first."""
        first = -(-math.ceil(self.end_epoch - self.window_s) // self.bucket_seconds) * self.bucket_seconds
        return list(range(first, math.ceil(self.end_epoch), self.bucket_seconds))

    def update(self, bucket: int, counters: Mapping[str, float]) -> bool:
        """Merge one bucket's counters; returns False (and ignores them) when outside the window."""
        if bucket not in self._buckets:
            return False
        merge_counts(self._counters, counters)
        return True

    def add(self, judgment: Judgment) -> bool:
        """Merge one judgment directly (recomputation from a list; tests and rebuilds)."""
        bucket = bucket_start(judgment.event_time.timestamp(), self.bucket_seconds)
        return self.update(bucket, counter_updates(judgment))

    def extend(self, judgments: Iterable[Judgment]) -> None:
        """``add`` each judgment."""
        for judgment in judgments:
            self.add(judgment)

    def result(self) -> WindowStats:
        """The window's stats (rates at this aggregate's confidence)."""
        return stats_from_counters(self.window_s, self.end_epoch, self._counters, self.confidence)
