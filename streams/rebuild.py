"""Rebuild a run's Redis state (windows and alert states) from the judgments topic.

Redis holds derived state only: every window bucket is a sum over the judgments topic, and every
alert state follows from evaluating the rules over those windows in event time. After Redis lost
its data (restart without persistence, FLUSHALL, failover to an empty replica) this module puts
it back:

1. read the judgments topic from the beginning up to the end offsets captured at start (so it
   terminates on a live topic), de-duplicating by judgment id (the topic is at-least-once);
2. ``WindowStore.clear()`` the run's prefix and re-apply every distinct judgment (batched,
   idempotent by judgment id, so a concurrent re-delivery cannot double count);
3. restore the alert states by evaluating every rule at each event-time bucket boundary up to the
   watermark the live worker would have (max event time − allowed lateness), exactly as the live
   aggregate stage does, but **without emitting**: these transitions were announced already;
4. cross-check with the alerts topic: per (rule, category) the restored state must agree with
   the last alert published (same incident firing, or resolved/not announced). Where it does not
   (the live worker opened the incident at another boundary, or a crash lost a notification),
   the announced state is stored instead (``reconcile``): the topic is what on-call was told.

Because the restored states are stored with the live check-and-set store, a worker continuing
afterwards sees "firing, incident X" and does not page again for X.

Run it while no worker writes to the prefix (stopped or idle): a worker applying judgments while
the keys are being cleared could have an increment deleted after its seen-marker was written.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from schemas.alerts import Alert
from schemas.codecs import ALERTS, JUDGMENTS, Undecodable
from schemas.judgments import Judgment
from schemas.policy import Policy
from schemas.settings import Settings
from streams import pipeline
from streams.alerting import AlertState, alert_id_for, incident_id_for
from streams.correction import WindowCorrector, find_corrector
from streams.engine import AlertEngine, CachedStates, EngineWindows
from streams.evaluation import every_point
from streams.kafka_reader import read_topic

log = logging.getLogger(__name__)

#: Judgments per ``WindowStore.apply`` call (the store chunks further into Lua calls of 500).
APPLY_BATCH = 2000


@dataclass
class RebuildCounts:
    """What a rebuild read, applied and restored (printed by ``evalloop windows rebuild``)."""

    judgments_read: int = 0
    invalid: int = 0
    duplicates: int = 0
    distinct: int = 0
    keys_cleared: int = 0
    applied: int = 0
    categories: int = 0
    evaluations: int = 0
    alert_states_restored: int = 0
    alerts_on_topic: int = 0
    #: Restored states that disagreed with the alerts topic and were set to what was announced.
    reconciled: list[str] = field(default_factory=list)
    #: Disagreements left after reconciling (should be none).
    mismatches: list[str] = field(default_factory=list)
    watermark: str | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return asdict(self)


# --------------------------------------------------------------------------- reading Kafka


def distinct_judgments(raws: Iterable[bytes], counts: RebuildCounts) -> list[Judgment]:
    """Parse and de-duplicate by judgment id (first occurrence wins; redeliveries are identical)."""
    seen: dict[str, Judgment] = {}
    for raw in raws:
        counts.judgments_read += 1
        judgment = JUDGMENTS.decode(raw)
        if isinstance(judgment, Undecodable):
            counts.invalid += 1
            continue
        if judgment.judgment_id in seen:
            counts.duplicates += 1
        else:
            seen[judgment.judgment_id] = judgment
    counts.distinct = len(seen)
    return list(seen.values())


def last_alerts(raws: Iterable[bytes]) -> dict[tuple[str, str], Alert]:
    """The last alert published per (rule, category): what on-call was last told."""
    last: dict[tuple[str, str], Alert] = {}
    for alert in ALERTS.decode_all(list(raws))[0]:
        last[(alert.rule, alert.category)] = alert
    return last


# --------------------------------------------------------------------------- restoring state


def latest_event_time(judgments: Sequence[Judgment]) -> float | None:
    """The latest judgment event time (None: no judgments)."""
    return max((j.event_time.timestamp() for j in judgments), default=None)


def live_watermark(latest: float | None, allowed_lateness_s: float) -> float | None:
    """The watermark the live worker would have: max event time − allowed lateness (None: none)."""
    return None if latest is None else latest - allowed_lateness_s


def first_seen(judgments: Iterable[Judgment]) -> dict[str, float]:
    """Each category's earliest judgment event time (where its boundaries start)."""
    earliest: dict[str, float] = {}
    for judgment in judgments:
        epoch = judgment.event_time.timestamp()
        earliest[judgment.category] = min(earliest.get(judgment.category, epoch), epoch)
    return earliest


class Restored(NamedTuple):
    """Each category's last evaluated boundary, and how many (category, boundary) evaluations ran."""

    through: dict[str, float]
    evaluations: int


def restore_alert_states(
    policy: Policy,
    windows: pipeline.WindowStoreLike,
    states: pipeline.AlertStateStoreLike,
    starts: dict[str, float],
    target: float,
    corrector: WindowCorrector | None = None,
) -> Restored:
    """Evaluate every category's rules at each of its boundaries up to ``target`` through the
    ``AlertEngine``, storing state and discarding alerts (they were announced already).

    All judgments are applied before this runs; that is equivalent to the live, incremental
    order because a window evaluated at boundary ``t`` reads only buckets that start before ``t``.
    ``starts``: each category's first judgment time.
    """
    engine = AlertEngine(policy, windows, states, corrector=corrector)
    through: dict[str, float] = {}
    for category in sorted(starts):
        points = every_point(None, starts[category], target, windows.bucket_seconds)
        engine.evaluate(category, points)  # alerts discarded: no emit
        if points:
            through[category] = points[-1]
    return Restored(through, engine.boundaries)


def restored_states(
    policy: Policy, categories: Iterable[str], states: pipeline.AlertStateStoreLike
) -> dict[tuple[str, str], AlertState]:
    """The stored state of every (rule, category) the policy evaluates."""
    return {
        (rule.id, category): states.get(rule.id, category)
        for category in sorted(categories)
        for rule in policy.rules_for(category)
    }


def _agrees(state: AlertState, alert: Alert | None, rule_id: str, category: str) -> bool:
    if alert is None:  # nothing announced: the state must not be an announced one
        return state.state in ("ok", "pending")
    if alert.state == "firing":
        return (
            state.state == "firing"
            and state.started_at is not None
            and alert_id_for(rule_id, category, state.started_at) == alert.alert_id
        )
    # Resolved was announced: resolved still, or a new incident that has not fired yet.
    return state.state in ("resolved", "pending", "ok")


def compare_with_alerts(
    restored: dict[tuple[str, str], AlertState], announced: dict[tuple[str, str], Alert]
) -> list[str]:
    """Disagreements between restored states and the last alert per (rule, category)."""
    problems: list[str] = []
    for key in sorted(set(restored) | set(announced)):
        state, alert = restored.get(key, AlertState()), announced.get(key)
        if not _agrees(state, alert, *key):
            told = f"{alert.state} {alert.alert_id}" if alert else "nothing"
            restored_text = f"restored {state.state} (incident {state.incident_id})"
            problems.append(f"{key[0]}/{key[1]}: {restored_text}, alerts topic says {told}")
    return problems


def announced_state(alert: Alert | None, restored: AlertState, rule_id: str) -> AlertState:
    """The state to store when ``restored`` disagrees with what was announced (``alert``).

    The alerts topic is the record of what on-call was told, so its incident identity wins: a
    re-evaluation can open an incident one boundary earlier or later than the live worker did
    (the live watermark is per partition and skips ahead after restarts and idle partitions).
    Firing announced → firing with that incident (a later resolve names it); resolved announced →
    resolved; nothing announced → ok, so the next breach pages instead of being swallowed. The
    restored breach and recovery timers are kept: they come from the data.
    """
    if alert is None:
        return AlertState()
    base = replace(
        restored,
        started_at=alert.started_at,
        fired_at=alert.fired_at,
        incident_id=incident_id_for(rule_id, alert.started_at),
    )
    if alert.state == "firing":
        return replace(
            base,
            state="firing",
            since=alert.fired_at or alert.started_at,
            resolved_at=None,
            last_breach_at=restored.last_breach_at or alert.updated_at,
            recovered_since=restored.recovered_since if restored.state == "firing" else None,
        )
    return replace(
        base,
        state="resolved",
        since=alert.resolved_at or alert.updated_at,
        resolved_at=alert.resolved_at or alert.updated_at,
        recovered_since=None,
    )


def reconcile(
    states: pipeline.AlertStateStoreLike,
    restored: dict[tuple[str, str], AlertState],
    announced: dict[tuple[str, str], Alert],
) -> int:
    """Store the announced state wherever the restored one disagrees; returns how many."""
    changed = 0
    for (rule_id, category), state in restored.items():
        alert = announced.get((rule_id, category))
        if _agrees(state, alert, rule_id, category):
            continue
        if states.put(rule_id, category, announced_state(alert, state, rule_id), state.version) is not None:
            changed += 1
    return changed


# --------------------------------------------------------------------------- the whole rebuild


def apply_all(windows: Any, judgments: Sequence[Judgment]) -> int:
    """Apply in batches (each idempotent by judgment id); returns how many were new."""
    applied = 0
    for start in range(0, len(judgments), APPLY_BATCH):
        applied += int(windows.apply(judgments[start : start + APPLY_BATCH]))
    return applied


def _corrector(
    directory: Path | None, judgments: Sequence[Judgment], policy: Policy
) -> WindowCorrector | None:
    versions = Counter(j.teacher_version for j in judgments if j.status == "ok")
    if directory is None or not versions:
        return None
    corrector, message = find_corrector(directory, versions.most_common(1)[0][0], policy.version)
    log.info("%s", message)
    return corrector


def rebuild(
    settings: Settings,
    policy: Policy,
    *,
    bucket_seconds: int = 300,
    ttl_seconds: int = 2 * 86400,
    allowed_lateness_s: float = 600.0,
    idle_timeout_s: float = 10.0,
    calibration_dir: Path | None = None,
) -> RebuildCounts:
    """Clear the run's Redis prefix and rebuild windows, alert states and the watermark.
    Rules that judge corrected shares use the calibration (from ``calibration_dir``) of the
    teacher version most judgments carry, as the live worker did."""
    from streams.status import LoopStateStore, redis_from_settings
    from streams.window_store import AlertStateStore, WindowStore

    started = time.monotonic()
    counts = RebuildCounts()
    judgments = distinct_judgments(
        read_topic(settings, settings.topics.judgments.name, idle_timeout_s), counts
    )
    alert_raws = read_topic(settings, settings.topics.alerts.name, idle_timeout_s)
    counts.alerts_on_topic = len(alert_raws)
    corrector = _corrector(calibration_dir, judgments, policy)
    client = redis_from_settings(settings)
    try:
        prefix = settings.redis.key_prefix
        windows = WindowStore(client, prefix, bucket_seconds, ttl_seconds)
        states = AlertStateStore(client, prefix)
        latest = latest_event_time(judgments)
        engine_windows = EngineWindows.for_policy(windows, policy, horizon=lambda: latest)
        cached_states = CachedStates(states)
        counts.keys_cleared = windows.clear()
        counts.applied = apply_all(windows, judgments)
        categories = windows.categories()
        counts.categories = len(categories)
        mark = live_watermark(latest, allowed_lateness_s)
        through: dict[str, float] = {}
        if mark is not None:
            restored_marks = restore_alert_states(
                policy, engine_windows, cached_states, first_seen(judgments), mark, corrector
            )
            through, counts.evaluations = restored_marks
        announced = last_alerts(alert_raws)
        restored = restored_states(policy, categories, states)
        counts.reconciled = compare_with_alerts(restored, announced)
        reconcile(states, restored, announced)
        restored = restored_states(policy, categories, states)
        counts.alert_states_restored = sum(1 for s in restored.values() if s.state != "ok")
        counts.mismatches = compare_with_alerts(restored, announced)
        if mark is not None and latest is not None:
            loop_state = LoopStateStore(client, prefix)
            loop_state.set_watermark(mark)
            loop_state.note_event_time(latest)
            loop_state.set_evaluated_through(through)
            counts.watermark = pipeline.utc_from_epoch(mark).isoformat()
    finally:
        client.close()
    counts.seconds = round(time.monotonic() - started, 3)
    return counts
