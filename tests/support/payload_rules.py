"""The published field rules of the two webhook formats, as checks that return what breaks them.

Slack Block Kit (api.slack.com/reference/block-kit/blocks, .../block-elements): at most 50 blocks;
header: plain_text of at most 150 characters; section: text of at most 3000 characters or at most
10 fields of at most 2000; actions: at most 25 elements; button: plain_text label of at most 75,
url of at most 3000, action_id of at most 255 and unique in the message; context: at most 10
elements; a top-level ``text`` fallback for notifications.

PagerDuty Events API v2 (developer.pagerduty.com, "Send an Alert Event"): ``routing_key`` (32
characters), ``event_action`` trigger/acknowledge/resolve, ``dedup_key`` of at most 255; on trigger
a ``payload`` with ``summary`` (1-1024), ``source`` and ``severity`` (critical, error, warning,
info) required, ``timestamp`` ISO 8601; optional ``links`` [{href, text}], ``images``, ``client``
and ``client_url``; nothing else at the top level.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

SLACK_BLOCKS = {"header", "section", "actions", "context", "divider", "image", "rich_text"}
PD_TOP = {"routing_key", "event_action", "dedup_key", "payload", "links", "images", "client", "client_url"}
PD_SEVERITIES = {"critical", "error", "warning", "info"}


def slack_problems(message: dict[str, Any]) -> list[str]:
    """Every Block Kit rule ``message`` breaks (empty: it is valid as far as these rules go)."""
    problems = [] if isinstance(message.get("text"), str) and message["text"] else ["no text fallback"]
    blocks = message.get("blocks", [])
    if len(blocks) > 50:
        problems.append(f"{len(blocks)} blocks > 50")
    action_ids = [e.get("action_id") for b in blocks if b["type"] == "actions" for e in b["elements"]]
    if len(action_ids) != len(set(action_ids)):
        problems.append("duplicate action_id")
    for index, block in enumerate(blocks):
        problems += [f"block {index} ({block.get('type')}): {p}" for p in _block_problems(block)]
    return problems


def _block_problems(block: dict[str, Any]) -> Iterator[str]:
    kind = block.get("type")
    if kind not in SLACK_BLOCKS:
        yield "unknown block type"
    elif kind == "header":
        yield from _text_problems(block.get("text"), 150, plain=True)
    elif kind == "section":
        yield from _section_problems(block)
    elif kind == "actions":
        elements = block.get("elements", [])
        if not 1 <= len(elements) <= 25:
            yield f"{len(elements)} elements"
        for element in elements:
            yield from _button_problems(element)
    elif kind == "context" and not 1 <= len(block.get("elements", [])) <= 10:
        yield "context needs 1-10 elements"


def _section_problems(block: dict[str, Any]) -> Iterator[str]:
    if "text" not in block and "fields" not in block:
        yield "section without text or fields"
    if "text" in block:
        yield from _text_problems(block["text"], 3000)
    fields = block.get("fields", [])
    if len(fields) > 10:
        yield f"{len(fields)} fields > 10"
    for field in fields:
        yield from _text_problems(field, 2000)


def _button_problems(element: dict[str, Any]) -> Iterator[str]:
    if element.get("type") != "button":
        yield f"unexpected element {element.get('type')}"
        return
    yield from _text_problems(element.get("text"), 75, plain=True)
    url = element.get("url", "")
    if url and (len(url) > 3000 or not url.startswith(("http://", "https://"))):
        yield f"bad button url {url[:80]!r}"
    if not 0 < len(element.get("action_id", "")) <= 255:
        yield "action_id missing or > 255"
    if element.get("style") not in (None, "primary", "danger"):
        yield "bad style"


def _text_problems(text: Any, limit: int, plain: bool = False) -> Iterator[str]:
    if not isinstance(text, dict) or text.get("type") not in ("plain_text", "mrkdwn"):
        yield "text object missing"
        return
    if plain and text["type"] != "plain_text":
        yield "must be plain_text"
    if not 0 < len(text.get("text", "")) <= limit:
        yield f"text length {len(text.get('text', ''))} not in 1-{limit}"


def pagerduty_problems(event: dict[str, Any]) -> list[str]:
    """Every Events API v2 rule ``event`` breaks (empty: valid as far as these rules go)."""
    problems = [f"unknown top-level field {key}" for key in sorted(set(event) - PD_TOP)]
    if len(event.get("routing_key", "")) != 32:
        problems.append("routing_key must be 32 characters")
    if event.get("event_action") not in ("trigger", "acknowledge", "resolve"):
        problems.append("bad event_action")
    if not 0 < len(event.get("dedup_key", "")) <= 255:
        problems.append("dedup_key missing or > 255")
    if event.get("event_action") == "trigger":
        problems += _pd_payload_problems(event.get("payload"))
    for link in event.get("links", []):
        if not isinstance(link.get("href"), str) or set(link) - {"href", "text"}:
            problems.append(f"bad link {link}")
    if "client_url" in event and not str(event["client_url"]).startswith(("http://", "https://")):
        problems.append("client_url is not a URL")
    return problems


def _pd_payload_problems(payload: Any) -> list[str]:
    if not isinstance(payload, dict):
        return ["trigger without payload"]
    problems = []
    if not 0 < len(payload.get("summary", "")) <= 1024:
        problems.append("summary must be 1-1024 characters")
    if not payload.get("source"):
        problems.append("source is required")
    if payload.get("severity") not in PD_SEVERITIES:
        problems.append("bad severity")
    try:
        datetime.fromisoformat(payload.get("timestamp", ""))
    except ValueError:
        problems.append("timestamp is not ISO 8601")
    return problems
