"""streams.sampling: deterministic hash sampling, per-category rates, budget and circuit shedding."""

from __future__ import annotations

import math
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from schemas.events import Item, RecommendationEvent, RequestContext
from schemas.policy import Policy, Sampling, load_policy
from streams.sampling import (
    SampleDecision,
    Sampler,
    TokenBucket,
    hash_unit,
    inclusion_probability,
    is_sampled,
)

POLICY_FILE = Path(__file__).resolve().parents[2] / "policies" / "product-search.yaml"


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(POLICY_FILE)


def with_sampling(policy: Policy, **changes: object) -> Policy:
    sampling = Sampling.model_validate({**policy.sampling.model_dump(), **changes})
    return policy.model_copy(update={"sampling": sampling})


def event(event_id: str, category: str = "Furniture & Office", items: int = 3) -> RecommendationEvent:
    return RecommendationEvent(
        event_id=event_id,
        event_time=datetime(2026, 1, 1, tzinfo=UTC),
        category=category,
        request=RequestContext(query="sofa"),
        items=[Item(item_id=f"i{k}", title=f"item {k}", rank=k + 1) for k in range(items)],
        model_version="m1",
    )


def binomial_bounds(n: int, p: float, sigmas: float = 4.5) -> tuple[float, float]:
    half = sigmas * math.sqrt(n * p * (1 - p))
    return n * p - half, n * p + half


@pytest.mark.parametrize("rate", [0.01, 0.1, 0.5, 0.9])
def test_rate_within_binomial_bounds_over_20k_ids(rate: float) -> None:
    hits = sum(is_sampled(f"evt-{k}", "salt", rate) for k in range(20_000))
    low, high = binomial_bounds(20_000, rate)
    assert low <= hits <= high


@pytest.mark.parametrize(
    ("rate", "expected"),
    [(1.0, True), (1.5, True), (0.0, False), (-0.1, False)],
)
def test_edge_rates(rate: float, expected: bool) -> None:
    assert all(is_sampled(f"e{k}", "s", rate) is expected for k in range(100))


def test_deterministic_and_nested_across_rates() -> None:
    ids = [f"evt-{k}" for k in range(2000)]
    first = [is_sampled(i, "salt", 0.3) for i in ids]
    assert first == [is_sampled(i, "salt", 0.3) for i in ids]
    # A lower rate's sample is a subset of a higher rate's: raising a rate only adds events.
    assert all(is_sampled(i, "salt", 0.5) for i, hit in zip(ids, first, strict=True) if hit)


def test_independent_of_process() -> None:
    """Python's hash() is salted per process; the sample must not be."""
    code = "from streams.sampling import hash_unit; print(repr(hash_unit('evt-42', 'salt')))"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
        env={"PYTHONHASHSEED": "123", "PYTHONPATH": str(root)},
    )
    assert float(out.stdout) == hash_unit("evt-42", "salt")


def test_salt_changes_the_subset() -> None:
    a = {k for k in range(5000) if is_sampled(f"e{k}", "a", 0.5)}
    b = {k for k in range(5000) if is_sampled(f"e{k}", "b", 0.5)}
    overlap = len(a & b) / len(a)
    assert 0.4 < overlap < 0.6  # independent halves overlap about half the time


@pytest.mark.parametrize(
    ("category", "expected"),
    [("Bed, Bath & Kids", 1.0), ("Furniture & Office", 0.5), ("Unknown category", 0.5)],
)
def test_inclusion_probability_per_category(policy: Policy, category: str, expected: float) -> None:
    assert inclusion_probability(policy, category) == expected


def test_sampler_per_category_rates_and_counters(policy: Policy) -> None:
    sampler = Sampler(policy)
    for k in range(4000):
        sampler.decide(event(f"f{k}", "Furniture & Office"), now=0.0)
        sampler.decide(event(f"b{k}", "Bed, Bath & Kids"), now=0.0)
    counts = sampler.counters
    assert counts["Bed, Bath & Kids"] == {"seen": 4000, "sampled": 4000, "shed": 0, "skipped": 0}
    furniture = counts["Furniture & Office"]
    low, high = binomial_bounds(4000, 0.5)
    assert low <= furniture["sampled"] <= high
    assert furniture["sampled"] + furniture["skipped"] == 4000


def test_decision_carries_policy_probability(policy: Policy) -> None:
    decision = Sampler(policy).decide(event("x", "Kitchen & Dining"), now=0.0)
    assert decision == SampleDecision(True, False, 1.0, "sampled")


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        # (now, cost) → taken?   rate 2/s, burst 4
        ([(0, 4), (0, 1)], [True, False]),
        ([(0, 4), (0.5, 1), (0.5, 1)], [True, True, False]),
        ([(0, 4), (10, 4), (10, 1)], [True, True, False]),  # refill caps at burst
        ([(0, 9)], [True]),  # cost above burst is capped so a big event can ever pass
        ([(5, 4), (1, 1)], [True, False]),  # time going backwards refills nothing
    ],
)
def test_token_bucket(steps: list[tuple[float, float]], expected: list[bool]) -> None:
    bucket = TokenBucket(rate_per_s=2.0, burst=4.0)
    assert [bucket.try_take(cost, now) for now, cost in steps] == expected


def test_budget_sheds_explicitly_and_counts(policy: Policy) -> None:
    budget = with_sampling(policy, max_judgments_per_second=10.0, max_items_per_event=5)
    sampler = Sampler(budget)
    # 20 events of 5 items (capped from 8) in the same second: burst 10 tokens → 2 pass.
    decisions = [sampler.decide(event(f"k{k}", "Kitchen & Dining", items=8), now=100.0) for k in range(20)]
    assert sum(d.sampled for d in decisions) == 2
    assert sum(d.shed for d in decisions) == 18
    assert {d.reason for d in decisions if d.shed} == {"shed_budget"}
    assert sampler.counters["Kitchen & Dining"] == {"seen": 20, "sampled": 2, "shed": 18, "skipped": 0}
    assert sampler.shed_fraction("Kitchen & Dining") == pytest.approx(0.9)
    # One second later the bucket has refilled 10 tokens: two more events pass.
    later = [sampler.decide(event(f"l{k}", "Kitchen & Dining", items=8), now=101.0) for k in range(5)]
    assert sum(d.sampled for d in later) == 2


def test_circuit_open_sheds_then_recovers(policy: Policy) -> None:
    sampler = Sampler(policy)
    sampler.shed_while(True)
    shed = [sampler.decide(event(f"c{k}", "Kitchen & Dining"), now=0.0) for k in range(5)]
    assert all(d.shed and not d.sampled and d.reason == "shed_circuit" for d in shed)
    sampler.shed_while(False)
    assert sampler.decide(event("c-after", "Kitchen & Dining"), now=0.0).sampled
    assert sampler.counters["Kitchen & Dining"]["shed"] == 5
    assert sampler.shed_fraction("nope") == 0.0


def test_unsampled_events_are_not_shed(policy: Policy) -> None:
    sampler = Sampler(with_sampling(policy, default_rate=0.01))
    sampler.shed_while(True)
    decisions = [sampler.decide(event(f"u{k}", "Other"), now=0.0) for k in range(500)]
    skipped = [d for d in decisions if d.reason == "not_sampled"]
    assert len(skipped) > 450 and not any(d.shed for d in skipped)
