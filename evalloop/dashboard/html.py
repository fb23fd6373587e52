"""The dashboard's HTML (pure): every value escaped, charts inline, a GET form for the filters,
a small stylesheet and no script at all."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import urlencode

from evalloop.dashboard import svg
from evalloop.dashboard.page import PageModel
from evalloop.dashboard.views import Incident
from schemas.judgments import Judgment

STYLE = """
body{font:14px system-ui,sans-serif;margin:0 24px 48px;color:#222}
header{display:flex;gap:24px;align-items:baseline;border-bottom:1px solid #ccc;padding:12px 0}
h1{font-size:20px;margin:0} h2{font-size:16px;margin:28px 0 8px}
nav a{margin-right:10px;text-decoration:none;padding:2px 6px;border-radius:4px;
  border:1px solid #ccc;color:#222}
nav a.current{background:#222;color:#fff} .firing{background:#fdd} .pending{background:#ffe9b3}
table{border-collapse:collapse;margin:6px 0}
td,th{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f4f4f4} td.num{text-align:right;font-variant-numeric:tabular-nums} .muted{color:#777}
svg .grid{stroke:#eee} svg .tick,svg .legend{font-size:11px;fill:#555}
svg .title{font-size:13px;font-weight:600}
form label{margin-right:12px}
"""


def _cell(value: Any, numeric: bool = False) -> str:
    text = "—" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))
    return f'<td class="num">{escape(text)}</td>' if numeric else f"<td>{escape(text)}</td>"


def table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], table_id: str = "", numeric_from: int = 99
) -> str:
    """An HTML table; columns from ``numeric_from`` on are right-aligned."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(_cell(v, i >= numeric_from) for i, v in enumerate(row)) + "</tr>" for row in rows
    )
    ident = f' id="{escape(table_id)}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _when(moment: datetime | None) -> str | None:
    return None if moment is None else moment.strftime("%Y-%m-%d %H:%M")


def _nav(model: PageModel) -> str:
    links = []
    for category in model.categories:
        states = set(model.status["categories"][category].get("alerts", {}).values())
        badge = "firing" if "firing" in states else "pending" if "pending" in states else ""
        current = "current" if category == model.category else ""
        href = "/?" + urlencode({"category": category})
        links.append(f'<a class="{current} {badge}" href="{escape(href)}">{escape(category)}</a>')
    return "<nav>" + "".join(links) + "</nav>"


def _incidents(incidents: Sequence[Incident]) -> str:
    rows = [
        (
            i.category,
            i.rule,
            i.severity,
            _when(i.started_at),
            _when(i.fired_at),
            _when(i.resolved_at) or "open",
            ", ".join(i.states),
        )
        for i in incidents[:50]
    ]
    return table(
        ["category", "rule", "severity", "started", "fired", "resolved", "states"], rows, "alert-timeline"
    )


def _select(name: str, values: Sequence[str], chosen: Any) -> str:
    options = ['<option value="">any</option>'] + [
        f'<option value="{escape(v)}"{" selected" if str(chosen) == v else ""}>{escape(v)}</option>'
        for v in values
    ]
    label = escape(name.replace("_", " "))
    return f'<label>{label} <select name="{escape(name)}">{"".join(options)}</select></label>'


def _judgments(model: PageModel) -> str:
    chosen = model.query.filters
    form = (
        '<form method="get" action="/" id="judgment-filters">'
        f'<input type="hidden" name="category" value="{escape(model.category or "")}">'
        + _select("grade", model.choices["grade"], chosen.grade)
        + _select("failure_mode", model.choices["failure_mode"], chosen.failure_mode)
        + _select("model_version", model.choices["model_version"], chosen.model_version)
        + '<button type="submit">filter</button></form>'
    )
    rows = [_judgment_row(j) for j in model.judgments]
    headers = ["event time", "query", "item", "grade", "display", "failure modes", "model", "rationale"]
    return form + table(headers, rows, "judgments")


def _judgment_row(j: Judgment) -> tuple[Any, ...]:
    modes = ", ".join(j.failure_modes)
    text = j.rationale or j.error or ""
    return (_when(j.event_time), j.query, j.item_title, j.grade, j.display, modes, j.model_version, text)


def _teacher(model: PageModel) -> str:
    canaries = model.status.get("canaries", {})
    rows = [
        (
            version,
            c.get("window"),
            c.get("n"),
            c.get("weighted_kappa"),
            c.get("kappa"),
            c.get("agreement"),
            c.get("interval"),
        )
        for version, c in canaries.items()
    ]
    live = table(
        ["teacher version", "window", "canaries", "weighted κ", "κ", "agreement", "95% interval"],
        rows,
        "canaries",
    )
    confusion = model.confusion
    if confusion is None:
        return (
            live
            + '<p class="muted">No calibration record for the running teacher: '
            + "run <code>evalloop gate2</code>.</p>"
        )
    grades = confusion["grades"]
    matrix = [[f"golden {g}", *row] for g, row in zip(grades, confusion["counts"], strict=True)]
    about = f"{confusion['teacher_version']}, n={confusion['n']}, {confusion['source']}"
    caption = f"<p>Offline Gate 2 ({escape(about)}): rows golden grade, columns teacher grade.</p>"
    return (
        live
        + caption
        + table(["", *[f"teacher {g}" for g in grades]], matrix, "gate2-confusion", numeric_from=1)
    )


def _gate1(report: dict[str, Any] | None) -> str:
    if report is None:
        return '<p class="muted">No ratings file given (<code>--gate1 RATINGS</code>).</p>'
    head = table(
        ["items", "raters", "ratings", "Fleiss κ", "Krippendorff α", "verdict"],
        [
            (
                report["n_items"],
                report["n_raters"],
                report["n_ratings"],
                report["fleiss_kappa"],
                report["krippendorff_alpha"],
                report["verdict"],
            )
        ],
        "gate1",
    )
    rows = [
        (f"{b['label_a']} vs {b['label_b']}", b["disagreeing_pairs"], b["items"], b["share"])
        for b in report.get("disputed_boundaries", [])[:5]
    ]
    headers = ["grades", "disagreeing rater pairs", "items", "share of disagreements"]
    return head + "<p>Most confused grade boundaries:</p>" + table(headers, rows, "gate1-boundaries", 1)


def render(model: PageModel) -> str:
    """The whole page."""
    calibration = model.status.get("calibration", {})
    estimates = "corrected" if calibration.get("corrected") else "raw shares only"
    charts = "".join(f'<div class="chart-box">{svg.render(chart)}</div>' for chart in model.charts)
    if not model.charts:
        charts = '<p class="muted">No windows yet: nothing judged, or no watermark recorded.</p>'
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>evalloop dashboard</title>
<link rel="icon" href="data:,"><style>{STYLE}</style></head><body>
<header><h1>evalloop</h1><span>policy {escape(model.policy_version)}</span>
<span>as of {escape(str(model.status.get("as_of")))}</span>
<span>teacher {escape(str(calibration.get("teacher_version")))} ({estimates})</span>
<a href="/review">golden review</a></header>
{_nav(model)}
<h2 id="quality">Quality over time</h2>{charts}
<h2>Alert timeline</h2>{_incidents(model.incidents)}
<h2>Latest judgments</h2>{_judgments(model)}
<h2>Teacher health</h2>{_teacher(model)}
<h2>Gate 1: do raters agree on the policy?</h2>{_gate1(model.gate1)}
</body></html>"""
