"""The CUSUM rule kind: its math against simulation, its policy block, and the rule evaluated by
the alert engine (fires on a shift, resolves after recovery, a boundary counted once)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from evalloop.backtest import BucketWindowStore
from schemas.judgments import Judgment, judgment_id_for
from schemas.policy import AlertRule, load_policy
from streams import pipeline
from streams.alerting import AlertState, cusum_statistic
from streams.cusum import (
    CusumDesign,
    bucket_arl,
    bucket_design,
    increments,
    judgment_arl,
    judgment_design,
    update,
)
from streams.engine import AlertEngine, EngineWindows

UP, DOWN = increments(0.05, 0.10)


def _simulated_judgment_arl(h: float, p: float, runs: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    statistic, steps, done = np.zeros(runs), np.zeros(runs), np.zeros(runs, dtype=bool)
    while not done.all():
        bad = rng.random(runs) < p
        statistic = np.where(done, statistic, np.maximum(0.0, statistic + np.where(bad, UP, DOWN)))
        steps += ~done
        done |= statistic >= h
    return float(steps.mean())


def _simulated_bucket_arl(h: float, p: float, per_bucket: float, runs: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    statistic, buckets, done = np.zeros(runs), np.zeros(runs), np.zeros(runs, dtype=bool)
    while not done.all():
        n = rng.poisson(per_bucket, runs)
        bad = rng.binomial(n, p)
        statistic = np.where(done, statistic, np.maximum(0.0, statistic + bad * UP + (n - bad) * DOWN))
        buckets += ~done
        done |= statistic >= h
    return float(buckets.mean())


@pytest.mark.parametrize(("h", "p"), [(2.0, 0.05), (3.0, 0.05), (3.0, 0.10)])
def test_judgment_arl_matches_simulation(h: float, p: float) -> None:
    chain = judgment_arl(CusumDesign(UP, DOWN, h), p)
    assert chain == pytest.approx(_simulated_judgment_arl(h, p, 3000, seed=int(h * 10)), rel=0.06)


@pytest.mark.parametrize(("h", "p", "per_bucket"), [(3.0, 0.05, 50.0), (4.0, 0.05, 5.0), (4.0, 0.10, 50.0)])
def test_bucket_arl_matches_simulation(h: float, p: float, per_bucket: float) -> None:
    chain = bucket_arl(CusumDesign(UP, DOWN, h), p, per_bucket)
    assert chain == pytest.approx(_simulated_bucket_arl(h, p, per_bucket, 3000, seed=7), rel=0.06)


def test_designs_are_the_smallest_level_reaching_the_target() -> None:
    design = bucket_design(0.05, 0.10, 50.0, 8640.0)
    assert bucket_arl(design, 0.05, 50.0) >= 8640.0
    assert bucket_arl(design._replace(threshold=design.threshold * 0.98), 0.05, 50.0) < 8640.0
    exact = judgment_design(0.05, 0.10, 8640.0 * 50)
    assert judgment_arl(exact, 0.05) >= 8640.0 * 50
    # Detection at p1 (zero state): the bucketed rule stays within 20 % of the exact CUSUM.
    assert bucket_arl(design, 0.10, 50.0) * 50 <= 1.2 * judgment_arl(exact, 0.10)


@pytest.mark.parametrize(
    ("statistic", "bad", "total", "expected"),
    [(0.0, 0, 10, 0.0), (0.0, 3, 3, 3 * UP), (1.0, 0, 5, 1.0 + 5 * DOWN), (7.0, 10, 10, 7.0 + UP)],
)
def test_update_is_floored_at_zero_and_capped(
    statistic: float, bad: int, total: int, expected: float
) -> None:
    design = CusumDesign(UP, DOWN, 7.0)
    assert update(statistic, bad, total, design) == pytest.approx(min(expected, design.cap))


@pytest.mark.parametrize(("p0", "p1"), [(0.0, 0.1), (0.1, 0.1), (0.2, 0.1), (0.1, 1.0)])
def test_increments_need_0_below_p0_below_p1_below_1(p0: float, p1: float) -> None:
    with pytest.raises(ValueError):
        increments(p0, p1)


CUSUM: dict[str, Any] = {
    "id": "cusum-filtered",
    "kind": "cusum",
    "signal": "filtered_share",
    "threshold": 0.3,
    "cusum": {"in_control": 0.1, "false_alarm_every": "30d", "judgments_per_hour": 120},
    "severity": "page",
    "resolve_for": "15m",
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"cusum": None}, "needs a cusum block"),
        ({"windows": [{"long": "1h", "short": "5m"}]}, "takes no windows"),
        ({"cusum": {**CUSUM["cusum"], "in_control": 0.3}}, "must be below the threshold"),
        ({"kind": "burn_rate"}, "needs windows"),
    ],
)
def test_policy_rejects_an_incomplete_cusum_rule(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AlertRule.model_validate({**CUSUM, **change})


def test_alert_state_round_trips_the_statistic() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    state = AlertState(state="firing", started_at=at, statistic=3.25, statistic_through=at, version=4)
    assert AlertState.from_dict(state.to_dict()) == state


T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _judgments(bucket: int, total: int, bad: int) -> list[Judgment]:
    start = T0 + timedelta(minutes=5 * bucket)
    return [
        Judgment(
            judgment_id=judgment_id_for(f"e{bucket}-{k}", "i", "p", "t"),
            event_id=f"e{bucket}-{k}",
            item_id="i",
            category="Other",
            event_time=start + timedelta(seconds=k),
            status="ok",
            grade=0 if k < bad else 4,
            display="filter" if k < bad else "show",
            rationale="r",
            policy_version="p",
            teacher_version="t",
            judged_at=start,
        )
        for k in range(total)
    ]


@pytest.fixture
def policy(tmp_path: Any) -> Any:
    from tests.support.policies import policy_with_rules

    return load_policy(policy_with_rules(tmp_path, [CUSUM]))


def test_the_engine_fires_on_a_shift_and_resolves_after_recovery(policy: Any) -> None:
    store = BucketWindowStore(300)
    engine = AlertEngine(policy, EngineWindows.for_policy(store, policy), pipeline.MemoryAlertStateStore())
    shares = [0.1] * 24 + [0.5] * 12 + [0.0] * 24  # 10 judgments a bucket
    timeline: list[tuple[str, int]] = []
    for bucket, share in enumerate(shares):
        engine.windows.apply(_judgments(bucket, 10, round(10 * share)))
        boundary = (T0 + timedelta(minutes=5 * (bucket + 1))).timestamp()
        timeline += [(alert.state, bucket) for alert in engine.evaluate("Other", [boundary])]
    assert [state for state, _ in timeline] == ["firing", "resolved"]
    fired, resolved = timeline[0][1], timeline[1][1]
    assert 24 <= fired < 30, "fires within a few buckets of the shift"
    assert resolved > 36 and resolved - 36 < 12, "resolves once the statistic is back to 0 for 15 minutes"


def test_a_boundary_is_added_to_the_statistic_once(policy: Any) -> None:
    rule = policy.alerts[0]
    store = BucketWindowStore(300)
    store.apply(_judgments(0, 10, 8))
    at = T0 + timedelta(minutes=5)
    bucket = store.read("Other", 300, at.timestamp())
    first = cusum_statistic(rule, AlertState(), bucket, at, 300)
    assert first > 0
    again = cusum_statistic(rule, AlertState(statistic=first, statistic_through=at), bucket, at, 300)
    assert again == first
