"""Service restarts: the Kafka broker mid-stream, then Redis losing everything and a rebuild.

``python -m reliability.restarts [--events 240] [--more 120] [--outage-seconds 10]``

Runs its OWN Kafka (127.0.0.1:29092, controller 29093) and Redis (127.0.0.1:26379, no
persistence) under ``.evalloop/reliability`` with infra.local's start functions, so the shared
services of `make up` are never restarted; the teacher is the noop teacher behind the Serve HTTP
contract in a thread (no Ray needed: no teacher fault is tested here).

(a) Kafka: while a replay runs, the broker is stopped (SIGTERM), kept down ``--outage-seconds``
    and started again. The replay's producer buffers and retries (long ``message.timeout.ms``);
    the worker pauses and resumes. Checks: nothing lost or double counted.
(b) Redis: with the loop drained (an alert firing), Redis is restarted without persistence — all
    windows, seen-markers and alert states are gone. ``evalloop windows rebuild`` restores them
    from the judgments topic; windows must equal the recomputation and the restored alert states
    must agree with the alerts topic. Then more events are replayed: the worker must not page
    again for an incident already announced.

Stops its own services at the end and verifies no process of theirs is left. Prints one JSON line
of figures; exit 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reliability import harness
from reliability.live import ROOT, LoopRun, Worker, log
from reliability.live_io import TopicReader
from reliability.own_services import OwnServices, own_services, own_settings
from schemas.policy import Policy, load_policy
from schemas.settings import load_settings


@dataclass(frozen=True)
class RestartConfig:
    """Sizes and timings of the check."""

    events: int = 240
    more: int = 120
    replay_seconds: float = 45.0
    outage_s: float = 10.0
    drain_timeout_s: float = 300.0


@dataclass
class Loop:
    """The running pieces of the check."""

    run: LoopRun
    policy: Policy
    services: OwnServices
    worker: Worker
    reader: TopicReader
    workdir: Path


def _pairs(lines: list[bytes], policy: Policy) -> int:
    return sum(len(items) for items in harness.expected_pairs(lines, policy).values())


def _distinct_judged(loop: Loop) -> int:
    return len({j.judgment_id for j in harness.parse_judgments(loop.reader.poll(0.5))})


def _wait_until(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {timeout_s:.0f}s")


def _drain(loop: Loop, lines: list[bytes], timeout_s: float) -> bool:
    client = harness.redis_for(loop.run.settings)
    try:
        return harness.wait_drained(
            loop.reader,
            client,
            loop.run.settings.redis.key_prefix,
            _pairs(lines, loop.policy),
            timeout_s,
            loop.worker.ensure_running,
        )
    finally:
        client.close()


def _check(loop: Loop, lines: list[bytes]) -> dict[str, Any]:
    from streams.kafka_reader import read_topic

    expected = harness.expected_pairs(lines, loop.policy)
    judgments = harness.parse_judgments(loop.reader.poll(1.0))
    judged = harness.check_judgments(judgments, expected)
    client = harness.redis_for(loop.run.settings)
    try:
        windows = harness.window_mismatches(client, loop.run.settings.redis.key_prefix, judgments)
    finally:
        client.close()
    for problem in windows[:10]:
        log(f"window mismatch: {problem}")
    raw_alerts = read_topic(loop.run.settings, loop.run.settings.topics.alerts.name)
    alerts = harness.check_alerts(harness.parse_alerts(raw_alerts))
    return {
        "events": len(lines),
        "judgments_raw": judged.raw,
        "judgments_distinct": judged.distinct,
        "error_judgments": judged.errors,
        "missing_events": len(judged.missing_events),
        "judgment_mismatches": judged.mismatches,
        "window_mismatches": len(windows),
        "alerts_firing": alerts.firing,
        "alerts_resolved": alerts.resolved,
        "duplicate_firings": alerts.duplicate_firings,
        "repages": alerts.repages,
        "mismatches": judged.mismatches + len(windows) + alerts.mismatches,
    }


def kafka_restart(loop: Loop, config: RestartConfig, lines: list[bytes]) -> dict[str, Any]:
    """(a) Stop the broker mid-replay, keep it down, start it; the loop must lose nothing."""
    speed = harness.pace_for(lines, config.replay_seconds)
    path = harness.write_lines(loop.workdir / "part-a.jsonl", lines)
    job = harness.start_replay(path, loop.run.settings, speed)
    total = _pairs(lines, loop.policy)
    _wait_until(lambda: _distinct_judged(loop) >= total // 3, 180, "a third of the judgments")
    judged_before = _distinct_judged(loop)
    loop.reader.close()  # our reader would only log connection errors during the outage
    log(f"stopping Kafka mid-replay ({judged_before}/{total} judged)")
    stopped = time.monotonic()
    loop.services.stop_kafka()
    time.sleep(config.outage_s)  # the outage itself: a duration, not a wait for a condition
    loop.services.start_kafka()
    outage = time.monotonic() - stopped
    log(f"Kafka back after {outage:.1f}s")
    loop.reader = TopicReader(loop.run.settings, loop.run.settings.topics.judgments.name)
    replayed = job.wait(300)
    drained = _drain(loop, lines, config.drain_timeout_s)
    figures = _check(loop, lines)
    figures.update(
        judged_before_outage=judged_before,
        outage_s=round(outage, 1),
        drained=drained,
        replay_delivery_errors=replayed.get("delivery_errors"),
        worker_restarts_needed=loop.worker.starts - 1,
    )
    figures["mismatches"] += (0 if drained else 1) + int(replayed.get("delivery_errors") or 0)
    return figures


def run_rebuild(loop: Loop) -> dict[str, Any]:
    """`evalloop windows rebuild --json` with the run's environment, as an operator would."""
    command = [sys.executable, "-m", "evalloop.cli", "windows", "rebuild", "--json"]
    done = subprocess.run(
        command,
        cwd=ROOT,
        env={**os.environ, **loop.run.env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"rebuild failed ({done.returncode}): {done.stderr[-2000:]}")
    counts: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return counts


def redis_restart(loop: Loop, config: RestartConfig, first: list[bytes], more: list[bytes]) -> dict[str, Any]:
    """(b) Redis loses everything; rebuild; more data must not page again."""
    log("restarting Redis without persistence (all windows and alert states lost)")
    loop.services.stop_redis()
    loop.services.start_redis()
    client = harness.redis_for(loop.run.settings)
    lost = harness.windows_total(client, loop.run.settings.redis.key_prefix)
    client.close()
    counts = run_rebuild(loop)
    log(f"rebuild: {counts}")
    after_rebuild = _check(loop, first)
    path = harness.write_lines(loop.workdir / "part-b.jsonl", more)
    replayed = harness.start_replay(path, loop.run.settings, None).wait(300)
    drained = _drain(loop, first + more, config.drain_timeout_s)
    after_more = _check(loop, first + more)
    mismatches = (
        len(counts["mismatches"])
        + after_rebuild["window_mismatches"]
        + after_more["mismatches"]
        + (0 if drained else 1)
        + int(replayed.get("delivery_errors") or 0)
    )
    return {
        "judged_after_restart": lost,
        "rebuild_read": counts["judgments_read"],
        "rebuild_distinct": counts["distinct"],
        "rebuild_applied": counts["applied"],
        "rebuild_categories": counts["categories"],
        "rebuild_alert_states": counts["alert_states_restored"],
        "rebuild_reconciled": len(counts["reconciled"]),
        "rebuild_alert_mismatches": len(counts["mismatches"]),
        "rebuild_s": counts["seconds"],
        "windows_after_rebuild_mismatches": after_rebuild["window_mismatches"],
        "firing_before_more": after_rebuild["alerts_firing"],
        "after_more": after_more,
        "drained": drained,
        "mismatches": mismatches,
    }


def run_check(config: RestartConfig) -> dict[str, Any]:
    """Both parts on own services; returns the figures."""
    started = time.monotonic()
    settings = own_settings(load_settings())
    workdir = Path(tempfile.mkdtemp(prefix="evalloop-restarts-"))
    policy_path = harness.write_test_policy(workdir)
    policy = load_policy(policy_path)
    teacher = harness.noop_teacher_server(policy)
    url = f"http://127.0.0.1:{teacher.server_address[1]}/teacher"
    lines = harness.replay_lines(config.events + config.more)
    first, more = lines[: config.events], lines[config.events :]
    try:
        with own_services(settings) as services:
            run = harness.make_run(settings, policy_path, url, "restarts")
            harness.create_topics(run.settings)
            worker = Worker(run, workdir / "logs")
            worker.start()
            reader = TopicReader(run.settings, run.settings.topics.judgments.name)
            loop = Loop(run, policy, services, worker, reader, workdir)
            try:
                kafka = kafka_restart(loop, config, first)
                redis_part = redis_restart(loop, config, first, more)
            finally:
                loop.reader.close()
                worker.stop()
                harness.delete_topics(run.settings)
    finally:
        teacher.shutdown()
    return {
        "kafka_restart": kafka,
        "redis_restart": redis_part,
        "mismatches": kafka["mismatches"] + redis_part["mismatches"],
        "services_left": 0,
        "wall_s": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """CLI entry: run the check, print the figures as JSON; exit 1 on any mismatch."""
    parser = argparse.ArgumentParser(
        prog="python -m reliability.restarts", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--events", type=int, default=240)
    parser.add_argument("--more", type=int, default=120)
    parser.add_argument("--outage-seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=None, help="also write the figures JSON here")
    args = parser.parse_args(argv)
    config = RestartConfig(events=args.events, more=args.more, outage_s=args.outage_seconds)
    figures = run_check(config)
    harness.emit_figures(figures, args.out)
    return 0 if figures["mismatches"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
