"""The benchmark framework: results, machine info, timing helpers, tables, discovery and the runner.

A benchmark is a module ``bench/bench_<x>.py`` exposing ``NAME: str`` and
``run(quick: bool) -> BenchResult``. ``python -m bench`` discovers them, runs each, prints its
rows as a table and writes ``bench/results/<NAME>.json`` (figures plus ``machine_info()``).

Performance claims are *ratios against a baseline measured in the same run* (``BenchResult.ratios``):
absolute figures depend on the machine and its load; ratios much less so.

A benchmark that cannot run (no GPU, a service down) returns ``BenchResult.skip(...)`` or raises
``BenchSkipped``: it is reported as skipped and the run goes on. A benchmark that raises anything
else is reported as crashed, the run goes on, and the run exits non-zero.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import platform
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MODULE_PREFIX = "bench_"


class BenchSkipped(Exception):
    """Raised by a benchmark that cannot run here; the message is the reason."""


@dataclass
class BenchResult:
    """One benchmark's figures: table rows, headline ratios (vs a same-run baseline), notes."""

    name: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    elapsed_s: float = 0.0
    quick: bool = False
    machine: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def skip(cls, name: str, reason: str) -> BenchResult:
        """A result saying the benchmark could not run, and why."""
        return cls(name=name, skipped=reason)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BenchResult:
        """Inverse of ``to_dict``."""
        return cls(
            name=str(data["name"]),
            rows=[dict(row) for row in data.get("rows", [])],
            ratios={str(k): float(v) for k, v in data.get("ratios", {}).items()},
            notes=[str(note) for note in data.get("notes", [])],
            skipped=data.get("skipped"),
            elapsed_s=float(data.get("elapsed_s", 0.0)),
            quick=bool(data.get("quick", False)),
            machine=dict(data.get("machine", {})),
        )

    def write_json(self, directory: Path = RESULTS_DIR) -> Path:
        """Write ``<directory>/<name>.json``; returns the path."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.name}.json"
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path


def load_result(path: Path) -> BenchResult:
    """Read a result written by ``BenchResult.write_json``."""
    return BenchResult.from_dict(json.loads(path.read_text(encoding="utf-8")))


# --------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return 0.0


def _git_commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def machine_info() -> dict[str, Any]:
    """CPU model, cores, RAM, Python, OS, load average, git commit and a UTC timestamp."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count() or 0,
        "ram_gib": round(_ram_gib(), 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_1m": round(load[0], 2),
        "git_commit": _git_commit(),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }


# --------------------------------------------------------------------------- timing


def timings(
    fn: Callable[[], object],
    repeats: int = 5,
    warmup: int = 1,
    setup: Callable[[], object] | None = None,
) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` (perf_counter), after ``warmup`` untimed calls.

    ``setup`` (untimed) runs before every call, warm-ups included.
    """
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    out: list[float] = []
    for index in range(warmup + repeats):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        if index >= warmup:
            out.append(elapsed)
    return out


def timed(
    fn: Callable[[], object],
    repeats: int = 5,
    warmup: int = 1,
    setup: Callable[[], object] | None = None,
) -> float:
    """Median seconds of ``fn`` over ``repeats`` timed calls (see ``timings``)."""
    return statistics.median(timings(fn, repeats, warmup, setup))


def timed_interleaved(
    fns: Mapping[str, Callable[[], object]],
    repeats: int = 3,
    warmup: int = 1,
    setup: Callable[[], object] | None = None,
) -> dict[str, float]:
    """Median seconds of each of several functions, timed in turn (A B A B ...).

    Interleaving spreads drifting machine load evenly over the candidate and its baseline, which
    matters for ratios on a shared machine.
    """
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for index in range(warmup + repeats):
        for name, fn in fns.items():
            seconds = timings(fn, repeats=1, warmup=0, setup=setup)[0]
            if index >= warmup:
                samples[name].append(seconds)
    return {name: statistics.median(values) for name, values in samples.items()}


# --------------------------------------------------------------------------- tables


def format_value(value: Any) -> str:
    """Cell text: floats to 4 significant digits (thousands separated when large), None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:  # NaN
            return "nan"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10000 else str(value)
    return str(value)


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A plain-text table: columns are every key in order of first appearance."""
    if not rows:
        return "(no rows)"
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    cells = [[format_value(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    header = "  ".join(column.ljust(width) for column, width in zip(columns, widths, strict=True))
    rule = "  ".join("-" * width for width in widths)
    body = ["  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)) for line in cells]
    return "\n".join([header, rule, *body])


def print_table(rows: Sequence[Mapping[str, Any]], out: TextIO | None = None) -> None:
    """Print ``format_table(rows)``."""
    print(format_table(rows), file=out or sys.stdout)


def print_result(result: BenchResult, out: TextIO | None = None) -> None:
    """A result as the runner shows it: title, table, ratios, notes; or the skip message."""
    stream = out or sys.stdout
    print(f"\n== {result.name} ({result.elapsed_s:.1f} s{', quick' if result.quick else ''})", file=stream)
    if result.skipped is not None:
        print(f"SKIPPED: {result.skipped}", file=stream)
        return
    print_table(result.rows, stream)
    for name, value in result.ratios.items():
        print(f"ratio {name} = {value:.3g}", file=stream)
    for note in result.notes:
        print(f"note: {note}", file=stream)


# --------------------------------------------------------------------------- discovery and runner


@dataclass
class Discovered:
    """Benchmark modules by NAME, and modules that failed to import (module name → traceback)."""

    benches: dict[str, ModuleType]
    broken: dict[str, str]


def discover(package: str = "bench") -> Discovered:
    """Import every ``<package>.bench_*`` module exposing ``NAME`` and ``run``."""
    root = importlib.import_module(package)
    found = Discovered(benches={}, broken={})
    for info in sorted(pkgutil.iter_modules(root.__path__), key=lambda i: i.name):
        if not info.name.startswith(MODULE_PREFIX):
            continue
        qualified = f"{package}.{info.name}"
        try:
            module = importlib.import_module(qualified)
        except Exception:
            found.broken[qualified] = traceback.format_exc()
            continue
        name = getattr(module, "NAME", None)
        if not isinstance(name, str) or not callable(getattr(module, "run", None)):
            found.broken[qualified] = "module has no NAME: str or no run(quick) function"
            continue
        found.benches[name] = module
    return found


def run_one(name: str, module: ModuleType, quick: bool) -> BenchResult:
    """Run one benchmark; a BenchSkipped becomes a skipped result (other errors propagate)."""
    start = time.perf_counter()
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    try:
        result = module.run(quick)
    except BenchSkipped as skipped:
        result = BenchResult.skip(name, str(skipped) or "skipped")
    if not isinstance(result, BenchResult):
        raise TypeError(f"{name}.run returned {type(result).__name__}, not BenchResult")
    result.elapsed_s = round(time.perf_counter() - start, 2)
    result.quick = quick
    result.machine = {**machine_info(), "load_avg_1m_before": round(load_before, 2)}
    return result


def run_benches(
    only: Sequence[str] = (),
    quick: bool = False,
    results_dir: Path = RESULTS_DIR,
    package: str = "bench",
    out: TextIO | None = None,
) -> int:
    """Run the chosen benchmarks (all when ``only`` is empty); 0 unless one crashed or is unknown."""
    stream = out or sys.stdout
    found = discover(package)
    unknown = [name for name in only if name not in found.benches]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; known: {sorted(found.benches)}", file=stream)
        return 2
    crashed = [] if only else sorted(found.broken)
    for module_name in crashed:
        print(f"\n== {module_name}: CRASHED on import\n{found.broken[module_name]}", file=stream)
    for name in only or sorted(found.benches):
        try:
            result = run_one(name, found.benches[name], quick)
        except Exception:
            crashed.append(name)
            print(f"\n== {name}: CRASHED\n{traceback.format_exc()}", file=stream)
            continue
        print_result(result, stream)
        print(f"wrote {result.write_json(results_dir)}", file=stream)
    if crashed:
        print(f"\ncrashed: {', '.join(crashed)}", file=stream)
        return 1
    return 0
