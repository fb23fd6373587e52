"""streams.notify: HMAC signing, the three payloads, and delivery with retries."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from schemas.alerts import (
    Alert,
    AlertExample,
    CorrectedFigure,
    FailureModeShare,
    ModelVersionShare,
    WindowFigure,
)
from streams.notify import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    RecordingWebhookSender,
    RetryPolicy,
    WebhookTarget,
    WebhookTransportError,
    deliver,
    generic_payload,
    pagerduty_payload,
    sign,
    slack_payload,
    verify,
)
from tests.support.payload_rules import pagerduty_problems, slack_problems

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SECRET = b"s3cret-hmac"
ROUTING_KEY = "R0UT1NGKEY0000000000000000000000"


def alert(state: str = "firing", **fields: Any) -> Alert:
    data: dict[str, Any] = {
        "alert_id": "alert-0123456789abcdef01234567",
        "dedup_key": "filtered-share-burn/Kitchen & Dining",
        "category": "Kitchen & Dining",
        "rule": "filtered-share-burn",
        "description": "Too many filtered results shown.",
        "severity": "page",
        "state": state,
        "signal": "filtered_share",
        "threshold": 0.35,
        "windows": [
            WindowFigure(
                window="2h",
                seconds=7200,
                samples=120,
                weighted_samples=240.0,
                bad=60,
                rate=0.5,
                lower=0.41,
                upper=0.59,
                threshold=0.35,
            ),
            WindowFigure(
                window="30m",
                seconds=1800,
                samples=45,
                weighted_samples=90.0,
                bad=25,
                rate=0.556,
                lower=0.41,
                upper=0.69,
                threshold=0.35,
            ),
        ],
        "top_failure_modes": [FailureModeShare(failure_mode="wrong_product_type", count=40, share=0.33)],
        "examples": [
            AlertExample(
                judgment_id="a" * 32,
                event_id="e1",
                item_id="i1",
                query="oak table",
                item_title="steel faucet",
                grade=0,
                display="filter",
                failure_modes=("wrong_product_type",),
                rationale="A faucet is not a table.",
            )
        ],
        "policy_version": "product-search-2026.11.1",
        "started_at": T0,
        "fired_at": T0,
        "resolved_at": T0 if state == "resolved" else None,
        "updated_at": T0,
    }
    return Alert.model_validate({**data, **fields})


def targets() -> list[WebhookTarget]:
    return [
        WebhookTarget(
            name="ops", kind="generic", url="https://hooks.example/ops", secret=SecretStr("s3cret-hmac")
        ),
        WebhookTarget(name="slack", kind="slack", url="https://hooks.slack.example/T/B/XYZ"),
        WebhookTarget(
            name="pd",
            kind="pagerduty",
            url="https://pd.example/v2/enqueue",
            routing_key=SecretStr(ROUTING_KEY),
        ),
    ]


@pytest.mark.parametrize(
    ("body", "header_secret", "verify_secret", "signed_at", "now", "tolerance", "ok"),
    [
        (b"{}", SECRET, SECRET, 1000, 1000, 300, True),
        (b"{}", SECRET, SECRET, 1000, 1299, 300, True),
        (b"{}", SECRET, SECRET, 1000, 1301, 300, False),  # expired
        (b"{}", SECRET, SECRET, 1000, 699, 300, False),  # from the future
        (b"{}", SECRET, b"other", 1000, 1000, 300, False),  # wrong secret
    ],
)
def test_sign_verify(
    body: bytes,
    header_secret: bytes,
    verify_secret: bytes,
    signed_at: int,
    now: float,
    tolerance: float,
    ok: bool,
) -> None:
    header = sign(body, header_secret, signed_at)
    assert header.startswith(f"t={signed_at},v1=")
    assert verify(body, header, verify_secret, tolerance, now) is ok


def test_tampered_body_fails() -> None:
    body = generic_payload(alert())
    header = sign(body, SECRET, 1000)
    assert verify(body, header, SECRET, 300, 1000)
    assert not verify(body.replace(b"firing", b"resolved"), header, SECRET, 300, 1000)


@pytest.mark.parametrize("header", ["", "garbage", "t=abc,v1=00", "v1=00", "t=1000", "t=1000,v1="])
def test_malformed_signature_header(header: str) -> None:
    assert not verify(b"{}", header, SECRET, 300, 1000)


def test_signature_is_known_hmac() -> None:
    # printf '1.{}' | openssl dgst -sha256 -hmac key
    expected = "1ba6b8171186efc613e8bcc0cbdab2748f24984d7c5a84faa2637afa0e40d224"
    assert sign(b"{}", b"key", 1) == f"t=1,v1={expected}"


def test_generic_payload_is_canonical_json() -> None:
    body = generic_payload(alert())
    document = json.loads(body)
    assert document["type"] == "evalloop.alert" and document["version"] == 1
    assert Alert.model_validate_json(json.dumps(document["alert"])) == alert()
    assert body == generic_payload(alert())  # deterministic bytes


@pytest.mark.parametrize(
    ("state", "severity", "action", "pd_severity"),
    [
        ("firing", "page", "trigger", "critical"),
        ("firing", "ticket", "trigger", "warning"),
        ("resolved", "page", "resolve", None),
    ],
)
def test_pagerduty_payload(state: str, severity: str, action: str, pd_severity: str | None) -> None:
    event = pagerduty_payload(alert(state, severity=severity), ROUTING_KEY)
    assert event["event_action"] == action
    assert event["dedup_key"] == "filtered-share-burn/Kitchen & Dining"
    assert event["routing_key"] == ROUTING_KEY
    if pd_severity is None:
        assert "payload" not in event
        return
    payload = event["payload"]
    assert payload["severity"] == pd_severity
    assert payload["component"] == "Kitchen & Dining"
    assert payload["class"] == "filtered-share-burn"
    assert payload["source"] == "Kitchen & Dining"  # the affected category, not the tool
    assert payload["group"] == "product-search-2026.11.1"
    assert 0 < len(payload["summary"]) <= 1024 and "50.0%" in payload["summary"]
    assert payload["custom_details"]["windows"][0]["window"] == "2h"
    assert payload["custom_details"]["examples"][0]["rationale"] == "A faucet is not a table."


def _corrected(figure: WindowFigure, status: str, value: float | None) -> WindowFigure:
    corrected = CorrectedFigure(
        status=status,  # type: ignore[arg-type]
        value=value,
        lower=None if value is None else value - 0.1,
        upper=None if value is None else value + 0.1,
        youden=0.6,
    )
    return figure.model_copy(update={"corrected": corrected, "estimate": "corrected"})


def test_payloads_show_raw_and_corrected_shares() -> None:
    base = alert()
    windows = [
        _corrected(base.windows[0], "corrected", 0.42),
        _corrected(base.windows[1], "not_identifiable", None),
    ]
    corrected = base.model_copy(update={"windows": windows, "estimate": "corrected", "calibration": "t1"})
    text = slack_payload(corrected)["blocks"][2]["text"]["text"]
    assert "raw rate *50.0%*" in text and "corrected *42.0%* (CI 32.0%–52.0%) (judged)" in text
    assert "corrected: not identifiable (judged)" in text
    event = pagerduty_payload(corrected, ROUTING_KEY)
    assert "42.0% corrected (50.0% raw)" in event["payload"]["summary"]
    details = event["payload"]["custom_details"]
    assert details["estimate"] == "corrected" and details["calibration"] == "t1"
    assert details["windows"][0]["corrected"]["value"] == 0.42
    assert "corrected" not in slack_payload(base)["blocks"][2]["text"]["text"]


def test_pagerduty_summary_truncated() -> None:
    long_category = "C" * 200
    event = pagerduty_payload(alert(category=long_category, rule="r" * 128), ROUTING_KEY)
    assert len(event["payload"]["summary"]) <= 1024


@pytest.mark.parametrize(("state", "emoji"), [("firing", "🔴"), ("resolved", "✅"), ("pending", "🟡")])
def test_slack_blocks(state: str, emoji: str) -> None:
    message = slack_payload(alert(state))
    blocks = message["blocks"]
    assert blocks[0]["type"] == "header"
    assert blocks[0]["text"]["text"].startswith(emoji) and len(blocks[0]["text"]["text"]) <= 150
    facts = " ".join(field["text"] for field in blocks[1]["fields"])
    assert "Kitchen & Dining" in facts and "filtered-share-burn" in facts and "page" in facts
    assert "2h" in blocks[2]["text"]["text"] and "30m" in blocks[2]["text"]["text"]
    assert "wrong_product_type" in blocks[3]["text"]["text"]
    assert blocks[4]["type"] == "divider"
    assert "A faucet is not a table." in blocks[5]["elements"][0]["text"]
    assert message["text"]  # notification fallback


def test_target_validation_and_secrets_hidden() -> None:
    with pytest.raises(ValidationError):
        WebhookTarget(name="x", kind="generic", url="https://h")
    with pytest.raises(ValidationError):
        WebhookTarget(name="x", kind="pagerduty", url="https://h")
    slack = targets()[1]
    assert "XYZ" not in repr(slack) and "s3cret" not in repr(targets()[0])


def test_deliver_to_all_three() -> None:
    sender = RecordingWebhookSender()
    results = deliver(alert(), targets(), sender, RetryPolicy(sleep=lambda _: None, now=lambda: 1000.0))
    assert [(r.target, r.ok, r.status, r.attempts) for r in results] == [
        ("ops", True, 200, 1),
        ("slack", True, 200, 1),
        ("pd", True, 200, 1),
    ]
    generic, slack, pd = sender.requests
    assert verify(generic.body, generic.headers[SIGNATURE_HEADER], SECRET, 300, 1000)
    assert generic.headers[DELIVERY_HEADER] == "alert-0123456789abcdef01234567:firing"
    assert b"s3cret" not in generic.body and b"s3cret" not in slack.body and b"s3cret" not in pd.body
    assert ROUTING_KEY.encode() not in generic.body + slack.body  # only PagerDuty gets the routing key
    assert json.loads(pd.body)["routing_key"] == ROUTING_KEY


@pytest.mark.parametrize(
    ("script", "ok", "status", "attempts", "sleeps"),
    [
        ([503, 502, 200], True, 200, 3, [0.5, 1.0]),
        ([WebhookTransportError("ConnectTimeout"), 200], True, 200, 2, [0.5]),
        ([429, 201], True, 201, 2, [0.5]),
        ([400], False, 400, 1, []),  # a client error will not get better: no retry
        ([500, 500, 500, 500], False, 500, 4, [0.5, 1.0, 2.0]),
        ([WebhookTransportError("ReadTimeout")] * 4, False, None, 4, [0.5, 1.0, 2.0]),
    ],
)
def test_retries(
    script: list[int | Exception], ok: bool, status: int | None, attempts: int, sleeps: list[float]
) -> None:
    slept: list[float] = []
    sender = RecordingWebhookSender(script=list(script))
    # rng 1.0: the top of the jitter range, so the pauses are the full exponential steps.
    policy = RetryPolicy(sleep=slept.append, now=lambda: 0.0, rng=lambda: 1.0)
    [result] = deliver(alert(), targets()[:1], sender, policy)
    assert (result.ok, result.status, result.attempts) == (ok, status, attempts)
    assert slept == sleeps
    assert result.error is None if ok else result.error


def test_one_bad_target_never_blocks_the_others() -> None:
    class Exploding(RecordingWebhookSender):
        def post(self, url: str, body: bytes, headers: Any, timeout_s: float) -> Any:
            if "slack" in url:
                raise RuntimeError("boom with https://hooks.slack.example/T/B/XYZ")
            return super().post(url, body, headers, timeout_s)

    results = deliver(alert(), targets(), Exploding(), sleep=lambda _: None)
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error == "RuntimeError"  # type only: the URL (a secret) is not echoed


DASHBOARD = "http://127.0.0.1:8050/?category=Kitchen+%26+Dining&from=2026-03-01T09%3A00%3A00%2B00%3A00"
RUNBOOK = "https://runbooks.example/filtered-share"


def actionable(state: str = "firing") -> Alert:
    """An alert with everything on-call acts on: links, model versions, a duration on resolve."""
    versions = [
        ModelVersionShare(model_version="ranker-v7", samples=80, bad=52, share=0.65),
        ModelVersionShare(model_version="ranker-v6", samples=40, bad=8, share=0.2),
    ]
    return alert(
        state,
        dashboard_url=DASHBOARD,
        runbook_url=RUNBOOK,
        model_versions=versions,
        duration_seconds=5400.0 if state == "resolved" else None,
    )


@pytest.mark.parametrize("state", ["firing", "resolved", "pending"])
def test_slack_payload_follows_block_kit_and_carries_the_actions(state: str) -> None:
    message = slack_payload(actionable(state))
    assert slack_problems(message) == []
    facts = " ".join(field["text"] for field in message["blocks"][1]["fields"])
    assert "2026-03-01 12:00 UTC" in facts  # started
    assert ("1h 30m" in facts) == (state == "resolved")  # how long it lasted
    (actions,) = [b for b in message["blocks"] if b["type"] == "actions"]
    assert {e["url"] for e in actions["elements"]} == {DASHBOARD, RUNBOOK}
    models = next(
        b["text"]["text"] for b in message["blocks"] if "model versions" in b.get("text", {}).get("text", "")
    )
    assert models.index("ranker-v7") < models.index("ranker-v6") and "52/80" in models


def test_slack_payload_without_links_has_no_empty_actions() -> None:
    message = slack_payload(alert())
    assert slack_problems(message) == [] and all(b["type"] != "actions" for b in message["blocks"])


@pytest.mark.parametrize("state", ["firing", "resolved"])
def test_pagerduty_event_follows_events_v2_and_links_out(state: str) -> None:
    event = pagerduty_payload(actionable(state), ROUTING_KEY)
    assert pagerduty_problems(event) == []
    if state == "resolved":
        return
    assert event["client"] == "evalloop" and event["client_url"] == DASHBOARD
    assert [link["href"] for link in event["links"]] == [DASHBOARD, RUNBOOK]
    assert "worst model ranker-v7" in event["payload"]["summary"]
    details = event["payload"]["custom_details"]
    assert details["started_at"] == T0.isoformat() and details["model_versions"][0]["bad"] == 52


@pytest.mark.parametrize(
    ("broken", "problem"),
    [
        ({"event_action": "explode"}, "bad event_action"),
        ({"routing_key": "short"}, "routing_key"),
        ({"extra": 1}, "unknown top-level field extra"),
        ({"links": [{"url": "x"}]}, "bad link"),
    ],
)
def test_pagerduty_rules_catch_what_they_should(broken: dict[str, Any], problem: str) -> None:
    event = {**pagerduty_payload(actionable(), ROUTING_KEY), **broken}
    assert any(problem in p for p in pagerduty_problems(event))


def test_slack_rules_catch_what_they_should() -> None:
    message = slack_payload(actionable())
    message["blocks"][0]["text"]["text"] = "x" * 151
    message["blocks"].append(
        {
            "type": "actions",
            "elements": [
                {"type": "button", "text": {"type": "mrkdwn", "text": "a"}, "action_id": "open_dashboard"}
            ],
        }
    )
    problems = " ".join(slack_problems(message))
    assert (
        "text length 151" in problems
        and "must be plain_text" in problems
        and "duplicate action_id" in problems
    )
