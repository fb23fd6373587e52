"""Judgments/s through Ray Serve (handle and HTTP) vs direct in-process calls to the same backend.

One local Ray head is started for the benchmark (``workers.runtime.start_local_ray``, on a free
Serve port so nothing else on the machine is disturbed); the teacher is deployed with
``workers.deployment.deploy`` (one replica, ``@serve.batch`` on, the default ServeSettings), once
with the default ``embedding`` backend and once with ``noop`` (everything but the model: the
dispatch ceiling). Per backend, the same (query, item) pairs from the WANDS day go:

* **direct batched** (the baseline): ``build_teacher(policy, backend).judge(...)`` in this process
  with ``max_batch_size`` calls merged into one, as Serve's ``@serve.batch`` merges them;
* **direct** (context): the same, one call after the other;
* **handle**: ``DeploymentHandle.judge.remote(call)`` from ``CONCURRENCY`` concurrent callers;
* **http**: ``streams.teacher_client.ServeTeacherClient`` (the worker's own client) from
  ``CONCURRENCY`` concurrent callers.

A call carries ``PAIRS_PER_CALL`` pairs (one sampled event's items, as the judge agent sends).
Latency is per call (p50/p99). The embedding teacher caches embeddings by text, so every phase
appends its own marker word to every query and title: each phase starts cold for its texts and
has the same within-phase repeats (the same queries recur in the day) as every other phase.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import BenchResult
from infra.processes import free_port
from schemas.judgments import Judgment
from schemas.settings import Settings, load_settings

NAME = "dispatch"
POLICY = "policies/product-search.yaml"
EVENTS_FILE = Path("data/wands/events.jsonl")
PAIRS_PER_CALL = 10
CONCURRENCY = 8
BACKENDS = ("embedding", "noop")


# --------------------------------------------------------------------------- pure helpers


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100) with linear interpolation between ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError("q must be in [0, 100]")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    """Consecutive slices of ``size`` (the last may be shorter)."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def tag_pair(pair: dict[str, Any], tag: str) -> dict[str, Any]:
    """A copy of ``pair`` whose query, item title and ids carry ``tag`` (defeats the text cache)."""
    item = {**pair["item"], "title": f"{pair['item']['title']} {tag}"}
    return {**pair, "event_id": f"{pair['event_id']}-{tag}", "query": f"{pair['query']} {tag}", "item": item}


# --------------------------------------------------------------------------- pairs


def base_pairs(count: int) -> list[dict[str, Any]]:
    """The first ``count`` (query, item) pairs of the WANDS day (top 10 items per event), as dicts."""
    pairs: list[dict[str, Any]] = []
    for line in EVENTS_FILE.read_bytes().splitlines():
        doc = json.loads(line)
        for item in sorted(doc["items"], key=lambda i: i["rank"])[:10]:
            pairs.append(
                {
                    "event_id": doc["event_id"],
                    "category": doc["category"],
                    "event_time": doc["event_time"],
                    "query": doc["request"]["query"],
                    "item": item,
                }
            )
            if len(pairs) >= count:
                return pairs
    return pairs


def judge_requests(pairs: Sequence[dict[str, Any]]) -> list[Any]:
    """``judges.base.JudgeRequest`` objects (what the handle and the backend take)."""
    from judges.base import JudgeRequest

    return [JudgeRequest.model_validate(pair) for pair in pairs]


def teacher_requests(pairs: Sequence[dict[str, Any]]) -> list[Any]:
    """``streams.pipeline.TeacherRequest`` objects (what the worker's HTTP client takes)."""
    from streams.pipeline import TeacherRequest

    return [TeacherRequest.model_validate(pair) for pair in pairs]


# --------------------------------------------------------------------------- timing


@dataclass
class Phase:
    """One way of judging the same pairs: seconds, per-call latencies, judgments and errors."""

    seconds: float
    latencies_s: list[float]
    judged: int
    errors: int

    @property
    def rate(self) -> float:
        """Judgments per second."""
        return self.judged / self.seconds

    def p(self, q: float) -> float:
        """Per-call latency percentile in milliseconds."""
        return percentile(self.latencies_s, q) * 1000


def _tally(judgments: Sequence[Judgment]) -> int:
    return sum(1 for judgment in judgments if judgment.status == "error")


def direct(teacher: Any, calls: Sequence[Sequence[Any]]) -> Phase:
    """The backend's ``judge`` called in this process, one call after the other."""
    latencies, errors, judged = [], 0, 0
    started = time.perf_counter()
    for call in calls:
        begin = time.perf_counter()
        judgments = teacher.judge(call)
        latencies.append(time.perf_counter() - begin)
        errors += _tally(judgments)
        judged += len(judgments)
    return Phase(time.perf_counter() - started, latencies, judged, errors)


def direct_batched(teacher: Any, calls: Sequence[Sequence[Any]], calls_per_batch: int) -> Phase:
    """The baseline: the backend called in this process with the calls Serve would batch together
    (``calls_per_batch`` = the deployment's ``max_batch_size``) merged into one ``judge`` call.
    Latency is per merged call."""
    merged = [[pair for call in group for pair in call] for group in chunks(calls, calls_per_batch)]
    return direct(teacher, merged)


async def concurrent(
    call: Callable[[Sequence[Any]], Awaitable[Sequence[Judgment]]],
    calls: Sequence[Sequence[Any]],
    concurrency: int = CONCURRENCY,
) -> Phase:
    """``concurrency`` callers taking calls from a shared queue until it is empty."""
    queue: asyncio.Queue[Sequence[Any]] = asyncio.Queue()
    for item in calls:
        queue.put_nowait(item)
    latencies: list[float] = []
    counts = {"judged": 0, "errors": 0}

    async def caller() -> None:
        while not queue.empty():
            chunk = queue.get_nowait()
            begin = time.perf_counter()
            judgments = await call(chunk)
            latencies.append(time.perf_counter() - begin)
            counts["judged"] += len(judgments)
            counts["errors"] += _tally(judgments)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return Phase(time.perf_counter() - started, latencies, counts["judged"], counts["errors"])


# --------------------------------------------------------------------------- Ray Serve


def serve_env() -> dict[str, str]:
    """Overrides giving the benchmark's Serve its own port, app name and namespace."""
    return {
        "EVALLOOP_RAY__SERVE_PORT": str(free_port()),
        "EVALLOOP_RAY__APP_NAME": "evalloop-bench-teacher",
        "EVALLOOP_RAY__NAMESPACE": "evalloop-bench",
        "OPENBLAS_NUM_THREADS": "1",
    }


def teacher_url(settings: Settings) -> str:
    """The Serve HTTP route of the deployed teacher."""
    from streams.teacher_client import serve_url

    return serve_url(settings.ray.serve_host, settings.ray.serve_port)


async def via_handle(handle: Any, calls: Sequence[Sequence[Any]]) -> Phase:
    """Concurrent ``handle.judge.remote`` calls."""

    async def call(chunk: Sequence[Any]) -> Sequence[Judgment]:
        result: Sequence[Judgment] = await handle.judge.remote(list(chunk))
        return result

    return await concurrent(call, calls)


async def via_http(settings: Settings, policy_version: str, calls: Sequence[Sequence[Any]]) -> Phase:
    """Concurrent calls through the worker's ``ServeTeacherClient`` (HTTP to the Serve proxy)."""
    from streams.teacher_client import ServeTeacherClient

    client = ServeTeacherClient(
        teacher_url(settings), policy_version, max_concurrency=CONCURRENCY, retries=0, timeout_s=60.0
    )
    try:
        return await concurrent(client.judge, calls)
    finally:
        await client.aclose()


def measure_backend(settings: Settings, backend: str, pair_count: int, repeats: int) -> dict[str, Phase]:
    """Deploy ``backend``, warm every path, then time direct, handle and HTTP (median of repeats)."""
    from judges.registry import build_teacher
    from schemas.policy import load_policy
    from workers.deployment import deploy

    policy = load_policy(POLICY)
    handle = deploy(settings, POLICY, backend)
    teacher = build_teacher(policy, backend)
    pairs = base_pairs(pair_count)
    _warm(settings, policy.version, handle, teacher, pairs)
    runs: dict[str, list[Phase]] = {"direct_batched": [], "direct": [], "handle": [], "http": []}
    per_batch = settings.serve.max_batch_size
    for rep in range(repeats):
        tags = {kind: f"zq{index}{rep}{backend[0]}" for index, kind in enumerate(runs)}
        batched_calls = _calls(judge_requests, pairs, tags["direct_batched"])
        runs["direct_batched"].append(direct_batched(teacher, batched_calls, per_batch))
        runs["direct"].append(direct(teacher, _calls(judge_requests, pairs, tags["direct"])))
        runs["handle"].append(asyncio.run(via_handle(handle, _calls(judge_requests, pairs, tags["handle"]))))
        http_calls = _calls(teacher_requests, pairs, tags["http"])
        runs["http"].append(asyncio.run(via_http(settings, policy.version, http_calls)))
    return {kind: _median_phase(phases) for kind, phases in runs.items()}


def _calls(
    build: Callable[[Sequence[dict[str, Any]]], list[Any]], pairs: Sequence[dict[str, Any]], tag: str
) -> list[Sequence[Any]]:
    return chunks(build([tag_pair(pair, tag) for pair in pairs]), PAIRS_PER_CALL)


def _warm(
    settings: Settings, version: str, handle: Any, teacher: Any, pairs: Sequence[dict[str, Any]]
) -> None:
    sample = list(pairs[: PAIRS_PER_CALL * CONCURRENCY])
    direct(teacher, _calls(judge_requests, sample, "zqwarm"))
    asyncio.run(via_handle(handle, _calls(judge_requests, sample, "zqwarm")))
    asyncio.run(via_http(settings, version, _calls(teacher_requests, sample, "zqwarm")))


def _median_phase(phases: Sequence[Phase]) -> Phase:
    return sorted(phases, key=lambda phase: phase.rate)[len(phases) // 2]


def run(quick: bool) -> BenchResult:
    """Serve handle / HTTP vs direct judgments/s and per-call latency, embedding and noop."""
    from bench.bench_ingest import scoped_env
    from workers.runtime import shutdown

    sizes = {"embedding": (320, 1) if quick else (960, 1), "noop": (2000, 1) if quick else (6000, 3)}
    result = BenchResult(name=NAME)
    with scoped_env(serve_env()):
        settings = load_settings()
        try:
            for backend in BACKENDS:
                count, repeats = sizes[backend]
                add_rows(result, backend, measure_backend(settings, backend, count, repeats))
        finally:
            shutdown()
    result.notes += notes()
    return result


def add_rows(result: BenchResult, backend: str, phases: dict[str, Phase]) -> None:
    """One row per path, ratios of each Serve path to direct batched like Serve (the baseline)."""
    base = phases["direct_batched"].rate
    for kind, phase in phases.items():
        if phase.errors:
            raise AssertionError(f"{backend}/{kind}: {phase.errors} error judgments")
        result.rows.append(
            {
                "backend": backend,
                "path": kind,
                "judgments": phase.judged,
                "j/s": phase.rate,
                "vs_direct_batched": round(phase.rate / base, 3),
                "p50_ms": phase.p(50),
                "p99_ms": phase.p(99),
                "mean_ms": statistics.fmean(phase.latencies_s) * 1000,
            }
        )
        if kind in ("handle", "http"):
            result.ratios[f"{backend}: serve {kind} / direct batched like Serve (judgments per s)"] = round(
                phase.rate / base, 3
            )
    result.ratios[f"context: {backend}: direct unbatched 10-pair calls / direct batched"] = round(
        phases["direct"].rate / base, 3
    )


def notes() -> list[str]:
    """How to read the table."""
    return [
        f"a call = {PAIRS_PER_CALL} pairs (one sample's items); handle and http: {CONCURRENCY} concurrent "
        "callers; one replica, default ServeSettings (max_batch_size 32, batch_wait_timeout 10 ms)",
        "direct_batched (the baseline): in this process, the calls Serve would batch (max_batch_size "
        "of them, 320 pairs) merged into one judge call; direct (context): one 10-pair call at a time",
        "every phase tags its texts with its own marker word, so the embedding cache starts cold "
        "for each phase and sees the same within-phase repeats (fair between paths; a cold-cache "
        "figure: production with recurring queries and products runs hotter)",
        "latency is per call; handle/http latency includes queueing behind the other callers",
        "noop: median of 3 repeats by rate; embedding: 1 repeat (each repeat costs cold embeddings)",
    ]
