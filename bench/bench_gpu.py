"""Judgments/s of the ``vllm`` teacher on a GPU, and its rubric prefix-cache hit rate.

Runs only where a GPU is usable: ``nvidia-smi`` on the PATH and ``torch`` and ``vllm`` importable
with CUDA available; anywhere else it returns a skipped result ("no GPU here: skipped").

When it runs: the ``vllm`` backend (``judges.vllm_backend.VLLMTeacher``, the policy's model,
prefix caching on) is built in this process and judges the WANDS pairs in calls of
``CALL_PAIRS``. Figures: judgments/s over the timed calls, per-call p50/p99, the share of ok
judgments, and the prefix-cache hit rate from the teacher's own token counters
(``TeacherStats.prefix_cache_hit_rate``: cached prompt tokens / prompt tokens, vLLM's
``num_cached_tokens`` per request). Baseline in the same run: the first (cold) call vs the warm
calls, and the ``embedding`` teacher on the same pairs. Not yet run on a GPU: the code path is
type-checked and its skip path tested, the figures are still to be taken on a GPU node.
"""

from __future__ import annotations

import importlib.util
import shutil
import time
from collections.abc import Sequence
from typing import Any

from bench.common import BenchResult

NAME = "gpu"
POLICY = "policies/product-search.yaml"
CALL_PAIRS = 64


def gpu_missing() -> str | None:
    """Why the GPU benchmark cannot run here, or None when it can."""
    if shutil.which("nvidia-smi") is None:
        return "no GPU here: skipped (nvidia-smi not found)"
    for module in ("torch", "vllm"):
        if importlib.util.find_spec(module) is None:
            return f"no GPU here: skipped ({module} is not installed; pip install 'evalloop[gpu]')"
    import torch

    if not torch.cuda.is_available():
        return "no GPU here: skipped (torch sees no CUDA device)"
    return None


def timed_calls(teacher: Any, calls: Sequence[Sequence[Any]]) -> tuple[float, list[float], int]:
    """(seconds, per-call latencies, ok judgments) for judging every call in turn."""
    latencies, ok = [], 0
    started = time.perf_counter()
    for call in calls:
        begin = time.perf_counter()
        judgments = teacher.judge(call)
        latencies.append(time.perf_counter() - begin)
        ok += sum(1 for judgment in judgments if judgment.status == "ok")
    return time.perf_counter() - started, latencies, ok


def run(quick: bool) -> BenchResult:
    """vLLM judgments/s and prefix-cache hit rate vs the embedding teacher on the same pairs."""
    reason = gpu_missing()
    if reason is not None:
        return BenchResult.skip(NAME, reason)
    from bench.bench_dispatch import base_pairs, chunks, judge_requests, percentile
    from judges.registry import build_teacher
    from schemas.policy import load_policy

    policy = load_policy(POLICY)
    calls = chunks(judge_requests(base_pairs(256 if quick else 1024)), CALL_PAIRS)
    teacher: Any = build_teacher(policy, "vllm")
    first_s, _, _ = timed_calls(teacher, calls[:1])
    cold_hit = teacher.stats.snapshot().prefix_cache_hit_rate
    seconds, latencies, ok = timed_calls(teacher, calls[1:])
    judged = sum(len(call) for call in calls[1:])
    embed_s, _, _ = timed_calls(build_teacher(policy, "embedding"), calls[1:])
    result = BenchResult(name=NAME)
    result.rows.append(
        {
            "model": getattr(teacher, "model", "?"),
            "judgments": judged,
            "vllm_j/s": judged / seconds,
            "first_call_j/s": len(calls[0]) / first_s,
            "embedding_j/s": judged / embed_s,
            "p50_ms": percentile(latencies, 50) * 1000,
            "p99_ms": percentile(latencies, 99) * 1000,
            "ok_share": ok / judged,
            "prefix_hit_after_first_call": cold_hit,
            "prefix_hit_total": teacher.stats.snapshot().prefix_cache_hit_rate,
        }
    )
    result.ratios["vllm / embedding judgments per s (same pairs)"] = round(embed_s / seconds, 3)
    result.ratios["vllm warm / first call judgments per s"] = round(
        (judged / seconds) / (len(calls[0]) / first_s), 3
    )
    result.ratios["rubric prefix-cache hit rate (cached / prompt tokens)"] = round(
        teacher.stats.snapshot().prefix_cache_hit_rate, 3
    )
    result.notes.append(
        f"calls of {CALL_PAIRS} pairs, one after the other; first call timed apart (cold cache)"
    )
    return result
