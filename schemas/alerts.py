"""Alerts: a category's quality crossed a policy threshold (firing) or came back (resolved)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from schemas.base import Identifier, ShortText, StrictModel, Timestamp
from schemas.judgments import Display

Severity = Literal["page", "ticket"]
AlertState = Literal["pending", "firing", "resolved"]


class CorrectedFigure(StrictModel):
    """A window's share corrected for the teacher's measured bias (docs/calibration.md): the
    value and interval; ``not_identifiable`` when the teacher is too weak for this signal;
    ``out_of_range`` when the raw share is beyond what the calibrated teacher can produce."""

    status: Literal["corrected", "not_identifiable", "out_of_range"]
    value: float | None = Field(default=None, ge=0.0, le=1.0)
    lower: float | None = Field(default=None, ge=0.0, le=1.0)
    upper: float | None = Field(default=None, ge=0.0, le=1.0)
    #: Sensitivity + specificity - 1 of the teacher on this signal (0: its call says nothing).
    youden: float = Field(ge=-1.0, le=1.0)


class WindowFigure(StrictModel):
    """One window's estimate of the bad share, with its sample count and confidence bounds."""

    window: ShortText
    seconds: int = Field(ge=1)
    samples: int = Field(ge=0)
    weighted_samples: float = Field(ge=0.0)
    bad: int = Field(ge=0)
    rate: float = Field(ge=0.0, le=1.0)
    lower: float = Field(ge=0.0, le=1.0)
    upper: float = Field(ge=0.0, le=1.0)
    threshold: float = Field(ge=0.0, le=1.0)
    #: The bias-corrected share (None: no calibration covers the signal) and which estimate the
    #: rule judged (its ``estimate``, or ``raw`` where no calibration exists).
    corrected: CorrectedFigure | None = None
    estimate: Literal["raw", "corrected"] = "raw"


class FailureModeShare(StrictModel):
    """How often a failure mode was tagged in the alert's long window."""

    failure_mode: Identifier
    count: int = Field(ge=0)
    share: float = Field(ge=0.0, le=1.0)


class ModelVersionShare(StrictModel):
    """One production model version among the category's judgments in the alert's long window."""

    model_version: Identifier
    samples: int = Field(ge=0)
    bad: int = Field(ge=0)
    share: float = Field(ge=0.0, le=1.0)


class AlertExample(StrictModel):
    """A judged item that shows what is wrong, with the teacher's rationale."""

    judgment_id: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    event_id: Identifier
    item_id: Identifier
    query: Annotated[str, Field(max_length=2000)]
    item_title: Annotated[str, Field(max_length=2000)]
    grade: int | None
    display: Display | None
    failure_modes: tuple[Identifier, ...] = ()
    rationale: Annotated[str, Field(max_length=2000)]


class Alert(StrictModel):
    """An alert's current state; one per (rule, category) incident, deduplicated by ``dedup_key``."""

    alert_id: Identifier
    dedup_key: Annotated[str, Field(min_length=1, max_length=255)]
    category: ShortText
    rule: Identifier
    description: Annotated[str, Field(max_length=1000)] = ""
    severity: Severity
    state: AlertState
    signal: ShortText
    threshold: float = Field(ge=0.0, le=1.0)
    windows: Annotated[list[WindowFigure], Field(min_length=1, max_length=16)]
    top_failure_modes: Annotated[list[FailureModeShare], Field(max_length=16)] = Field(default_factory=list)
    examples: Annotated[list[AlertExample], Field(max_length=10)] = Field(default_factory=list)
    policy_version: Identifier
    #: Which estimate the rule judged, and the teacher version whose calibration corrected it.
    estimate: Literal["raw", "corrected"] = "raw"
    calibration: Identifier | None = None
    #: A CUSUM rule's statistic at ``updated_at`` and the level it alarms at (absent otherwise).
    statistic: float | None = Field(default=None, ge=0.0)
    alarm_level: float | None = Field(default=None, gt=0.0)
    #: The production ``model_version`` mix behind the window, worst bad share first.
    model_versions: Annotated[list[ModelVersionShare], Field(max_length=16)] = Field(default_factory=list)
    #: The rule's runbook (from the policy) and the dashboard view of this category and time.
    runbook_url: Annotated[str, Field(max_length=2000)] | None = None
    dashboard_url: Annotated[str, Field(max_length=2000)] | None = None
    #: ``started_at`` is the first breaching boundary; a resolved alert says how long it lasted.
    started_at: Timestamp
    fired_at: Timestamp | None = None
    resolved_at: Timestamp | None = None
    duration_seconds: float | None = Field(default=None, ge=0.0)
    updated_at: Timestamp
