"""The loop's stages without Faust: the components they share and one handler per stage.

``handle_event`` (validate, sample), ``handle_sample`` (judge), ``handle_judgments`` (windows,
then the owned categories' rules at the watermark) and ``handle_idle`` (the quiet-input
close-out). ``streams.app`` wires them to Faust agents; unit tests call them with fakes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from opentelemetry.trace import Span

from schemas.alerts import Alert
from schemas.codecs import ALERTS, JUDGMENTS, SAMPLES, Undecodable
from schemas.deadletter import DeadLetter, Reason, SourcePosition
from schemas.events import Sample
from schemas.golden import GoldenItem
from schemas.judgments import CanaryTag, Judgment
from schemas.policy import Policy
from schemas.retry import Backoff
from schemas.settings import Settings
from streams import pipeline
from streams.canary import canary_samples, tag_canary
from streams.config import StreamSettings
from streams.correction import WindowCorrector
from streams.deadletter import dead_letter
from streams.engine import EngineWindows
from streams.evaluation import (
    LoopStateLike,
    MemoryLoopState,
    category_partition,
    category_points,
    close_out_point,
    owned_categories,
)
from streams.evidence import with_dashboard_link
from streams.metrics import LoopMetrics
from streams.notify import RetryPolicy, WebhookSender, WebhookTarget, deliver
from streams.stage_state import StageState
from streams.teacher_client import CircuitBreaker, TeacherClient
from streams.tracing import LoopTracing
from streams.watermark import PairedWatermarks

log = logging.getLogger(__name__)

STAGE_TOPICS = ("events", "samples", "judgments", "alerts", "dead_letters")

#: Header on each judgment naming the samples-topic partition it came from (see Components).
SOURCE_PARTITION_HEADER = "evalloop-source-partition"


class OutRecord(NamedTuple):
    """One record to publish; ``partition`` None lets the key choose it."""

    key: bytes | None
    value: bytes
    partition: int | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


Records = Sequence[OutRecord | tuple[bytes | None, bytes]]


class Outputs(Protocol):
    """Where agents publish: ``send`` returns once the records are acknowledged."""

    async def send(self, topic: str, records: Sequence[OutRecord]) -> None: ...


@dataclass
class Components:
    """The wiring the agents use (settings, policy, teacher, stores, outputs, clocks), injected so
    unit tests can swap in fakes; ``state`` holds what the stages remember between batches."""

    settings: Settings
    stream: StreamSettings
    policy: Policy
    teacher: TeacherClient
    windows: pipeline.WindowStoreLike
    alert_states: pipeline.AlertStateStoreLike
    outputs: Outputs | None = None
    breaker: CircuitBreaker | None = None
    webhooks: list[WebhookTarget] = field(default_factory=list)
    webhook_sender: WebhookSender | None = None
    loop_state: LoopStateLike = field(default_factory=MemoryLoopState)
    metrics: LoopMetrics = field(default_factory=LoopMetrics)
    #: The judgments partitions this worker is assigned (None: all, e.g. without Kafka).
    owned_partitions: Callable[[], frozenset[int] | None] = lambda: None
    #: Monotonic seconds for the idleness rules; injected by tests.
    clock: Callable[[], float] = time.monotonic

    #: Wall clock (epoch seconds) for the sampler's budget and the "too far ahead" check.
    wall_clock: Callable[[], float] = time.time
    #: The running teacher's calibration (None: rules judge raw shares; docs/calibration.md).
    corrector: WindowCorrector | None = None
    #: The golden canary split the sample stage draws live canaries from (docs/canaries.md).
    canaries: Sequence[GoldenItem] = ()
    #: Refreshes the status gauges (shares, alert states, canaries, lag) from the stores; run
    #: off the event loop by a timer (streams.telemetry). None: no exporter wants them.
    refresh_gauges: Callable[[], None] | None = None
    #: Stage spans and the trace context in record headers (docs/tracing.md); off by default.
    tracing: LoopTracing = field(default_factory=LoopTracing)

    def __post_init__(self) -> None:
        #: What the stages remember between batches (streams.stage_state).
        self.state = StageState.for_wiring(self)

    @property
    def topic_names(self) -> dict[str, str]:
        """Stage name (``events``, ``samples``, ...) → the configured Kafka topic name."""
        return {name: spec.name for name, spec in zip(STAGE_TOPICS, self.settings.topics.all(), strict=True)}

    async def publish(self, topic: str, records: Records) -> None:
        """Send to the named stage topic (``events``, ``samples``, ...)."""
        if records:
            if self.outputs is None:
                raise RuntimeError("no outputs wired: create the app with create_app()")
            out = [r if isinstance(r, OutRecord) else OutRecord(*r) for r in records]
            await self.outputs.send(self.topic_names[topic], out)


# --------------------------------------------------------------------------- stage handlers


class Incoming(NamedTuple):
    """One input record: its value (None for a tombstone), where it was read, and for judgments
    the samples partition it came from (the header; None: the record's own partition)."""

    raw: bytes | None
    source: SourcePosition | None = None
    source_partition: int | None = None
    #: The record's Kafka headers (for its ``traceparent``; streams.tracing).
    headers: Any = None


@dataclass
class Publication:
    """What one batch publishes, by stage topic; sent together, acknowledged together."""

    by_topic: dict[str, list[OutRecord]] = field(default_factory=dict)

    def add(self, topic: str, record: OutRecord) -> None:
        """Queue ``record`` for the stage topic ``topic``."""
        self.by_topic.setdefault(topic, []).append(record)

    async def send(self, c: Components) -> None:
        """Publish every queued record and wait for all acknowledgements (at-least-once)."""
        await asyncio.gather(*(c.publish(topic, records) for topic, records in self.by_topic.items()))


async def handle_event(c: Components, raw: bytes | None, source: SourcePosition | None) -> str:
    """Stage 1 for one event; returns what happened (for tests and logs)."""
    return (await handle_events(c, [Incoming(raw, source)]))[0]


async def handle_events(c: Components, batch: Sequence[Incoming]) -> list[str]:
    """Stage 1 for a batch: validate and sample each event, then publish the dead letters and
    samples of the whole batch with one wait for their acknowledgements."""
    out = Publication()
    outcomes = [_traced_ingest(c, item, out) for item in batch]
    await out.send(c)
    return outcomes


def _traced_ingest(c: Components, item: Incoming, out: Publication) -> str:
    span = c.tracing.start("evalloop.validate", item.headers)
    try:
        outcome = _ingest(c, item.raw, item.source, out, span)
        span.set_attribute("evalloop.outcome", outcome)
        return outcome
    finally:
        span.end()


def _ingest(
    c: Components, raw: bytes | None, source: SourcePosition | None, out: Publication, span: Span
) -> str:
    c.metrics.add("events_seen")
    if source is not None and source.partition is not None and source.offset is not None:
        c.state.event_offsets[source.partition] = source.offset
    outcome = pipeline.validate(
        raw,
        source,
        watermark=c.state.event_watermark,
        retention_s=c.state.retention_s,
        now=pipeline.utc_from_epoch(c.wall_clock()),
        max_future_s=c.stream.max_future_s,
        unknown_fields=c.stream.unknown_fields,
    )
    if isinstance(outcome, DeadLetter):
        c.metrics.add("events_late" if outcome.reason == "late" else "events_invalid", reason=outcome.reason)
        out.add("dead_letters", OutRecord(None, outcome.to_bytes(), None, c.tracing.headers(span)))
        return f"dead_letter:{outcome.reason}"
    for name in outcome.unknown_fields:
        c.metrics.add("unknown_fields", field=name)
    if c.breaker is not None:
        c.state.sampler.shed_while(c.breaker.is_open)
    # Wall time: the budget protects the teacher's real capacity, which is measured in wall seconds.
    chosen = pipeline.sample(outcome.event, c.state.sampler, c.wall_clock())
    category = outcome.event.category
    span.set_attributes({"evalloop.event_id": outcome.event.event_id, "evalloop.category": category})
    if chosen.sample is None:
        c.metrics.add("shed" if chosen.decision.shed else "not_sampled", category=category)
        return chosen.decision.reason
    c.metrics.add("sampled", category=category)
    key = outcome.event.event_id.encode()
    # Same partition number as the event's, so each sample partition keeps its event partition's
    # event-time order (the aggregate stage's watermark relies on it).
    same_layout = c.settings.topics.samples.partitions == c.settings.topics.events.partitions
    partition = source.partition if source is not None and same_layout else None
    trace = c.tracing.headers(span)
    out.add("samples", OutRecord(key, SAMPLES.encode(chosen.sample), partition, trace))
    for canary in canary_samples(chosen.sample, c.canaries, c.policy):
        c.metrics.add("canaries_sent")
        out.add(
            "samples", OutRecord(canary.event.event_id.encode(), SAMPLES.encode(canary), partition, trace)
        )
    return "sampled"


def _parse_sample(
    raw: bytes | None, source: SourcePosition | None, c: Components, out: Publication
) -> Sample | None:
    parsed = SAMPLES.decode(raw)
    if not isinstance(parsed, Undecodable):
        return parsed
    c.metrics.add("samples_invalid")
    reason, detail = parsed
    out.add(
        "dead_letters", OutRecord(None, dead_letter(raw, reason, detail=detail, source=source).to_bytes())
    )
    return None


async def handle_sample(c: Components, raw: bytes | None, source: SourcePosition | None) -> list[Judgment]:
    """Stage 2 for one sample: judge its items and publish the judgments keyed by category."""
    return await handle_samples(c, [Incoming(raw, source)])


async def handle_samples(c: Components, batch: Sequence[Incoming]) -> list[Judgment]:
    """Stage 2 for a batch: judge every item of every sample in one teacher round (the client
    splits it into calls of ``teacher_max_batch`` sent concurrently), then publish all judgments
    keyed by category, each naming its sample's partition, with one wait for the acknowledgements."""
    out = Publication()
    requests: list[pipeline.TeacherRequest] = []
    headers: list[tuple[tuple[str, bytes], ...]] = []
    tags: list[CanaryTag | None] = []
    model_versions: list[str] = []
    spans: list[Span] = []
    for item in batch:
        chosen = _parse_sample(item.raw, item.source, c, out)
        if chosen is None:
            continue
        pairs = pipeline.to_requests(chosen, c.policy.sampling.max_items_per_event)
        span = c.tracing.start("evalloop.judge", item.headers, _judge_attributes(chosen, len(pairs)))
        spans.append(span)
        partition = item.source.partition if item.source is not None else None
        header = c.tracing.headers(span)
        if partition is not None:
            header = ((SOURCE_PARTITION_HEADER, str(partition).encode()), *header)
        requests += pairs
        headers += [header] * len(pairs)
        tags += [chosen.canary] * len(pairs)
        model_versions += [chosen.event.model_version] * len(pairs)
    judged = await c.teacher.judge(requests) if requests else []
    judgments = [
        tag_canary(judgment, tag).model_copy(update={"model_version": version})
        for judgment, tag, version in zip(judged, tags, model_versions, strict=True)
    ]
    for judgment, header in zip(judgments, headers, strict=True):
        c.metrics.add("judged_ok" if judgment.status == "ok" else "judged_error", category=judgment.category)
        if judgment.display is not None:
            c.metrics.add("judged_display", category=judgment.category, display=judgment.display)
        out.add(
            "judgments",
            OutRecord(judgment.category.encode(), JUDGMENTS.encode(judgment), None, header),
        )
    await out.send(c)
    for span in spans:
        span.end()
    return judgments


def _judge_attributes(sample: Sample, pairs: int) -> dict[str, str | int]:
    return {
        "evalloop.event_id": sample.event.event_id,
        "evalloop.category": sample.event.category,
        "evalloop.pairs": pairs,
    }


class BadRecord(NamedTuple):
    """A record a stage could not parse: its bytes (None for a tombstone), reason, why, and where."""

    raw: bytes | None
    reason: Reason
    detail: str
    source: SourcePosition | None = None


class ParsedJudgments(NamedTuple):
    """A judgments batch split into what parsed (with source partitions) and what did not."""

    good: list[Judgment]
    bad: list[BadRecord]
    partitions: list[int]
    #: judgment id → its original bytes and position, for a late judgment's dead letter.
    originals: dict[str, tuple[bytes, SourcePosition | None]]
    #: judgment id → its record's headers (its trace context).
    headers: dict[str, Any]


def _parse_judgments(
    raws: Sequence[bytes | None],
    partitions: Sequence[int],
    sources: Sequence[SourcePosition | None],
    judgments_partitions: int,
    headers: Sequence[Any],
) -> ParsedJudgments:
    """Decode a batch; each good judgment's watermark key is (the judgments partition it was read
    from, or where its category's key puts it when read without Kafka, its source partition)."""
    parsed = ParsedJudgments([], [], [], {}, {})
    for raw, partition, source, header in zip(raws, partitions, sources, headers, strict=True):
        judgment = JUDGMENTS.decode(raw)
        if isinstance(judgment, Undecodable):
            parsed.bad.append(BadRecord(raw, *judgment, source))
            continue
        assert raw is not None
        parsed.good.append(judgment)
        read_from = source.partition if source is not None and source.partition is not None else None
        if read_from is None:
            read_from = category_partition(judgment.category, judgments_partitions)
        parsed.partitions.append(PairedWatermarks.key(read_from, partition))
        parsed.originals[judgment.judgment_id] = (raw, source)
        parsed.headers[judgment.judgment_id] = header
    return parsed


def _trace_aggregated(c: Components, parsed: ParsedJudgments) -> None:
    for judgment in parsed.good:
        attributes = {"evalloop.judgment_id": judgment.judgment_id, "evalloop.category": judgment.category}
        span = c.tracing.start("evalloop.aggregate", parsed.headers.get(judgment.judgment_id), attributes)
        c.tracing.remember(judgment.judgment_id, span)
        span.end()


async def handle_judgments(
    c: Components,
    raws: Sequence[bytes | None],
    partitions: Sequence[int] | None = None,
    sources: Sequence[SourcePosition | None] | None = None,
    headers: Sequence[Any] | None = None,
) -> list[Alert]:
    """Stage 3 for a batch: apply to the windows, then evaluate the owned categories at the watermark.

    Every dead letter keeps the record's original bytes and its position on the judgments topic.
    """
    positions = sources or [None] * len(raws)
    count = c.settings.topics.judgments.partitions
    parsed = _parse_judgments(
        raws, partitions or [0] * len(raws), positions, count, headers or [None] * len(raws)
    )
    judgments = parsed.good
    letters = [dead_letter(b.raw, b.reason, detail=b.detail, source=b.source) for b in parsed.bad]
    await asyncio.to_thread(_count_after_evaluation, c, judgments)
    async with c.state.evaluation_lock:  # the cached windows are read by the idle timer's evaluation
        result = await asyncio.to_thread(
            pipeline.aggregate,
            judgments,
            c.windows,
            c.state.judgment_watermark,
            c.state.judgment_retention_s,
            parsed.partitions,
        )
    for late in result.late:
        raw, source = parsed.originals[late.judgment_id]
        letters.append(dead_letter(raw, "late", field="event_time", event_id=late.event_id, source=source))
    c.metrics.add("windows_applied", result.applied)
    c.metrics.add("duplicates_ignored", result.duplicates)
    c.metrics.add("judgments_late", len(result.late))
    await c.publish("dead_letters", [(None, letter.to_bytes()) for letter in letters])
    c.state.examples.add(judgments)
    _trace_aggregated(c, parsed)
    c.state.last_input_wall, c.state.closed_out = c.clock(), None
    if judgments:
        for judgment in judgments:
            seen = c.state.first_seen.get(judgment.category)
            epoch = judgment.event_time.timestamp()
            c.state.first_seen[judgment.category] = epoch if seen is None else min(seen, epoch)
        latest = max(j.event_time.timestamp() for j in judgments)
        await asyncio.to_thread(c.loop_state.note_event_time, latest)
    return await evaluate_until(c, _partition_watermark(c), result.categories)


def _partition_watermark(c: Components) -> Callable[[str], float | None]:
    """A category's target: its judgments partition's watermark (None: not yet)."""
    partitions = c.settings.topics.judgments.partitions

    def target(category: str) -> float | None:
        at = c.state.judgment_watermark.at(category_partition(category, partitions))
        return at.timestamp() if at is not None else None

    return target


def _count_after_evaluation(c: Components, judgments: Sequence[Judgment]) -> None:
    marks = c.loop_state.evaluated_through(sorted({j.category for j in judgments}))
    behind = sum(
        1 for j in judgments if (m := marks.get(j.category)) is not None and j.event_time.timestamp() < m
    )
    c.metrics.add("judgments_after_evaluation", behind)


async def handle_idle(c: Components) -> list[Alert]:
    """The idle close-out (docs/alerts.md, "Quiet hours"): once no judgment has arrived for
    ``idle_close_s``, evaluate the owned categories up to ``close_out_point`` of the latest
    judgment any worker applied, as the backtest does at the end of its stream."""
    if c.clock() - c.state.last_input_wall < c.stream.idle_close_s:
        return []
    latest = await asyncio.to_thread(c.loop_state.latest_event_time)
    if latest is None:
        return []
    # Once closed out, nothing changes until judgments arrive or partitions move: the timer then
    # costs nothing but the check above and one read of the latest event time.
    key = (close_out_point(latest, c.stream.bucket_seconds), c.owned_partitions())
    if key == c.state.closed_out:
        return []
    alerts = await evaluate_until(c, key[0], frozenset())
    c.state.closed_out = key
    c.metrics.add("idle_advances")
    return alerts


#: Where evaluation may go: one event time for every category (the idle close-out), or each
#: category's own (its judgments partition's watermark; None: not yet).
Target = float | Callable[[str], float | None]


async def evaluate_until(c: Components, target: Target, touched: frozenset[str]) -> list[Alert]:
    """Evaluate the owned categories at every boundary up to ``target``; publish and notify."""
    async with c.state.evaluation_lock:
        least = c.state.judgment_watermark.value
        mark = target if isinstance(target, float) else (least.timestamp() if least is not None else None)
        if mark is not None:
            await asyncio.to_thread(c.loop_state.set_watermark, mark)
        alerts = await asyncio.to_thread(_evaluate_owned, c, target, touched)
        alerts = [with_dashboard_link(a, c.settings.dashboard_url) for a in alerts]
        records: list[OutRecord] = []
        for alert in alerts:
            c.metrics.add("alerts_emitted", category=alert.category, state=alert.state)
            log.warning("alert %s %s %s", alert.state, alert.rule, alert.category)
            span = c.tracing.alert_span(alert)
            records.append(
                OutRecord(alert.dedup_key.encode(), ALERTS.encode(alert), None, c.tracing.headers(span))
            )
            span.end()
        await c.publish("alerts", records)
        await _notify(c, alerts)
    return alerts


def _evaluate_owned(c: Components, target: Target, touched: frozenset[str]) -> list[Alert]:
    # Every known category this worker owns, not only those in this batch: a quiet category must
    # still be able to resolve as the watermark moves on.
    started, started_cpu = time.perf_counter(), time.thread_time()
    partitions, owned = c.settings.topics.judgments.partitions, c.owned_partitions()
    if owned != c.state.last_owned:
        c.state.engine.reset()  # a category may have been applied by another worker meanwhile
        c.metrics.add("engine_resets")
        log.info(
            "owned judgments partitions %s (were %s): alert engine reloads from Redis",
            owned,
            c.state.last_owned,
        )
    c.state.last_owned = owned
    known = set(c.windows.categories()) | touched
    categories = owned_categories(known, partitions, owned)
    marks = c.loop_state.evaluated_through(categories)
    alerts: list[Alert] = []
    reached: dict[str, float] = {}
    for category in categories:
        goal = target if isinstance(target, float) else target(category)
        if goal is None:
            continue
        points = category_points(
            marks[category], c.state.first_seen.get(category), goal, c.stream.bucket_seconds
        )
        alerts += c.state.engine.evaluate(category, points)
        c.metrics.add("boundaries_evaluated", len(points))
        if points:
            reached[category] = points[-1]
    c.loop_state.set_evaluated_through(reached)
    if isinstance(c.windows, EngineWindows):
        c.metrics.add(
            "window_buckets_loaded", c.windows.buckets_loaded - c.metrics.value("window_buckets_loaded")
        )
    c.metrics.add("evaluation_ms", round(1000 * (time.perf_counter() - started)))
    c.metrics.add("evaluation_cpu_ms", round(1000 * (time.thread_time() - started_cpu)))
    return alerts


#: Webhooks are sent while the evaluation lock is held (the aggregate stage waits): two retries,
#: and a target's Retry-After is honoured up to 5 s only (the alerts topic has the alert anyway).
NOTIFY_RETRY = RetryPolicy(max_attempts=3, backoff=Backoff(base_s=0.5, cap_s=2.0, max_retry_after_s=5.0))


async def _notify(c: Components, alerts: Sequence[Alert]) -> None:
    if not c.webhooks or c.webhook_sender is None:
        return
    sender = c.webhook_sender
    for alert in alerts:
        results = await asyncio.to_thread(deliver, alert, c.webhooks, sender, NOTIFY_RETRY)
        for result in results:
            if not result.ok:
                c.metrics.add("webhook_failures", target=result.target)
                log.warning("webhook %s failed for %s: %s", result.target, alert.alert_id, result.error)
