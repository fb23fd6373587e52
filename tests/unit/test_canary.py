"""Golden canaries: picked deterministically at the policy's rate, judged by the same teacher,
windowed per teacher version and never in production; the live weighted kappa equals sklearn's;
the teacher_health rule fires on a wrong teacher and stays quiet on a right one."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faust
import numpy as np
import pytest
import yaml
from sklearn.metrics import cohen_kappa_score

from evalloop.backtest import backtest, load_events, sample_pairs, sample_requests
from judges.base import JudgeRequest, ok_judgment, requests_from_sample
from judges.fake import NoopTeacher
from schemas.events import Sample, parse_event
from schemas.golden import GoldenItem, load_canaries, load_golden, split_golden
from schemas.judgments import CanaryTag, Judgment, canary_category, is_canary_category
from schemas.policy import Policy, PolicyError, load_policy
from streams.alerting import is_bad
from streams.app import create_app
from streams.canary import canary_samples, evaluate_health, health, kappas, tag_canary
from streams.config import StreamSettings
from streams.pipeline import MemoryAlertStateStore, MemoryWindowStore
from streams.stages import Components
from streams.windows import counter_updates, merge_counts, stats_from_counters
from tests.support.topics import topic_settings
from tests.unit.test_agents import FakeTeacher, RecordingOutputs

ROOT = Path(__file__).resolve().parents[2]
POLICY_FILE = ROOT / "policies/product-search.yaml"
EVENTS = ROOT / "data/wands/events.jsonl"


@pytest.fixture(scope="module")
def canaries(policy: Policy) -> list[GoldenItem]:
    return load_canaries(policy)


def test_the_canary_split_is_kept_out_of_fitting(policy: Policy, canaries: list[GoldenItem]) -> None:
    golden = load_golden(ROOT / "data/wands/golden.jsonl")
    split = split_golden(golden, policy)
    assert canaries == split.canaries and 0.1 < len(canaries) / len(golden) < 0.2
    artifact = yaml.safe_load((ROOT / "artifacts/teacher-embedding.json").read_text(encoding="utf-8"))
    fitted = set(artifact["cv"]["out_of_fold"])
    assert fitted == {item.id for item in split.fit} and not fitted & {item.id for item in canaries}


def test_canaries_follow_sampled_events_at_the_rate(policy: Policy, canaries: list[GoldenItem]) -> None:
    events, _ = load_events(EVENTS, None)
    plain = sample_requests(policy, events)[0]
    pairs = sample_pairs(policy, events, canaries)
    tagged = [tag for tag in pairs.tags if tag is not None]
    assert policy.canaries is not None and len(tagged) == policy.canaries.rate * pairs.sampled
    assert [r for r, tag in zip(pairs.requests, pairs.tags, strict=True) if tag is None] == plain
    again = sample_pairs(policy, events, canaries)
    assert again == pairs  # a replay sends the same canaries
    assert len({r.event_id for r, t in zip(pairs.requests, pairs.tags, strict=True) if t}) == len(tagged)
    by_id = {item.id: item for item in canaries}
    for request, tag in zip(pairs.requests, pairs.tags, strict=True):
        if tag is not None:
            golden = by_id[tag.golden_id]
            assert (request.query, request.item.item_id, tag.golden_grade) == (
                golden.query,
                golden.item.item_id,
                golden.grade,
            )


@pytest.mark.parametrize(("rate", "low", "high"), [(0.5, 0.4, 0.6), (1.5, 1.4, 1.6)])
def test_fractional_rates(
    policy: Policy, canaries: list[GoldenItem], rate: float, low: float, high: float
) -> None:
    tuned = policy.model_copy(update={"canaries": policy.canaries.model_copy(update={"rate": rate})})  # type: ignore[union-attr]
    events, _ = load_events(EVENTS, None)
    counts = [
        len(
            canary_samples(
                Sample(event=e, inclusion_probability=1.0, policy_version=policy.version), canaries, tuned
            )
        )
        for e in events
    ]
    assert low < float(np.mean(counts)) < high and set(counts) <= {int(rate), int(rate) + 1}


def test_no_canaries_without_the_policy_block_or_of_a_canary(
    policy: Policy, canaries: list[GoldenItem]
) -> None:
    event = parse_event(EVENTS.open("rb").readline())
    sample = Sample(event=event, inclusion_probability=1.0, policy_version=policy.version)
    assert canary_samples(sample, canaries, policy.model_copy(update={"canaries": None})) == []
    first = canary_samples(sample, canaries, policy)[0]
    assert canary_samples(first, canaries, policy) == []


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("weights", ["none", "linear", "quadratic"])
def test_live_kappa_equals_sklearn(seed: int, weights: str) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.choice([0, 2, 4], 80)
    noisy = np.where(rng.random(80) < 0.4, rng.choice(5, 80), truth)
    counters: dict[str, float] = {}
    for t, p in zip(truth, noisy, strict=True):
        counters[f"cm:{t}:{p}"] = counters.get(f"cm:{t}:{p}", 0.0) + 1
    found = health(counters, [0, 1, 2, 3, 4], weights)
    expected = cohen_kappa_score(
        truth, noisy, labels=[0, 1, 2, 3, 4], weights=None if weights == "none" else weights
    )
    assert found.weighted_kappa == pytest.approx(expected)
    assert found.n == 80 and found.agreement == pytest.approx(float(np.mean(truth == noisy)))
    assert found.lower is not None and found.upper is not None and found.lower <= expected <= found.upper
    assert kappas(np.zeros((2, 5, 5)), weights).tolist() == [pytest.approx(np.nan, nan_ok=True)] * 2


def _oracle_judgments(
    policy: Policy, requests: Sequence[JudgeRequest], right: bool, version: str
) -> list[Judgment]:
    rng = np.random.default_rng(0)
    out = []
    for request in requests:
        grade = (
            int(request.item.attributes.get("golden_grade", 0)) if right else int(rng.choice(policy.grades))
        )
        out.append(ok_judgment(request, policy, version, grade, [], "test"))
    return out


def _window(judgments: Sequence[Judgment]) -> Any:
    counters: dict[str, float] = {}
    for judgment in judgments:
        merge_counts(counters, counter_updates(judgment))
    return stats_from_counters(3600, 0.0, counters)


def test_health_rule_fires_on_a_wrong_teacher_and_not_on_a_right_one(
    policy: Policy, canaries: list[GoldenItem]
) -> None:
    rule = next(r for r in policy.alerts if r.kind == "teacher_health")
    events, _ = load_events(EVENTS, None)
    pairs = sample_pairs(policy, events[:200], canaries)
    requests = [r for r, t in zip(pairs.requests, pairs.tags, strict=True) if t is not None]
    tags = [t for t in pairs.tags if t is not None]
    marked = [
        r.model_copy(
            update={"item": r.item.model_copy(update={"attributes": {"golden_grade": t.golden_grade}})}
        )
        for r, t in zip(requests, tags, strict=True)
    ]
    for right, fires in ((True, False), (False, True)):
        judged = [
            tag_canary(j, t) for j, t in zip(_oracle_judgments(policy, marked, right, "v"), tags, strict=True)
        ]
        stats = {s: _window(judged) for s in (3600, 10800)}
        evaluation = evaluate_health(rule, stats, policy.grades, policy.gates.gate2.weights)
        assert evaluation.breaching is fires and evaluation.recovered is not fires


def test_tagged_judgments_roll_up_per_teacher_version(policy: Policy, canaries: list[GoldenItem]) -> None:
    events, _ = load_events(EVENTS, None)
    pairs = sample_pairs(policy, events[:30], canaries)
    judged = NoopTeacher(policy).judge(pairs.requests)
    judgments = [tag_canary(j, t) for j, t in zip(judged, pairs.tags, strict=True)]
    store = MemoryWindowStore()
    store.apply(judgments)
    production = [c for c in store.categories() if not is_canary_category(c)]
    assert set(store.categories()) - set(production) == {canary_category("noop-v1")}
    end = max(j.event_time for j in judgments).timestamp() + 300
    for category in production:
        counters = store.read(category, 86400, end).counters
        assert not [name for name in counters if name.startswith("cm:")]
    canary_window = store.read(canary_category("noop-v1"), 86400, end)
    assert canary_window.samples == sum(t is not None for t in pairs.tags)
    assert {r.id for r in policy.rules_for(canary_category("noop-v1"))} == {"teacher-health"}
    assert "teacher-health" not in {r.id for r in policy.rules_for("Kitchen & Dining")}


class SwappingTeacher:
    """Grades canaries right before ``at`` (as ``right-v1``) and by hash after (``noop-v1``):
    a teacher swapped for a wrong one mid-stream, without the cost of the real one."""

    def __init__(self, policy: Policy, canaries: Sequence[GoldenItem], at: datetime) -> None:
        self._policy, self.at = policy, at
        self._golden = {(c.query, c.item.item_id): c.grade for c in canaries}
        self._wrong = NoopTeacher(policy)

    teacher_version = "right-v1"

    @property
    def policy(self) -> Policy:
        return self._policy

    def judge(self, requests: Sequence[JudgeRequest]) -> list[Judgment]:
        out = []
        for request in requests:
            if request.event_time >= self.at:
                out += self._wrong.judge([request])
                continue
            grade = self._golden.get((request.query, request.item.item_id), 4)
            out.append(ok_judgment(request, self._policy, "right-v1", grade, [], "right"))
        return out


@pytest.mark.parametrize("hour", [11, 14])
def test_a_swap_to_a_wrong_teacher_pages_within_two_hours(
    policy: Policy, canaries: list[GoldenItem], hour: int
) -> None:
    at = datetime(2024, 6, 1, hour, tzinfo=UTC)
    result = backtest(policy, SwappingTeacher(policy, canaries, at), EVENTS)
    health_alerts = [a for a in result.alerts if a.rule == "teacher-health"]
    assert [(a.state, a.category) for a in health_alerts] == [("firing", canary_category("noop-v1"))]
    assert health_alerts[0].updated_at - at <= (
        datetime(2024, 6, 1, 2, tzinfo=UTC) - datetime(2024, 6, 1, tzinfo=UTC)
    )
    production = {j.category for j in result.judgments if j.canary is None}
    assert not any(is_canary_category(c) for c in production)
    assert all(a.rule != "teacher-health" or is_canary_category(a.category) for a in result.alerts)


async def test_live_stages_send_tag_and_window_canaries(policy: Policy, canaries: list[GoldenItem]) -> None:
    outputs = RecordingOutputs()
    windows = MemoryWindowStore()
    components = Components(
        settings=topic_settings(),
        stream=StreamSettings(judge_concurrency=1, ingest_within_s=0.01, judge_within_s=0.01),
        policy=policy,
        teacher=FakeTeacher(policy, grade=4),
        windows=windows,
        alert_states=MemoryAlertStateStore(),
        outputs=outputs,
        canaries=canaries,
    )
    loop = create_app(components, faust_app=faust.App("test-canaries", store="memory://", autodiscover=False))
    raw = [line.strip() for line in EVENTS.open("rb")][:20]
    async with loop.validate_agent.test_context() as agent:
        for record in raw:
            await agent.put(record)
    samples = [Sample.model_validate_json(v) for _, v in outputs.sent["t.samples"]]
    sent = components.metrics.snapshot()
    assert sent["canaries_sent"] == sum(s.canary is not None for s in samples) == 3 * sent["sampled"]
    async with loop.judge_agent.test_context() as agent:
        for sample in samples:
            await agent.put(sample.model_dump_json().encode())
    judgments = [Judgment.model_validate_json(v) for _, v in outputs.sent["t.judgments"]]
    keys = {k for k, _ in outputs.sent["t.judgments"]}
    assert canary_category("fake").encode() in keys
    assert all((j.canary is not None) == is_canary_category(j.category) for j in judgments)
    windows.apply(judgments)
    assert canary_category("fake") in windows.categories()


def test_a_health_rule_needs_canaries(tmp_path: Path) -> None:
    doc: dict[str, Any] = yaml.safe_load(POLICY_FILE.read_text(encoding="utf-8"))
    doc.pop("canaries")
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    with pytest.raises(PolicyError, match="teacher_health rule needs canaries"):
        load_policy(path)


def test_a_health_alerts_examples_are_the_canaries_graded_off_golden(policy: Policy) -> None:
    rule = next(r for r in policy.alerts if r.kind == "teacher_health")
    irrelevant = CanaryTag(golden_id="g1", golden_grade=0, golden_category="Kitchen & Dining")
    filtered_right = tag_canary(ok_judgment(_request(), policy, "v", 0, [], "agrees"), irrelevant)
    shown_wrong = tag_canary(ok_judgment(_request(), policy, "v", 4, [], "disagrees"), irrelevant)
    # Whether the teacher agreed with golden decides, not what the item's display was.
    assert is_bad(shown_wrong, rule) and not is_bad(filtered_right, rule)
    production = ok_judgment(_request(), policy, "v", 0, [], "not a canary")
    assert not is_bad(production, rule)


def _request() -> JudgeRequest:
    event = parse_event(EVENTS.open("rb").readline())
    return requests_from_sample(Sample(event=event, inclusion_probability=1.0, policy_version="p"), 1)[0]
