"""Alert notifications: payload renderers (pure), HMAC signing, and the webhook sender edge.

Three target kinds: ``generic`` (our JSON, signed with HMAC-SHA256), ``slack`` (Block Kit to an
incoming-webhook URL) and ``pagerduty`` (Events API v2). Secrets: the HMAC secret never enters a
body; the PagerDuty routing key must (the Events API authenticates by it); Slack webhook URLs are
themselves secrets, so targets are reported by name and never by URL. Nothing here logs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from schemas.alerts import Alert
from schemas.retry import Backoff, RetryableError, call_with_retries, is_retryable_status, parse_retry_after
from streams.payloads import pagerduty_payload, slack_payload

__all__ = ["pagerduty_payload", "slack_payload"]  # re-exported: the renderers live in payloads

SIGNATURE_HEADER = "X-Evalloop-Signature"
DELIVERY_HEADER = "X-Evalloop-Delivery"
PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"


# ---------------------------------------------------------------- generic JSON + HMAC


def generic_payload(alert: Alert) -> bytes:
    """The generic webhook body: canonical JSON (sorted keys) so signatures are reproducible."""
    document = {"type": "evalloop.alert", "version": 1, "alert": alert.model_dump(mode="json")}
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _digest(body: bytes, secret: bytes, timestamp: int) -> str:
    return hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(body: bytes, secret: bytes, timestamp: int) -> str:
    """The ``X-Evalloop-Signature`` value: ``t=<ts>,v1=<hex HMAC-SHA256 of "<ts>." + body>``."""
    return f"t={timestamp},v1={_digest(body, secret, timestamp)}"


def _parse_signature(header: str) -> tuple[int, list[str]] | None:
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit():
            timestamp = int(value)
        elif name == "v1":
            signatures.append(value)
    return None if timestamp is None or not signatures else (timestamp, signatures)


def verify(body: bytes, header: str, secret: bytes, tolerance_s: float, now: float) -> bool:
    """True when ``header`` signs ``body`` with ``secret`` and its timestamp is within tolerance.

    The timestamp check stops replays of an old delivery; compare_digest is constant-time.
    """
    parsed = _parse_signature(header)
    if parsed is None:
        return False
    timestamp, signatures = parsed
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = _digest(body, secret, timestamp)
    return any(hmac.compare_digest(expected, candidate) for candidate in signatures)


# ---------------------------------------------------------------- targets and delivery


class WebhookTarget(BaseModel):
    """Where to send alerts. ``url`` is hidden from repr: Slack webhook URLs embed a secret."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    kind: Literal["generic", "slack", "pagerduty"]
    url: str = Field(min_length=1, repr=False)
    secret: SecretStr | None = None
    routing_key: SecretStr | None = None
    timeout_s: float = Field(default=10.0, gt=0.0)

    @model_validator(mode="after")
    def _credentials(self) -> WebhookTarget:
        if self.kind == "generic" and self.secret is None:
            raise ValueError(f"webhook {self.name}: a generic target needs a secret to sign with")
        if self.kind == "pagerduty" and self.routing_key is None:
            raise ValueError(f"webhook {self.name}: a pagerduty target needs a routing_key")
        return self


class WebhookTransportError(Exception):
    """The request did not get an HTTP response (timeout, connection refused, TLS ...)."""


@dataclass(frozen=True)
class SendResponse:
    """The HTTP status a webhook answered with, and its ``Retry-After`` (seconds) if any."""

    status: int
    retry_after_s: float | None = None


class WebhookSender(Protocol):
    """Posts one request; raises WebhookTransportError when no HTTP response came back."""

    def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> SendResponse: ...


class HttpxWebhookSender:
    """WebhookSender over an ``httpx.Client`` (the caller owns and closes the client)."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        # httpx logs every request URL at INFO, and a webhook URL is a secret (Slack's carries its
        # token): keep httpx's own logger at WARNING wherever webhooks are sent.
        logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger("httpx").level))

    def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> SendResponse:
        try:
            response = self.client.post(url, content=body, headers=dict(headers), timeout=timeout_s)
        except httpx.HTTPError as error:
            # The message may contain the URL (a secret for Slack): keep only the error type.
            raise WebhookTransportError(type(error).__name__) from None
        return SendResponse(response.status_code, parse_retry_after(response.headers.get("retry-after")))


@dataclass(frozen=True)
class RecordedRequest:
    """One request a RecordingWebhookSender received."""

    url: str
    body: bytes
    headers: dict[str, str]


@dataclass
class RecordingWebhookSender:
    """In-memory fake: records requests and answers from ``script`` (status or exception) per
    call in order, then ``default_status``."""

    script: list[int | Exception] = field(default_factory=list)
    default_status: int = 200
    requests: list[RecordedRequest] = field(default_factory=list)

    def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> SendResponse:
        self.requests.append(RecordedRequest(url, body, dict(headers)))
        outcome = self.script.pop(0) if self.script else self.default_status
        if isinstance(outcome, Exception):
            raise outcome
        return SendResponse(outcome)


@dataclass(frozen=True)
class DeliveryResult:
    """How delivery to one target went. ``error`` never contains the URL or a secret."""

    target: str
    kind: str
    ok: bool
    status: int | None
    attempts: int
    error: str | None = None


def render(alert: Alert, target: WebhookTarget, now: float) -> tuple[bytes, dict[str, str]]:
    """The body and headers for ``target``."""
    headers = {"Content-Type": "application/json", DELIVERY_HEADER: f"{alert.alert_id}:{alert.state}"}
    if target.kind == "generic":
        body = generic_payload(alert)
        secret = target.secret.get_secret_value().encode() if target.secret else b""
        headers[SIGNATURE_HEADER] = sign(body, secret, int(now))
        return body, headers
    if target.kind == "slack":
        return json.dumps(slack_payload(alert), ensure_ascii=False).encode(), headers
    routing_key = target.routing_key.get_secret_value() if target.routing_key else ""
    return json.dumps(pagerduty_payload(alert, routing_key)).encode(), headers


def _deliver_one(
    alert: Alert, target: WebhookTarget, sender: WebhookSender, policy: RetryPolicy
) -> DeliveryResult:
    body, headers = render(alert, target, policy.now())
    tries: list[int | None] = []  # the status of each attempt (None: no HTTP response)

    def attempt() -> int:
        try:
            response = sender.post(target.url, body, headers, target.timeout_s)
        except WebhookTransportError as transport:
            tries.append(None)
            raise RetryableError(f"transport: {transport}") from None
        tries.append(response.status)
        if 200 <= response.status < 300:
            return response.status
        retryable = is_retryable_status(response.status)
        raise RetryableError(
            f"HTTP {response.status}", retryable=retryable, retry_after_s=response.retry_after_s
        )

    try:
        status = call_with_retries(
            attempt,
            retries=policy.max_attempts - 1,
            backoff=policy.backoff,
            sleep=policy.sleep,
            rng=policy.rng,
        )
    except RetryableError as failure:
        return DeliveryResult(target.name, target.kind, False, tries[-1], len(tries), failure.reason)
    return DeliveryResult(target.name, target.kind, True, status, len(tries))


#: A webhook gets 0.5, 1, 2 s (half fixed, half random) or what its Retry-After asks, up to 30 s.
WEBHOOK_BACKOFF = Backoff(base_s=0.5, cap_s=8.0, max_retry_after_s=30.0)


@dataclass(frozen=True)
class RetryPolicy:
    """Retries on 408, 429, 5xx and transport errors (``schemas.retry``): exponential backoff
    with equal jitter, at least the target's Retry-After; clock and randomness injectable."""

    max_attempts: int = 4
    backoff: Backoff = WEBHOOK_BACKOFF
    sleep: Callable[[float], None] = time.sleep
    now: Callable[[], float] = time.time
    rng: Callable[[], float] = random.random


def deliver(
    alert: Alert,
    targets: Sequence[WebhookTarget],
    sender: WebhookSender,
    retry: RetryPolicy | None = None,
    *,
    sleep: Callable[[float], None] | None = None,
) -> list[DeliveryResult]:
    """Send ``alert`` to every target; one failing target never stops the others or raises.

    ``sleep`` (if given) overrides ``retry.sleep``. Synchronous: from an async agent call it via
    ``asyncio.to_thread``.
    """
    policy = retry or RetryPolicy()
    if sleep is not None:
        policy = replace(policy, sleep=sleep)
    results: list[DeliveryResult] = []
    for target in targets:
        try:
            results.append(_deliver_one(alert, target, sender, policy))
        except Exception as error:  # a bad target (or renderer bug) must not block the rest
            results.append(DeliveryResult(target.name, target.kind, False, None, 0, type(error).__name__))
    return results
