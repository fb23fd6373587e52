"""Tests for judges.agreement (Gate 1 statistics) and judges.gate1_io (reading ratings).

Small tables are worked out by hand in the comments; the bundled TREC 2011 crowd data is
checked against the reference values in data/trec2011crowd/README.md.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections import Counter, defaultdict
from pathlib import Path
from types import SimpleNamespace

import krippendorff
import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from judges.agreement import (
    GateThresholds,
    Rating,
    cohen_kappa,
    deduplicate,
    disputed_boundaries,
    fleiss_kappa,
    gate1_report,
    krippendorff_alpha,
    most_disputed_items,
    pairwise_cohen,
    summarise_pairs,
    verdict,
)
from judges.gate1_io import RatingsFormatError, load_ratings, parse_ratings

CROWD = Path(__file__).resolve().parents[2] / "data" / "trec2011crowd" / "raters.jsonl"


def table(rows: dict[str, list[int]]) -> list[Rating]:
    """Item id -> labels (rater r0, r1, ... in order) as ratings."""
    return [
        Rating(item_id=item, rater_id=f"r{k}", label=label)
        for item, labels in rows.items()
        for k, label in enumerate(labels)
    ]


@pytest.fixture(scope="module")
def crowd() -> list[Rating]:
    return load_ratings(CROWD)


# --------------------------------------------------------------------------- Cohen's kappa

COHEN_CASES = [
    # 10 items; both 0: 4, both 1: 3, a=0/b=1: 2, a=1/b=0: 1.
    # p_o = 7/10; a: 6x0 4x1, b: 5x0 5x1 -> p_e = .6*.5 + .4*.5 = .5; kappa = (.7-.5)/.5 = .4
    ("2x2 hand table", [0, 0, 0, 0, 1, 1, 1, 0, 0, 1], [0, 0, 0, 0, 1, 1, 1, 1, 1, 0], None, None, 0.4),
    ("perfect agreement", [0, 1, 2, 1, 0], [0, 1, 2, 1, 0], None, None, 1.0),
    # p_o = 0, p_e = .5*.5 + .5*.5 = .5 -> kappa = -1
    ("systematic disagreement", [0, 1, 0, 1], [1, 0, 1, 0], None, None, -1.0),
    # 3 labels, uniform marginals: p_o = 1/3, p_e = 3 * 1/9 = 1/3 -> kappa = 0
    ("chance level", [0, 1, 2], [0, 2, 1], None, None, 0.0),
    # linear weights |i-j|: observed disagreement (0+1+1)/3 = 2/3;
    # expected = (1/9) * sum|i-j| over 3x3 = 8/9 -> kappa = 1 - (2/3)/(8/9) = 0.25
    ("linear weights", [0, 1, 2], [0, 2, 1], None, "linear", 0.25),
    # quadratic weights (i-j)^2: observed 2/3; expected (1/9)*12 = 4/3 -> kappa = 1 - 0.5 = 0.5
    ("quadratic weights", [0, 1, 2], [0, 2, 1], None, "quadratic", 0.5),
    # two different constant raters: p_o = 0, p_e = 0 -> kappa = 0 (defined)
    ("constant, different labels", [0, 0], [1, 1], None, None, 0.0),
    # an unused label in `labels` changes nothing unweighted
    ("unused label", [0, 0, 0, 0, 1, 1, 1, 0, 0, 1], [0, 0, 0, 0, 1, 1, 1, 1, 1, 0], [0, 1, 2], None, 0.4),
]


@pytest.mark.parametrize(("name", "a", "b", "labels", "weights", "expected"), COHEN_CASES)
def test_cohen_kappa_hand_tables(name: str, a, b, labels, weights, expected: float) -> None:
    assert cohen_kappa(a, b, labels=labels, weights=weights) == pytest.approx(expected, abs=1e-12), name


@pytest.mark.parametrize(
    ("a", "b"),
    [([1, 1, 1], [1, 1, 1]), ([], [])],
    ids=["one label only", "empty"],
)
def test_cohen_kappa_undefined_is_nan(a: list[int], b: list[int]) -> None:
    assert math.isnan(cohen_kappa(a, b, labels=[0, 1], weights="linear"))
    assert math.isnan(cohen_kappa(a, b))


def test_cohen_kappa_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        cohen_kappa([0, 1], [0])
    with pytest.raises(ValueError, match=r"labels \[3\] are not in"):
        cohen_kappa([0, 3], [0, 1], labels=[0, 1, 2])
    with pytest.raises(ValueError, match="weights"):
        cohen_kappa([0, 1], [0, 1], weights="cubic")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- pairwise Cohen


def brute_force_pairs(
    ratings: list[Rating], min_shared: int, weights: str | None = None
) -> dict[tuple[str, str], tuple[int, float]]:
    """Every rater pair, intersected the slow way, kappa straight from scikit-learn."""
    by_rater: dict[str, dict[str, int]] = defaultdict(dict)
    for r in ratings:
        by_rater[r.rater_id].setdefault(r.item_id, r.label)
    seen = sorted({r.label for r in ratings})
    labels = seen if weights is None else list(range(seen[0], seen[-1] + 1))
    out = {}
    for a, b in itertools.combinations(sorted(by_rater), 2):
        shared = sorted(by_rater[a].keys() & by_rater[b].keys())
        if len(shared) >= min_shared:
            ya = [by_rater[a][i] for i in shared]
            yb = [by_rater[b][i] for i in shared]
            out[(a, b)] = (len(shared), float(cohen_kappa_score(ya, yb, labels=labels, weights=weights)))
    return out


@pytest.mark.parametrize("weights", [None, "linear", "quadratic"])
def test_pairwise_matches_brute_force_on_random_data(weights: str | None) -> None:
    rng = random.Random(7)
    ratings = [
        Rating(f"i{i}", f"r{r}", rng.choice([0, 1, 1, 2, 4]))
        for i in range(60)
        for r in range(12)
        if rng.random() < 0.5
    ]
    expected = brute_force_pairs(ratings, min_shared=12, weights=weights)
    got = {(p.rater_a, p.rater_b): (p.n, p.kappa) for p in pairwise_cohen(ratings, 12, weights)}  # type: ignore[arg-type]
    assert got.keys() == expected.keys() and got
    for pair, (n, kappa) in expected.items():
        assert got[pair][0] == n
        assert got[pair][1] == pytest.approx(kappa, abs=1e-12)


def test_pairwise_degenerate_pairs() -> None:
    # r0 and r1 both say 1 on every shared item: kappa undefined, kept as NaN.
    # r0 and r2 use two different constant labels: kappa 0 (p_o = p_e = 0).
    pairs = pairwise_cohen(table({"x": [1, 1, 0], "y": [1, 1, 0]}), min_shared=2)
    kappas = {(p.rater_a, p.rater_b): p.kappa for p in pairs}
    assert math.isnan(kappas[("r0", "r1")])
    assert kappas[("r0", "r2")] == 0.0
    with pytest.raises(ValueError, match=r"labels \[0\] are not in"):
        pairwise_cohen(table({"x": [1, 1, 0]}), min_shared=1, labels=[1, 2])


def test_pairwise_is_sorted_by_shared_items() -> None:
    ratings = table({"x": [0, 1, 1], "y": [0, 1, 0], "z": [1, 1]})
    pairs = pairwise_cohen(ratings, min_shared=1)
    # r0-r1 share x, y, z; r0-r2 and r1-r2 share x, y.
    assert [(p.rater_a, p.rater_b, p.n) for p in pairs] == [("r0", "r1", 3), ("r0", "r2", 2), ("r1", "r2", 2)]
    with pytest.raises(ValueError, match="min_shared"):
        pairwise_cohen(ratings, min_shared=0)


def test_weighted_pairwise_uses_the_full_integer_scale() -> None:
    # Labels 0, 1, 3 are used; 2 is not. Linear weights count positions on the scale, so the
    # default scale must be 0..3, otherwise 1 vs 3 would count as a neighbouring grade.
    a, b = [0, 1, 3, 3, 0, 1, 3], [1, 3, 3, 0, 0, 1, 1]
    ratings = [Rating(f"i{k}", "A", x) for k, x in enumerate(a)] + [
        Rating(f"i{k}", "B", y) for k, y in enumerate(b)
    ]
    (pair,) = pairwise_cohen(ratings, min_shared=2, weights="linear")
    full = cohen_kappa(a, b, labels=[0, 1, 2, 3], weights="linear")
    assert pair.kappa == pytest.approx(full)
    assert pair.kappa != pytest.approx(cohen_kappa(a, b, labels=[0, 1, 3], weights="linear"))


def test_pairwise_on_crowd_data_equals_sklearn(crowd: list[Rating]) -> None:
    pairs = pairwise_cohen(crowd, min_shared=30)
    assert len(pairs) == 1044  # README: "hundreds of pairs share >= 30 items"
    assert all(p.n >= 30 for p in pairs)
    # Independent path: the raw JSON, not judges.gate1_io.
    by_rater: dict[str, dict[str, int]] = defaultdict(dict)
    for line in CROWD.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        by_rater[rec["rater_id"]][rec["item_id"]] = rec["label"]
    sample = pairs[:5] + random.Random(3).sample(pairs, 10) + pairs[-3:]
    for p in sample:
        shared = sorted(by_rater[p.rater_a].keys() & by_rater[p.rater_b].keys())
        assert len(shared) == p.n
        ya = [by_rater[p.rater_a][i] for i in shared]
        yb = [by_rater[p.rater_b][i] for i in shared]
        assert p.kappa == pytest.approx(cohen_kappa_score(ya, yb), abs=1e-12), (p.rater_a, p.rater_b)


def test_summarise_pairs_ignores_undefined_kappas() -> None:
    from judges.agreement import PairAgreement

    pairs = [
        PairAgreement("a", "b", 30, 0.2),
        PairAgreement("a", "c", 90, 0.6),
        PairAgreement("b", "c", 40, math.nan),
    ]
    s = summarise_pairs(pairs)
    assert (s.n_pairs, s.n_undefined) == (3, 1)
    assert s.median == pytest.approx(0.4) and s.mean == pytest.approx(0.4)
    assert s.weighted_mean == pytest.approx((0.2 * 30 + 0.6 * 90) / 120)  # = 0.5
    assert (s.min, s.max) == (0.2, 0.6)
    assert math.isnan(summarise_pairs([]).median)


# --------------------------------------------------------------------------- Fleiss' kappa

FLEISS_CASES = [
    # P_i: [0,0,0] -> 1; [0,0,1] -> 2/6; [1,1,0] -> 2/6 => observed = 5/9.
    # pooled: 6 zeros, 3 ones of 9 -> expected = (2/3)^2 + (1/3)^2 = 5/9 => kappa = 0.
    ("three raters", {"a": [0, 0, 0], "b": [0, 0, 1], "c": [1, 1, 0]}, 5 / 9, 5 / 9, 0.0, 3, 9),
    # Varying n; the single-rating item d is skipped.
    # P_i: [0,0] -> 1; [1,1,1] -> 1; [0,1,1,1] -> 3*2/(4*3) = 1/2 => observed = 5/6.
    # pooled over 9 ratings: 3 zeros, 6 ones -> expected 1/9 + 4/9 = 5/9.
    # kappa = (5/6 - 5/9) / (4/9) = (5/18) / (8/18) = 5/8.
    (
        "varying ratings per item",
        {"a": [0, 0], "b": [1, 1, 1], "c": [0, 1, 1, 1], "d": [0]},
        5 / 6,
        5 / 9,
        0.625,
        3,
        9,
    ),
    ("perfect agreement", {"a": [0, 0, 0], "b": [1, 1], "c": [2, 2, 2, 2]}, 1.0, None, 1.0, 3, 9),
    # every item split 0/1 between two raters: observed 0, expected .5 -> kappa -1
    ("systematic disagreement", {"a": [0, 1], "b": [1, 0], "c": [0, 1]}, 0.0, 0.5, -1.0, 3, 6),
]


@pytest.mark.parametrize(("name", "rows", "observed", "expected", "kappa", "items", "n"), FLEISS_CASES)
def test_fleiss_kappa_hand_tables(name, rows, observed, expected, kappa, items, n) -> None:
    result = fleiss_kappa(table(rows))
    assert result.observed == pytest.approx(observed), name
    if expected is not None:
        assert result.expected == pytest.approx(expected), name
    assert result.kappa == pytest.approx(kappa), name
    assert (result.items_used, result.ratings_used) == (items, n)


def test_fleiss_kappa_degenerate() -> None:
    assert math.isnan(fleiss_kappa(table({"a": [1, 1], "b": [1, 1, 1]})).kappa)  # expected agreement 1
    with pytest.raises(ValueError, match="at least two ratings"):
        fleiss_kappa(table({"a": [1], "b": [0]}))


def test_fleiss_kappa_on_crowd_data_matches_reference(crowd: list[Rating]) -> None:
    result = fleiss_kappa(crowd)
    assert round(result.kappa, 4) == 0.2918
    assert round(result.observed, 4) == 0.6459
    assert round(result.expected, 4) == 0.5
    assert (result.items_used, result.ratings_used) == (1683, 25961)  # stats.json "inter_rater"


# --------------------------------------------------------------------------- Krippendorff's alpha


def nominal_alpha(ratings: list[Rating]) -> float:
    """Own nominal alpha from the coincidence matrix, to cross-check the package.

    o_ck = sum over items u of n_uc * (n_uk - [c == k]) / (m_u - 1), items with m_u >= 2;
    n_c = sum_k o_ck; alpha = 1 - (n - 1) * sum_{c != k} o_ck / sum_{c != k} n_c n_k.
    """
    by_item: dict[str, list[int]] = defaultdict(list)
    for r in ratings:
        by_item[r.item_id].append(r.label)
    coincidence: Counter[tuple[int, int]] = Counter()
    for labels in by_item.values():
        m = len(labels)
        if m < 2:
            continue
        counts = Counter(labels)
        for c, k in itertools.product(counts, repeat=2):
            coincidence[(c, k)] += counts[c] * (counts[k] - (c == k)) / (m - 1)
    n_c: Counter[int] = Counter()
    for (c, _), value in coincidence.items():
        n_c[c] += value
    n = sum(n_c.values())
    observed = sum(v for (c, k), v in coincidence.items() if c != k)
    expected = sum(n_c[c] * n_c[k] for c, k in itertools.permutations(n_c, 2))
    return 1 - (n - 1) * observed / expected


def test_krippendorff_nominal_hand_table() -> None:
    # Same table as the Fleiss "varying" case. Coincidences: [0,0] -> o00 += 2;
    # [1,1,1] -> o11 += 3*2/2 = 3; [0,1,1,1] -> o01 = o10 += 1*3/3 = 1, o11 += 3*2/3 = 2.
    # n0 = 3, n1 = 6, n = 9: alpha = 1 - 8 * 2 / (2 * 3 * 6) = 1 - 16/36 = 5/9.
    ratings = table({"a": [0, 0], "b": [1, 1, 1], "c": [0, 1, 1, 1], "d": [0]})
    assert nominal_alpha(ratings) == pytest.approx(5 / 9)
    assert krippendorff_alpha(ratings, "nominal") == pytest.approx(5 / 9)


def test_krippendorff_nominal_matches_own_on_random_data() -> None:
    rng = random.Random(11)
    ratings = [
        Rating(f"i{i}", f"r{r}", rng.choice([0, 1, 2, 2, 3]))
        for i in range(80)
        for r in range(7)
        if rng.random() < 0.6
    ]
    assert krippendorff_alpha(ratings, "nominal") == pytest.approx(nominal_alpha(ratings), abs=1e-10)


def test_krippendorff_levels_agree_on_binary_labels() -> None:
    # With two labels every metric is the same up to scale, so all levels give the same alpha.
    ratings = table({"a": [0, 0, 1], "b": [1, 1, 1], "c": [0, 1, 0, 0], "d": [1, 1]})
    values = [krippendorff_alpha(ratings, level) for level in ("nominal", "ordinal", "interval")]
    assert values == pytest.approx([values[0]] * 3)
    assert math.isnan(krippendorff_alpha(table({"a": [2, 2], "b": [2, 2]})))
    with pytest.raises(ValueError, match="level"):
        krippendorff_alpha(ratings, "ratio")  # type: ignore[arg-type]


def test_krippendorff_on_crowd_data_matches_own(crowd: list[Rating]) -> None:
    alpha = krippendorff_alpha(crowd, "nominal")
    assert alpha == pytest.approx(nominal_alpha(crowd), abs=1e-10)
    assert round(alpha, 4) == 0.2786
    # and the package on a matrix built independently of judges.agreement
    raters = sorted({r.rater_id for r in crowd})
    items = sorted({r.item_id for r in crowd})
    matrix = np.full((len(raters), len(items)), np.nan)
    row, col = {r: k for k, r in enumerate(raters)}, {i: k for k, i in enumerate(items)}
    for r in crowd:
        matrix[row[r.rater_id], col[r.item_id]] = r.label
    assert alpha == pytest.approx(krippendorff.alpha(reliability_data=matrix, level_of_measurement="nominal"))


# --------------------------------------------------------------------------- verdict

VERDICT_CASES = [
    (1.0, GateThresholds(), "clear"),
    (0.81, GateThresholds(), "clear"),
    (0.8, GateThresholds(), "needs refinement"),  # "clear" needs kappa > 0.8
    (0.7, GateThresholds(), "needs refinement"),
    (0.6, GateThresholds(), "needs refinement"),  # "ambiguous" needs kappa < 0.6
    (0.59, GateThresholds(), "ambiguous"),
    (0.2918, GateThresholds(), "ambiguous"),
    (-0.5, GateThresholds(), "ambiguous"),
    (math.nan, GateThresholds(), "ambiguous"),  # undefined cannot pass a gate
    (0.85, GateThresholds(clear=0.9, ambiguous=0.5), "needs refinement"),
    (0.45, GateThresholds(clear=0.9, ambiguous=0.5), "ambiguous"),
    (0.3, GateThresholds(clear=0.25, ambiguous=0.2), "clear"),
    (0.7, SimpleNamespace(clear=0.65, ambiguous=0.4), "clear"),  # any object with the two floats
]


@pytest.mark.parametrize(("kappa", "thresholds", "expected"), VERDICT_CASES)
def test_verdict_table(kappa: float, thresholds, expected: str) -> None:
    assert verdict(kappa, thresholds) == expected


def test_verdict_default_thresholds_and_validation() -> None:
    assert verdict(0.9) == "clear"
    with pytest.raises(ValueError, match="ambiguous <= clear"):
        GateThresholds(clear=0.5, ambiguous=0.7)
    with pytest.raises(ValueError):
        GateThresholds(clear=1.5)


# --------------------------------------------------------------------------- disputes


def test_disputed_boundaries_hand_table() -> None:
    # x [0,1,1,2]: (0,1) 1*2 = 2, (0,2) 1*1 = 1, (1,2) 2*1 = 2; y [2,3,3]: (2,3) 1*2 = 2;
    # z [1,2]: (1,2) 1; w [4,4]: none. Totals (1,2) 3 on 2 items, (0,1) 2, (2,3) 2, (0,2) 1; sum 8.
    result = disputed_boundaries(table({"x": [0, 1, 1, 2], "y": [2, 3, 3], "z": [1, 2], "w": [4, 4]}))
    assert [(b.label_a, b.label_b, b.disagreeing_pairs, b.items) for b in result] == [
        (1, 2, 3, 2),
        (0, 1, 2, 1),
        (2, 3, 2, 1),
        (0, 2, 1, 1),
    ]
    assert result[0].share == pytest.approx(3 / 8)
    assert [b.adjacent for b in result] == [True, True, True, False]


def test_most_disputed_items_ranking() -> None:
    rows = {
        "two": [0, 1],  # 1 - (1/4 + 1/4) = 0.5
        "twenty": [0] * 10 + [1] * 10,  # 0.5, more ratings -> ranked above "two"
        "lopsided": [0, 0, 0, 1],  # 1 - (9/16 + 1/16) = 0.375
        "three-way": [0, 1, 2],  # 1 - 3/9 = 2/3
        "single": [2],  # one rating: no disagreement to measure, left out
    }
    result = most_disputed_items(table(rows), top=10)
    assert [d.item_id for d in result] == ["three-way", "twenty", "two", "lopsided"]
    assert result[0].disagreement == pytest.approx(2 / 3)
    assert dict(result[1].label_counts) == {0: 10, 1: 10} and result[1].n == 20
    assert [d.item_id for d in most_disputed_items(table(rows), top=2)] == ["three-way", "twenty"]


# --------------------------------------------------------------------------- dedup and report


def test_deduplicate_keeps_first() -> None:
    ratings = [Rating("i", "a", 0), Rating("i", "a", 1), Rating("i", "b", 0), Rating("j", "a", 1)]
    kept, dropped = deduplicate(ratings)
    assert kept == [Rating("i", "a", 0), Rating("i", "b", 0), Rating("j", "a", 1)] and dropped == 1
    # the repeated rating must not count as agreement or disagreement
    assert fleiss_kappa(ratings).observed == 1.0


def test_gate1_report_on_crowd_data(crowd: list[Rating]) -> None:
    report = gate1_report(crowd, min_shared=30, top=5)
    assert (report.n_items, report.n_raters, report.n_ratings, report.duplicates_dropped) == (
        1687,
        788,
        25965,
        0,
    )
    assert report.verdict == "ambiguous" and report.verdict_statistic == "fleiss_kappa"
    assert report.pairwise.n_pairs == len(report.pairs) == 1044
    assert len(report.disputed_items) == 5
    data = report.to_json_dict()
    assert round(data["fleiss_kappa"], 4) == 0.2918
    json.dumps(data, allow_nan=False)


def test_report_json_has_no_nan_when_everyone_agrees() -> None:
    report = gate1_report(table({"a": [1, 1, 1], "b": [1, 1, 1]}), min_shared=1)
    data = report.to_json_dict()
    assert data["fleiss_kappa"] is None and data["krippendorff_alpha"] is None
    assert data["verdict"] == "ambiguous"
    assert all(p["kappa"] is None for p in data["pairs"])
    json.dumps(data, allow_nan=False)


# --------------------------------------------------------------------------- reading JSONL


def test_parse_ratings_ignores_extra_fields_and_blank_lines() -> None:
    lines = [
        '{"item_id": "i1", "rater_id": "a", "label": 3, "source": "team", "seq": 1}\n',
        "\n",
        '{"item_id": "i1", "rater_id": 7, "label": 0}\n',
    ]
    assert parse_ratings(lines) == [Rating("i1", "a", 3), Rating("i1", "7", 0)]


BAD_LINES = [
    ('{"item_id": "i", "rater_id": "a", "label": 1', "not valid JSON"),
    ('["i", "a", 1]', "expected a JSON object"),
    ('{"item_id": "i", "rater_id": "a"}', "missing field(s) 'label'"),
    ('{"rater_id": "a"}', "missing field(s) 'item_id', 'label'"),
    ('{"item_id": "i", "rater_id": "a", "label": "1"}', "field 'label' must be an integer"),
    ('{"item_id": "i", "rater_id": "a", "label": 1.5}', "field 'label' must be an integer"),
    ('{"item_id": "i", "rater_id": "a", "label": true}', "field 'label' must be an integer"),
    ('{"item_id": "", "rater_id": "a", "label": 1}', "field 'item_id' must be a non-empty string"),
    ('{"item_id": "i", "rater_id": null, "label": 1}', "field 'rater_id' must be a non-empty string"),
]


@pytest.mark.parametrize(("bad", "message"), BAD_LINES)
def test_bad_line_error_names_line_and_field(bad: str, message: str) -> None:
    good = '{"item_id": "i", "rater_id": "a", "label": 1}'
    with pytest.raises(RatingsFormatError) as info:
        parse_ratings([good + "\n", "\n", bad + "\n"], source="r.jsonl")
    assert str(info.value).startswith("r.jsonl:3: ")  # blank lines still count in the numbering
    assert message in str(info.value)


def test_load_ratings_file_errors(tmp_path: Path) -> None:
    with pytest.raises(RatingsFormatError, match="cannot read"):
        load_ratings(tmp_path / "missing.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(RatingsFormatError, match="no ratings"):
        load_ratings(empty)
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(RatingsFormatError, match="UTF-8"):
        load_ratings(binary)


def test_load_ratings_reads_bundled_data(crowd: list[Rating]) -> None:
    assert len(crowd) == 25965
    assert Counter(r.label for r in crowd) == {0: 12947, 1: 13018}  # README label distribution
