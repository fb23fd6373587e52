"""Live-topic fuzzing (``reliability.live_fuzz``): ≥ 500 seeded bad inputs produced onto a run's
events topic, interleaved with valid events (some sent twice) while the real worker runs.

The schema-boundary half (in-process, hypothesis) is ``tests/unit/test_fuzz_schemas.py``; this is
the live half: dead letters with reason and original bytes, duplicates judged once, late events,
the worker alive throughout, nothing lost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reliability.fault_teacher import FaultTeacherServer
from reliability.live import write_policy
from reliability.live_fuzz import KIND_WEIGHTS, FuzzReport, render, run_live_fuzz
from schemas.policy import load_policy

pytestmark = pytest.mark.integration

Figures = Callable[[str, dict[str, object]], None]
BAD_INPUTS = 600
SEED = 20261121


@pytest.fixture(scope="module")
def fuzz_report(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> Iterator[FuzzReport]:
    policy = load_policy(write_policy(Path(tmp_path_factory.mktemp("fuzz-policy"))))
    with FaultTeacherServer(policy) as server:
        report = run_live_fuzz(server, count=BAD_INPUTS, seed=SEED, valid=100)
    print("\n" + render(report))
    yield report


def test_every_bad_input_is_dead_lettered_once_with_reason_and_original_bytes(
    fuzz_report: FuzzReport, report_figures: Figures
) -> None:
    assert fuzz_report.bad_total == BAD_INPUTS
    assert set(fuzz_report.bad_by_kind) == set(KIND_WEIGHTS), fuzz_report.bad_by_kind
    assert fuzz_report.missing == 0, f"{fuzz_report.missing} bad inputs never reached the dead letters"
    assert fuzz_report.unexpected == 0, f"{fuzz_report.unexpected} dead letters match no input (or twice)"
    assert fuzz_report.originals_matched == fuzz_report.dead_letters == BAD_INPUTS
    assert fuzz_report.wrong_reason == 0
    assert fuzz_report.reasons_by_kind["late"] == {"late": fuzz_report.bad_by_kind["late"]}
    assert fuzz_report.reasons_by_kind["oversized"] == {"oversized": fuzz_report.bad_by_kind["oversized"]}
    assert fuzz_report.reasons_by_kind["invalid_utf8"] == {
        "invalid_utf8": fuzz_report.bad_by_kind["invalid_utf8"]
    }
    report_figures("live fuzz (tried by kind)", {"seed": SEED, **fuzz_report.bad_by_kind})
    report_figures(
        "live fuzz (outcome)",
        {
            "dead_letters": fuzz_report.dead_letters,
            "originals_matched": fuzz_report.originals_matched,
            "lost": fuzz_report.lost,
            "crashes": fuzz_report.worker_tracebacks,
            "seconds": fuzz_report.seconds,
        },
    )


def test_valid_events_are_judged_and_duplicates_count_once(
    fuzz_report: FuzzReport, report_figures: Figures
) -> None:
    assert fuzz_report.valid_judged == fuzz_report.valid_events
    assert fuzz_report.duplicated_events > 0
    # Redelivered (duplicate) events are judged again under the same judgment ids: the topic holds
    # more judgments than distinct ids, and the windows apply each id once.
    assert fuzz_report.judgments_raw > fuzz_report.judgments_distinct
    assert fuzz_report.window_n == fuzz_report.judgments_distinct
    report_figures(
        "live fuzz (valid and duplicates)",
        {
            "valid": fuzz_report.valid_events,
            "sent_twice": fuzz_report.duplicated_events,
            "judgments_raw": fuzz_report.judgments_raw,
            "judgments_distinct": fuzz_report.judgments_distinct,
            "windows_n": fuzz_report.window_n,
        },
    )


def test_the_worker_never_stopped_and_still_processes(fuzz_report: FuzzReport) -> None:
    assert fuzz_report.worker_alive, "the worker exited (or was replaced) during the fuzz"
    assert fuzz_report.worker_tracebacks == 0, "the worker logged a traceback"
    assert fuzz_report.final_event_judged, "a valid event sent after the fuzz was not judged"
    assert fuzz_report.lost == 0
    assert fuzz_report.ok
