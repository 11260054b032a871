"""pytest-benchmark suite: every workload of workloads.py on every installed library.

    pytest benchmarks/                       # all of it (about 1-2 minutes)
    pytest benchmarks/ -k W4                 # one workload, all libs
    pytest benchmarks/ -k jitgrad            # one lib
    pytest benchmarks/ --benchmark-group-by=group --benchmark-columns=median,iqr,rounds

Test ids are ``<case>-<lib>``, e.g. ``test_workload[W1-jitgrad]``; each case is its own
benchmark group, so jitgrad and its peers print side by side. Absent peers (JAX, HIPS
autograd) are skipped. ``benchmarks/compare.py`` gives the ratio table with the goals.
"""
from __future__ import annotations

import os

import pytest
import workloads as W
from conftest import jitgrad_smoke, lib_available

# (rounds, warm-up runs) per case; iterations per round come from Runner.number
ROUNDS = {
    "W1": (30, 2),
    "W2-record": (5, 1),
    "W2-backward": (5, 1),
    "W3-1e3": (30, 2),
    "W3-1e6": (10, 2),
    "W4": (30, 2),
}
SLOW_PEER_ROUNDS = 3  # HIPS autograd on W2: over a second per chain
ALL_PEERS = os.environ.get("BENCH_ALL_PEERS") == "1"

PARAMS = [pytest.param(case, lib, id=f"{case}-{lib}") for case in W.CASES for lib in W.ALL_LIBS]


@pytest.mark.parametrize(("case", "libname"), PARAMS)
def test_workload(benchmark, case, libname):
    why = lib_available(libname)
    if why:
        pytest.skip(why)
    if libname == "jax" and case.startswith("W2") and not ALL_PEERS:
        pytest.skip("eager JAX takes ~10 s per 40k-op chain (set BENCH_ALL_PEERS=1)")
    if libname == "jitgrad":
        failure = jitgrad_smoke(case)
        if failure:
            pytest.fail(f"jitgrad fails {case} in a subprocess smoke run, so it is not run "
                        f"in-process: {failure}", pytrace=False)

    runner = W.make_runner(case, libname)
    rounds, warmup = ROUNDS[case]
    if case.startswith("W2") and libname in W.FUNCTIONAL:
        rounds, warmup = SLOW_PEER_ROUNDS, 1
    for _ in range(warmup):  # Numba compilation, JAX tracing, first-call allocations
        if runner.setup is not None:
            runner.setup()
        runner.run()

    benchmark.group = case
    benchmark.extra_info["lib"] = libname
    benchmark.extra_info["description"] = W.DESCRIPTIONS[case]
    if case in W.OPS_PER_RUN:
        benchmark.extra_info["ops_per_run"] = W.OPS_PER_RUN[case]
    if runner.setup is not None:
        benchmark.pedantic(runner.run, setup=runner.setup, rounds=rounds, iterations=1)
    else:
        benchmark.pedantic(runner.run, rounds=rounds, iterations=runner.number)
    if case in W.OPS_PER_RUN and benchmark.stats is not None:
        benchmark.extra_info["median_ns_per_op"] = (
            benchmark.stats.stats.median / W.OPS_PER_RUN[case] * 1e9)


@pytest.mark.parametrize("libname", ["jitgrad", "torch"])
def test_first_gradient_fresh_process(benchmark, libname):
    """Wall time of a fresh process computing the tutorial's first gradient (warm caches)."""
    why = lib_available(libname)
    if why:
        pytest.skip(why)
    import compare

    src = W.first_gradient_source(libname)
    compare._child(src)  # warm Numba's on-disk cache
    benchmark.group = "startup: first gradient, fresh process"
    benchmark.pedantic(compare._child, args=(src,), rounds=3, iterations=1)


def test_import_jitgrad_minus_numba(benchmark):
    """``import jitgrad`` time minus ``import numba`` time, each timed inside its own fresh
    process. The benchmarked time is the two processes' wall time; the number itself is in
    ``extra_info`` (``--benchmark-json``) and in the test's ``-rP`` output."""
    import statistics

    import compare

    seen = {"jitgrad": [], "numba": []}

    def once():
        seen["jitgrad"].append(compare._child(W.first_gradient_source("jitgrad"))["import"])
        seen["numba"].append(compare._child(W.import_time_source("numba"))["time"])

    benchmark.group = "startup: import jitgrad - import numba (fresh processes; see extra_info)"
    benchmark.pedantic(once, rounds=3, iterations=1)
    jg, nb = statistics.median(seen["jitgrad"]), statistics.median(seen["numba"])
    benchmark.extra_info.update(import_jitgrad_s=jg, import_numba_s=nb, added_s=jg - nb)
    print(f"import jitgrad {jg:.3f} s - import numba {nb:.3f} s = {jg - nb:+.3f} s "
          "(goal <= 0.2 s)")
