"""The main job on a fresh machine (`make run`): the whole loop on the bundled data.

Starts the Ray Serve teacher and the Faust worker against the local Kafka and Redis, replays the
bundled WANDS day with one category degraded (part of its results swapped for other departments'
items), prints live per-category status and each alert as it fires and resolves, checks the live
alerts against an offline backtest of the same stream, and stops everything it started.

Every run gets its own topics, Redis key prefix and consumer group, so runs never see each
other's data and nothing shared is deleted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schemas.alerts import Alert, WindowFigure
from schemas.settings import Settings, load_settings

if TYPE_CHECKING:
    from streams.replay import Degradation

TOPIC_SUFFIXES = {
    "EVENTS": "events",
    "SAMPLES": "samples",
    "JUDGMENTS": "judgments",
    "ALERTS": "alerts",
    "DEAD_LETTERS": "dead-letters",
}


@dataclass(frozen=True)
class DemoConfig:
    """What the demo replays and which degradation it injects."""

    events_file: Path = Path("data/wands/events.jsonl")
    policy_file: Path = Path("policies/product-search.yaml")
    category: str = "Furniture & Office"
    degrade_from: str = "2024-06-01T10:00:00Z"
    degrade_to: str = "2024-06-01T15:00:00Z"
    fraction: float = 0.6
    speed: float = 600.0
    status_every_s: float = 10.0
    settle_s: float = 20.0
    timeout_s: float = 900.0
    backend: str | None = None
    #: The production model version the degraded events carry: a bad rollout the alerts name.
    rollout: str = "wands-synthetic-slates-v2-rollout"
    dashboard_port: int = 8050

    def degradation(self) -> Degradation:
        """The degradation this demo injects, for the live replay and the backtest alike."""
        from streams.replay import Degradation, parse_time

        return Degradation(
            self.category,
            parse_time(self.degrade_from),
            parse_time(self.degrade_to),
            self.fraction,
            model_version=self.rollout,
        )


def run_environment(run_id: str) -> dict[str, str]:
    """Settings overrides that give this run its own topics, Redis prefix and consumer group."""
    env = {
        f"EVALLOOP_TOPICS__{key}__NAME": f"evalloop.{run_id}.{suffix}"
        for key, suffix in TOPIC_SUFFIXES.items()
    }
    env["EVALLOOP_REDIS__KEY_PREFIX"] = f"evalloop:{run_id}"
    env["EVALLOOP_STREAM_APP_ID"] = f"evalloop-{run_id}"
    env["EVALLOOP_STREAM_LOG_INTERVAL_S"] = "10"
    return env


@dataclass
class AlertFeed:
    """Consumes the run's alerts topic in a thread and prints each alert as it arrives."""

    settings: Settings
    alerts: list[Alert] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._consume, name="alert-feed", daemon=True)
        thread.start()
        return thread

    def _consume(self) -> None:
        from schemas.codecs import ALERTS, Undecodable
        from streams import kafka_reader

        consumer = kafka_reader.consumer(self.settings, f"{self.settings.redis.key_prefix}-feed")
        consumer.subscribe([self.settings.topics.alerts.name])
        try:
            while not self.stop.is_set():
                message = consumer.poll(0.5)
                value = message.value() if message is not None and not message.error() else None
                alert = ALERTS.decode(value) if value else None
                if isinstance(alert, Undecodable):
                    print(f"alerts topic: skipped a record ({alert.detail})", flush=True)
                elif alert is not None:
                    self.alerts.append(alert)
                    print(describe_alert(alert), flush=True)
        finally:
            consumer.close()


def describe_alert(alert: Alert) -> str:
    """A few lines on-call can act on: what, where, how bad, why."""
    marker = "FIRING  " if alert.state == "firing" else "RESOLVED"
    figures = "; ".join(
        f"{w.window} raw {w.rate:.2f} [{w.lower:.2f},{w.upper:.2f}]{_corrected(w)} n={w.samples}"
        for w in alert.windows
    )
    lines = [
        f"\n*** {marker} {alert.severity} {alert.rule} / {alert.category} at event time "
        f"{alert.updated_at:%H:%M} — {alert.signal} > {alert.threshold:g}: {figures}"
    ]
    if alert.state == "firing":
        modes = ", ".join(f"{m.failure_mode} {m.share:.0%}" for m in alert.top_failure_modes[:3])
        lines.append(f"    top failure modes: {modes or 'none tagged'}")
        for example in alert.examples[:2]:
            lines.append(f"    e.g. '{example.query}' -> '{example.item_title}': {example.rationale[:160]}")
        versions = ", ".join(f"{m.model_version} {m.bad}/{m.samples} bad" for m in alert.model_versions[:3])
        lines.append(f"    production model versions in the window: {versions or 'unknown'}")
    if alert.dashboard_url:
        lines.append(f"    dashboard: {alert.dashboard_url}")
    if alert.state == "resolved" and alert.duration_seconds is not None:
        lines.append(f"    lasted {alert.duration_seconds / 3600:.1f} h (started {alert.started_at:%H:%M})")
    return "\n".join(lines) + "\n"


def _corrected(figure: WindowFigure) -> str:
    corrected = figure.corrected
    if corrected is None:
        return ""
    if corrected.value is None or corrected.lower is None or corrected.upper is None:
        return f", corrected {corrected.status.replace('_', ' ')}"
    return f", corrected {corrected.value:.2f} [{corrected.lower:.2f},{corrected.upper:.2f}]"


def start_worker(env: dict[str, str], log_path: Path, loglevel: str = "warning") -> subprocess.Popen[bytes]:
    """The Faust worker as its own process, as in production."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("wb")
    command = [sys.executable, "-m", "evalloop.cli", "worker", "--loglevel", loglevel]
    return subprocess.Popen(
        command, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def start_dashboard(
    env: dict[str, str], log_path: Path, port: int
) -> tuple[subprocess.Popen[bytes], str | None]:
    """``evalloop dashboard`` for this run; its URL (None when it could not start: see its log).
    A busy ``port`` falls back to a free one."""
    for attempt in (port, 0):
        log = log_path.open("ab")
        command = [sys.executable, "-m", "evalloop.cli", "dashboard", "--port", str(attempt)]
        process = subprocess.Popen(
            command, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=log, start_new_session=True
        )
        assert process.stdout is not None
        line = process.stdout.readline().decode().strip()  # its URL, or EOF when it exits
        if line.startswith("evalloop dashboard: http"):
            return process, line.removeprefix("evalloop dashboard: ")
        process.wait(10)
    return process, None


def stop_worker(process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """SIGTERM (Faust commits and leaves the group), then SIGKILL if it hangs."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _status_line(report: dict[str, Any], watermark: float | None) -> str:
    from streams.status import render_table

    at = datetime.fromtimestamp(watermark, UTC).strftime("%H:%M") if watermark else "--:--"
    judged = sum(row["judged"] for row in report["categories"].values())
    header = f"--- event time {at} (watermark), {judged} judged in the last hour's window ---"
    return f"\n{header}\n{render_table(report)}"


class LiveStatus:
    """Reads the run's Redis windows for the periodic status table."""

    def __init__(self, settings: Settings, policy_file: Path) -> None:
        from schemas.policy import load_policy
        from streams.status import LoopStateStore, redis_from_settings

        self.settings = settings
        self.policy = load_policy(policy_file)
        self.client = redis_from_settings(settings)
        self.loop_state = LoopStateStore(self.client, settings.redis.key_prefix)

    def watermark(self) -> float | None:
        return self.loop_state.get_watermark()

    def report(self, window_s: int = 3600) -> dict[str, Any]:
        from streams.status import collect

        return collect(self.settings, self.policy, self.client, window_s)

    def judged_total(self) -> int:
        return sum(row["judged"] for row in self.report(48 * 3600)["categories"].values())


def wait_until(
    done: Callable[[], bool], timeout_s: float, every_s: float, on_tick: Callable[[], None]
) -> bool:
    """Call ``on_tick`` every ``every_s`` until ``done()`` or the timeout; returns ``done()``."""
    deadline = time.monotonic() + timeout_s
    next_tick = time.monotonic() + every_s
    while time.monotonic() < deadline:
        if done():
            return True
        if time.monotonic() >= next_tick:
            on_tick()
            next_tick += every_s
        time.sleep(0.5)
    return done()


def timeline(alerts: list[Alert]) -> list[tuple[str, str, str, str]]:
    """(event time, state, rule, category) per alert, the form live and backtest are compared in."""
    return sorted((a.updated_at.strftime("%H:%M"), a.state, a.rule, a.category) for a in alerts)


def write_summary(path: Path, live: list[Alert], expected: list[Alert], report: dict[str, Any]) -> None:
    """Keep the run's outcome on disk for `make run`'s users and for CI logs."""
    summary = {"live_alerts": timeline(live), "backtest_alerts": timeline(expected), "status": report}
    path.write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")


def settled(status: LiveStatus, replay_done: threading.Event, quiet_for_s: float) -> Callable[[], bool]:
    """True once the replay finished and the judged count stopped moving for ``quiet_for_s``."""
    last = {"count": -1, "since": time.monotonic()}

    def check() -> bool:
        if not replay_done.is_set():
            return False
        count = status.judged_total()
        if count != last["count"]:
            last.update(count=count, since=time.monotonic())
            return False
        return time.monotonic() - last["since"] >= quiet_for_s

    return check


def current_settings(env: dict[str, str]) -> Settings:
    """Settings as the worker will see them (this process gets the same overrides)."""
    os.environ.update(env)
    return load_settings()


def _replay_thread(config: DemoConfig, settings: Settings, done: threading.Event) -> threading.Thread:
    from streams.replay import replay

    degradation = config.degradation()

    def work() -> None:
        try:
            counts = replay(config.events_file, settings, speed=config.speed, degradation=degradation)
            print(
                f"\nreplay done: {counts.produced} events produced, {counts.degraded_events} degraded "
                f"({counts.swapped_items} items swapped) in {counts.seconds:.0f}s",
                flush=True,
            )
        finally:
            done.set()

    thread = threading.Thread(target=work, name="replay", daemon=True)
    thread.start()
    return thread


def _expected_alerts(config: DemoConfig) -> list[Alert]:
    """The offline backtest of the same degraded stream: what the live loop should have sent."""
    from evalloop.backtest import backtest
    from judges.registry import build_teacher
    from schemas.policy import load_policy
    from schemas.settings import load_settings
    from streams.config import StreamSettings
    from streams.correction import find_corrector

    policy = load_policy(config.policy_file)
    teacher = build_teacher(policy, config.backend)
    bucket_seconds = StreamSettings().bucket_seconds
    corrector, _ = find_corrector(load_settings().calibration_dir, teacher.teacher_version, policy.version)
    return backtest(
        policy, teacher, config.events_file, config.degradation(), bucket_seconds, corrector
    ).alerts


def verdict(config: DemoConfig, live: list[Alert], expected: list[Alert]) -> tuple[bool, list[str]]:
    """Did the injected degradation fire and resolve, for that category only, as the backtest says?"""
    problems: list[str] = []
    states = {a.state for a in live if a.category == config.category}
    if states != {"firing", "resolved"}:
        problems.append(
            f"{config.category}: expected an alert to fire and resolve, saw {sorted(states) or 'none'}"
        )
    others = sorted({a.category for a in live if a.category != config.category})
    if others:
        problems.append(f"alerts for categories that were not degraded: {others}")
    if timeline(live) != timeline(expected):
        problems.append(f"live alerts {timeline(live)} differ from the offline backtest {timeline(expected)}")
    return not problems, problems


def run_demo(config: DemoConfig) -> int:
    """Run the whole loop once; 0 when the degradation's alert fired and resolved as expected."""
    from infra.kafka_server import ensure_topics
    from streams.services import require_kafka, require_redis
    from workers.deployment import deploy
    from workers.runtime import shutdown

    run_id = datetime.now(UTC).strftime("demo-%Y%m%d-%H%M%S")
    # The worker grades under the policy the teacher is deployed with (it refuses any other).
    env = {**run_environment(run_id), "EVALLOOP_POLICY_FILE": str(config.policy_file)}
    settings = current_settings(env)
    require_kafka(settings)
    require_redis(settings)

    for message in ensure_topics(settings):
        print(message)
    print(
        f"run {run_id}: starting the Ray Serve teacher ({config.backend or 'policy default'} backend)...",
        flush=True,
    )
    deploy(settings, config.policy_file, config.backend)
    logs = settings.state_dir / "logs"
    dashboard, url = start_dashboard(env, logs / f"{run_id}-dashboard.log", config.dashboard_port)
    if url is not None:
        env["EVALLOOP_DASHBOARD_URL"] = url.rstrip("/")
        print(f"dashboard: {url} (open it while the run goes; alerts link to it)", flush=True)
    else:
        print(f"dashboard: did not start, see {logs / f'{run_id}-dashboard.log'}", flush=True)
    worker = start_worker(env, logs / f"{run_id}-worker.log")
    feed = AlertFeed(settings)
    feed.start()
    try:
        return _drive(config, settings, feed, run_id)
    finally:
        feed.stop.set()
        stop_worker(worker)
        stop_worker(dashboard)
        shutdown()
        _reopen_hint(env)
        print(
            f"stopped the worker and the teacher; state of this run stays under Redis prefix "
            f"{settings.redis.key_prefix} (see `EVALLOOP_REDIS__KEY_PREFIX={settings.redis.key_prefix} "
            f"evalloop status`)"
        )


def _drive(config: DemoConfig, settings: Settings, feed: AlertFeed, run_id: str) -> int:
    status = LiveStatus(settings, config.policy_file)
    print(
        f"replaying {config.events_file} at {config.speed:g}x with '{config.category}' degraded "
        f"{config.degrade_from[11:16]}-{config.degrade_to[11:16]} ({config.fraction:.0%} of its results "
        f"swapped for other departments' items)",
        flush=True,
    )
    replay_done = threading.Event()
    _replay_thread(config, settings, replay_done)

    def tick() -> None:
        print(_status_line(status.report(), status.watermark()), flush=True)

    finished = wait_until(
        settled(status, replay_done, config.settle_s), config.timeout_s, config.status_every_s, tick
    )
    tick()
    expected = _expected_alerts(config)
    ok, problems = verdict(config, feed.alerts, expected)
    write_summary(settings.state_dir / f"{run_id}-summary.json", feed.alerts, expected, status.report())
    print("\nalert timeline (event time):")
    for row in timeline(feed.alerts):
        print("  " + "  ".join(row))
    print(f"offline backtest of the same stream: {timeline(expected)}")
    if not finished:
        problems.append(f"the loop did not settle within {config.timeout_s:.0f}s")
    print(
        "\nRESULT: "
        + (
            "OK — the injected degradation paged and resolved, matching the backtest"
            if ok and finished
            else "FAILED — " + "; ".join(problems)
        )
    )
    return 0 if ok and finished else 1


def _reopen_hint(env: dict[str, str]) -> None:
    keep = {
        k: v
        for k, v in env.items()
        if k.startswith(("EVALLOOP_TOPICS__", "EVALLOOP_REDIS__", "EVALLOOP_POLICY"))
    }
    assignments = " ".join(f"{key}='{value}'" for key, value in sorted(keep.items()))
    print(f"to look at this run again: {assignments} .venv/bin/evalloop dashboard", flush=True)
