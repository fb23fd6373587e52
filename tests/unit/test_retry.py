"""The shared HTTP retry layer (``schemas.retry``): Retry-After in both forms, the backoff
schedule, and one retry loop (sync and async) that the Serve client, the OpenAI backend and the
webhooks all use."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from schemas.retry import (
    Backoff,
    RetryableError,
    acall_with_retries,
    call_with_retries,
    is_retryable_status,
    parse_retry_after,
)

NOW = 1_750_000_000.0


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("3", 3.0),
        ("0.5", 0.5),
        ("-4", 0.0),
        ("100000", 100000.0),  # the cap is the client's (Backoff), not the parser's
        (None, None),
        ("", None),
        ("soon", None),
        ("nan", None),
        ("inf", None),
        (format_datetime(datetime.fromtimestamp(NOW + 30, UTC), usegmt=True), 30.0),
        (format_datetime(datetime.fromtimestamp(NOW - 30, UTC), usegmt=True), 0.0),
    ],
)
def test_retry_after_both_forms(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, now=lambda: NOW) == seconds


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (200, False),
        (400, False),
        (404, False),
        (408, True),
        (429, True),
        (500, True),
        (503, True),
        (599, True),
    ],
)
def test_retryable_statuses(status: int, retryable: bool) -> None:
    assert is_retryable_status(status) is retryable


@pytest.mark.parametrize(
    ("retry", "retry_after", "rng", "pause"),
    [
        (1, None, 0.0, 0.25),  # half the 0.5 s step at the bottom of the jitter
        (1, None, 1.0, 0.5),
        (3, None, 1.0, 2.0),
        (10, None, 1.0, 4.0),  # capped
        (1, 3.0, 0.0, 3.0),  # the server's Retry-After is the least pause
        (1, 500.0, 0.0, 60.0),  # ... up to max_retry_after_s
    ],
)
def test_backoff_schedule(retry: int, retry_after: float | None, rng: float, pause: float) -> None:
    backoff = Backoff(base_s=0.5, cap_s=4.0, max_retry_after_s=60.0)
    assert backoff.delay(retry, retry_after, lambda: rng) == pytest.approx(pause)


class Flaky:
    """Fails with ``failures`` in order, then returns 'ok'."""

    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "ok"

    async def acall(self) -> str:
        return self()


def test_retries_then_succeeds_and_reports_each_retry() -> None:
    slept: list[float] = []
    seen: list[tuple[int, str]] = []
    flaky = Flaky(RetryableError("503"), RetryableError("429", retry_after_s=2.0))
    result = call_with_retries(
        flaky,
        retries=3,
        backoff=Backoff(0.5, 4.0),
        sleep=slept.append,
        on_retry=lambda n, failure, _pause: seen.append((n, failure.reason)),
        rng=lambda: 1.0,
    )
    assert (result, flaky.calls, slept, seen) == ("ok", 3, [0.5, 2.0], [(1, "503"), (2, "429")])


@pytest.mark.parametrize(
    ("failures", "calls"),
    [
        ([RetryableError("down")] * 5, 3),  # retries exhausted: the last failure is raised
        ([RetryableError("bad request", retryable=False)], 1),  # not retryable: raised at once
    ],
)
def test_gives_up(failures: list[Exception], calls: int) -> None:
    flaky = Flaky(*failures)
    with pytest.raises(RetryableError):
        call_with_retries(flaky, retries=2, backoff=Backoff(), sleep=lambda _: None)
    assert flaky.calls == calls


def test_other_exceptions_are_not_retried() -> None:
    flaky = Flaky(KeyError("bug"))
    with pytest.raises(KeyError):
        call_with_retries(flaky, retries=5, backoff=Backoff(), sleep=lambda _: None)
    assert flaky.calls == 1


def test_the_async_loop_behaves_the_same() -> None:
    slept: list[float] = []

    async def sleep(pause: float) -> None:
        slept.append(pause)

    flaky = Flaky(RetryableError("503"), RetryableError("503"))
    result = asyncio.run(
        acall_with_retries(flaky.acall, retries=2, backoff=Backoff(0.5, 4.0), sleep=sleep, rng=lambda: 1.0)
    )
    assert (result, slept) == ("ok", [0.5, 1.0])
