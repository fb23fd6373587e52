"""Golden format: loader errors name the line, check_golden finds every kind of problem, the
committed golden/holdout files are what infra.data.build_golden produces, and the CLI's exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from evalloop.cli import main
from infra.data.build_golden import build_golden, coarse_category, holdout_items
from judges.golden import (
    GoldenFormatError,
    GoldenItem,
    check_golden,
    dump_golden,
    golden_request,
    load_golden,
    parse_golden,
)
from schemas.events import RecommendationEvent
from schemas.policy import Policy, load_policy

REPO = Path(__file__).resolve().parents[2]
POLICY_FILE = REPO / "policies/product-search.yaml"
GOLDEN_FILE = REPO / "data/wands/golden.jsonl"
HOLDOUT_FILE = REPO / "data/wands/holdout.jsonl"


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(POLICY_FILE)


def record(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "g-1",
        "query": "king poster bed",
        "item": {
            "item_id": "1",
            "title": "four poster bed",
            "category": "Furniture / Beds",
            "attributes": {},
        },
        "category": "Furniture & Office",
        "grade": 4,
        "label": "Exact",
        "reason": "a king poster bed",
        "policy_version": "product-search-2026.11.1",
    }
    base.update(changes)
    return base


def line(**changes: Any) -> str:
    return json.dumps(record(**changes))


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([line(), "{not json"], "src:2: not valid JSON"),
        ([line(), "", "[1, 2]"], "src:3: expected a JSON object"),
        ([json.dumps({k: v for k, v in record().items() if k != "query"})], "src:1: query"),
        ([line(), line(id="g-2", grade="four")], "src:2: grade"),
        ([line(item={"item_id": "1"})], "src:1: item.title"),
        ([line(unknown_field=1)], "src:1: unknown_field"),
        ([], "src: no golden items"),
    ],
)
def test_loader_errors_name_the_line(lines: list[str], expected: str) -> None:
    with pytest.raises(GoldenFormatError) as error:
        parse_golden(lines, source="src")
    assert expected in str(error.value)


def test_load_golden_reports_missing_file(tmp_path: Path) -> None:
    with pytest.raises(GoldenFormatError, match="cannot read"):
        load_golden(tmp_path / "missing.jsonl")


def items_of(*records: dict[str, Any]) -> list[GoldenItem]:
    return parse_golden([json.dumps(r) for r in records])


@pytest.mark.parametrize(
    ("records", "error"),
    [
        ([record(grade=7)], "grade off the policy scale"),
        ([record(grade=-1)], "grade off the policy scale"),
        ([record(reason="  ")], "missing reason"),
        ([record(), record()], "duplicate id"),
        # the same written reason on items of other text: copied, not written for the item
        ([record(id="a"), record(id="b", item={"item_id": "2", "title": "sofa"})], "reason copied"),
        ([record(reason="2 Related: queen, not king")], "reason contradicting the grade"),
        ([record(failure_modes=["attribute_mismatch"])], "attribute_mismatch allows at most grade 2"),
        ([record(reason="fine, though off_department")], "off_department allows at most grade 1"),
        ([record(failure_modes=["no_such_mode"])], "not in the policy"),
        (
            [record(adjudication={"original_label": "Exact", "original_grade": 4, "reason": "x"})],
            "adjudicated to the grade it already had",
        ),
        (
            [record(grade=3, adjudication={"original_label": "Partial", "original_grade": 4, "reason": "x"})],
            "maps to 2, not 4",
        ),
        (
            [record(id="a", golden_version="p+g1"), record(id="b", golden_version="p+g2")],
            "more than one golden",
        ),
    ],
)
def test_check_golden_finds_errors(policy: Policy, records: list[dict[str, Any]], error: str) -> None:
    report = check_golden(items_of(*records), policy)
    assert not report.ok
    assert any(error in message for message in report.errors), report.errors


def test_check_golden_accepts_imported_reasons_and_warns_on_other_policy(policy: Policy) -> None:
    report = check_golden(
        items_of(
            record(id="a", reason="", reason_imported=True), record(id="b", policy_version="old-policy")
        ),
        policy,
    )
    assert report.ok, report.errors
    assert any("old-policy" in warning for warning in report.warnings)
    assert report.grades == {4: 2}
    assert report.imported_reasons == 1


def test_golden_request_carries_the_item(policy: Policy) -> None:
    item = items_of(record(item={"item_id": "9", "title": "t", "attributes": {"product_class": "Beds"}}))[0]
    request = golden_request(item)
    assert (request.event_id, request.query, request.item.item_id, request.category) == (
        "g-1",
        "king poster bed",
        "9",
        "Furniture & Office",
    )
    assert request.item.attributes == {"product_class": "Beds"}


def test_committed_golden_file_is_the_built_one(policy: Policy) -> None:
    imported, built = build_golden(policy)
    assert dump_golden(built) == GOLDEN_FILE.read_text(encoding="utf-8")
    report = check_golden(built, policy)
    assert report.ok and report.n == 560 and report.queries == 11 and report.imported_reasons == 0
    assert set(report.grades) == {0, 1, 2, 3, 4}, "the author's reading uses every rubric grade"
    assert report.golden_version == f"{policy.version}+g2"
    # the imported labels are version g1, all imported; every difference is an adjudication
    first = check_golden(imported, policy)
    assert first.ok and first.imported_reasons == 560 and first.grades == {0: 160, 2: 200, 4: 200}
    changed = [(a, b) for a, b in zip(imported, built, strict=True) if a.grade != b.grade]
    assert len(changed) == report.adjudicated > 0
    assert all(b.adjudication and b.adjudication.original_grade == a.grade for a, b in changed)
    assert all(b.label == a.label for a, b in zip(imported, built, strict=True)), "labels kept"


def test_committed_holdout_is_the_distinct_event_pairs(policy: Policy) -> None:
    events = [
        RecommendationEvent.model_validate_json(row)
        for row in (REPO / "data/wands/events.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    built = holdout_items(events, policy)
    assert dump_golden(built) == HOLDOUT_FILE.read_text(encoding="utf-8")
    golden_queries = {item.query for item in load_golden(GOLDEN_FILE)}
    assert not golden_queries & {item.query for item in built}, "holdout must not share golden queries"
    assert len({(item.query, item.item.item_id) for item in built}) == len(built)


@pytest.mark.parametrize(
    ("path", "coarse"),
    [
        ("Furniture / Bedroom Furniture / Beds", "Furniture & Office"),
        ("Pet / Dog / Bowls", "Outdoor & Garden"),
        ("Flush Mount Lighting", "Other"),
        (None, "Other"),
        ("", "Other"),
    ],
)
def test_coarse_category(path: str | None, coarse: str) -> None:
    assert coarse_category(path) == coarse


def test_cli_golden_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["golden", "check", str(GOLDEN_FILE), "--policy", str(POLICY_FILE)]) == 0
    out = capsys.readouterr().out
    assert "560 over 11 queries" in out and "560 written, 0 imported" in out and "adjudicated" in out
    bad = tmp_path / "bad.jsonl"
    bad.write_text(line() + "\n" + line(grade=9) + "\n", encoding="utf-8")
    assert main(["golden", "check", str(bad), "--policy", str(POLICY_FILE)]) == 1
    out = capsys.readouterr().out
    assert "duplicate id" in out and "grade off the policy scale" in out
    bad.write_text("oops\n", encoding="utf-8")
    assert main(["golden", "check", str(bad), "--policy", str(POLICY_FILE)]) == 2
    assert f"{bad}:1" in capsys.readouterr().err
