"""Several workers in one consumer group: one killed with -9 mid-stream, then started again.

``python -m reliability.scale_out [--workers 3] [--events 300] [--replay-seconds 40]``

Needs the local Kafka and Redis (`make up`); the teacher is the noop teacher behind the Serve
HTTP contract in this process (no Ray: the check is about Kafka's group protocol). The run's
events, samples and judgments topics have 6 partitions each, shared by ``--workers`` ``evalloop
worker`` processes in one group. While a WANDS slice is replayed, one worker is SIGKILLed (its
partitions are handed over after the session timeout) and later started again (it joins and
partitions rebalance once more). After the loop drains it checks: one distinct judgment per
sampled (event, item); every Redis bucket equal to a single-worker ``evalloop backtest`` of the
same stream (same noop teacher), field by field; no incident announced twice. Prints one JSON line
of figures; exit 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reliability import harness
from reliability.live import LoopRun, Worker, log
from reliability.live_io import TopicReader
from schemas.policy import load_policy
from schemas.settings import load_settings

PARTITIONS = {"events": 6, "samples": 6, "judgments": 6, "alerts": 1, "dead_letters": 1}


@dataclass(frozen=True)
class ScaleConfig:
    """How many workers, what to replay and when the victim dies and comes back."""

    workers: int = 3
    events: int = 300
    replay_seconds: float = 40.0
    kill_at: float = 0.3
    rejoin_at: float = 0.6
    drain_timeout_s: float = 300.0


def backtest_windows(run: LoopRun, events_file: Path) -> list[Any]:
    """The judgments a single-process backtest makes of the same stream with the same teacher."""
    from evalloop.backtest import backtest
    from judges.fake import NoopTeacher

    policy = load_policy(run.settings.policy_file)
    return backtest(policy, NoopTeacher(policy), events_file).judgments


def _chaos(config: ScaleConfig, workers: list[Worker]) -> list[str]:
    """Kill the second worker at ``kill_at`` of the replay, start it again at ``rejoin_at``."""
    started, victim, actions = time.monotonic(), workers[1], []
    for fraction, action in ((config.kill_at, victim.kill9), (config.rejoin_at, victim.start)):
        time.sleep(max(0.0, started + fraction * config.replay_seconds - time.monotonic()))
        action()
        actions.append(f"{time.monotonic() - started:.1f}s {action.__name__} worker 1")
        log(actions[-1])
    return actions


def check(run: LoopRun, lines: list[bytes], reader: TopicReader, events_file: Path) -> dict[str, Any]:
    """Judgments, windows (against the backtest) and alerts of the drained run."""
    from streams.kafka_reader import read_topic

    policy = load_policy(run.settings.policy_file)
    expected = harness.expected_pairs(lines, policy)
    judgments = harness.parse_judgments(reader.poll(1.0))
    judged = harness.check_judgments(judgments, expected)
    client = harness.redis_for(run.settings)
    try:
        prefix = run.settings.redis.key_prefix
        against_topic = harness.window_mismatches(client, prefix, judgments)
        against_backtest = harness.window_mismatches(client, prefix, backtest_windows(run, events_file))
    finally:
        client.close()
    alerts = harness.check_alerts(
        harness.parse_alerts(read_topic(run.settings, run.settings.topics.alerts.name))
    )
    for problem in against_backtest[:10]:
        log(f"window mismatch vs backtest: {problem}")
    mismatches = judged.mismatches + len(against_topic) + len(against_backtest) + alerts.mismatches
    return {
        "events": len(lines),
        "pairs_expected": sum(len(items) for items in expected.values()),
        "judgments_raw": judged.raw,
        "judgments_distinct": judged.distinct,
        "redelivered_duplicates": judged.raw - judged.distinct,
        "missing_events": len(judged.missing_events),
        "judgment_mismatches": judged.mismatches,
        "window_mismatches_vs_topic": len(against_topic),
        "window_mismatches_vs_backtest": len(against_backtest),
        "alerts_firing": alerts.firing,
        "alerts_resolved": alerts.resolved,
        "duplicate_firings": alerts.duplicate_firings,
        "repages": alerts.repages,
        "mismatches": mismatches,
    }


def run_check(config: ScaleConfig) -> dict[str, Any]:
    """The whole check; returns the figures."""
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="evalloop-scale-"))
    policy_path = harness.write_test_policy(workdir)
    server = harness.noop_teacher_server(load_policy(policy_path))
    url = f"http://127.0.0.1:{server.server_address[1]}/teacher"
    run = harness.make_run(load_settings(), policy_path, url, "scale", PARTITIONS)
    try:
        return {**_drive(config, run, workdir), "wall_s": round(time.monotonic() - started, 1)}
    finally:
        server.shutdown()
        harness.delete_topics(run.settings)


def _drive(config: ScaleConfig, run: LoopRun, workdir: Path) -> dict[str, Any]:
    harness.create_topics(run.settings)
    lines = harness.replay_lines(config.events)
    events_file = harness.write_lines(workdir / "events.jsonl", lines)
    workers = [Worker(run, workdir / f"worker-{i}") for i in range(config.workers)]
    for worker in workers:
        worker.start()
    ready = all(worker.wait_ready(90.0) for worker in workers)
    log(f"{config.workers} workers ready: {ready}")
    job = harness.start_replay(events_file, run.settings, harness.pace_for(lines, config.replay_seconds))
    reader = TopicReader(run.settings, run.settings.topics.judgments.name)
    try:
        actions = _chaos(config, workers)
        replayed = job.wait(600)
        total = sum(
            len(v) for v in harness.expected_pairs(lines, load_policy(run.settings.policy_file)).values()
        )
        client = harness.redis_for(run.settings)
        drained = harness.wait_drained(
            reader, client, run.settings.redis.key_prefix, total, config.drain_timeout_s
        )
        client.close()
        figures = check(run, lines, reader, events_file)
        figures.update(
            workers=config.workers,
            partitions=PARTITIONS["events"],
            kills=sum(w.kills for w in workers),
            rejoins=sum(max(0, w.starts - 1) for w in workers),
            workers_alive_after=sum(1 for w in workers if w.alive()),
            actions=actions,
            delivery_errors=replayed.get("delivery_errors"),
            drained=drained,
        )
        figures["mismatches"] += 0 if drained else 1
        return figures
    finally:
        reader.close()
        for worker in workers:
            worker.stop()
        harness.clear_redis(run.settings)


def main(argv: list[str] | None = None) -> int:
    """CLI entry: run the check, print the figures as JSON; exit 1 on any mismatch."""
    parser = argparse.ArgumentParser(
        prog="python -m reliability.scale_out", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--workers", type=int, default=3, help="worker processes in the group (default 3)")
    parser.add_argument("--events", type=int, default=300, help="events replayed (default 300)")
    parser.add_argument("--replay-seconds", type=float, default=40.0, help="wall seconds of the replay")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures JSON here")
    args = parser.parse_args(argv)
    if args.workers < 2:
        parser.error("--workers must be at least 2 (one is killed)")
    config = ScaleConfig(workers=args.workers, events=args.events, replay_seconds=args.replay_seconds)
    figures = run_check(config)
    harness.emit_figures(figures, args.out)
    return 0 if figures["mismatches"] == 0 and figures["kills"] == 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
