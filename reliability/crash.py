"""Worker crashes and a teacher replica killed mid-batch: nothing lost, nothing counted twice.

``python -m reliability.crash [--kills 10] [--events 300] [--seed 7] [--replay-seconds 75]``

Needs the local Kafka and Redis (`make up`); starts its own Ray + Serve (noop teacher, 2 replicas,
its own temp dir and HTTP port, so neither `make down` nor a colleague's Serve is disturbed).
While a WANDS slice is replayed at a pace that takes ``--replay-seconds``, the ``evalloop worker``
subprocess is SIGKILLed ``--kills`` times at seeded random moments and started again each time,
and one Serve replica actor is killed with ``ray.kill`` (Serve replaces it; the worker's teacher
client retries the calls that were in flight). After the loop drains it checks: one distinct
judgment per sampled (event, item), no event missing, every Redis bucket equal to a recomputation
from the judgments topic, no incident announced twice. Prints one JSON line of figures; exit 1 on
any mismatch.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.processes import free_port
from reliability import harness
from reliability.live import LoopRun, Worker, log
from reliability.live_io import TopicReader
from schemas.policy import load_policy
from schemas.settings import Settings, load_settings

STATE_DIR = Path(".evalloop/reliability")


@dataclass(frozen=True)
class CrashConfig:
    """What to replay and how often to break things."""

    kills: int = 10
    events: int = 300
    seed: int = 7
    replay_seconds: float = 75.0
    min_gap_s: float = 0.5
    max_gap_s: float = 5.0
    drain_timeout_s: float = 300.0


def teacher_settings(base: Settings) -> Settings:
    """``base`` with this check's Ray temp dir, a free Serve port and 2 noop replicas of 0.5 CPU."""
    serve = base.serve.model_copy(
        update={
            "num_cpus": 0.5,
            "autoscaling": base.serve.autoscaling.model_copy(update={"min_replicas": 2, "max_replicas": 2}),
        }
    )
    ray = base.ray.model_copy(update={"serve_port": free_port(), "app_name": "evalloop-teacher-rel"})
    return base.model_copy(update={"state_dir": STATE_DIR, "serve": serve, "ray": ray})


def replica_names(app_name: str) -> list[tuple[str, str]]:
    """(name, namespace) of the app's live Serve replica actors."""
    import ray

    return sorted(
        (actor["name"], actor["namespace"])
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["name"].startswith("SERVE_REPLICA::") and app_name in actor["name"]
    )


def kill_replica(app_name: str, rng: random.Random) -> str:
    """``ray.kill`` one replica actor (Serve's controller notices and starts a replacement)."""
    import ray

    names = replica_names(app_name)
    if not names:
        raise RuntimeError(f"no Serve replica of {app_name} found")
    name, namespace = rng.choice(names)
    ray.kill(ray.get_actor(name, namespace=namespace), no_restart=False)
    return name


def running_replicas(app_name: str) -> int:
    """Replicas Serve reports RUNNING for the teacher deployment."""
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None:
        return 0
    return sum(
        count
        for d in app.deployments.values()
        for state, count in d.replica_states.items()
        if state == "RUNNING"
    )


def run_chaos(
    config: CrashConfig, rng: random.Random, worker: Worker, on_replica: Callable[[], str]
) -> list[str]:
    """SIGKILL the worker ``config.kills`` times, each at a seeded random moment after it became
    ready (so the kill lands while it processes, not while it starts), restarting it at once; kill
    one teacher replica once ``replica_at`` seconds have passed (the worker then busy judging)."""
    started = time.monotonic()
    replica_at = rng.uniform(0.3, 0.6) * config.replay_seconds
    done: list[str] = []
    while worker.kills < config.kills:
        worker.wait_ready(60.0)
        if not any("replica" in action for action in done) and time.monotonic() - started >= replica_at:
            done.append(f"{time.monotonic() - started:.1f}s replica killed: {on_replica()}")
            log(done[-1])
        time.sleep(rng.uniform(config.min_gap_s, config.max_gap_s))  # chaos timing, not a wait
        worker.kill9()
        worker.start()
        done.append(f"{time.monotonic() - started:.1f}s worker SIGKILL #{worker.kills}")
        log(done[-1])
    return done


def check_run(run: LoopRun, lines: list[bytes], reader: TopicReader) -> dict[str, Any]:
    """Judgments, windows and alerts of the drained run against what they should be."""
    from streams.kafka_reader import read_topic

    policy = load_policy(run.settings.policy_file)
    expected = harness.expected_pairs(lines, policy)
    judgments = harness.parse_judgments(reader.poll(1.0))
    judged = harness.check_judgments(judgments, expected)
    client = harness.redis_for(run.settings)
    try:
        windows = harness.window_mismatches(client, run.settings.redis.key_prefix, judgments)
    finally:
        client.close()
    alerts = harness.check_alerts(
        harness.parse_alerts(read_topic(run.settings, run.settings.topics.alerts.name))
    )
    for problem in windows[:10]:
        log(f"window mismatch: {problem}")
    return {
        "events": len(lines),
        "sampled": len(expected),
        "pairs_expected": sum(len(items) for items in expected.values()),
        "judgments_raw": judged.raw,
        "judgments_distinct": judged.distinct,
        "redelivered_duplicates": judged.raw - judged.distinct,
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


def run_check(config: CrashConfig) -> dict[str, Any]:
    """The whole check; returns the figures."""
    from workers.deployment import deploy
    from workers.runtime import shutdown

    started = time.monotonic()
    rng = random.Random(config.seed)
    settings = teacher_settings(load_settings())
    workdir = Path(tempfile.mkdtemp(prefix="evalloop-crash-"))
    policy_path = harness.write_test_policy(workdir)
    log(f"starting Ray Serve (noop teacher, 2 replicas) on port {settings.ray.serve_port}")
    deploy(settings, policy_path, backend="noop")
    url = f"http://{settings.ray.serve_host}:{settings.ray.serve_port}/teacher"
    run = harness.make_run(settings, policy_path, url, "crash")
    try:
        return {**_drive(config, run, rng, workdir), "wall_s": round(time.monotonic() - started, 1)}
    finally:
        shutdown()
        harness.delete_topics(run.settings)


def _drive(config: CrashConfig, run: LoopRun, rng: random.Random, workdir: Path) -> dict[str, Any]:
    harness.create_topics(run.settings)
    lines = harness.replay_lines(config.events)
    speed = harness.pace_for(lines, config.replay_seconds)
    worker = Worker(run, workdir / "logs")
    worker.start()
    job = harness.start_replay(harness.write_lines(workdir / "events.jsonl", lines), run.settings, speed)
    reader = TopicReader(run.settings, run.settings.topics.judgments.name)
    app = run.settings.ray.app_name
    try:
        actions = run_chaos(config, rng, worker, lambda: kill_replica(app, rng))
        replayed = job.wait(600)
        expected_total = sum(
            len(v) for v in harness.expected_pairs(lines, load_policy(run.settings.policy_file)).values()
        )
        client = harness.redis_for(run.settings)
        drain_started = time.monotonic()
        drained = harness.wait_drained(
            reader,
            client,
            run.settings.redis.key_prefix,
            expected_total,
            config.drain_timeout_s,
            worker.ensure_running,
        )
        client.close()
        figures = check_run(run, lines, reader)
        figures.update(
            crashes_survived=worker.kills,
            worker_starts=worker.starts,
            replica_kills=sum(1 for a in actions if "replica" in a),
            replicas_running_after=running_replicas(app),
            replay_s=replayed.get("seconds"),
            delivery_errors=replayed.get("delivery_errors"),
            drained=drained,
            drain_s=round(time.monotonic() - drain_started, 1),
        )
        figures["mismatches"] += 0 if drained else 1
        return figures
    finally:
        reader.close()
        worker.stop()
        harness.clear_redis(run.settings)


def main(argv: list[str] | None = None) -> int:
    """CLI entry: run the check, print the figures as JSON; exit 1 on any mismatch."""
    parser = argparse.ArgumentParser(prog="python -m reliability.crash", description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--replay-seconds", type=float, default=75.0)
    parser.add_argument("--out", type=Path, default=None, help="also write the figures JSON here")
    args = parser.parse_args(argv)
    config = CrashConfig(
        kills=args.kills, events=args.events, seed=args.seed, replay_seconds=args.replay_seconds
    )
    figures = run_check(config)
    harness.emit_figures(figures, args.out)
    return 0 if figures["mismatches"] == 0 and figures["crashes_survived"] >= config.kills else 1


if __name__ == "__main__":
    raise SystemExit(main())
