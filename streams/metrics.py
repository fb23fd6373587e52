"""The worker's metrics in one registry: counters, histograms and gauges, each declared once with
its label names (and, for histograms and gauges, its unit).

``LoopMetrics.add(name, amount, **labels)`` refuses a counter that is not declared, or labels
other than the declared ones (as prometheus_client does), so a typo cannot create a new series
silently. Every series is kept (name + label values) and read back with ``value`` (like
prometheus_client's ``get_sample_value``) or ``series``; ``snapshot`` sums each counter over its
labels for the worker's log line. The same additions go to OpenTelemetry counters
(``evalloop.<name>``, an in-memory reader unless a ``MeterProvider`` is given), which an exporter
reads: ``streams.telemetry`` serves them as Prometheus ``/metrics`` and pushes OTLP. Histograms
(``observe``) and gauges (``set``) follow the same rules; ``docs/metrics.md`` lists every name.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

LabelValues = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class CounterSpec:
    """One counter: its name, the label names every addition must give, and what it counts."""

    name: str
    labels: tuple[str, ...]
    description: str


COUNTERS: tuple[CounterSpec, ...] = (
    CounterSpec("events_seen", (), "events read by stage 1"),
    CounterSpec("events_invalid", ("reason",), "events dead-lettered, by reason (not late)"),
    CounterSpec("events_late", ("reason",), "events dead-lettered as older than the retention"),
    CounterSpec("unknown_fields", ("field",), "events carrying a field the schema does not know"),
    CounterSpec("sampled", ("category",), "events chosen for judging"),
    CounterSpec("not_sampled", ("category",), "events the sampler passed over"),
    CounterSpec("shed", ("category",), "events shed (budget or open circuit)"),
    CounterSpec("samples_invalid", (), "samples dead-lettered by the judge stage"),
    CounterSpec("judged_ok", ("category",), "ok judgments published"),
    CounterSpec("judged_error", ("category",), "error judgments published"),
    CounterSpec("judged_display", ("category", "display"), "ok judgments published, by display decision"),
    CounterSpec("windows_applied", (), "judgments newly counted in the Redis windows"),
    CounterSpec("duplicates_ignored", (), "judgments already counted (redelivery)"),
    CounterSpec("judgments_late", (), "judgments dead-lettered as older than the window TTL"),
    CounterSpec("judgments_after_evaluation", (), "judgments older than their category's last evaluation"),
    CounterSpec("alerts_emitted", ("category", "state"), "alerts published (firing, resolved)"),
    CounterSpec("webhook_failures", ("target",), "webhook deliveries that failed after retries"),
    CounterSpec("stage_retries", ("stage",), "failed stage steps that were retried"),
    CounterSpec("processing_errors", ("stage",), "records dead-lettered as processing_error"),
    CounterSpec("idle_advances", (), "idle close-outs run (once per quiet spell or ownership change)"),
    CounterSpec("boundaries_evaluated", (), "(category, bucket boundary) rule evaluations"),
    CounterSpec("engine_resets", (), "times the owned partitions changed and the engine reloaded"),
    CounterSpec("window_buckets_loaded", (), "window buckets the alert engine read from Redis"),
    CounterSpec("evaluation_ms", (), "wall milliseconds spent evaluating owned categories' rules"),
    CounterSpec("evaluation_cpu_ms", (), "CPU milliseconds of that thread while evaluating them"),
    CounterSpec("canaries_sent", (), "golden canary samples sent after a sampled event"),
)
COUNTER_NAMES = tuple(spec.name for spec in COUNTERS)
SPECS = {spec.name: spec for spec in COUNTERS}


@dataclass(frozen=True)
class InstrumentSpec:
    """A histogram or gauge: its OpenTelemetry name, unit (UCUM), label names and meaning."""

    name: str
    unit: str
    labels: tuple[str, ...]
    description: str


#: Teacher calls as the stream sees them: seconds per HTTP call, pairs per call.
HISTOGRAMS: tuple[InstrumentSpec, ...] = (
    InstrumentSpec("evalloop.teacher.call.duration", "s", ("outcome",), "one teacher HTTP call, by outcome"),
    InstrumentSpec("evalloop.teacher.call.pairs", "{pair}", (), "(request, item) pairs in one teacher call"),
)
#: What ``evalloop status`` shows, refreshed by the worker (streams.telemetry) for scrapers.
GAUGES: tuple[InstrumentSpec, ...] = (
    InstrumentSpec(
        "evalloop.window.share",
        "1",
        ("category", "share", "estimate", "bound", "window"),
        "a display share of the category's window: raw or bias-corrected, point or interval bound",
    ),
    InstrumentSpec(
        "evalloop.window.judged", "{judgment}", ("category", "window"), "ok judgments in the window"
    ),
    InstrumentSpec(
        "evalloop.alert.state",
        "1",
        ("rule", "category", "state"),
        "1 for the (rule, category)'s current state",
    ),
    InstrumentSpec(
        "evalloop.canary.agreement",
        "1",
        ("teacher_version", "statistic"),
        "live Gate 2 on golden canaries: weighted_kappa, kappa, agreement, samples",
    ),
    InstrumentSpec(
        "evalloop.consumer.lag", "{record}", ("topic", "partition"), "records the group has not consumed"
    ),
    InstrumentSpec("evalloop.watermark.age", "s", (), "wall clock minus the event-time watermark"),
)
INSTRUMENTS = {spec.name: spec for spec in (*HISTOGRAMS, *GAUGES)}
ALERT_STATES = ("ok", "pending", "firing", "resolved")


def _check_labels(kind: str, name: str, declared: tuple[str, ...], labels: dict[str, str]) -> None:
    if set(labels) != set(declared):
        raise ValueError(f"{kind} {name!r} takes labels {list(declared)}, got {sorted(labels)}")


class LoopMetrics:
    """The registry of the loop's metrics (see the module docstring)."""

    def __init__(self, provider: MeterProvider | None = None) -> None:
        self.reader: InMemoryMetricReader | None = None
        if provider is None:
            self.reader = InMemoryMetricReader()
            provider = MeterProvider(metric_readers=[self.reader])
        meter = provider.get_meter("evalloop.streams")
        self._otel = {
            s.name: meter.create_counter(f"evalloop.{s.name}", description=s.description) for s in COUNTERS
        }
        self._histograms = {
            s.name: meter.create_histogram(s.name, unit=s.unit, description=s.description) for s in HISTOGRAMS
        }
        self._gauges = {
            s.name: meter.create_gauge(s.name, unit=s.unit, description=s.description) for s in GAUGES
        }
        self._series: dict[tuple[str, LabelValues], int] = defaultdict(int)
        self._last: dict[tuple[str, LabelValues], float] = {}
        self._observed: dict[tuple[str, LabelValues], int] = defaultdict(int)

    def add(self, name: str, amount: int = 1, **labels: str) -> None:
        """Count ``amount`` under ``name`` with exactly the declared ``labels``."""
        spec = SPECS.get(name)
        if spec is None:
            raise ValueError(f"counter {name!r} is not declared in streams.metrics.COUNTERS")
        _check_labels("counter", name, spec.labels, labels)
        if amount:
            self._series[(name, tuple(sorted(labels.items())))] += amount
            self._otel[name].add(amount, attributes=labels)

    def observe(self, name: str, value: float, **labels: str) -> None:
        """Record ``value`` in histogram ``name``."""
        if name not in self._histograms:
            raise ValueError(f"histogram {name!r} is not declared in streams.metrics.HISTOGRAMS")
        _check_labels("histogram", name, INSTRUMENTS[name].labels, labels)
        self._observed[(name, tuple(sorted(labels.items())))] += 1
        self._histograms[name].record(value, attributes=labels)

    def set(self, name: str, value: float, **labels: str) -> None:
        """Set gauge ``name`` (with those ``labels``) to ``value``."""
        if name not in self._gauges:
            raise ValueError(f"gauge {name!r} is not declared in streams.metrics.GAUGES")
        _check_labels("gauge", name, INSTRUMENTS[name].labels, labels)
        self._last[(name, tuple(sorted(labels.items())))] = value
        self._gauges[name].set(value, attributes=labels)

    def gauge(self, name: str, **labels: str) -> float | None:
        """A gauge's last value (None when never set)."""
        return self._last.get((name, tuple(sorted(labels.items()))))

    def observations(self, name: str, **labels: str) -> int:
        """How many values the histogram series recorded."""
        return self._observed.get((name, tuple(sorted(labels.items()))), 0)

    def value(self, name: str, **labels: str) -> int:
        """The series' total since start (0 when it never moved)."""
        return self._series.get((name, tuple(sorted(labels.items()))), 0)

    def series(self) -> list[tuple[str, dict[str, str], int]]:
        """Every series that moved: (name, labels, total), sorted."""
        return [(name, dict(labels), total) for (name, labels), total in sorted(self._series.items())]

    def snapshot(self) -> dict[str, int]:
        """Each counter's total over all its labels (0 for those that never moved)."""
        totals = dict.fromkeys(COUNTER_NAMES, 0)
        for (name, _labels), total in self._series.items():
            totals[name] += total
        return totals
