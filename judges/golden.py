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

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from judges.base import JudgeRequest
from schemas.events import Item
from schemas.golden import (
    GoldenFormatError,
    GoldenItem,
    GoldenProduct,
    GoldenSplit,
    is_canary,
    load_golden,
    parse_golden,
    split_golden,
)
from schemas.policy import Policy

__all__ = [
    "GoldenFormatError",
    "GoldenItem",
    "GoldenProduct",
    "GoldenSplit",
    "is_canary",
    "load_golden",
    "parse_golden",
    "split_golden",
]

#: Golden pairs have no real event time; a fixed one keeps judgment ids and output reproducible.
GOLDEN_EVENT_TIME = datetime(2024, 6, 1, tzinfo=UTC)


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
