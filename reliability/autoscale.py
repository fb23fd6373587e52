"""Serve autoscaling under a load step, on the local Ray: replicas up under load, back down after,
and no request failed or lost while replicas were added or removed (in-flight batches drain).

``python -m reliability.autoscale [--delay-s 0.1] [--load-concurrency 24]``

Starts its own Ray and Serve (temp dir under .evalloop/reliability, a free HTTP port, its own app
name) with the noop teacher taking ``--delay-s`` per batch (a model's service time) and batches of
2, autoscaling 1..3 replicas on 2 ongoing requests each with short delays. Then three phases of
HTTP load on ``/teacher`` (one pair per call): *before* (1 client), *load* (many clients, until
two replicas have run for a while), *after* (1 client, until the deployment is back to its
minimum). Prints the replica count and latency every 2 s, a JSON summary, and exits 1 unless
replicas went up to at least 2 and back to the minimum with 0 failed or lost requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from infra.processes import free_port
from schemas.events import Item, JudgeRequest
from schemas.settings import Settings, load_settings

STATE_DIR = Path(".evalloop/reliability")
APP_NAME = "evalloop-teacher-autoscale"
DEPLOYMENT = "TeacherDeployment"


@dataclass(frozen=True)
class LoadStep:
    """The load phases and the scaling the check expects."""

    delay_s: float = 0.1
    load_concurrency: int = 24
    before_s: float = 8.0
    load_max_s: float = 90.0
    hold_scaled_s: float = 6.0
    after_max_s: float = 120.0
    min_replicas: int = 1
    max_replicas: int = 3


@dataclass
class Call:
    """One HTTP call: its phase, when it started (s since the run began), latency and outcome."""

    phase: str
    at: float
    latency_s: float
    ok: bool
    error: str = ""


@dataclass
class Run:
    """What the run saw."""

    calls: list[Call] = field(default_factory=list)
    replicas: list[tuple[float, int]] = field(default_factory=list)
    phase: str = "before"
    started: float = field(default_factory=time.monotonic)

    def now(self) -> float:
        return time.monotonic() - self.started

    def running(self) -> int:
        return self.replicas[-1][1] if self.replicas else 0


def teacher_settings(base: Settings, step: LoadStep) -> Settings:
    """``base`` with this check's Ray temp dir, port, app name, small batches and quick scaling."""
    scaling = base.serve.autoscaling.model_copy(
        update={
            "min_replicas": step.min_replicas,
            "max_replicas": step.max_replicas,
            "target_ongoing_requests": 2,
            "upscale_delay_s": 1.0,
            "downscale_delay_s": 4.0,
            "look_back_period_s": 3.0,
            "metrics_interval_s": 0.5,
        }
    )
    serve = base.serve.model_copy(
        update={"num_cpus": 0.5, "max_batch_size": 2, "batch_wait_timeout_s": 0.005, "autoscaling": scaling}
    )
    ray = base.ray.model_copy(update={"serve_port": free_port(), "app_name": APP_NAME, "num_cpus": 2})
    return base.model_copy(update={"state_dir": STATE_DIR, "serve": serve, "ray": ray})


def running_replicas() -> int:
    """RUNNING replicas of the teacher deployment, from Serve's controller."""
    from ray import serve

    app = serve.status().applications.get(APP_NAME)
    if app is None or DEPLOYMENT not in app.deployments:
        return 0
    from ray.serve._private.common import ReplicaState

    return int(app.deployments[DEPLOYMENT].replica_states.get(ReplicaState.RUNNING, 0))


def request_body(n: int) -> dict[str, Any]:
    pair = JudgeRequest(
        event_id=f"as-{n}",
        category="Furniture & Office",
        event_time=datetime(2026, 1, 1, tzinfo=UTC),
        query="small wardrobe grey",
        item=Item(item_id=f"it-{n}", title="2 door wardrobe", rank=1),
    )
    return {"requests": [pair.model_dump(mode="json")]}


async def _client(run: Run, http: httpx.AsyncClient, url: str, phases: set[str], counter: list[int]) -> None:
    while run.phase in phases:
        counter[0] += 1
        n, phase, began = counter[0], run.phase, time.monotonic()
        try:
            response = await http.post(url, json=request_body(n), timeout=60)
            judgments = response.json().get("judgments", []) if response.status_code == 200 else []
            ok = (
                len(judgments) == 1
                and judgments[0]["event_id"] == f"as-{n}"
                and judgments[0]["status"] == "ok"
            )
            error = "" if ok else f"HTTP {response.status_code}: {response.text[:120]}"
        except (httpx.HTTPError, ValueError) as failure:
            ok, error = False, f"{type(failure).__name__}: {failure}"
        run.calls.append(Call(phase, began - run.started, time.monotonic() - began, ok, error))


async def _watch(run: Run, stop: asyncio.Event) -> None:
    last_print = -2.0
    while not stop.is_set():
        run.replicas.append((run.now(), await asyncio.to_thread(running_replicas)))
        if run.now() - last_print >= 2.0:
            last_print = run.now()
            print(_progress_line(run), flush=True)
        await asyncio.sleep(0.5)


def _progress_line(run: Run) -> str:
    recent = [c for c in run.calls if c.at >= run.now() - 2.0]
    p50 = statistics.median(c.latency_s for c in recent) * 1000 if recent else float("nan")
    failed = sum(not c.ok for c in run.calls)
    return (
        f"t={run.now():6.1f}s  phase={run.phase:<6}  replicas={run.running()}  "
        f"calls={len(run.calls):5d}  failed={failed}  p50={p50:7.1f} ms"
    )


async def _drive(url: str, step: LoadStep) -> Run:
    run, stop, counter = Run(), asyncio.Event(), [0]
    watcher = asyncio.create_task(_watch(run, stop))
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=step.load_concurrency + 2)) as http:
        background = asyncio.create_task(_client(run, http, url, {"before", "load", "after"}, counter))
        await asyncio.sleep(step.before_s)
        run.phase = "load"
        extra = [
            asyncio.create_task(_client(run, http, url, {"load"}, counter))
            for _ in range(step.load_concurrency - 1)
        ]
        await _until(lambda: _held(run, 2, step.hold_scaled_s), step.load_max_s)
        run.phase = "after"
        await asyncio.gather(*extra)
        await _until(lambda: _held(run, step.min_replicas, 3.0, exactly=True), step.after_max_s)
        run.phase = "done"
        await background
    stop.set()
    await watcher
    return run


def _held(run: Run, replicas: int, seconds: float, exactly: bool = False) -> bool:
    """Whether the replica count has been ≥ ``replicas`` (== with ``exactly``) for ``seconds``."""
    window = [n for at, n in run.replicas if at >= run.now() - seconds]
    span_ok = bool(run.replicas) and run.replicas[0][0] <= run.now() - seconds
    return span_ok and bool(window) and all((n == replicas) if exactly else (n >= replicas) for n in window)


async def _until(condition: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not condition():
        await asyncio.sleep(0.5)


def summarise(run: Run, step: LoadStep) -> dict[str, Any]:
    """Figures per phase and the verdict."""
    phases: dict[str, Any] = {}
    for phase in ("before", "load", "after"):
        calls = [c for c in run.calls if c.phase == phase]
        latencies = sorted(c.latency_s * 1000 for c in calls) or [float("nan")]
        phases[phase] = {
            "calls": len(calls),
            "failed": sum(not c.ok for c in calls),
            "p50_ms": round(statistics.median(latencies), 1),
            "p95_ms": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 1),
        }
    counts = [n for _at, n in run.replicas]
    peak = max(counts, default=0)
    final = counts[-1] if counts else 0
    failed = sum(p["failed"] for p in phases.values())
    errors = sorted({c.error for c in run.calls if not c.ok})[:5]
    ok = peak >= 2 and final == step.min_replicas and failed == 0
    return {
        "ok": ok,
        "peak_replicas": peak,
        "final_replicas": final,
        "failed": failed,
        "phases": phases,
        "errors": errors,
        "seconds": round(run.now(), 1),
    }


def run_check(step: LoadStep, base: Settings | None = None) -> dict[str, Any]:
    """Deploy, drive the load step, shut down; the summary."""
    from workers.deployment import deploy
    from workers.runtime import shutdown

    settings = teacher_settings(base or load_settings(), step)
    try:
        deploy(settings, settings.policy_file, backend="noop", options={"delay_s": step.delay_s})
        url = f"http://127.0.0.1:{settings.ray.serve_port}/teacher"
        run = asyncio.run(_drive(url, step))
        served = teacher_pairs_exported(sum(c.ok for c in run.calls))
    finally:
        shutdown()
    return {**summarise(run, step), "teacher_pairs_exported": served}


def ray_metrics_url() -> str:
    """Ray's Prometheus export on this node (the teacher deployment's own metrics are there)."""
    import ray

    node = next(n for n in ray.nodes() if n.get("Alive"))  # type: ignore[no-untyped-call]
    return f"http://127.0.0.1:{node['MetricsExportPort']}/metrics"


def teacher_pairs_exported(expected: int, timeout_s: float = 45.0) -> float:
    """``ray_evalloop_teacher_pairs`` (status ok) summed over replicas, once it reaches
    ``expected`` or ``timeout_s`` passed (Ray reports metrics every few seconds)."""
    from prometheus_client.parser import text_string_to_metric_families

    url, total, deadline = ray_metrics_url(), 0.0, time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            families = text_string_to_metric_families(httpx.get(url, timeout=5).text)
            total = sum(
                sample.value
                for family in families
                for sample in family.samples
                if sample.name.startswith("ray_evalloop_teacher_pairs")
                and sample.name.endswith("_total")
                and sample.labels.get("status") == "ok"
            )
        except httpx.HTTPError:
            total = 0.0
        if total >= expected:
            break
        time.sleep(2.0)
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--delay-s", type=float, default=LoadStep.delay_s)
    parser.add_argument("--load-concurrency", type=int, default=LoadStep.load_concurrency)
    args = parser.parse_args(argv)
    summary = run_check(LoadStep(delay_s=args.delay_s, load_concurrency=args.load_concurrency))
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
