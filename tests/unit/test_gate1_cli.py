"""Tests for `evalloop gate1` through the real CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evalloop.cli import build_parser, main

CROWD = Path(__file__).resolve().parents[2] / "data" / "trec2011crowd" / "raters.jsonl"


def write_ratings(path: Path, rows: dict[str, list[int]]) -> str:
    """Item id -> labels of raters r0, r1, ... as a JSONL file; returns its path."""
    lines = [
        json.dumps({"item_id": item, "rater_id": f"r{k}", "label": label})
        for item, labels in rows.items()
        for k, label in enumerate(labels)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture
def small(tmp_path: Path) -> str:
    # Fleiss observed 5/6, expected 5/9 -> kappa 0.625 (worked out in test_agreement.py).
    return write_ratings(tmp_path / "small.jsonl", {"a": [0, 0], "b": [1, 1, 1], "c": [0, 1, 1, 1], "d": [0]})


def test_gate1_is_discovered() -> None:
    args = build_parser().parse_args(["gate1", "x.jsonl"])
    assert args.command == "gate1" and args.min_shared == 30 and args.weights == "none"


def test_json_on_crowd_data(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gate1", str(CROWD), "--json"]) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)  # the whole of stdout is one JSON object
    assert {"fleiss_kappa", "krippendorff_alpha", "verdict", "pairs", "fleiss", "pairwise"} <= data.keys()
    assert round(data["fleiss_kappa"], 4) == 0.2918
    assert round(data["fleiss"]["observed"], 4) == 0.6459
    assert round(data["fleiss"]["expected"], 4) == 0.5
    assert round(data["krippendorff_alpha"], 4) == 0.2786
    assert data["verdict"] == "ambiguous"
    assert (data["n_items"], data["n_raters"], data["n_ratings"]) == (1687, 788, 25965)
    assert len(data["pairs"]) == data["pairwise"]["n_pairs"] == 1044
    assert all(set(p) == {"rater_a", "rater_b", "n", "kappa"} and p["n"] >= 30 for p in data["pairs"])


def test_table_on_crowd_data(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gate1", str(CROWD), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "verdict            AMBIGUOUS" in out
    assert "Fleiss' kappa      0.2918" in out
    assert "1044 pairs sharing >= 30 items" in out
    assert "0 vs 1" in out


def test_thresholds_change_the_verdict(small: str, capsys: pytest.CaptureFixture[str]) -> None:
    for args, expected in [
        ([], "needs refinement"),  # 0.625 is between 0.6 and 0.8
        (["--clear", "0.6", "--ambiguous", "0.5"], "clear"),
        (["--ambiguous", "0.7"], "ambiguous"),
    ]:
        assert main(["gate1", small, "--json", "--min-shared", "1", *args]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["fleiss_kappa"] == pytest.approx(0.625)
        assert data["verdict"] == expected, args


def test_fail_unless_clear(small: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gate1", small, "--fail-unless-clear"]) == 1
    assert main(["gate1", small, "--fail-unless-clear", "--clear", "0.6", "--ambiguous", "0.5"]) == 0
    capsys.readouterr()


def test_weights_option(small: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gate1", small, "--json", "--min-shared", "1", "--weights", "quadratic"]) == 0
    assert json.loads(capsys.readouterr().out)["pairwise"]["weights"] == "quadratic"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '{"item_id": "i", "rater_id": "a", "label": 1}\n{"item_id": "i", "rater_id": "b"}\n',
            ":2: missing field",
        ),
        ('{"item_id": "i", "rater_id": "a", "label": "x"}\n', ":1: field 'label' must be an integer"),
        ('{"item_id": "i", "rater_id": "a", "label": 1}\n', "no item has at least two ratings"),
    ],
)
def test_bad_input_exits_2(
    tmp_path: Path, content: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    assert main(["gate1", str(path), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("evalloop gate1: error: ") and message in captured.err


def test_missing_file_and_bad_thresholds_exit_2(
    small: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["gate1", str(tmp_path / "nope.jsonl")]) == 2
    assert "cannot read ratings file" in capsys.readouterr().err
    assert main(["gate1", small, "--clear", "0.5", "--ambiguous", "0.7"]) == 2
    assert "ambiguous <= clear" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # argparse rejects it before run()
        main(["gate1", small, "--min-shared", "0"])
    assert info.value.code == 2
