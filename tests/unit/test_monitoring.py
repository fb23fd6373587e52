"""The generated Prometheus rules and Grafana dashboard: committed files fresh, every metric they
query exported by the registry (checked against a real scrape), every expression parsed by a
PromQL parser (the ``promql-parser`` crate), the rule file's shape."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import pytest
import yaml

from evalloop.commands.policy import DASHBOARD_FILE, EXPORT_DIR, RULES_FILE, export_texts
from schemas.policy import Policy
from streams.grafana import dashboard, queried_metrics
from streams.metrics import COUNTERS, GAUGES, HISTOGRAMS
from streams.monitoring import exported_names, metric_names, prometheus_rules
from streams.telemetry import start_telemetry

ROOT = Path(__file__).resolve().parents[2]


def test_committed_files_are_what_the_policy_generates(policy: Policy) -> None:
    for name, text in export_texts(policy).items():
        committed = (ROOT / EXPORT_DIR / name).read_text(encoding="utf-8")
        assert committed == text, f"{EXPORT_DIR / name} is stale: run `evalloop policy export-rules`"


def test_exported_names_are_what_the_exporter_serves() -> None:
    telemetry = start_telemetry("127.0.0.1", 0, env={})
    try:
        metrics = telemetry.metrics
        for spec in COUNTERS:
            metrics.add(spec.name, 1, **dict.fromkeys(spec.labels, "x"))
        for instrument in HISTOGRAMS:
            metrics.observe(instrument.name, 1.0, **dict.fromkeys(instrument.labels, "x"))
        for instrument in GAUGES:
            metrics.set(instrument.name, 1.0, **dict.fromkeys(instrument.labels, "x"))
        assert telemetry.metrics_url is not None
        text = httpx.get(telemetry.metrics_url, timeout=5).text
    finally:
        telemetry.shutdown()
    served = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line.startswith("evalloop_")}
    assert served == exported_names()


def _rule_metrics(rules: dict[str, Any]) -> set[str]:
    return metric_names(rule["expr"] for group in rules["groups"] for rule in group["rules"])


def test_every_queried_metric_is_exported(policy: Policy) -> None:
    used = _rule_metrics(prometheus_rules(policy)) | queried_metrics(dashboard(policy))
    assert used and used <= exported_names(), used - exported_names()


def test_rule_file_shape(policy: Policy) -> None:
    rules = yaml.safe_load((ROOT / EXPORT_DIR / RULES_FILE).read_text())["groups"][0]["rules"]
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert rule["labels"]["severity"] in {"page", "ticket"} and rule["annotations"]["summary"]
        assert rule["expr"].count("(") == rule["expr"].count(")") and rule["expr"].count("{") == rule[
            "expr"
        ].count("}")
    mirrored = {
        rule["labels"].get("evalloop_rule") for rule in rules if not rule["alert"].endswith("RawCrossCheck")
    }
    assert {r.id for r in policy.alerts} <= mirrored
    checks = {rule["labels"]["evalloop_rule"] for rule in rules if rule["alert"].endswith("RawCrossCheck")}
    kinds = {r.id: (r.kind, r.signal, r.failure_mode) for r in policy.alerts}
    assert checks == {
        rid
        for rid, (kind, signal, mode) in kinds.items()
        if kind == "burn_rate"
        and mode is None
        and signal in {"filtered_share", "error_share", "not_shown_share"}
    }


@pytest.mark.parametrize("dashboard_url", [None, "https://evalloop.example"])
def test_runbook_and_dashboard_links_reach_the_annotations(policy: Policy, dashboard_url: str | None) -> None:
    with_runbook = policy.model_copy(
        update={"alerts": [policy.alerts[0].model_copy(update={"runbook_url": "https://rb.example/x"})]}
    )
    (mirror, *_rest) = prometheus_rules(with_runbook, dashboard_url)["groups"][0]["rules"]
    assert mirror["annotations"]["runbook_url"] == "https://rb.example/x"
    assert ("dashboard" in mirror["annotations"]) == (dashboard_url is not None)


def test_grafana_model_loads_and_panels_are_sound(policy: Policy) -> None:
    model = json.loads((ROOT / EXPORT_DIR / DASHBOARD_FILE).read_text())
    assert model["__inputs"][0]["name"] == "DS_PROMETHEUS"
    ids = [panel["id"] for panel in model["panels"]]
    assert len(ids) == len(set(ids)) and len(ids) >= 10
    cells = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in model["panels"]]
    assert len(cells) == len(set(cells))  # no two panels in one place
    for panel in model["panels"]:
        assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"])
        for target in panel["targets"]:
            promql_parser.parse(target["expr"].replace("$category", ".*"))
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}"
    assert model["templating"]["list"][0]["name"] == "category"
