"""bench.common: tables, result JSON, timing helpers, discovery and the runner's skip/crash handling."""

from __future__ import annotations

import io
import json
import textwrap
import uuid
from pathlib import Path

import pytest

from bench.common import (
    BenchResult,
    discover,
    format_table,
    format_value,
    load_result,
    machine_info,
    print_result,
    print_table,
    run_benches,
    timed,
    timed_interleaved,
    timings,
)


def test_format_value() -> None:
    assert format_value(None) == "-"
    assert format_value(True) == "yes"
    assert format_value(3.14159) == "3.142"
    assert format_value(123456.7) == "123,457"
    assert format_value(12) == "12"
    assert format_value(123456) == "123,456"
    assert format_value("x") == "x"


def test_table_has_every_column_aligned() -> None:
    table = format_table([{"name": "a", "rate": 1.5}, {"name": "longer", "extra": 2}])
    lines = table.splitlines()
    assert lines[0].split() == ["name", "rate", "extra"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert len({len(line) for line in lines}) == 1  # every line equally wide
    assert lines[3].split() == ["longer", "-", "2"]
    assert format_table([]) == "(no rows)"


def test_print_table_and_result() -> None:
    out = io.StringIO()
    print_table([{"a": 1}], out)
    assert out.getvalue().splitlines()[-1].strip() == "1"
    out = io.StringIO()
    print_result(BenchResult("x", rows=[{"a": 1}], ratios={"x/base": 2.5}, notes=["hi"]), out)
    assert "ratio x/base = 2.5" in out.getvalue() and "note: hi" in out.getvalue()
    out = io.StringIO()
    print_result(BenchResult.skip("gpu", "no GPU here"), out)
    assert "SKIPPED: no GPU here" in out.getvalue()


def test_result_json_round_trip(tmp_path: Path) -> None:
    result = BenchResult(
        "demo",
        rows=[{"batch": 100, "rate": 1.5, "label": "é"}],
        ratios={"a/b": 1.25},
        notes=["n"],
        elapsed_s=1.5,
        quick=True,
        machine=machine_info(),
    )
    path = result.write_json(tmp_path)
    assert path == tmp_path / "demo.json"
    assert load_result(path) == result
    assert json.loads(path.read_text())["ratios"] == {"a/b": 1.25}


def test_machine_info_keys() -> None:
    info = machine_info()
    for key in ("cpu_model", "cores", "ram_gib", "python", "timestamp"):
        assert info[key]


def test_timing_helpers_run_setup_and_warmup() -> None:
    calls: list[str] = []
    assert len(timings(lambda: calls.append("f"), repeats=3, warmup=2, setup=lambda: calls.append("s"))) == 3
    assert calls == ["s", "f"] * 5
    assert timed(lambda: None, repeats=3) >= 0.0
    order: list[str] = []
    medians = timed_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeats=2)
    assert set(medians) == {"a", "b"} and order == ["a", "b"] * 3
    with pytest.raises(ValueError):
        timings(lambda: None, repeats=0)


BENCHES = {
    "__init__.py": "",
    "helper.py": "NAME = 'not-a-bench'\ndef run(quick): raise AssertionError\n",
    "bench_ok.py": """
        from bench.common import BenchResult
        NAME = "ok"
        def run(quick):
            return BenchResult(NAME, rows=[{"quick": quick}], ratios={"x": 2.0})
    """,
    "bench_skip.py": """
        from bench.common import BenchSkipped
        NAME = "skip"
        def run(quick):
            raise BenchSkipped("service down")
    """,
    "bench_skip2.py": """
        from bench.common import BenchResult
        NAME = "skip2"
        def run(quick):
            return BenchResult.skip(NAME, "no GPU")
    """,
    "bench_boom.py": """
        NAME = "boom"
        def run(quick):
            raise RuntimeError("kaboom")
    """,
    "bench_broken.py": "import does_not_exist_anywhere\n",
}


@pytest.fixture
def fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"fakebench_{uuid.uuid4().hex[:8]}"
    package = tmp_path / name
    package.mkdir()
    for filename, source in BENCHES.items():
        (package / filename).write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_discovery_finds_bench_modules_only(fake_package: str) -> None:
    found = discover(fake_package)
    assert sorted(found.benches) == ["boom", "ok", "skip", "skip2"]
    assert list(found.broken) == [f"{fake_package}.bench_broken"]
    assert "does_not_exist_anywhere" in found.broken[f"{fake_package}.bench_broken"]


def test_discovery_of_the_real_benches() -> None:
    found = discover("bench")
    assert {"alerts", "windows"} <= set(found.benches)


def test_runner_reports_skips_and_crashes(fake_package: str, tmp_path: Path) -> None:
    out = io.StringIO()
    results = tmp_path / "results"
    assert run_benches(package=fake_package, results_dir=results, quick=True, out=out) == 1
    text = out.getvalue()
    assert "SKIPPED: service down" in text and "SKIPPED: no GPU" in text
    assert "boom: CRASHED" in text and "kaboom" in text and "bench_broken: CRASHED on import" in text
    assert sorted(p.name for p in results.iterdir()) == ["ok.json", "skip.json", "skip2.json"]
    ok = load_result(results / "ok.json")
    assert ok.rows == [{"quick": True}] and ok.quick and ok.machine["cores"] >= 1
    assert load_result(results / "skip.json").skipped == "service down"


def test_runner_only(fake_package: str, tmp_path: Path) -> None:
    out = io.StringIO()
    assert run_benches(only=["ok", "skip"], package=fake_package, results_dir=tmp_path, out=out) == 0
    assert "boom" not in out.getvalue()
    assert run_benches(only=["nope"], package=fake_package, results_dir=tmp_path, out=out) == 2
