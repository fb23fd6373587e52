"""Which events get judged: a deterministic hash sample per category, plus a judging budget.

Pure logic: no clock and no I/O. Callers pass ``now`` so a replayed day makes the same decisions
when it passes event time (or the live throttle behaves as a throttle when it passes wall time).

Unbiasedness. A sampled judgment is weighted by ``1 / inclusion_probability`` (the policy's rate).
Shedding (budget exhausted, or the teacher's circuit open) drops some sampled events, so the
*effective* inclusion probability is lower than the weight assumes. Rates (bad share = bad weight
/ total weight) stay unbiased within the sampled set **only if shedding is independent of
quality** — true for the budget and the circuit, which look at arrival time and teacher health,
not at the items. Absolute volumes (weighted counts) are under-estimated by the shed fraction;
``Sampler.shed_fraction`` reports it per category so dashboards can correct or flag it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from schemas.events import RecommendationEvent
from schemas.policy import Policy

#: 2**64: the hash's 8 bytes read as an integer, scaled into [0, 1).
_HASH_SPACE = float(1 << 64)
COUNTER_NAMES = ("seen", "sampled", "shed", "skipped")


def inclusion_probability(policy: Policy, category: str) -> float:
    """The probability an event of ``category`` is chosen: the policy's rate for it."""
    return policy.sample_rate(category)


def hash_unit(event_id: str, salt: str) -> float:
    """A stable uniform number in [0, 1) from ``salt`` and ``event_id`` (BLAKE2b, not ``hash()``).

    Python's ``hash()`` is salted per process; BLAKE2b gives every worker and every replay the
    same number, so a partition can move between workers without changing the sample.
    """
    digest = hashlib.blake2b(f"{salt}\x1f{event_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _HASH_SPACE


def is_sampled(event_id: str, salt: str, rate: float) -> bool:
    """Deterministically decide whether ``event_id`` is in the ``rate`` sample under ``salt``."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    return hash_unit(event_id, salt) < rate


class TokenBucket:
    """A clock-free token bucket: ``rate_per_s`` tokens refill per second, up to ``burst``.

    The caller supplies ``now`` (seconds) on every call, so tests and replays control time. A
    ``now`` earlier than the last one refills nothing (time never runs backwards for the bucket).
    """

    def __init__(self, rate_per_s: float, burst: float) -> None:
        if rate_per_s <= 0 or burst <= 0:
            raise ValueError("rate_per_s and burst must be positive")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.tokens = burst
        self._last: float | None = None

    def _refill(self, now: float) -> None:
        if self._last is not None and now > self._last:
            self.tokens = min(self.burst, self.tokens + (now - self._last) * self.rate_per_s)
        if self._last is None or now > self._last:
            self._last = now

    def try_take(self, cost: float, now: float) -> bool:
        """Take ``cost`` tokens if available (cost is capped at ``burst`` so it can ever succeed)."""
        self._refill(now)
        cost = min(cost, self.burst)
        if self.tokens + 1e-9 < cost:
            return False
        self.tokens = max(0.0, self.tokens - cost)
        return True


@dataclass(frozen=True)
class SampleDecision:
    """What the sampler decided for one event, and why.

    ``reason`` is one of ``not_sampled``, ``sampled``, ``shed_budget``, ``shed_circuit``.
    ``inclusion_probability`` is the policy rate (the judgment weight is its inverse) even when
    the event is shed; see the module docstring on what shedding does to estimates.
    """

    sampled: bool
    shed: bool
    inclusion_probability: float
    reason: str


@dataclass
class _CategoryCounters:
    seen: int = 0
    sampled: int = 0
    shed: int = 0
    skipped: int = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COUNTER_NAMES}


class Sampler:
    """Applies the policy's sampling to events: hash sample, then budget, then circuit.

    Counters (``seen``, ``sampled``, ``shed``, ``skipped`` per category) are process-local; the
    caller exports them as metrics. ``sampled`` counts events actually passed on for judging.
    """

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        sampling = policy.sampling
        self._bucket: TokenBucket | None = None
        if sampling.max_judgments_per_second is not None:
            # One second of budget as burst, but at least one full event's worth of items.
            burst = max(sampling.max_judgments_per_second, float(sampling.max_items_per_event))
            self._bucket = TokenBucket(sampling.max_judgments_per_second, burst)
        self._circuit_open = False
        self._counters: dict[str, _CategoryCounters] = {}

    def shed_while(self, open: bool) -> None:
        """Circuit hook: while ``open`` (teacher down), sampled events are shed, not queued."""
        self._circuit_open = open

    def decide(self, event: RecommendationEvent, now: float) -> SampleDecision:
        """Decide whether to judge ``event``; ``now`` (seconds) drives the budget only."""
        counters = self._counters.setdefault(event.category, _CategoryCounters())
        counters.seen += 1
        probability = inclusion_probability(self.policy, event.category)
        if not is_sampled(event.event_id, self.policy.sampling.hash_salt, probability):
            counters.skipped += 1
            return SampleDecision(False, False, probability, "not_sampled")
        shed_reason = self._shed_reason(event, now)
        if shed_reason is not None:
            counters.shed += 1
            return SampleDecision(False, True, probability, shed_reason)
        counters.sampled += 1
        return SampleDecision(True, False, probability, "sampled")

    def _shed_reason(self, event: RecommendationEvent, now: float) -> str | None:
        # The circuit is checked first so an outage does not also drain the budget.
        if self._circuit_open:
            return "shed_circuit"
        if self._bucket is None:
            return None
        cost = min(len(event.items), self.policy.sampling.max_items_per_event)
        return None if self._bucket.try_take(cost, now) else "shed_budget"

    @property
    def counters(self) -> dict[str, dict[str, int]]:
        """A snapshot: category → {seen, sampled, shed, skipped}."""
        return {category: c.as_dict() for category, c in self._counters.items()}

    def shed_fraction(self, category: str) -> float:
        """Shed / (sampled + shed) for ``category``: how far the effective rate fell below policy."""
        c = self._counters.get(category)
        if c is None or c.sampled + c.shed == 0:
            return 0.0
        return c.shed / (c.sampled + c.shed)
