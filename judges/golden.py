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
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from judges.base import JudgeRequest
from schemas.events import Item
from schemas.golden import (
    UNVERSIONED,
    Adjudication,
    AuditEntry,
    GoldenFormatError,
    GoldenItem,
    GoldenProduct,
    GoldenSplit,
    Provenance,
    golden_version_of,
    is_canary,
    load_golden,
    parse_golden,
    split_golden,
)
from schemas.policy import FailureMode, Policy

__all__ = [
    "UNVERSIONED",
    "Adjudication",
    "AuditEntry",
    "GoldenFormatError",
    "GoldenItem",
    "GoldenProduct",
    "GoldenSplit",
    "Provenance",
    "golden_version_of",
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
    golden_version: str = UNVERSIONED
    #: Items whose imported label the author overruled, by (original grade, grade).
    adjudications: dict[str, int] = field(default_factory=dict)

    @property
    def adjudicated(self) -> int:
        """How many items carry an adjudication."""
        return sum(self.adjudications.values())

    @property
    def ok(self) -> bool:
        """True when there are no errors."""
        return not self.errors


MAX_LISTED = 20  # problems listed per kind; the rest are counted


def check_golden(items: Sequence[GoldenItem], policy: Policy) -> GoldenReport:
    """Check items against the policy (errors): grade on the scale; a reason present unless
    imported, not copied onto items of other text, not contradicting the grade; failure modes
    known and allowing the grade; adjudications consistent; one golden version; no duplicate ids.
    A different policy version is a warning (see docs/golden.md)."""
    adjudicated = Counter(
        f"{item.adjudication.original_grade}->{item.grade}" for item in items if item.adjudication
    )
    report = GoldenReport(
        n=len(items),
        grades=dict(sorted(Counter(item.grade for item in items).items())),
        labels=dict(sorted(Counter(item.label or "<none>" for item in items).items())),
        categories=dict(sorted(Counter(item.category for item in items).items())),
        queries=len({item.query for item in items}),
        imported_reasons=sum(item.reason_imported for item in items),
        golden_version=golden_version_of(items),
        adjudications=dict(sorted(adjudicated.items())),
    )
    if len({item.golden_version for item in items}) > 1:
        report.errors.append(f"items from more than one golden version ({report.golden_version})")
    _check_reasons(items, policy, report.errors)
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


#: A reason may open with its grade, "2 Related: ..."; the check holds it to the item's grade.
_OPENING = re.compile(r"^\s*(\d+)\s+([A-Za-z][\w-]*)\s*:")


def _check_reasons(items: Sequence[GoldenItem], policy: Policy, errors: list[str]) -> None:
    _collect(errors, "a reason copied onto items of other text", _duplicated_reasons(items))
    modes = {mode.id: mode for mode in policy.failure_modes}
    contradictions = [p for i in items for p in _contradictions(i, policy, modes)]
    _collect(errors, "a reason contradicting the grade", contradictions)
    _collect(
        errors, "an inconsistent adjudication", [p for i in items for p in _adjudication_problems(i, policy)]
    )


def _duplicated_reasons(items: Sequence[GoldenItem]) -> list[str]:
    """Ids whose written reason is shared with an item of another (query, title): a reason
    copied rather than written for the item."""
    texts: dict[str, set[tuple[str, str]]] = defaultdict(set)
    owners: dict[str, list[str]] = defaultdict(list)
    for item in items:
        if item.reason.strip() and not item.reason_imported:
            texts[item.reason.strip()].add((item.query, item.item.title))
            owners[item.reason.strip()].append(item.id)
    return [i for reason, ids in owners.items() if len(texts[reason]) > 1 for i in ids]


def _contradictions(item: GoldenItem, policy: Policy, modes: Mapping[str, FailureMode]) -> list[str]:
    found = []
    opening = _OPENING.match(item.reason)
    if opening and (int(opening[1]), opening[2]) != (item.grade, _level_name(policy, item.grade)):
        found.append(f"{item.id} (reason says '{opening[1]} {opening[2]}', grade is {item.grade})")
    named = set(item.failure_modes) | {m for m in modes if re.search(rf"\b{re.escape(m)}\b", item.reason)}
    for mode_id in sorted(named):
        mode = modes.get(mode_id)
        if mode is None:
            found.append(f"{item.id} (failure mode '{mode_id}' is not in the policy)")
        elif item.grade > mode.max_grade:
            found.append(
                f"{item.id} ({mode_id} allows at most grade {mode.max_grade}, grade is {item.grade})"
            )
    return found


def _level_name(policy: Policy, grade: int) -> str:
    return policy.level(grade).name if grade in policy.grades else "?"


def _adjudication_problems(item: GoldenItem, policy: Policy) -> list[str]:
    adjudication = item.adjudication
    if adjudication is None:
        return []
    found = []
    if adjudication.original_grade == item.grade:
        found.append(f"{item.id} (adjudicated to the grade it already had, {item.grade})")
    mapped = policy.golden.label_map.get(adjudication.original_label or "")
    if mapped is not None and mapped != adjudication.original_grade:
        found.append(
            f"{item.id} (original label '{adjudication.original_label}' maps to {mapped}, "
            f"not {adjudication.original_grade})"
        )
    return found


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
        f"  version     {report.golden_version}",
        f"  reasons     {report.n - report.imported_reasons} written, {report.imported_reasons} imported",
        f"  adjudicated {report.adjudicated} (original grade -> grade: {_counts(report.adjudications)})",
    ]
    lines += [f"  WARNING {w}" for w in report.warnings]
    lines += [f"  ERROR {e}" for e in report.errors]
    lines.append("  OK" if report.ok else f"  FAILED ({len(report.errors)} error(s))")
    return "\n".join(lines)


def _counts(counts: dict[Any, int]) -> str:
    return ", ".join(f"{key}: {n}" for key, n in counts.items()) or "-"
