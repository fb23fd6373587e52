"""streams.correction: Rogan–Gladen with its plug-in interval, checked against simulation; the
identifiability guard; the simplex-constrained grade-mix inversion, checked against scipy's
general constrained optimiser; and rules that judge corrected shares."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from scipy.optimize import minimize

from schemas.calibration import (
    BINARY_SIGNALS,
    CalibrationRecord,
    CategoryRule,
    ConfusionCell,
    SignalCalibration,
)
from schemas.policy import AlertRule
from streams.alerting import Correction, evaluate_rule
from streams.correction import (
    WindowCorrector,
    invert_confusion,
    rogan_gladen,
)
from streams.windows import (
    RateEstimate,
    display_rate,
    rate_from_counters,
    stats_from_counters,
    wilson_interval,
)


def calibration(
    se: float, sp: float, var_se: float = 0.0, var_sp: float = 0.0, cov: float = 0.0
) -> SignalCalibration:
    return SignalCalibration(
        sensitivity=se,
        specificity=sp,
        positives=100,
        negatives=100,
        queries=10,
        var_sensitivity=var_se,
        var_specificity=var_sp,
        covariance=cov,
    )


def raw(rate: float, n: int = 1000) -> RateEstimate:
    interval = wilson_interval(rate * n, n)
    return RateEstimate(rate, interval.lower, interval.upper, n, round(rate * n))


@pytest.mark.parametrize(
    ("q", "se", "sp", "expected"),
    [
        (0.5, 1.0, 1.0, 0.5),  # a perfect teacher needs no correction
        (0.35, 0.8, 0.9, (0.35 + 0.9 - 1) / 0.7),
        (0.1, 0.8, 0.9, 0.0),  # below 1 - Sp: clipped to 0, the interval still reaches above it
        (0.62, 0.7, 0.6, (0.62 + 0.6 - 1) / 0.3),
    ],
)
def test_rogan_gladen_point(q: float, se: float, sp: float, expected: float) -> None:
    share = rogan_gladen(raw(q), calibration(se, sp, 1e-4, 1e-4), 0.95)
    assert share.status == "corrected" and share.value == pytest.approx(expected, abs=1e-9)
    assert share.lower is not None and share.upper is not None and share.lower <= share.value <= share.upper


def test_interval_matches_simulated_spread() -> None:
    """The delta-method variance equals the spread of p when q, Se and Sp vary as stated."""
    q, se, sp = 0.3, 0.8, 0.85
    var_se, var_sp, cov = 0.002, 0.001, -0.0004
    window = raw(q, 2000)
    share = rogan_gladen(window, calibration(se, sp, var_se, var_sp, cov), 0.95)
    assert share.lower is not None and share.upper is not None
    rng = np.random.default_rng(1)
    sd_q = (window.upper - window.lower) / (2 * 1.959964)
    qs = rng.normal(q, sd_q, 200_000)
    se_sp = rng.multivariate_normal([se, sp], [[var_se, cov], [cov, var_sp]], 200_000)
    p = (qs + se_sp[:, 1] - 1) / (se_sp[:, 0] + se_sp[:, 1] - 1)
    half_width = (share.upper - share.lower) / 2
    assert half_width == pytest.approx(1.959964 * p.std(), rel=0.05)


def test_interval_covers_when_the_calibration_is_exchangeable() -> None:
    """Calibration pairs and window pairs from the same teacher: ~95% of intervals cover."""
    rng = np.random.default_rng(7)
    true_p, se, sp, m, n = 0.25, 0.75, 0.85, 400, 600
    covered = 0
    runs = 400
    for _ in range(runs):
        pos = neg = m // 2
        se_hat, sp_hat = rng.binomial(pos, se) / pos, rng.binomial(neg, sp) / neg
        cal = calibration(se_hat, sp_hat, se_hat * (1 - se_hat) / pos, sp_hat * (1 - sp_hat) / neg)
        truth = rng.random(n) < true_p
        called = np.where(truth, rng.random(n) < se, rng.random(n) > sp)
        share = rogan_gladen(raw(float(called.mean()), n), cal, 0.95)
        assert share.lower is not None and share.upper is not None
        covered += share.lower <= true_p <= share.upper
    assert 0.91 <= covered / runs <= 0.99


@pytest.mark.parametrize(
    ("se", "sp", "var", "status"),
    [
        (0.55, 0.5, 0.0001, "not_identifiable"),  # Se + Sp - 1 = 0.05: the call says nothing
        (0.7, 0.6, 0.01, "not_identifiable"),  # 0.3, but too uncertain to be clearly above 0.1
        (0.7, 0.6, 0.0001, "corrected"),
    ],
)
def test_weak_teachers_are_not_identifiable(se: float, sp: float, var: float, status: str) -> None:
    share = rogan_gladen(raw(0.4), calibration(se, sp, var, var), 0.95)
    assert share.status == status
    assert (share.value is None) == (status != "corrected")


def test_a_raw_share_beyond_the_teachers_range_is_out_of_range() -> None:
    # Se 0.6: even if every item were bad the teacher would call 60%; 98% cannot be explained.
    share = rogan_gladen(raw(0.98, 5000), calibration(0.6, 0.95, 1e-5, 1e-5), 0.95)
    assert share.status == "out_of_range" and share.value is None


CONFUSION = np.array(
    [[80, 10, 8, 2, 0], [0, 0, 0, 0, 0], [15, 10, 60, 10, 5], [0, 0, 0, 0, 0], [2, 3, 20, 15, 60]],
    dtype=np.float64,
)
SUPPORTED = [0, 2, 4]


def test_inversion_recovers_an_exact_mix() -> None:
    truth = np.array([0.2, 0.0, 0.5, 0.0, 0.3])
    m = CONFUSION / np.maximum(CONFUSION.sum(axis=1, keepdims=True), 1)
    observed = m.T @ truth
    solved = invert_confusion(CONFUSION, observed, SUPPORTED)
    assert solved is not None and solved == pytest.approx(truth, abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_inversion_equals_scipys_constrained_least_squares(seed: int) -> None:
    rng = np.random.default_rng(seed)
    observed = rng.dirichlet(np.ones(5))  # a mix no true distribution explains exactly
    solved = invert_confusion(CONFUSION, observed, SUPPORTED)
    assert solved is not None and solved.min() >= 0 and solved.sum() == pytest.approx(1.0)
    m = (CONFUSION / CONFUSION.sum(axis=1, keepdims=True).clip(min=1))[SUPPORTED]
    reference = minimize(
        lambda pi: float(np.sum((m.T @ pi - observed) ** 2)),
        np.full(3, 1 / 3),
        bounds=[(0, 1)] * 3,
        constraints=[{"type": "eq", "fun": lambda pi: pi.sum() - 1}],
        method="SLSQP",
        options={"ftol": 1e-12},
    )
    assert solved[SUPPORTED] == pytest.approx(reference.x, abs=2e-3)


def record(**per_category: Any) -> CalibrationRecord:
    cells = [
        ConfusionCell(category="Kitchen", query=f"q{i}", counts=(CONFUSION / 4).astype(int).tolist())
        for i in range(4)
    ]
    pooled = calibration(0.85, 0.9, 1e-4, 1e-4)
    return CalibrationRecord(
        teacher_version="t1",
        policy_version="p1",
        grades=[0, 1, 2, 3, 4],
        source="as_is",
        method="test",
        golden_file="golden.jsonl",
        golden_sha256="0" * 64,
        n=int(CONFUSION.sum()),
        queries=4,
        bootstrap_replicates=0,
        bootstrap_seed=0,
        cells=cells,
        confusion=CONFUSION.astype(int).tolist(),
        signals={
            "filtered_share": pooled,
            "not_shown_share": pooled,
            "shown_share": pooled,
            "related_share": pooled,
        },
        category_rule=CategoryRule(min_positives=30, min_negatives=30, min_queries=5),
        per_category=per_category,
    )


def window(filtered: int, shown: int) -> Any:
    counters = {
        "n": float(filtered + shown),
        "w": float(filtered + shown),
        "w2": float(filtered + shown),
        "display:filter": float(filtered),
        "display_w:filter": float(filtered),
        "display:show": float(shown),
        "display_w:show": float(shown),
        "grade:0": float(filtered),
        "grade_w:0": float(filtered),
        "grade:4": float(shown),
        "grade_w:4": float(shown),
    }
    return stats_from_counters(3600, 0.0, counters)


def test_category_calibration_overrides_the_pooled_one() -> None:
    own = calibration(0.6, 0.7, 1e-4, 1e-4)
    corrector = WindowCorrector(record(Outdoor={"filtered_share": own}))
    assert corrector.calibration("Outdoor", "filtered_share") == own
    assert corrector.calibration("Kitchen", "filtered_share") != own
    assert corrector.calibration("Kitchen", "error_share") is None


def test_corrector_corrects_every_binary_signal_and_the_grade_mix() -> None:
    corrector = WindowCorrector(record())
    stats = window(40, 160)
    for signal, displays in BINARY_SIGNALS.items():
        raw = display_rate(stats.counters, displays, 0.95)
        assert corrector.correct("Kitchen", signal, raw, 0.95) is not None, signal
    raw = display_rate(stats.counters, ("filter",), 0.95)
    assert raw == rate_from_counters(stats.counters, "filtered_share", None, 0.95)
    corrected = corrector.correct("Kitchen", "filtered_share", raw, 0.95)
    assert corrected is not None and corrected.value == pytest.approx((0.2 + 0.9 - 1) / 0.75)
    mix = corrector.grade_mix(stats)
    assert mix.status == "corrected" and mix.corrected[1] is None and mix.corrected[3] is None
    values = [v for v in mix.corrected if v is not None]
    assert sum(values) == pytest.approx(1.0)
    for value, low, high in zip(mix.corrected, mix.lower, mix.upper, strict=True):
        if value is not None:
            assert low is not None and high is not None and low - 1e-9 <= value <= high + 1e-9


def corrected_rule(**fields: Any) -> AlertRule:
    data: dict[str, Any] = {
        "id": "filtered",
        "signal": "filtered_share",
        "threshold": 0.3,
        "windows": [{"long": "2h", "short": "1h"}],
        "min_samples": 30,
        "severity": "page",
        "estimate": "corrected",
    }
    return AlertRule.model_validate({**data, **fields})


def test_a_corrected_rule_judges_the_corrected_share() -> None:
    # Raw 0.45 with a teacher that over-calls (Sp 0.7): corrected (0.45 - 0.3) / 0.55 = 0.27 < 0.3.
    over_calling = record(Kitchen={"filtered_share": calibration(0.85, 0.7, 1e-4, 1e-4)})
    stats = {7200: window(450, 550), 3600: window(225, 275)}
    raw_rule = corrected_rule(estimate="raw")
    assert evaluate_rule(raw_rule, stats).breaching
    judged = evaluate_rule(corrected_rule(), stats, Correction(WindowCorrector(over_calling), "Kitchen"))
    assert not judged.breaching and judged.recovered
    assert judged.calibration == "t1"
    figure = judged.figures[0]
    assert figure.estimate == "corrected" and figure.corrected is not None
    assert figure.point == pytest.approx((0.45 - 0.3) / 0.55)
    payload = figure.to_schema()
    assert payload.corrected is not None and payload.corrected.value == pytest.approx(figure.point)


def test_a_corrected_rule_without_calibration_judges_raw() -> None:
    stats = {7200: window(450, 550), 3600: window(225, 275)}
    judged = evaluate_rule(corrected_rule(), stats)
    assert judged.breaching and judged.figures[0].estimate == "raw" and judged.calibration is None


def test_not_identifiable_holds_the_state() -> None:
    weak = record(Kitchen={"filtered_share": calibration(0.55, 0.5, 1e-4, 1e-4)})
    stats = {7200: window(900, 100), 3600: window(450, 50)}
    judged = evaluate_rule(corrected_rule(), stats, Correction(WindowCorrector(weak), "Kitchen"))
    assert not judged.breaching and not judged.recovered


@pytest.mark.parametrize(
    "fields",
    [
        {
            "kind": "cusum",
            "windows": [],
            "cusum": {"in_control": 0.1, "false_alarm_every": "30d", "judgments_per_hour": 100},
        },
        {"signal": "error_share"},
    ],
)
def test_corrected_estimates_only_where_a_calibration_can_apply(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="estimate: corrected"):
        corrected_rule(**fields)


def test_a_corrected_failure_mode_rule_judges_the_modes_calibration() -> None:
    rule = corrected_rule(id="type", signal="failure_mode_share", failure_mode="off_department")
    tagged = window(450, 550)
    tagged.counters.update({"fm:off_department": 450.0, "fm_w:off_department": 450.0})
    short = window(225, 275)
    short.counters.update({"fm:off_department": 225.0, "fm_w:off_department": 225.0})
    over_tagging = record().model_copy(
        update={"failure_modes": {"off_department": calibration(0.85, 0.7, 1e-4, 1e-4)}}
    )
    corrector = WindowCorrector(over_tagging)
    assert corrector.calibration("Kitchen", "failure_mode_share:off_department") is not None
    assert corrector.calibration("Kitchen", "failure_mode_share:wrong_product_type") is None
    stats = {7200: tagged, 3600: short}
    assert evaluate_rule(rule.model_copy(update={"estimate": "raw"}), stats).breaching
    judged = evaluate_rule(rule, stats, Correction(corrector, "Kitchen"))
    assert not judged.breaching and judged.figures[0].estimate == "corrected"
    assert judged.figures[0].point == pytest.approx((0.45 - 0.3) / 0.55)
    # without a calibration of that mode the rule judges raw
    untagged = evaluate_rule(rule, stats, Correction(WindowCorrector(record()), "Kitchen"))
    assert untagged.breaching and untagged.figures[0].estimate == "raw"


def test_delta_interval_reduces_to_the_window_interval_for_an_exact_perfect_teacher() -> None:
    window_share = raw(0.3, 500)
    share = rogan_gladen(window_share, calibration(1.0, 1.0), 0.95)
    assert share.lower == pytest.approx(0.3 - (window_share.upper - window_share.lower) / 2)
    assert math.isclose(share.youden, 1.0)
