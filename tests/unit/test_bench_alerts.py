"""bench.bench_alerts: the SPRT formula, the simulator, and that its shortcuts match the real path."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pytest

from bench.bench_alerts import (
    T0,
    Scenario,
    Windows,
    detect,
    evaluate_at,
    make_rule,
    monitor,
    poisson_upper,
    simulate_counts,
    sprt_asn,
    wilson_lower,
    window_stats,
)
from schemas.judgments import Judgment, judgment_id_for
from streams.alerting import evaluate_rule
from streams.windows import WindowAggregate, wilson_interval


def test_sprt_asn_matches_a_hand_computed_value() -> None:
    # p0 = 5 %, p1 = 10 %, alpha = beta = 0.05:
    # numerator = 0.95 ln 19 + 0.05 ln(1/19) = 0.9 ln 19 = 2.64998
    # drift = 0.1 ln 2 + 0.9 ln(0.9/0.95) = 0.0693147 - 0.0486605 = 0.0206542
    assert sprt_asn(0.05, 0.10) == pytest.approx(2.64998 / 0.0206542, rel=1e-4)
    assert sprt_asn(0.05, 0.10) == pytest.approx(128.30, abs=0.01)
    assert sprt_asn(0.02, 0.04) > sprt_asn(0.05, 0.10) > sprt_asn(0.10, 0.20)


def test_poisson_upper_bound_of_zero_is_about_three() -> None:
    assert poisson_upper(0) == pytest.approx(-math.log(0.05), rel=1e-6)
    assert poisson_upper(5) > 5


def test_vectorised_wilson_matches_streams_windows() -> None:
    n = np.array([0, 1, 40, 1200, 37], dtype=np.int64)
    bad = np.array([0, 0, 7, 130, 37], dtype=np.int64)
    lower = wilson_lower(bad, n, 1.959963984540054)
    for i in range(len(n)):
        assert lower[i] == pytest.approx(wilson_interval(int(bad[i]), int(n[i])).lower if n[i] else 0.0)


def test_huge_step_fires_quickly() -> None:
    scenario = Scenario(600, 0.02, 0.60, "midpoint")
    detection = detect(scenario, runs=10, seed=1, horizon=48)
    assert detection.fired_share == 1.0
    # threshold 31 %: the 2 h window must be about half post-step before its lower bound clears it
    assert float(np.max(detection.minutes)) <= 90


def test_no_step_does_not_fire() -> None:
    detection = detect(Scenario(600, 0.05, 0.10, "midpoint"), runs=10, seed=2, horizon=96, after=0.05)
    assert detection.fired_share == 0.0
    assert np.all(np.isinf(detection.samples))


def test_skipping_non_candidates_gives_the_same_firings() -> None:
    rule = make_rule(0.05, "2h", "30m")  # threshold = p0: frequent firings and resolutions
    n, bad = simulate_counts(np.random.default_rng(3), 600, np.full(3000, 0.05), 1)
    windows = Windows.from_counts(n, bad, rule).run(0)
    fast = monitor(rule, windows, 24, windows.candidates(rule))
    slow = monitor(rule, windows, 24)
    assert fast.firings and fast.firings == slow.firings
    assert fast.state == slow.state
    assert fast.evaluations < slow.evaluations


def test_window_stats_equal_an_aggregate_of_real_judgments() -> None:
    rule = make_rule(0.2, "2h", "30m")
    end = T0 + timedelta(hours=2)
    aggregate = WindowAggregate(1800, end.timestamp())
    for k in range(50):
        bad = k % 4 == 0
        aggregate.add(
            Judgment.model_validate(
                {
                    "judgment_id": judgment_id_for(f"e{k}", "i", "p", "t"),
                    "event_id": f"e{k}",
                    "item_id": "i",
                    "category": "c",
                    "event_time": end - timedelta(seconds=30 * k + 1),
                    "status": "ok",
                    "grade": 0 if bad else 4,
                    "display": "filter" if bad else "show",
                    "policy_version": "p",
                    "teacher_version": "t",
                    "judged_at": end,
                },
                strict=False,
            )
        )
    real = aggregate.result()
    mine = window_stats(1800, 50, 13)
    by_real = evaluate_rule(rule, {7200: real, 1800: real})
    by_mine = evaluate_rule(rule, {7200: mine, 1800: mine})
    assert by_real.figures == by_mine.figures


def test_evaluate_at_reads_the_run_row() -> None:
    rule = make_rule(0.1, "2h", "30m")
    n = np.full((1, 30), 50, dtype=np.int64)
    windows = Windows.from_counts(n, n // 2, rule).run(0)
    evaluation = evaluate_at(rule, windows, 29)
    assert evaluation.breaching
    assert [f.samples for f in evaluation.figures] == [1200, 300]
