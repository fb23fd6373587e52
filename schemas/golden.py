"""The golden set's records: (query, item) pairs with a grade on the policy's scale and the reason
for it, and the policy's canary split of them. Shared by judges (fitting, Gate 2, calibration)
and streams (live canaries); the checks and teacher requests are in ``judges.golden``."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import Field, ValidationError

from schemas.base import Attributes, Identifier, ShortText, StrictModel, describe_validation_error
from schemas.jsonl import iter_objects, load_jsonl, require_some
from schemas.policy import Policy
from schemas.settings import resolve_path

Text = Annotated[str, Field(min_length=1, max_length=2000)]


class GoldenProduct(StrictModel):
    """The item as a rater saw it: title, category path and attributes."""

    item_id: Identifier
    title: Text
    category: Annotated[str, Field(max_length=500)] | None = None
    description: Annotated[str, Field(max_length=8000)] | None = None
    attributes: Attributes = Field(default_factory=dict)


class Adjudication(StrictModel):
    """Where the policy's author overruled an imported label: the label as imported, the grade it
    maps to, and why the policy grades the item otherwise (the item's ``grade``)."""

    original_label: ShortText | None = None
    original_grade: int
    reason: Text


class Provenance(StrictModel):
    """Who wrote an item's reason, when, and under which policy version."""

    author: ShortText
    date: date
    policy_version: Identifier
    #: How the reason was written, e.g. "per-query spec (data/wands/golden_specs.yaml)".
    method: ShortText | None = None


AuditAction = Literal["author", "accept", "regrade", "rewrite"]


class AuditEntry(StrictModel):
    """One change to an item: the golden version it made, who, when and what."""

    golden_version: Identifier
    at: datetime
    by: ShortText
    action: AuditAction
    from_grade: int | None = None
    to_grade: int | None = None
    note: Annotated[str, Field(max_length=2000)] = ""


class GoldenItem(StrictModel):
    """One labelled (query, item) pair. ``grade`` is on the policy scale (checked by check_golden);
    where an adjudication overruled the imported label, ``grade`` is the adjudicated one."""

    id: Identifier
    query: Text
    item: GoldenProduct
    #: Coarse category the pair is reported under (per-category kappa).
    category: ShortText
    grade: int
    label: ShortText | None = None
    reason: Annotated[str, Field(max_length=2000)] = ""
    #: True when the label was imported from a dataset that publishes no reasons.
    reason_imported: bool = False
    policy_version: Identifier
    #: Failure modes of the policy's taxonomy that the reason names (each allows this grade).
    failure_modes: list[Identifier] = Field(default_factory=list)
    adjudication: Adjudication | None = None
    provenance: Provenance | None = None
    #: The golden version this item belongs to, ``<policy version>+g<N>`` (docs/golden.md).
    golden_version: Identifier | None = None
    audit: list[AuditEntry] = Field(default_factory=list)

    @property
    def original_grade(self) -> int:
        """The grade before any adjudication (the imported label's grade, else ``grade``)."""
        return self.adjudication.original_grade if self.adjudication else self.grade


class GoldenFormatError(ValueError):
    """A golden file that cannot be parsed; the message names the file and 1-based line."""


def load_golden(path: str | Path) -> list[GoldenItem]:
    """Read every item of the golden JSONL file; raise GoldenFormatError on any bad line."""
    return load_jsonl(path, GoldenFormatError, "golden", parse_golden)


def parse_golden(lines: Iterable[str], source: str = "<golden>") -> list[GoldenItem]:
    """Parse JSONL lines (blank lines skipped) into golden items."""
    items = [_item(record, where) for where, record in iter_objects(lines, source, GoldenFormatError)]
    return require_some(items, source, GoldenFormatError, "golden items")


def _item(record: dict[str, Any], where: str) -> GoldenItem:
    try:
        # strict=False: JSON has no tuples and ints arrive as ints; nothing else is coerced here.
        return GoldenItem.model_validate(record, strict=False)
    except ValidationError as exc:
        raise GoldenFormatError(f"{where}: {describe_validation_error(exc)}") from None


def is_canary(item_id: str, policy: Policy) -> bool:
    """Whether the golden item ``item_id`` belongs to the policy's canary split."""
    split = policy.golden.canary
    digest = hashlib.sha256(f"{split.salt}{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < split.share


class GoldenSplit(NamedTuple):
    """The items a teacher may be fitted on and the canary items it never is."""

    fit: list[GoldenItem]
    canaries: list[GoldenItem]


def split_golden(items: Sequence[GoldenItem], policy: Policy) -> GoldenSplit:
    """Split ``items`` by ``policy.golden.canary`` (order kept in both parts)."""
    canaries = [item for item in items if is_canary(item.id, policy)]
    return GoldenSplit([item for item in items if not is_canary(item.id, policy)], canaries)


def load_canaries(policy: Policy) -> list[GoldenItem]:
    """The canary split of the policy's golden file, when the policy feeds canaries (else [])."""
    if policy.canaries is None or policy.golden.canary.share == 0:
        return []
    return split_golden(load_golden(resolve_path(policy.golden.file)), policy).canaries


#: The version reported for a golden file whose items carry none (written before versions).
UNVERSIONED = "unversioned"


def golden_version_of(items: Sequence[GoldenItem]) -> str:
    """The golden version ``items`` belong to (check_golden rejects a file that mixes versions)."""
    versions = sorted({item.golden_version or UNVERSIONED for item in items})
    return versions[0] if len(versions) == 1 else "mixed: " + ", ".join(versions)
