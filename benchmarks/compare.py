"""Side-by-side timings of jitgrad and its installed peers, printed as one aligned table.

    python benchmarks/compare.py [--quick] [--json out.json] [--plot out.png] [--no-startup]

This is ``python -m jitgrad bench`` (see :mod:`jitgrad.bench`, where the workloads and the
timing live) with the startup numbers on by default: ``import jitgrad`` minus ``import
numba`` (goal <= 0.2 s) and the wall time of a fresh process computing the tutorial's first
gradient with a warm Numba cache (goal < 1 s), each measured in fresh processes.
"""
from __future__ import annotations

import sys

from jitgrad.bench import _child  # noqa: F401 - test_bench.py times fresh processes with it
from jitgrad.bench import main as _bench_main


def main(argv: list[str] | None = None) -> int:
    return _bench_main(argv, prog="benchmarks/compare.py", startup_default=True)


if __name__ == "__main__":
    sys.exit(main())
