# %% [markdown]
# # jitgrad next to PyTorch (and JAX, HIPS autograd): the benchmark workloads
#
# `python -m jitgrad bench` times a fixed set of workloads on jitgrad and on every peer
# installed beside it, and prints one table of medians and ratios. This notebook runs the
# same thing from Python (`jitgrad.bench.run`), in its `--quick` setting (about 20 seconds),
# and plots the results.
#
# | case | what one timed run is |
# |---|---|
# | W1 | the tutorial's scalar train step: `zero_grad()`, `loss = (w*x + b - y)**2`, `backward()`, `SGD.step()` |
# | W2-record | recording a 0-d chain of 10,000 × `x = sin(x)*a + x*0.5` (40,000 ops) |
# | W2-backward | `backward()` through that chain |
# | W3-1e3, W3-1e6 | Rosenbrock `sum(100*(x[1:] - x[:-1]**2)**2 + (1 - x[:-1])**2)`, value and gradient, n = 10³ and 10⁶, float64 |
# | W4 | one SGD step of a 64-128-10 tanh MLP with log-softmax cross-entropy, digits batch of 64, float32 |
# | W5-1e4, W5-1e6 | Hessian-vector product of `sum(sin(x) * x**2)`, n = 10⁴ and 10⁶ (each library's best method) |
# | W6-1e6 | Jacobian-vector product of `tanh(x) * exp(-x**2)`, n = 10⁶ (forward mode: `func.jvp` or `forward_ad`, the faster) |
# | W7-chain, W7-rosen | a long scalar program — W2's chain, or a Rosenbrock written as a Python loop over scalars — recorded once by `jitgrad.compile` and replayed (value + gradient) at new inputs; PyTorch has to record it again every time. `--quick` uses programs of ~10k ops instead of ~100k |
#
# Every workload is written **once** against the torch API, as a function of the module
# (`jitgrad` or `torch`), so both libraries run the very same code. JAX and HIPS autograd,
# where installed, get a functional version of each. Times are medians of interleaved
# samples after warm-up runs (Numba compilation, JAX tracing and first calls are not
# timed); by default everything is single-threaded (torch and OpenBLAS get one thread), so
# that the numbers compare the libraries rather than the thread pools.

# %%
# %matplotlib inline
import os

import matplotlib.pyplot as plt
import numpy as np

from jitgrad import bench

# the test suite sets JITGRAD_NOTEBOOK_QUICK=1: then a few cases, one sample each
SMOKE = os.environ.get("JITGRAD_NOTEBOOK_QUICK") == "1"

# %% [markdown]
# ## Running it
#
# `bench.run` measures in a worker process (a crash would cost a row, not the notebook)
# and returns what `python -m jitgrad bench --json out.json` writes. A peer that is not
# installed is not an error: it is listed as such.

# %%
if SMOKE:
    results = bench.run(["W1", "W2-backward", "W3-1e3", "W6-1e6", "W7-chain"], mode="smoke",
                        progress=False)
else:
    results = bench.run(quick=True, progress=False)
print(bench.report(results))

# %% [markdown]
# The ratio column is `torch time / jitgrad time`: above 1, jitgrad is faster. The goal
# column holds the project's targets for each workload (W7's is for the full-size program;
# the quick one is ten times smaller, so jitgrad's fixed cost per replay weighs more).
#
# ## The results as a chart
#
# Left: the median time of one run, per workload and library (log scale). Right: the
# speed-up over PyTorch, with each workload's goal marked.

# %%
bench.plot(results)

# %% [markdown]
# ## Time per recorded operation
#
# Three ways to differentiate a long chain of scalar operations, per operation: recording
# it eagerly (W2-record), sweeping back through the recording (W2-backward: one Numba
# kernel call in jitgrad, one Python-level autograd node per op in PyTorch), and replaying
# a compiled tape (W7-chain: forward values and the reverse sweep, both in Numba).

# %%
labels = {"W2-record": "eager recording\n(W2-record)",
          "W2-backward": "backward sweep\n(W2-backward)",
          "W7-chain": "compiled replay, f + grad\n(W7-chain)"}
rows = {row["case"]: row for row in results["rows"]}
per_op = {}  # lib -> case -> ns per op
for case in labels:
    row = rows.get(case)
    if row is None or not row["available"]:
        continue
    for lib, rec in row["results"].items():
        if "median" in rec:
            per_op.setdefault(lib, {})[case] = rec["median"] / row["ops_per_run"] * 1e9

cases = [c for c in labels if any(c in values for values in per_op.values())]
fig, ax = plt.subplots(figsize=(8, 3.5))
width = 0.8 / max(1, len(per_op))
for i, (lib, values) in enumerate(per_op.items()):
    positions = np.arange(len(cases)) + (i - (len(per_op) - 1) / 2) * width
    heights = [values.get(c, np.nan) for c in cases]
    bars = ax.bar(positions, heights, width, label=lib)
    ax.bar_label(bars, labels=[f"{h:.0f}" if h == h else "" for h in heights], fontsize=8)
ax.set_xticks(np.arange(len(cases)), [labels[c] for c in cases])
ax.set_yscale("log")
ax.set_ylabel("ns per recorded op (log scale)")
ax.set_title("cost per scalar operation")
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## What is in the JSON
#
# One row per workload: its goal, whether jitgrad has the feature it measures, and per
# library the timing samples, their median and the number of runs per sample (or the
# error, or why it was skipped). `peers` lists every library with its status.

# %%
first = results["rows"][0]
print({key: first[key] for key in ("case", "description", "goal", "available", "ratios")})
print({lib: {k: v for k, v in rec.items() if k in ("median", "number", "samples")}
       for lib, rec in first["results"].items()})
print(results["peers"])

# %% [markdown]
# ## Running it yourself
#
# ```bash
# python -m jitgrad bench                      # all workloads, about 1-2 minutes
# python -m jitgrad bench --quick              # about 20 seconds
# python -m jitgrad bench --json out.json --plot out.png
# python -m jitgrad bench --cases W1,W4 --libs jitgrad,torch
# python -m jitgrad bench --help
# ```
#
# `benchmarks/` has the same workloads as a pytest-benchmark suite (`pytest benchmarks/`)
# and `benchmarks/compare.py`, which adds startup times (import, first gradient in a fresh
# process).
