"""streams.windows: counter updates, bucket aggregation, Wilson intervals and Kish ESS."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from scipy.stats import binomtest

from schemas.judgments import Judgment, judgment_id_for
from schemas.policy import AlertRule
from streams.windows import (
    Interval,
    WindowAggregate,
    bucket_start,
    counter_updates,
    kish_ess,
    parse_window,
    signal_rate,
    weighted_rate,
    wilson_interval,
    window_name,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)  # a multiple of 300 s since the epoch
T0_EPOCH = int(T0.timestamp())


def judgment(key: str, seconds: float = 0.0, **fields: Any) -> Judgment:
    ok = fields.get("status", "ok") == "ok"
    base: dict[str, Any] = {
        "judgment_id": judgment_id_for(key, "item", "p1", "t1"),
        "event_id": key,
        "item_id": "item",
        "category": "Kitchen & Dining",
        "event_time": T0 + timedelta(seconds=seconds),
        "status": "ok",
        "grade": 4 if ok else None,
        "display": "show" if ok else None,
        "error": None if ok else "timeout",
        "policy_version": "p1",
        "teacher_version": "t1",
        "judged_at": T0,
    }
    return Judgment.model_validate({**base, **fields}, strict=False)


def rule(signal: str = "filtered_share", **fields: Any) -> AlertRule:
    data: dict[str, Any] = {
        "id": "r",
        "signal": signal,
        "threshold": 0.3,
        "windows": [{"long": "1h", "short": "5m"}],
        "min_samples": 10,
        "severity": "page",
    }
    return AlertRule.model_validate({**data, **fields})


@pytest.mark.parametrize(
    ("ts", "size", "expected"),
    [(0, 300, 0), (299.999, 300, 0), (300, 300, 300), (601, 300, 600), (-1, 300, -300), (3599, 3600, 0)],
)
def test_bucket_start(ts: float, size: int, expected: int) -> None:
    assert bucket_start(ts, size) == expected


@pytest.mark.parametrize(("text", "seconds"), [("5m", 300), ("30m", 1800), ("1h", 3600), ("24h", 86400)])
def test_window_names_round_trip(text: str, seconds: int) -> None:
    assert parse_window(text) == seconds
    assert parse_window(window_name(seconds)) == seconds


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"grade": 4, "display": "show"},
            {"n": 1, "w": 1, "w2": 1, "display:show": 1, "display_w:show": 1, "grade:4": 1, "grade_w:4": 1},
        ),
        (
            {
                "grade": 0,
                "display": "filter",
                "failure_modes": ("wrong_product_type", "off_department", "wrong_product_type"),
                "inclusion_probability": 0.25,
            },
            {
                "n": 1,
                "w": 4,
                "w2": 16,
                "display:filter": 1,
                "display_w:filter": 4,
                "grade:0": 1,
                "grade_w:0": 4,
                "fm:wrong_product_type": 1,
                "fm_w:wrong_product_type": 4,
                "fm:off_department": 1,
                "fm_w:off_department": 4,
            },
        ),
        ({"status": "error", "inclusion_probability": 0.5}, {"err": 1, "err_w": 2, "err_w2": 4}),
    ],
)
def test_counter_updates(fields: dict[str, Any], expected: dict[str, float]) -> None:
    assert counter_updates(judgment("a", **fields)) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("successes", "n", "confidence", "lower", "upper"),
    [
        (0, 10, 0.95, 0.0, 0.2775),
        (5, 10, 0.95, 0.2366, 0.7634),
        (10, 10, 0.95, 0.7225, 1.0),
        (1, 1, 0.95, 0.2065, 1.0),
        (50, 100, 0.99, 0.3753, 0.6247),
        (0, 0, 0.95, 0.0, 1.0),
    ],
)
def test_wilson_known_values(
    successes: float, n: float, confidence: float, lower: float, upper: float
) -> None:
    interval = wilson_interval(successes, n, confidence)
    assert isinstance(interval, Interval)
    assert interval.lower == pytest.approx(lower, abs=1e-4)
    assert interval.upper == pytest.approx(upper, abs=1e-4)


@pytest.mark.parametrize("confidence", [0.8, 0.95, 0.99])
@pytest.mark.parametrize(("successes", "n"), [(0, 5), (3, 7), (17, 40), (99, 100), (250, 1000)])
def test_wilson_matches_scipy(successes: int, n: int, confidence: float) -> None:
    reference = binomtest(successes, n).proportion_ci(confidence, method="wilson")
    assert tuple(wilson_interval(successes, n, confidence)) == pytest.approx((reference.low, reference.high))


def test_wilson_narrows_with_n() -> None:
    widths = [wilson_interval(0.2 * n, n).upper - wilson_interval(0.2 * n, n).lower for n in (10, 100, 1000)]
    assert widths == sorted(widths, reverse=True)


@pytest.mark.parametrize(
    ("weights", "ess"),
    [([1.0] * 10, 10.0), ([2.0] * 10, 10.0), ([1.0, 1.0, 1.0, 9.0], 144 / 84), ([], 0.0)],
)
def test_kish_ess(weights: list[float], ess: float) -> None:
    assert kish_ess(sum(weights), sum(w * w for w in weights)) == pytest.approx(ess)


def test_weighted_rate_uses_kish_ess() -> None:
    # 4 items, one bad with weight 9: weighted share 9/12, ESS 144/84 ≈ 1.71 → a wide interval.
    estimate = weighted_rate(9.0, 12.0, 84.0, samples=4, bad=1, confidence=0.95)
    expected = wilson_interval(0.75 * 144 / 84, 144 / 84)
    assert estimate.rate == pytest.approx(0.75)
    assert (estimate.lower, estimate.upper) == pytest.approx(tuple(expected))
    assert (estimate.samples, estimate.bad) == (4, 1)
    equal = weighted_rate(3.0, 4.0, 4.0, samples=4, bad=3, confidence=0.95)
    assert (equal.lower, equal.upper) == pytest.approx(tuple(wilson_interval(3, 4)))


@pytest.mark.parametrize(
    ("end_offset", "window", "buckets"),
    [
        (0, 300, [-300]),
        (0, 900, [-900, -600, -300]),
        (150, 300, [0]),  # unaligned end: the open bucket, nothing older than end - window
        (301, 600, [0, 300]),
    ],
)
def test_covering_buckets(end_offset: int, window: int, buckets: list[int]) -> None:
    aggregate = WindowAggregate(window, T0_EPOCH + end_offset, 300)
    assert aggregate.covering_buckets() == [T0_EPOCH + b for b in buckets]


def test_window_must_be_whole_buckets() -> None:
    with pytest.raises(ValueError, match="multiple"):
        WindowAggregate(450, T0_EPOCH, 300)


def test_judgment_exactly_at_boundary_opens_the_next_bucket() -> None:
    at_boundary = judgment("b", seconds=300)
    assert bucket_start(at_boundary.event_time.timestamp()) == T0_EPOCH + 300
    before = WindowAggregate(300, T0_EPOCH + 300)  # [T0, T0+300)
    after = WindowAggregate(300, T0_EPOCH + 600)  # [T0+300, T0+600)
    assert not before.add(at_boundary)
    assert after.add(at_boundary)
    assert (before.result().samples, after.result().samples) == (0, 1)


def test_aggregation_across_buckets_matches_direct_counting() -> None:
    judgments = [
        judgment("s1", 10, grade=4, display="show"),
        judgment("s2", 299, grade=2, display="related", failure_modes=("attribute_mismatch",)),
        judgment("s3", 300, grade=0, display="filter", failure_modes=("wrong_product_type",)),
        judgment("s4", 899, grade=1, display="filter", inclusion_probability=0.5),
        judgment("s5", 900, grade=4, display="show"),  # at end: excluded
        judgment("e1", 400, status="error"),
    ]
    aggregate = WindowAggregate(900, T0_EPOCH + 900)
    aggregate.extend(judgments)
    stats = aggregate.result()
    assert (stats.samples, stats.errors, stats.weighted_samples) == (4, 1, 5.0)
    assert stats.rates["filtered_share"].rate == pytest.approx(3 / 5)  # weights 1 + 2 of 5
    assert stats.rates["not_shown_share"].rate == pytest.approx(4 / 5)
    assert stats.rates["error_share"].rate == pytest.approx(1 / 6)
    assert stats.rates["failure_mode_share:wrong_product_type"].rate == pytest.approx(1 / 5)
    assert stats.failure_modes() == {"attribute_mismatch": 1, "wrong_product_type": 1}


@pytest.mark.parametrize(
    ("rule_fields", "rate", "bad"),
    [
        ({"signal": "filtered_share"}, 2 / 10, 2),
        ({"signal": "not_shown_share"}, 5 / 10, 5),
        ({"signal": "failure_mode_share", "failure_mode": "wrong_product_type"}, 1 / 10, 1),
        ({"signal": "error_share"}, 2 / 12, 2),
    ],
)
def test_signal_rate(rule_fields: dict[str, Any], rate: float, bad: int) -> None:
    judgments = (
        [judgment(f"show{k}", k) for k in range(5)]
        + [judgment(f"rel{k}", k, grade=2, display="related") for k in range(3)]
        + [judgment("f0", 1, grade=0, display="filter", failure_modes=("wrong_product_type",))]
        + [judgment("f1", 1, grade=1, display="filter")]
        + [judgment(f"err{k}", 2, status="error") for k in range(2)]
    )
    aggregate = WindowAggregate(300, T0_EPOCH + 300)
    aggregate.extend(judgments)
    estimate = signal_rate(aggregate.result(), rule(**rule_fields))
    assert estimate.rate == pytest.approx(rate)
    assert estimate.bad == bad
    assert estimate.lower <= estimate.rate <= estimate.upper


def test_empty_window_rates() -> None:
    stats = WindowAggregate(300, T0_EPOCH).result()
    estimate = signal_rate(stats, rule())
    assert (estimate.rate, estimate.lower, estimate.upper, estimate.samples) == (0.0, 0.0, 1.0, 0)


def test_rule_confidence_changes_bounds() -> None:
    aggregate = WindowAggregate(300, T0_EPOCH + 300)
    aggregate.extend(judgment(f"x{k}", k, grade=0, display="filter") for k in range(3))
    aggregate.extend(judgment(f"y{k}", k) for k in range(7))
    stats = aggregate.result()
    narrow, wide = signal_rate(stats, rule(confidence=0.8)), signal_rate(stats, rule(confidence=0.99))
    assert wide.lower < narrow.lower and math.isclose(wide.rate, narrow.rate)
