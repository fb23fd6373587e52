"""streams.telemetry: the registry served as Prometheus text on loopback (names and units by the
OpenTelemetry → Prometheus rules), pushed as OTLP/HTTP protobuf to a receiver, and the status
gauges set from a status report. Real sockets on 127.0.0.1; no service needed."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from streams.metrics import GAUGES, HISTOGRAMS, LoopMetrics
from streams.offsets import PartitionLag
from streams.telemetry import Telemetry, otlp_configured, start_telemetry, status_gauges
from tests.support.prometheus import scrape


@pytest.fixture
def served() -> Iterator[Telemetry]:
    telemetry = start_telemetry("127.0.0.1", 0, env={})
    yield telemetry
    telemetry.shutdown()


def test_metrics_are_served_on_loopback_with_prometheus_names(served: Telemetry) -> None:
    assert served.metrics_url is not None and served.metrics_url.startswith("http://127.0.0.1:")
    metrics = served.metrics
    metrics.add("sampled", 3, category="Décor & Art")
    metrics.observe("evalloop.teacher.call.duration", 0.25, outcome="ok")
    metrics.observe("evalloop.teacher.call.pairs", 12)
    metrics.set("evalloop.consumer.lag", 7, topic="evalloop.events", partition="0")
    samples = scrape(served.metrics_url)
    (sampled,) = samples["evalloop_sampled_total"]
    assert sampled.value == 3 and sampled.labels["category"] == "Décor & Art"
    count = next(
        s for s in samples["evalloop_teacher_call_duration_seconds_count"] if s.labels["outcome"] == "ok"
    )
    assert count.value == 1
    assert samples["evalloop_teacher_call_duration_seconds_sum"][0].value == pytest.approx(0.25)
    assert any(s.value == 7 for s in samples["evalloop_consumer_lag"])
    assert "process_cpu_seconds_total" in samples  # the process collector beside ours
    metrics.add("sampled", 2, category="Décor & Art")
    assert scrape(served.metrics_url)["evalloop_sampled_total"][0].value == 5  # values move


def test_a_busy_port_does_not_stop_the_worker(served: Telemetry) -> None:
    assert served.metrics_url is not None
    port = int(served.metrics_url.rsplit(":", 1)[1].split("/")[0])
    second = start_telemetry("127.0.0.1", port, env={})
    try:
        assert second.metrics_url is None
        second.metrics.add("events_seen")  # still counts
        assert second.metrics.value("events_seen") == 1
    finally:
        second.shutdown()


class _Receiver(BaseHTTPRequestHandler):
    bodies: ClassVar[list[tuple[str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Receiver.bodies.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_otlp_push_reaches_a_receiver_as_protobuf() -> None:
    _Receiver.bodies.clear()
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_port}", "OTEL_SERVICE_NAME": "it"}
    assert otlp_configured(env) and not otlp_configured({})
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        telemetry = start_telemetry("127.0.0.1", None, env=env)
        telemetry.metrics.add("judged_ok", 4, category="Other")
        telemetry.shutdown()  # flushes the periodic reader
    server.shutdown()
    (path, body), *_ = [(p, b) for p, b in _Receiver.bodies if p == "/v1/metrics"]
    assert path == "/v1/metrics"
    request = ExportMetricsServiceRequest.FromString(body)
    resource = request.resource_metrics[0]
    attributes = {a.key: a.value.string_value for a in resource.resource.attributes}
    assert attributes["service.name"] == "it"
    names = {m.name: m for scope in resource.scope_metrics for m in scope.metrics}
    assert names["evalloop.judged_ok"].sum.data_points[0].as_int == 4


def test_otlp_traces_reach_a_receiver_with_the_stage_span() -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    _Receiver.bodies.clear()
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{server.server_port}/v1/traces"}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        telemetry = start_telemetry("127.0.0.1", None, env=env)
        upstream = [("traceparent", b"00-0000000000000000000000000000abcd-00000000000000ef-01")]
        span = telemetry.tracing.start("evalloop.validate", upstream, {"evalloop.event_id": "e1"})
        span.end()
        telemetry.shutdown()  # flushes the batch span processor
    server.shutdown()
    bodies = [body for path, body in _Receiver.bodies if path == "/v1/traces"]
    assert bodies, _Receiver.bodies
    spans = [
        s
        for body in bodies
        for rs in ExportTraceServiceRequest.FromString(body).resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
    ]
    (exported,) = spans
    assert exported.name == "evalloop.validate"
    assert exported.trace_id.hex() == "0000000000000000000000000000abcd"
    assert exported.parent_span_id.hex() == "00000000000000ef"


REPORT: dict[str, Any] = {
    "as_of": "2024-06-01T05:00:00+00:00",
    "categories": {
        "Décor & Art": {
            "window": "3h",
            "judged": 120,
            "shown": {"share": 0.5, "lower": 0.41, "upper": 0.59, "corrected": None},
            "related": {"share": 0.2, "lower": 0.14, "upper": 0.28, "corrected": None},
            "filtered": {
                "share": 0.3,
                "lower": 0.22,
                "upper": 0.38,
                "corrected": {"status": "corrected", "value": 0.12, "lower": 0.02, "upper": 0.25},
            },
            "alerts": {"filtered-share-burn": "firing"},
        }
    },
    "canaries": {"embedding-v2:abc": {"n": 66, "weighted_kappa": 0.65, "kappa": 0.5, "agreement": 0.67}},
}


def test_status_gauges_mirror_the_status_report() -> None:
    metrics = LoopMetrics()
    status_gauges(metrics, REPORT, [PartitionLag("evalloop.samples", 1, 10, 0, 25)])
    share = "evalloop.window.share"
    labels = {"category": "Décor & Art", "share": "filtered", "window": "3h"}
    assert metrics.gauge(share, **labels, estimate="raw", bound="point") == 0.3
    assert metrics.gauge(share, **labels, estimate="corrected", bound="lower") == 0.02
    assert metrics.gauge(share, **{**labels, "share": "shown"}, estimate="corrected", bound="point") is None
    state = {"rule": "filtered-share-burn", "category": "Décor & Art"}
    assert metrics.gauge("evalloop.alert.state", **state, state="firing") == 1.0
    assert metrics.gauge("evalloop.alert.state", **state, state="ok") == 0.0
    canary = {"teacher_version": "embedding-v2:abc"}
    assert metrics.gauge("evalloop.canary.agreement", **canary, statistic="weighted_kappa") == 0.65
    assert metrics.gauge("evalloop.canary.agreement", **canary, statistic="samples") == 66
    assert metrics.gauge("evalloop.consumer.lag", topic="evalloop.samples", partition="1") == 15
    assert metrics.gauge("evalloop.watermark.age") is not None


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: m.set("evalloop.no.such", 1.0), "is not declared"),
        (lambda m: m.set("evalloop.consumer.lag", 1.0, topic="t"), "takes labels"),
        (lambda m: m.observe("evalloop.teacher.call.pairs", 1.0, outcome="ok"), "takes labels"),
        (lambda m: m.observe("evalloop.window.share", 1.0), "is not declared"),
    ],
)
def test_undeclared_instruments_and_labels_are_refused(call: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(LoopMetrics())


def test_every_instrument_has_a_unit_and_description() -> None:
    for spec in (*HISTOGRAMS, *GAUGES):
        assert spec.name.startswith("evalloop.") and spec.unit and spec.description
