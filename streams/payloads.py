"""Slack Block Kit and PagerDuty Events v2 bodies for an alert (pure; ``streams.notify`` sends).

Each says what on-call needs to act: when the incident started (and on resolve how long it
lasted), the raw and corrected window figures with intervals and counts, the top failure modes,
examples from the firing window with the teacher's rationale, the production model versions in
that window (the one carrying the bad share first), and links to the dashboard view and the
rule's runbook. Field limits follow Slack's Block Kit reference and PagerDuty's Events API v2.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from schemas.alerts import Alert, WindowFigure

_STATE_EMOJI = {"firing": "🔴", "resolved": "✅", "pending": "🟡"}
_PD_SEVERITY = {"page": "critical", "ticket": "warning"}
#: Block Kit limits: header 150, section text 3000, a field 2000, button text 75, URL 3000.
HEADER_MAX, TEXT_MAX, FIELD_MAX, BUTTON_TEXT_MAX, URL_MAX = 150, 3000, 2000, 75, 3000
#: Events API v2: summary 1024, dedup_key 255; ``source`` names the affected system.
PD_SUMMARY_MAX, PD_SOURCE_MAX = 1024, 255
CLIENT = "evalloop"


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def duration_text(seconds: float) -> str:
    """``5400`` → ``1h 30m``; under an hour ``25m``."""
    minutes = round(seconds / 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m"


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


def _facts(alert: Alert) -> list[str]:
    facts = [
        f"*Category*\n{alert.category}",
        f"*Rule*\n{alert.rule}",
        f"*Severity*\n{alert.severity}",
        f"*Signal*\n{alert.signal} > {alert.threshold:.0%}",
        f"*Started*\n{_when(alert.started_at)}",
    ]
    if alert.duration_seconds is not None:
        facts.append(f"*Lasted*\n{duration_text(alert.duration_seconds)}")
    facts.append(f"*Policy*\n{alert.policy_version}")
    return [_truncate(fact, FIELD_MAX) for fact in facts]


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _truncate(text, TEXT_MAX)}}


def _models_text(alert: Alert) -> str:
    lines = [
        f"• `{m.model_version}` {m.bad}/{m.samples} bad ({m.share:.0%})" for m in alert.model_versions[:5]
    ]
    return "*Production model versions in the window* (worst first)\n" + "\n".join(lines)


def _buttons(alert: Alert) -> list[dict[str, Any]]:
    links = [
        ("Open dashboard", "open_dashboard", alert.dashboard_url),
        ("Runbook", "open_runbook", alert.runbook_url),
    ]
    return [
        {
            "type": "button",
            "text": {"type": "plain_text", "text": _truncate(label, BUTTON_TEXT_MAX)},
            "url": url,
            "action_id": action,
            **({"style": "primary"} if action == "open_dashboard" else {}),
        }
        for label, action, url in links
        if url is not None and len(url) <= URL_MAX
    ]


def slack_payload(alert: Alert) -> dict[str, Any]:
    """A Slack incoming-webhook message: header, facts (start, duration), window figures,
    failure modes, model versions, buttons to the dashboard and runbook, examples."""
    emoji = _STATE_EMOJI.get(alert.state, "")
    title = _truncate(f"{emoji} {alert.state.upper()}: {alert.rule} — {alert.category}", HEADER_MAX)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title, "emoji": True}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": fact} for fact in _facts(alert)]},
        _section(_figures_text(alert)),
    ]
    if alert.top_failure_modes:
        modes = "\n".join(f"• `{m.failure_mode}` {m.share:.0%} ({m.count})" for m in alert.top_failure_modes)
        blocks.append(_section(f"*Top failure modes*\n{modes}"))
    if alert.model_versions:
        blocks.append(_section(_models_text(alert)))
    if buttons := _buttons(alert):
        blocks.append({"type": "actions", "elements": buttons})
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
    if alert.model_versions and alert.model_versions[0].bad:
        summary += f"; worst model {alert.model_versions[0].model_version}"
    return _truncate(summary, PD_SUMMARY_MAX)


def _pd_links(alert: Alert) -> list[dict[str, str]]:
    links = [
        ("Dashboard: " + alert.category, alert.dashboard_url),
        ("Runbook: " + alert.rule, alert.runbook_url),
    ]
    return [{"href": href, "text": text} for text, href in links if href is not None]


def _pd_details(alert: Alert) -> dict[str, Any]:
    return {
        "alert_id": alert.alert_id,
        "description": alert.description,
        "started_at": alert.started_at.isoformat(),
        "estimate": alert.estimate,
        "calibration": alert.calibration,
        "windows": [f.model_dump(mode="json") for f in alert.windows],
        "top_failure_modes": [m.model_dump(mode="json") for m in alert.top_failure_modes],
        "model_versions": [m.model_dump(mode="json") for m in alert.model_versions],
        "examples": [e.model_dump(mode="json") for e in alert.examples[:5]],
        "runbook_url": alert.runbook_url,
    }


def pagerduty_payload(alert: Alert, routing_key: str) -> dict[str, Any]:
    """An Events API v2 event: trigger while pending/firing, resolve when resolved.

    ``dedup_key`` is the alert's ``rule/category`` so PagerDuty folds every update of an incident
    into one; ``source`` is the affected category; ``links``, ``client`` and ``client_url`` take
    the responder to the dashboard and runbook. The routing key is in the body because the
    Events API requires it there.
    """
    action = "resolve" if alert.state == "resolved" else "trigger"
    event: dict[str, Any] = {"routing_key": routing_key, "event_action": action, "dedup_key": alert.dedup_key}
    if action == "resolve":
        return event  # PagerDuty ignores a payload on resolve
    event["payload"] = {
        "summary": _pd_summary(alert),
        "source": _truncate(f"{alert.category}", PD_SOURCE_MAX),
        "severity": _PD_SEVERITY[alert.severity],
        "timestamp": (alert.fired_at or alert.started_at).isoformat(),
        "component": alert.category,
        "group": alert.policy_version,
        "class": alert.rule,
        "custom_details": _pd_details(alert),
    }
    event["client"] = CLIENT
    if alert.dashboard_url is not None:
        event["client_url"] = alert.dashboard_url
    if links := _pd_links(alert):
        event["links"] = links
    return event
