"""The Teacher protocol every backend implements, and the one place judgments are built.

Backends decide a grade, failure modes and a rationale; ``ok_judgment`` / ``error_judgment``
turn that into a schema-valid Judgment, checking the grade against the policy's scale and the
tags against its taxonomy, so no backend can emit a guessed or off-policy verdict.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from schemas import verdicts
from schemas.events import JudgeRequest, requests_from_sample
from schemas.judgments import MAX_RATIONALE_CHARS, Judgment, judgment_id_for
from schemas.policy import Policy

__all__ = [
    "JudgeRequest",
    "Teacher",
    "VerdictError",
    "check_verdict",
    "error_judgment",
    "ok_judgment",
    "requests_from_sample",
]


@runtime_checkable
class Teacher(Protocol):
    """Grades (request, item) pairs under one policy. Never raises for one bad pair: that pair
    becomes an error judgment; only a misconfigured teacher raises (at construction)."""

    @property
    def teacher_version(self) -> str:
        """Names the model and its artifact; part of every judgment id."""
        ...

    @property
    def policy(self) -> Policy: ...

    def judge(self, requests: Sequence[JudgeRequest]) -> list[Judgment]:
        """One judgment per request, in the same order."""
        ...


def _now() -> datetime:
    return datetime.now(UTC)


def _common_fields(request: JudgeRequest, policy: Policy, teacher_version: str) -> dict[str, object]:
    return {
        "judgment_id": judgment_id_for(
            request.event_id, request.item.item_id, policy.version, teacher_version
        ),
        "event_id": request.event_id,
        "item_id": request.item.item_id,
        "category": request.category,
        "event_time": request.event_time,
        "query": request.query[:2000],
        "item_title": request.item.title,
        "item_rank": request.item.rank,
        "policy_version": policy.version,
        "teacher_version": teacher_version,
        "inclusion_probability": request.inclusion_probability,
        "judged_at": _now(),
    }


def error_judgment(
    request: JudgeRequest, policy: Policy, teacher_version: str, reason: str, latency_ms: float | None = None
) -> Judgment:
    """A judgment recording why the teacher could not grade this pair (never a guessed grade);
    built by ``schemas.verdicts.error_judgment``, as the worker's client builds its own."""
    return verdicts.error_judgment(request, policy.version, teacher_version, reason, latency_ms, _now())


class VerdictError(ValueError):
    """A backend's verdict that does not fit the policy (off-scale grade, unknown failure mode)."""


def check_verdict(
    policy: Policy, grade: int, failure_modes: Sequence[str], rationale: str | None = None
) -> tuple[str, ...]:
    """Validate a verdict against the policy (``schemas.verdicts.verdict_problem``; the rationale
    only when given); returns the failure modes, de-duplicated in order."""
    problem = verdicts.verdict_problem(policy, grade, failure_modes, rationale)
    if problem is not None:
        raise VerdictError(problem)
    return tuple(dict.fromkeys(failure_modes))


def ok_judgment(
    request: JudgeRequest,
    policy: Policy,
    teacher_version: str,
    grade: int,
    failure_modes: Sequence[str],
    rationale: str,
    grade_probabilities: Sequence[float] | None = None,
    latency_ms: float | None = None,
) -> Judgment:
    """A graded judgment; raises VerdictError if the verdict is off-policy (callers turn that
    into ``error_judgment``)."""
    modes = check_verdict(policy, grade, failure_modes, rationale)
    limit = min(policy.teacher.rationale_max_chars, MAX_RATIONALE_CHARS)
    fields = _common_fields(request, policy, teacher_version)
    return Judgment(
        **fields,  # type: ignore[arg-type]
        status="ok",
        grade=grade,
        display=policy.display_for(grade),
        failure_modes=modes,
        rationale=rationale.strip()[:limit],
        grade_probabilities=tuple(grade_probabilities) if grade_probabilities is not None else None,
        latency_ms=latency_ms,
    )
