"""Teacher faults through the live loop: the real ``evalloop worker`` against a faulty teacher.

The worker runs as a subprocess on run-specific topics, consumer group and Redis prefix, with
``EVALLOOP_STREAM_TEACHER_URL`` pointing at ``reliability.fault_teacher`` on 127.0.0.1. The suite:

1. **one fault at a time** (timeout, 429, 500, 503, malformed JSON, wrong count, grade outside the
   schema, grade off the policy scale, unknown failure mode, empty rationale): one event is
   produced, and all of its items must come back as error judgments whose reason names the fault;
   the fault server counts the attempts (retries) and their spacing (backoff). After each fault a
   healthy event must be judged ok again.
2. **a transient fault**: 503 for two attempts, then healthy: the retries absorb it (ok judgments).
3. **an outage**: the server is stopped (connection refused) while events keep arriving; the
   breaker opens and the sampler sheds (``shed`` counter) instead of queueing samples, so the
   samples topic's backlog stays flat; the server comes back on the same port, the breaker
   half-opens, the probe succeeds and ok judgments resume.
4. **windows**: every error judgment is in the Redis windows' ``err`` counters, every ok one in
   ``n``: errors are counted apart from quality.

The live-loop harness (``LiveRun``, ``TopicTail``, ``EventFactory``, lag and counter readers) that
this suite shares with ``reliability.live_fuzz`` and ``reliability.soak`` is in ``reliability.live``
and ``reliability.live_io``.

    python -m reliability.faults [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from reliability.fault_teacher import MODES, FaultTeacherServer, Mode
from reliability.live import (
    ITEMS_PER_EVENT,
    EventFactory,
    LiveRun,
    expected_items,
    live_run,
    wait_until,
    write_policy,
)
from reliability.live_io import (
    TopicTail,
    breaker_opens,
    end_offsets,
    group_lag,
    judgments_of,
    make_producer,
    produce,
    window_totals,
    worker_counters,
)
from schemas.judgments import Judgment
from schemas.policy import Policy, load_policy

# --------------------------------------------------------------------------- the fault suite

#: Worker knobs for the suite: a short timeout and cool-down so faults take seconds, not minutes.
FAULT_ENV = {
    "EVALLOOP_STREAM_TEACHER_TIMEOUT_S": "1.0",
    "EVALLOOP_STREAM_TEACHER_RETRIES": "2",
    "EVALLOOP_STREAM_BREAKER_FAILURES": "5",
    "EVALLOOP_STREAM_BREAKER_COOLDOWN_S": "3",
}
TIMEOUT_DELAY_S = 2.5
RETRYABLE: frozenset[Mode] = frozenset({"timeout", "http_429", "http_500", "http_503"})
#: What the error judgment's reason must contain, per fault (case-insensitive).
EXPECTED_REASON: dict[Mode, str] = {
    "timeout": "timeout",
    "http_429": "http 429",
    "http_500": "http 500",
    "http_503": "http 503",
    "malformed_json": "bad teacher response",
    "wrong_count": "answered 2 judgments for 3 requests",
    "grade_over_schema": "bad teacher response",
    "out_of_scale": "off-policy teacher verdict: grade 7 is not on the policy scale",
    "unknown_mode": "off-policy teacher verdict: unknown failure modes",
    "empty_rationale": "off-policy teacher verdict: empty rationale",
}
FAULTS: tuple[Mode, ...] = tuple(m for m in MODES if m != "healthy")
Trace = list[int]


@dataclass
class FaultResult:
    """One fault's outcome."""

    fault: str
    judgments: int
    errors: int
    reason: str
    attempts: int
    min_gap_s: float | None
    recovered: bool
    ok: bool


@dataclass
class OutageResult:
    """The teacher-down phase: shedding while the breaker is open, then recovery."""

    seconds: float
    events: int
    shed: int
    sampled: int
    samples_written: int
    max_samples_lag: int
    samples_lag_trace: list[int]
    shed_trace: list[int]
    breaker_opens: int
    error_reasons: dict[str, int]
    recovery_s: float | None
    ok_after_recovery: int
    ok: bool


@dataclass
class FaultReport:
    """Everything the suite measured."""

    faults: list[FaultResult] = field(default_factory=list)
    transient: FaultResult | None = None
    outage: OutageResult | None = None
    retry_after_s: int = 0
    retry_after_gap_s: float | None = None
    judgments_ok: int = 0
    judgments_error: int = 0
    window_n: float = 0.0
    window_err: float = 0.0
    worker_pid: int = 0
    worker_alive: bool = False
    worker_counters: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        outage_ok = self.outage is not None and self.outage.ok
        transient_ok = self.transient is not None and self.transient.ok
        windows_ok = (self.window_n, self.window_err) == (self.judgments_ok, self.judgments_error)
        faults_ok = all(f.ok for f in self.faults) and len(self.faults) == len(FAULTS)
        return faults_ok and transient_ok and outage_ok and windows_ok and self.worker_alive


class FaultSuite:
    """Drives one live run through every fault; each step waits on what it produced."""

    def __init__(self, run: LiveRun, server: FaultTeacherServer, wait_s: float = 90.0) -> None:
        self.run = run
        self.server = server
        self.wait_s = wait_s
        self.events = EventFactory(run.run_id)
        self.producer = make_producer(run.settings)
        self.tail = TopicTail(run.settings, run.topics["judgments"])
        self.docs: dict[str, dict[str, Any]] = {}
        self._recovery_ids: list[str] = []

    def close(self) -> None:
        self.tail.close()

    # -- producing and waiting

    def send(self, count: int = 1) -> list[str]:
        records: list[tuple[bytes | None, bytes]] = []
        ids: list[str] = []
        for _ in range(count):
            doc = self.events.doc()
            key, value = self.events.encode(doc)
            self.docs[doc["event_id"]] = doc
            ids.append(doc["event_id"])
            records.append((key, value))
        produce(self.producer, self.run.topics["events"], records)
        return ids

    def judged(self, event_ids: list[str]) -> dict[str, list[Judgment]]:
        wanted = set(event_ids)
        found: dict[str, dict[str, Judgment]] = {e: {} for e in event_ids}
        for judgment in judgments_of(self.tail):
            if judgment.event_id in wanted:
                found[judgment.event_id][judgment.judgment_id] = judgment
        return {e: list(js.values()) for e, js in found.items()}

    def wait_judged(self, event_ids: list[str], timeout_s: float | None = None) -> dict[str, list[Judgment]]:
        """Judgments per event once every event has all its items judged (or the timeout)."""
        need = {e: expected_items(self.docs[e], self.run.policy) for e in event_ids}

        def complete() -> bool:
            got = self.judged(event_ids)
            return all(len(got[e]) >= need[e] for e in event_ids)

        wait_until(complete, timeout_s or self.wait_s)
        return self.judged(event_ids)

    def recover(self, timeout_s: float = 60.0) -> bool:
        """Healthy mode; send an event about every second until one is judged ok in full (events
        shed while the breaker is still open are never judged, so keep sending)."""
        self.server.state.set_mode("healthy")
        sent = self._recovery_ids = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            sent += self.send()
            if wait_until(partial(self._any_ok, sent), 1.0, every_s=0.1):
                return True
        return False

    def settle(self) -> None:
        """Wait until the last recovery's events are judged in full. A slow start leaves several
        queued: judged under the next fault, their failures would open the shared breaker before
        that fault's own retries run. Events shed by an open breaker never are, hence the bound."""
        ids = self._recovery_ids
        wait_until(lambda: all(self._complete(e, j) for e, j in self.judged(ids).items()), self.wait_s)

    def _complete(self, event_id: str, judgments: list[Judgment]) -> bool:
        return len(judgments) >= expected_items(self.docs[event_id], self.run.policy)

    def _any_ok(self, event_ids: list[str]) -> bool:
        for event_id, judgments in self.judged(event_ids).items():
            want = expected_items(self.docs[event_id], self.run.policy)
            if len(judgments) >= want and all(j.status == "ok" for j in judgments):
                return True
        return False

    # -- phases

    def fault(self, mode: Mode, fail_times: int | None = None) -> FaultResult:
        """One event under ``mode``: its judgments, the attempts the server saw, their spacing."""
        self.settle()
        since = time.monotonic()
        self.server.state.set_mode(mode, fail_times)
        (event_id,) = self.send()
        judgments = self.wait_judged([event_id])[event_id]
        # Only this event's attempts: events still in flight from the previous step may be judged
        # (and fail) under this mode too; they are counted in the totals, not here.
        hits = [h.at for h in self.server.state.hits if h.at >= since and event_id in h.event_ids]
        gaps = [b - a for a, b in itertools.pairwise(hits)]
        recovered = self.recover()
        errors = [j for j in judgments if j.status == "error"]
        reason = errors[0].error or "" if errors else ""
        return FaultResult(
            fault=mode if fail_times is None else f"{mode}x{fail_times}",
            judgments=len(judgments),
            errors=len(errors),
            reason=reason[:160],
            attempts=len(hits),
            min_gap_s=round(min(gaps), 3) if gaps else None,
            recovered=recovered,
            ok=self._fault_ok(mode, fail_times, judgments, errors, reason, len(hits), recovered),
        )

    def _fault_ok(
        self,
        mode: Mode,
        fail_times: int | None,
        judgments: list[Judgment],
        errors: list[Judgment],
        reason: str,
        attempts: int,
        recovered: bool,
    ) -> bool:
        retries = int(FAULT_ENV["EVALLOOP_STREAM_TEACHER_RETRIES"])
        if fail_times is not None:  # transient: the retries absorb it
            return len(judgments) == ITEMS_PER_EVENT and not errors and attempts == fail_times + 1
        want_attempts = retries + 1 if mode in RETRYABLE else 1
        return (
            len(judgments) == ITEMS_PER_EVENT
            and len(errors) == len(judgments)
            and all(EXPECTED_REASON[mode] in (j.error or "").lower() for j in errors)
            and attempts == want_attempts
            and recovered
        )

    def outage(self, seconds: float = 15.0, rate: float = 10.0) -> OutageResult:
        """Stop the teacher while events arrive at ``rate``/s; then restart it and time recovery."""
        samples = self.run.topics["samples"]
        before = worker_counters(self.run.log_path)
        written_before = end_offsets(self.run.settings, [samples])[samples]
        self.server.stop()
        outage_ids, trace, shed_trace = self._steady(seconds, rate, before.get("shed", 0))
        written = end_offsets(self.run.settings, [samples])[samples] - written_before
        self.server.restart()
        restarted = time.monotonic()
        recovered = self.recover(timeout_s=60.0)
        recovery_s = time.monotonic() - restarted if recovered else None
        after_ids = self.send(5)
        after = self.wait_judged(after_ids)
        ok_after = sum(1 for js in after.values() for j in js if j.status == "ok")
        counters = worker_counters(self.run.log_path)
        shed = counters.get("shed", 0) - before.get("shed", 0)
        sampled = counters.get("sampled", 0) - before.get("sampled", 0)
        reasons = Counter(
            _reason_kind(j.error or "") for js in self.judged(outage_ids).values() for j in js if j.error
        )
        result = OutageResult(
            seconds=seconds,
            events=len(outage_ids),
            shed=shed,
            sampled=sampled,
            samples_written=written,
            max_samples_lag=max(trace, default=0),
            samples_lag_trace=trace,
            shed_trace=shed_trace,
            breaker_opens=breaker_opens(self.run.log_path),
            error_reasons=dict(reasons),
            recovery_s=round(recovery_s, 1) if recovery_s is not None else None,
            ok_after_recovery=ok_after,
            ok=False,
        )
        result.ok = _outage_ok(result, after_ids, self.docs, self.run.policy)
        return result

    def _steady(self, seconds: float, rate: float, shed_before: int) -> tuple[list[str], Trace, Trace]:
        """Send at ``rate``/s for ``seconds``; every second, the samples lag and the shed count."""
        ids: list[str] = []
        lag_trace: list[int] = []
        shed_trace: list[int] = []
        samples = self.run.topics["samples"]
        start = time.monotonic()
        next_probe = start
        while (now := time.monotonic()) - start < seconds:
            ids += self.send()
            if now >= next_probe:
                lag_trace.append(group_lag(self.run.settings, self.run.group, [samples])[samples])
                shed_trace.append(worker_counters(self.run.log_path).get("shed", 0) - shed_before)
                next_probe += 1.0
            time.sleep(max(0.0, start + len(ids) / rate - time.monotonic()))
        return ids, lag_trace, shed_trace

    def retry_after_gap(self) -> float | None:
        """Seconds between a call's first 429 and its retry: does the client honour Retry-After?"""
        calls: dict[frozenset[str], list[float]] = {}
        for hit in self.server.state.hits_in("http_429"):
            calls.setdefault(hit.event_ids, []).append(hit.at)
        gaps = [times[1] - times[0] for times in calls.values() if len(times) >= 2]
        return round(min(gaps), 3) if gaps else None


def _reason_kind(error: str) -> str:
    """Group error texts: 'circuit open', 'ConnectError', 'HTTP 503', ... (first clause)."""
    text = error.removeprefix("teacher call failed: ")
    return text.split(":")[0][:40]


def _outage_ok(result: OutageResult, after_ids: list[str], docs: dict[str, Any], policy: Policy) -> bool:
    # Shedding, not queueing: most outage events are shed, and few samples reach the topic (those
    # before the breaker opened plus each half-open window's probes).
    sheds_most = result.shed >= 0.5 * result.events
    bounded = result.samples_written <= 0.5 * result.events and result.max_samples_lag <= 0.5 * result.events
    want = sum(expected_items(docs[e], policy) for e in after_ids)
    return sheds_most and bounded and result.recovery_s is not None and result.ok_after_recovery == want


def run_fault_suite(server: FaultTeacherServer, outage_s: float = 15.0) -> FaultReport:
    """The whole suite against a fresh live run; the server must be started (healthy)."""
    started = time.monotonic()
    report = FaultReport(retry_after_s=server.state.retry_after_s)
    server.state.delay_s = TIMEOUT_DELAY_S
    with live_run("faults", server.url, FAULT_ENV) as run:
        assert run.worker is not None
        report.worker_pid = run.worker.pid
        suite = FaultSuite(run, server)
        try:
            if not suite.recover(timeout_s=120.0):  # the worker is up and the loop works
                raise RuntimeError(f"the loop never judged a healthy event; see {run.log_path}")
            report.faults = [suite.fault(mode) for mode in FAULTS]
            report.transient = suite.fault("http_503", fail_times=2)
            report.retry_after_gap_s = suite.retry_after_gap()
            report.outage = suite.outage(seconds=outage_s)
            _final_counts(report, suite, run)
        finally:
            suite.close()
        report.worker_alive = run.worker.poll() is None
    report.seconds = round(time.monotonic() - started, 1)
    return report


def _final_counts(report: FaultReport, suite: FaultSuite, run: LiveRun) -> None:
    unique = {j.judgment_id: j for j in judgments_of(suite.tail)}
    report.judgments_ok = sum(1 for j in unique.values() if j.status == "ok")
    report.judgments_error = len(unique) - report.judgments_ok

    def windows_caught_up() -> bool:
        report.window_n, report.window_err = window_totals(run)
        return (report.window_n, report.window_err) == (report.judgments_ok, report.judgments_error)

    wait_until(windows_caught_up, 60.0, every_s=0.5)
    # The counters are logged every second: wait for the line that includes the last judgments.
    wait_until(lambda: worker_counters(run.log_path).get("judged_error", 0) >= report.judgments_error, 10.0)
    report.worker_counters = worker_counters(run.log_path)


def render(report: FaultReport) -> str:
    """A plain-text table of the suite's results."""
    lines = [f"{'fault':<20} {'judg':>4} {'err':>4} {'tries':>5} {'min gap s':>9} {'ok':>3}  reason"]
    for f in [*report.faults, *([report.transient] if report.transient else [])]:
        gap = f"{f.min_gap_s:.2f}" if f.min_gap_s is not None else "-"
        lines.append(
            f"{f.fault:<20} {f.judgments:>4} {f.errors:>4} {f.attempts:>5} {gap:>9} "
            f"{'yes' if f.ok else 'NO':>3}  {f.reason[:70]}"
        )
    if report.outage:
        o = report.outage
        lines.append(
            f"outage {o.seconds:.0f}s: {o.events} events, {o.shed} shed, {o.sampled} sampled, "
            f"{o.samples_written} samples written, max samples lag {o.max_samples_lag}, "
            f"breaker opened {o.breaker_opens}x, shed by second {o.shed_trace}, "
            f"errors {o.error_reasons}, recovered in {o.recovery_s}s, {o.ok_after_recovery} ok after"
        )
    lines.append(
        f"judgments ok/error {report.judgments_ok}/{report.judgments_error}; windows n/err "
        f"{report.window_n:g}/{report.window_err:g}; Retry-After {report.retry_after_s}s, client retried "
        f"after {report.retry_after_gap_s}s; worker pid {report.worker_pid} alive={report.worker_alive}; "
        f"{report.seconds}s; {'PASS' if report.ok else 'FAIL'}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the suite against the local services; exit 0 when every check held."""
    parser = argparse.ArgumentParser(description="Teacher faults through the live loop.")
    parser.add_argument("--outage-s", type=float, default=15.0)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    policy = load_policy(write_policy(Path(tempfile.mkdtemp(prefix="evalloop-rel-policy-"))))
    with FaultTeacherServer(policy) as server:
        report = run_fault_suite(server, args.outage_s)
    print(json.dumps(asdict(report), indent=2) if args.json else render(report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
