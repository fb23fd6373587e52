"""Reliability checks against the real loop: worker crashes, a teacher replica killed, Kafka and
Redis restarts (with `evalloop windows rebuild`). Each check runs as its own process
(``python -m reliability.crash`` / ``reliability.restarts``, the same entry points an operator
uses) so its Ray, services and signals stay out of the pytest process; the test reads the JSON
figures it writes, asserts zero mismatches and records the figures in pytest's summary.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _run(module: str, args: list[str], out: Path, timeout_s: float) -> dict[str, Any]:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", module, *args, "--out", str(out)]
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    assert out.is_file(), f"{module} wrote no figures (exit {done.returncode}):\n{done.stderr[-4000:]}"
    figures: dict[str, Any] = json.loads(out.read_text())
    assert done.returncode == 0, f"{module} failed: {figures}\n{done.stderr[-4000:]}"
    return figures


def test_worker_crashes_and_replica_kill_lose_nothing(
    settings: object,
    kafka_bootstrap: str,
    redis_client: object,
    tmp_path: Path,
    report_figures: Callable[..., None],
) -> None:
    figures = _run("reliability.crash", ["--kills", "10"], tmp_path / "crash.json", timeout_s=540)
    report_figures("worker crashes", figures)
    assert figures["crashes_survived"] >= 10
    assert figures["replica_kills"] == 1
    assert figures["drained"] is True
    assert figures["missing_events"] == 0
    assert figures["judgments_distinct"] == figures["pairs_expected"]
    assert figures["alerts_firing"] >= 1, "no alert fired: the dedup was not exercised"
    assert figures["mismatches"] == 0


def test_three_workers_one_killed_and_rejoined_equal_the_backtest(
    kafka_bootstrap: str, redis_client: object, tmp_path: Path, report_figures: Callable[..., None]
) -> None:
    figures = _run("reliability.scale_out", ["--workers", "3"], tmp_path / "scale.json", timeout_s=540)
    report_figures(
        "scale out (3 workers, kill -9, rejoin)", {k: v for k, v in figures.items() if k != "actions"}
    )
    assert figures["kills"] == 1 and figures["rejoins"] == 1 and figures["workers_alive_after"] == 3
    assert figures["drained"] is True
    assert figures["judgments_distinct"] == figures["pairs_expected"]
    assert figures["window_mismatches_vs_backtest"] == 0 and figures["window_mismatches_vs_topic"] == 0
    assert figures["alerts_firing"] >= 1, "no alert fired: paging once was not exercised"
    assert figures["duplicate_firings"] == 0 and figures["repages"] == 0
    assert figures["mismatches"] == 0


def test_kafka_and_redis_restarts_lose_nothing_and_do_not_repage(
    tmp_path: Path, report_figures: Callable[..., None]
) -> None:
    figures = _run("reliability.restarts", [], tmp_path / "restarts.json", timeout_s=540)
    kafka, redis_part = figures["kafka_restart"], figures["redis_restart"]
    report_figures("kafka restart", kafka)
    report_figures("redis restart + rebuild", {k: v for k, v in redis_part.items() if k != "after_more"})
    report_figures("after rebuild, more events", redis_part["after_more"])
    assert kafka["drained"] is True and kafka["mismatches"] == 0
    assert redis_part["rebuild_alert_states"] >= 1, "no alert state to restore: the rebuild was not exercised"
    assert redis_part["rebuild_alert_mismatches"] == 0
    assert redis_part["after_more"]["repages"] == 0
    assert figures["mismatches"] == 0
