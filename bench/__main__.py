"""``python -m bench [--only NAME ...] [--quick] [--results-dir DIR]``: run the benchmarks."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.common import RESULTS_DIR, discover, run_benches


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", nargs="+", default=[], metavar="NAME", help="run only these benchmarks")
    parser.add_argument("--quick", action="store_true", help="smaller runs (each under ~30 s)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where <name>.json goes")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run; exit status 1 when a benchmark crashed, 2 for an unknown name, else 0."""
    args = parse_args(argv)
    if args.list:
        found = discover()
        for name, module in sorted(found.benches.items()):
            print(f"{name:<20} {module.__name__}")
        for module_name in sorted(found.broken):
            print(f"{module_name}: broken (does not import)")
        return 0
    return run_benches(only=args.only, quick=args.quick, results_dir=args.results_dir)


if __name__ == "__main__":
    sys.exit(main())
