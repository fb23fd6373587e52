"""streams.alerting: burn-window rule evaluation, the alert state machine, and Alert building."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas.alerts import Alert
from schemas.judgments import Judgment, judgment_id_for
from schemas.policy import AlertRule
from streams.alerting import (
    AlertState,
    RuleEvaluation,
    alert_id_for,
    build_alert,
    evaluate_rule,
    example_of,
    is_bad,
    required_windows,
    top_failure_modes,
    transition,
)
from streams.evidence import AlertEvidence
from streams.windows import WindowAggregate, WindowStats, counter_updates, merge_counts

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
END = int(T0.timestamp())


def rule(**fields: Any) -> AlertRule:
    data: dict[str, Any] = {
        "id": "filtered-share-burn",
        "description": "too many filtered results shown",
        "signal": "filtered_share",
        "threshold": 0.35,
        "windows": [{"long": "2h", "short": "30m", "factor": 1.0}],
        "min_samples": 40,
        "confidence": 0.95,
        "severity": "page",
        "resolve_for": "30m",
    }
    return AlertRule.model_validate({**data, **fields})


def judgment(key: str, bad: bool, mode: str | None = None) -> Judgment:
    return Judgment.model_validate(
        {
            "judgment_id": judgment_id_for(key, "item", "p1", "t1"),
            "event_id": key,
            "item_id": "item",
            "category": "Kitchen & Dining",
            "event_time": T0 - timedelta(seconds=60),
            "query": "oak table",
            "item_title": "steel faucet" if bad else "oak table",
            "status": "ok",
            "grade": 0 if bad else 4,
            "display": "filter" if bad else "show",
            "failure_modes": (mode,) if mode else (),
            "rationale": "different product" if bad else "exact",
            "policy_version": "p1",
            "teacher_version": "t1",
            "judged_at": T0,
        },
        strict=False,
    )


def stats(window_s: int, bad: int, good: int, mode: str | None = None) -> WindowStats:
    """Window stats holding ``bad`` filtered and ``good`` shown judgments."""
    aggregate = WindowAggregate(window_s, END)
    counters: dict[str, float] = {}
    for k in range(bad + good):
        merge_counts(counters, counter_updates(judgment(f"j{k}", k < bad, mode if k < bad else None)))
    aggregate.update(END - 300, counters)
    return aggregate.result()


def windows(long: tuple[int, int], short: tuple[int, int]) -> dict[int, WindowStats]:
    return {7200: stats(7200, *long), 1800: stats(1800, *short)}


@pytest.mark.parametrize(
    ("long", "short", "breaching", "recovered"),
    [
        ((3, 0), (3, 0), False, False),  # 3 bad of 3: min_samples 40 → no page, and hold
        ((30, 9), (30, 9), False, False),  # 77% bad but 39 samples: still no page
        ((40, 10), (30, 10), True, False),  # both windows clearly over
        ((40, 10), (5, 40), False, True),  # long over, short back under: recovered
        ((10, 40), (30, 10), False, False),  # short over but long under: no page, not recovered
        ((18, 32), (18, 32), False, False),  # 36% > 35% but the lower bound is not: no page
        ((10, 90), (2, 48), False, True),
        ((10, 90), (2, 20), False, False),  # short window too small to vouch for recovery
    ],
)
def test_evaluate_rule(
    long: tuple[int, int], short: tuple[int, int], breaching: bool, recovered: bool
) -> None:
    evaluation = evaluate_rule(rule(), windows(long, short))
    assert (evaluation.breaching, evaluation.recovered) == (breaching, recovered)
    assert [(f.window, f.role) for f in evaluation.figures] == [("2h", "long"), ("30m", "short")]


def test_factor_scales_threshold() -> None:
    stats_by_window = windows((20, 30), (20, 30))  # 40% bad, lower bound ≈ 0.28
    assert not evaluate_rule(rule(), stats_by_window).breaching
    lowered = rule(windows=[{"long": "2h", "short": "30m", "factor": 0.7}])  # 0.35 × 0.7 = 0.245
    evaluation = evaluate_rule(lowered, stats_by_window)
    assert evaluation.breaching
    assert evaluation.figures[0].threshold == pytest.approx(0.245)


def test_any_pair_breaching_breaches() -> None:
    two_pairs = rule(windows=[{"long": "2h", "short": "30m"}, {"long": "6h", "short": "1h", "factor": 2.0}])
    assert required_windows(two_pairs) == [1800, 3600, 7200, 21600]
    by_window = {**windows((40, 10), (40, 10)), 21600: stats(21600, 40, 60), 3600: stats(3600, 40, 60)}
    evaluation = evaluate_rule(two_pairs, by_window)
    assert evaluation.breaching and len(evaluation.figures) == 4
    assert evaluation.figures[2].threshold == pytest.approx(0.7)


def test_missing_window_is_an_error() -> None:
    with pytest.raises(KeyError, match="1800s"):
        evaluate_rule(rule(), {7200: stats(7200, 1, 1)})


def test_failure_mode_rule() -> None:
    mode_rule = rule(signal="failure_mode_share", failure_mode="wrong_product_type", threshold=0.3)
    hit = {7200: stats(7200, 40, 10, "wrong_product_type"), 1800: stats(1800, 40, 10, "wrong_product_type")}
    other = {7200: stats(7200, 40, 10, "off_department"), 1800: stats(1800, 40, 10, "off_department")}
    assert evaluate_rule(mode_rule, hit).breaching
    assert not evaluate_rule(mode_rule, other).breaching


BREACH = RuleEvaluation(breaching=True, recovered=False, figures=[])
RECOVERED = RuleEvaluation(breaching=False, recovered=True, figures=[])
HOLD = RuleEvaluation(breaching=False, recovered=False, figures=[])
STEPS = {"B": BREACH, "R": RECOVERED, "H": HOLD}


def run(steps: str, r: AlertRule, step_s: int = 300) -> tuple[list[str], list[str | None], AlertState]:
    """Feed one evaluation per step (every ``step_s`` of event time); states and emits per step."""
    state = AlertState()
    states: list[str] = []
    emits: list[str | None] = []
    for k, letter in enumerate(steps):
        result = transition(state, STEPS[letter], T0 + timedelta(seconds=k * step_s), r)
        state = result.new_state
        states.append(state.state)
        emits.append(result.emit)
    return states, emits, state


@pytest.mark.parametrize(
    ("steps", "pending_for", "resolve_for", "states", "emits"),
    [
        ("HHH", None, "10m", "ok ok ok", "- - -"),
        ("B", None, "10m", "firing", "firing"),  # no pending_for: fire on the first breach
        ("BBB", "10m", "10m", "pending pending firing", "- - firing"),  # held 10m → fire once
        ("BBBBB", "10m", "10m", "pending pending firing firing firing", "- - firing - -"),
        ("BHB", "10m", "10m", "pending ok pending", "- - -"),  # breach stopped: back to ok
        ("BRRR", None, "10m", "firing firing firing resolved", "firing - - resolved"),
        ("BRRRR", None, "10m", "firing firing firing resolved resolved", "firing - - resolved -"),
        # flapping inside resolve_for resets the resolve timer and never re-emits
        ("BRBRBRRR", None, "10m", "firing " * 7 + "resolved", "firing - - - - - - resolved"),
        ("BRHRR", None, "10m", "firing firing firing resolved resolved", "firing - - resolved -"),  # hold
        ("BRRRB", None, "10m", "firing firing firing resolved firing", "firing - - resolved firing"),
    ],
)
def test_state_machine(
    steps: str, pending_for: str | None, resolve_for: str, states: str, emits: str
) -> None:
    got_states, got_emits, _ = run(steps, rule(pending_for=pending_for, resolve_for=resolve_for))
    assert got_states == states.split()
    assert [e or "-" for e in got_emits] == emits.split()


def test_sustained_breach_fires_once_and_resolves_once() -> None:
    _, emits, final = run("B" * 30 + "R" * 30, rule(pending_for="15m", resolve_for="30m"))
    assert emits.count("firing") == 1 and emits.count("resolved") == 1
    assert final.state == "resolved"
    assert final.fired_at == T0 + timedelta(minutes=15)
    assert final.resolved_at == T0 + timedelta(minutes=5 * 30 + 30)


def test_new_incident_gets_a_new_id() -> None:
    r = rule(resolve_for="5m")
    _, _, first = run("BRR", r)
    second = transition(first, BREACH, T0 + timedelta(hours=1), r).new_state
    assert first.incident_id and second.incident_id and first.incident_id != second.incident_id
    assert second.started_at == T0 + timedelta(hours=1)


def test_out_of_order_time_counts_as_no_time() -> None:
    r = rule(pending_for="10m")
    pending = transition(AlertState(), BREACH, T0, r).new_state
    assert transition(pending, BREACH, T0 - timedelta(hours=1), r).new_state.state == "pending"


def test_state_dict_round_trip() -> None:
    _, _, state = run("BBRR", rule(resolve_for="5m"))
    state = replace(state, version=7)
    data = state.to_dict()
    assert all(isinstance(v, str) for v in data.values())
    assert AlertState.from_dict(data) == state
    assert AlertState.from_dict({}) == AlertState()


def test_build_alert() -> None:
    r = rule()
    by_window = windows((40, 10), (30, 10))
    evaluation = evaluate_rule(r, by_window)
    firing = transition(AlertState(), evaluation, T0, r).new_state
    bad = [judgment(f"b{k}", True, "wrong_product_type") for k in range(3)]
    examples = [example_of(j) for j in bad if is_bad(j, r)]
    modes = top_failure_modes(stats(7200, 40, 10, "wrong_product_type"))
    evidence = AlertEvidence(modes, examples)
    alert = build_alert(r, "Kitchen & Dining", firing, evaluation, evidence, "p1", T0)
    assert isinstance(alert, Alert)
    assert alert.dedup_key == "filtered-share-burn/Kitchen & Dining"
    assert alert.alert_id == alert_id_for(r.id, "Kitchen & Dining", T0)
    assert alert.state == "firing" and alert.fired_at == T0 and alert.resolved_at is None
    assert [w.window for w in alert.windows] == ["2h", "30m"]
    assert alert.top_failure_modes[0].failure_mode == "wrong_product_type"
    assert alert.top_failure_modes[0].share == pytest.approx(0.8)
    assert alert.examples[0].rationale == "different product"
    with pytest.raises(ValueError):
        build_alert(r, "x", AlertState(), evaluation, AlertEvidence(), "p1", T0)


def test_alert_id_deterministic() -> None:
    assert alert_id_for("r", "c", T0) == alert_id_for("r", "c", T0)
    assert alert_id_for("r", "c", T0) != alert_id_for("r", "d", T0)
