"""streams.evidence and the alert fields on-call acts on: examples and model versions drawn from
the firing window (not the latest judgments), de-duplicated; start, duration, runbook, link."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from schemas.judgments import Judgment, judgment_id_for
from schemas.policy import AlertRule
from streams.alerting import AlertState, build_alert, evaluate_rule, transition
from streams.evidence import (
    AlertEvidence,
    EventWindow,
    dashboard_link,
    model_version_mix,
    with_dashboard_link,
)
from streams.pipeline import RecentExamples
from tests.unit.test_alerting import rule, windows

AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CATEGORY = "Kitchen & Dining"


def judged(
    key: str, minutes_before: float, *, bad: bool, version: str = "m1", query: str = "oak table"
) -> Judgment:
    return Judgment.model_validate(
        {
            "judgment_id": judgment_id_for(key, "item-" + query.replace(" ", "-"), "p1", "t1"),
            "event_id": key,
            "item_id": "item-" + query.replace(" ", "-"),
            "category": CATEGORY,
            "event_time": AT - timedelta(minutes=minutes_before),
            "query": query,
            "item_title": "steel faucet" if bad else "oak table",
            "status": "ok",
            "grade": 0 if bad else 4,
            "display": "filter" if bad else "show",
            "rationale": f"rationale {key}",
            "policy_version": "p1",
            "teacher_version": "t1",
            "judged_at": AT,
            "model_version": version,
        }
    )


def recent(*judgments: Judgment) -> RecentExamples:
    kept = RecentExamples()
    kept.add(judgments)
    return kept


def test_examples_come_from_the_window_not_the_latest_judgments() -> None:
    window = EventWindow.ending(AT - timedelta(hours=2), 3600)  # 09:00-10:00
    kept = recent(
        judged("early", 200, bad=True, query="q-early"),  # 08:40: before the window
        judged("inside", 150, bad=True, query="q-inside"),  # 09:30
        judged("late", 10, bad=True, query="q-late"),  # 11:50: after (the newest)
    )
    chosen = kept.examples(CATEGORY, rule(), window)
    assert [e.event_id for e in chosen] == ["inside"]


def test_a_repeated_pair_is_shown_once() -> None:
    same = [judged(f"e{k}", 30 + k, bad=True, query="oak table") for k in range(3)]
    other = judged("e9", 40, bad=True, query="walnut desk")
    chosen = recent(*same, other).examples(CATEGORY, rule(), EventWindow.ending(AT, 3600))
    assert sorted(e.query for e in chosen) == ["oak table", "walnut desk"]
    assert chosen[0].event_id == "e0"  # newest first


@pytest.mark.parametrize(
    ("judgments", "expected"),
    [
        ([], []),
        ([("m1", False)] * 3, [("m1", 3, 0)]),
        ([("m1", False)] * 3 + [("m2", True)] * 2 + [("m2", False)], [("m2", 3, 2), ("m1", 3, 0)]),
        ([("a", True), ("b", True)], [("a", 1, 1), ("b", 1, 1)]),  # ties: name order
    ],
)
def test_model_version_mix_puts_the_worst_version_first(
    judgments: list[tuple[str, bool]], expected: list[tuple[str, int, int]]
) -> None:
    mix = model_version_mix(
        [judged(f"k{i}", 5, bad=bad, version=v, query=f"q{i}") for i, (v, bad) in enumerate(judgments)],
        rule(),
    )
    assert [(m.model_version, m.samples, m.bad) for m in mix] == expected
    assert all(m.share == pytest.approx(m.bad / m.samples) for m in mix)


def _alert(state: AlertState, **rule_fields: Any) -> Any:
    r = rule(**rule_fields)
    evaluation = evaluate_rule(r, windows((40, 10), (30, 10)))
    evidence = AlertEvidence(model_versions=model_version_mix([judged("x", 5, bad=True)], r))
    return build_alert(r, CATEGORY, state, evaluation, evidence, "p1", AT)


def test_resolved_alert_says_how_long_it_lasted_and_carries_the_runbook() -> None:
    r = rule()
    firing = transition(AlertState(), evaluate_rule(r, windows((40, 10), (30, 10))), AT, r).new_state
    resolved = replace(firing, state="resolved", resolved_at=AT + timedelta(minutes=95))
    alert = _alert(resolved, runbook_url="https://runbooks.example/filtered-share")
    assert alert.started_at == AT and alert.duration_seconds == pytest.approx(95 * 60)
    assert alert.runbook_url == "https://runbooks.example/filtered-share"
    assert alert.model_versions[0].model_version == "m1"
    assert _alert(firing).duration_seconds is None and _alert(firing).runbook_url is None


def test_runbook_must_be_a_url() -> None:
    with pytest.raises(ValueError, match="runbook_url"):
        AlertRule.model_validate({**rule().model_dump(), "runbook_url": "see wiki"})


def test_dashboard_link_names_category_and_time() -> None:
    link = dashboard_link("http://127.0.0.1:8050/", "Décor & Art", AT, AT + timedelta(hours=1))
    parts = urlsplit(link)
    assert (parts.scheme, parts.netloc, parts.path) == ("http", "127.0.0.1:8050", "/")
    query = parse_qs(parts.query)
    assert query == {
        "category": ["Décor & Art"],
        "from": [AT.isoformat()],
        "to": [(AT + timedelta(hours=1)).isoformat()],
    }
    r = rule()
    firing = transition(AlertState(), evaluate_rule(r, windows((40, 10), (30, 10))), AT, r).new_state
    alert = _alert(firing)
    assert with_dashboard_link(alert, None) is alert
    linked = with_dashboard_link(alert, "https://dash.example")
    assert linked.dashboard_url is not None and linked.dashboard_url.startswith(
        "https://dash.example/?category="
    )


def test_demo_prints_the_model_versions_link_and_duration() -> None:
    from evalloop.demo import describe_alert

    r = rule()
    firing = transition(AlertState(), evaluate_rule(r, windows((40, 10), (30, 10))), AT, r).new_state
    alert = with_dashboard_link(_alert(firing), "http://127.0.0.1:8050")
    text = describe_alert(alert)
    assert "production model versions in the window: m1 1/1 bad" in text
    assert "dashboard: http://127.0.0.1:8050/?category=Kitchen" in text
    resolved = replace(firing, state="resolved", resolved_at=AT + timedelta(minutes=90))
    assert "lasted 1.5 h (started 12:00)" in describe_alert(_alert(resolved))
