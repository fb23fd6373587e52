"""W3C trace context through the loop, carried in Kafka record headers (docs/tracing.md).

A span per stage — ``evalloop.validate`` (an event), ``evalloop.judge`` (a sample through the
teacher), ``evalloop.aggregate`` (a judgment into the windows), ``evalloop.alert`` (an alert
emitted) — each the child of the context in its input record's ``traceparent`` header (an
upstream producer's, when it sent one), and its own context injected into the records it
publishes. An alert's span is the child of the aggregate span of its first example judgment and
links the others', so one trace runs from an event to the alert it helped fire. Without a
``TracerProvider`` (no OTLP endpoint configured) spans do not record and cost next to nothing;
an upstream ``traceparent`` is still passed on unchanged.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.context import Context
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    NoOpTracerProvider,
    Span,
    SpanContext,
    TracerProvider,
    set_span_in_context,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from schemas.alerts import Alert

Headers = tuple[tuple[str, bytes], ...]
TRACE_HEADERS = ("traceparent", "tracestate")
Attributes = Mapping[str, str | int | float | bool]


def trace_carrier(headers: Any) -> dict[str, str]:
    """The W3C headers of a Kafka record's headers (a mapping or a list of pairs; bytes or str)."""
    if not headers:
        return {}
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    carrier = {}
    for name, value in pairs:
        if name in TRACE_HEADERS and value is not None:
            carrier[name] = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    return carrier


class LoopTracing:
    """Starts the stage spans and moves their context in and out of record headers."""

    def __init__(self, provider: TracerProvider | None = None, remember: int = 20_000) -> None:
        self._tracer = (provider or NoOpTracerProvider()).get_tracer("evalloop.streams")
        self._propagator = TraceContextTextMapPropagator()
        self._judgments: OrderedDict[str, SpanContext] = OrderedDict()
        self._remember = remember

    def start(
        self,
        name: str,
        headers: Any = None,
        attributes: Attributes | None = None,
        parent: SpanContext | None = None,
        links: Sequence[SpanContext] = (),
    ) -> Span:
        """A started span, child of ``parent`` or else of the context in ``headers``; end it."""
        context: Context = (
            set_span_in_context(NonRecordingSpan(parent))
            if parent is not None
            else self._propagator.extract(trace_carrier(headers))
        )
        return self._tracer.start_span(
            name, context=context, attributes=dict(attributes or {}), links=[Link(c) for c in links]
        )

    def headers(self, span: Span) -> Headers:
        """``span``'s context as record headers (empty when there is no valid context)."""
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=set_span_in_context(span))
        return tuple((name, value.encode()) for name, value in carrier.items())

    def remember(self, judgment_id: str, span: Span) -> None:
        """Keep a judgment's aggregate-span context for the alert it may help fire (bounded)."""
        context = span.get_span_context()
        if context.is_valid:
            self._judgments[judgment_id] = context
            self._judgments.move_to_end(judgment_id)
            while len(self._judgments) > self._remember:
                self._judgments.popitem(last=False)

    def alert_span(self, alert: Alert) -> Span:
        """The span of an emitted alert: child of its first example's trace, linking the rest."""
        found = [self._judgments.get(example.judgment_id) for example in alert.examples]
        contexts = [context for context in found if context is not None]
        attributes: dict[str, str | int | float | bool] = {
            "evalloop.alert_id": alert.alert_id,
            "evalloop.rule": alert.rule,
            "evalloop.category": alert.category,
            "evalloop.state": alert.state,
            "evalloop.examples_traced": len(contexts),
        }
        parent = contexts[0] if contexts else None
        return self.start("evalloop.alert", attributes=attributes, parent=parent, links=contexts[1:])
