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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import faust

from schemas.alerts import Alert
from schemas.deadletter import SourcePosition
from streams.config import faust_config
from streams.retry import GiveUp, dead_lettering, until_done
from streams.stages import (
    SOURCE_PARTITION_HEADER,
    STAGE_TOPICS,
    Components,
    Incoming,
    OutRecord,
    handle_events,
    handle_idle,
    handle_judgments,
    handle_samples,
)

log = logging.getLogger(__name__)


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
        components.state.event_watermark.caught_up = caught_up_on(
            app, settings.topics.events.name, components
        )
    loop = EvalloopApp(app=app, topics=topics, components=components)
    _add_agents(loop)
    _add_timer(loop)
    return loop


T = TypeVar("T")
BatchHandler = Callable[[Sequence[Incoming]], Awaitable[list[T]]]


async def run_batch(
    c: Components, stage: str, batch: Sequence[Incoming], handler: BatchHandler[T]
) -> list[T]:
    """Run a stage's ``handler`` over ``batch`` until it succeeds (``until_done``); if the batch
    keeps failing for a record's own reason, each record is retried alone so only the one(s) at
    fault are dead-lettered (``processing_error``) and the rest go through."""

    async def one_by_one(_: BaseException) -> list[T]:
        results: list[T] = []
        for item in batch:
            give_up: GiveUp[list[T]] = dead_lettering(c, stage, item.raw, item.source, [])
            results += await until_done(c, stage, partial(handler, [item]), give_up)
        return results

    if len(batch) == 1:
        only: GiveUp[list[T]] = dead_lettering(c, stage, batch[0].raw, batch[0].source, [])
        return await until_done(c, stage, partial(handler, batch), only)
    return await until_done(c, stage, partial(handler, batch), one_by_one)


async def aggregate_batch(c: Components, batch: Sequence[Incoming]) -> int:
    """Stage 3 over a batch of judgments (see ``run_batch``); returns how many alerts it emitted."""

    async def handler(items: Sequence[Incoming]) -> list[Alert]:
        partitions = [item.source_partition or 0 for item in items]
        raws, sources = [item.raw for item in items], [item.source for item in items]
        return await handle_judgments(c, raws, partitions, sources, [item.headers for item in items])

    return len(await run_batch(c, "aggregate", batch, handler))


def _incoming(events: Sequence[Any], with_source_partition: bool = False) -> list[Incoming]:
    return [
        Incoming(
            e.value, _position(e), source_partition(e) if with_source_partition else None, e.message.headers
        )
        for e in events
    ]


def _add_agents(loop: EvalloopApp) -> None:
    app, topics, c = loop.app, loop.topics, loop.components
    stream = c.stream

    async def validate_and_sample(events_stream: Any) -> Any:
        async for events in events_stream.take_events(stream.ingest_batch, within=stream.ingest_within_s):
            yield len(await run_batch(c, "validate", _incoming(events), partial(handle_events, c)))

    async def judge(samples_stream: Any) -> Any:
        async for events in samples_stream.take_events(stream.judge_batch, within=stream.judge_within_s):
            yield len(await run_batch(c, "judge", _incoming(events), partial(handle_samples, c)))

    async def aggregate_and_alert(judgments_stream: Any) -> Any:
        async for events in judgments_stream.take_events(
            stream.aggregate_batch, within=stream.aggregate_within_s
        ):
            yield await aggregate_batch(c, _incoming(events, with_source_partition=True))

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
        # A failure here is retried at the next tick; the timer must not wait on a dependency.
        try:
            await handle_idle(c)
        except Exception:
            c.metrics.add("stage_retries", stage="idle")
            log.exception("idle close-out failed; retrying at the next check")

    async def refresh_gauges() -> None:
        if c.refresh_gauges is None:
            return
        try:  # Redis or Kafka away: the gauges keep their last values until the next tick
            await asyncio.to_thread(c.refresh_gauges)
        except Exception as error:
            log.warning("metrics: status gauges not refreshed (%s: %s)", type(error).__name__, error)

    loop.app.timer(c.stream.log_interval_s, name="evalloop.log_counters")(log_counters)
    loop.app.timer(c.stream.metrics_refresh_s, name="evalloop.refresh_gauges")(refresh_gauges)
    loop.app.timer(c.stream.idle_check_s, name="evalloop.idle_close_out")(close_out_when_idle)


def caught_up_on(app: Any, topic: str, c: Components) -> Callable[[int], bool]:
    """Whether stage 1 has read an events partition to its end (or it is another worker's)."""
    from faust.types import TP

    def caught_up(partition: int) -> bool:
        tp = TP(topic, partition)
        try:
            if tp not in app.consumer.assignment():
                return True
            high = app.consumer.highwater(tp)
        except (AttributeError, RuntimeError):
            return False
        if high is None:
            return False  # not fetched yet: unknown, so behind
        last = c.state.event_offsets.get(partition)
        return int(high) == 0 if last is None else last + 1 >= int(high)

    return caught_up


def assigned_partitions(app: Any, topic: str) -> Callable[[], frozenset[int] | None]:
    """The partitions of ``topic`` the Faust consumer is assigned now (empty while rebalancing)."""

    def owned() -> frozenset[int] | None:
        try:
            assignment = app.consumer.assignment()
        except (AttributeError, RuntimeError):  # consumer not started yet: own nothing for now
            return frozenset()
        return frozenset(tp.partition for tp in assignment if tp.topic == topic)

    return owned
