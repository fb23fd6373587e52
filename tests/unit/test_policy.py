"""Table-driven tests of policy validation: the shipped policy loads; contradictions are caught."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from evalloop.cli import main
from schemas.policy import PolicyError, load_policy, parse_duration, parse_policy

POLICY_FILE = Path("policies/product-search.yaml")
BASE: dict[str, Any] = yaml.safe_load(POLICY_FILE.read_text(encoding="utf-8"))
WRONG_TYPE = [rule["id"] for rule in BASE["alerts"]].index("wrong-type-ticket")


def _mutate(change: Any) -> dict[str, Any]:
    document = copy.deepcopy(BASE)
    change(document)
    return document


def test_shipped_policy_loads() -> None:
    policy = load_policy(POLICY_FILE)
    assert policy.grades == [0, 1, 2, 3, 4]
    assert [policy.display_for(g) for g in policy.grades] == ["filter", "filter", "related", "show", "show"]
    assert policy.sample_rate("Kitchen & Dining") == 1.0
    assert policy.sample_rate("Unknown Category") == policy.sampling.default_rate
    assert {rule.id for rule in policy.rules_for("Décor & Art")} == {
        "filtered-share-burn",
        "wrong-type-ticket",
        "teacher-errors",
    }
    # One page rule for every category, on the bias-corrected share (docs/calibration.md).
    assert {r.id for r in policy.rules_for("Home Improvement & Lighting")} == {
        "filtered-share-burn",
        "wrong-type-ticket",
        "teacher-errors",
    }
    page = next(r for r in policy.alerts if r.id == "filtered-share-burn")
    assert page.estimate == "corrected" and page.categories is None
    assert policy.golden.canary.share > 0


def _set(path: str, value: Any) -> Any:
    def change(document: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = document
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = value

    return change


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        (_set("version", ""), "version", "at least 1"),
        (_set("rubric.0.grade", 3), "rubric", "unique"),
        (_set("rubric.0.grade", 7), "rubric", "contiguous"),
        (_set("rubric.0.display", "filter"), "rubric", "cannot be less visible"),
        (_set("rubric.0.display", "hide"), "rubric.0.display", "show"),
        (_set("rubric.1.examples", []), "rubric.1.examples", "at least 1"),
        (_set("failure_modes.0.max_grade", 9), "", "not a rubric grade"),
        (_set("failure_modes.1.id", "wrong_product_type"), "", "duplicate ids"),
        (_set("alerts.0.threshold", 1.5), "alerts.0.threshold", "less than 1"),
        (_set("alerts.0.threshold", 0), "alerts.0.threshold", "greater than 0"),
        (_set("alerts.0.windows.0.short", "3h"), "alerts.0", "must be shorter"),
        (_set("alerts.0.windows.0.long", "two hours"), "alerts.0.windows.0.long", "pattern"),
        (_set("alerts.0.windows.0.factor", 3.0), "alerts.0", "can never be exceeded"),
        (_set("alerts.0.min_samples", 0), "alerts.0.min_samples", "greater than or equal to 1"),
        (_set("alerts.0.severity", "sms"), "alerts.0.severity", "'page' or 'ticket'"),
        (_set(f"alerts.{WRONG_TYPE}.failure_mode", "made_up"), "", "unknown failure_mode"),
        (_set("alerts.0.failure_mode", "wrong_product_type"), "alerts.0", "only with it"),
        (_set("alerts.0.categories", ["Nowhere"]), "", "unknown category"),
        (_set("alerts.1.id", "filtered-share-burn"), "", "duplicate rule ids"),
        (_set("sampling.default_rate", 0), "sampling.default_rate", "greater than 0"),
        (_set("categories.0.sample_rate", 2), "categories.0.sample_rate", "less than or equal to 1"),
        (_set("golden.label_map", {"Exact": 9}), "", "not a rubric grade"),
        (_set("gates.gate1", {"clear": 0.5, "ambiguous": 0.7}), "", "must not exceed"),
        (_set("teacher.backend", "magic"), "teacher.backend", "embedding"),
        (_set("unknown_section", {}), "unknown_section", "Extra inputs"),
    ],
)
def test_bad_policies_name_the_field(change: Any, field: str, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(_mutate(change))
    assert message in str(caught.value)
    if field:
        assert caught.value.field == field


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("5m", 300), ("2h", 7200), ("1d", 86400)])
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["0m", "5", "m5", "1w", ""])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_policy_check_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["policy", "check", str(POLICY_FILE)]) == 0
    assert "product-search-2026.11.2: OK" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_mutate(_set("alerts.0.threshold", 1.5))), encoding="utf-8")
    assert main(["policy", "check", str(bad)]) == 1
    assert "alerts.0.threshold" in capsys.readouterr().err
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: [unclosed", encoding="utf-8")
    assert main(["policy", "check", str(broken)]) == 1
    assert "not valid YAML" in capsys.readouterr().err


def test_policy_check_warns_when_a_rule_needs_a_mode_the_teacher_never_tags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from judges.registry import unreachable_rules

    bundled = load_policy(POLICY_FILE)
    assert unreachable_rules(bundled) == []
    assert unreachable_rules(bundled, "openai") == []
    doc = yaml.safe_load(POLICY_FILE.read_text(encoding="utf-8"))
    for mode in doc["failure_modes"]:
        mode.pop("detector", None)
    path = tmp_path / "no-detectors.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    assert main(["policy", "check", str(path)]) == 0
    err = capsys.readouterr().err
    assert "warning: alerts.wrong-type-ticket watches failure mode 'wrong_product_type'" in err
    assert "never" in err
