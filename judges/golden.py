"""The golden set: (query, item) pairs with a grade on the policy's scale and the reason for it.

One JSON object per line (see docs/golden.md)::

    {"id": "wands-q10-p28208", "query": "king poster bed",
     "item": {"item_id": "28208", "title": "venice solid wood four poster bed",
              "category": "Furniture / Bedroom Furniture / ...", "attributes": {"product_class": "Beds"}},
     "category": "Furniture & Office", "grade": 4, "label": "Exact",
     "reason": "imported WANDS label 'Exact' (no rater reason published)", "reason_imported": true,
     "policy_version": "product-search-2026.11.1"}

``load_golden`` fails on the first malformed line, naming the file and line. ``check_golden``
checks a parsed set against a policy and reports every problem at once. Teachers are fitted on
the golden set and Gate 2 scores them on it, so items become ``JudgeRequest`` s through
``golden_requests`` — the same type production sends.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NamedTuple

from pydantic import Field, ValidationError

from judges.base import JudgeRequest
from judges.jsonl import iter_objects, load_jsonl, require_some
from schemas.base import Attributes, Identifier, ShortText, StrictModel, describe_validation_error
from schemas.events import Item
from schemas.policy import Policy

#: Golden pairs have no real event time; a fixed one keeps judgment ids and output reproducible.
GOLDEN_EVENT_TIME = datetime(2024, 6, 1, tzinfo=UTC)

Text = Annotated[str, Field(min_length=1, max_length=2000)]


class GoldenProduct(StrictModel):
    """The item as a rater saw it: title, category path and attributes."""

    item_id: Identifier
    title: Text
    category: Annotated[str, Field(max_length=500)] | None = None
    description: Annotated[str, Field(max_length=8000)] | None = None
    attributes: Attributes = Field(default_factory=dict)


class GoldenItem(StrictModel):
    """One labelled (query, item) pair. ``grade`` is on the policy scale (checked by check_golden)."""

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


def dump_golden(items: Sequence[GoldenItem]) -> str:
    """Items as JSONL text, one compact line each, stable key order (byte-reproducible)."""
    lines = [
        json.dumps(item.model_dump(mode="json"), ensure_ascii=False, separators=(",", ":")) for item in items
    ]
    return "\n".join(lines) + "\n"


@dataclass
class GoldenReport:
    """What check_golden found: errors fail the check, warnings are printed only."""

    n: int
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    grades: dict[int, int] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    categories: dict[str, int] = field(default_factory=dict)
    queries: int = 0
    imported_reasons: int = 0

    @property
    def ok(self) -> bool:
        """True when there are no errors."""
        return not self.errors


MAX_LISTED = 20  # problems listed per kind; the rest are counted


def check_golden(items: Sequence[GoldenItem], policy: Policy) -> GoldenReport:
    """Check items against the policy: grade on the scale, reason present unless imported, no
    duplicate ids (errors); a different policy version (warning — see docs/golden.md)."""
    report = GoldenReport(
        n=len(items),
        grades=dict(sorted(Counter(item.grade for item in items).items())),
        labels=dict(sorted(Counter(item.label or "<none>" for item in items).items())),
        categories=dict(sorted(Counter(item.category for item in items).items())),
        queries=len({item.query for item in items}),
        imported_reasons=sum(item.reason_imported for item in items),
    )
    scale = set(policy.grades)
    _collect(
        report.errors,
        "grade off the policy scale " + str(policy.grades),
        [f"{i.id} (grade {i.grade})" for i in items if i.grade not in scale],
    )
    _collect(
        report.errors,
        "missing reason (required unless reason_imported)",
        [i.id for i in items if not i.reason.strip() and not i.reason_imported],
    )
    counts = Counter(item.id for item in items)
    _collect(report.errors, "duplicate id", [f"{k} (x{n})" for k, n in counts.items() if n > 1])
    versions = Counter(item.policy_version for item in items if item.policy_version != policy.version)
    for version, n in sorted(versions.items()):
        # A warning: a policy revision need not invalidate old labels (the scale check above
        # catches the change that would); a person decides whether to relabel.
        report.warnings.append(f"{n} item(s) labelled under policy {version}, not {policy.version}")
    missing_grades = [g for g in policy.grades if g not in report.grades]
    if missing_grades:
        report.warnings.append(f"no items with grade(s) {missing_grades}: kappa cannot test them")
    return report


def _collect(sink: list[str], kind: str, offenders: list[str]) -> None:
    if offenders:
        shown = ", ".join(offenders[:MAX_LISTED])
        more = f" ... and {len(offenders) - MAX_LISTED} more" if len(offenders) > MAX_LISTED else ""
        sink.append(f"{len(offenders)} item(s) with {kind}: {shown}{more}")


def golden_request(item: GoldenItem) -> JudgeRequest:
    """The JudgeRequest a teacher sees for a golden item (event id = golden id, rank 1)."""
    product = item.item
    return JudgeRequest(
        event_id=item.id,
        category=item.category,
        event_time=GOLDEN_EVENT_TIME,
        query=item.query,
        item=Item(
            item_id=product.item_id,
            title=product.title,
            description=product.description,
            category=product.category,
            attributes=product.attributes,
            rank=1,
        ),
    )


def golden_requests(items: Sequence[GoldenItem]) -> list[JudgeRequest]:
    """JudgeRequests for ``items``, in order."""
    return [golden_request(item) for item in items]


def format_report(report: GoldenReport, source: str) -> str:
    """The human-readable summary printed by ``evalloop golden check``."""
    lines = [
        f"golden set {source}",
        f"  items       {report.n} over {report.queries} queries",
        f"  grades      {_counts(report.grades)}",
        f"  labels      {_counts(report.labels)}",
        f"  categories  {_counts(report.categories)}",
        f"  reasons     {report.n - report.imported_reasons} written, {report.imported_reasons} imported",
    ]
    lines += [f"  WARNING {w}" for w in report.warnings]
    lines += [f"  ERROR {e}" for e in report.errors]
    lines.append("  OK" if report.ok else f"  FAILED ({len(report.errors)} error(s))")
    return "\n".join(lines)


def _counts(counts: dict[Any, int]) -> str:
    return ", ".join(f"{key}: {n}" for key, n in counts.items()) or "-"


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
