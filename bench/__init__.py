"""evalloop benchmarks: ``python -m bench [--only NAME ...] [--quick]`` (see bench/common.py).

Each ``bench/bench_<x>.py`` exposes ``NAME`` and ``run(quick) -> BenchResult`` and reports its
figures as ratios against a baseline measured in the same run. Results land in bench/results/.
"""
