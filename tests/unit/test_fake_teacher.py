"""The in-package fake teachers: deterministic, on-policy, and failing exactly when told to."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from judges.base import JudgeRequest, Teacher
from judges.fake import NOOP_RATIONALE, NOOP_TEACHER_VERSION, FlakyTeacher, NoopTeacher
from schemas.events import Item
from schemas.judgments import judgment_id_for
from schemas.policy import Policy, load_policy

POLICY_PATH = Path(__file__).resolve().parents[2] / "policies" / "product-search.yaml"


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(POLICY_PATH)


def _requests(count: int) -> list[JudgeRequest]:
    return [
        JudgeRequest(
            event_id=f"ev-{n // 5}",
            category="furniture",
            event_time=datetime(2026, 1, 1, tzinfo=UTC),
            query="king poster bed",
            item=Item(item_id=f"it-{n}", title="queen four poster bed", rank=n % 5 + 1),
        )
        for n in range(count)
    ]


def test_is_a_teacher_with_fixed_version(policy: Policy) -> None:
    teacher = NoopTeacher(policy)
    assert isinstance(teacher, Teacher)
    assert teacher.teacher_version == NOOP_TEACHER_VERSION == "noop-v1"
    assert teacher.policy is policy


def test_grades_are_deterministic_on_policy_and_spread(policy: Policy) -> None:
    requests = _requests(200)
    first = NoopTeacher(policy).judge(requests)
    second = NoopTeacher(policy).judge(requests)
    assert [j.grade for j in first] == [j.grade for j in second]
    assert {j.grade for j in first} == set(policy.grades)  # 200 hashes hit every grade
    for request, judgment in zip(requests, first, strict=True):
        assert judgment.status == "ok"
        assert judgment.item_id == request.item.item_id
        assert judgment.display == policy.display_for(judgment.grade or 0)
        assert judgment.rationale == NOOP_RATIONALE
        assert judgment.judgment_id == judgment_id_for(
            request.event_id, request.item.item_id, policy.version, NOOP_TEACHER_VERSION
        )


def test_failure_mode_only_when_the_grade_allows(policy: Policy) -> None:
    limits = {mode.id: mode.max_grade for mode in policy.failure_modes}
    for judgment in NoopTeacher(policy).judge(_requests(100)):
        assert judgment.grade is not None
        for mode in judgment.failure_modes:
            assert judgment.grade <= limits[mode]
        if judgment.grade <= min(limits.values()):
            assert len(judgment.failure_modes) == 1
    assert NoopTeacher(policy, grade=policy.max_grade).judge(_requests(1))[0].failure_modes == ()


def test_fixed_grade_and_bad_options(policy: Policy) -> None:
    judgments = NoopTeacher(policy, grade=2).judge(_requests(10))
    assert {j.grade for j in judgments} == {2}
    with pytest.raises(ValueError, match="not on the policy scale"):
        NoopTeacher(policy, grade=9)
    with pytest.raises(ValueError, match="fail_every"):
        NoopTeacher(policy, fail_every=-1)


def test_fail_every_and_flaky(policy: Policy) -> None:
    judgments = NoopTeacher(policy, fail_every=4).judge(_requests(12))
    assert [j.status for j in judgments].count("error") == 3
    assert judgments[3].status == "error" and judgments[3].grade is None
    assert "injected failure" in (judgments[3].error or "")
    flaky = FlakyTeacher(policy).judge(_requests(9))
    assert [j.status == "error" for j in flaky] == [False, False, True] * 3
    assert NoopTeacher(policy).judge([]) == []
