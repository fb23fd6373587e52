"""Serve autoscaling proven on the local Ray (``reliability.autoscale``): under a load step the
teacher goes from 1 replica to at least 2, back to 1 after, and not one request fails or is lost
while replicas are added and removed; the deployment's own pair counter, scraped from Ray's
metrics export, counts the calls."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from reliability.autoscale import LoadStep, run_check

pytestmark = pytest.mark.integration


def test_replicas_follow_the_load_and_no_request_is_lost(
    report_figures: Callable[[str, dict[str, object]], None],
) -> None:
    summary = run_check(LoadStep())
    phases = summary["phases"]
    report_figures(
        "serve autoscaling (1..3 replicas)",
        {
            "peak_replicas": summary["peak_replicas"],
            "final_replicas": summary["final_replicas"],
            **{f"{name}_p50_ms": figures["p50_ms"] for name, figures in phases.items()},
            **{f"{name}_calls": figures["calls"] for name, figures in phases.items()},
            "failed": summary["failed"],
            "teacher_pairs_exported": summary["teacher_pairs_exported"],
        },
    )
    assert summary["peak_replicas"] >= 2, summary
    assert summary["final_replicas"] == 1, summary
    assert summary["failed"] == 0 and not summary["errors"], summary
    assert all(figures["calls"] > 0 for figures in phases.values()), summary
    # The deployment's own counter (workers/metrics.py), read from Ray's Prometheus export, saw the
    # calls (a replica removed by the downscale may take its last few seconds of counts with it).
    calls = sum(figures["calls"] for figures in phases.values())
    assert 0.9 * calls <= summary["teacher_pairs_exported"] <= calls, summary
    # Under load the extra replicas absorb it: the load phase's median stays within a few batches.
    assert phases["load"]["p50_ms"] < 20 * phases["before"]["p50_ms"] + 1000, summary
