"""The one place a teacher's verdict is checked against the policy and an error judgment is built.

Both sides use it: the backends in ``judges`` (a verdict that does not fit becomes an error
judgment before it leaves the teacher) and the worker's Serve client in ``streams`` (a judgment
that arrives off-policy is not counted as quality). It lives in ``schemas`` because that is the
one package both may import (docs/policy.md; the import contracts in pyproject.toml).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from schemas.events import JudgeRequest
from schemas.judgments import Judgment, judgment_id_for
from schemas.policy import Policy


def verdict_problem(
    policy: Policy,
    grade: int,
    failure_modes: Sequence[str],
    rationale: str | None = None,
    display: str | None = None,
) -> str | None:
    """Why a verdict does not fit ``policy`` (grade off the scale, display not the grade's,
    unknown failure mode, empty rationale), or None when it fits; ``rationale`` and ``display``
    are checked only when given."""
    if grade not in policy.grades:
        return f"grade {grade} is not on the policy scale {policy.grades}"
    if display is not None and display != policy.display_for(grade):
        return f"display {display!r} is not the policy's for grade {grade}"
    known = set(policy.failure_mode_ids())
    unknown = [mode for mode in failure_modes if mode not in known]
    if unknown:
        return f"unknown failure modes {unknown}; the policy defines {sorted(known)}"
    if rationale is not None and not rationale.strip():
        return "empty rationale"
    return None


def judgment_problem(policy: Policy, judgment: Judgment) -> str | None:
    """``verdict_problem`` of an ok judgment as received; error judgments always fit."""
    if judgment.status != "ok" or judgment.grade is None:
        return None
    return verdict_problem(
        policy, judgment.grade, judgment.failure_modes, judgment.rationale, judgment.display
    )


def error_judgment(
    request: JudgeRequest,
    policy_version: str,
    teacher_version: str,
    reason: str,
    latency_ms: float | None = None,
    now: datetime | None = None,
) -> Judgment:
    """A schema-valid judgment recording why this pair was not graded (never a guessed grade)."""
    return Judgment(
        judgment_id=judgment_id_for(request.event_id, request.item.item_id, policy_version, teacher_version),
        event_id=request.event_id,
        item_id=request.item.item_id,
        category=request.category,
        event_time=request.event_time,
        query=request.query[:2000],
        item_title=request.item.title,
        item_rank=request.item.rank,
        status="error",
        error=(reason or "unknown teacher error")[:2000],
        policy_version=policy_version,
        teacher_version=teacher_version,
        inclusion_probability=request.inclusion_probability,
        judged_at=now or datetime.now(UTC),
        latency_ms=latency_ms,
    )
