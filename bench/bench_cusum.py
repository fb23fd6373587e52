"""The CUSUM rule kind against the exact (per-judgment) Bernoulli CUSUM at the same false-alarm rate.

Per scenario (600/h and 60/h judgments in a category; bad share steps p0 → p1 as in
``bench_alerts``), one simulated stream per run: ``WARMUP_BUCKETS`` 5-minute buckets at p0, then
p1 until the alarm. On the same judgments:

* **evalloop's CUSUM rule** (``kind: cusum``, ``in_control`` p0, ``threshold`` p1,
  ``false_alarm_every`` 30 d): the real code per bucket (``streams.alerting.cusum_statistic`` →
  ``evaluate_cusum`` → ``transition``). Delay: judgments from the step to the end of the bucket
  whose boundary emitted ``firing``.
* **the exact CUSUM** (the baseline): Page's per-judgment Bernoulli CUSUM, each bucket's bad
  judgments at random positions in it, its alarm level set for the *same* in-control average run
  length (30 days × the rate, in judgments; ``streams.cusum.judgment_design``). Delay: judgments
  from the step to the alarming judgment.

Both start the step from wherever p0 left them (steady state). Runs in which either alarmed
during the warm-up are dropped (counted). The false-alarm premise is checked by simulating the
CUSUM rule on stationary p0 streams (``FA_BUCKETS`` buckets per run): its empirical in-control
run length against the 30-day target. The Markov-chain zero-state delays (``streams.cusum``) are
shown beside the simulated ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import numpy as np

from bench.bench_alerts import BUCKET_S, STEPS, T0, IntArray, simulate_counts, window_stats
from bench.common import BenchResult
from schemas.policy import AlertRule
from streams.alerting import AlertState, cusum_design, cusum_statistic, evaluate_cusum, transition
from streams.cusum import CusumDesign, bucket_arl, judgment_arl, judgment_design

NAME = "cusum"
FALSE_ALARM_EVERY = "30d"
WARMUP_BUCKETS = 24
TARGET_RATIO = 1.2
RATES = (600, 60)


def make_rule(p0: float, p1: float, rate_per_hour: float) -> AlertRule:
    """The CUSUM rule a policy would hold for this scenario."""
    return AlertRule.model_validate(
        {
            "id": "cusum-filtered",
            "kind": "cusum",
            "signal": "filtered_share",
            "threshold": p1,
            "cusum": {
                "in_control": p0,
                "false_alarm_every": FALSE_ALARM_EVERY,
                "judgments_per_hour": rate_per_hour,
            },
            "severity": "page",
            "resolve_for": "30m",
        }
    )


def exact_design(p0: float, p1: float, rate_per_hour: float) -> CusumDesign:
    """The per-judgment CUSUM with the rule's in-control ARL, counted in judgments."""
    days = int(FALSE_ALARM_EVERY[:-1])
    return judgment_design(p0, p1, days * 24 * rate_per_hour)


def rule_alarm(rule: AlertRule, n: IntArray, bad: IntArray) -> int | None:
    """The bucket whose boundary fires evalloop's CUSUM rule (the real code), or None."""
    state = AlertState()
    for t in range(len(n)):
        at = T0 + timedelta(seconds=(t + 1) * BUCKET_S)
        stats = window_stats(BUCKET_S, int(n[t]), int(bad[t]))
        statistic = cusum_statistic(rule, state, stats, at, BUCKET_S)
        step = transition(state, evaluate_cusum(rule, statistic, stats, BUCKET_S), at, rule)
        state = replace(step.new_state, statistic=statistic, statistic_through=at)
        if step.emit == "firing":
            return t
    return None


def exact_alarm(design: CusumDesign, n: IntArray, bad: IntArray, rng: np.random.Generator) -> int | None:
    """The judgment index (from the stream's start) at which Page's CUSUM alarms, or None."""
    statistic, seen = 0.0, 0
    for count, bads in zip(n.tolist(), bad.tolist(), strict=True):
        order = np.zeros(count, dtype=bool)
        order[rng.choice(count, size=bads, replace=False)] = True
        for is_bad in order.tolist():
            statistic = max(0.0, statistic + (design.up if is_bad else design.down))
            seen += 1
            if statistic >= design.threshold:
                return seen
    return None


@dataclass
class Delays:
    """Judgments from the step to the alarm per kept run, and runs dropped (warm-up alarms)."""

    rule: list[float]
    exact: list[float]
    dropped: int
    not_fired: int


def delays(p0: float, p1: float, rate: float, runs: int, seed: int) -> Delays:
    """Both detectors on the same simulated streams (see the module docstring)."""
    rule, exact = make_rule(p0, p1, rate), exact_design(p0, p1, rate)
    horizon = 48 * 12
    probs = np.array([p0] * WARMUP_BUCKETS + [p1] * horizon)
    rng = np.random.default_rng(seed)
    n, bad = simulate_counts(rng, rate, probs, runs)
    out = Delays([], [], 0, 0)
    for r in range(runs):
        before = int(n[r, :WARMUP_BUCKETS].sum())
        fired, alarm = rule_alarm(rule, n[r], bad[r]), exact_alarm(exact, n[r], bad[r], rng)
        if (fired is not None and fired < WARMUP_BUCKETS) or (alarm is not None and alarm <= before):
            out.dropped += 1
        elif fired is None or alarm is None:
            out.not_fired += 1
        else:
            out.rule.append(float(n[r, WARMUP_BUCKETS : fired + 1].sum()))
            out.exact.append(float(alarm - before))
    return out


def in_control_buckets(p0: float, p1: float, rate: float, runs: int, buckets: int, seed: int) -> float:
    """Empirical in-control run length (buckets per false alarm) of the rule's statistic at p0,
    restarting from 0 after each alarm; inf when none fired. Vectorised over runs."""
    rule = make_rule(p0, p1, rate)
    design = cusum_design(rule, BUCKET_S)
    n, bad = simulate_counts(np.random.default_rng(seed), rate, np.full(buckets, p0), runs)
    statistic, alarms = np.zeros(runs), 0
    for t in range(buckets):
        statistic = np.minimum(
            design.cap,
            np.maximum(0.0, statistic + bad[:, t] * design.up + (n[:, t] - bad[:, t]) * design.down),
        )
        fired = statistic >= design.threshold
        alarms += int(fired.sum())
        statistic[fired] = 0.0
    return runs * buckets / alarms if alarms else math.inf


def scenario_row(p0: float, p1: float, rate: float, runs: int, fa_buckets: int, seed: int) -> dict[str, Any]:
    """Simulated delays of both detectors, their Markov-chain zero-state values, the FA check."""
    found = delays(p0, p1, rate, runs, seed)
    rule_design = cusum_design(make_rule(p0, p1, rate), BUCKET_S)
    exact = exact_design(p0, p1, rate)
    per_bucket = rate * BUCKET_S / 3600
    target_buckets = int(FALSE_ALARM_EVERY[:-1]) * 24 * 3600 / BUCKET_S
    measured = in_control_buckets(p0, p1, rate, max(runs, 50), fa_buckets, seed + 1)
    mean_rule, mean_exact = float(np.mean(found.rule)), float(np.mean(found.exact))
    return {
        "rate/h": rate,
        "p0->p1": f"{p0:.0%}->{p1:.0%}",
        "runs": len(found.rule),
        "dropped": found.dropped,
        "not_fired": found.not_fired,
        "rule_h": round(rule_design.threshold, 3),
        "exact_h": round(exact.threshold, 3),
        "rule_mean": mean_rule,
        "exact_mean": mean_exact,
        "rule_median": float(np.median(found.rule)),
        "exact_median": float(np.median(found.exact)),
        "x_exact": round(mean_rule / mean_exact, 3),
        "chain_rule_0": round(bucket_arl(rule_design, p1, per_bucket) * per_bucket, 1),
        "chain_exact_0": round(judgment_arl(exact, p1), 1),
        "fa_target_days": round(target_buckets * BUCKET_S / 86400, 1),
        "fa_measured_days": round(measured * BUCKET_S / 86400, 1),
    }


def run(quick: bool) -> BenchResult:
    """Every (rate, step) scenario: delays vs the exact CUSUM, and the false-alarm check."""
    runs, fa_buckets = (60, 8640) if quick else (300, 4 * 8640)
    result = BenchResult(name=NAME)
    for index, (rate, (p0, p1)) in enumerate((r, s) for r in RATES for s in STEPS):
        row = scenario_row(p0, p1, rate, runs, fa_buckets, seed=3000 + 10 * index)
        result.rows.append(row)
        label = f"{rate}/h {p0:.0%}->{p1:.0%}"
        result.ratios[f"{label}: CUSUM rule mean delay / exact CUSUM (target <= {TARGET_RATIO})"] = row[
            "x_exact"
        ]
    result.notes += [
        f"rule: kind cusum, in_control p0, threshold p1, false_alarm_every {FALSE_ALARM_EVERY}, "
        "judgments_per_hour = the rate; the statistic moves once per 5-minute bucket (real code)",
        "exact: Page's per-judgment CUSUM of p0 vs p1 on the same judgments (random order inside a "
        "bucket), alarm level for the same in-control ARL in judgments (Markov chain)",
        "delays in judgments from the step; the rule's runs to the end of its firing bucket; "
        f"{WARMUP_BUCKETS} buckets of p0 before the step (steady state); runs where either alarmed "
        "in the warm-up are dropped",
        "chain_*_0: Markov-chain zero-state delays (statistic at 0 at the step), for reference",
        "fa_measured_days: the rule's simulated in-control run length on stationary p0 streams "
        f"({'8640' if quick else '34560'} buckets per run, restart after each alarm) vs fa_target_days",
    ]
    return result
