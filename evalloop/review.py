"""The golden review desk (I/O edge of ``judges.golden_review``): the last Gate 2's
disagreements, written by ``evalloop gate2`` as a review file, joined with the current golden
version; an edit submitted from the dashboard's ``/review`` page writes the next golden version
as a new file beside the current one and becomes the version the page shows next.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from judges.gate2 import Disagreement
from judges.golden import GoldenFormatError, GoldenItem, dump_golden, golden_version_of, load_golden
from judges.golden_diff import diff_golden, format_diff
from judges.golden_review import (
    ACTIONS,
    ReviewAction,
    ReviewEdit,
    ReviewError,
    apply_edit,
    next_golden_version,
)
from schemas.policy import Policy

#: Where ``evalloop gate2`` leaves its disagreements and the dashboard looks for them.
DEFAULT_REVIEW_FILE = Path(".evalloop/gate2-review.json")
REVIEW_FORMAT = "evalloop-gate2-review/1"


def write_review_file(
    path: Path,
    disagreements: Sequence[Disagreement],
    golden_path: Path,
    items: Sequence[GoldenItem],
    teacher_version: str,
) -> None:
    """Write the review file: every disagreement, worst first, and what was compared."""
    body = {
        "format": REVIEW_FORMAT,
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "golden_file": str(golden_path),
        "golden_version": golden_version_of(items),
        "teacher_version": teacher_version,
        "disagreements": [asdict(d) for d in disagreements],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


@dataclass(frozen=True)
class ReviewRow:
    """One disagreement as the page shows it: the item now, and what the teacher said."""

    item: GoldenItem
    teacher_grade: int
    teacher_rationale: str


@dataclass
class ReviewView:
    """Everything the review page shows."""

    golden_path: Path
    golden_version: str
    next_version: str
    review_source: str
    teacher_version: str
    rows: list[ReviewRow] = field(default_factory=list)
    problem: str | None = None
    gate1: dict[str, Any] | None = None


@dataclass(frozen=True)
class Written:
    """The result of an edit: the new version's file and what changed."""

    path: Path
    version: str
    diff: str


class ReviewDesk:
    """The review page's state: the current golden file (moves on with each edit)."""

    def __init__(
        self,
        policy: Policy,
        golden_path: Path,
        review_file: Path,
        author: str,
        gate1: Callable[[], dict[str, Any] | None] = lambda: None,
        writable: bool = True,
    ) -> None:
        self.policy, self.golden_path, self.review_file = policy, golden_path, review_file
        self.author, self.gate1, self.writable = author, gate1, writable
        self._lock = threading.Lock()

    def view(self) -> ReviewView:
        """The page's content; a missing or unreadable review file is a message, not an error."""
        with self._lock:
            items = load_golden(self.golden_path)
            version = golden_version_of(items)
            view = ReviewView(
                self.golden_path, version, next_golden_version(items, self.policy), str(self.review_file), ""
            )
        view.gate1 = self.gate1()
        try:
            review = json.loads(self.review_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            view.problem = (
                f"no Gate 2 review file at {self.review_file} ({error}); run `evalloop gate2` first"
            )
            return view
        view.teacher_version = str(review.get("teacher_version", ""))
        view.rows = _rows(review.get("disagreements", []), {item.id: item for item in items})
        return view

    def submit(self, form: Mapping[str, str]) -> Written:
        """Apply one edit from the page's form and write the next version (raises ReviewError)."""
        if not self.writable:
            raise ReviewError(
                "edits are off: the dashboard listens beyond loopback; restart it with "
                "--allow-review-edits behind your own access control to write golden versions"
            )
        with self._lock:
            try:
                items = load_golden(self.golden_path)
            except GoldenFormatError as error:
                raise ReviewError(str(error)) from None
            edit = _edit(form, self.author)
            new_items = apply_edit(items, edit, self.policy, datetime.now(UTC).replace(microsecond=0))
            version = golden_version_of(new_items)
            path = self.golden_path.with_name(f"golden.{version}.jsonl")
            if path.exists():
                raise ReviewError(f"{path} already exists: the version was written before; reload the page")
            path.write_text(dump_golden(new_items), encoding="utf-8")
            diff = format_diff(diff_golden(items, new_items), str(self.golden_path), str(path), limit=5)
            self.golden_path = path
            return Written(path, version, diff)


def _rows(records: Sequence[Any], items: Mapping[str, GoldenItem]) -> list[ReviewRow]:
    rows = []
    for record in records:
        item = items.get(str(record.get("id"))) if isinstance(record, dict) else None
        if item is None or not isinstance(record.get("teacher_grade"), int):
            continue  # an item no longer in this version, or a record this page cannot read
        if record["teacher_grade"] == item.grade:
            continue  # settled by an earlier edit
        rows.append(ReviewRow(item, record["teacher_grade"], str(record.get("teacher_rationale", ""))))
    return rows


def _edit(form: Mapping[str, str], author: str) -> ReviewEdit:
    action = form.get("action", "")
    if action not in ACTIONS:
        raise ReviewError(f"unknown action {action!r}: one of {', '.join(ACTIONS)}")
    chosen: ReviewAction = action
    return ReviewEdit(
        item_id=form.get("item_id", ""),
        action=chosen,
        by=(form.get("by") or author).strip() or author,
        reason=form.get("reason", ""),
        grade=_int(form.get("grade")),
        teacher_grade=_int(form.get("teacher_grade")),
        teacher_rationale=form.get("teacher_rationale", ""),
    )


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.strip().lstrip("-").isdigit() else None
