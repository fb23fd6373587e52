"""How a stage retries: a dependency that is away stalls it, a record that fails on its own is
dead-lettered after a few attempts (``processing_error``) so it cannot stop the stage.

Told apart by the exception (``is_dependency_error``): Redis, Kafka, socket and HTTP transport
errors (and whatever they caused) mean a service is away, and retrying the same records until it
is back is the at-least-once choice; any other exception is a bug one record triggers, and
retrying it forever would stall every record behind it. See docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Protocol, TypeVar

import httpx
import redis
from aiokafka import errors as aiokafka_errors

from schemas.deadletter import DeadLetter, SourcePosition
from streams.config import StreamSettings
from streams.deadletter import dead_letter
from streams.metrics import LoopMetrics

log = logging.getLogger(__name__)

T = TypeVar("T")
#: Longest pause between retries of a failing stage (Redis or Kafka away).
MAX_RETRY_PAUSE_S = 30.0

#: Failures of a dependency being away (Redis, Kafka, the network): retried until healthy.
DEPENDENCY_ERRORS: tuple[type[BaseException], ...] = (
    redis.RedisError,
    OSError,  # ConnectionError, socket errors
    TimeoutError,
    asyncio.TimeoutError,
    aiokafka_errors.KafkaError,
    httpx.TransportError,
)


class StageContext(Protocol):
    """What retrying needs of ``streams.app.Components``."""

    stream: StreamSettings
    metrics: LoopMetrics

    async def publish(self, topic: str, records: Sequence[tuple[bytes | None, bytes]]) -> None: ...


GiveUp = Callable[[BaseException], Awaitable[T]]


def is_dependency_error(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) says a service is away rather than a record is bad."""
    seen: BaseException | None = error
    for _ in range(5):  # the cause chain, bounded
        if seen is None:
            return False
        if isinstance(seen, DEPENDENCY_ERRORS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


async def until_done(
    c: StageContext, stage: str, step: Callable[[], Awaitable[T]], give_up: GiveUp[T] | None = None
) -> T:
    """Run ``step`` until it succeeds, backing off, so a failing dependency stalls the stage.

    A Faust agent that raises is restarted past the records it held, which loses them; every
    stage is idempotent downstream (deterministic judgment ids, seen-markers, check-and-set alert
    state), so retrying the same records is safe. A failure that is not a dependency's counts
    against the record: after ``stream.record_attempts`` of those, ``give_up`` decides the result.
    """
    pause, record_failures = 0.5, 0
    while True:
        try:
            return await step()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            c.metrics.add("stage_retries", stage=stage)
            if not is_dependency_error(error):
                record_failures += 1
                if give_up is not None and record_failures >= c.stream.record_attempts:
                    log.error(
                        "stage %s gives up on a record after %d attempts: %r", stage, record_failures, error
                    )
                    return await give_up(error)
            log.exception("stage %s failed; retrying in %.1fs", stage, pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, MAX_RETRY_PAUSE_S)


def processing_error_letter(
    raw: bytes | None, error: BaseException, source: SourcePosition | None
) -> DeadLetter:
    """The dead letter of a record a stage gave up on: the exception text and its original bytes."""
    return dead_letter(raw, "processing_error", detail=f"{type(error).__name__}: {error}", source=source)


def dead_lettering(
    c: StageContext, stage: str, raw: bytes | None, source: SourcePosition | None, result: T
) -> GiveUp[T]:
    """A ``give_up`` that publishes the record as ``processing_error`` and returns ``result``."""

    async def give_up(error: BaseException) -> T:
        c.metrics.add("processing_errors", stage=stage)
        letter = processing_error_letter(raw, error, source)
        await until_done(c, stage, partial(c.publish, "dead_letters", [(None, letter.to_bytes())]))
        return result

    return give_up
