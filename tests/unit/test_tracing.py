"""Traces through the loop with an in-memory exporter: an upstream ``traceparent`` on the event is
continued by the validate, judge and aggregate spans through the records' headers, and the alert
the event's judgments helped fire is in the same trace; without a provider nothing records but an
upstream context passes on unchanged; malformed headers start a fresh trace instead of failing."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from schemas.codecs import ALERTS
from schemas.policy import load_policy
from streams.config import StreamSettings
from streams.pipeline import MemoryAlertStateStore, MemoryWindowStore
from streams.stages import Components, Incoming, handle_events, handle_judgments, handle_samples
from streams.tracing import LoopTracing, trace_carrier
from tests.support.policies import burn_rate_policy
from tests.support.topics import topic_settings
from tests.unit.test_agents import EVENTS, FakeTeacher, RecordingOutputs

DEGRADED_EVENTS = 150


def traceparent(trace_id: int, span_id: int) -> bytes:
    return f"00-{trace_id:032x}-{span_id:016x}-01".encode()


def components(tmp_path: Path, tracing: LoopTracing) -> tuple[Components, RecordingOutputs]:
    policy = load_policy(burn_rate_policy(tmp_path))
    outputs = RecordingOutputs()
    c = Components(
        settings=topic_settings(),
        stream=StreamSettings(allowed_lateness_s=60),
        policy=policy,
        teacher=FakeTeacher(policy, grade=0),  # everything filtered: the page rule fires
        windows=MemoryWindowStore(),
        alert_states=MemoryAlertStateStore(),
        outputs=outputs,
        tracing=tracing,
    )
    return c, outputs


async def run_loop(c: Components, outputs: RecordingOutputs, upstream: list[Any]) -> None:
    raws = [line.strip() for line, _ in zip(EVENTS.open("rb"), range(DEGRADED_EVENTS), strict=False)]
    await handle_events(
        c, [Incoming(raw, None, None, headers) for raw, headers in zip(raws, upstream, strict=True)]
    )
    samples = outputs.full["t.samples"]
    await handle_samples(c, [Incoming(r.value, None, None, r.headers) for r in samples])
    judged = outputs.full["t.judgments"]
    await handle_judgments(c, [r.value for r in judged], [0] * len(judged), None, [r.headers for r in judged])


def by_id(spans: tuple[ReadableSpan, ...]) -> dict[int, ReadableSpan]:
    return {span.context.span_id: span for span in spans}


async def test_one_trace_runs_from_an_upstream_event_to_its_alert(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    c, outputs = components(tmp_path, LoopTracing(provider))
    rng = random.Random(7)
    upstream_ids = [(rng.getrandbits(128), rng.getrandbits(64)) for _ in range(DEGRADED_EVENTS)]
    await run_loop(c, outputs, [(("traceparent", traceparent(t, s)),) for t, s in upstream_ids])

    firing_record = next(r for r in outputs.full["t.alerts"] if b'"state":"firing"' in r.value)
    alert = ALERTS.decode(firing_record.value)
    assert not isinstance(alert, Exception) and alert.examples
    alert_trace = int(trace_carrier(firing_record.headers)["traceparent"].split("-")[1], 16)

    spans = by_id(exporter.get_finished_spans())
    (alert_span,) = [
        s
        for s in spans.values()
        if s.name == "evalloop.alert" and s.attributes["evalloop.alert_id"] == alert.alert_id
    ]
    chain = [alert_span]
    while chain[-1].parent is not None and chain[-1].parent.span_id in spans:
        chain.append(spans[chain[-1].parent.span_id])
    assert [s.name for s in chain] == [
        "evalloop.alert",
        "evalloop.aggregate",
        "evalloop.judge",
        "evalloop.validate",
    ]
    first = alert.examples[0]
    assert chain[1].attributes["evalloop.judgment_id"] == first.judgment_id
    assert (
        chain[2].attributes["evalloop.event_id"] == chain[3].attributes["evalloop.event_id"] == first.event_id
    )
    # The validate span continues the producer's trace: same trace id, parent = the upstream span.
    index = next(i for i, line in enumerate(EVENTS.open("rb")) if first.event_id.encode() in line)
    trace_id, span_id = upstream_ids[index]
    assert chain[3].parent is not None and chain[3].parent.span_id == span_id
    assert {s.context.trace_id for s in chain} == {trace_id} == {alert_trace}
    assert len(alert_span.links) == min(len(alert.examples), 5) - 1  # the other examples' traces


async def test_without_a_provider_nothing_records_but_upstream_context_passes(tmp_path: Path) -> None:
    c, outputs = components(tmp_path, LoopTracing())
    upstream = traceparent(0xABC, 0xDEF)
    await run_loop(c, outputs, [(("traceparent", upstream),)] * DEGRADED_EVENTS)
    for topic in ("t.samples", "t.judgments"):
        assert all(trace_carrier(r.headers)["traceparent"] == upstream.decode() for r in outputs.full[topic])


@pytest.mark.parametrize(
    "headers",
    [
        None,
        [],
        [("traceparent", b"garbage")],
        {"traceparent": "00-zz-zz-01"},
        [("traceparent", None)],
        [("other", b"x")],
    ],
)
def test_malformed_or_missing_headers_start_a_fresh_trace(headers: Any) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = LoopTracing(provider)
    span = tracing.start("evalloop.validate", headers)
    span.end()
    (finished,) = exporter.get_finished_spans()
    assert finished.parent is None and finished.context.is_valid
    assert trace_carrier(tracing.headers(span))["traceparent"].startswith("00-")
