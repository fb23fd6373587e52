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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple, Protocol, TypeVar

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
from streams.deadletter import DeadLetter, SourcePosition, dead_letter
from streams.notify import RetryPolicy, WebhookSender, WebhookTarget, deliver
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
    "WatermarkSink",
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


class WatermarkSink(Protocol):
    """Persists the aggregate stage's watermark (epoch seconds) so `evalloop status` can read it."""

    def set_watermark(self, epoch: float) -> None: ...


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
    watermark_sink: WatermarkSink | None = None
    metrics: LoopMetrics = field(default_factory=LoopMetrics)

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
        #: Event time (epoch) of the last alert evaluation: rules run at each bucket boundary.
        self.last_evaluated: float | None = None

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


async def handle_event(c: Components, raw: bytes, source: SourcePosition | None) -> str:
    """Stage 1 for one event; returns what happened (for tests and logs)."""
    c.metrics.add("events_seen")
    outcome = pipeline.validate(
        raw,
        source,
        watermark=c.event_watermark,
        retention_s=c.retention_s,
        max_future_s=c.stream.max_future_s,
    )
    if isinstance(outcome, DeadLetter):
        c.metrics.add("events_late" if outcome.reason == "late" else "events_invalid", reason=outcome.reason)
        await c.publish("dead_letters", [(None, outcome.to_bytes())])
        return f"dead_letter:{outcome.reason}"
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


async def handle_sample(c: Components, raw: bytes, source: SourcePosition | None) -> list[Judgment]:
    """Stage 2 for one sample: judge its items and publish the judgments keyed by category."""
    try:
        chosen = Sample.model_validate_json(raw)
    except ValidationError as error:
        c.metrics.add("samples_invalid")
        letter = dead_letter(raw, "schema", detail=f"bad sample: {str(error)[:500]}", source=source)
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


def _parse_judgments(
    raws: Sequence[bytes], partitions: Sequence[int]
) -> tuple[list[Judgment], list[tuple[bytes, str]], list[int]]:
    good: list[Judgment] = []
    bad: list[tuple[bytes, str]] = []
    parts: list[int] = []
    for raw, partition in zip(raws, partitions, strict=True):
        try:
            good.append(Judgment.model_validate_json(raw))
            parts.append(partition)
        except ValidationError as error:
            bad.append((raw, str(error)[:500]))
    return good, bad, parts


async def handle_judgments(
    c: Components, raws: Sequence[bytes], partitions: Sequence[int] | None = None
) -> list[Alert]:
    """Stage 3 for a batch: apply to the windows, then evaluate every category at the watermark."""
    judgments, bad, parts = _parse_judgments(raws, partitions or [0] * len(raws))
    letters = [dead_letter(raw, "schema", detail=f"bad judgment: {why}") for raw, why in bad]
    if c.last_evaluated is not None:
        behind = sum(1 for j in judgments if j.event_time.timestamp() < c.last_evaluated)
        c.metrics.add("judgments_after_evaluation", behind)
    result = await asyncio.to_thread(
        pipeline.aggregate, judgments, c.windows, c.judgment_watermark, c.judgment_retention_s, parts
    )
    letters += [dead_letter(j.model_dump_json().encode(), "late", field="event_time") for j in result.late]
    c.metrics.add("windows_applied", result.applied)
    c.metrics.add("duplicates_ignored", result.duplicates)
    c.metrics.add("judgments_late", len(result.late))
    await c.publish("dead_letters", [(None, letter.to_bytes()) for letter in letters])
    c.examples.add(judgments)
    at = c.judgment_watermark.value
    if at is None:
        return []
    if c.watermark_sink is not None:
        await asyncio.to_thread(c.watermark_sink.set_watermark, at.timestamp())
    points = pipeline.evaluation_points(c.last_evaluated, at.timestamp(), c.stream.bucket_seconds)
    alerts: list[Alert] = []
    for point in points:
        alerts += await asyncio.to_thread(_evaluate_all, c, pipeline.utc_from_epoch(point), result.categories)
    c.last_evaluated = points[-1] if points else c.last_evaluated
    for alert in alerts:
        c.metrics.add("alerts_emitted", category=alert.category, state=alert.state)
        log.warning("alert %s %s %s", alert.state, alert.rule, alert.category)
    await c.publish("alerts", [(a.dedup_key.encode(), pipeline.alert_bytes(a)) for a in alerts])
    await _notify(c, alerts)
    return alerts


def _evaluate_all(c: Components, at: Any, touched: frozenset[str]) -> list[Alert]:
    # Every known category, not only those in this batch: a quiet category must still be able to
    # resolve (or go stale) as the watermark moves on.
    categories = sorted(set(c.windows.categories()) | touched)
    alerts: list[Alert] = []
    for category in categories:
        alerts += pipeline.evaluate_alerts(category, c.policy, c.windows, c.alert_states, at, c.examples)
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
    loop = EvalloopApp(app=app, topics=topics, components=components)
    _add_agents(loop)
    _add_timer(loop)
    return loop


T = TypeVar("T")
#: Longest pause between retries of a failing stage (Redis or Kafka away).
MAX_RETRY_PAUSE_S = 30.0


async def until_done(c: Components, stage: str, step: Callable[[], Awaitable[T]]) -> T:
    """Run ``step`` until it succeeds, backing off, so a failing dependency stalls the stage.

    A Faust agent that raises is restarted past the records it held, which loses them; every
    stage is idempotent downstream (deterministic judgment ids, seen-markers, check-and-set alert
    state), so retrying the same records is safe, and stalling is the at-least-once choice.
    """
    pause = 0.5
    while True:
        try:
            return await step()
        except asyncio.CancelledError:
            raise
        except Exception:
            c.metrics.add("stage_retries", stage=stage)
            log.exception("stage %s failed; retrying in %.1fs", stage, pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, MAX_RETRY_PAUSE_S)


def _add_agents(loop: EvalloopApp) -> None:
    app, topics, c = loop.app, loop.topics, loop.components

    async def validate_and_sample(stream: Any) -> Any:
        async for event in stream.events():
            raw, source = event.value, _position(event)
            yield await until_done(c, "validate", partial(handle_event, c, raw, source))

    async def judge(stream: Any) -> Any:
        async for event in stream.events():
            raw, source = event.value, _position(event)
            yield len(await until_done(c, "judge", partial(handle_sample, c, raw, source)))

    async def aggregate_and_alert(stream: Any) -> Any:
        async for events in stream.take_events(c.stream.aggregate_batch, within=c.stream.aggregate_within_s):
            values, partitions = [e.value for e in events], [source_partition(e) for e in events]
            alerts = await until_done(c, "aggregate", partial(handle_judgments, c, values, partitions))
            yield len(alerts)

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

    loop.app.timer(c.stream.log_interval_s, name="evalloop.log_counters")(log_counters)
