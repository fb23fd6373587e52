"""Teacher backed by any OpenAI-compatible chat-completions endpoint (vLLM, SGLang, llama.cpp,
hosted APIs).

Each pair is one ``POST {base_url}/chat/completions`` with the rubric-prefix prompt, temperature
0 and a strict ``json_schema`` response format. Transient failures (429, 5xx, connection errors,
timeouts) are retried with exponential backoff and jitter, honouring ``Retry-After``; anything
else, or a bad answer, becomes an error judgment with a specific reason. The API key lives in a
``SecretStr`` and is redacted from every reason and log line. See docs/llm-teacher.md.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import Any

import httpx
from pydantic import SecretStr

from judges.base import JudgeRequest, VerdictError, error_judgment, ok_judgment
from judges.prompt import answer_schema, parse_answer, prompt_fingerprint, render_messages
from schemas.judgments import Judgment
from schemas.policy import Policy
from schemas.retry import Backoff, RetryableError, call_with_retries, is_retryable_status, parse_retry_after

__all__ = ["OpenAITeacher", "TeacherStats", "TeacherStatsSnapshot"]

logger = logging.getLogger(__name__)

#: Exponential backoff with equal jitter; a server's Retry-After is honoured up to 120 s.
BACKOFF = Backoff(base_s=0.5, cap_s=30.0, max_retry_after_s=120.0)
_BODY_SNIPPET = 200
_MAX_TEACHER_VERSION = 200


@dataclass(frozen=True)
class TeacherStatsSnapshot:
    """Counters of one LLM teacher at a moment (for benchmarks and metrics)."""

    requests: int
    ok: int
    errors: int
    retries: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int

    @property
    def prefix_cache_hit_rate(self) -> float:
        """Share of prompt tokens the server served from its prefix cache (0 when unknown)."""
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


class TeacherStats:
    """Thread-safe token and outcome counters, shared by the LLM backends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(TeacherStatsSnapshot.__dataclass_fields__, 0)

    def add(self, **counts: int) -> None:
        """Add to named counters (requests, ok, errors, retries, *_tokens)."""
        with self._lock:
            for name, value in counts.items():
                self._counts[name] += value

    def add_usage(self, usage: Any) -> None:
        """Record an OpenAI ``usage`` object; servers that omit fields count as zero."""
        if not isinstance(usage, dict):
            return
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        self.add(
            prompt_tokens=_as_count(usage.get("prompt_tokens")),
            completion_tokens=_as_count(usage.get("completion_tokens")),
            cached_tokens=_as_count(cached),
        )

    def snapshot(self) -> TeacherStatsSnapshot:
        """A consistent copy of the counters."""
        with self._lock:
            return TeacherStatsSnapshot(**self._counts)


def _as_count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


class _Fatal(Exception):
    """The pair cannot be graded by retrying (4xx, bad answer, malformed response)."""


def _host_of(base_url: str) -> str:
    url = httpx.URL(base_url)
    # Host and port only: userinfo could hold credentials and the path adds nothing.
    return f"{url.host}:{url.port}" if url.port else url.host


class OpenAITeacher:
    """A Teacher that grades pairs through an OpenAI-compatible chat-completions endpoint."""

    def __init__(
        self,
        policy: Policy,
        *,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | SecretStr | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        concurrency: int = 8,
        timeout_s: float | None = None,
        max_retries: int | None = None,
        max_tokens: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        settings = policy.teacher.openai
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self._policy = policy
        self.base_url = (base_url or settings.base_url).rstrip("/")
        self.model = model or settings.model
        self.timeout_s = timeout_s if timeout_s is not None else settings.timeout_s
        self.max_retries = max_retries if max_retries is not None else settings.max_retries
        self.max_tokens = max_tokens if max_tokens is not None else settings.max_tokens
        self.concurrency = concurrency
        self._api_key = _resolve_key(api_key, settings.api_key_env)
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._schema = answer_schema(policy)
        self._version = f"openai:{self.model}@{_host_of(self.base_url)}#{prompt_fingerprint(policy)}"
        if len(self._version) > _MAX_TEACHER_VERSION:
            raise ValueError(
                f"teacher version is over {_MAX_TEACHER_VERSION} characters; shorten the model name"
            )
        self.stats = TeacherStats()
        self._client = httpx.Client(
            transport=transport,
            timeout=httpx.Timeout(self.timeout_s),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )

    # ------------------------------------------------------------------ Teacher protocol

    @property
    def teacher_version(self) -> str:
        """``openai:{model}@{host}#{prompt hash}``: a changed prompt or schema is a new teacher."""
        return self._version

    @property
    def policy(self) -> Policy:
        return self._policy

    def judge(self, requests: Sequence[JudgeRequest]) -> list[Judgment]:
        """Grade pairs concurrently (up to ``concurrency`` in flight); results keep input order."""
        if not requests:
            return []
        if len(requests) == 1:
            return [self._judge_one(requests[0])]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            return list(pool.map(self._judge_one, requests))

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def __enter__(self) -> OpenAITeacher:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"OpenAITeacher(version={self._version!r}, api_key={'set' if self._api_key else 'unset'})"

    # ------------------------------------------------------------------ one pair

    def _judge_one(self, request: JudgeRequest) -> Judgment:
        started = time.perf_counter()
        self.stats.add(requests=1)
        try:
            text = self._complete_with_retries(request)
            verdict = parse_answer(self._policy, text)
            judgment = ok_judgment(
                request,
                self._policy,
                self._version,
                verdict.grade,
                verdict.failure_modes,
                verdict.rationale,
                latency_ms=_elapsed_ms(started),
            )
        except (_Fatal, VerdictError) as error:
            return self._error(request, str(error), started)
        except Exception as error:  # the protocol: one bad pair never fails the batch
            logger.error("teacher bug on event %s: %s", request.event_id, type(error).__name__)
            return self._error(request, f"internal error: {type(error).__name__}", started)
        self.stats.add(ok=1)
        return judgment

    def _error(self, request: JudgeRequest, reason: str, started: float) -> Judgment:
        self.stats.add(errors=1)
        reason = self._redact(reason)
        logger.warning(
            "teacher could not grade event %s item %s: %s", request.event_id, request.item.item_id, reason
        )
        return error_judgment(request, self._policy, self._version, reason, latency_ms=_elapsed_ms(started))

    def _complete_with_retries(self, request: JudgeRequest) -> str:
        body = self._request_body(request)
        try:
            return call_with_retries(
                partial(self._attempt, body),
                retries=self.max_retries,
                backoff=BACKOFF,
                sleep=self._sleep,
                on_retry=self._log_retry,
                rng=self._rng.random,
            )
        except RetryableError as failure:
            raise _Fatal(f"{failure.reason} after {_retries(self.max_retries)}") from None

    def _log_retry(self, retry: int, failure: RetryableError, pause: float) -> None:
        logger.info(
            "teacher request failed (%s); retry %d/%d in %.2fs",
            self._redact(failure.reason),
            retry,
            self.max_retries,
            pause,
        )
        self.stats.add(retries=1)

    def _request_body(self, request: JudgeRequest) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": render_messages(self._policy, request),
            "temperature": 0,
            "max_tokens": self.max_tokens,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "judgment", "strict": True, "schema": self._schema},
            },
        }

    def _headers(self) -> dict[str, str]:
        if self._api_key is None:
            return {}
        return {"Authorization": f"Bearer {self._api_key.get_secret_value()}"}

    def _attempt(self, body: dict[str, Any]) -> str:
        try:
            response = self._client.post(
                f"{self.base_url}/chat/completions", json=body, headers=self._headers()
            )
        except httpx.TimeoutException:
            raise RetryableError(f"timed out after {self.timeout_s:g}s") from None
        except httpx.TransportError as error:
            raise RetryableError(f"connection error ({type(error).__name__})") from None
        status = response.status_code
        if is_retryable_status(status):
            raise RetryableError(
                f"HTTP {status}", retry_after_s=parse_retry_after(response.headers.get("retry-after"))
            )
        if status != 200:
            raise _Fatal(f"HTTP {status}: {_snippet(response.text)}")
        return self._answer_text(response)

    def _answer_text(self, response: httpx.Response) -> str:
        try:
            payload = response.json()
            choice = payload["choices"][0]
            message = choice["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Fatal(f"malformed chat-completions response: {_snippet(response.text)}") from None
        self.stats.add_usage(payload.get("usage") if isinstance(payload, dict) else None)
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            refusal = message.get("refusal") if isinstance(message, dict) else None
            raise _Fatal(f"model refused: {_snippet(str(refusal))}" if refusal else "answer has no content")
        if choice.get("finish_reason") == "length":
            # A cut-off answer is usually broken JSON; say why instead of just "not JSON".
            try:
                parse_answer(self._policy, content)
            except VerdictError as error:
                raise _Fatal(f"answer cut off at max_tokens={self.max_tokens}: {error}") from None
        return content

    def _redact(self, text: str) -> str:
        if self._api_key is not None:
            secret = self._api_key.get_secret_value()
            if secret:
                text = text.replace(secret, "[redacted]")
        return text


def _resolve_key(api_key: str | SecretStr | None, env_var: str) -> SecretStr | None:
    if isinstance(api_key, SecretStr):
        return api_key if api_key.get_secret_value() else None
    value = api_key if api_key is not None else os.environ.get(env_var)
    # Local vLLM / llama.cpp servers need no key: then no Authorization header is sent at all.
    return SecretStr(value) if value else None


def _retries(count: int) -> str:
    return f"{count} retry" if count == 1 else f"{count} retries"


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return text[:_BODY_SNIPPET] + ("..." if len(text) > _BODY_SNIPPET else "")


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
