"""A short soak (``reliability.soak``): a steady event rate against the live loop for ~45 s.

Memory (worker RSS) and the worker group's consumer lag per topic must stay bounded, and the lag
must drain once the producer stops; the definitions of "bounded" are in ``reliability.soak`` and
docs/reliability-faults.md. The full run is ``python -m reliability.soak --rate 50 --seconds 120``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from reliability.fault_teacher import FaultTeacherServer
from reliability.live import write_policy
from reliability.soak import render, run_soak
from schemas.policy import load_policy

pytestmark = pytest.mark.integration

Figures = Callable[[str, dict[str, object]], None]
RATE = 50.0
SECONDS = 45.0


def test_short_soak_keeps_memory_and_lag_bounded(
    tmp_path: Path, kafka_bootstrap: str, report_figures: Figures
) -> None:
    policy = load_policy(write_policy(tmp_path))
    with FaultTeacherServer(policy) as server:
        report = run_soak(server, RATE, SECONDS, every_s=3.0, drain_s=90.0)
    print("\n" + render(report))
    assert len(report.points) >= 9, "too few observations to compare thirds"
    assert report.worker_alive
    # The pacer keeps the target rate unless this box is starved; the checks below assume it ran.
    assert report.achieved_rate >= 0.8 * RATE, report.achieved_rate
    assert report.memory_bounded, f"RSS grew past {report.memory_limit_mb} MB: {render(report)}"
    assert all(report.lag_bounded.values()), f"lag kept growing: {render(report)}"
    assert report.drained_s is not None, "the lag did not drain after the producer stopped"
    rss = [p.rss_mb for p in report.points]
    report_figures(
        "soak",
        {
            "rate": report.achieved_rate,
            "seconds": SECONDS,
            "events": report.produced,
            "judgments": report.judgments,
            "rss_mb_first": rss[0],
            "rss_mb_max": max(rss),
            "max_lag": {s: max(p.lag[s] for p in report.points) for s in report.lag_bounded},
            "drained_s": report.drained_s,
        },
    )
