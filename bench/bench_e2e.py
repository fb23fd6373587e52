"""Events/s sustained through the whole loop, and what each process spends, vs the teacher alone.

Per teacher backend (``embedding``, then ``noop``): a run-specific set of topics, Redis prefix and
consumer group (``evalloop.demo.run_environment``); the teacher deployed on a local Ray Serve
(one replica, as ``make run`` does); the real worker (``python -m evalloop.cli worker``) as a
subprocess. A few warm-up events go through first (worker joined, replica loaded). Then the
WANDS day (``copies`` times, fresh event ids, in event-time order) is produced at max speed and
the clock runs until the aggregate stage has committed every judgment (the consumer group's
committed offsets on the judgments topic reach the expected count). The Redis windows are read
afterwards to check they hold every judgment.

**Baseline**: the same backend judging exactly the same pairs (the sampled events' top 10 items,
one call per event) directly in this process, one call after the other, with a fresh teacher
(cold cache, as the replica's was). ``e2e / teacher alone`` near 1 means the teacher is the
bottleneck; well below 1 means the loop around it is. (The ingest benchmark gives the other bound:
stage 1 alone.)

Per process: CPU seconds during the measured interval (``utime + stime`` from /proc/<pid>/stat)
and peak resident memory (``VmHWM`` from /proc/<pid>/status; lifetime peak, so for Kafka and
Redis it covers everything since they started).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import BenchResult
from schemas.settings import Settings, load_settings

NAME = "e2e"
POLICY = "policies/product-search.yaml"
EVENTS_FILE = Path("data/wands/events.jsonl")
WARMUP_EVENTS = 20
BACKENDS = ("embedding", "noop")


# --------------------------------------------------------------------------- /proc (pure parts)


def parse_stat(text: str) -> tuple[int, int]:
    """``/proc/<pid>/stat`` → (ppid, utime + stime in clock ticks); the name may hold spaces or ')'."""
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[11]) + int(fields[12])


def parse_vmhwm_kib(text: str) -> int:
    """``VmHWM`` (peak resident set, kB) from ``/proc/<pid>/status``; 0 when absent."""
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def process_label(cmdline: str) -> str:
    """A short name for a process from its command line (Ray sets ``ray::<Actor>`` titles)."""
    if cmdline.startswith("ray::"):
        name = cmdline.split()[0].removeprefix("ray::")
        return "ray " + name.split(":")[0]
    for marker, label in (
        ("raylet", "ray raylet"),
        ("gcs_server", "ray gcs_server"),
        ("dashboard", "ray agents"),
    ):
        if marker in cmdline:
            return label
    return "ray other" if "/ray/" in cmdline else cmdline.split()[0].rsplit("/", 1)[-1] if cmdline else "?"


# --------------------------------------------------------------------------- /proc (reading)


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (0 if it is gone)."""
    text = _read(f"/proc/{pid}/stat")
    return parse_stat(text)[1] / os.sysconf("SC_CLK_TCK") if text else 0.0


def peak_mib(pid: int) -> float:
    """Peak resident memory of ``pid`` in MiB (0 if it is gone)."""
    return parse_vmhwm_kib(_read(f"/proc/{pid}/status")) / 1024


def cmdline(pid: int) -> str:
    """The command line with spaces between arguments."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def children(parent: int) -> list[int]:
    """Live pids whose parent is ``parent``."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            text = _read(f"/proc/{entry.name}/stat")
            if text and parse_stat(text)[0] == parent:
                out.append(int(entry.name))
    return out


def ray_pids() -> dict[str, list[int]]:
    """This process's Ray cluster: head processes and the raylet's workers, by label."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    found: dict[str, list[int]] = {}
    roots = [info.process.pid for infos in getattr(node, "all_processes", {}).values() for info in infos]
    for pid in roots + [child for root in roots for child in children(root)]:
        found.setdefault(process_label(cmdline(pid)), []).append(pid)
    return found


def service_pids(settings: Settings) -> dict[str, list[int]]:
    """Kafka and Redis of ``make up`` (from their pid files)."""
    from infra.processes import Paths, owned_pid

    paths = Paths(settings.state_dir)
    out: dict[str, list[int]] = {}
    for label, service, marker in (("kafka", "kafka", "kafka.Kafka"), ("redis", "redis", "redis-server")):
        pid = owned_pid(paths, service, marker)
        if pid is not None:
            out[label] = [pid]
    return out


def cpu_snapshot(groups: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds per group (summed over its pids)."""
    return {label: sum(cpu_seconds(pid) for pid in pids) for label, pids in groups.items()}


# --------------------------------------------------------------------------- events


def replayed_days(days: int, run_id: str, limit: int | None = None) -> list[bytes]:
    """The WANDS day replayed ``days`` times back to back (day k shifted k days later, fresh ids),
    in event-time order: more events *and* more event time, so boundaries scale with events."""
    docs = [json.loads(line) for line in EVENTS_FILE.read_bytes().splitlines() if line.strip()][:limit]
    out = []
    for day in range(days):
        for doc in docs:
            fresh = {**doc, "event_id": f"{run_id}-{day}-{doc['event_id']}"}
            fresh["event_time"] = shifted(doc.get("event_time"), day)
            out.append(json.dumps(fresh, ensure_ascii=False, separators=(",", ":")).encode())
    return out


def shifted(event_time: Any, days: int) -> Any:
    """An ISO event time ``days`` later (left as it is when it does not parse: a bad event)."""
    from datetime import datetime, timedelta

    try:
        moved = datetime.fromisoformat(str(event_time).replace("Z", "+00:00")) + timedelta(days=days)
    except ValueError:
        return event_time
    return moved.isoformat().replace("+00:00", "Z")


def worker_counters(log_text: str) -> list[dict[str, int]]:
    """Every ``evalloop counters {...}`` snapshot the worker logged, in order."""
    import ast

    marker = "evalloop counters "
    return [
        ast.literal_eval(line.split(marker, 1)[1].strip()) for line in log_text.splitlines() if marker in line
    ]


def sampled_calls(values: Sequence[bytes]) -> list[list[Any]]:
    """The teacher calls the loop will make: one per sampled event, its top items as JudgeRequests,
    and one per golden canary that follows it (docs/canaries.md): the loop judges those too."""
    from judges.base import JudgeRequest
    from schemas.base import SchemaError
    from schemas.events import parse_event
    from schemas.golden import load_canaries
    from schemas.policy import load_policy
    from streams.canary import canary_samples
    from streams.pipeline import sample, to_requests
    from streams.sampling import Sampler

    policy = load_policy(POLICY)
    sampler = Sampler(policy)
    canaries = load_canaries(policy)
    calls = []
    for raw in values:
        try:
            event = parse_event(raw)
        except SchemaError:  # the day holds a few bad events on purpose: they go to dead letters
            continue
        chosen = sample(event, sampler, time.time()).sample
        if chosen is None:
            continue
        for judged in (chosen, *canary_samples(chosen, canaries, policy)):
            pairs = to_requests(judged, policy.sampling.max_items_per_event)
            calls.append([JudgeRequest.model_validate(p.model_dump()) for p in pairs])
    return calls


# --------------------------------------------------------------------------- the loop


class Committed:
    """Reads a consumer group's committed offsets on the judgments topic (one reused client)."""

    def __init__(self, settings: Settings, group: str) -> None:
        from confluent_kafka import Consumer, TopicPartition

        topic = settings.topics.judgments.name
        self.parts = [TopicPartition(topic, p) for p in range(settings.topics.judgments.partitions)]
        config = {**settings.kafka.confluent_config(), "group.id": group, "enable.auto.commit": False}
        self.consumer = Consumer(config)

    def __call__(self) -> int:
        """Sum of the committed offsets (0 for a partition with none)."""
        return sum(max(tp.offset, 0) for tp in self.consumer.committed(self.parts, timeout=10))

    def close(self) -> None:
        """Close the client (it never joined the group)."""
        self.consumer.close()


def windows_judged(settings: Settings) -> int:
    """Judgments (ok + error) held by the run's Redis windows over the whole day."""
    from streams.status import redis_from_settings
    from streams.window_store import WindowStore

    store = WindowStore(redis_from_settings(settings), settings.redis.key_prefix)
    end = time.mktime((2024, 6, 11, 0, 0, 0, 0, 0, 0)) - time.timezone
    total = 0
    for category in store.categories():
        stats = store.read(category, 10 * 86400, end)
        total += stats.samples + stats.errors
    return total


def clear_redis(settings: Settings) -> None:
    """Delete the run's Redis keys."""
    from streams.status import redis_from_settings
    from streams.window_store import WindowStore

    WindowStore(redis_from_settings(settings), settings.redis.key_prefix).clear()


@dataclass
class LoopRun:
    """One measured run of the loop."""

    events: int
    judgments: int
    seconds: float
    windows: int
    dead_letters: int
    cpu_s: dict[str, float]
    peak_mib: dict[str, float]
    #: Dead letters by reason ("late" must stay 0: events and judgments are never too old here).
    reasons: dict[str, int]
    #: The worker's own counters over the measured interval: wall seconds in rule evaluation
    #: and (category, boundary) evaluations.
    evaluation_s: float = 0.0
    evaluation_cpu_s: float = 0.0
    boundaries: int = 0
    buckets_loaded: int = 0


def drive(
    settings: Settings,
    env: dict[str, str],
    values: Sequence[bytes],
    expected: int,
    warm: Sequence[bytes],
    warm_expected: int,
) -> LoopRun:
    """Start the worker, push the warm-up through, then time the main events to the windows."""
    from bench.bench_ingest import produce_all, topic_end, wait_for_count
    from evalloop.demo import start_worker, stop_worker

    group = env["EVALLOOP_STREAM_APP_ID"]
    log_path = settings.state_dir / "logs" / f"{group}-e2e.log"
    worker = start_worker({**env, "EVALLOOP_STREAM_LOG_INTERVAL_S": "0.5"}, log_path, "info")
    committed = Committed(settings, group)
    try:
        alive = lambda: worker.poll() is None  # noqa: E731
        produce_all(settings, settings.topics.events.name, warm)
        wait_for_count(committed, warm_expected, 180.0, alive)
        groups = {
            "bench driver (replay)": [os.getpid()],
            "worker": [worker.pid],
            **ray_pids(),
            **service_pids(settings),
        }
        time.sleep(1.0)  # a counters line after the warm-up
        counters_before = worker_counters(log_path.read_text(errors="replace"))[-1]
        before, started = cpu_snapshot(groups), time.perf_counter()
        produce_all(settings, settings.topics.events.name, values)
        end = wait_for_count(committed, warm_expected + expected, 600.0, alive)[2]
        after = cpu_snapshot(groups)
        peaks = {label: max(peak_mib(pid) for pid in pids) for label, pids in groups.items()}
        time.sleep(1.0)  # the last counters line
        counters_after = worker_counters(log_path.read_text(errors="replace"))[-1]
    finally:
        stop_worker(worker, 20.0)
        committed.close()
    letters = topic_end(settings, settings.topics.dead_letters.name)
    cpu = {label: after[label] - before[label] for label in groups}
    reasons = dead_letter_reasons(settings)
    moved = {name: counters_after[name] - counters_before.get(name, 0) for name in counters_after}
    return LoopRun(
        len(values),
        expected,
        end - started,
        windows_judged(settings),
        letters,
        cpu,
        peaks,
        reasons,
        evaluation_s=moved["evaluation_ms"] / 1000,
        evaluation_cpu_s=moved["evaluation_cpu_ms"] / 1000,
        boundaries=moved["boundaries_evaluated"],
        buckets_loaded=moved["window_buckets_loaded"],
    )


def dead_letter_reasons(settings: Settings) -> dict[str, int]:
    """How many dead letters the run's topic holds, by reason."""
    from collections import Counter

    from streams.kafka_reader import read_topic

    raws = read_topic(settings, settings.topics.dead_letters.name, idle_timeout_s=3.0)
    return dict(Counter(json.loads(raw)["reason"] for raw in raws))


def teacher_alone(backend: str, calls: Sequence[Sequence[Any]]) -> float:
    """Seconds for a fresh in-process teacher to judge every pair, batched as the loop batches
    them: the pairs of ``judge_batch`` samples per call (the judge stage's one teacher round)."""
    from judges.registry import build_teacher
    from schemas.policy import load_policy
    from streams.config import StreamSettings

    teacher = build_teacher(load_policy(POLICY), backend)
    per_call = StreamSettings().judge_batch
    batches = [
        [pair for call in calls[k : k + per_call] for pair in call] for k in range(0, len(calls), per_call)
    ]
    started = time.perf_counter()
    for batch in batches:
        teacher.judge(batch)
    return time.perf_counter() - started


def one_backend(backend: str, days: int, limit: int | None, serve: dict[str, str]) -> tuple[LoopRun, float]:
    """Deploy ``backend``, run the loop over fresh topics, clean up; plus the teacher-alone time."""
    from bench.bench_ingest import create_topics, delete_topics, new_run_id, run_env, scoped_env
    from workers.deployment import deploy

    run_id = new_run_id(f"e2e-{backend}")
    env = {**run_env(run_id), **serve}
    values = replayed_days(days, run_id, limit)
    warm = replayed_days(1, f"{run_id}-warm", WARMUP_EVENTS)
    calls, warm_calls = sampled_calls(values), sampled_calls(warm)
    with scoped_env(env):
        settings = load_settings()
        create_topics(settings)
        try:
            deploy(settings, POLICY, backend)
            loop = drive(settings, env, values, sum(map(len, calls)), warm, sum(map(len, warm_calls)))
        finally:
            delete_topics(settings)
            clear_redis(settings)
    return loop, teacher_alone(backend, calls)


def run(quick: bool) -> BenchResult:
    """Whole-loop events/s per backend vs the same backend alone; CPU and memory per process."""
    from bench.bench_dispatch import serve_env
    from bench.bench_ingest import require_kafka
    from workers.runtime import shutdown

    require_kafka(load_settings())
    # Two replayed days (1,460 events, ~8,500 judgments, ~580 boundaries); quick: 240 events of one.
    days, limit = (1, 240) if quick else (2, None)
    plan = {"embedding": (days, limit), "noop": (days, limit)}
    serve = serve_env()
    result = BenchResult(name=NAME)
    try:
        for backend in BACKENDS:
            days, limit = plan[backend]
            loop, alone_s = one_backend(backend, days, limit, serve)
            add_rows(result, backend, loop, alone_s)
    finally:
        shutdown()
    result.notes += notes()
    return result


def add_rows(result: BenchResult, backend: str, loop: LoopRun, alone_s: float) -> None:
    """The headline row, one row per process, and the ratio to the teacher alone."""
    rate, alone = loop.events / loop.seconds, loop.events / alone_s
    result.rows.append(
        {
            "backend": backend,
            "process": "(loop)",
            "events": loop.events,
            "judgments": loop.judgments,
            "windows_judged": loop.windows,
            "dead_letters": loop.dead_letters,
            "late_dead_letters": loop.reasons.get("late", 0),
            "seconds": round(loop.seconds, 2),
            "events/s": rate,
            "judgments/s": loop.judgments / loop.seconds,
            "teacher_alone_ev/s": alone,
            "e2e/alone": round(rate / alone, 3),
            "boundaries": loop.boundaries,
            "evaluation_s": round(loop.evaluation_s, 3),
            "evaluation_%": round(100 * loop.evaluation_s / loop.seconds, 2),
        }
    )
    for label in sorted(loop.cpu_s, key=lambda k: -loop.cpu_s[k]):
        result.rows.append(
            {
                "backend": backend,
                "process": label,
                "cpu_s": round(loop.cpu_s[label], 2),
                "cpu_%": round(100 * loop.cpu_s[label] / loop.seconds, 1),
                "peak_mib": round(loop.peak_mib[label], 1),
            }
        )
    result.ratios[f"{backend}: e2e events per s / teacher alone (same pairs, batched alike)"] = round(
        rate / alone, 3
    )
    result.ratios[f"{backend}: boundary evaluation, share of e2e wall time (target <= 0.05)"] = round(
        loop.evaluation_s / loop.seconds, 4
    )
    if backend == "noop":
        result.ratios["noop: e2e judgments per s / 800 (target >= 1)"] = round(
            loop.judgments / loop.seconds / 800, 3
        )


def notes() -> list[str]:
    """How to read the table."""
    return [
        "events: the WANDS day replayed twice back to back (day 2 shifted by 24 h; 1,460 events, "
        "~10 items each; quick: the first 240 of one day) with fresh ids, ~58% sampled, top 10 "
        "items judged, produced at max speed after 20 warm-up events",
        "boundaries / evaluation_s: the worker's own counters (boundaries_evaluated, evaluation_ms) "
        "over the measured interval: (category, bucket boundary) rule evaluations and the wall "
        "time spent in them; evaluation_% is that time's share of the run",
        "dead_letters: the day's deliberately bad events plus judgments the aggregate stage "
        "dead-lettered as late (older than its watermark minus retention)",
        "seconds: from the first produce to the aggregate stage's committed offsets covering every "
        "judgment (Faust commits every 1 s, so up to ~1 s too long); windows_judged checks Redis",
        "teacher alone: a fresh in-process backend judging the same pairs, batched as the judge "
        "stage batches them (the pairs of judge_batch = 64 samples per call); the embedding "
        "cache starts cold on both sides",
        "cpu_% is of one core over the measured interval (200 % = both cores); Kafka and Redis "
        "are shared with whatever else runs on the machine; peak_mib is VmHWM (lifetime peak)",
    ]


def repeat_late_check(repeats: int, backend: str, days: int = 1) -> list[dict[str, Any]]:
    """Run the loop ``repeats`` times over the whole day at max speed; per run, the dead letters
    by reason (the stage-1 "late" bug showed as hundreds of 00:05 events dead-lettered "late")."""
    from bench.bench_dispatch import serve_env
    from workers.runtime import shutdown

    serve, runs = serve_env(), []
    try:
        for attempt in range(repeats):
            loop, _alone = one_backend(backend, days, None, serve)
            runs.append(
                {
                    "run": attempt + 1,
                    "events": loop.events,
                    "seconds": round(loop.seconds, 1),
                    "judgments/s": round(loop.judgments / loop.seconds),
                    "evaluation_%": round(100 * loop.evaluation_s / loop.seconds, 2),
                    "evaluation_cpu_%": round(100 * loop.evaluation_cpu_s / loop.seconds, 2),
                    "boundaries": loop.boundaries,
                    "buckets_loaded": loop.buckets_loaded,
                    **loop.reasons,
                }
            )
            print(json.dumps(runs[-1]), flush=True)
    finally:
        shutdown()
    return runs


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_e2e", description="repeat the e2e run, count late dead letters"
    )
    parser.add_argument("--repeat", type=int, default=10, help="runs in a row (default 10)")
    parser.add_argument("--backend", default="noop", choices=BACKENDS, help="teacher backend (default noop)")
    parser.add_argument("--days", type=int, default=1, help="replayed days per run (default 1)")
    arguments = parser.parse_args()
    done = repeat_late_check(arguments.repeat, arguments.backend, arguments.days)
    late = sum(run.get("late", 0) for run in done)
    print(f"{len(done)} runs, late dead letters in total: {late}")
    raise SystemExit(1 if late else 0)
