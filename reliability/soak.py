"""Soak: a steady event rate against the live loop for a set time; memory and lag must stay bounded.

The real ``evalloop worker`` (subprocess, run-specific topics/group/prefix) judges through the
fault teacher in healthy mode (NoopTeacher grades: the loop, not a model, is under test). Events
are built from ``data/wands/events.jsonl`` with fresh ids and times and produced at ``--rate``
events/s by a pacing thread. Every ``--every`` seconds the soak records:

* the worker's RSS (``VmRSS`` of ``/proc/<pid>/status``; no psutil),
* the consumer lag of the worker's group (its app id) per topic: high watermark − committed
  offset, summed over partitions (confluent ``AdminClient.list_consumer_group_offsets``),
* the worker's ``shed`` counter (its counter log line) and judgments/s (judgments-topic growth).

Bounded means (documented in docs/reliability-faults.md):

* **memory**: max RSS in the last third of the samples ≤ 1.3 × max RSS in the first third + 20 MB;
* **lag**, per topic: max lag in the last third ≤ max(floor, 1.5 × max lag in the first third),
  floor = what 5 s of that topic's mean write rate is (batching and commit intervals alone make a
  few seconds of lag); a lag that grows steadily with time fails this, a noisy flat one passes;
* **drain**: after the producer stops, every lag returns to 0 within ``--drain-s`` seconds.

    python -m reliability.soak --rate 50 --seconds 120 [--every 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from reliability.fault_teacher import FaultTeacherServer
from reliability.live import EventFactory, LiveRun, live_run, wait_until, write_policy
from reliability.live_io import end_offsets, group_lag, make_producer, produce, worker_counters
from schemas.policy import load_policy

LAGGED_STAGES = ("events", "samples", "judgments")
MEMORY_FACTOR = 1.3
MEMORY_SLACK_MB = 20.0
LAG_FACTOR = 1.5
LAG_FLOOR_S = 5.0


@dataclass
class Point:
    """One observation of the running loop."""

    t: float
    produced: int
    rss_mb: float
    lag: dict[str, int]
    shed: int
    judgments_per_s: float


@dataclass
class SoakReport:
    """The trace and the verdicts."""

    rate: float
    seconds: float
    points: list[Point] = field(default_factory=list)
    produced: int = 0
    achieved_rate: float = 0.0
    judgments: int = 0
    memory_bounded: bool = False
    memory_limit_mb: float = 0.0
    lag_bounded: dict[str, bool] = field(default_factory=dict)
    lag_limits: dict[str, float] = field(default_factory=dict)
    drained_s: float | None = None
    worker_alive: bool = False

    @property
    def ok(self) -> bool:
        lag_ok = bool(self.lag_bounded) and all(self.lag_bounded.values())
        return self.memory_bounded and lag_ok and self.drained_s is not None and self.worker_alive


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MiB, from /proc (0 if the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


class Pacer(threading.Thread):
    """Produces fresh events at ``rate``/s in 100 ms ticks until stopped."""

    def __init__(self, run: LiveRun, rate: float) -> None:
        super().__init__(daemon=True, name="soak-pacer")
        self.live = run  # not ``self.run``: that is the thread's entry point
        self.rate = rate
        self.factory = EventFactory(f"{run.run_id}-soak")
        self.producer = make_producer(run.settings)
        self.produced = 0
        self.halt = threading.Event()

    def run(self) -> None:
        topic = self.live.topics["events"]
        start = time.monotonic()
        while not self.halt.is_set():
            due = int((time.monotonic() - start) * self.rate) - self.produced
            for _ in range(max(0, due)):
                key, value = self.factory.record()[1]
                self.producer.produce(topic, value=value, key=key)
                self.produced += 1
            self.producer.poll(0)
            time.sleep(0.1)
        self.producer.flush(60)


def thirds(values: list[float]) -> tuple[list[float], list[float]]:
    """The first and last third of ``values`` (at least one value each)."""
    size = max(1, len(values) // 3)
    return values[:size], values[-size:]


def judge_bounds(report: SoakReport, write_rates: dict[str, float]) -> None:
    """Fill the memory and lag verdicts from the trace (definitions in the module docstring)."""
    first, last = thirds([p.rss_mb for p in report.points])
    report.memory_limit_mb = round(MEMORY_FACTOR * max(first) + MEMORY_SLACK_MB, 1)
    report.memory_bounded = max(last) <= report.memory_limit_mb
    for stage in LAGGED_STAGES:
        first_lag, last_lag = thirds([float(p.lag.get(stage, 0)) for p in report.points])
        limit = max(LAG_FLOOR_S * write_rates.get(stage, 0.0), LAG_FACTOR * max(first_lag))
        report.lag_limits[stage] = round(limit, 1)
        report.lag_bounded[stage] = max(last_lag) <= limit


class Soak:
    """Warm up, pace events for ``seconds`` while observing, stop, wait for the drain."""

    def __init__(self, run: LiveRun, rate: float, seconds: float, every_s: float) -> None:
        self.run = run
        self.topics = [run.topics[s] for s in LAGGED_STAGES]
        self.report = SoakReport(rate=rate, seconds=seconds)
        self.every_s = every_s
        self.pid = run.worker.pid if run.worker else 0

    def warm_up(self, timeout_s: float = 180.0) -> None:
        """One event through the whole loop, so start-up is not in the first third."""
        producer = make_producer(self.run.settings)
        factory = EventFactory(f"{self.run.run_id}-warm")
        judgments = self.run.topics["judgments"]

        def judged() -> bool:
            produce(producer, self.run.topics["events"], [factory.record()[1]])
            return end_offsets(self.run.settings, [judgments])[judgments] > 0

        if not wait_until(judged, timeout_s, every_s=2.0):
            raise RuntimeError(f"the loop never judged an event; see {self.run.log_path}")

    def lag(self) -> dict[str, int]:
        """The worker group's lag by stage name (``events``, ``samples``, ``judgments``)."""
        by_topic = group_lag(self.run.settings, self.run.group, self.topics)
        return {stage: by_topic[self.run.topics[stage]] for stage in LAGGED_STAGES}

    def observe(self) -> None:
        pacer = Pacer(self.run, self.report.rate)
        judgments = self.run.topics["judgments"]
        start_offsets = end_offsets(self.run.settings, self.topics)
        last_j, last_t = start_offsets[judgments], time.monotonic()
        start = last_t
        pacer.start()
        while (now := time.monotonic()) - start < self.report.seconds:
            time.sleep(max(0.0, min(self.every_s, start + self.report.seconds - now)))
            written = end_offsets(self.run.settings, [judgments])[judgments]
            t = time.monotonic()
            point = Point(
                t=round(t - start, 1),
                produced=pacer.produced,
                rss_mb=round(rss_mb(self.pid), 1),
                lag=self.lag(),
                shed=worker_counters(self.run.log_path).get("shed", 0),
                judgments_per_s=round((written - last_j) / max(t - last_t, 1e-6), 1),
            )
            self.report.points.append(point)
            last_j, last_t = written, t
        pacer.halt.set()
        pacer.join(timeout=60)
        self._totals(pacer, start_offsets, time.monotonic() - start)

    def _totals(self, pacer: Pacer, start_offsets: dict[str, int], elapsed: float) -> None:
        final = end_offsets(self.run.settings, self.topics)
        report = self.report
        report.produced = pacer.produced
        report.achieved_rate = round(pacer.produced / elapsed, 1)
        report.judgments = final[self.run.topics["judgments"]] - start_offsets[self.run.topics["judgments"]]
        rates = {
            stage: (final[self.run.topics[stage]] - start_offsets[self.run.topics[stage]]) / elapsed
            for stage in LAGGED_STAGES
        }
        judge_bounds(report, rates)

    def drain(self, timeout_s: float) -> None:
        """Seconds until every lag is 0 after the producer stopped (None if not within timeout)."""
        started = time.monotonic()

        def drained() -> bool:
            return not any(self.lag().values())

        if wait_until(drained, timeout_s, every_s=1.0):
            self.report.drained_s = round(time.monotonic() - started, 1)


def run_soak(
    server: FaultTeacherServer, rate: float, seconds: float, every_s: float = 5.0, drain_s: float = 90.0
) -> SoakReport:
    """The soak against a fresh live run; ``server`` must be started (healthy)."""
    with live_run("soak", server.url) as run:
        soak = Soak(run, rate, seconds, every_s)
        soak.warm_up()
        soak.observe()
        soak.drain(drain_s)
        soak.report.worker_alive = run.worker is not None and run.worker.poll() is None
        return soak.report


def render(report: SoakReport) -> str:
    """The trace as a table, then the verdicts."""
    lines = [
        f"{'t s':>6} {'events':>7} {'rss MB':>7} {'lag ev':>7} {'lag smp':>7} {'lag jdg':>7} "
        f"{'shed':>5} {'judg/s':>7}"
    ]
    for p in report.points:
        lines.append(
            f"{p.t:>6.1f} {p.produced:>7} {p.rss_mb:>7.1f} {p.lag.get('events', 0):>7} "
            f"{p.lag.get('samples', 0):>7} {p.lag.get('judgments', 0):>7} {p.shed:>5} "
            f"{p.judgments_per_s:>7.1f}"
        )
    lines.append(
        f"rate {report.rate:g}/s target, {report.achieved_rate:g}/s achieved, {report.produced} events, "
        f"{report.judgments} judgments in {report.seconds:g}s; memory bounded={report.memory_bounded} "
        f"(last-third max <= {report.memory_limit_mb} MB); lag bounded={report.lag_bounded} "
        f"(limits {report.lag_limits}); drained in {report.drained_s}s; worker alive={report.worker_alive}; "
        f"{'PASS' if report.ok else 'FAIL'}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run a soak against the local services; exit 0 when memory and lag stayed bounded."""
    parser = argparse.ArgumentParser(description="Steady-rate soak of the live loop.")
    parser.add_argument("--rate", type=float, default=50.0, help="events per second")
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--every", type=float, default=5.0, help="seconds between observations")
    parser.add_argument("--drain-s", type=float, default=90.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    policy = load_policy(write_policy(Path(tempfile.mkdtemp(prefix="evalloop-soak-policy-"))))
    with FaultTeacherServer(policy) as server:
        report = run_soak(server, args.rate, args.seconds, args.every, args.drain_s)
    print(json.dumps(asdict(report), indent=2) if args.json else render(report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
