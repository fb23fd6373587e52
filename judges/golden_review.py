"""The policy author's review of the golden set (pure): one edit — accept the teacher's grade,
regrade, or rewrite the reason — turns the current golden version into the next one, with an
audit entry on the edited item. The dashboard's review page (evalloop.review) does the I/O.

A new version is ``<policy version>+g<N+1>`` when the current one belongs to the running policy,
else ``<policy version>+g1``: golden versions are tied to the policy they were graded under.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from judges.golden import UNVERSIONED, Adjudication, AuditEntry, GoldenItem, Provenance, golden_version_of
from schemas.policy import Policy

ReviewAction = Literal["accept", "regrade", "rewrite"]
ACTIONS: tuple[ReviewAction, ...] = ("accept", "regrade", "rewrite")
REVIEW_METHOD = "review page (evalloop dashboard /review)"
_VERSION = re.compile(r"^(?P<policy>.+)\+g(?P<n>\d+)$")
_OPENING = re.compile(r"^\s*\d+\s+[A-Za-z][\w-]*\s*:\s*")


class ReviewError(ValueError):
    """An edit that cannot be applied; the message says why, for the page to show."""


@dataclass(frozen=True)
class ReviewEdit:
    """What the author decided on one item: ``accept`` takes ``teacher_grade``; ``regrade`` sets
    ``grade``; ``rewrite`` keeps the grade. ``reason`` is the new reason (required except for
    ``accept``, where the teacher's rationale is quoted when it is empty)."""

    item_id: str
    action: ReviewAction
    by: str
    reason: str = ""
    grade: int | None = None
    teacher_grade: int | None = None
    teacher_rationale: str = ""


def next_golden_version(items: Sequence[GoldenItem], policy: Policy) -> str:
    """The version an edit of ``items`` is written as."""
    current = golden_version_of(items)
    match = _VERSION.match(current) if current != UNVERSIONED else None
    if match is None or match["policy"] != policy.version:
        return f"{policy.version}+g1"
    return f"{policy.version}+g{int(match['n']) + 1}"


def apply_edit(
    items: Sequence[GoldenItem], edit: ReviewEdit, policy: Policy, at: datetime
) -> list[GoldenItem]:
    """Every item in the next golden version, ``edit`` applied to its item (raises ReviewError)."""
    target = next((item for item in items if item.id == edit.item_id), None)
    if target is None:
        raise ReviewError(f"no golden item {edit.item_id!r} in this version")
    grade = _new_grade(target, edit, policy)
    version = next_golden_version(items, policy)
    edited = _edited(target, edit, grade, policy, version, at)
    return [
        edited if item.id == edit.item_id else item.model_copy(update={"golden_version": version})
        for item in items
    ]


def _new_grade(item: GoldenItem, edit: ReviewEdit, policy: Policy) -> int:
    grade = {"accept": edit.teacher_grade, "regrade": edit.grade, "rewrite": item.grade}[edit.action]
    if grade is None:
        raise ReviewError(f"{edit.action}: no grade given")
    if grade not in policy.grades:
        raise ReviewError(f"grade {grade} is not on the policy's scale {policy.grades}")
    if edit.action == "regrade" and grade == item.grade:
        raise ReviewError(f"regrade: the item already has grade {grade}; rewrite the reason instead")
    return grade


def _reason(edit: ReviewEdit, grade: int, policy: Policy) -> str:
    text = " ".join(edit.reason.split())
    if not text and edit.action == "accept":
        rationale = " ".join(edit.teacher_rationale.split())
        text = f"the teacher's grade accepted on review; its rationale: {rationale}"
    if not text:
        raise ReviewError(f"{edit.action}: write the reason for the grade")
    return f"{grade} {policy.level(grade).name}: {_OPENING.sub('', text)}"


def _edited(
    item: GoldenItem, edit: ReviewEdit, grade: int, policy: Policy, version: str, at: datetime
) -> GoldenItem:
    modes = {mode.id: mode.max_grade for mode in policy.failure_modes}
    entry = AuditEntry(
        golden_version=version,
        at=at,
        by=edit.by,
        action=edit.action,
        from_grade=item.grade,
        to_grade=grade,
        note=" ".join(edit.reason.split()),
    )
    return item.model_copy(
        update={
            "grade": grade,
            "reason": _reason(edit, grade, policy),
            "reason_imported": False,
            "failure_modes": [m for m in item.failure_modes if modes.get(m, -1) >= grade],
            "adjudication": _adjudication(item, grade, edit, policy),
            "provenance": Provenance(
                author=edit.by, date=at.date(), policy_version=policy.version, method=REVIEW_METHOD
            ),
            "golden_version": version,
            "audit": [*item.audit, entry],
        }
    )


def _adjudication(item: GoldenItem, grade: int, edit: ReviewEdit, policy: Policy) -> Adjudication | None:
    original = item.original_grade
    if item.adjudication is None and item.label is None:
        return None  # an authored item with no imported label: nothing to overrule
    if grade == original:
        return None
    if grade == item.grade and item.adjudication is not None:
        return item.adjudication
    return Adjudication(
        original_label=item.adjudication.original_label if item.adjudication else item.label,
        original_grade=original,
        reason=f"{edit.action} on review by {edit.by}: {policy.level(grade).name} ({grade}) under the policy",
    )
