"""In-package fake teachers: deterministic, instant, no model.

``NoopTeacher`` grades each pair from a hash of ``(event_id, item_id)`` (or a fixed ``grade``), so
the same pair always gets the same verdict. Tests use it to check plumbing, and benchmarks use it
as the dispatch ceiling (everything but the model). ``fail_every=N`` turns every N-th pair into
an error judgment, to exercise error paths; ``FlakyTeacher`` is the same with ``fail_every=3``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

from judges.base import JudgeRequest, error_judgment, ok_judgment
from schemas.judgments import Judgment
from schemas.policy import Policy

NOOP_TEACHER_VERSION = "noop-v1"
NOOP_RATIONALE = "noop teacher: hashed grade"


def hashed_index(event_id: str, item_id: str, modulo: int) -> int:
    """A stable index in ``[0, modulo)`` from the pair's ids (independent of PYTHONHASHSEED)."""
    digest = hashlib.sha256(f"{event_id}\x1f{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % modulo


class NoopTeacher:
    """A Teacher that grades by hashing; options: ``grade`` (fixed grade), ``fail_every`` (int),
    ``delay_s`` (seconds each call sleeps, standing in for a model's service time).

    Failure modes: the first policy failure mode whose ``max_grade`` allows the grade, if any.
    """

    def __init__(
        self, policy: Policy, *, grade: int | None = None, fail_every: int = 0, delay_s: float = 0.0
    ) -> None:
        if delay_s < 0:
            raise ValueError("noop teacher: delay_s must be >= 0")
        if grade is not None and grade not in policy.grades:
            raise ValueError(f"noop teacher: grade {grade} is not on the policy scale {policy.grades}")
        if fail_every < 0:
            raise ValueError("noop teacher: fail_every must be >= 0")
        self._policy = policy
        self._grade = grade
        self._fail_every = fail_every
        #: Seconds each ``judge`` call takes, like a model's service time (the autoscaling check).
        self._delay_s = delay_s
        self._seen = 0

    @property
    def teacher_version(self) -> str:
        """Fixed: the fake has no model or artifact."""
        return NOOP_TEACHER_VERSION

    @property
    def policy(self) -> Policy:
        """The policy the grades are drawn from."""
        return self._policy

    def grade_for(self, request: JudgeRequest) -> int:
        """The grade this teacher gives ``request`` (fixed, or hashed over the policy grades)."""
        if self._grade is not None:
            return self._grade
        grades = self._policy.grades
        return grades[hashed_index(request.event_id, request.item.item_id, len(grades))]

    def failure_modes_for(self, grade: int) -> tuple[str, ...]:
        """The first failure mode the grade allows (``grade <= max_grade``), or none."""
        for mode in self._policy.failure_modes:
            if grade <= mode.max_grade:
                return (mode.id,)
        return ()

    def judge(self, requests: Sequence[JudgeRequest]) -> list[Judgment]:
        """One judgment per request, in order; every ``fail_every``-th pair is an error judgment."""
        if self._delay_s:
            time.sleep(self._delay_s)
        judgments: list[Judgment] = []
        for request in requests:
            self._seen += 1
            if self._fail_every and self._seen % self._fail_every == 0:
                judgments.append(
                    error_judgment(
                        request, self._policy, self.teacher_version, "noop teacher: injected failure"
                    )
                )
                continue
            grade = self.grade_for(request)
            judgments.append(
                ok_judgment(
                    request,
                    self._policy,
                    self.teacher_version,
                    grade=grade,
                    failure_modes=self.failure_modes_for(grade),
                    rationale=NOOP_RATIONALE,
                    latency_ms=0.0,
                )
            )
        return judgments


class FlakyTeacher(NoopTeacher):
    """A NoopTeacher that fails every ``fail_every``-th pair (default every 3rd)."""

    def __init__(self, policy: Policy, *, grade: int | None = None, fail_every: int = 3) -> None:
        super().__init__(policy, grade=grade, fail_every=fail_every)
