"""The counter registry: declared names and labels only, series read back like prometheus_client's
``get_sample_value``, the same figures in OpenTelemetry, and every counter the stages add declared
with the labels the stages give."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from streams.metrics import COUNTERS, SPECS, LoopMetrics

ROOT = Path(__file__).resolve().parents[2]


def test_series_are_kept_per_label_values_and_summed_in_the_snapshot() -> None:
    metrics = LoopMetrics()
    metrics.add("sampled", category="Other")
    metrics.add("sampled", 2, category="Décor & Art")
    metrics.add("alerts_emitted", category="Other", state="firing")
    metrics.add("events_seen", 0)  # nothing to count: no series
    assert metrics.value("sampled", category="Décor & Art") == 2
    assert metrics.value("sampled", category="Kitchen & Dining") == 0
    assert metrics.snapshot()["sampled"] == 3 and metrics.snapshot()["events_seen"] == 0
    assert ("alerts_emitted", {"category": "Other", "state": "firing"}, 1) in metrics.series()


def test_opentelemetry_counters_carry_the_same_figures() -> None:
    metrics = LoopMetrics()
    metrics.add("stage_retries", 3, stage="judge")
    assert metrics.reader is not None
    data = metrics.reader.get_metrics_data()
    points = {
        (metric.name, tuple(sorted(point.attributes.items()))): point.value
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points
    }
    assert points[("evalloop.stage_retries", (("stage", "judge"),))] == 3


@pytest.mark.parametrize(
    ("name", "labels", "message"),
    [
        ("no_such_counter", {}, "is not declared"),
        ("sampled", {}, "takes labels ['category']"),
        ("sampled", {"category": "x", "reason": "y"}, "takes labels ['category']"),
        ("events_seen", {"category": "x"}, "takes labels []"),
    ],
)
def test_undeclared_counters_and_labels_are_refused(name: str, labels: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        LoopMetrics().add(name, **labels)


def _additions() -> list[tuple[str, set[str], str]]:
    """Every ``metrics.add("name", ..., label=...)`` in streams/, with the names a conditional
    expression can give (``"a" if x else "b"``)."""
    found: list[tuple[str, set[str], str]] = []
    for path in sorted((ROOT / "streams").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add"
            ):
                continue
            if not (isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "metrics"):
                continue
            first = node.args[0]
            options = [first.body, first.orelse] if isinstance(first, ast.IfExp) else [first]
            names = [o.value for o in options if isinstance(o, ast.Constant) and isinstance(o.value, str)]
            labels = {keyword.arg for keyword in node.keywords if keyword.arg}
            found += [(name, labels, f"{path.name}:{node.lineno}") for name in names]
    return found


def test_every_addition_in_the_stages_uses_a_declared_counter_and_its_labels() -> None:
    additions = _additions()
    assert len(additions) >= 15
    for name, labels, where in additions:
        assert name in SPECS, f"{where}: {name} is not declared"
        assert labels == set(SPECS[name].labels), (
            f"{where}: {name} with {labels}, declared {SPECS[name].labels}"
        )
    assert {name for name, _, _ in additions} == {spec.name for spec in COUNTERS}, (
        "a declared counter is never added"
    )
