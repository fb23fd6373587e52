"""Prometheus alerting rules and a Grafana dashboard generated from the policy and the metric
registry (pure): ``evalloop policy export-rules`` writes them under ``infra/monitoring/``.

Rules, per policy rule: ``Evalloop<Rule>`` mirrors the worker's own decision (the
``evalloop_alert_state`` gauge: event time, Wilson bounds, bias correction, hysteresis), so
Alertmanager routes what evalloop decided; for display-share and error-share burn rules a
``...RawCrossCheck`` ticket recomputes the raw share from counters over the same window lengths
in *processing* time, a check that does not depend on the worker's state. Plus loop health:
consumer lag and a silent worker. docs/metrics.md says what each is for.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from schemas.policy import AlertRule, Policy
from streams.metrics import COUNTERS, GAUGES, HISTOGRAMS, InstrumentSpec
from streams.windows import window_name

#: The display decisions each binary signal counts as bad (schemas.calibration.BINARY_SIGNALS).
DISPLAYS = {"filtered_share": "filter", "not_shown_share": "filter|related"}
LAG_RECORDS, LAG_FOR = 10_000, "10m"


def prometheus_name(spec: InstrumentSpec) -> str:
    """An instrument's Prometheus name as the OpenTelemetry exporter writes it (unit ``s`` →
    ``_seconds``; ``1`` and ``{annotation}`` units add nothing)."""
    base = spec.name.replace(".", "_")
    return base + "_seconds" if spec.unit == "s" else base


def exported_names() -> set[str]:
    """Every sample name ``/metrics`` can carry for the registry's instruments."""
    names = {f"evalloop_{spec.name}_total" for spec in COUNTERS}
    names |= {prometheus_name(spec) for spec in GAUGES}
    names |= {
        prometheus_name(spec) + suffix for spec in HISTOGRAMS for suffix in ("_bucket", "_count", "_sum")
    }
    return names


def metric_names(exprs: Iterable[str]) -> set[str]:
    """The ``evalloop_*`` metric names the PromQL expressions ``exprs`` query."""
    return {name for expr in exprs for name in re.findall(r"\bevalloop_[a-z_]+", expr)}


def _camel(rule_id: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", rule_id) if part)


def _annotations(rule: AlertRule, dashboard_url: str | None, summary: str) -> dict[str, str]:
    notes = {"summary": summary, "description": " ".join(rule.description.split()) or rule.id}
    if rule.runbook_url:
        notes["runbook_url"] = rule.runbook_url
    if dashboard_url:
        notes["dashboard"] = dashboard_url.rstrip("/") + "/?category={{ $labels.category }}"
    return notes


def mirror_rule(rule: AlertRule, policy: Policy, dashboard_url: str | None) -> dict[str, Any]:
    """The alert that fires while the worker holds ``rule`` firing for a category."""
    return {
        "alert": f"Evalloop{_camel(rule.id)}",
        "expr": f'max by (category) (evalloop_alert_state{{rule="{rule.id}", state="firing"}}) == 1',
        "labels": {"severity": rule.severity, "evalloop_rule": rule.id, "policy_version": policy.version},
        "annotations": _annotations(
            rule, dashboard_url, f"evalloop {rule.id} is firing for {{{{ $labels.category }}}}"
        ),
    }


def _bad_share(rule: AlertRule, seconds: int) -> str | None:
    window = window_name(seconds)
    if rule.signal == "error_share":
        bad = f"sum by (category) (increase(evalloop_judged_error_total[{window}]))"
        total = f"(sum by (category) (increase(evalloop_judged_ok_total[{window}])) + {bad})"
        return f"{bad} / clamp_min({total}, 1)"
    if rule.signal not in DISPLAYS or rule.failure_mode is not None:
        return None
    displays = DISPLAYS[rule.signal]
    bad = f'sum by (category) (increase(evalloop_judged_display_total{{display=~"{displays}"}}[{window}]))'
    return f"{bad} / clamp_min(sum by (category) (increase(evalloop_judged_ok_total[{window}])), 1)"


def cross_check_rule(rule: AlertRule, dashboard_url: str | None) -> dict[str, Any] | None:
    """The raw-share recomputation of a burn-rate rule from counters (None where the counters
    cannot express its signal: failure-mode shares, CUSUM and teacher-health rules)."""
    if rule.kind != "burn_rate" or not rule.windows or _bad_share(rule, rule.windows[0].long_seconds) is None:
        return None
    pairs = []
    for pair in rule.windows:
        level = rule.threshold * pair.factor
        long, short = _bad_share(rule, pair.long_seconds), _bad_share(rule, pair.short_seconds)
        judged = f"sum by (category) (increase(evalloop_judged_ok_total[{window_name(pair.short_seconds)}]))"
        enough = f"{judged} >= {rule.required_samples}"
        pairs.append(f"(({long}) > {level:g} and ({short}) > {level:g} and {enough})")
    return {
        "alert": f"Evalloop{_camel(rule.id)}RawCrossCheck",
        "expr": " or ".join(pairs),
        "for": "5m",
        "labels": {"severity": "ticket", "evalloop_rule": rule.id},
        "annotations": _annotations(
            rule,
            dashboard_url,
            f"raw {rule.signal} of {{{{ $labels.category }}}} over {rule.threshold:g} (processing time)",
        ),
    }


def health_rules() -> list[dict[str, Any]]:
    """The loop's own health: a consumer group falling behind, a worker that stopped reporting."""
    return [
        {
            "alert": "EvalloopConsumerLagHigh",
            "expr": f"max by (topic) (evalloop_consumer_lag) > {LAG_RECORDS}",
            "for": LAG_FOR,
            "labels": {"severity": "ticket"},
            "annotations": {"summary": "evalloop is {{ $value }} records behind on {{ $labels.topic }}"},
        },
        {
            "alert": "EvalloopWorkerSilent",
            "expr": "absent(evalloop_events_seen_total) or sum(rate(evalloop_events_seen_total[15m])) == 0",
            "for": "15m",
            "labels": {"severity": "ticket"},
            "annotations": {"summary": "no evalloop worker has read an event for 15 minutes"},
        },
    ]


def prometheus_rules(policy: Policy, dashboard_url: str | None = None) -> dict[str, Any]:
    """A Prometheus rule file (``groups``) for ``policy``."""
    rules = [mirror_rule(rule, policy, dashboard_url) for rule in policy.alerts]
    rules += [check for rule in policy.alerts if (check := cross_check_rule(rule, dashboard_url)) is not None]
    return {"groups": [{"name": f"evalloop-{policy.name}", "rules": [*rules, *health_rules()]}]}
