"""The golden review page (pure HTML, no script): the last Gate 2's disagreements, worst first,
golden reason beside the teacher's rationale, each with a POST form to accept the teacher's
grade, regrade or rewrite the reason; and Gate 1's most confused grade boundaries."""

from __future__ import annotations

from html import escape
from typing import Any

from evalloop.dashboard.html import STYLE, table
from evalloop.review import ReviewRow, ReviewView
from schemas.policy import Policy

#: Disagreements shown on one page (the worst ones; the rest follow as earlier ones are settled).
SHOWN = 40
REVIEW_STYLE = """
section.review{border:1px solid #ddd;border-radius:6px;padding:8px 12px;margin:10px 0}
section.review .side{display:grid;grid-template-columns:1fr 1fr;gap:16px}
section.review h3{font-size:14px;margin:0 0 6px} textarea{width:100%;min-height:48px}
.message{background:#e8f5e9;border:1px solid #9c9;padding:8px 12px;white-space:pre-wrap}
.error{background:#fdd;border:1px solid #d99;padding:8px 12px}
"""


def render_review(view: ReviewView, policy: Policy, message: str = "", error: str = "") -> str:
    """The whole review page."""
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        '<title>evalloop — golden review</title><link rel="icon" href="data:,">',
        f"<style>{STYLE}{REVIEW_STYLE}</style></head><body>",
        '<header><h1>Golden review</h1><a href="/">dashboard</a></header>',
        _summary(view),
    ]
    if message:
        parts.append(f'<pre class="message" id="written">{escape(message)}</pre>')
    if error:
        parts.append(f'<p class="error" id="review-error">{escape(error)}</p>')
    parts += [_gate1(view.gate1), _disagreements(view, policy), "</body></html>"]
    return "".join(parts)


def _summary(view: ReviewView) -> str:
    rows = [
        ("golden file", str(view.golden_path)),
        ("golden version", view.golden_version),
        ("an edit writes", f"{view.next_version} (golden.{view.next_version}.jsonl beside it)"),
        ("Gate 2 review file", view.review_source),
        ("teacher", view.teacher_version or "—"),
        ("open disagreements", str(len(view.rows))),
    ]
    problem = f'<p class="error">{escape(view.problem)}</p>' if view.problem else ""
    body = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows)
    return f'<table id="review-summary"><tbody>{body}</tbody></table>{problem}'


def _disagreements(view: ReviewView, policy: Policy) -> str:
    if not view.rows:
        return "<h2>Disagreements</h2><p class=muted>none open</p>"
    shown = "".join(_row(row, policy) for row in view.rows[:SHOWN])
    more = f"<p class=muted>{len(view.rows) - SHOWN} more</p>" if len(view.rows) > SHOWN else ""
    return f"<h2>Disagreements, worst first</h2>{shown}{more}"


def _row(row: ReviewRow, policy: Policy) -> str:
    item = row.item
    golden = f"{item.grade} {policy.level(item.grade).name}"
    teacher = (
        f"{row.teacher_grade} {policy.level(row.teacher_grade).name}"
        if row.teacher_grade in policy.grades
        else str(row.teacher_grade)
    )
    adjudicated = (
        f"<p class=muted>adjudicated: {escape(item.adjudication.reason)}</p>" if item.adjudication else ""
    )
    return (
        f'<section class="review" id="review-{escape(item.id)}">'
        f"<p><b>{escape(item.query)}</b> → {escape(item.item.title)} "
        f"<span class=muted>({escape(item.category)}; {escape(item.id)})</span></p>"
        f'<div class="side"><div><h3>golden: {escape(golden)}</h3>'
        f'<p class="golden-reason">{escape(item.reason)}</p>{adjudicated}</div>'
        f"<div><h3>teacher: {escape(teacher)}</h3>"
        f'<p class="teacher-rationale">{escape(row.teacher_rationale)}</p></div></div>'
        f"{_form(row, policy)}</section>"
    )


def _form(row: ReviewRow, policy: Policy) -> str:
    options = "".join(
        f'<option value="{g}"{" selected" if g == row.item.grade else ""}>'
        f"{g} {escape(policy.level(g).name)}</option>"
        for g in policy.grades
    )
    hidden = "".join(
        f'<input type="hidden" name="{name}" value="{escape(str(value))}">'
        for name, value in (
            ("item_id", row.item.id),
            ("teacher_grade", row.teacher_grade),
            ("teacher_rationale", row.teacher_rationale),
        )
    )
    return (
        f'<form method="post" action="/review">{hidden}'
        f'<label>grade <select name="grade">{options}</select></label>'
        '<label>reason<textarea name="reason" placeholder="why, under the rubric"></textarea></label>'
        '<button name="action" value="accept">accept the teacher\'s grade</button> '
        '<button name="action" value="regrade">regrade</button> '
        '<button name="action" value="rewrite">rewrite the reason</button></form>'
    )


def _gate1(report: dict[str, Any] | None) -> str:
    if not report:
        return "<h2>Gate 1: confused boundaries</h2><p class=muted>no Gate 1 ratings file</p>"
    items = report.get("disputed_items", [])
    rows = []
    for boundary in report.get("disputed_boundaries", [])[:3]:
        a, b = str(boundary["label_a"]), str(boundary["label_b"])
        examples = [d for d in items if a in d["label_counts"] and b in d["label_counts"]][:3]
        shown = "; ".join(f"{d['item_id']} {d['label_counts']}" for d in examples) or "—"
        rows.append((f"{a} vs {b}", boundary["disagreeing_pairs"], f"{boundary['share']:.0%}", shown))
    return "<h2>Gate 1: most confused grade boundaries</h2>" + table(
        ["boundary", "rater pairs split", "share", "examples (item: label counts)"], rows, "gate1-boundaries"
    )
