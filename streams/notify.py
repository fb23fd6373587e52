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
from typing import Any, Literal, Protocol

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from schemas.alerts import Alert, WindowFigure
from schemas.retry import Backoff, RetryableError, call_with_retries, is_retryable_status, parse_retry_after

SIGNATURE_HEADER = "X-Evalloop-Signature"
DELIVERY_HEADER = "X-Evalloop-Delivery"
PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
_STATE_EMOJI = {"firing": "🔴", "resolved": "✅", "pending": "🟡"}
_PD_SEVERITY = {"page": "critical", "ticket": "warning"}


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


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


# ---------------------------------------------------------------- Slack Block Kit


def _corrected_text(figure: WindowFigure) -> str:
    """The bias-corrected share beside the raw one (docs/calibration.md), and which was judged."""
    corrected = figure.corrected
    if corrected is None:
        return ""
    judged = " (judged)" if figure.estimate == "corrected" else ""
    if corrected.value is None or corrected.lower is None or corrected.upper is None:
        return f"; corrected: {corrected.status.replace('_', ' ')}{judged}"
    return f"; corrected *{corrected.value:.1%}* (CI {corrected.lower:.1%}–{corrected.upper:.1%}){judged}"


def _figures_text(alert: Alert) -> str:
    lines = [
        f"`{f.window:>4}` raw rate *{f.rate:.1%}* (CI {f.lower:.1%}–{f.upper:.1%}), "
        f"{f.bad}/{f.samples} bad, threshold {f.threshold:.1%}{_corrected_text(f)}"
        for f in alert.windows
    ]
    return "\n".join(lines)


def _examples_blocks(alert: Alert, limit: int = 3) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for example in alert.examples[:limit]:
        modes = ", ".join(example.failure_modes) or "—"
        text = (
            f"*{_truncate(example.query, 200)}* → {_truncate(example.item_title, 200)}\n"
            f"grade {example.grade}, {example.display}, {modes}\n>{_truncate(example.rationale, 500)}"
        )
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": text}]})
    return blocks


def slack_payload(alert: Alert) -> dict[str, Any]:
    """A Slack incoming-webhook message: header, facts, window figures, failure modes, examples."""
    emoji = _STATE_EMOJI.get(alert.state, "")
    title = _truncate(f"{emoji} {alert.state.upper()}: {alert.rule} — {alert.category}", 150)
    facts = [
        f"*Category*\n{alert.category}",
        f"*Rule*\n{alert.rule}",
        f"*Severity*\n{alert.severity}",
        f"*Signal*\n{alert.signal} > {alert.threshold:.0%}",
    ]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title, "emoji": True}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": fact} for fact in facts]},
        {"type": "section", "text": {"type": "mrkdwn", "text": _truncate(_figures_text(alert), 3000)}},
    ]
    if alert.top_failure_modes:
        modes = "\n".join(f"• `{m.failure_mode}` {m.share:.0%} ({m.count})" for m in alert.top_failure_modes)
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*Top failure modes*\n{modes}"}}
        )
    if alert.examples:
        blocks.append({"type": "divider"})
        blocks += _examples_blocks(alert)
    return {"text": title, "blocks": blocks}


# ---------------------------------------------------------------- PagerDuty Events v2


def _pd_summary(alert: Alert) -> str:
    long = alert.windows[0]
    corrected = long.corrected
    figure = f"{long.rate:.1%}"
    if corrected is not None and corrected.value is not None:
        figure = f"{corrected.value:.1%} corrected ({long.rate:.1%} raw)"
    summary = (
        f"[{alert.severity}] {alert.rule} in {alert.category}: {alert.signal} {figure} "
        f"over {long.window} (threshold {alert.threshold:.0%}, n={long.samples})"
    )
    return _truncate(summary, 1024)


def pagerduty_payload(alert: Alert, routing_key: str) -> dict[str, Any]:
    """An Events API v2 event: trigger while pending/firing, resolve when resolved.

    ``dedup_key`` is the alert's ``rule/category`` so PagerDuty folds every update of an incident
    into one. The routing key is in the body because the Events API requires it there.
    """
    action = "resolve" if alert.state == "resolved" else "trigger"
    event: dict[str, Any] = {"routing_key": routing_key, "event_action": action, "dedup_key": alert.dedup_key}
    if action == "resolve":
        return event  # PagerDuty ignores a payload on resolve
    event["payload"] = {
        "summary": _pd_summary(alert),
        "source": "evalloop",
        "severity": _PD_SEVERITY[alert.severity],
        "timestamp": (alert.fired_at or alert.started_at).isoformat(),
        "component": alert.category,
        "group": alert.policy_version,
        "class": alert.rule,
        "custom_details": {
            "alert_id": alert.alert_id,
            "description": alert.description,
            "estimate": alert.estimate,
            "calibration": alert.calibration,
            "windows": [f.model_dump(mode="json") for f in alert.windows],
            "top_failure_modes": [m.model_dump(mode="json") for m in alert.top_failure_modes],
            "examples": [e.model_dump(mode="json") for e in alert.examples[:5]],
        },
    }
    return event


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
