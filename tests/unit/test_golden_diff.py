"""``evalloop golden diff``: a regrade, a rewritten reason, an added and a removed item are each
reported, identical files are empty (exit 0), a changed one exits 1, an unreadable one 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from evalloop.cli import main
from judges.golden import dump_golden, load_golden
from judges.golden_diff import diff_golden, format_diff

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "data" / "wands" / "golden.jsonl"


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    items = load_golden(GOLDEN)[:20]
    edited = [item.model_copy() for item in items[1:]]  # the first item removed
    edited[0] = edited[0].model_copy(update={"grade": 3, "label": "Good"})
    edited[1] = edited[1].model_copy(
        update={"reason": "2 Related: a poster bed, but queen", "failure_modes": ["attribute_mismatch"]}
    )
    edited.append(items[0].model_copy(update={"id": "added-item"}))
    directory = tmp_path_factory.mktemp("golden")
    old, new = directory / "old.jsonl", directory / "new.jsonl"
    old.write_text(dump_golden(items), encoding="utf-8")
    new.write_text(dump_golden(edited), encoding="utf-8")
    return old, new


def test_each_kind_of_change_is_reported(versions: tuple[Path, Path]) -> None:
    old, new = (load_golden(path) for path in versions)
    diff = diff_golden(old, new)
    assert diff.added == ["added-item"] and diff.removed == [old[0].id]
    assert [(c.item_id, c.old, c.new) for c in diff.changed("grade")] == [(old[1].id, old[1].grade, 3)]
    assert [c.item_id for c in diff.changed("label")] == [old[1].id]
    assert [c.item_id for c in diff.changed("reason")] == [old[2].id]
    assert [c.item_id for c in diff.changed("failure_modes")] == [old[2].id]
    text = format_diff(diff, "old", "new")
    assert "+1 -1 items" in text and "grade 1" in text and "reason 1" in text
    assert diff_golden(old, old).empty


def test_cli_exit_codes(versions: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    old, new = versions
    assert main(["golden", "diff", str(old), str(old)]) == 0
    assert main(["golden", "diff", str(old), str(new)]) == 1
    assert "→ 3" in capsys.readouterr().out
    assert main(["golden", "diff", str(old), str(old.parent / "missing.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("evalloop golden: error:")
