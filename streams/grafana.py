"""A Grafana dashboard over the exported metrics (pure): one JSON model, datasource chosen at
import (``DS_PROMETHEUS``), a ``category`` variable, and panels for quality (shares raw and
corrected with their bounds, alert states), the loop (events, samples, sheds, judgments, lag,
windows) and the teacher (latency quantiles, call size, live canary agreement)."""

from __future__ import annotations

import itertools
import re
from typing import Any

from schemas.policy import Policy
from streams.monitoring import metric_names

DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
CATEGORY = 'category=~"$category"'
LATENCY_BUCKETS = "sum by (le) (rate(evalloop_teacher_call_duration_seconds_bucket[5m]))"
PANELS: tuple[tuple[str, str, list[tuple[str, str]]], ...] = (
    (
        "Filtered share (raw and corrected, status window)",
        "percentunit",
        [(f'evalloop_window_share{{{CATEGORY}, share="filtered"}}', "{{category}} {{estimate}} {{bound}}")],
    ),
    (
        "Related share (raw and corrected, status window)",
        "percentunit",
        [(f'evalloop_window_share{{{CATEGORY}, share="related"}}', "{{category}} {{estimate}} {{bound}}")],
    ),
    (
        "Alerts firing",
        "short",
        [(f'evalloop_alert_state{{{CATEGORY}, state="firing"}}', "{{rule}} {{category}}")],
    ),
    (
        "Events: read, invalid, late (per second)",
        "ops",
        [
            ("sum(rate(evalloop_events_seen_total[5m]))", "seen"),
            ("sum by (reason) (rate(evalloop_events_invalid_total[5m]))", "invalid {{reason}}"),
            ("sum by (reason) (rate(evalloop_events_late_total[5m]))", "late {{reason}}"),
        ],
    ),
    (
        "Sampling: sampled and shed (per second)",
        "ops",
        [
            (f"sum by (category) (rate(evalloop_sampled_total{{{CATEGORY}}}[5m]))", "sampled {{category}}"),
            (f"sum by (category) (rate(evalloop_shed_total{{{CATEGORY}}}[5m]))", "shed {{category}}"),
        ],
    ),
    (
        "Judgments by status (per second)",
        "ops",
        [
            (f"sum by (category) (rate(evalloop_judged_ok_total{{{CATEGORY}}}[5m]))", "ok {{category}}"),
            (
                f"sum by (category) (rate(evalloop_judged_error_total{{{CATEGORY}}}[5m]))",
                "error {{category}}",
            ),
        ],
    ),
    (
        "Teacher call latency",
        "s",
        [
            (
                f"histogram_quantile({q}, {LATENCY_BUCKETS})",
                f"p{round(q * 100)}",
            )
            for q in (0.5, 0.95, 0.99)
        ],
    ),
    (
        "Teacher pairs per call",
        "short",
        [("rate(evalloop_teacher_call_pairs_sum[5m]) / rate(evalloop_teacher_call_pairs_count[5m])", "mean")],
    ),
    ("Consumer lag (records)", "short", [("sum by (topic) (evalloop_consumer_lag)", "{{topic}}")]),
    (
        "Windows: applied and duplicates ignored (per second)",
        "ops",
        [
            ("sum(rate(evalloop_windows_applied_total[5m]))", "applied"),
            ("sum(rate(evalloop_duplicates_ignored_total[5m]))", "duplicates"),
        ],
    ),
    (
        "Live canary agreement (teacher health)",
        "short",
        [
            (
                'evalloop_canary_agreement{statistic=~"weighted_kappa|agreement"}',
                "{{teacher_version}} {{statistic}}",
            )
        ],
    ),
    ("Watermark age", "s", [("max(evalloop_watermark_age_seconds)", "age")]),
)


def _panel(panel_id: int, title: str, unit: str, targets: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "id": panel_id,
        "type": "timeseries",
        "title": title,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": 12, "x": 12 * ((panel_id - 1) % 2), "y": 8 * ((panel_id - 1) // 2)},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend, "datasource": DATASOURCE}
            for i, (expr, legend) in enumerate(targets)
        ],
    }


def dashboard(policy: Policy) -> dict[str, Any]:
    """The dashboard JSON model (import it in Grafana, choosing the Prometheus datasource)."""
    ids = itertools.count(1)
    return {
        "__inputs": [
            {"name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource", "pluginId": "prometheus"}
        ],
        "title": f"evalloop — {policy.name}",
        "uid": "evalloop-" + re.sub(r"[^a-z0-9-]", "-", policy.name.lower())[:30],
        "tags": ["evalloop"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-24h", "to": "now"},
        "refresh": "30s",
        "templating": {
            "list": [
                {
                    "name": "category",
                    "type": "query",
                    "datasource": DATASOURCE,
                    "query": "label_values(evalloop_window_share, category)",
                    "includeAll": True,
                    "multi": True,
                    "current": {"text": "All", "value": "$__all"},
                    "refresh": 2,
                }
            ]
        },
        "panels": [_panel(next(ids), title, unit, targets) for title, unit, targets in PANELS],
    }


def queried_metrics(model: dict[str, Any]) -> set[str]:
    """The ``evalloop_*`` metric names the dashboard's queries use."""
    return metric_names(target["expr"] for panel in model["panels"] for target in panel["targets"])
