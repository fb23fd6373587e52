"""Live-topic fuzzing: bad events produced straight onto a run's events topic while the worker runs.

``tests/unit/test_fuzz_schemas.py`` fuzzes the schema boundary in-process; this is the other half:
the same kinds of bad input travel through Kafka into the real ``evalloop worker`` subprocess,
interleaved with valid events, and the checks are about the running loop:

* every bad input lands on the dead-letter topic **once**, with the reason the validator gives it
  offline and its **original bytes** (compared byte for byte, as a multiset);
* old events sent after the watermark advanced are dead-lettered ``late``;
* valid events are all judged; a valid event sent twice (same bytes, same id) yields one distinct
  judgment per item and counts once in the Redis windows;
* the worker never stopped (same PID alive throughout, no traceback in its log) and still judges a
  final valid event sent after everything else; nothing was lost.

Bad inputs come from a seeded generator (``random.Random(seed)``), so a failing run is
reproducible from its seed. Kinds: malformed JSON, wrong types, invalid UTF-8, oversized (300 KB,
over the 256 KB limit and under Kafka's ~1 MB default), missing fields (event id first), absurd
timestamps, late events.

    python -m reliability.live_fuzz [--count 2000] [--seed 7] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from reliability.fault_teacher import FaultTeacherServer
from reliability.live import EventFactory, LiveRun, expected_items, live_run, wait_until, write_policy
from reliability.live_io import TopicTail, judgments_of, make_producer, produce, window_totals
from schemas.deadletter import DeadLetter
from schemas.policy import load_policy
from streams.pipeline import validate

#: Worker knobs: a one-hour retention so "late" means "older than the watermark − 1 h".
FUZZ_ENV = {"EVALLOOP_STREAM_RETENTION_S": "3600", "EVALLOOP_STREAM_PARTITION_IDLE_S": "2"}
#: Over schemas.events.MAX_EVENT_BYTES (256 KB), under Kafka's default max message (~1 MB).
OVERSIZED_BYTES = 300 * 1024
LATE_BY = timedelta(days=3)
#: Share of each kind in the generated bad inputs (oversized kept small: each is 300 KB on Kafka).
KIND_WEIGHTS = {
    "malformed_json": 6,
    "wrong_types": 6,
    "invalid_utf8": 4,
    "missing_field": 4,
    "absurd_timestamp": 3,
    "late": 3,
    "oversized": 1,
}
MAX_OVERSIZED = 12

Doc = dict[str, Any]


@dataclass(frozen=True)
class BadInput:
    """One bad payload, its kind, and the reason the dead letter must carry."""

    kind: str
    raw: bytes
    reason: str


# --------------------------------------------------------------------------- generators


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def malformed_json(rng: random.Random, doc: Doc) -> bytes:
    """Valid event bytes cut, spliced or corrupted so they no longer parse as JSON."""
    raw = _dumps(doc)
    choice = rng.randrange(4)
    if choice == 0:
        return raw[: rng.randrange(1, len(raw) - 1)]
    if choice == 1:
        at = rng.randrange(1, len(raw) - 1)
        return raw[:at] + rng.choice([b"{", b"]", b",,", b":", b'"']) + raw[at:]
    if choice == 2:
        return raw.replace(b'":', b'"', 1)
    return rng.choice([b"", b"{", b"not json", b"{'single': 'quotes'}", b'{"a": NaN']) + raw[:8]


def wrong_types(rng: random.Random, doc: Doc) -> bytes:
    """One field replaced by a value of the wrong JSON type (or a non-object document)."""
    mutations: list[Callable[[Doc], Any]] = [
        lambda d: {**d, "event_id": rng.choice([123, None, [], {"x": 1}, True])},
        lambda d: {**d, "event_time": rng.choice([12345, "yesterday", [], None, "2024-13-45T99:00:00Z"])},
        lambda d: {**d, "category": rng.choice([None, 7, ["a"], ""])},
        lambda d: {**d, "items": rng.choice(["x", {}, [], [1, 2], [None]])},
        lambda d: {**d, "request": rng.choice(["query", 5, [], {"query": 5}, {}])},
        lambda d: {**d, "items": [{**d["items"][0], "rank": rng.choice(["1", -1, 0, 1.5, None])}]},
        lambda d: {**d, "model_version": rng.choice([[], {}, 3.14, "has space"])},
        lambda d: {**d, "unexpected_field": rng.randrange(1000)},
        lambda d: rng.choice([[d], "a string", 42, None, True]),
    ]
    return _dumps(rng.choice(mutations)(doc))


def invalid_utf8(rng: random.Random, doc: Doc) -> bytes:
    """Valid event bytes with a byte sequence that is not UTF-8 spliced in."""
    raw = _dumps(doc)
    bad = rng.choice([b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xe2\x82", b"\x80", b"\xf8\x88"])
    at = rng.randrange(1, len(raw) - 1)
    return raw[:at] + bad + raw[at:]


def missing_field(rng: random.Random, doc: Doc) -> bytes:
    """The event id (half the time) or another required field removed."""
    name = "event_id" if rng.random() < 0.5 else rng.choice(["event_time", "category", "items", "request"])
    return _dumps({k: v for k, v in doc.items() if k != name})


def absurd_timestamp(rng: random.Random, doc: Doc) -> bytes:
    """An event time outside [2000, 2100): clock bugs, ms-vs-s mix-ups."""
    when = rng.choice(
        ["1970-01-01T00:00:00Z", "1999-12-31T23:59:59Z", "2100-01-01T00:00:00Z", "2999-06-01T00:00:00Z"]
    )
    return _dumps({**doc, "event_time": when})


def oversized(rng: random.Random, doc: Doc) -> bytes:
    """A valid-looking event padded to 300 KB (over our 256 KB limit, under Kafka's 1 MB)."""
    pad = OVERSIZED_BYTES - len(_dumps(doc)) + rng.randrange(100)
    return _dumps({**doc, "request": {**doc["request"], "attributes": {"pad": "x" * pad}}})


GENERATORS: dict[str, Callable[[random.Random, Doc], bytes]] = {
    "malformed_json": malformed_json,
    "wrong_types": wrong_types,
    "invalid_utf8": invalid_utf8,
    "missing_field": missing_field,
    "absurd_timestamp": absurd_timestamp,
    "oversized": oversized,
}


def generate_bad(rng: random.Random, factory: EventFactory, count: int) -> list[BadInput]:
    """``count`` bad inputs by ``KIND_WEIGHTS``; each non-late one's reason is the offline
    validator's (an input that happens to validate is regenerated)."""
    kinds = list(KIND_WEIGHTS)
    weights = list(KIND_WEIGHTS.values())
    out: list[BadInput] = []
    oversized_left = MAX_OVERSIZED
    while len(out) < count:
        kind = rng.choices(kinds, weights)[0]
        if kind == "oversized":
            if oversized_left == 0:
                continue
            oversized_left -= 1
        if kind == "late":
            late = factory.doc(datetime.now(UTC) - LATE_BY)
            out.append(BadInput("late", factory.encode(late)[1], "late"))
            continue
        raw = GENERATORS[kind](rng, factory.doc())
        verdict = validate(raw)
        if isinstance(verdict, DeadLetter):
            out.append(BadInput(kind, raw, verdict.reason))
    return out


# --------------------------------------------------------------------------- the run


@dataclass
class FuzzReport:
    """What was tried and what the loop did with it."""

    seed: int
    bad_by_kind: dict[str, int] = field(default_factory=dict)
    reasons_by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    bad_total: int = 0
    dead_letters: int = 0
    originals_matched: int = 0
    wrong_reason: int = 0
    missing: int = 0
    unexpected: int = 0
    valid_events: int = 0
    duplicated_events: int = 0
    valid_judged: int = 0
    judgments_raw: int = 0
    judgments_distinct: int = 0
    window_n: float = 0.0
    final_event_judged: bool = False
    worker_pid: int = 0
    worker_alive: bool = False
    worker_tracebacks: int = 0
    seconds: float = 0.0

    @property
    def lost(self) -> int:
        return self.missing + (self.valid_events - self.valid_judged)

    @property
    def ok(self) -> bool:
        return (
            self.bad_total > 0
            and self.originals_matched == self.bad_total == self.dead_letters
            and self.wrong_reason == self.missing == self.unexpected == 0
            and self.valid_judged == self.valid_events
            and self.window_n == self.judgments_distinct
            and self.final_event_judged
            and self.worker_alive
            and self.worker_tracebacks == 0
        )


class LiveFuzz:
    """Warm up (so the watermark is known), then the interleaved mix, then a final valid event."""

    def __init__(self, run: LiveRun, seed: int, wait_s: float = 180.0) -> None:
        self.run = run
        self.rng = random.Random(seed)
        self.wait_s = wait_s
        self.factory = EventFactory(f"{run.run_id}-v")
        self.producer = make_producer(run.settings)
        self.judgments = TopicTail(run.settings, run.topics["judgments"])
        self.letters = TopicTail(run.settings, run.topics["dead_letters"])
        self.valid: dict[str, Doc] = {}

    def close(self) -> None:
        self.judgments.close()
        self.letters.close()

    def valid_records(self, count: int) -> list[tuple[bytes | None, bytes]]:
        records: list[tuple[bytes | None, bytes]] = []
        for _ in range(count):
            doc = self.factory.doc()
            self.valid[doc["event_id"]] = doc
            records.append(self.factory.encode(doc))
        return records

    def all_judged(self, event_ids: list[str]) -> bool:
        distinct = {(j.event_id, j.item_id) for j in judgments_of(self.judgments)}
        per_event = Counter(event_id for event_id, _ in distinct)
        return all(per_event[e] >= expected_items(self.valid[e], self.run.policy) for e in event_ids)

    def warm_up(self, count: int = 20) -> None:
        """Valid events on every partition, judged: the worker is up and both watermarks set."""
        records = self.valid_records(count)
        produce(self.producer, self.run.topics["events"], records)
        ids = [key.decode() for key, _ in records if key is not None]
        if not wait_until(lambda: self.all_judged(ids), self.wait_s, every_s=0.5):
            raise RuntimeError(f"warm-up events were not judged; see {self.run.log_path}")

    def mixed(self, bad: list[BadInput], valid: int, duplicates: int) -> tuple[int, int]:
        """Produce bad and valid events shuffled together; ``duplicates`` valid ones twice."""
        records: list[tuple[bytes | None, bytes]] = [
            (self._bad_key(), b.raw) for b in bad
        ] + self.valid_records(valid)
        records += self.rng.sample(records[len(bad) :], duplicates)
        self.rng.shuffle(records)
        produce(self.producer, self.run.topics["events"], records)
        return valid, duplicates

    def _bad_key(self) -> bytes | None:
        # Producers key by event id; broken producers send no key or junk: spread over partitions.
        return None if self.rng.random() < 0.3 else f"bad-{self.rng.randrange(10**9)}".encode()

    def final(self) -> bool:
        """One more valid event after everything: the worker still processes."""
        records = self.valid_records(1)
        produce(self.producer, self.run.topics["events"], records)
        event_id = records[0][0].decode() if records[0][0] else ""
        return wait_until(lambda: self.all_judged([event_id]), self.wait_s, every_s=0.5)


def compare_letters(bad: list[BadInput], letters: list[DeadLetter], report: FuzzReport) -> None:
    """Match dead letters to the inputs by original bytes (a multiset) and check their reasons."""
    expected: Counter[tuple[bytes, str]] = Counter((b.raw, b.reason) for b in bad)
    got: Counter[tuple[bytes, str]] = Counter((letter.original(), str(letter.reason)) for letter in letters)
    by_bytes_expected = Counter(b.raw for b in bad)
    by_bytes_got = Counter(letter.original() for letter in letters)
    report.dead_letters = len(letters)
    report.originals_matched = sum((by_bytes_expected & by_bytes_got).values())
    report.missing = sum((by_bytes_expected - by_bytes_got).values())
    report.unexpected = sum((by_bytes_got - by_bytes_expected).values())
    report.wrong_reason = report.originals_matched - sum((expected & got).values())


def run_live_fuzz(
    server: FaultTeacherServer, count: int = 600, seed: int = 7, valid: int = 100
) -> FuzzReport:
    """The whole check against a fresh live run; ``server`` must be started (healthy)."""
    started = time.monotonic()
    report = FuzzReport(seed=seed)
    with live_run("fuzz", server.url, FUZZ_ENV) as run:
        assert run.worker is not None
        report.worker_pid = run.worker.pid
        fuzz = LiveFuzz(run, seed)
        try:
            fuzz.warm_up()
            bad = generate_bad(fuzz.rng, fuzz.factory, count)
            _, report.duplicated_events = fuzz.mixed(bad, valid, duplicates=max(1, valid // 5))
            report.final_event_judged = fuzz.final()
            _wait_for_letters(fuzz, len(bad))
            _fill(report, fuzz, bad, run)
        finally:
            fuzz.close()
        report.worker_alive = run.worker.poll() is None and run.worker.pid == report.worker_pid
        report.worker_tracebacks = run.log_path.read_bytes().count(b"Traceback")
    report.seconds = round(time.monotonic() - started, 1)
    return report


def _wait_for_letters(fuzz: LiveFuzz, count: int) -> None:
    wait_until(lambda: len(fuzz.letters.snapshot()) >= count, fuzz.wait_s, every_s=0.5)
    time.sleep(1.0)  # a duplicate dead letter would arrive right behind: give it a moment to show


def _fill(report: FuzzReport, fuzz: LiveFuzz, bad: list[BadInput], run: LiveRun) -> None:
    report.bad_total = len(bad)
    report.valid_events = len(fuzz.valid)
    report.bad_by_kind = dict(Counter(b.kind for b in bad))
    reasons: dict[str, Counter[str]] = {}
    for b in bad:
        reasons.setdefault(b.kind, Counter())[b.reason] += 1
    report.reasons_by_kind = {kind: dict(c) for kind, c in reasons.items()}
    letters = [DeadLetter.model_validate_json(v) for v in fuzz.letters.snapshot()]
    compare_letters(bad, letters, report)
    judgments = judgments_of(fuzz.judgments)
    report.judgments_raw = len(judgments)
    report.judgments_distinct = len({j.judgment_id for j in judgments})
    per_event = Counter(e for e, _ in {(j.event_id, j.item_id) for j in judgments})
    report.valid_judged = sum(
        1 for e, doc in fuzz.valid.items() if per_event[e] == expected_items(doc, run.policy)
    )

    def windows_caught_up() -> bool:
        report.window_n = window_totals(run)[0]
        return report.window_n >= report.judgments_distinct

    wait_until(windows_caught_up, 60.0, every_s=0.5)


def render(report: FuzzReport) -> str:
    """A plain-text summary."""
    lines = [f"{'kind':<18} {'tried':>6}  dead-letter reasons"]
    for kind, tried in sorted(report.bad_by_kind.items()):
        lines.append(f"{kind:<18} {tried:>6}  {report.reasons_by_kind.get(kind, {})}")
    lines.append(
        f"bad {report.bad_total}, dead letters {report.dead_letters}, originals matched "
        f"{report.originals_matched}, wrong reason {report.wrong_reason}, missing {report.missing}, "
        f"unexpected {report.unexpected}; valid {report.valid_events} ({report.duplicated_events} sent "
        f"twice) judged {report.valid_judged}; judgments raw/distinct {report.judgments_raw}/"
        f"{report.judgments_distinct}, windows n {report.window_n:g}; worker pid {report.worker_pid} "
        f"alive={report.worker_alive} tracebacks={report.worker_tracebacks}; lost {report.lost}; "
        f"{report.seconds}s; {'PASS' if report.ok else 'FAIL'}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the live fuzz against the local services; exit 0 when every check held."""
    import tempfile
    from pathlib import Path

    parser = argparse.ArgumentParser(description="Bad events onto a live events topic.")
    parser.add_argument("--count", type=int, default=2000, help="bad inputs to produce")
    parser.add_argument("--valid", type=int, default=300, help="valid events interleaved")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    policy = load_policy(write_policy(Path(tempfile.mkdtemp(prefix="evalloop-fuzz-policy-"))))
    with FaultTeacherServer(policy) as server:
        report = run_live_fuzz(server, args.count, args.seed, args.valid)
    print(json.dumps(asdict(report), indent=2) if args.json else render(report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
