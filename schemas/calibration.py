"""A teacher calibration record: how one teacher version's grades relate to golden grades.

``evalloop gate2`` writes one per (teacher version, policy version) as versioned JSON under the
calibration directory (``EVALLOOP_CALIBRATION_DIR``, default ``artifacts/calibration``). It holds
the confusion of teacher grade vs golden grade per (category, query) cell, so every figure can be
recomputed from it, and the figures the windows' bias correction reads: for each binary signal
the teacher's sensitivity and specificity with their cluster-bootstrap (co)variances, pooled and
per category where the counts allow. See docs/calibration.md.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError

from schemas.base import Identifier, SchemaError, ShortText, StrictModel, describe_validation_error

CALIBRATION_FORMAT: Literal["evalloop-calibration"] = "evalloop-calibration"
CALIBRATION_FORMAT_VERSION: Literal[1] = 1
#: Binary signals a calibration corrects, each named by the displays that count as positive.
BINARY_SIGNALS: dict[str, tuple[str, ...]] = {
    "filtered_share": ("filter",),
    "not_shown_share": ("filter", "related"),
    "shown_share": ("show",),
    "related_share": ("related",),
}
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class ConfusionCell(StrictModel):
    """Counts of one (category, query) cell: rows golden grade, columns teacher grade (policy order)."""

    category: ShortText
    query: Annotated[str, Field(min_length=1, max_length=2000)]
    counts: list[list[int]]


class SignalCalibration(StrictModel):
    """A binary signal's teacher accuracy: sensitivity P(teacher positive | golden positive) and
    specificity P(teacher negative | golden negative), with their variances and covariance from a
    bootstrap that resamples whole queries (the golden set is clustered by query)."""

    sensitivity: Probability
    specificity: Probability
    positives: int = Field(ge=0)
    negatives: int = Field(ge=0)
    queries: int = Field(ge=0)
    var_sensitivity: float = Field(ge=0.0)
    var_specificity: float = Field(ge=0.0)
    covariance: float

    @property
    def youden(self) -> float:
        """Sensitivity + specificity - 1: how much the teacher's call says about the truth."""
        return self.sensitivity + self.specificity - 1.0

    @property
    def var_youden(self) -> float:
        """The variance of ``youden`` (same bootstrap)."""
        return max(self.var_sensitivity + self.var_specificity + 2.0 * self.covariance, 0.0)


class CategoryRule(StrictModel):
    """When a category gets its own calibration instead of the pooled one."""

    min_positives: int = Field(ge=1)
    min_negatives: int = Field(ge=1)
    min_queries: int = Field(ge=2)


class CalibrationRecord(StrictModel):
    """The versioned JSON artifact (see the module docstring)."""

    format: Literal["evalloop-calibration"] = CALIBRATION_FORMAT
    format_version: Literal[1] = CALIBRATION_FORMAT_VERSION
    teacher_version: Identifier
    policy_version: Identifier
    grades: list[int]
    #: ``out_of_fold``: a fitted teacher's grades from the fold that did not see the item's query;
    #: ``as_is``: the teacher's grades on the golden set (a teacher not fitted on it).
    source: Literal["out_of_fold", "as_is"]
    method: ShortText
    golden_file: ShortText
    golden_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    #: The golden version graded against (docs/golden.md); None for records written before versions.
    golden_version: Identifier | None = None
    n: int = Field(ge=0)
    queries: int = Field(ge=0)
    bootstrap_replicates: int = Field(ge=0)
    bootstrap_seed: int
    cells: list[ConfusionCell]
    confusion: list[list[int]]
    signals: dict[str, SignalCalibration]
    category_rule: CategoryRule
    per_category: dict[str, dict[str, SignalCalibration]]
    #: Failure modes golden items carry tags for (none: their shares stay uncorrected).
    failure_modes: dict[str, SignalCalibration] = Field(default_factory=dict)

    def for_category(self, category: str, signal: str) -> SignalCalibration | None:
        """The category's own calibration of ``signal`` where it qualified, else the pooled one;
        ``failure_mode_share:<id>`` is the pooled calibration of that failure mode's tag."""
        if signal.startswith(FAILURE_MODE_SIGNAL):
            return self.failure_modes.get(signal[len(FAILURE_MODE_SIGNAL) :])
        own = self.per_category.get(category, {}).get(signal)
        return own if own is not None else self.signals.get(signal)


#: The window-rate key of a failure mode's share, ``failure_mode_share:<id>`` (streams.windows).
FAILURE_MODE_SIGNAL = "failure_mode_share:"


class CalibrationError(SchemaError):
    """A calibration file that cannot be read or does not fit the schema."""


def file_name(teacher_version: str, policy_version: str) -> str:
    """``<teacher version>__<policy version>.json`` with ``:``/``/`` made file-safe."""
    return f"{_safe(teacher_version)}__{_safe(policy_version)}.json"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@+-]", "-", text)


def dump_calibration(record: CalibrationRecord) -> str:
    """Stable JSON text (sorted keys, no timestamp: the same inputs give the same bytes)."""
    return json.dumps(record.model_dump(mode="json"), sort_keys=True, ensure_ascii=False, indent=1) + "\n"


def load_calibration(path: Path) -> CalibrationRecord:
    """Read and validate one record; CalibrationError names the file and the field."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return CalibrationRecord.model_validate(data, strict=False)
    except ValidationError as exc:
        error = describe_validation_error(exc)
        raise CalibrationError(error.field, f"{path}: {error.reason}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CalibrationError("", f"{path}: {exc}") from None


class CalibrationLookup(StrictModel):
    """What ``find_calibration`` found: the record (or None) and one line saying so."""

    record: CalibrationRecord | None
    message: str


def find_calibration(directory: Path, teacher_version: str, policy_version: str) -> CalibrationLookup:
    """The record for exactly this teacher and policy version in ``directory``, or None with the
    reason (no file; or a file that fails to load, named)."""
    path = directory / file_name(teacher_version, policy_version)
    if not path.exists():
        return CalibrationLookup(
            record=None,
            message=(
                f"no calibration for teacher {teacher_version} under policy {policy_version} in {directory}: "
                "windows show raw teacher shares only (write one with `evalloop gate2`)"
            ),
        )
    try:
        record = load_calibration(path)
    except CalibrationError as exc:
        return CalibrationLookup(record=None, message=f"calibration unusable, raw shares only: {exc}")
    if record.teacher_version != teacher_version or record.policy_version != policy_version:
        return CalibrationLookup(record=None, message=f"{path} names another teacher or policy version")
    return CalibrationLookup(
        record=record,
        message=(
            f"calibration {path.name}: {record.n} golden pairs over {record.queries} queries "
            f"({record.source}); corrected shares on"
        ),
    )
