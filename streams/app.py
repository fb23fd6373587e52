"""The Faust app: topics and the three agents of the loop.

1. ``validate_and_sample``: events (raw bytes) → dead letters | samples (keyed by event_id).
2. ``judge``: samples → teacher over Ray Serve (bounded concurrency) → judgments (keyed by category).
3. ``aggregate_and_alert``: judgments → Redis windows (idempotent) → rules at the watermark →
   alerts topic + webhooks on firing/resolved only.

Each stage reads its own topic, so any stage can be replayed or scaled by partitions on its own.
Delivery is at-least-once: an agent waits for its outputs to be acknowledged before its input
offset is acknowledged, and redelivered duplicates are harmless because judgment ids are
deterministic and the windows apply each judgment id once. The stage logic lives in
``streams.pipeline``; this module only moves bytes and wires collaborators.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple, Protocol

import faust
from pydantic import ValidationError

from schemas.alerts import Alert
from schemas.events import Sample
from schemas.judgments import Judgment
from schemas.policy import Policy
from schemas.settings import Settings
from streams import pipeline
from streams.config import (
    COUNTER_NAMES,
    LoopMetrics,
    StreamSettings,
    broker_credentials,
    broker_urls,
    faust_config,
)
from streams.deadletter import DeadLetter, Reason, SourcePosition, dead_letter
from streams.evaluation import (
    LoopStateLike,
    MemoryLoopState,
    category_points,
    close_out_point,
    owned_categories,
)
from streams.notify import RetryPolicy, WebhookSender, WebhookTarget, deliver
from streams.retry import MAX_RETRY_PAUSE_S, dead_lettering, until_done
from streams.sampling import Sampler
from streams.teacher_client import CircuitBreaker, TeacherClient

log = logging.getLogger(__name__)

# Settings, metrics and the Faust config live in streams.config; re-exported here for callers.
__all__ = [
    "COUNTER_NAMES",
    "MAX_RETRY_PAUSE_S",
    "SOURCE_PARTITION_HEADER",
    "STAGE_TOPICS",
    "Components",
    "EvalloopApp",
    "FaustOutputs",
    "LoopMetrics",
    "OutRecord",
    "Outputs",
    "Records",
    "StreamSettings",
    "broker_credentials",
    "broker_urls",
    "create_app",
    "faust_config",
    "handle_event",
    "handle_judgments",
    "handle_sample",
    "source_partition",
    "until_done",
]

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
    """Everything the agents use, injected so unit tests can swap in fakes."""

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
    #: Wall clock (monotonic seconds) for the idleness rules; injected by tests.
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.sampler = Sampler(self.policy)
        self.retention_s = self.stream.retention_s or pipeline.policy_retention_s(self.policy)
        lateness, idle = self.stream.allowed_lateness_s, self.stream.partition_idle_s
        topics = self.settings.topics
        self.event_watermark = pipeline.PartitionedWatermark(lateness, topics.events.partitions, idle)
        # Judgments arrive on category-keyed partitions that mix every sample partition, and the
        # judge stage drains sample partitions at different speeds (hours of event time apart at
        # max replay speed). Each sample partition is in event-time order, so the watermark is
        # tracked per *source* sample partition (a header on each judgment) and is the minimum.
        self.judgment_watermark = pipeline.PartitionedWatermark(lateness, topics.samples.partitions, idle)
        # A judgment is only dropped once its buckets may have expired: a judgment that arrives
        # after its boundary was evaluated still counts in the windows (and is counted as such).
        self.judgment_retention_s = float(self.stream.window_ttl_s)
        self.examples = pipeline.RecentExamples()
        #: Per category, the earliest judgment event time this worker applied (where to start).
        self.first_seen: dict[str, float] = {}
        #: Wall time of the last judgment batch (or start): the idle close-out counts from it.
        self.last_input_wall = self.clock()
        #: Serialises evaluation between the aggregate agent and the idle timer.
        self.evaluation_lock = asyncio.Lock()

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


async def handle_event(c: Components, raw: bytes | None, source: SourcePosition | None) -> str:
    """Stage 1 for one event; returns what happened (for tests and logs)."""
    c.metrics.add("events_seen")
    outcome = pipeline.validate(
        raw,
        source,
        watermark=c.event_watermark,
        retention_s=c.retention_s,
        max_future_s=c.stream.max_future_s,
        unknown_fields=c.stream.unknown_fields,
    )
    if isinstance(outcome, DeadLetter):
        c.metrics.add("events_late" if outcome.reason == "late" else "events_invalid", reason=outcome.reason)
        await c.publish("dead_letters", [(None, outcome.to_bytes())])
        return f"dead_letter:{outcome.reason}"
    for name in outcome.unknown_fields:
        c.metrics.add("unknown_fields", field=name)
    if c.breaker is not None:
        c.sampler.shed_while(c.breaker.is_open)
    # Wall time: the budget protects the teacher's real capacity, which is measured in wall seconds.
    chosen = pipeline.sample(outcome.event, c.sampler, time.time())
    category = outcome.event.category
    if chosen.sample is None:
        c.metrics.add("shed" if chosen.decision.shed else "not_sampled", category=category)
        return chosen.decision.reason
    c.metrics.add("sampled", category=category)
    key = outcome.event.event_id.encode()
    # Same partition number as the event's, so each sample partition keeps its event partition's
    # event-time order (the aggregate stage's watermark relies on it).
    same_layout = c.settings.topics.samples.partitions == c.settings.topics.events.partitions
    partition = source.partition if source is not None and same_layout else None
    await c.publish("samples", [OutRecord(key, chosen.sample.model_dump_json().encode(), partition)])
    return "sampled"


def _empty_reason(raw: bytes | None) -> Reason | None:
    """'tombstone' for a null value, 'empty' for a blank one, else None."""
    if raw is None:
        return "tombstone"
    return None if raw.strip() else "empty"


async def handle_sample(c: Components, raw: bytes | None, source: SourcePosition | None) -> list[Judgment]:
    """Stage 2 for one sample: judge its items and publish the judgments keyed by category."""
    try:
        if (empty := _empty_reason(raw)) is not None:
            raise ValueError(f"{empty} value on the samples topic")
        assert raw is not None
        chosen = Sample.model_validate_json(raw)
    except (ValidationError, ValueError) as error:
        c.metrics.add("samples_invalid")
        reason = _empty_reason(raw) or "schema"
        letter = dead_letter(raw, reason, detail=f"bad sample: {str(error)[:500]}", source=source)
        await c.publish("dead_letters", [(None, letter.to_bytes())])
        return []
    requests = pipeline.to_requests(chosen, c.policy.sampling.max_items_per_event)
    judgments = await c.teacher.judge(requests)
    for judgment in judgments:
        c.metrics.add("judged_ok" if judgment.status == "ok" else "judged_error", category=judgment.category)
    headers = ((SOURCE_PARTITION_HEADER, str(source.partition).encode()),) if source is not None else ()
    records = [OutRecord(j.category.encode(), j.model_dump_json().encode(), None, headers) for j in judgments]
    await c.publish("judgments", records)
    return judgments


class BadRecord(NamedTuple):
    """A record a stage could not parse: its bytes (None for a tombstone), reason and why."""

    raw: bytes | None
    reason: Reason
    detail: str


def _parse_judgments(
    raws: Sequence[bytes | None], partitions: Sequence[int]
) -> tuple[list[Judgment], list[BadRecord], list[int]]:
    good: list[Judgment] = []
    bad: list[BadRecord] = []
    parts: list[int] = []
    for raw, partition in zip(raws, partitions, strict=True):
        empty = _empty_reason(raw)
        if empty is not None or raw is None:
            bad.append(BadRecord(raw, empty or "tombstone", f"{empty} value on the judgments topic"))
            continue
        try:
            good.append(Judgment.model_validate_json(raw))
            parts.append(partition)
        except ValidationError as error:
            bad.append(BadRecord(raw, "schema", f"bad judgment: {str(error)[:500]}"))
    return good, bad, parts


async def handle_judgments(
    c: Components, raws: Sequence[bytes | None], partitions: Sequence[int] | None = None
) -> list[Alert]:
    """Stage 3 for a batch: apply to the windows, then evaluate the owned categories at the watermark."""
    judgments, bad, parts = _parse_judgments(raws, partitions or [0] * len(raws))
    letters = [dead_letter(b.raw, b.reason, detail=b.detail) for b in bad]
    await asyncio.to_thread(_count_after_evaluation, c, judgments)
    result = await asyncio.to_thread(
        pipeline.aggregate, judgments, c.windows, c.judgment_watermark, c.judgment_retention_s, parts
    )
    letters += [dead_letter(j.model_dump_json().encode(), "late", field="event_time") for j in result.late]
    c.metrics.add("windows_applied", result.applied)
    c.metrics.add("duplicates_ignored", result.duplicates)
    c.metrics.add("judgments_late", len(result.late))
    await c.publish("dead_letters", [(None, letter.to_bytes()) for letter in letters])
    c.examples.add(judgments)
    c.last_input_wall = c.clock()
    if judgments:
        for judgment in judgments:
            seen = c.first_seen.get(judgment.category)
            epoch = judgment.event_time.timestamp()
            c.first_seen[judgment.category] = epoch if seen is None else min(seen, epoch)
        latest = max(j.event_time.timestamp() for j in judgments)
        await asyncio.to_thread(c.loop_state.note_event_time, latest)
    at = c.judgment_watermark.value
    if at is None:
        return []
    return await evaluate_until(c, at.timestamp(), result.categories)


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
    if c.clock() - c.last_input_wall < c.stream.idle_close_s:
        return []
    latest = await asyncio.to_thread(c.loop_state.latest_event_time)
    if latest is None:
        return []
    target = close_out_point(latest, c.stream.bucket_seconds)
    alerts = await evaluate_until(c, target, frozenset())
    if alerts:
        c.metrics.add("idle_advances")
    return alerts


async def evaluate_until(c: Components, target: float, touched: frozenset[str]) -> list[Alert]:
    """Evaluate the owned categories at every boundary up to ``target``; publish and notify."""
    async with c.evaluation_lock:
        await asyncio.to_thread(c.loop_state.set_watermark, target)
        alerts = await asyncio.to_thread(_evaluate_owned, c, target, touched)
        for alert in alerts:
            c.metrics.add("alerts_emitted", category=alert.category, state=alert.state)
            log.warning("alert %s %s %s", alert.state, alert.rule, alert.category)
        await c.publish("alerts", [(a.dedup_key.encode(), pipeline.alert_bytes(a)) for a in alerts])
        await _notify(c, alerts)
    return alerts


def _evaluate_owned(c: Components, target: float, touched: frozenset[str]) -> list[Alert]:
    # Every known category this worker owns, not only those in this batch: a quiet category must
    # still be able to resolve as the watermark moves on.
    partitions = c.settings.topics.judgments.partitions
    known = set(c.windows.categories()) | touched
    categories = owned_categories(known, partitions, c.owned_partitions())
    marks = c.loop_state.evaluated_through(categories)
    alerts: list[Alert] = []
    for category in categories:
        points = category_points(marks[category], c.first_seen.get(category), target, c.stream.bucket_seconds)
        for point in points:
            at = pipeline.utc_from_epoch(point)
            alerts += pipeline.evaluate_alerts(category, c.policy, c.windows, c.alert_states, at, c.examples)
        if points:
            c.loop_state.set_evaluated_through(category, points[-1])
    return alerts


async def _notify(c: Components, alerts: Sequence[Alert]) -> None:
    if not c.webhooks or c.webhook_sender is None:
        return
    sender = c.webhook_sender
    for alert in alerts:
        results = await asyncio.to_thread(deliver, alert, c.webhooks, sender, RetryPolicy(max_attempts=3))
        for result in results:
            if not result.ok:
                c.metrics.add("webhook_failures", target=result.target)
                log.warning("webhook %s failed for %s: %s", result.target, alert.alert_id, result.error)


# --------------------------------------------------------------------------- Faust wiring


class FaustOutputs:
    """Outputs over the app's Faust topics; waits for the broker's acknowledgement of every record."""

    def __init__(self, topics: dict[str, Any]) -> None:
        self._topics = topics

    async def send(self, topic: str, records: Sequence[OutRecord]) -> None:
        target = self._topics[topic]
        pending = [
            await target.send(
                key=r.key, value=r.value, partition=r.partition, headers=list(r.headers) or None
            )
            for r in records
        ]
        await asyncio.gather(*pending)


def source_partition(event: Any) -> int:
    """The sample partition a judgment came from (its header), else the message's own partition."""
    headers = event.message.headers or []
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in pairs:
        if name == SOURCE_PARTITION_HEADER:
            try:
                return int(value)
            except (TypeError, ValueError):
                break
    return int(event.message.partition)


def _position(event: Any) -> SourcePosition:
    message = event.message
    return SourcePosition(topic=message.topic, partition=message.partition, offset=message.offset)


@dataclass
class EvalloopApp:
    """The Faust app, its topics and agents, and the shared components."""

    app: Any
    topics: dict[str, Any]
    components: Components
    validate_agent: Any = None
    judge_agent: Any = None
    aggregate_agent: Any = None


def create_app(components: Components, *, faust_app: Any = None) -> EvalloopApp:
    """Build the Faust app with its topics and agents around ``components``."""
    settings, stream = components.settings, components.stream
    app = faust_app or faust.App(stream.app_id, **faust_config(settings, stream))
    specs = dict(zip(STAGE_TOPICS, settings.topics.all(), strict=True))
    topics = {
        name: app.topic(
            spec.name,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=spec.partitions,
            internal=False,
        )
        for name, spec in specs.items()
    }
    if components.outputs is None:
        components.outputs = FaustOutputs({spec.name: topics[name] for name, spec in specs.items()})
    if faust_app is None:
        components.owned_partitions = assigned_partitions(app, settings.topics.judgments.name)
    loop = EvalloopApp(app=app, topics=topics, components=components)
    _add_agents(loop)
    _add_timer(loop)
    return loop


async def aggregate_batch(
    c: Components, raws: Sequence[bytes | None], partitions: Sequence[int], sources: Sequence[SourcePosition]
) -> int:
    """Stage 3 over a batch; if the batch keeps failing for a record's own reason, each record is
    retried alone so only the one(s) at fault are dead-lettered."""
    whole = partial(handle_judgments, c, raws, partitions)

    async def one_by_one(_: BaseException) -> list[Alert]:
        alerts: list[Alert] = []
        for raw, partition, source in zip(raws, partitions, sources, strict=True):
            single = partial(handle_judgments, c, [raw], [partition])
            alerts += await until_done(
                c, "aggregate", single, dead_lettering(c, "aggregate", raw, source, [])
            )
        return alerts

    if len(raws) == 1:
        return len(
            await until_done(c, "aggregate", whole, dead_lettering(c, "aggregate", raws[0], sources[0], []))
        )
    return len(await until_done(c, "aggregate", whole, one_by_one))


def _add_agents(loop: EvalloopApp) -> None:
    app, topics, c = loop.app, loop.topics, loop.components

    async def validate_and_sample(stream: Any) -> Any:
        async for event in stream.events():
            raw, source = event.value, _position(event)
            step = partial(handle_event, c, raw, source)
            yield await until_done(
                c, "validate", step, dead_lettering(c, "validate", raw, source, "processing_error")
            )

    async def judge(stream: Any) -> Any:
        async for event in stream.events():
            raw, source = event.value, _position(event)
            step = partial(handle_sample, c, raw, source)
            yield len(await until_done(c, "judge", step, dead_lettering(c, "judge", raw, source, [])))

    async def aggregate_and_alert(stream: Any) -> Any:
        async for events in stream.take_events(c.stream.aggregate_batch, within=c.stream.aggregate_within_s):
            values, partitions = [e.value for e in events], [source_partition(e) for e in events]
            yield await aggregate_batch(c, values, partitions, [_position(e) for e in events])

    loop.validate_agent = app.agent(topics["events"], name="evalloop.validate_and_sample")(
        validate_and_sample
    )
    loop.judge_agent = app.agent(
        topics["samples"], name="evalloop.judge", concurrency=c.stream.judge_concurrency
    )(judge)
    loop.aggregate_agent = app.agent(topics["judgments"], name="evalloop.aggregate_and_alert")(
        aggregate_and_alert
    )


def _add_timer(loop: EvalloopApp) -> None:
    c = loop.components

    async def log_counters() -> None:
        log.info("evalloop counters %s", c.metrics.snapshot())

    async def close_out_when_idle() -> None:
        await until_done(c, "idle", partial(handle_idle, c))

    loop.app.timer(c.stream.log_interval_s, name="evalloop.log_counters")(log_counters)
    loop.app.timer(c.stream.idle_check_s, name="evalloop.idle_close_out")(close_out_when_idle)


def assigned_partitions(app: Any, topic: str) -> Callable[[], frozenset[int] | None]:
    """The partitions of ``topic`` the Faust consumer is assigned now (empty while rebalancing)."""

    def owned() -> frozenset[int] | None:
        try:
            assignment = app.consumer.assignment()
        except (AttributeError, RuntimeError):  # consumer not started yet: own nothing for now
            return frozenset()
        return frozenset(tp.partition for tp in assignment if tp.topic == topic)

    return owned
