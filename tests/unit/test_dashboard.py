"""The dashboard's pure parts: window series against a count by hand, incidents folded from
alerts, the judgments filter, the SVG (points placed, text escaped) and the page (escaped, no
script), and query parsing that ignores what it cannot read."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from evalloop.dashboard import html, svg, views
from evalloop.dashboard.page import PageModel, Query, parse_time, time_range
from evalloop.dashboard.server import parse_query
from schemas.alerts import Alert
from schemas.judgments import CanaryTag
from streams.windows import bucket_start, counter_updates, merge_counts
from tests.unit.test_evidence import AT, judged
from tests.unit.test_notify import alert as make_alert

BUCKET = 300


def buckets_of(judgments: list[Any]) -> dict[int, dict[str, float]]:
    held: dict[int, dict[str, float]] = {}
    for judgment in judgments:
        merge_counts(
            held.setdefault(bucket_start(judgment.event_time.timestamp(), BUCKET), {}),
            counter_updates(judgment),
        )
    return held


def test_share_series_counts_what_a_hand_count_gives() -> None:
    judgments = [judged(f"e{k}", 10 + k, bad=k % 3 == 0, query=f"q{k}") for k in range(30)]  # 10 of 30 bad
    stats = views.window_stats(buckets_of(judgments), 3600, AT.timestamp() + 1, BUCKET)
    (point,) = views.share_series([stats], "filtered", "Kitchen & Dining", None)
    assert point.samples == 30 and point.raw == pytest.approx(10 / 30)
    assert point.lower < point.raw < point.upper and point.corrected is None
    assert (
        views.share_series([views.window_stats({}, 3600, AT.timestamp(), BUCKET)], "filtered", "x", None)
        == []
    )


def test_failure_mode_series_keeps_the_most_tagged() -> None:
    stats = views.window_stats(buckets_of([judged("a", 5, bad=True)]), 3600, AT.timestamp() + 1, BUCKET)
    assert views.failure_mode_series([stats]) == {}  # nothing tagged
    tagged = judged("b", 5, bad=True).model_copy(update={"failure_modes": ("off_department",)})
    stats = views.window_stats(buckets_of([tagged]), 3600, AT.timestamp() + 1, BUCKET)
    assert views.failure_mode_series([stats]) == {"off_department": [(stats.end_epoch, 1.0)]}


def test_incidents_fold_firing_and_resolve() -> None:
    firing = make_alert("firing")
    resolved = make_alert("resolved", resolved_at=firing.started_at + timedelta(hours=2))
    other: Alert = make_alert("firing", alert_id="alert-" + "f" * 24, category="Other")
    found = views.incidents([firing, other, resolved])
    assert [(i.category, i.states) for i in found] == [
        ("Kitchen & Dining", ["firing", "resolved"]),
        ("Other", ["firing"]),
    ]
    assert found[0].resolved_at == firing.started_at + timedelta(hours=2) and found[1].resolved_at is None


def test_latest_judgments_filter_dedupe_and_leave_canaries_out() -> None:
    rows = [
        judged(f"e{k}", k, bad=k % 2 == 0, version="m2" if k < 4 else "m1", query=f"q{k}") for k in range(8)
    ]
    canary = rows[0].model_copy(
        update={
            "judgment_id": "c" * 32,
            "canary": CanaryTag(golden_id="g1", golden_grade=4, golden_category="Other"),
        }
    )
    held = [*rows, rows[1], canary]
    assert [j.event_id for j in views.latest_judgments(held, views.JudgmentFilter())][:3] == [
        "e0",
        "e1",
        "e2",
    ]
    assert len(views.latest_judgments(held, views.JudgmentFilter())) == 8
    bad_m2 = views.latest_judgments(held, views.JudgmentFilter(grade=0, model_version="m2"))
    assert [j.event_id for j in bad_m2] == ["e0", "e2"]
    assert views.filter_choices(held)["model_version"] == ["m1", "m2"]


def test_svg_places_points_and_escapes_text() -> None:
    chart = svg.Chart("<b>x</b> & y", (0.0, 100.0), lines=[svg.Line("raw <i>", [(0.0, 0.0), (100.0, 1.0)])])
    chart.bands.append(svg.Band("band", [(0.0, 0.0, 0.5), (100.0, 0.5, 1.0)]))
    chart.rules.append(svg.Rule("threshold", 0.4))
    drawn = svg.render(chart)
    assert 'data-points="2"' in drawn and "<b>" not in drawn and "&lt;b&gt;x&lt;/b&gt; &amp; y" in drawn
    (points,) = re.findall(r'<polyline[^>]*points="([^"]+)"', drawn)
    (first, last) = [tuple(map(float, p.split(","))) for p in points.split()]
    assert first == (svg.MARGIN_LEFT, chart.height - svg.MARGIN_BOTTOM)  # (x0, 0) at bottom left
    assert last == (chart.width - svg.MARGIN_RIGHT, svg.MARGIN_TOP)  # (x1, 1) at top right
    assert len(re.findall(r'<polygon[^>]*points="([^"]+)"', drawn)[0].split()) == 4
    assert svg.render(svg.Chart("empty", (0.0, 1.0))).count('data-points="0"') == 1


def test_page_escapes_everything_and_carries_no_script() -> None:
    evil = "<script>alert(1)</script>"
    status: dict[str, Any] = {
        "as_of": evil,
        "calibration": {},
        "categories": {evil: {"alerts": {"r": "firing"}}},
    }
    model = PageModel(
        policy_version="p1",
        status=status,
        categories=[evil],
        category=evil,
        charts=[],
        incidents=[],
        judgments=[judged("e1", 1, bad=True).model_copy(update={"rationale": evil})],
        choices={"grade": ["0"], "failure_mode": [], "model_version": [evil]},
        query=Query(),
        confusion=None,
        gate1=None,
        window_s=3600,
    )
    page = html.render(model)
    assert "<script" not in page and page.count("&lt;script&gt;") >= 4
    assert 'class="current firing"' in page
    assert '<a href="/review">golden review</a>' in page


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "category=D%C3%A9cor+%26+Art&grade=2",
            Query("Décor & Art", None, None, views.JudgmentFilter("Décor & Art", 2)),
        ),
        ("grade=two&from=yesterday", Query(None, None, None, views.JudgmentFilter())),
        ("from=2024-06-01T01:00:00Z&to=2024-06-01T05:00:00%2B00:00", Query(None, 1717203600.0, 1717218000.0)),
    ],
)
def test_parse_query_ignores_what_it_cannot_read(text: str, expected: Query) -> None:
    assert parse_query(text) == expected


def test_time_range_defaults_to_the_day_before_the_watermark() -> None:
    watermark = datetime(2024, 6, 2, tzinfo=UTC).timestamp()
    span = time_range(Query(), watermark, BUCKET)
    assert span is not None and span.end == watermark and span.start == watermark - 86400
    assert len(span.ends()) <= 121 and span.step_s % BUCKET == 0
    assert time_range(Query(), None, BUCKET) is None
    assert parse_time("not a time") is None
