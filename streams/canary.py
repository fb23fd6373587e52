"""Golden canaries: live judge health (pure; no I/O). See docs/canaries.md.

After a sampled production event, with the policy's ``canaries.rate`` (a salted hash of the event
id, so a replay picks the same ones), the sample stage also sends one item of the golden set's
canary split — items a fitted teacher never saw — through the same teacher, at the event's time.
Its judgment is tagged with the golden grade and windowed under ``canary:<teacher version>``,
never under a production category. A ``teacher_health`` rule reads those windows: each bucket
holds the confusion counts ``cm:<golden>:<teacher>``, from which the live weighted kappa and its
bootstrap interval are computed, and the rule fires when the interval lies wholly under its
threshold in both windows of a pair.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from schemas.events import Item, RecommendationEvent, RequestContext, Sample
from schemas.golden import GoldenItem
from schemas.judgments import CanaryTag, Judgment, canary_category
from schemas.kappa import Weighting, kappas
from schemas.policy import AlertRule, Policy
from streams.alerting import RuleEvaluation, WindowFigureData
from streams.windows import WindowStats, window_name

F64 = npt.NDArray[np.float64]
HEALTH_REPLICATES = 200
CI_LEVEL = 0.95


def _unit(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2**64


def canary_samples(sample: Sample, canaries: Sequence[GoldenItem], policy: Policy) -> list[Sample]:
    """The canaries that follow ``sample``: ``rate`` per sampled event on average (its whole part
    always, one more with its fractional part's probability), each a golden canary item picked by
    a hash of the event id, so a replay sends the same ones."""
    settings = policy.canaries
    if settings is None or not canaries or sample.canary is not None:
        return []
    event_id = sample.event.event_id
    count = math.floor(settings.rate)
    count += int(_unit(f"{settings.salt}\x1f{event_id}") < settings.rate - count)
    return [_canary(sample, canaries, policy, settings.salt, k) for k in range(count)]


def _canary(sample: Sample, canaries: Sequence[GoldenItem], policy: Policy, salt: str, k: int) -> Sample:
    event = sample.event
    golden = canaries[int(_unit(f"{salt}\x1fpick\x1f{k}\x1f{event.event_id}") * len(canaries))]
    digest = hashlib.sha256(f"{golden.id}\x1f{k}\x1f{event.event_id}".encode()).hexdigest()[:24]
    canary_event = RecommendationEvent(
        event_id=f"canary-{digest}",
        event_time=event.event_time,
        category=golden.category,
        surface="canary",
        request=RequestContext(query=golden.query),
        items=[_item(golden)],
        model_version="golden-canary",
    )
    tag = CanaryTag(golden_id=golden.id, golden_grade=golden.grade, golden_category=golden.category)
    return Sample(event=canary_event, inclusion_probability=1.0, policy_version=policy.version, canary=tag)


def _item(golden: GoldenItem) -> Item:
    product = golden.item
    return Item(
        item_id=product.item_id,
        title=product.title,
        description=product.description,
        category=product.category,
        attributes=dict(product.attributes),
        rank=1,
    )


def tag_canary(judgment: Judgment, tag: CanaryTag | None) -> Judgment:
    """``judgment`` as published: a canary's goes under ``canary:<teacher version>`` with its tag."""
    if tag is None:
        return judgment
    return judgment.model_copy(update={"canary": tag, "category": canary_category(judgment.teacher_version)})


# --------------------------------------------------------------------------- live Gate 2


class Health(NamedTuple):
    """Live agreement of the canaries in one window: n, raw agreement, kappa, weighted kappa
    (the policy's Gate 2 weights) and a percentile bootstrap interval of the weighted kappa."""

    n: int
    agreement: float | None
    kappa: float | None
    weighted_kappa: float | None
    lower: float | None
    upper: float | None


def confusion_from(counters: Mapping[str, float], grades: Sequence[int]) -> F64:
    """Rows golden grade, columns teacher grade, from a window's ``cm:`` counters."""
    index = {g: i for i, g in enumerate(grades)}
    matrix = np.zeros((len(grades), len(grades)))
    for name, value in counters.items():
        if name.startswith("cm:"):
            golden, teacher = (int(part) for part in name[3:].split(":"))
            if golden in index and teacher in index:
                matrix[index[golden], index[teacher]] += value
    return matrix


def health(counters: Mapping[str, float], grades: Sequence[int], weights: Weighting, seed: int = 0) -> Health:
    """The window's live Gate 2 (``weights``: the policy's ``gates.gate2.weights``)."""
    matrix = confusion_from(counters, grades)
    n = round(float(matrix.sum()))
    if n == 0:
        return Health(0, None, None, None, None, None)
    plain, weighted = (float(kappas(matrix, w)[0]) for w in ("none", weights))
    draws = np.random.default_rng(seed).multinomial(n, (matrix / n).ravel(), size=HEALTH_REPLICATES)
    replicated = kappas(draws.reshape(-1, *matrix.shape).astype(np.float64), weights)
    replicated = replicated[np.isfinite(replicated)]
    tail = (1 - CI_LEVEL) / 2 * 100
    low, high = (
        (float(v) for v in np.percentile(replicated, [tail, 100 - tail])) if replicated.size else (None, None)
    )
    return Health(
        n=n,
        agreement=float(np.trace(matrix) / n),
        kappa=None if math.isnan(plain) else plain,
        weighted_kappa=None if math.isnan(weighted) else weighted,
        lower=low,
        upper=high,
    )


def _figure(
    name: str,
    role: Literal["long", "short"],
    stats: WindowStats,
    rule: AlertRule,
    grades: Sequence[int],
    weights: Weighting,
) -> WindowFigureData:
    found = health(stats.counters, grades, weights, seed=stats.end_epoch)
    enough = found.n >= rule.required_samples and found.weighted_kappa is not None
    kappa = found.weighted_kappa if found.weighted_kappa is not None else 0.0
    upper = found.upper if found.upper is not None else 1.0
    return WindowFigureData(
        window=name,
        seconds=stats.window_s,
        role=role,
        samples=found.n,
        weighted_samples=float(found.n),
        bad=found.n - round((found.agreement or 0.0) * found.n),
        # Figures are shares in [0, 1]: a kappa at or below 0 (chance agreement) shows as 0.
        rate=min(max(kappa, 0.0), 1.0),
        lower=min(max(found.lower if found.lower is not None else 0.0, 0.0), 1.0),
        upper=min(max(upper, 0.0), 1.0),
        threshold=rule.threshold,
        enough_samples=enough,
        breaching=enough and upper < rule.threshold,
    )


def evaluate_health(
    rule: AlertRule, stats_by_window: Mapping[int, WindowStats], grades: Sequence[int], weights: Weighting
) -> RuleEvaluation:
    """A ``teacher_health`` rule: breaching when, in both windows of a pair, enough canaries were
    graded and the weighted kappa's upper bound is under ``threshold``; recovered when every short
    window has enough and its weighted kappa is back at or over it."""
    figures: list[WindowFigureData] = []
    breaching, recovered = False, True
    for pair in rule.windows:
        long = _figure(pair.long, "long", stats_by_window[pair.long_seconds], rule, grades, weights)
        short = _figure(pair.short, "short", stats_by_window[pair.short_seconds], rule, grades, weights)
        figures += [long, short]
        breaching = breaching or (long.breaching and short.breaching)
        recovered = recovered and short.enough_samples and short.rate >= rule.threshold
    return RuleEvaluation(breaching=breaching, recovered=recovered and not breaching, figures=figures)


def health_json(found: Health, window_s: int) -> dict[str, object]:
    """A JSON-ready dict for status."""

    def r(value: float | None) -> float | None:
        return None if value is None else round(value, 4)

    return {
        "window": window_name(window_s),
        "n": found.n,
        "agreement": r(found.agreement),
        "kappa": r(found.kappa),
        "weighted_kappa": r(found.weighted_kappa),
        "interval": None if found.lower is None else [r(found.lower), r(found.upper)],
    }
