"""Teacher faults through the live loop (``reliability.faults``): the real worker subprocess against
``reliability.fault_teacher`` on 127.0.0.1, on run-specific topics, group and Redis prefix.

Checked: every fault yields error judgments whose reason names it (never an ok judgment and never
a crash), retryable faults are retried (attempts counted by the fault server, spaced by backoff),
a transient fault is absorbed by the retries, a stopped teacher opens the breaker so new events are
shed instead of queued (the samples backlog stays flat), the loop recovers when the teacher comes
back, and the Redis windows count errors in ``err``, apart from the quality counters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reliability.fault_teacher import FaultTeacherServer
from reliability.faults import (
    EXPECTED_REASON,
    FAULTS,
    RETRYABLE,
    FaultReport,
    render,
    run_fault_suite,
)
from reliability.live import ITEMS_PER_EVENT, write_policy
from schemas.policy import load_policy

pytestmark = pytest.mark.integration

Figures = Callable[[str, dict[str, object]], None]


@pytest.fixture(scope="module")
def fault_report(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> Iterator[FaultReport]:
    """One live run through every fault (about 35-60 s); the tests below read its report."""
    policy = load_policy(write_policy(Path(tmp_path_factory.mktemp("fault-policy"))))
    with FaultTeacherServer(policy) as server:
        report = run_fault_suite(server, outage_s=15.0)
    print("\n" + render(report))
    yield report


def test_each_fault_becomes_error_judgments_with_its_reason(
    fault_report: FaultReport, report_figures: Figures
) -> None:
    seen = {f.fault: f for f in fault_report.faults}
    assert set(seen) == set(FAULTS)
    for mode, result in seen.items():
        assert result.judgments == ITEMS_PER_EVENT, result
        assert result.errors == result.judgments, f"{mode}: an off-policy or failed answer counted as ok"
        assert EXPECTED_REASON[mode] in result.reason.lower(), result
        assert result.recovered, f"{mode}: no ok judgment after the fault was lifted"
    report_figures(
        "teacher faults (error judgments per fault)",
        {f.fault: f"{f.errors}/{f.judgments}" for f in fault_report.faults},
    )


def test_retryable_faults_are_retried_with_backoff(
    fault_report: FaultReport, report_figures: Figures
) -> None:
    retries = {f.fault: f.attempts for f in fault_report.faults}
    for result in fault_report.faults:
        if result.fault in RETRYABLE:
            assert result.attempts == 3, result  # 1 call + EVALLOOP_STREAM_TEACHER_RETRIES=2
            # The client sleeps at least half the 0.2 s base backoff between attempts.
            assert result.min_gap_s is not None and result.min_gap_s >= 0.09, result
        else:
            assert result.attempts == 1, f"{result.fault} is not retryable but was retried"
    transient = fault_report.transient
    assert transient is not None and transient.ok, transient
    assert transient.errors == 0 and transient.attempts == 3
    report_figures(
        "teacher faults (attempts seen by the server)",
        {**retries, "503x2 then ok": transient.attempts, "429 retry gap s": fault_report.retry_after_gap_s},
    )


def test_outage_sheds_instead_of_queueing_and_recovers(
    fault_report: FaultReport, report_figures: Figures
) -> None:
    outage = fault_report.outage
    assert outage is not None
    assert outage.breaker_opens >= 1
    assert outage.shed >= 0.5 * outage.events, outage
    # The backlog does not grow with the outage: few samples are written and the worker's lag on
    # the samples topic stays small (it grows linearly, to ~events x items, without the breaker).
    assert outage.samples_written <= 0.5 * outage.events, outage
    assert outage.max_samples_lag <= 0.5 * outage.events, outage
    assert outage.recovery_s is not None, "ok judgments did not resume after the teacher came back"
    assert outage.ok_after_recovery == 5 * ITEMS_PER_EVENT, outage
    assert outage.ok
    report_figures(
        "teacher outage (breaker)",
        {
            "seconds": outage.seconds,
            "events": outage.events,
            "shed": outage.shed,
            "samples_written": outage.samples_written,
            "max_samples_lag": outage.max_samples_lag,
            "breaker_opens": outage.breaker_opens,
            "recovery_s": outage.recovery_s,
            "errors": outage.error_reasons,
        },
    )


def test_errors_are_counted_apart_in_the_windows_and_the_worker_lives(
    fault_report: FaultReport, report_figures: Figures
) -> None:
    assert fault_report.window_n == fault_report.judgments_ok
    assert fault_report.window_err == fault_report.judgments_error
    assert fault_report.worker_alive, "the worker died during the fault suite"
    counters = fault_report.worker_counters
    assert counters.get("judged_error", 0) >= fault_report.judgments_error
    report_figures(
        "teacher faults (totals)",
        {
            "ok": fault_report.judgments_ok,
            "error": fault_report.judgments_error,
            "windows_n": fault_report.window_n,
            "windows_err": fault_report.window_err,
            "seconds": fault_report.seconds,
        },
    )
