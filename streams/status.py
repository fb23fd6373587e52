"""`evalloop status`: what the Redis windows and alert states say, per category.

Windows are read at the loop's event-time watermark (stored by the aggregate agent), not at wall
time, so the status of a replayed day is meaningful. Shares are weighted by 1 / inclusion
probability; bounds are Wilson intervals on Kish's effective sample size.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import redis

from schemas.calibration import FAILURE_MODE_SIGNAL
from schemas.judgments import CANARY_CATEGORY_PREFIX, is_canary_category
from schemas.policy import Policy
from schemas.settings import Settings
from streams.alerting import AlertState
from streams.canary import health, health_json
from streams.correction import WindowCorrector, corrected_json, find_corrector
from streams.pipeline import utc_from_epoch
from streams.window_store import AlertStateStore, WindowStore
from streams.windows import WindowStats, display_rate, window_name

_MAX_LUA = """
local current = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) > current then redis.call('SET', KEYS[1], ARGV[1]) return 1 end
return 0
"""
SHARES = (("shown", "show"), ("related", "related"), ("filtered", "filter"))


def redis_from_settings(
    settings: Settings, connect_timeout_s: float = 5.0, timeout_s: float = 10.0
) -> redis.Redis:
    """A redis-py client for the configured Redis (ACL user, password, TLS CA)."""
    password = settings.redis.password.get_secret_value() if settings.redis.password else None
    tls = {"ssl_ca_certs": str(settings.redis.ssl_ca_certs)} if settings.redis.ssl_ca_certs else {}
    return redis.Redis.from_url(
        settings.redis.url,
        username=settings.redis.username,
        password=password,
        socket_connect_timeout=connect_timeout_s,
        socket_timeout=timeout_s,
        **tls,
    )


class LoopStateStore:
    """Loop-wide state in Redis beside the windows (``streams.evaluation.LoopStateLike``).

    ``{prefix}:loop:watermark`` the aggregate stage's watermark, ``{prefix}:loop:latest_event_time``
    the latest judgment event time applied, ``{prefix}:loop:evaluated:{category}`` the last
    boundary a category's rules were evaluated at. Each only ever moves forward (several workers).
    """

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.redis = client
        self.prefix = prefix
        self.key = f"{prefix}:loop:watermark"
        self.latest_key = f"{prefix}:loop:latest_event_time"
        self._max = client.register_script(_MAX_LUA)

    def evaluated_key(self, category: str) -> str:
        """``{prefix}:loop:evaluated:{category}``."""
        return f"{self.prefix}:loop:evaluated:{category}"

    def _get_float(self, key: str) -> float | None:
        raw = self.redis.get(key)
        return float(raw) if raw is not None else None

    def set_watermark(self, epoch: float) -> None:
        """Store ``epoch`` unless a later watermark is already stored (several workers)."""
        self._max(keys=[self.key], args=[repr(float(epoch))])

    def get_watermark(self) -> float | None:
        """The stored watermark (epoch seconds), or None before any judgment was aggregated."""
        return self._get_float(self.key)

    def note_event_time(self, epoch: float) -> None:
        """Record the latest judgment event time applied (max over workers)."""
        self._max(keys=[self.latest_key], args=[repr(float(epoch))])

    def latest_event_time(self) -> float | None:
        """The latest judgment event time any worker applied."""
        return self._get_float(self.latest_key)

    def set_teacher_version(self, version: str) -> None:
        """The teacher version the worker checked at start-up (status loads its calibration)."""
        self.redis.set(f"{self.prefix}:loop:teacher_version", version)

    def teacher_version(self) -> str | None:
        """The teacher version the last worker started with, if any."""
        raw = self.redis.get(f"{self.prefix}:loop:teacher_version")
        return raw.decode() if isinstance(raw, bytes) else raw

    def evaluated_through(self, categories: list[str]) -> dict[str, float | None]:
        """Each category's last evaluated boundary (None: never evaluated)."""
        if not categories:
            return {}
        raws = self.redis.mget([self.evaluated_key(c) for c in categories])
        return {c: float(raw) if raw is not None else None for c, raw in zip(categories, raws, strict=True)}

    def set_evaluated_through(self, marks: Mapping[str, float]) -> None:
        """Advance each category's mark (never backwards), in one round trip."""
        if not marks:
            return
        pipe = self.redis.pipeline(transaction=False)
        for category, epoch in marks.items():
            self._max(keys=[self.evaluated_key(category)], args=[repr(float(epoch))], client=pipe)
        pipe.execute()


#: Status share name → the calibration signal that corrects it.
SHARE_SIGNALS = {"shown": "shown_share", "related": "related_share", "filtered": "filtered_share"}


def _share(
    stats: WindowStats, display: str, corrector: WindowCorrector | None, category: str
) -> dict[str, Any]:
    raw = display_rate(stats.counters, (display,), 0.95)
    name = next(n for n, d in SHARES if d == display)
    corrected = corrector.correct(category, SHARE_SIGNALS[name], raw, 0.95) if corrector else None
    return {
        "share": round(raw.rate, 4),
        "lower": round(raw.lower, 4),
        "upper": round(raw.upper, 4),
        "corrected": corrected_json(corrected),
    }


def _failure_mode(
    stats: WindowStats, mode: str, count: int, corrector: WindowCorrector | None, category: str
) -> dict[str, Any]:
    """A tagged mode's count and share of ok judgments, corrected where the calibration has it."""
    key = f"{FAILURE_MODE_SIGNAL}{mode}"
    raw = stats.rates[key]
    corrected = corrector.correct(category, key, raw, 0.95) if corrector else None
    return {
        "failure_mode": mode,
        "count": count,
        "share": round(raw.rate, 4),
        "corrected": corrected_json(corrected),
    }


def _grade_mix(stats: WindowStats, corrector: WindowCorrector | None) -> dict[str, Any] | None:
    if corrector is None or stats.samples == 0:
        return None
    mix = corrector.grade_mix(stats)
    rounded = [
        [None if v is None else round(v, 4) for v in values]
        for values in (mix.corrected, mix.lower, mix.upper)
    ]
    return {
        "grades": mix.grades,
        "raw": [round(v, 4) for v in mix.raw],
        "corrected": rounded[0],
        "lower": rounded[1],
        "upper": rounded[2],
        "status": mix.status,
    }


def category_status(
    category: str,
    windows: WindowStore,
    states: AlertStateStore,
    policy: Policy,
    window_s: int,
    at: float,
    corrector: WindowCorrector | None = None,
) -> dict[str, Any]:
    """One category's figures in the window ending at ``at``, plus each rule's alert state; with
    ``corrector``, each share's bias-corrected value and the corrected grade mix."""
    stats = windows.read(category, window_s, at)
    modes = sorted(stats.failure_modes().items(), key=lambda item: (-item[1], item[0]))[:5]
    alerts: dict[str, str] = {}
    for rule in policy.rules_for(category):
        state: AlertState = states.get(rule.id, category)
        alerts[rule.id] = state.state
    return {
        "window": window_name(window_s),
        "judged": stats.samples,
        "errors": stats.errors,
        "weighted": round(stats.weighted_samples, 2),
        **{name: _share(stats, display, corrector, category) for name, display in SHARES},
        "grade_mix": _grade_mix(stats, corrector),
        "top_failure_modes": [
            _failure_mode(stats, mode, count, corrector, category) for mode, count in modes if count > 0
        ],
        "alerts": alerts,
    }


def collect(
    settings: Settings,
    policy: Policy,
    client: redis.Redis,
    window_s: int,
    bucket_seconds: int = 300,
) -> dict[str, Any]:
    """Every known category's status at the stored watermark: ``{"as_of": ISO event time or None,
    "latest_event_time": ISO or None, "calibration": {...}, "categories": {category: figures}}``.
    The calibration is the one of the teacher version the worker started with."""
    prefix = settings.redis.key_prefix
    windows = WindowStore(client, prefix, bucket_seconds=bucket_seconds)
    states = AlertStateStore(client, prefix)
    loop_state = LoopStateStore(client, prefix)
    at, latest = loop_state.get_watermark(), loop_state.latest_event_time()
    teacher_version = loop_state.teacher_version()
    corrector, message = None, "no worker has recorded its teacher version: raw shares only"
    if teacher_version is not None:
        corrector, message = find_corrector(settings.calibration_dir, teacher_version, policy.version)
    calibration: dict[str, Any] = {
        "teacher_version": teacher_version,
        "corrected": corrector is not None,
        "message": message,
    }
    if corrector is not None:
        calibration["failure_modes"] = _failure_mode_note(corrector)
    report: dict[str, Any] = {
        "as_of": _iso(at),
        "latest_event_time": _iso(latest),
        "calibration": calibration,
        "categories": {},
    }
    if at is not None:
        known = sorted(windows.categories())
        report["categories"] = {
            category: category_status(category, windows, states, policy, window_s, at, corrector)
            for category in known
            if not is_canary_category(category)
        }
        report["canaries"] = {
            category[len(CANARY_CATEGORY_PREFIX) :]: canary_status(
                category, windows, states, policy, window_s, at
            )
            for category in known
            if is_canary_category(category)
        }
    return report


def _failure_mode_note(corrector: WindowCorrector) -> str:
    """Which failure-mode shares the calibration corrects (only those golden items carry tags for)."""
    modes = sorted(corrector.record.failure_modes)
    if not modes:
        return "not corrected: the calibration record has no failure-mode figures (raw shares only)"
    return "corrected: " + ", ".join(modes)


def canary_status(
    category: str, windows: WindowStore, states: AlertStateStore, policy: Policy, window_s: int, at: float
) -> dict[str, Any]:
    """A teacher version's live Gate 2 from its golden canaries, and its health rules' states."""
    stats = windows.read(category, window_s, at)
    found = health(stats.counters, policy.grades, policy.gates.gate2.weights, seed=stats.end_epoch)
    return {
        **health_json(found, window_s),
        "errors": stats.errors,
        "alerts": {rule.id: states.get(rule.id, category).state for rule in policy.rules_for(category)},
    }


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else utc_from_epoch(epoch).isoformat()


def _alert_cell(row: dict[str, Any]) -> str:
    # A rule that is firing on a window with no judgments in it holds its state ("no data"):
    # too little evidence either way (docs/alerts.md), said so instead of shown as plain firing.
    open_rules = [rule for rule, state in row["alerts"].items() if state in ("firing", "pending")]
    if not open_rules:
        return "ok"
    return ",".join(open_rules) + (" (no data)" if row["judged"] == 0 else "")


def render_table(report: dict[str, Any]) -> str:
    """A fixed-width table of ``collect``'s report, headed by the event time it is as of."""
    rows: dict[str, Any] = report.get("categories", {})
    if not rows:
        return "no judgments aggregated yet"
    header = (
        f"{'category':<30} {'judged':>6} {'err':>4} {'shown':>17} {'related':>17} {'filtered':>17}  alerts"
    )
    title = f"as of {report['as_of']} (event-time watermark; latest judgment {report['latest_event_time']})"
    calibration = report.get("calibration") or {}
    lines = [title, f"calibration: {calibration.get('message', 'none')}", header, "-" * len(header)]
    for category, row in rows.items():
        cells = [f"{row[n]['share']:.2f} [{row[n]['lower']:.2f},{row[n]['upper']:.2f}]" for n, _ in SHARES]
        modes = ", ".join(_mode_cell(m) for m in row["top_failure_modes"][:3])
        lines.append(
            f"{category[:30]:<30} {row['judged']:>6} {row['errors']:>4} "
            + " ".join(f"{cell:>17}" for cell in cells)
            + f"  {_alert_cell(row)}"
        )
        if calibration.get("corrected"):
            fixed = [_corrected_cell(row[n].get("corrected")) for n, _ in SHARES]
            lines.append(f"{'  corrected':<42}" + " ".join(f"{cell:>17}" for cell in fixed))
        if modes:
            lines.append(f"{'':<30} top failure modes: {modes}")
    lines += _canary_lines(report.get("canaries") or {})
    return "\n".join(lines)


def _canary_lines(canaries: dict[str, Any]) -> list[str]:
    if not canaries:
        return []
    lines = [
        "",
        "live canaries (golden items through the live teacher; weighted kappa by the Gate 2 weights)",
    ]
    for version, row in canaries.items():
        interval = row["interval"]
        kappa = "n/a" if row["weighted_kappa"] is None else f"{row['weighted_kappa']:.2f}"
        ci = f" [{interval[0]:.2f},{interval[1]:.2f}]" if interval else ""
        agreement = "n/a" if row["agreement"] is None else f"{row['agreement']:.2f}"
        states = ",".join(rule for rule, state in row["alerts"].items() if state in ("firing", "pending"))
        lines.append(
            f"  {version[:40]:<40} n {row['n']:>4}  weighted kappa {kappa}{ci}  agreement {agreement}  "
            f"{states or 'ok'}"
        )
    return lines


def _mode_cell(mode: dict[str, Any]) -> str:
    """``mode(count)``, with the corrected share where the calibration corrects that mode."""
    corrected = mode.get("corrected")
    if not corrected:
        return f"{mode['failure_mode']}({mode['count']})"
    figures = f"share {mode['share']:.2f}, corrected {_corrected_cell(corrected)}"
    return f"{mode['failure_mode']}({mode['count']}; {figures})"


def _corrected_cell(figure: dict[str, Any] | None) -> str:
    if figure is None:
        return "-"
    if figure["status"] != "corrected":
        return str(figure["status"]).replace("_", " ")
    return f"{figure['value']:.2f} [{figure['lower']:.2f},{figure['upper']:.2f}]"


def render_json(report: dict[str, Any]) -> str:
    """One JSON object: ``as_of``, ``latest_event_time`` and ``categories`` keyed by category."""
    return json.dumps(report, ensure_ascii=False, sort_keys=True)


def known_windows(policy: Policy) -> Sequence[int]:
    """Window lengths the policy's rules use, ascending."""
    return sorted(
        {s for rule in policy.alerts for w in rule.windows for s in (w.long_seconds, w.short_seconds)}
    )
