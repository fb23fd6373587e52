"""Checked against humans: raw and corrected window shares next to the human share.

The bundled events carry human labels (``reference_labels``, for checking only: nothing is fitted
or calibrated on them). This replays the stream through sampling and the teacher as the backtest
does, then for each category — over the whole stream and per window of event time — compares the
teacher's raw share and its bias-corrected share (``streams.correction``) with the share the
human labels give on the same judged items, and counts how often each interval contains it.
See docs/calibration.md.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from schemas.calibration import BINARY_SIGNALS
from schemas.events import RecommendationEvent
from schemas.judgments import Judgment
from schemas.policy import Policy
from streams.correction import CorrectedShare, WindowCorrector
from streams.windows import RateEstimate, bucket_start, counter_updates, display_rate, merge_counts

#: Windows with fewer judged items than this are listed but not scored for coverage.
MIN_WINDOW_N = 30


@dataclass(frozen=True)
class WindowCheck:
    """One category's window: raw, corrected and human shares, and what the intervals cover."""

    category: str
    start: float | None
    n: int
    raw: RateEstimate
    corrected: CorrectedShare | None
    human: float

    @property
    def raw_covers(self) -> bool:
        """The raw (Wilson) interval contains the human share."""
        return self.raw.lower <= self.human <= self.raw.upper

    @property
    def corrected_covers(self) -> bool | None:
        """The corrected interval contains the human share (None: nothing to check)."""
        share = self.corrected
        if share is None or share.lower is None or share.upper is None:
            return None
        return share.lower <= self.human <= share.upper


def human_displays(events: Iterable[RecommendationEvent], policy: Policy) -> dict[tuple[str, str], str]:
    """(event id, item id) → the display the human label means under the policy's label map."""
    out: dict[tuple[str, str], str] = {}
    for event in events:
        for item_id, label in (event.reference_labels or {}).items():
            grade = policy.golden.label_map.get(label)
            if grade is not None:
                out[(event.event_id, item_id)] = policy.display_for(grade)
    return out


class _Counts:
    """Teacher counters and the human-weighted bad share of one window."""

    def __init__(self) -> None:
        self.counters: dict[str, float] = {}
        self.human_bad_w = 0.0

    def add(self, judgment: Judgment, human_bad: bool) -> None:
        merge_counts(self.counters, counter_updates(judgment))
        self.human_bad_w += judgment.weight if human_bad else 0.0


def check_windows(
    judgments: Sequence[Judgment],
    humans: Mapping[tuple[str, str], str],
    signal: str,
    window_s: int | None,
    corrector: WindowCorrector | None,
) -> list[WindowCheck]:
    """Per category, per window of ``window_s`` event-time seconds (None: the whole stream)."""
    bad = BINARY_SIGNALS[signal]
    windows: dict[tuple[str, float | None], _Counts] = defaultdict(_Counts)
    for judgment in judgments:
        human = humans.get((judgment.event_id, judgment.item_id))
        if judgment.status != "ok" or human is None:
            continue
        start = None if window_s is None else float(bucket_start(judgment.event_time.timestamp(), window_s))
        windows[(judgment.category, start)].add(judgment, human in bad)
    return [
        _check(category, start, counts, bad, signal, corrector)
        for (category, start), counts in sorted(windows.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0.0))
    ]


def _check(
    category: str,
    start: float | None,
    counts: _Counts,
    bad: Sequence[str],
    signal: str,
    corrector: WindowCorrector | None,
) -> WindowCheck:
    raw = display_rate(counts.counters, bad, 0.95)
    corrected = corrector.correct(category, signal, raw, 0.95) if corrector is not None else None
    total_w = counts.counters.get("w", 0.0)
    human = counts.human_bad_w / total_w if total_w > 0 else 0.0
    return WindowCheck(category, start, raw.samples, raw, corrected, human)


@dataclass(frozen=True)
class Coverage:
    """How many scored windows (n ≥ MIN_WINDOW_N) each interval covered."""

    windows: int
    raw_covered: int
    corrected_covered: int
    #: Windows with no corrected interval: the teacher too weak, or the raw share out of range.
    uncorrected: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with the shares: ``corrected_coverage`` counts an uncorrected window as not
        covered; ``coverage_when_corrected`` leaves those windows out."""
        windows = max(self.windows, 1)
        return {
            "windows": self.windows,
            "raw_covered": self.raw_covered,
            "raw_coverage": round(self.raw_covered / windows, 4),
            "corrected_covered": self.corrected_covered,
            "corrected_coverage": round(self.corrected_covered / windows, 4),
            "uncorrected": self.uncorrected,
            "coverage_when_corrected": round(
                self.corrected_covered / max(self.windows - self.uncorrected, 1), 4
            ),
        }


def coverage(checks: Sequence[WindowCheck]) -> Coverage:
    """Coverage over the checks with at least MIN_WINDOW_N judged items."""
    scored = [c for c in checks if c.n >= MIN_WINDOW_N]
    return Coverage(
        windows=len(scored),
        raw_covered=sum(c.raw_covers for c in scored),
        corrected_covered=sum(c.corrected_covers is True for c in scored),
        uncorrected=sum(c.corrected_covers is None for c in scored),
    )


# --------------------------------------------------------------------------- the plot (SVG, no deps)

_ROW, _LEFT, _WIDTH, _TOP = 34, 230, 420, 40


def svg_plot(checks: Sequence[WindowCheck], title: str) -> str:
    """One row per category: the human share (black diamond), the raw share with its Wilson
    interval (red) and the corrected share with its interval (blue), on a 0–1 axis."""
    height = _TOP + _ROW * len(checks) + 50
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_LEFT + _WIDTH + 30}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f'<text x="10" y="20" font-size="13" font-weight="bold">{_escape(title)}</text>',
    ]
    for tick in range(0, 11, 2):
        x = _x(tick / 10)
        parts.append(f'<line x1="{x}" y1="{_TOP - 5}" x2="{x}" y2="{height - 40}" stroke="#ddd"/>')
        parts.append(f'<text x="{x}" y="{height - 25}" text-anchor="middle">{tick / 10:.1f}</text>')
    for row, check in enumerate(checks):
        parts += _row(check, _TOP + _ROW * row + 12)
    legend_y = height - 8
    parts.append(
        f'<text x="10" y="{legend_y}"><tspan fill="#000">◆ human</tspan>  '
        f'<tspan fill="#c0392b">● raw (teacher)</tspan>  <tspan fill="#2471a3">● corrected</tspan>'
        "  (lines: 95% intervals)</text>"
    )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _x(share: float) -> float:
    return round(_LEFT + _WIDTH * min(max(share, 0.0), 1.0), 1)


def _row(check: WindowCheck, y: float) -> list[str]:
    out = [f'<text x="10" y="{y + 4}">{_escape(check.category[:30])} (n={check.n})</text>']
    out += _mark(check.raw.rate, check.raw.lower, check.raw.upper, y - 6, "#c0392b")
    corrected = check.corrected
    if corrected is not None and corrected.value is not None:
        out += _mark(corrected.value, corrected.lower or 0.0, corrected.upper or 1.0, y + 6, "#2471a3")
    elif corrected is not None:
        out.append(f'<text x="{_LEFT}" y="{y + 10}" fill="#2471a3">not identifiable</text>')
    hx = _x(check.human)
    out.append(f'<path d="M{hx} {y - 6} L{hx + 6} {y} L{hx} {y + 6} L{hx - 6} {y} Z" fill="#000"/>')
    return out


def _mark(value: float, lower: float, upper: float, y: float, colour: str) -> list[str]:
    return [
        f'<line x1="{_x(lower)}" y1="{y}" x2="{_x(upper)}" y2="{y}" stroke="{colour}" stroke-width="2"/>',
        f'<circle cx="{_x(value)}" cy="{y}" r="4" fill="{colour}"/>',
    ]


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
