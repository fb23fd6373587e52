"""``evalloop policy impact``: a stricter display rule for grade 2 (related → filter) backtested on a
slice of the bundled stream with the noop teacher: grades do not move, exactly the grade-2 pairs
flip to filter, the per-category counts add up, alerts compared; the CLI prints JSON or one error
line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from evalloop.backtest import backtest
from evalloop.cli import main
from evalloop.impact import compare, render, report_json
from judges.registry import build_teacher
from schemas.policy import Policy, load_policy
from tests.support.policies import burn_rate_policy

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "data" / "wands" / "events.jsonl"


def stricter(directory: Path, source: Path) -> Path:
    """``source`` with grade 2 filtered instead of shown as related, as a new version."""
    doc = yaml.safe_load(source.read_text(encoding="utf-8"))
    doc["version"] = doc["version"] + "-strict2"
    for level in doc["rubric"]:
        if level["grade"] == 2:
            level["display"] = "filter"
    path = directory / "strict.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("impact")
    old = burn_rate_policy(directory, "old.yaml")
    events = directory / "events.jsonl"
    events.write_bytes(b"".join(EVENTS.open("rb").readlines()[:200]))
    return {"old": old, "new": stricter(directory, old), "events": events}


def _backtest(policy: Policy, events: Path) -> Any:
    return backtest(policy, build_teacher(policy, "noop"), events, None, 300, None, ())


def test_stricter_grade_2_flips_exactly_the_grade_2_pairs(paths: dict[str, Path]) -> None:
    old_policy, new_policy = load_policy(paths["old"]), load_policy(paths["new"])
    old, new = _backtest(old_policy, paths["events"]), _backtest(new_policy, paths["events"])
    report = compare(old, new, old_policy.version, new_policy.version)
    grade_2 = {(j.event_id, j.item_id) for j in old.judgments if j.grade == 2}
    assert grade_2 and {(f.event_id, f.item_id) for f in report.flips} == grade_2
    assert report.flip_counts() == {"related → filter": len(grade_2)}
    assert report.pairs_compared == len(old.judgments) and report.only_old == report.only_new == 0
    for category, sides in report.grades.items():
        assert sides["old"] == sides["new"], category  # the teacher's grades do not move
    for category, sides in report.displays.items():
        old_counts, new_counts = sides["old"], sides["new"]
        assert new_counts["related"] == 0
        assert new_counts["filter"] == old_counts["filter"] + old_counts["related"], category
        assert new_counts["show"] == old_counts["show"]
    # More filtered items can only keep or add filtered-share alerts.
    fired_old = {(e.category, e.at) for e in report.old_alerts if e.state == "firing"}
    fired_new = {(e.category, e.at) for e in report.new_alerts if e.state == "firing"}
    assert len(fired_new) >= len(fired_old)
    text = render(report, flips_limit=3)
    assert "related → filter" in text and f"… {len(grade_2) - 3} more" in text
    assert report_json(report)["flip_counts"] == {"related → filter": len(grade_2)}


def test_the_same_policy_moves_nothing(paths: dict[str, Path]) -> None:
    policy = load_policy(paths["old"])
    report = compare(_backtest(policy, paths["events"]), _backtest(policy, paths["events"]), "a", "a")
    assert report.flips == [] and report.alerts_added() == [] and report.alerts_removed() == []


def test_cli_prints_json(paths: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["policy", "impact", "--old", str(paths["old"]), "--new", str(paths["new"])]
    assert main([*argv, "--events", str(paths["events"]), "--teacher", "noop", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["new_version"].endswith("-strict2") and document["flips"]
    assert set(document["flips"][0]) >= {"event_id", "item_id", "query", "old_display", "new_display"}


def test_cli_bad_input_is_one_line(paths: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "policy",
        "impact",
        "--old",
        str(paths["old"]),
        "--new",
        str(paths["new"]),
        "--events",
        "nope.jsonl",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["evalloop policy impact: error: no such file: nope.jsonl"]
