"""What changed between two versions of a golden set (pure): items added and removed, and per
item kept, the grade, the label, the reason and its provenance (``evalloop golden diff``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel

from schemas.golden import GoldenItem

#: The fields compared for an item kept in both versions, in the order they are reported.
COMPARED = (
    "grade",
    "adjudication",
    "reason",
    "failure_modes",
    "audit",
    "label",
    "reason_imported",
    "provenance",
    "golden_version",
    "policy_version",
    "query",
    "category",
)


@dataclass(frozen=True)
class FieldChange:
    """One field of one item, before and after."""

    item_id: str
    field: str
    old: object
    new: object


@dataclass
class GoldenDiff:
    """Added, removed and changed items between an old and a new golden file."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changes: list[FieldChange] = field(default_factory=list)

    def changed(self, name: str) -> list[FieldChange]:
        """The changes to field ``name``."""
        return [change for change in self.changes if change.field == name]

    @property
    def empty(self) -> bool:
        """True when the two versions hold the same items with the same fields."""
        return not (self.added or self.removed or self.changes)


def diff_golden(old: Sequence[GoldenItem], new: Sequence[GoldenItem]) -> GoldenDiff:
    """Compare by item id; the item's product text is compared as a whole (``item``)."""
    before, after = {item.id: item for item in old}, {item.id: item for item in new}
    result = GoldenDiff(added=sorted(set(after) - set(before)), removed=sorted(set(before) - set(after)))
    for item_id in sorted(set(before) & set(after)):
        a, b = before[item_id], after[item_id]
        for name in COMPARED:
            if getattr(a, name) != getattr(b, name):
                result.changes.append(FieldChange(item_id, name, getattr(a, name), getattr(b, name)))
        if a.item != b.item:
            result.changes.append(FieldChange(item_id, "item", a.item.title, b.item.title))
    return result


def format_diff(diff: GoldenDiff, old_name: str, new_name: str, limit: int = 50) -> str:
    """The diff as text: counts, then each change (``limit`` per field)."""
    fields = [name for name in (*COMPARED, "item") if diff.changed(name)]
    summary = ", ".join(f"{name} {len(diff.changed(name))}" for name in fields) or "no field changed"
    lines = [f"golden diff {old_name} → {new_name}: +{len(diff.added)} -{len(diff.removed)} items; {summary}"]
    lines += [f"  + {item_id}" for item_id in diff.added[:limit]]
    lines += [f"  - {item_id}" for item_id in diff.removed[:limit]]
    for name in fields:
        for change in diff.changed(name)[:limit]:
            lines.append(f"  {change.item_id} {name}: {_shown(change.old)} → {_shown(change.new)}")
        if len(diff.changed(name)) > limit:
            lines.append(f"  … {len(diff.changed(name)) - limit} more {name} changes")
    return "\n".join(lines)


def _shown(value: object) -> str:
    """A field value as one line: models as compact JSON; an audit trail by its newest entry."""
    if isinstance(value, BaseModel):
        return json.dumps(value.model_dump(mode="json"), ensure_ascii=False, separators=(",", ":"))
    if isinstance(value, list) and value and isinstance(value[-1], BaseModel):
        more = f" (+{len(value) - 1} earlier)" if len(value) > 1 else ""
        return _shown(value[-1]) + more
    return repr(value)
