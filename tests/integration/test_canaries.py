"""Golden canaries live, against real Kafka, Redis and Ray Serve: the embedding teacher serves
the morning, then the Serve app is redeployed with the noop backend (grades by hash: a
deliberately wrong teacher). The teacher-health alert for the new version fires within the
documented two hours of event time; no canary reaches a production window or the export."""

from __future__ import annotations

import io
import json
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis

from evalloop.backtest import load_events, sample_pairs
from schemas.golden import load_canaries
from schemas.judgments import Judgment, canary_category, is_canary_category
from schemas.policy import load_policy
from schemas.settings import Settings
from streams.export import export_judgments
from streams.replay import parse_time, replay
from streams.window_store import WindowStore
from tests.integration.test_loop import topics_for, worker  # noqa: F401
from tests.support.loop_run import Run, consume, make_run
from tests.support.policies import policy_with_rules

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "data" / "wands" / "events.jsonl"
START, SWAP, END = "2024-06-01T08:00:00Z", "2024-06-01T12:00:00Z", "2024-06-01T15:00:00Z"
#: docs/canaries.md: the swapped-in version pages within two hours of event time at this rate.
DETECTION = timedelta(hours=2)


def _slices(tmp: Path) -> tuple[Path, Path]:
    lines = [line.rstrip(b"\n") for line in EVENTS.open("rb") if line.strip()]
    times = [json.loads(line)["event_time"] for line in lines]
    before = [line for line, t in zip(lines, times, strict=True) if START <= t < SWAP]
    after = [line for line, t in zip(lines, times, strict=True) if SWAP <= t < END]
    paths = (tmp / "before.jsonl", tmp / "after.jsonl")
    for path, chosen in zip(paths, (before, after), strict=True):
        path.write_bytes(b"\n".join(chosen) + b"\n")
    return paths


@pytest.fixture
def serve_url(settings: Settings) -> Iterator[Callable[[Path, str], str]]:
    from workers.deployment import deploy
    from workers.runtime import shutdown

    def start(policy_path: Path, backend: str) -> str:
        deploy(settings, policy_path, backend=backend)
        return f"http://{settings.ray.serve_host}:{settings.ray.serve_port}/teacher"

    yield start
    shutdown()


def test_a_teacher_swap_pages_and_canaries_stay_out_of_production(
    settings: Settings,
    redis_client: redis.Redis,
    tmp_path: Path,
    topics_for: Callable[[Run], None],  # noqa: F811
    worker: Callable[[Run], subprocess.Popen[bytes]],  # noqa: F811
    serve_url: Callable[[Path, str], str],
) -> None:
    bundled = load_policy(ROOT / "policies" / "product-search.yaml")
    health = [
        rule.model_dump(mode="json", exclude_none=True)
        for rule in bundled.alerts
        if rule.kind == "teacher_health"
    ]
    policy_path = policy_with_rules(tmp_path, health, canaries=True)
    policy = load_policy(policy_path)
    before, after = _slices(tmp_path)
    url = serve_url(policy_path, "embedding")
    run = make_run(settings, policy_path, url, "canary")
    topics_for(run)
    proc = worker(run)
    try:
        canaries = load_canaries(policy)
        events_before, _ = load_events(before, None)
        expected_before = len(sample_pairs(policy, events_before, canaries).requests)
        assert replay(before, run.settings, speed=None).delivery_errors == 0
        judged = consume(run.settings, run.topics["judgments"], lambda v: len(v) >= expected_before, 240)
        assert len(judged) >= expected_before, f"{len(judged)} of {expected_before} judged before the swap"
        serve_url(policy_path, "noop")  # the swap: same Serve app, a deliberately wrong backend
        assert replay(after, run.settings, speed=None).delivery_errors == 0

        def paged(values: list[bytes]) -> bool:
            return any(json.loads(v)["rule"] == "teacher-health" for v in values)

        alerts = [json.loads(v) for v in consume(run.settings, run.topics["alerts"], paged, 240)]
        assert proc.poll() is None, "worker died"
        firing = [a for a in alerts if a["rule"] == "teacher-health" and a["state"] == "firing"]
        assert [a["category"] for a in firing] == [canary_category("noop-v1")], alerts
        delay = parse_time(firing[0]["updated_at"]) - parse_time(SWAP)  # type: ignore[operator]
        print(f"\nteacher-health fired for noop-v1 {delay} of event time after the swap")
        assert delay <= DETECTION

        events_after, _ = load_events(after, None)
        total = expected_before + len(sample_pairs(policy, events_after, canaries).requests)
        raw = consume(run.settings, run.topics["judgments"], lambda v: len(v) >= total, 120)
        judgments = {j.judgment_id: j for j in (Judgment.model_validate_json(v) for v in raw)}
        _assert_production_windows_hold_no_canary(run, redis_client, list(judgments.values()))
        out = io.StringIO()
        exported = export_judgments(run.settings, out, from_beginning=True, idle_timeout_s=5)
        canary_count = sum(j.canary is not None for j in judgments.values())
        assert exported.canaries_skipped == canary_count > 0
        assert not [row for row in out.getvalue().splitlines() if json.loads(row)["canary"] is not None]
    finally:
        WindowStore(redis_client, run.prefix).clear()


def _assert_production_windows_hold_no_canary(
    run: Run, client: redis.Redis, judgments: list[Judgment]
) -> None:
    store = WindowStore(client, run.prefix)
    production = Counter(j.category for j in judgments if j.canary is None)
    canaries = Counter(j.category for j in judgments if j.canary is not None)
    assert all(is_canary_category(c) for c in canaries) and not any(is_canary_category(c) for c in production)
    assert set(canaries) >= {canary_category("noop-v1")} and len(canaries) == 2
    end = max(j.event_time for j in judgments).timestamp() + 300
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the aggregate stage may lag the judgments topic a little
        if sum(store.read(c, 86400, end).samples for c in {**production, **canaries}) >= len(judgments):
            break
        time.sleep(0.5)
    for category, count in production.items():
        window = store.read(category, 86400, end)
        assert window.samples + window.errors == count, category
        assert not [name for name in window.counters if name.startswith("cm:")], category
    for category, count in canaries.items():
        assert store.read(category, 86400, end).samples == count
