"""One verdict check for both sides: a backend's off-policy verdict and the same verdict arriving
at the worker's Serve client are refused with the same reason (``schemas.verdicts``)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from judges.base import VerdictError, error_judgment, ok_judgment
from schemas.events import JudgeRequest
from schemas.judgments import Judgment
from schemas.policy import load_policy
from streams.teacher_client import error_judgment_for, off_policy_reason

POLICY = load_policy(Path("policies/product-search.yaml"))
T0 = datetime(2026, 1, 1, tzinfo=UTC)
REQUEST = JudgeRequest.model_validate(
    {
        "event_id": "e1",
        "category": "Other",
        "event_time": T0.isoformat(),
        "query": "lamp",
        "item": {"item_id": "i1", "title": "desk lamp", "rank": 1},
        "inclusion_probability": 0.5,
    }
)


@pytest.mark.parametrize(
    ("grade", "modes", "rationale", "reason"),
    [
        (7, (), "r", "grade 7 is not on the policy scale"),
        (1, ("no_such_mode",), "r", "unknown failure modes ['no_such_mode']"),
        (3, (), "   ", "empty rationale"),
    ],
)
def test_both_sides_refuse_the_same_verdict_for_the_same_reason(
    grade: int, modes: tuple[str, ...], rationale: str, reason: str
) -> None:
    with pytest.raises(VerdictError) as refused:
        ok_judgment(REQUEST, POLICY, "t", grade, modes, rationale)
    arrived = Judgment.model_construct(
        **{
            **ok_judgment(REQUEST, POLICY, "t", 3, (), "fine").model_dump(),
            "grade": grade,
            "failure_modes": modes,
            "rationale": rationale,
            "display": "show" if grade > 4 else POLICY.display_for(grade),
        }
    )
    said = off_policy_reason(POLICY, arrived)
    assert said is not None and reason in said
    assert str(refused.value) == said


def test_a_display_that_is_not_the_grades_is_refused_on_arrival() -> None:
    good = ok_judgment(REQUEST, POLICY, "t", 0, (), "off")
    assert off_policy_reason(POLICY, good) is None
    wrong = good.model_copy(update={"display": "show"})
    assert off_policy_reason(POLICY, wrong) == "display 'show' is not the policy's for grade 0"


def test_error_judgments_are_built_alike() -> None:
    teacher_side = error_judgment(REQUEST, POLICY, "t", "model down")
    client_side = error_judgment_for(
        REQUEST, POLICY.version, "model down", teacher_version="t", now=teacher_side.judged_at
    )
    assert teacher_side == client_side
    assert teacher_side.status == "error" and teacher_side.grade is None
