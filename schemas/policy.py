"""The product policy: ONE versioned document driving the rubric, display, sampling, alerts, gates.

Every judgment and alert carries ``Policy.version``. ``load_policy`` validates the whole document
once, including rules that contradict each other, and raises PolicyError naming the field.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from schemas.base import Identifier, SchemaError, ShortText, describe_validation_error
from schemas.judgments import Display

_DURATION = re.compile(r"^(\d+)(s|m|h|d)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: Display decisions from most to least visible; a higher grade may never be less visible.
DISPLAY_ORDER: dict[str, int] = {"show": 2, "related": 1, "filter": 0}


class PolicyError(SchemaError):
    """A policy document that is malformed or contradicts itself."""


@functools.lru_cache(maxsize=1024)
def parse_duration(text: str) -> int:
    """'90s', '5m', '1h', '2d' -> seconds (cached: alert evaluation asks at every boundary)."""
    match = _DURATION.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"duration {text!r} must be a positive number followed by s, m, h or d")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


Duration = Annotated[str, Field(pattern=r"^\d+[smhd]$")]


class _PolicyModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RubricExample(_PolicyModel):
    """A worked example: a request, an item, and why it earns its grade."""

    query: ShortText
    item: Annotated[str, Field(min_length=1, max_length=500)]
    why: Annotated[str, Field(min_length=1, max_length=1000)]


class RubricLevel(_PolicyModel):
    """One grade on the scale: its name, definition, display decision and examples."""

    grade: int = Field(ge=0, le=10)
    name: ShortText
    definition: Annotated[str, Field(min_length=1, max_length=2000)]
    display: Display
    examples: Annotated[list[RubricExample], Field(min_length=1, max_length=10)]


#: Evidence the CPU embedding teacher can read a failure mode from (docs/policy.md, "Detectors"):
#: query far from the item's department and title; same department but another product class;
#: the title's head noun is an accessory word the query lacks; a size/colour/material/number term
#: of the query is missing; any other query term is missing. LLM teachers tag from descriptions.
Detector = Literal[
    "off_topic", "type_differs", "accessory_head", "attribute_term_missing", "query_term_missing"
]


class FailureMode(_PolicyModel):
    """A named way the production model goes wrong, tagged by the teacher."""

    id: Identifier
    description: Annotated[str, Field(min_length=1, max_length=1000)]
    #: The tag is only meaningful on items graded at or below this.
    max_grade: int = Field(ge=0, le=10)
    #: How the embedding teacher detects this mode; None: it never tags it (LLM teachers still do).
    detector: Detector | None = None


class Category(_PolicyModel):
    """A product category monitored on its own, with its own sampling rate."""

    name: ShortText
    description: str = ""
    sample_rate: float | None = Field(default=None, gt=0.0, le=1.0)


class Sampling(_PolicyModel):
    """Which events get judged: a rate per category, and an optional judging budget."""

    default_rate: float = Field(gt=0.0, le=1.0)
    #: Mixed into the event-id hash so two policies sample independent subsets.
    hash_salt: ShortText = "evalloop"
    max_judgments_per_second: float | None = Field(default=None, gt=0.0)
    max_items_per_event: int = Field(default=10, ge=1, le=100)


class BurnWindow(_PolicyModel):
    """A long window that shows the problem is real and a short one that shows it is still on."""

    long: Duration
    short: Duration
    factor: float = Field(default=1.0, gt=0.0)

    @property
    def long_seconds(self) -> int:
        return parse_duration(self.long)

    @property
    def short_seconds(self) -> int:
        return parse_duration(self.short)


Signal = Literal[
    "filtered_share", "not_shown_share", "failure_mode_share", "error_share", "canary_weighted_kappa"
]
#: Windows categories of golden canaries start with this (schemas.judgments.canary_category).
CANARY_PREFIX = "canary:"


class Cusum(_PolicyModel):
    """A CUSUM rule's design: the bad share that is normal, how rarely it may page falsely,
    and the judgments a category gets per hour (sets how many judgments that interval holds)."""

    #: The bad share when all is well (p0); the rule's ``threshold`` is the share to catch (p1).
    in_control: float = Field(gt=0.0, lt=1.0)
    #: Expected time between false alarms per category at ``in_control`` (the ARL0, e.g. "30d").
    false_alarm_every: Duration
    #: Expected judgments per hour in a category (sampled events × items judged).
    judgments_per_hour: float = Field(gt=0.0)

    @property
    def false_alarm_seconds(self) -> int:
        return parse_duration(self.false_alarm_every)


class AlertRule(_PolicyModel):
    """``kind: burn_rate`` (default): fire when the bad share's lower confidence bound exceeds
    ``threshold × factor`` in both windows of a pair, each with at least ``min_samples``;
    resolve when it stays under. ``kind: cusum``: fire when the Bernoulli CUSUM of the bad
    indicator (``in_control`` share against ``threshold``) crosses the level set by
    ``cusum.false_alarm_every``; resolve once it is back to zero (docs/alerts.md)."""

    id: Identifier
    description: str = ""
    kind: Literal["burn_rate", "cusum", "teacher_health"] = "burn_rate"
    signal: Signal
    failure_mode: Identifier | None = None
    threshold: float = Field(gt=0.0, lt=1.0)
    windows: Annotated[list[BurnWindow], Field(default_factory=list, max_length=4)]
    min_samples: int | None = Field(default=None, ge=1)
    cusum: Cusum | None = None
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    #: ``corrected``: judge the bias-corrected share (docs/calibration.md) where a calibration of
    #: the running teacher exists, the raw one otherwise; ``raw``: the teacher's share as it is.
    estimate: Literal["raw", "corrected"] = "raw"
    severity: Literal["page", "ticket"]
    pending_for: Duration | None = None
    resolve_for: Duration = "5m"
    categories: list[ShortText] | None = None
    #: Where on-call reads what to do when this rule pages; copied into every alert it emits.
    runbook_url: Annotated[str, Field(pattern=r"^https?://\S+$", max_length=2000)] | None = None

    @property
    def required_samples(self) -> int:
        """``min_samples`` (a burn-rate rule always has it; 1 otherwise)."""
        return self.min_samples or 1

    @model_validator(mode="after")
    def _kind_complete(self) -> AlertRule:
        if self.kind in ("burn_rate", "teacher_health") and (not self.windows or self.min_samples is None):
            raise ValueError(f"a {self.kind} rule needs windows (at least one pair) and min_samples")
        if (self.kind == "teacher_health") != (self.signal == "canary_weighted_kappa"):
            raise ValueError("kind teacher_health goes with signal canary_weighted_kappa, and only with it")
        if self.kind == "teacher_health" and self.categories is not None:
            raise ValueError("a teacher_health rule watches every teacher version's canaries: no categories")
        if self.kind == "cusum":
            if self.cusum is None or self.windows:
                raise ValueError("a cusum rule needs a cusum block and takes no windows")
            if self.cusum.in_control >= self.threshold:
                raise ValueError(
                    f"cusum.in_control {self.cusum.in_control} must be below the threshold {self.threshold}"
                )
        elif self.cusum is not None:
            raise ValueError("a cusum block belongs to kind: cusum only")
        return self

    @model_validator(mode="after")
    def _windows_ordered(self) -> AlertRule:
        for window in self.windows:
            if window.short_seconds >= window.long_seconds:
                raise ValueError(
                    f"short window {window.short} must be shorter than long window {window.long}"
                )
            if self.threshold * window.factor >= 1.0:
                raise ValueError(
                    f"threshold × factor = {self.threshold * window.factor:.3f} can never be exceeded"
                )
        if (self.signal == "failure_mode_share") != (self.failure_mode is not None):
            raise ValueError("failure_mode is required with signal failure_mode_share, and only with it")
        if self.estimate == "corrected" and (
            self.kind != "burn_rate"
            or self.signal not in ("filtered_share", "not_shown_share", "failure_mode_share")
        ):
            raise ValueError(
                "estimate: corrected needs kind burn_rate and signal filtered_share, not_shown_share or "
                "failure_mode_share (the shares a calibration corrects)"
            )
        return self


class Gate1Thresholds(_PolicyModel):
    """Human agreement bar: κ above ``clear`` is clear, below ``ambiguous`` is ambiguous."""

    clear: float = Field(default=0.8, gt=0.0, le=1.0)
    ambiguous: float = Field(default=0.6, gt=0.0, le=1.0)


class Gate2Thresholds(_PolicyModel):
    """Teacher agreement bar: the weighted κ against the golden set a release must reach."""

    min_kappa: float = Field(default=0.6, gt=-1.0, le=1.0)
    weights: Literal["quadratic", "linear", "none"] = "quadratic"
    #: Too little evidence cannot PASS: fewer labelled pairs or queries than this is INSUFFICIENT.
    min_pairs: int = Field(default=200, ge=1)
    min_queries: int = Field(default=10, ge=1)


class Gates(_PolicyModel):
    gate1: Gate1Thresholds = Gate1Thresholds()
    gate2: Gate2Thresholds = Gate2Thresholds()


class CanarySplit(_PolicyModel):
    """The golden items kept out of fitting: a fitted teacher never sees them, so they can check
    it live (``canaries``) and calibrate it as they are. An item is a canary when
    sha256(salt + id) maps below ``share`` (stable as the file grows)."""

    share: float = Field(default=0.0, ge=0.0, lt=1.0)
    salt: ShortText = "canary"


class Canaries(_PolicyModel):
    """Golden canaries fed through the live path (docs/canaries.md): after each sampled event,
    ``rate`` canary items of the golden set's canary split on average (the whole part always, one
    more with the fractional part's probability, by a salted hash of the event id) are judged
    too, at the event's time."""

    rate: float = Field(gt=0.0, le=10.0)
    salt: ShortText = "canaries"


class GoldenSet(_PolicyModel):
    """The golden set the policy is measured against, and how imported labels map to grades."""

    file: Path
    label_map: dict[ShortText, int] = Field(default_factory=dict)
    canary: CanarySplit = CanarySplit()
    #: Golden items (with written reasons, never canaries) shown per grade in an LLM teacher's
    #: prompt, after the rubric (docs/llm-teacher.md); 0 shows none.
    prompt_examples: int = Field(default=1, ge=0, le=5)


class OpenAITeacher(_PolicyModel):
    base_url: str = "http://127.0.0.1:8000/v1"
    model: ShortText = "teacher"
    api_key_env: ShortText = "EVALLOOP_OPENAI_API_KEY"
    timeout_s: float = Field(default=30.0, gt=0.0)
    max_retries: int = Field(default=4, ge=0, le=20)
    max_tokens: int = Field(default=256, ge=16, le=4096)


class VLLMTeacher(_PolicyModel):
    model: ShortText = "Qwen/Qwen2.5-7B-Instruct"
    gpu_memory_utilization: float = Field(default=0.85, gt=0.0, le=1.0)
    max_model_len: int = Field(default=4096, ge=256)


class TeacherConfig(_PolicyModel):
    """Which teacher grades the stream, and its backend settings."""

    backend: Literal["embedding", "openai", "vllm"] = "embedding"
    artifact: Path = Path("artifacts/teacher-embedding.json")
    #: Other policy versions the embedding artifact may be used under (a bump that changed rules or
    #: sampling, not the rubric): the artifact refuses any policy version not its own or listed here.
    compatible_versions: list[Identifier] = Field(default_factory=list, max_length=100)
    rationale_max_chars: int = Field(default=400, ge=40, le=2000)
    openai: OpenAITeacher = OpenAITeacher()
    vllm: VLLMTeacher = VLLMTeacher()


class Policy(_PolicyModel):
    """The whole product policy. See docs/policy.md."""

    version: Identifier
    name: ShortText
    description: str = ""
    rubric: Annotated[list[RubricLevel], Field(min_length=2, max_length=11)]
    failure_modes: Annotated[list[FailureMode], Field(max_length=64)]
    categories: Annotated[list[Category], Field(min_length=1, max_length=500)]
    sampling: Sampling
    alerts: Annotated[list[AlertRule], Field(max_length=64)]
    gates: Gates = Gates()
    golden: GoldenSet
    teacher: TeacherConfig = TeacherConfig()
    canaries: Canaries | None = None

    @field_validator("rubric")
    @classmethod
    def _rubric_contiguous(cls, levels: list[RubricLevel]) -> list[RubricLevel]:
        grades = sorted(level.grade for level in levels)
        if len(set(grades)) != len(grades):
            raise ValueError(f"grades must be unique, got {grades}")
        if grades != list(range(grades[0], grades[-1] + 1)):
            raise ValueError(f"grades must be contiguous, got {grades}")
        by_grade = sorted(levels, key=lambda level: level.grade)
        for lower, higher in itertools.pairwise(by_grade):
            if DISPLAY_ORDER[higher.display] < DISPLAY_ORDER[lower.display]:
                raise ValueError(
                    f"grade {higher.grade} displays as {higher.display!r} but lower grade "
                    f"{lower.grade} as {lower.display!r}: a better grade cannot be less visible"
                )
        return sorted(levels, key=lambda level: level.grade, reverse=True)

    @model_validator(mode="after")
    def _cross_references(self) -> Policy:
        self._check_failure_modes()
        self._check_categories()
        self._check_golden_labels()
        if self.gates.gate1.ambiguous > self.gates.gate1.clear:
            raise ValueError("gates.gate1.ambiguous must not exceed gates.gate1.clear")
        health = [rule.id for rule in self.alerts if rule.kind == "teacher_health"]
        if health and (self.canaries is None or self.golden.canary.share == 0):
            raise ValueError(
                f"alerts {health}: a teacher_health rule needs canaries (a `canaries:` block and a "
                "golden.canary split with share > 0)"
            )
        return self

    def _check_failure_modes(self) -> None:
        ids = [mode.id for mode in self.failure_modes]
        if len(set(ids)) != len(ids):
            raise ValueError(f"failure_modes: duplicate ids in {ids}")
        for mode in self.failure_modes:
            if mode.max_grade not in self.grades:
                raise ValueError(f"failure_modes.{mode.id}.max_grade {mode.max_grade} is not a rubric grade")
        for rule in self.alerts:
            if rule.failure_mode is not None and rule.failure_mode not in ids:
                raise ValueError(f"alerts.{rule.id}: unknown failure_mode {rule.failure_mode!r}")

    def _check_categories(self) -> None:
        names = [category.name for category in self.categories]
        if len(set(names)) != len(names):
            raise ValueError("categories: duplicate names")
        rule_ids = [rule.id for rule in self.alerts]
        if len(set(rule_ids)) != len(rule_ids):
            raise ValueError(f"alerts: duplicate rule ids in {rule_ids}")
        for rule in self.alerts:
            for name in rule.categories or []:
                if name not in names:
                    raise ValueError(f"alerts.{rule.id}: unknown category {name!r}")

    def _check_golden_labels(self) -> None:
        for label, grade in self.golden.label_map.items():
            if grade not in self.grades:
                raise ValueError(f"golden.label_map.{label} = {grade} is not a rubric grade")

    @property
    def grades(self) -> list[int]:
        """Rubric grades, ascending."""
        return sorted(level.grade for level in self.rubric)

    @property
    def min_grade(self) -> int:
        return min(self.grades)

    @property
    def max_grade(self) -> int:
        return max(self.grades)

    def level(self, grade: int) -> RubricLevel:
        """The rubric level of ``grade``; KeyError for a grade off the scale."""
        for level in self.rubric:
            if level.grade == grade:
                return level
        raise KeyError(f"grade {grade} is not on the rubric scale {self.grades}")

    def display_for(self, grade: int) -> Display:
        """What the product does with an item of this grade: show, show as related, or filter."""
        return self.level(grade).display

    def failure_mode_ids(self) -> list[str]:
        return [mode.id for mode in self.failure_modes]

    def identity(self) -> dict[str, Any]:
        """What a teacher must serve to grade for this policy (the Serve ``info`` carries it)."""
        return {
            "policy_name": self.name,
            "policy_version": self.version,
            "grades": self.grades,
            "failure_modes": sorted(self.failure_mode_ids()),
        }

    def sample_rate(self, category: str) -> float:
        """The category's sampling rate, or the default for categories the policy doesn't list."""
        for known in self.categories:
            if known.name == category and known.sample_rate is not None:
                return known.sample_rate
        return self.sampling.default_rate

    def rules_for(self, category: str) -> list[AlertRule]:
        """Alert rules that apply to ``category``: the teacher_health rules to canary categories,
        the others to production categories."""
        if category.startswith(CANARY_PREFIX):
            return [rule for rule in self.alerts if rule.kind == "teacher_health"]
        return [
            rule
            for rule in self.alerts
            if rule.kind != "teacher_health" and (rule.categories is None or category in rule.categories)
        ]


def identity_mismatch(
    served: Mapping[str, Any], policy: Policy, allow_version_bump: bool = False
) -> str | None:
    """Why a teacher serving ``served`` (its info) cannot grade for ``policy``, or None.

    Name, scale and failure-mode ids must match; a different version only with
    ``allow_version_bump`` (same name, scale and taxonomy: a compatible bump).
    """
    wanted = policy.identity()
    for key in ("policy_name", "grades", "failure_modes"):
        got = sorted(served.get(key) or []) if key == "failure_modes" else served.get(key)
        if got != wanted[key]:
            return f"the teacher serves {key} {got!r}, the policy has {wanted[key]!r}"
    if served.get("policy_version") != policy.version and not allow_version_bump:
        return (
            f"the teacher serves policy version {served.get('policy_version')!r}, the worker runs "
            f"{policy.version!r} (same name, scale and taxonomy: --allow-policy-version-bump accepts it)"
        )
    return None


def parse_policy(data: Any) -> Policy:
    """Validate an already-parsed policy document."""
    if not isinstance(data, dict):
        raise PolicyError("<document>", "a policy must be a YAML mapping")
    try:
        return Policy.model_validate(data)
    except ValidationError as error:
        described = describe_validation_error(error)
        raise PolicyError(described.field, described.reason) from None


def load_policy(path: Path | str) -> Policy:
    """Read and validate a policy YAML file; PolicyError names the bad field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise PolicyError("<file>", f"cannot read {path}: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise PolicyError("<yaml>", f"{path} is not valid YAML: {error}") from None
    return parse_policy(data)
