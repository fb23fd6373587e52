"""Pure helpers of the ingest, dispatch, end-to-end and GPU benchmarks (no services needed)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime

import numpy as np
import pytest

from bench import bench_gpu
from bench.bench_dispatch import chunks, direct_batched, percentile, tag_pair
from bench.bench_e2e import (
    parse_stat,
    parse_vmhwm_kib,
    process_label,
    replayed_days,
    shifted,
    worker_counters,
)
from bench.bench_ingest import scoped_env, shape_event

STAT = "1234 (ray::Serve Replica) S 77 1234 1234 0 -1 4194304 100 0 0 0 250 40 0 0 20 0 5 0 100 0 0"


def test_parse_stat_reads_ppid_and_cpu_ticks_despite_spaces_and_parens_in_the_name() -> None:
    assert parse_stat(STAT) == (77, 290)
    assert parse_stat(STAT.replace("(ray::Serve Replica)", "(a) b)")) == (77, 290)


def test_parse_vmhwm_kib() -> None:
    assert parse_vmhwm_kib("Name:\tx\nVmPeak:\t 900 kB\nVmHWM:\t  51200 kB\nVmRSS:\t 4 kB\n") == 51200
    assert parse_vmhwm_kib("Name:\tkthreadd\n") == 0


@pytest.mark.parametrize(
    ("cmdline", "label"),
    [
        ("ray::ServeReplica:evalloop-teacher:TeacherDeployment", "ray ServeReplica"),
        ("ray::ProxyActor", "ray ProxyActor"),
        ("/venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet --x", "ray raylet"),
        ("/venv/lib/ray/core/src/ray/gcs/gcs_server --port 1", "ray gcs_server"),
        ("/usr/bin/python3 /venv/lib/ray/_private/log_monitor.py", "ray other"),
        ("/usr/bin/redis-server 127.0.0.1:16379", "redis-server"),
        ("", "?"),
    ],
)
def test_process_label(cmdline: str, label: str) -> None:
    assert process_label(cmdline) == label


@pytest.mark.parametrize("q", [0, 10, 50, 90, 99, 100])
def test_percentile_matches_numpy_linear(q: float) -> None:
    values = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0]
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_rejects_empty_and_out_of_range() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_chunks_and_tag_pair() -> None:
    assert chunks([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]
    pair = {"event_id": "e1", "query": "sofa", "item": {"item_id": "i", "title": "red sofa", "rank": 1}}
    tagged = tag_pair(pair, "zq0")
    assert (tagged["event_id"], tagged["query"], tagged["item"]["title"]) == (
        "e1-zq0",
        "sofa zq0",
        "red sofa zq0",
    )
    assert pair["query"] == "sofa"  # the original is untouched


def _doc(items: int) -> dict[str, object]:
    return {
        "event_id": "old",
        "event_time": "2024-06-01T00:00:00Z",
        "category": "Other",
        "request": {"query": "lamp", "attributes": {"query_id": 1}},
        "items": [{"item_id": str(i), "title": f"lamp number {i} " * 3, "rank": i + 1} for i in range(items)],
        "model_version": "m",
        "reference_labels": {str(i): "Exact" for i in range(items)},
    }


def test_shape_event_trims_then_pads_to_the_target() -> None:
    when = datetime(2026, 1, 1, tzinfo=UTC)
    raw = shape_event(_doc(30), "new-1", when, target=1024)
    doc = json.loads(raw)
    assert len(raw) == 1024
    assert doc["event_id"] == "new-1" and doc["event_time"] == "2026-01-01T00:00:00Z"
    assert set(doc["reference_labels"]) == {item["item_id"] for item in doc["items"]}
    small = shape_event(_doc(1), "new-2", when, target=1024)
    assert len(small) == 1024 and json.loads(small)["request"]["attributes"]["pad"].startswith("x")


def test_scoped_env_restores_previous_values() -> None:
    os.environ["EVALLOOP_BENCH_TEST_A"] = "before"
    os.environ.pop("EVALLOOP_BENCH_TEST_B", None)
    with scoped_env({"EVALLOOP_BENCH_TEST_A": "x", "EVALLOOP_BENCH_TEST_B": "y"}):
        assert os.environ["EVALLOOP_BENCH_TEST_A"] == "x" and os.environ["EVALLOOP_BENCH_TEST_B"] == "y"
    assert os.environ.pop("EVALLOOP_BENCH_TEST_A") == "before"
    assert "EVALLOOP_BENCH_TEST_B" not in os.environ


def test_gpu_bench_skips_without_nvidia_smi(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_gpu.shutil, "which", lambda _name: None)
    result = bench_gpu.run(quick=True)
    assert result.skipped is not None and result.skipped.startswith("no GPU here: skipped")


def test_replayed_days_shift_each_day_and_keep_event_time_order() -> None:
    days = [json.loads(raw) for raw in replayed_days(2, "run", limit=5)]
    assert len(days) == 10 and len({d["event_id"] for d in days}) == 10
    first, second = days[0], days[5]
    assert second["event_time"] == shifted(first["event_time"], 1)
    assert datetime.fromisoformat(second["event_time"].replace("Z", "+00:00")) == datetime.fromisoformat(
        first["event_time"].replace("Z", "+00:00")
    ).replace(day=2)
    times = [d["event_time"] for d in days]
    assert times == sorted(times)
    assert shifted("not a time", 3) == "not a time"


def test_worker_counters_reads_every_logged_snapshot() -> None:
    log = (
        "[2026] [1] [INFO] evalloop counters {'evaluation_ms': 5, 'boundaries_evaluated': 2}\n"
        "noise\n[2026] [1] [INFO] evalloop counters {'evaluation_ms': 9, 'boundaries_evaluated': 7}\n"
    )
    assert worker_counters(log) == [
        {"evaluation_ms": 5, "boundaries_evaluated": 2},
        {"evaluation_ms": 9, "boundaries_evaluated": 7},
    ]


def test_direct_batched_merges_the_calls_serve_would_batch() -> None:
    seen: list[int] = []

    class Teacher:
        def judge(self, pairs: list[int]) -> list[int]:
            seen.append(len(pairs))
            return []

    phase = direct_batched(Teacher(), [[1] * 10] * 70, calls_per_batch=32)
    assert seen == [320, 320, 60] and len(phase.latencies_s) == 3
