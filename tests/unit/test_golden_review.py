"""The golden review: each edit makes the next version with an audit entry and a consistent
adjudication; bad edits are refused with a reason; the desk writes the version file beside the
current one, moves on to it, and the page lists the last Gate 2's open disagreements."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from evalloop.dashboard.review_html import render_review
from evalloop.review import ReviewDesk, write_review_file
from judges.gate2 import Disagreement
from judges.golden import GoldenItem, check_golden, dump_golden, load_golden
from judges.golden_diff import diff_golden
from judges.golden_review import ReviewEdit, ReviewError, apply_edit, next_golden_version
from schemas.policy import Policy, load_policy

ROOT = Path(__file__).resolve().parents[2]
AT = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(ROOT / "policies" / "product-search.yaml")


@pytest.fixture(scope="module")
def golden() -> list[GoldenItem]:
    return load_golden(ROOT / "data" / "wands" / "golden.jsonl")[:30]


def first(items: list[GoldenItem], **where: object) -> GoldenItem:
    return next(i for i in items if all(getattr(i, k) == v for k, v in where.items()))


@pytest.mark.parametrize(
    ("current", "expected"),
    [("product-search-2026.11.2+g2", "+g3"), ("product-search-2026.11.2+g9", "+g10"), ("other-1+g4", "+g1")],
)
def test_next_version_is_tied_to_the_policy(
    policy: Policy, golden: list[GoldenItem], current: str, expected: str
) -> None:
    items = [i.model_copy(update={"golden_version": current}) for i in golden]
    assert next_golden_version(items, policy) == policy.version + expected


@pytest.mark.parametrize(
    ("action", "grade", "teacher_grade", "reason", "new_grade"),
    [
        ("accept", None, 0, "", 0),
        ("regrade", 1, 4, "a bed, but a crib bedding set is Weak at most", 1),
        ("rewrite", None, 4, "2 Related: reworded by the author", None),
    ],
)
def test_each_action_writes_the_next_version_with_an_audit_line(
    policy: Policy,
    golden: list[GoldenItem],
    action: str,
    grade: int | None,
    teacher_grade: int,
    reason: str,
    new_grade: int | None,
) -> None:
    target = first(golden, grade=2, adjudication=None)
    edit = ReviewEdit(target.id, action, "ana", reason, grade, teacher_grade, "teacher says so")  # type: ignore[arg-type]
    after = apply_edit(golden, edit, policy, AT)
    edited = first(after, id=target.id)
    expected = target.grade if new_grade is None else new_grade
    assert edited.grade == expected and edited.golden_version == policy.version + "+g3"
    assert {i.golden_version for i in after} == {policy.version + "+g3"}
    assert edited.reason.startswith(f"{expected} {policy.level(expected).name}: ")
    assert edited.audit[-1].by == "ana" and edited.audit[-1].action == action
    assert (edited.audit[-1].from_grade, edited.audit[-1].to_grade) == (target.grade, expected)
    assert edited.provenance and edited.provenance.author == "ana"
    # an imported label overruled is an adjudication; back to it, none
    assert (edited.adjudication is not None) == (expected != target.original_grade)
    assert check_golden(after, policy).ok, check_golden(after, policy).errors
    changed = {c.item_id for c in diff_golden(golden, after).changes if c.field != "golden_version"}
    assert changed == {target.id}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (ReviewEdit("nope", "rewrite", "ana", "x"), "no golden item"),
        (ReviewEdit("{id}", "regrade", "ana", "x", grade=7), "not on the policy's scale"),
        (ReviewEdit("{id}", "regrade", "ana", "x", grade=2), "already has grade 2"),
        (ReviewEdit("{id}", "rewrite", "ana", "   "), "write the reason"),
        (ReviewEdit("{id}", "accept", "ana", ""), "no grade given"),
    ],
)
def test_bad_edits_are_refused(
    policy: Policy, golden: list[GoldenItem], edit: ReviewEdit, message: str
) -> None:
    target = first(golden, grade=2)
    edit = ReviewEdit(**{**edit.__dict__, "item_id": edit.item_id.replace("{id}", target.id)})
    with pytest.raises(ReviewError, match=message):
        apply_edit(golden, edit, policy, AT)


def test_regrading_drops_failure_modes_the_new_grade_does_not_allow(
    policy: Policy, golden: list[GoldenItem]
) -> None:
    target = next(
        i for i in golden if "attribute_mismatch" in i.failure_modes or "query_term_missed" in i.failure_modes
    )
    edited = first(
        apply_edit(golden, ReviewEdit(target.id, "regrade", "ana", "it is the bed", grade=4), policy, AT),
        id=target.id,
    )
    assert edited.failure_modes == []


def test_desk_writes_the_version_file_and_moves_on(
    tmp_path: Path, policy: Policy, golden: list[GoldenItem]
) -> None:
    path = tmp_path / "golden.jsonl"
    path.write_text(dump_golden(golden), encoding="utf-8")
    a, b = golden[0], golden[1]
    disagreements = [
        Disagreement(
            a.id, a.query, a.item.title, a.category, a.grade, (a.grade + 2) % 5, a.reason, "teacher a"
        ),
        Disagreement(
            b.id, b.query, b.item.title, b.category, b.grade, (b.grade + 1) % 5, b.reason, "teacher b"
        ),
    ]
    review = tmp_path / "review.json"
    write_review_file(review, disagreements, path, golden, "embedding-v2:test")
    desk = ReviewDesk(policy, path, review, "desk-author")
    view = desk.view()
    assert [r.item.id for r in view.rows] == [a.id, b.id] and view.teacher_version == "embedding-v2:test"
    page = render_review(view, policy)
    assert f'id="review-{a.id}"' in page and "teacher a" in page and 'name="action" value="regrade"' in page
    written = desk.submit(
        {
            "item_id": a.id,
            "action": "accept",
            "teacher_grade": str((a.grade + 2) % 5),
            "teacher_rationale": "teacher a",
        }
    )
    assert written.path == tmp_path / f"golden.{policy.version}+g3.jsonl" and written.path.exists()
    assert a.id in written.diff and path.read_text(encoding="utf-8") == dump_golden(golden)  # old kept
    assert desk.golden_path == written.path
    assert [r.item.id for r in desk.view().rows] == [b.id], "the accepted disagreement is settled"
    with pytest.raises(ReviewError, match="unknown action"):
        desk.submit({"item_id": b.id, "action": "delete"})
    broken = ReviewDesk(policy, path, tmp_path / "missing.json", "x").view()
    assert broken.problem and "evalloop gate2" in broken.problem and not broken.rows
    assert json.loads(review.read_text(encoding="utf-8"))["golden_version"].endswith("+g2")


def test_a_read_only_desk_refuses_edits(tmp_path: Path, policy: Policy, golden: list[GoldenItem]) -> None:
    path = tmp_path / "golden.jsonl"
    path.write_text(dump_golden(golden), encoding="utf-8")
    desk = ReviewDesk(policy, path, tmp_path / "review.json", "x", writable=False)
    with pytest.raises(ReviewError, match="--allow-review-edits"):
        desk.submit({"item_id": golden[0].id, "action": "rewrite", "reason": "new words"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["golden.jsonl"]
