"""What a policy change does, before shipping it: the same recorded stream backtested under the old
and the new policy with the same teacher backend (``evalloop policy impact``, docs/policy-impact.md).

Compared per category: the grade mix and the display decisions (show, related, filter), the
failure modes tagged, and the alert timeline; and listed: every (event, item) whose display
decision flips. Pure over two ``BacktestResult``s; the command runs the backtests.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from evalloop.backtest import BacktestResult
from schemas.alerts import Alert
from schemas.judgments import Judgment

PairKey = tuple[str, str]


@dataclass(frozen=True)
class Flip:
    """A pair whose display decision differs between the two policies."""

    event_id: str
    item_id: str
    category: str
    query: str
    item_title: str
    old_grade: int | None
    new_grade: int | None
    old_display: str
    new_display: str


@dataclass(frozen=True)
class TimelineEntry:
    """One emitted alert transition: event time (ISO), state, rule, category."""

    at: str
    state: str
    rule: str
    category: str


@dataclass
class ImpactReport:
    """Old against new, per category, and what moved."""

    old_version: str
    new_version: str
    pairs_compared: int
    only_old: int
    only_new: int
    grades: dict[str, dict[str, Counter[str]]] = field(default_factory=dict)
    displays: dict[str, dict[str, Counter[str]]] = field(default_factory=dict)
    failure_modes: dict[str, Counter[str]] = field(default_factory=dict)
    flips: list[Flip] = field(default_factory=list)
    old_alerts: list[TimelineEntry] = field(default_factory=list)
    new_alerts: list[TimelineEntry] = field(default_factory=list)
    #: What each side's rules judged (raw or bias-corrected shares), as the command found it.
    estimates: tuple[str, str] = ("raw shares", "raw shares")

    def alerts_added(self) -> list[TimelineEntry]:
        """Transitions the new policy emits that the old one does not."""
        return [entry for entry in self.new_alerts if entry not in self.old_alerts]

    def alerts_removed(self) -> list[TimelineEntry]:
        """Transitions the old policy emits that the new one does not."""
        return [entry for entry in self.old_alerts if entry not in self.new_alerts]

    def flip_counts(self) -> Counter[str]:
        """``old → new`` display transitions, counted."""
        return Counter(f"{flip.old_display} → {flip.new_display}" for flip in self.flips)


def _production(result: BacktestResult) -> dict[PairKey, Judgment]:
    return {(j.event_id, j.item_id): j for j in result.judgments if j.canary is None}


def _timeline(alerts: list[Alert]) -> list[TimelineEntry]:
    return [TimelineEntry(a.updated_at.isoformat(), a.state, a.rule, a.category) for a in alerts]


def _label(judgment: Judgment, what: str) -> str:
    value = judgment.grade if what == "grade" else judgment.display
    return "error" if value is None else str(value)


def _mix(judgments: dict[PairKey, Judgment], what: str) -> dict[str, Counter[str]]:
    mix: dict[str, Counter[str]] = {}
    for judgment in judgments.values():
        mix.setdefault(judgment.category, Counter())[_label(judgment, what)] += 1
    return mix


def _side_by_side(
    old: dict[str, Counter[str]], new: dict[str, Counter[str]]
) -> dict[str, dict[str, Counter[str]]]:
    return {
        category: {"old": old.get(category, Counter()), "new": new.get(category, Counter())}
        for category in sorted(set(old) | set(new))
    }


def _modes(judgments: dict[PairKey, Judgment]) -> Counter[str]:
    return Counter(mode for judgment in judgments.values() for mode in judgment.failure_modes)


def _flip(old: Judgment, new: Judgment) -> Flip:
    return Flip(
        old.event_id,
        old.item_id,
        old.category,
        old.query,
        old.item_title,
        old.grade,
        new.grade,
        _label(old, "display"),
        _label(new, "display"),
    )


def compare(old: BacktestResult, new: BacktestResult, old_version: str, new_version: str) -> ImpactReport:
    """The impact report of moving from ``old`` to ``new`` (backtests of the same stream)."""
    before, after = _production(old), _production(new)
    shared = sorted(set(before) & set(after))
    report = ImpactReport(
        old_version, new_version, len(shared), len(set(before) - set(after)), len(set(after) - set(before))
    )
    report.grades = _side_by_side(_mix(before, "grade"), _mix(after, "grade"))
    report.displays = _side_by_side(_mix(before, "display"), _mix(after, "display"))
    report.failure_modes = {"old": _modes(before), "new": _modes(after)}
    report.flips = [
        _flip(before[key], after[key]) for key in shared if before[key].display != after[key].display
    ]
    report.old_alerts, report.new_alerts = _timeline(old.alerts), _timeline(new.alerts)
    return report


def report_json(report: ImpactReport, flips_limit: int | None = None) -> dict[str, Any]:
    """A JSON-ready dict of ``report`` (``flips_limit``: list at most that many flips)."""

    def counters(side: dict[str, dict[str, Counter[str]]]) -> dict[str, Any]:
        return {
            category: {k: dict(sorted(v.items())) for k, v in sides.items()}
            for category, sides in side.items()
        }

    return {
        "old_version": report.old_version,
        "new_version": report.new_version,
        "estimates": {"old": report.estimates[0], "new": report.estimates[1]},
        "pairs_compared": report.pairs_compared,
        "only_old": report.only_old,
        "only_new": report.only_new,
        "grades": counters(report.grades),
        "displays": counters(report.displays),
        "failure_modes": {k: dict(sorted(v.items())) for k, v in report.failure_modes.items()},
        "flip_counts": dict(report.flip_counts()),
        "flips": [flip.__dict__ for flip in report.flips[:flips_limit]],
        "alerts_old": [entry.__dict__ for entry in report.old_alerts],
        "alerts_new": [entry.__dict__ for entry in report.new_alerts],
        "alerts_added": [entry.__dict__ for entry in report.alerts_added()],
        "alerts_removed": [entry.__dict__ for entry in report.alerts_removed()],
    }


def _display_lines(report: ImpactReport) -> list[str]:
    lines = ["display decisions per category (old → new):"]
    for category, sides in report.displays.items():
        cells = [
            f"{name} {sides['old'][name]}→{sides['new'][name]}"
            for name in ("show", "related", "filter", "error")
            if sides["old"][name] or sides["new"][name]
        ]
        lines.append(f"  {category:<30} " + "  ".join(cells))
    lines.append("grades per category (old → new):")
    for category, sides in report.grades.items():
        cells = [
            f"{g}: {sides['old'][g]}→{sides['new'][g]}" for g in sorted(set(sides["old"]) | set(sides["new"]))
        ]
        lines.append(f"  {category:<30} " + "  ".join(cells))
    return lines


def _mode_line(report: ImpactReport) -> str:
    old, new = report.failure_modes["old"], report.failure_modes["new"]
    return "failure modes (old → new): " + ", ".join(
        f"{m} {old[m]}→{new[m]}" for m in sorted(set(old) | set(new))
    )


def _flip_lines(report: ImpactReport, limit: int) -> list[str]:
    counts = report.flip_counts()
    summary = ", ".join(f"{k}: {v}" for k, v in counts.most_common())
    lines = [f"display flips: {len(report.flips)}" + (f" ({summary})" if summary else "")]
    for flip in report.flips[:limit]:
        grades = f"grade {flip.old_grade}→{flip.new_grade}"
        item = f"{flip.query!r} → {flip.item_title[:60]!r}"
        lines.append(f"  {flip.category} | {item}: {grades}, {flip.old_display} → {flip.new_display}")
    if len(report.flips) > limit:
        lines.append(f"  … {len(report.flips) - limit} more (--flips N, or --json)")
    return lines


def _timeline_lines(title: str, entries: list[TimelineEntry]) -> list[str]:
    rows = [f"  {e.at[11:16]}  {e.state:<8} {e.rule}  {e.category}" for e in entries]
    return [title, *(rows or ["  (none)"])]


def render(report: ImpactReport, flips_limit: int = 20) -> str:
    """The report as text for a terminal."""
    head = f"policy impact: {report.old_version} → {report.new_version}"
    lines = [f"{head}, {report.pairs_compared} pairs judged under both"]
    lines.append(f"  alert rules judged: old {report.estimates[0]}; new {report.estimates[1]}")
    if report.only_old or report.only_new:
        lines.append(f"  sampled under one policy only: {report.only_old} old, {report.only_new} new")
    lines += [*_display_lines(report), _mode_line(report), *_flip_lines(report, flips_limit)]
    lines += _timeline_lines("alert timeline, old:", report.old_alerts)
    lines += _timeline_lines("alert timeline, new:", report.new_alerts)
    lines.append(f"alerts added {len(report.alerts_added())}, removed {len(report.alerts_removed())}")
    return "\n".join(lines)
