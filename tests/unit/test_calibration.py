"""Teacher calibration records: sensitivity and specificity counted right, the query bootstrap
behaves, categories fall back to pooled, the file round-trips and is found by teacher version,
and `evalloop gate2` writes one (out-of-fold for the fitted teacher, as-is for others) only from
the policy's golden file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from evalloop.cli import main
from judges.calibration import (
    Graded,
    Source,
    binary_counts,
    build_calibration,
    cluster_bootstrap,
    failure_mode_signals,
)
from judges.embedding_teacher import EmbeddingTeacher
from judges.gate2 import confusion
from judges.golden import GoldenItem, dump_golden, golden_requests, split_golden
from schemas.calibration import (
    BINARY_SIGNALS,
    dump_calibration,
    file_name,
    find_calibration,
    load_calibration,
)
from schemas.policy import Policy

REPO = Path(__file__).resolve().parents[2]
POLICY_FILE = REPO / "policies/product-search.yaml"


pytestmark = pytest.mark.usefixtures("one_blas_thread")


def graded_copy(golden: list[GoldenItem], teacher_grade: Any) -> list[Graded]:
    return [Graded(item, teacher_grade(item)) for item in golden]


def test_sensitivity_and_specificity_are_counted_per_display(
    policy: Policy, golden: list[GoldenItem]
) -> None:
    # The teacher calls every Related (2) item "filter" (0) and is right otherwise.
    graded = graded_copy(golden, lambda item: 0 if item.grade == 2 else item.grade)
    record = build_calibration(graded, policy, "t1", Source("as_is", "test"), ("g.jsonl", "0" * 64), 200)
    filtered = record.signals["filtered_share"]
    related_n = sum(item.grade == 2 for item in golden)
    assert filtered.sensitivity == 1.0  # every truly filtered item is called filtered
    assert filtered.negatives == sum(item.grade >= 2 for item in golden)
    assert filtered.specificity == pytest.approx(1 - related_n / filtered.negatives)
    assert record.signals["related_share"].sensitivity == 0.0
    assert np.asarray(record.confusion).sum() == len(golden)
    assert np.asarray(record.confusion).tolist() == np.sum([c.counts for c in record.cells], axis=0).tolist()


def test_failure_mode_tags_are_calibrated_only_where_golden_carries_them(
    policy: Policy, golden: list[GoldenItem]
) -> None:
    graded = graded_copy(golden, lambda item: item.grade)
    # A teacher that tags off_department exactly where golden does, plus on every grade-1 item.
    tags = {
        g.item.id: [m for m in g.item.failure_modes if m == "off_department"]
        + (["off_department"] if g.item.grade == 1 else [])
        for g in graded
    }
    modes = failure_mode_signals(graded, tags, policy, 100, 0)
    truth = [("off_department" in g.item.failure_modes) for g in graded]
    said = ["off_department" in tags[g.item.id] for g in graded]
    tp = sum(t and s for t, s in zip(truth, said, strict=True))
    tn = sum(not t and not s for t, s in zip(truth, said, strict=True))
    assert modes["off_department"].sensitivity == pytest.approx(tp / sum(truth))
    assert modes["off_department"].sensitivity == 1.0
    specificity = tn / (len(truth) - sum(truth))
    assert modes["off_department"].specificity == pytest.approx(specificity) and specificity < 1.0
    assert "accessory_not_product" not in modes, "no golden positives: nothing to calibrate"
    untagged = [Graded(g.item.model_copy(update={"failure_modes": []}), g.teacher_grade) for g in graded]
    assert failure_mode_signals(untagged, tags, policy, 100, 0) == {}
    record = build_calibration(graded, policy, "t1", Source("as_is", "t"), ("g.jsonl", "0" * 64), 50, 0, tags)
    assert (
        record.for_category("Any", "failure_mode_share:off_department")
        == record.failure_modes["off_department"]
    )


def test_categories_qualify_or_fall_back_to_pooled(policy: Policy, golden: list[GoldenItem]) -> None:
    graded = graded_copy(golden, lambda item: item.grade)
    record = build_calibration(graded, policy, "t1", Source("as_is", "test"), ("g.jsonl", "0" * 64), 50)
    rule = record.category_rule
    for category, signals in record.per_category.items():
        for signal in signals.values():
            assert signal.positives >= rule.min_positives and signal.negatives >= rule.min_negatives
            assert signal.queries >= rule.min_queries
        assert record.for_category(category, "filtered_share") == signals.get(
            "filtered_share", record.signals["filtered_share"]
        )
    assert "Kitchen & Dining" not in record.per_category  # 12 golden items
    assert record.for_category("Kitchen & Dining", "filtered_share") == record.signals["filtered_share"]


def test_query_bootstrap_is_seeded_and_wider_than_binomial_when_queries_differ() -> None:
    # Ten queries whose teachers differ a lot (sensitivity 0.2 .. 1.0): pairs are not independent.
    rows = np.array([[int(20 * s), 20, 18, 20] for s in np.linspace(0.2, 1.0, 10)], dtype=np.int64)
    se = rows[:, 0].sum() / rows[:, 1].sum()
    var_se, var_sp, _ = cluster_bootstrap(rows, 2000, 3, se, 0.9)
    assert cluster_bootstrap(rows, 2000, 3, se, 0.9) == (var_se, var_sp, _)
    assert var_se > 3 * se * (1 - se) / rows[:, 1].sum()
    one_query = cluster_bootstrap(rows[:1], 2000, 3, 0.2, 0.9)
    assert one_query == pytest.approx((0.2 * 0.8 / 20, 0.9 * 0.1 / 20, 0.0))


def test_binary_counts_split_by_query(policy: Policy, golden: list[GoldenItem]) -> None:
    graded = graded_copy(golden, lambda item: item.grade)
    record = build_calibration(graded, policy, "t1", Source("as_is", "test"), ("g.jsonl", "0" * 64), 0)
    displays = {g: policy.display_for(g) for g in policy.grades}
    rows = binary_counts(record.cells, policy.grades, displays, BINARY_SIGNALS["filtered_share"])
    assert len(rows) == len({item.query for item in golden})
    assert rows[:, 1].sum() == sum(item.grade <= 1 for item in golden)
    assert (rows[:, 0] == rows[:, 1]).all()  # a perfect teacher


def test_file_round_trip_and_lookup(tmp_path: Path, policy: Policy, golden: list[GoldenItem]) -> None:
    graded = graded_copy(golden, lambda item: item.grade)
    record = build_calibration(graded, policy, "embedding-v2:abc", Source("as_is", "t"), ("g", "0" * 64), 20)
    path = tmp_path / file_name(record.teacher_version, record.policy_version)
    path.write_text(dump_calibration(record), encoding="utf-8")
    assert ":" not in path.name and load_calibration(path) == record
    found = find_calibration(tmp_path, "embedding-v2:abc", policy.version)
    assert found.record == record and "corrected shares on" in found.message
    missing = find_calibration(tmp_path, "embedding-v2:other", policy.version)
    assert missing.record is None and "no calibration for teacher embedding-v2:other" in missing.message
    path.write_text('{"format": "evalloop-calibration"}', encoding="utf-8")
    broken = find_calibration(tmp_path, "embedding-v2:abc", policy.version)
    assert broken.record is None and "unusable" in broken.message and path.name in broken.message


def test_gate2_writes_the_out_of_fold_record_for_the_fitted_teacher(
    tmp_path: Path, policy: Policy, golden: list[GoldenItem], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["gate2", "--teacher", "embedding", "--calibration-dir", str(tmp_path)]
    assert main(args) in (0, 1)
    assert "calibration: wrote" in capsys.readouterr().err
    teacher = EmbeddingTeacher(policy)
    (written,) = tmp_path.iterdir()
    record = load_calibration(written)
    assert record.source == "out_of_fold" and record.teacher_version == teacher.teacher_version
    assert record.n == len(golden)
    # Independently: out-of-fold grades for fitted items, the teacher's own for canaries.
    out_of_fold = teacher.artifact["cv"]["out_of_fold"]
    canaries = split_golden(golden, policy).canaries
    assert len(out_of_fold) + len(canaries) == len(golden) and canaries
    canary_grades = {j.event_id: j.grade for j in teacher.judge(golden_requests(canaries))}
    predicted = [out_of_fold.get(item.id, canary_grades.get(item.id)) for item in golden]
    expected = confusion([item.grade for item in golden], predicted, policy.grades)
    assert record.confusion == expected.astype(int).tolist()
    committed = REPO / "artifacts/calibration" / written.name
    assert written.read_bytes() == committed.read_bytes(), "refresh it: evalloop gate2 --teacher embedding"


def test_gate2_calibrates_only_on_the_policys_golden_file(
    tmp_path: Path, golden: list[GoldenItem], capsys: pytest.CaptureFixture[str]
) -> None:
    small = tmp_path / "small.jsonl"
    small.write_text(dump_golden(golden[:40]), encoding="utf-8")
    out = tmp_path / "calibration"
    args = [
        "gate2",
        "--teacher",
        "noop",
        "--golden",
        str(small),
        "--bootstrap",
        "10",
        "--calibration-dir",
        str(out),
    ]
    main(args)
    assert "not the policy's golden file" in capsys.readouterr().err and not out.exists()
    data: dict[str, Any] = yaml.safe_load(POLICY_FILE.read_text(encoding="utf-8"))
    data["golden"]["file"] = str(small)
    data["teacher"]["artifact"] = str(REPO / "artifacts/teacher-embedding.json")
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    main([*args, "--policy", str(policy_file)])
    assert "calibration: wrote" in capsys.readouterr().err
    (written,) = out.iterdir()
    record = json.loads(written.read_text(encoding="utf-8"))
    assert record["source"] == "as_is" and record["teacher_version"].startswith("noop")
    fitted_elsewhere = [arg if arg != "noop" else "embedding" for arg in args]
    main([*fitted_elsewhere, "--policy", str(policy_file)])
    assert "fitted on another version of the golden file" in capsys.readouterr().err


def test_an_unwritable_calibration_dir_is_one_line_not_a_traceback(
    tmp_path: Path, golden: list[GoldenItem], capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("", encoding="utf-8")
    args = ["gate2", "--teacher", "noop", "--bootstrap", "10", "--calibration-dir", str(blocker / "sub")]
    assert main(args) == 1  # the gate's own verdict, unchanged
    err = capsys.readouterr().err
    assert "calibration: not written: cannot write" in err and "Traceback" not in err
