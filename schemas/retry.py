"""The HTTP retry conventions every client in evalloop shares: the worker's Serve client
(``streams.teacher_client``), the OpenAI-compatible backend (``judges.openai_backend``) and the
webhooks (``streams.notify``).

Which statuses deserve another try (408, 429 and 5xx), how long a server's ``Retry-After`` asks for
(delta-seconds or an HTTP date, RFC 9110 §10.2.3), the backoff schedule (exponential, "equal
jitter": half the step fixed, half random, so many clients never retry in lockstep nor collapse
to 0) and one retry loop, sync and async. It lives in ``schemas`` because it is part of the
wire contract and the one package both ``judges`` and ``streams`` may import.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TypeVar

T = TypeVar("T")

#: A server asking for a longer pause than this is waited on only this long (then retried or
#: given up; the Serve client's circuit breaker takes over from there).
MAX_RETRY_AFTER_S = 60.0


def is_retryable_status(status: int) -> bool:
    """408 (request timeout), 429 (slow down) and 5xx (the server's fault) are worth another
    try; other 4xx are the client's own mistake."""
    return status in (408, 429) or 500 <= status < 600


def parse_retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or HTTP date), or None."""
    if not value or not value.strip():
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now()
        except (TypeError, ValueError, IndexError):
            return None
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return None
    return max(seconds, 0.0)


class RetryableError(Exception):
    """One attempt failed; ``retryable`` False ends the retries at once. ``retry_after_s`` is the
    server's ``Retry-After``, honoured as the least pause before the next try."""

    def __init__(self, reason: str, *, retryable: bool = True, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with equal jitter, never shorter than the server's Retry-After
    (capped at ``max_retry_after_s``)."""

    base_s: float = 0.5
    cap_s: float = 30.0
    max_retry_after_s: float = MAX_RETRY_AFTER_S

    def delay(
        self, retry: int, retry_after_s: float | None = None, rng: Callable[[], float] = random.random
    ) -> float:
        """The pause before retry number ``retry`` (1-based)."""
        step = min(self.cap_s, self.base_s * 2.0 ** (retry - 1))
        jittered = step / 2 + rng() * step / 2
        return max(jittered, min(retry_after_s or 0.0, self.max_retry_after_s))


OnRetry = Callable[[int, RetryableError, float], None]


def _pause_after(
    failure: RetryableError,
    retry: int,
    retries: int,
    backoff: Backoff,
    on_retry: OnRetry | None,
    rng: Callable[[], float],
) -> float:
    """The pause before retry ``retry``; re-raises ``failure`` when no retry is left."""
    if not failure.retryable or retry > retries:
        raise failure
    pause = backoff.delay(retry, failure.retry_after_s, rng)
    if on_retry is not None:
        on_retry(retry, failure, pause)
    return pause


def call_with_retries(
    attempt: Callable[[], T],
    *,
    retries: int,
    backoff: Backoff,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: OnRetry | None = None,
    rng: Callable[[], float] = random.random,
) -> T:
    """``attempt()`` until it returns; a ``RetryableError`` is retried up to ``retries`` times
    (then re-raised), any other exception propagates at once."""
    retry = 0
    while True:
        try:
            return attempt()
        except RetryableError as failure:
            retry += 1
            sleep(_pause_after(failure, retry, retries, backoff, on_retry, rng))


async def acall_with_retries(
    attempt: Callable[[], Awaitable[T]],
    *,
    retries: int,
    backoff: Backoff,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    on_retry: OnRetry | None = None,
    rng: Callable[[], float] = random.random,
) -> T:
    """``call_with_retries`` for a coroutine function."""
    retry = 0
    while True:
        try:
            return await attempt()
        except RetryableError as failure:
            retry += 1
            await sleep(_pause_after(failure, retry, retries, backoff, on_retry, rng))
