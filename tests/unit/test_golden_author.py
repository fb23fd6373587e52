"""The author's per-query reading applied to an item: each rubric rule gives its grade, failure
modes and a reason naming the evidence; adjudications only where the imported label differs,
and a Partial is never raised on title evidence alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.data.golden_author import Attribute, QuerySpec, Specs, author_item, has_term, judge, load_specs
from judges.golden import GoldenItem, check_golden
from schemas.policy import Policy, load_policy

ROOT = Path(__file__).resolve().parents[2]
SPEC = QuerySpec(
    query="king poster bed",
    reading="a four-poster bed in king size",
    product="four-poster bed",
    type_terms=("poster bed",),
    family="a bed",
    family_terms=("bed",),
    departments=("Furniture / Bedroom Furniture",),
    attributes=(Attribute("size", "king", ("king",), ("queen", "twin")),),
)


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(ROOT / "policies" / "product-search.yaml")


def item(title: str, path: str, label: str = "Exact", grade: int = 4, klass: str = "Beds") -> GoldenItem:
    return GoldenItem.model_validate(
        {
            "id": f"t-{abs(hash((title, path)))}",
            "query": SPEC.query,
            "item": {
                "item_id": "1",
                "title": title,
                "category": path,
                "attributes": {"product_class": klass},
            },
            "category": "Furniture & Office",
            "grade": grade,
            "label": label,
            "reason": f"imported WANDS label '{label}' (no rater reason published)",
            "reason_imported": True,
            "policy_version": "product-search-2026.11.2",
        }
    )


BEDS = "Furniture / Bedroom Furniture / Beds"


@pytest.mark.parametrize(
    ("title", "path", "grade", "modes", "says"),
    [
        ("essential king four poster bed", BEDS, 4, [], "king confirmed"),
        ("ameed queen four poster bed", BEDS, 2, ["attribute_mismatch"], "'queen' does not fit"),
        ("low profile four poster bed", BEDS + " / Queen Size Beds", 3, [], "files it under Queen Size Beds"),
        ("patricia four poster bed", BEDS, 3, [], "nothing in its text confirms king"),
        ("king upholstered platform bed", BEDS, 2, ["query_term_missed"], "'poster' is not in its title"),
        (
            "6 drawer dresser",
            "Furniture / Bedroom Furniture / Dressers",
            1,
            ["wrong_product_type"],
            "own department",
        ),
        (
            "lion king crib bedding set",
            "Baby & Kids / Nursery Bedding",
            0,
            ["wrong_product_type", "off_department"],
            "shares only 'king'",
        ),
    ],
)
def test_each_rubric_rule(title: str, path: str, grade: int, modes: list[str], says: str) -> None:
    judged = judge(item(title, path, klass="Dressers" if "dresser" in title else "Beds"), SPEC)
    assert (judged.grade, judged.failure_modes) == (grade, modes)
    assert says in judged.why and title in judged.why


def test_reason_adjudication_and_the_partial_rule(policy: Policy) -> None:
    specs = Specs("tester", load_specs().date, {SPEC.query: SPEC})
    queen = author_item(item("ameed queen four poster bed", BEDS), specs, policy, "v+g2")
    assert queen.grade == 2 and queen.label == "Exact" and not queen.reason_imported
    assert queen.reason.startswith("2 Related: ") and "(attribute_mismatch)" in queen.reason
    assert queen.adjudication and queen.adjudication.original_grade == 4
    kept = author_item(item("essential king four poster bed", BEDS), specs, policy, "v+g2")
    assert (
        kept.grade == 4
        and kept.adjudication is None
        and kept.provenance
        and kept.provenance.author == "tester"
    )
    partial = author_item(item("essential king four poster bed", BEDS, "Partial", 2), specs, policy, "v+g2")
    assert partial.grade == 2 and partial.adjudication is None and "WANDS rater" in partial.reason
    assert check_golden(
        [queen, kept.model_copy(update={"id": "k"}), partial.model_copy(update={"id": "p"})], policy
    ).ok


@pytest.mark.parametrize(
    ("text", "term", "found"),
    [
        ("king four poster bed", "poster bed", True),
        ("kingstown four poster bed", "king", False),
        ("gravity automatic feeder", "gravity+feeder", True),
        ("zero gravity bed", "gravity+feeder", False),
        ("buddhist-meditation glass", "meditation", True),
    ],
)
def test_terms_match_whole_words(text: str, term: str, found: bool) -> None:
    assert has_term(text, term) is found


def test_every_golden_query_has_a_reading() -> None:
    from judges.golden import load_golden

    queries = {i.query for i in load_golden(ROOT / "data" / "wands" / "golden.jsonl")}
    assert queries == set(load_specs().queries)
