"""Judgments: the teacher's verdict on one (event, item) pair under one policy version."""

from __future__ import annotations

import hashlib
import math
from typing import Annotated, Literal

from pydantic import Field, model_validator

from schemas.base import Identifier, ShortText, StrictModel, Timestamp

Display = Literal["show", "related", "filter"]
JudgmentStatus = Literal["ok", "error"]
MAX_RATIONALE_CHARS = 2000


def judgment_id_for(event_id: str, item_id: str, policy_version: str, teacher_version: str) -> str:
    """Deterministic id: the same pair judged under the same policy and teacher is one judgment.

    It is the idempotency key for the windows and for deduplicating redelivered samples.
    """
    key = "\x1f".join((event_id, item_id, policy_version, teacher_version))
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


#: Canary judgments are windowed under this prefix + the teacher version, apart from production.
CANARY_CATEGORY_PREFIX = "canary:"


def canary_category(teacher_version: str) -> str:
    """The windows category a teacher version's canary judgments roll up under."""
    return f"{CANARY_CATEGORY_PREFIX}{teacher_version}"[:200]


def is_canary_category(category: str) -> bool:
    """Whether ``category`` holds canaries (not a production category)."""
    return category.startswith(CANARY_CATEGORY_PREFIX)


class CanaryTag(StrictModel):
    """Marks a sample or judgment as a golden canary: which golden item, its grade and category."""

    golden_id: Identifier
    golden_grade: int = Field(ge=0, le=10)
    golden_category: ShortText


class Judgment(StrictModel):
    """The teacher's grade of one recommended item, or the reason it could not grade it."""

    judgment_id: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    event_id: Identifier
    item_id: Identifier
    category: ShortText
    event_time: Timestamp
    query: Annotated[str, Field(max_length=2000)] = ""
    item_title: Annotated[str, Field(max_length=2000)] = ""
    item_rank: int = Field(default=1, ge=1, le=10_000)
    status: JudgmentStatus
    grade: int | None = Field(default=None, ge=0, le=10)
    display: Display | None = None
    failure_modes: Annotated[tuple[Identifier, ...], Field(max_length=16)] = ()
    rationale: Annotated[str, Field(max_length=MAX_RATIONALE_CHARS)] = ""
    #: P(grade = scale_min + i) for i in range(len); only when the teacher gives probabilities.
    grade_probabilities: Annotated[tuple[float, ...], Field(max_length=11)] | None = None
    error: Annotated[str, Field(max_length=2000)] | None = None
    policy_version: Identifier
    teacher_version: Annotated[str, Field(min_length=1, max_length=200)]
    inclusion_probability: float = Field(default=1.0, gt=0.0, le=1.0)
    judged_at: Timestamp
    latency_ms: float | None = Field(default=None, ge=0.0)
    #: Set on golden canaries (docs/canaries.md): they roll up under ``canary_category`` only,
    #: never into production windows or exports.
    canary: CanaryTag | None = None
    #: The production model that made the recommendation (the event's ``model_version``).
    model_version: Identifier | None = None

    @model_validator(mode="after")
    def _status_consistent(self) -> Judgment:
        if self.status == "ok":
            if self.grade is None or self.display is None or self.error is not None:
                raise ValueError("status 'ok' needs grade and display, and no error")
        elif self.grade is not None or self.display is not None or not self.error:
            raise ValueError("status 'error' needs an error reason, and no grade or display")
        return self

    @model_validator(mode="after")
    def _probabilities_sum_to_one(self) -> Judgment:
        probabilities = self.grade_probabilities
        if probabilities is not None:
            if any(not 0.0 <= p <= 1.0 for p in probabilities):
                raise ValueError("grade_probabilities must each be within [0, 1]")
            if not math.isclose(sum(probabilities), 1.0, abs_tol=1e-3):
                raise ValueError(f"grade_probabilities sum to {sum(probabilities):.4f}, not 1")
        return self

    @property
    def weight(self) -> float:
        """Horvitz–Thompson weight: how many stream items this judged item stands for."""
        return 1.0 / self.inclusion_probability
