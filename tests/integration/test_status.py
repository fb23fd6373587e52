"""`evalloop status` against the real Redis: raw and bias-corrected shares (with the calibration
of the teacher version the worker recorded), the grade mix, and the live canaries' Gate 2."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from judges.calibration import Graded, Source, build_calibration
from judges.golden import load_golden
from schemas.calibration import SignalCalibration, dump_calibration, file_name
from schemas.judgments import CanaryTag, canary_category
from schemas.policy import Policy, load_policy
from schemas.settings import Settings
from streams.canary import tag_canary
from streams.correction import rogan_gladen
from streams.status import LoopStateStore, collect, render_json, render_table
from streams.window_store import WindowStore
from streams.windows import display_rate
from tests.integration.test_window_store import END, make_judgments

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def prefix(redis_client: redis.Redis) -> Iterator[str]:
    name = f"evalloop-status-{uuid.uuid4().hex[:8]}"
    yield name
    WindowStore(redis_client, name).clear()


def _calibrate(policy: Policy, directory: Path) -> None:
    golden = load_golden(ROOT / "data/wands/golden.jsonl")
    # A teacher that calls every Related item "filter" and is right otherwise, and tags exactly
    # the failure modes golden carries.
    graded = [Graded(item, 0 if item.grade == 2 else item.grade) for item in golden]
    tags = {item.id: list(item.failure_modes) for item in golden}
    record = build_calibration(graded, policy, "t1", Source("as_is", "test"), ("g", "0" * 64), 200, 0, tags)
    (directory / file_name("t1", policy.version)).write_text(dump_calibration(record), encoding="utf-8")


def test_status_shows_raw_corrected_and_canaries(
    settings: Settings, redis_client: redis.Redis, prefix: str, tmp_path: Path
) -> None:
    policy = load_policy(ROOT / "policies/product-search.yaml")
    judgments = [j.model_copy(update={"policy_version": policy.version}) for j in make_judgments(400)]
    tag = CanaryTag(golden_id="g1", golden_grade=4, golden_category="Kitchen & Dining")
    canaries = [
        tag_canary(j.model_copy(update={"judgment_id": f"{k:032x}"}), tag)
        for k, j in enumerate(make_judgments(40, seed=3))
        if j.status == "ok"
    ]
    WindowStore(redis_client, prefix).apply(judgments + canaries)
    loop = LoopStateStore(redis_client, prefix)
    loop.set_watermark(END + 300)
    loop.note_event_time(END)
    run = settings.model_copy(
        update={
            "redis": settings.redis.model_copy(update={"key_prefix": prefix}),
            "calibration_dir": tmp_path,
        }
    )
    assert collect(run, policy, redis_client, 86400)["calibration"]["corrected"] is False
    loop.set_teacher_version("t1")
    _calibrate(policy, tmp_path)
    report = collect(run, policy, redis_client, 86400)
    assert report["calibration"]["corrected"] is True and "t1" in report["calibration"]["message"]
    assert report["calibration"]["failure_modes"].startswith("corrected: ")
    assert set(report["categories"]) == {"Kitchen & Dining", "Décor & Art"}
    stats = WindowStore(redis_client, prefix).read("Kitchen & Dining", 86400, END + 300)
    raw = display_rate(stats.counters, ("filter",), 0.95)
    pooled = json.loads((tmp_path / file_name("t1", policy.version)).read_text())["signals"]["filtered_share"]
    expected = rogan_gladen(raw, SignalCalibration.model_validate(pooled), 0.95)
    row = report["categories"]["Kitchen & Dining"]
    assert row["filtered"]["share"] == pytest.approx(raw.rate, abs=1e-4)
    assert row["filtered"]["corrected"]["value"] == pytest.approx(expected.value)
    # a perfect tagger: every calibrated mode's corrected share is its raw share
    calibrated = json.loads((tmp_path / file_name("t1", policy.version)).read_text())["failure_modes"]
    modes = row["top_failure_modes"]
    assert modes and all({"share", "corrected"} <= set(m) for m in modes)
    assert any(m["failure_mode"] in calibrated for m in modes), (modes, sorted(calibrated))
    for mode in modes:
        if mode["failure_mode"] in calibrated:
            assert mode["corrected"]["value"] == pytest.approx(mode["share"], abs=1e-3)
        else:
            assert mode["corrected"] is None
    # every grade has golden items since golden version +g2, so the whole mix is identifiable
    assert row["grade_mix"]["status"] == "corrected" and None not in row["grade_mix"]["corrected"]
    live = report["canaries"]["t1"]
    assert live["n"] == len(canaries) and live["interval"] is not None
    assert live["alerts"] == {"teacher-health": "ok"}
    table = render_table(report)
    assert (
        "  corrected" in table
        and "live canaries" in table
        and canary_category("t1") not in report["categories"]
    )
    assert json.loads(render_json(report))["canaries"]["t1"]["n"] == len(canaries)
