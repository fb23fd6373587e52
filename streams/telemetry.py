"""Exporting the worker's metrics: Prometheus ``/metrics`` on loopback and OTLP push (I/O edge).

``start_telemetry`` builds the MeterProvider ``LoopMetrics`` writes to, with a Prometheus reader
served by prometheus_client's HTTP server (``EVALLOOP_STREAM_METRICS_HOST``/``_PORT``; port 0
takes a free one, the log says which) and, when the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` is set, an OTLP/HTTP exporter (its other ``OTEL_*``
variables apply as documented by OpenTelemetry). ``status_gauges`` turns an ``evalloop status``
report and the group's lag into the gauges, so a scraper sees what status shows. docs/metrics.md.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from schemas.judgments import canary_category
from streams.metrics import ALERT_STATES, LoopMetrics
from streams.offsets import PartitionLag
from streams.tracing import LoopTracing

log = logging.getLogger("evalloop.telemetry")

OTLP_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
OTLP_TRACES_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


@dataclass
class Telemetry:
    """The running exporters: the registry to write to, and where ``/metrics`` is served."""

    metrics: LoopMetrics
    provider: MeterProvider
    metrics_url: str | None = None
    otlp: bool = False
    _servers: list[Any] = field(default_factory=list)
    #: Stage spans (docs/tracing.md): recording and exported only with an OTLP traces endpoint.
    tracing: LoopTracing = field(default_factory=LoopTracing)
    tracer_provider: TracerProvider | None = None

    def shutdown(self) -> None:
        """Flush OTLP (metrics and spans) and stop serving ``/metrics``."""
        for server in self._servers:
            server.shutdown()
        self.provider.shutdown()
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()


def otlp_configured(env: Mapping[str, str] = os.environ) -> bool:
    """Whether the standard OTLP endpoint variables ask for a push."""
    return any(env.get(name) for name in OTLP_ENDPOINT_VARIABLES)


def _otlp_reader() -> MetricReader:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    return PeriodicExportingMetricReader(OTLPMetricExporter())


def _prometheus_server(host: str, port: int) -> tuple[MetricReader, Any, str] | None:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
    from prometheus_client.exposition import start_http_server

    registry = CollectorRegistry()
    for collector in (ProcessCollector, PlatformCollector, GCCollector):
        collector(registry=registry)
    reader = PrometheusMetricReader(registry=registry)
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as error:  # a busy port must not stop the loop: it runs unscraped, and says so
        log.warning("metrics: cannot serve /metrics on %s:%d (%s); not exported there", host, port, error)
        return None
    return reader, server, f"http://{host}:{server.server_port}/metrics"


def start_telemetry(
    host: str, port: int | None, service: str = "evalloop-worker", env: Mapping[str, str] = os.environ
) -> Telemetry:
    """Start the exporters the settings and environment ask for; the log says where they went."""
    readers: list[MetricReader] = []
    servers: list[Any] = []
    url = None
    if port is not None and (served := _prometheus_server(host, port)) is not None:
        reader, server, url = served
        readers.append(reader)
        servers.append(server)
        log.info("metrics: serving Prometheus %s", url)
    otlp = otlp_configured(env)
    if otlp:
        readers.append(_otlp_reader())
        log.info("metrics: pushing OTLP to %s", next(env[n] for n in OTLP_ENDPOINT_VARIABLES if env.get(n)))
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or service})
    provider = MeterProvider(metric_readers=readers, resource=resource)
    tracer_provider = _tracer_provider(resource, env)
    tracing = LoopTracing(tracer_provider)
    return Telemetry(LoopMetrics(provider), provider, url, otlp, servers, tracing, tracer_provider)


def _tracer_provider(resource: Resource, env: Mapping[str, str]) -> TracerProvider | None:
    endpoint = next((env[name] for name in OTLP_TRACES_VARIABLES if env.get(name)), None)
    if endpoint is None:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    log.info("traces: exporting OTLP to %s", endpoint)
    return provider


# ---------------------------------------------------------------- status → gauges


def status_gauges(metrics: LoopMetrics, report: Mapping[str, Any], lags: Sequence[PartitionLag]) -> None:
    """Set the gauges from a ``streams.status.collect`` report and the group's lag."""
    for category, figures in report.get("categories", {}).items():
        _category_gauges(metrics, category, figures)
    for version, canary in report.get("canaries", {}).items():
        _alert_state_gauges(metrics, canary_category(version), canary.get("alerts", {}))
        for statistic in ("weighted_kappa", "kappa", "agreement", "n"):
            if canary.get(statistic) is not None:
                name = "samples" if statistic == "n" else statistic
                metrics.set(
                    "evalloop.canary.agreement", canary[statistic], teacher_version=version, statistic=name
                )
    for lag in lags:
        metrics.set("evalloop.consumer.lag", lag.lag, topic=lag.topic, partition=str(lag.partition))
    if report.get("as_of"):
        age = time.time() - datetime.fromisoformat(report["as_of"]).timestamp()
        metrics.set("evalloop.watermark.age", max(0.0, age))


def _category_gauges(metrics: LoopMetrics, category: str, figures: Mapping[str, Any]) -> None:
    window = figures["window"]
    metrics.set("evalloop.window.judged", figures["judged"], category=category, window=window)
    for share in ("shown", "related", "filtered"):
        _share_gauges(metrics, category, share, window, figures[share])
    _alert_state_gauges(metrics, category, figures.get("alerts", {}))


def _alert_state_gauges(metrics: LoopMetrics, category: str, states: Mapping[str, str]) -> None:
    for rule, state in states.items():
        for name in ALERT_STATES:
            metrics.set(
                "evalloop.alert.state", float(state == name), rule=rule, category=category, state=name
            )


def _share_gauges(
    metrics: LoopMetrics, category: str, share: str, window: str, figure: Mapping[str, Any]
) -> None:
    values = {
        ("raw", "point"): figure["share"],
        ("raw", "lower"): figure["lower"],
        ("raw", "upper"): figure["upper"],
    }
    corrected = figure.get("corrected") or {}
    for bound, key in (("point", "value"), ("lower", "lower"), ("upper", "upper")):
        if corrected.get(key) is not None:
            values[("corrected", bound)] = corrected[key]
    for (estimate, bound), value in values.items():
        metrics.set(
            "evalloop.window.share",
            value,
            category=category,
            share=share,
            estimate=estimate,
            bound=bound,
            window=window,
        )
