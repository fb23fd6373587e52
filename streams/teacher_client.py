"""The streams side of the teacher: an HTTP client of the Ray Serve app, hardened for a stream.

Why HTTP and not ``ray.serve.get_app_handle``: the Faust worker then needs no Ray in its process
(no multi-second import, no driver connection, no Ray version coupling), the teacher can run on any
Serve cluster reachable over the network, and the contract is plain JSON that tests can fake. The
price is ~3 ms per call on loopback versus a handle, which batching of up to ``max_batch`` pairs
per call amortises.

Robustness: a semaphore bounds in-flight calls (back-pressure on the judge agent), each call has a
timeout, transient failures are retried with exponential backoff and jitter, and a circuit breaker
opens after ``failure_threshold`` consecutive failures so an outage costs one fast failure per
sample instead of ``retries × timeout``. The sampler consults the breaker (``Sampler.shed_while``)
so events arriving during an outage are shed, not queued. Pairs that still fail become schema-valid
*error judgments* (status "error"), which the windows count apart from quality.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, Literal, Protocol

import httpx
from pydantic import ValidationError

from schemas.judgments import Judgment
from schemas.policy import Policy, identity_mismatch
from schemas.retry import (
    Backoff,
    RetryableError,
    acall_with_retries,
    is_retryable_status,
    parse_retry_after,
)
from schemas.verdicts import error_judgment, judgment_problem
from streams.metrics import LoopMetrics
from streams.pipeline import TeacherRequest

log = logging.getLogger(__name__)

UNAVAILABLE_TEACHER_VERSION = "unavailable"

BreakerState = Literal["closed", "open", "half_open"]


class TeacherClient(Protocol):
    """What the judge agent needs: one judgment per request, in order; never raises."""

    async def judge(self, requests: Sequence[TeacherRequest]) -> list[Judgment]: ...


class TeacherCallError(RetryableError):
    """One failed call; ``retryable`` says whether trying again could help (schemas.retry)."""

    def __init__(
        self, message: str, *, retryable: bool, teacher_fault: bool = True, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message, retryable=retryable, retry_after_s=retry_after_s)
        #: False for our own bad requests (HTTP 4xx): those say nothing about the teacher's health.
        self.teacher_fault = teacher_fault


def error_judgment_for(
    request: TeacherRequest,
    policy_version: str,
    reason: str,
    teacher_version: str = UNAVAILABLE_TEACHER_VERSION,
    now: datetime | None = None,
) -> Judgment:
    """A schema-valid error judgment for a pair the teacher could not grade (never a guessed
    grade): ``schemas.verdicts.error_judgment``, the teachers' own builder."""
    return error_judgment(
        request, policy_version, teacher_version, reason or "teacher unavailable", None, now
    )


class CircuitBreaker:
    """Closed → open after ``failure_threshold`` consecutive failures → half-open after
    ``cooldown_s`` (one probe call) → closed on its success, open again on its failure."""

    def __init__(
        self,
        failure_threshold: int = 5,
        cooldown_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1 or cooldown_s <= 0:
            raise ValueError("failure_threshold must be >= 1 and cooldown_s > 0")
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._state: BreakerState = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False
        self.opens = 0

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker whose cool-down passed reads as half-open."""
        if self._state == "open" and self._clock() - self._opened_at >= self.cooldown_s:
            self._state = "half_open"
            self._probe_in_flight = False
        return self._state

    @property
    def is_open(self) -> bool:
        """True while calls fail fast; False once half-open, so new samples can carry the probe."""
        return self.state == "open"

    def allow(self) -> bool:
        """May a call go out now? In half-open, only the single probe may."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._probe_in_flight:
            self._probe_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        """A call succeeded: close."""
        self._state = "closed"
        self._failures = 0
        self._probe_in_flight = False

    def record_failure(self) -> None:
        """A call failed: count it, and open at the threshold (or at once when probing)."""
        self._failures += 1
        if self._state == "half_open" or self._failures >= self.failure_threshold:
            if self._state != "open":
                self.opens += 1
                log.warning("teacher circuit open after %d consecutive failures", self._failures)
            self._state = "open"
            self._opened_at = self._clock()
            self._probe_in_flight = False


@dataclass
class ClientCounters:
    """Process-local call statistics of the teacher client."""

    calls: int = 0
    retries: int = 0
    failed_calls: int = 0
    rejected_by_breaker: int = 0


class ServeTeacherClient:
    """Calls the teacher's Serve HTTP route: ``POST {"requests": [...]}`` → ``{"judgments": [...]}``."""

    def __init__(
        self,
        url: str,
        policy_version: str,
        *,
        max_concurrency: int = 8,
        timeout_s: float = 30.0,
        retries: int = 3,
        backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
        max_batch: int = 64,
        breaker: CircuitBreaker | None = None,
        http: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        policy: Policy | None = None,
        metrics: LoopMetrics | None = None,
    ) -> None:
        self.url = url
        #: Where each call's duration and size go (``evalloop.teacher.call.*``); None: nowhere.
        self.metrics = metrics
        self.policy_version = policy_version
        #: When given, ok judgments are checked against it (see ``off_policy_reason``).
        self.policy = policy
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff = Backoff(base_s=backoff_s, cap_s=max_backoff_s)
        self.max_batch = max_batch
        self.breaker = breaker or CircuitBreaker()
        self.counters = ClientCounters()
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._http = http or httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)))
        self._sleep = sleep

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self._http.aclose()

    async def judge(self, requests: Sequence[TeacherRequest]) -> list[Judgment]:
        """One judgment per request, in order; failures after retries become error judgments."""
        # Calls of ``max_batch`` requests, in flight together (the semaphore bounds them), in order.
        chunks = [
            requests[start : start + self.max_batch] for start in range(0, len(requests), self.max_batch)
        ]
        answers = await asyncio.gather(*(self._judge_batch(chunk) for chunk in chunks))
        return [judgment for answer in answers for judgment in answer]

    async def _judge_batch(self, batch: Sequence[TeacherRequest]) -> list[Judgment]:
        try:
            judgments = await self._call_with_retries(batch)
        except TeacherCallError as error:
            return [
                error_judgment_for(r, self.policy_version, f"teacher call failed: {error}") for r in batch
            ]
        return [self._on_policy(r, j) for r, j in zip(batch, judgments, strict=True)]

    def _on_policy(self, request: TeacherRequest, judgment: Judgment) -> Judgment:
        # A schema-valid judgment can still be off-policy (grade 7 on a 0-4 scale, an unknown
        # failure mode): counting it as quality would corrupt the windows, so it becomes an error.
        reason = off_policy_reason(self.policy, judgment) if self.policy is not None else None
        if reason is None:
            return judgment
        return error_judgment_for(request, self.policy_version, f"off-policy teacher verdict: {reason}")

    async def _call_with_retries(self, batch: Sequence[TeacherRequest]) -> list[Judgment]:
        return await acall_with_retries(
            partial(self._attempt, batch),
            retries=self.retries,
            backoff=self.backoff,
            sleep=self._sleep,
            on_retry=self._count_retry,
        )

    def _count_retry(self, _retry: int, _failure: RetryableError, _pause: float) -> None:
        self.counters.retries += 1

    async def _attempt(self, batch: Sequence[TeacherRequest]) -> list[Judgment]:
        if not self.breaker.allow():
            self.counters.rejected_by_breaker += 1
            raise TeacherCallError("circuit open", retryable=False)
        started = time.perf_counter()
        try:
            async with self._semaphore:
                self.counters.calls += 1
                started = time.perf_counter()
                judgments = await asyncio.wait_for(self._post(batch), self.timeout_s)
        except TimeoutError:
            failure = TeacherCallError("timeout", retryable=True)
        except TeacherCallError as error:
            failure = error
        else:
            self.breaker.record_success()
            self._observe(started, len(batch), "ok")
            return judgments
        self._observe(started, len(batch), "error")
        self.counters.failed_calls += 1
        if failure.teacher_fault:
            self.breaker.record_failure()
        else:
            self.breaker.record_success()
        raise failure

    def _observe(self, started: float, pairs: int, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.observe(
                "evalloop.teacher.call.duration", time.perf_counter() - started, outcome=outcome
            )
            self.metrics.observe("evalloop.teacher.call.pairs", pairs)

    async def _post(self, batch: Sequence[TeacherRequest]) -> list[Judgment]:
        body = {"requests": [r.model_dump(mode="json") for r in batch]}
        try:
            response = await self._http.post(self.url, json=body)
        except httpx.HTTPError as error:
            raise TeacherCallError(f"{type(error).__name__}: {error}", retryable=True) from None
        if response.status_code != 200:
            status = response.status_code
            retryable = is_retryable_status(status)
            raise TeacherCallError(
                f"HTTP {status}: {response.text[:200]}",
                retryable=retryable,
                teacher_fault=retryable or status >= 500,
                retry_after_s=parse_retry_after(response.headers.get("retry-after")),
            )
        return parse_response(response.content, batch)


def parse_response(content: bytes, batch: Sequence[TeacherRequest]) -> list[Judgment]:
    """Validate the teacher's answer: one schema-valid judgment per request, same pairs, same order."""
    try:
        raw = json.loads(content)["judgments"]
        judgments = [Judgment.model_validate(item, strict=False) for item in raw]
    except (ValueError, KeyError, TypeError, ValidationError) as error:
        raise TeacherCallError(f"bad teacher response: {str(error)[:200]}", retryable=False) from None
    if len(judgments) != len(batch):
        raise TeacherCallError(
            f"teacher answered {len(judgments)} judgments for {len(batch)} requests", retryable=False
        )
    for request, judgment in zip(batch, judgments, strict=True):
        if (judgment.event_id, judgment.item_id) != (request.event_id, request.item.item_id):
            raise TeacherCallError("teacher answered judgments out of order", retryable=False)
    return judgments


def off_policy_reason(policy: Policy, judgment: Judgment) -> str | None:
    """Why an ok judgment does not fit ``policy`` (``schemas.verdicts.judgment_problem``: the
    check the teachers run on their own verdicts), or None; error judgments always fit."""
    return judgment_problem(policy, judgment)


def serve_url(host: str, port: int, route_prefix: str = "/teacher") -> str:
    """The teacher's HTTP endpoint on the Serve proxy."""
    return f"http://{host}:{port}{route_prefix}"


class TeacherMismatch(ValueError):
    """The teacher at the configured URL grades for another policy (one line to print)."""


def fetch_teacher_info(url: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """The teacher's ``GET`` info (its versions and the policy identity it grades for)."""
    response = httpx.get(url, timeout=timeout_s)
    if response.status_code not in (200, 503):  # 503: unhealthy, but it still says what it serves
        raise httpx.TransportError(f"GET {url} answered HTTP {response.status_code}")
    info: dict[str, Any] = response.json()
    return info


def check_teacher(
    url: str,
    policy: Policy,
    *,
    allow_version_bump: bool = False,
    wait_s: float = 60.0,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """At start-up: wait up to ``wait_s`` for the teacher to answer, then require that it grades
    for ``policy`` (``identity_mismatch``). Raises ServiceUnavailable or TeacherMismatch."""
    from streams.services import ServiceUnavailable

    deadline = time.monotonic() + wait_s
    while True:
        try:
            info = fetch_teacher_info(url)
            break
        except (httpx.HTTPError, ValueError) as error:
            if time.monotonic() >= deadline:
                hint = "start it with `evalloop serve` (or set EVALLOOP_STREAM_TEACHER_URL)"
                raise ServiceUnavailable("the teacher", url, str(error)[:200], hint) from None
            sleep(1.0)
    problem = identity_mismatch(info, policy, allow_version_bump)
    if problem is not None:
        raise TeacherMismatch(f"{problem}; serve the worker's policy (`evalloop serve --policy ...`)")
    return info
