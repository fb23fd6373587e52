"""Gate 2 scoring equals sklearn, the cluster bootstrap behaves, the report counts errors apart,
and `evalloop gate2` prints one JSON object and exits 1 under the bar."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from sklearn.metrics import cohen_kappa_score
from threadpoolctl import threadpool_limits

from evalloop.cli import main
from judges.base import error_judgment, ok_judgment
from judges.gate2 import (
    Weights,
    cluster_bootstrap_ci,
    confusion,
    gate2_report,
    kappa,
    kappa_from_confusion,
)
from judges.golden import GoldenItem, dump_golden, golden_request, load_golden
from schemas.judgments import Judgment
from schemas.policy import Policy, load_policy

REPO = Path(__file__).resolve().parents[2]
POLICY_FILE = REPO / "policies/product-search.yaml"
GRADES = [0, 1, 2, 3, 4]


@pytest.fixture(scope="module", autouse=True)
def one_blas_thread() -> Iterator[None]:
    # MiniLM's matmuls are small: on a busy CI box OpenBLAS threads only contend (20x slower
    # measured with load ~10 on 2 cores); one thread keeps the embedding-heavy tests fast.
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(POLICY_FILE)


@pytest.fixture(scope="module")
def golden() -> list[GoldenItem]:
    return load_golden(REPO / "data/wands/golden.jsonl")


def noisy(truth: list[int], rng: np.random.Generator, flip: float) -> list[int]:
    return [int(rng.choice(GRADES)) if rng.random() < flip else t for t in truth]


@pytest.mark.parametrize("weights", [None, "linear", "quadratic"])
@pytest.mark.parametrize("flip", [0.0, 0.3, 0.9])
def test_kappa_equals_sklearn(weights: Weights, flip: float) -> None:
    rng = np.random.default_rng(7)
    truth = [int(g) for g in rng.choice([0, 2, 4], size=300)]
    predicted = noisy(truth, rng, flip)
    expected = cohen_kappa_score(truth, predicted, labels=GRADES, weights=weights)
    assert kappa(truth, predicted, GRADES, weights) == pytest.approx(expected)
    assert kappa_from_confusion(confusion(truth, predicted, GRADES), weights) == pytest.approx(expected)


def test_kappa_undefined_is_none() -> None:
    assert kappa([2, 2, 2], [2, 2, 2], GRADES, "quadratic") is None
    assert kappa([], [], GRADES, None) is None


def test_confusion_rows_are_golden() -> None:
    matrix = confusion([0, 0, 4], [0, 2, 4], GRADES)
    assert matrix[0, 0] == 1 and matrix[0, 2] == 1 and matrix[4, 4] == 1 and matrix.sum() == 3


def test_cluster_bootstrap_ci_contains_point_and_is_seeded() -> None:
    rng = np.random.default_rng(3)
    truth = [int(g) for g in rng.choice([0, 2, 4], size=400)]
    predicted = noisy(truth, rng, 0.4)
    groups = [f"q{i % 12}" for i in range(400)]
    point = kappa(truth, predicted, GRADES, "quadratic")
    ci = cluster_bootstrap_ci(truth, predicted, groups, GRADES, "quadratic", replicates=500, seed=1)
    assert ci is not None and point is not None
    assert ci[0] <= point <= ci[1]
    assert ci[1] - ci[0] > 0.0
    assert ci == cluster_bootstrap_ci(truth, predicted, groups, GRADES, "quadratic", replicates=500, seed=1)
    assert cluster_bootstrap_ci(truth, predicted, ["one"] * 400, GRADES, "quadratic") is None
    assert cluster_bootstrap_ci(truth, predicted, groups, GRADES, "quadratic", replicates=0) is None


def judged(policy: Policy, items: list[GoldenItem], grades: list[int | None]) -> list[Judgment]:
    out = []
    for item, grade in zip(items, grades, strict=True):
        request = golden_request(item)
        if grade is None:
            out.append(error_judgment(request, policy, "test-v1", "embedding failed"))
        else:
            out.append(ok_judgment(request, policy, "test-v1", grade, [], f"graded {grade}"))
    return out


def test_report_counts_errors_apart_and_ranks_worst(policy: Policy, golden: list[GoldenItem]) -> None:
    items = golden[:40]
    grades: list[int | None] = [item.grade for item in items]
    grades[0] = None
    grades[1] = 4 - items[1].grade  # a disagreement of up to 4
    grades[2] = None
    report = gate2_report(items, judged(policy, items, grades), policy, bootstrap=200, seed=0, worst=5)
    assert (report.n_total, report.n, report.errors) == (40, 38, 2)
    assert sum(map(sum, report.confusion)) == 38
    truth = [i.grade for i, g in zip(items, grades, strict=True) if g is not None]
    scored = [g for g in grades if g is not None]
    assert report.weighted_kappa == pytest.approx(
        cohen_kappa_score(truth, scored, labels=GRADES, weights="quadratic")
    )
    assert report.kappa == pytest.approx(cohen_kappa_score(truth, scored, labels=GRADES))
    if items[1].grade != 2:
        assert report.worst[0].id == items[1].id
        assert report.worst[0].golden_reason.startswith(f"{items[1].grade} ")
    assert sum(g.n for g in report.per_category.values()) == 38
    json.dumps(report.to_json_dict(), allow_nan=False)


def test_report_scores_imported_labels_beside_adjudicated_ones(
    policy: Policy, golden: list[GoldenItem]
) -> None:
    items = golden[:200]
    adjudicated = [i for i in items if i.adjudication]
    assert adjudicated, "the committed golden set carries adjudications"
    grades: list[int | None] = [i.original_grade for i in items]  # a teacher that echoes WANDS
    report = gate2_report(items, judged(policy, items, grades), policy, bootstrap=50, seed=0)
    assert report.adjudicated == len(adjudicated) and report.golden_version.endswith("+g2")
    assert report.original is not None and report.original.weighted_kappa == pytest.approx(1.0)
    truth = [i.grade for i in items]
    assert report.weighted_kappa == pytest.approx(
        cohen_kappa_score(truth, [i.original_grade for i in items], labels=GRADES, weights="quadratic")
    )
    assert report.weighted_kappa < 1.0
    plain = [i.model_copy(update={"adjudication": None}) for i in items[:20]]
    unadjudicated = gate2_report(plain, judged(policy, plain, [i.grade for i in plain]), policy, bootstrap=0)
    assert unadjudicated.original is None and unadjudicated.adjudicated == 0


def test_report_fails_when_undefined(policy: Policy, golden: list[GoldenItem]) -> None:
    items = golden[:5]
    report = gate2_report(items, judged(policy, items, [None] * 5), policy)
    assert not report.passed and report.weighted_kappa is None and report.errors == 5


def policy_copy(tmp_path: Path, min_kappa: float, min_pairs: int = 10, min_queries: int = 5) -> Path:
    data: dict[str, Any] = yaml.safe_load(POLICY_FILE.read_text(encoding="utf-8"))
    data["gates"]["gate2"].update(min_kappa=min_kappa, min_pairs=min_pairs, min_queries=min_queries)
    data["teacher"]["artifact"] = str(REPO / "artifacts/teacher-embedding.json")
    path = tmp_path / f"policy-{min_kappa}-{min_pairs}-{min_queries}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def small_golden(tmp_path: Path, golden: list[GoldenItem]) -> Path:
    # Three items of each grade from several queries: enough for a defined kappa, cheap to embed.
    picked = [item for grade in (0, 2, 4) for item in [i for i in golden if i.grade == grade][:4]]
    path = tmp_path / "small.jsonl"
    path.write_text(dump_golden(picked), encoding="utf-8")
    return path


def test_cli_gate2_json_and_exit_codes(
    tmp_path: Path, golden: list[GoldenItem], capsys: pytest.CaptureFixture[str]
) -> None:
    small = small_golden(tmp_path, golden)
    lax, strict = policy_copy(tmp_path, -0.9), policy_copy(tmp_path, 0.99)
    args = ["gate2", "--teacher", "embedding", "--golden", str(small), "--json", "--bootstrap", "200"]
    assert main([*args, "--policy", str(lax)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] + out["errors"] == 12
    assert {"kappa", "weighted_kappa", "ci", "confusion", "per_category", "worst"} <= set(out)
    assert len(out["confusion"]) == 5 and sum(map(sum, out["confusion"])) == out["n"]
    assert main([*args, "--policy", str(strict)]) == 1
    captured = capsys.readouterr()
    assert "min_kappa 0.99" in captured.err
    assert main(["gate2", "--teacher", "embedding", "--golden", str(small), "--policy", str(strict)]) == 1
    assert "Confusion" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("min_pairs", "min_queries", "short"), [(200, 5, "min_pairs 200"), (10, 10, "min_queries 10")]
)
def test_gate2_never_passes_on_too_little_evidence(
    tmp_path: Path,
    golden: list[GoldenItem],
    capsys: pytest.CaptureFixture[str],
    min_pairs: int,
    min_queries: int,
    short: str,
) -> None:
    small = small_golden(tmp_path, golden)  # 12 pairs over 6 queries
    lax = policy_copy(tmp_path, -0.9, min_pairs, min_queries)
    args = ["gate2", "--teacher", "embedding", "--golden", str(small), "--json", "--bootstrap", "50"]
    assert main([*args, "--policy", str(lax)]) == 1
    out = json.loads(capsys.readouterr().out)
    queries = len({item.query for item in load_golden(small)})
    assert out["passed"] is False and out["sufficient"] is False and out["queries"] == queries < 10
    assert out["verdict"].startswith("INSUFFICIENT EVIDENCE") and short in out["verdict"]


def test_cli_gate2_bad_golden_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{}\n", encoding="utf-8")
    assert main(["gate2", "--teacher", "embedding", "--golden", str(bad), "--policy", str(POLICY_FILE)]) == 2
    assert f"{bad}:1" in capsys.readouterr().err


def test_fixed_event_time_keeps_ids_stable(golden: list[GoldenItem]) -> None:
    assert golden_request(golden[0]).event_time == datetime(2024, 6, 1, tzinfo=UTC)
