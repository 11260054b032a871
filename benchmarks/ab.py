"""Two versions of jitgrad side by side in one process: W2's recording (or a W1, W3 or W4
step), interleaved.

On a shared machine the same code's time can move by 2x between processes minutes apart,
so comparing two commits by alternating benchmark runs needs many runs. Here both
versions are imported at once (each commit's ``jitgrad/`` exported under its own package
name), and short W2 chains are recorded with each in turn, so both see the same machine
state; the table gives the per-op time's minimum and percentiles.

    python benchmarks/ab.py 37a0ca7 HEAD
    python benchmarks/ab.py 37a0ca7 HEAD --samples 200 --iters 2500
    python benchmarks/ab.py HEAD~1 HEAD --case W4

For W2 only the recording is timed (the chain is dropped, never differentiated); W1,
W3-1e3 and W4 time whole steps of :mod:`jitgrad.bench`'s workloads (value, backward, update),
``--iters`` steps per sample. The first run of each version compiles its Numba kernels into
a fresh cache next to the exported copy.
"""
from __future__ import annotations

import argparse
import importlib
import io
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def export(revision: str, into: Path) -> str:
    """``revision``'s ``jitgrad/`` as a package of its own under ``into``; its name."""
    sha = subprocess.run(["git", "rev-parse", "--short", revision], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.strip()
    name = f"jitgrad_{sha}"
    archive = subprocess.run(["git", "archive", sha, "jitgrad"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into / sha, filter="data")
    (into / sha / "jitgrad").rename(into / name)
    return name


def chain(torch, iters: int):
    x = torch.tensor(0.5, requires_grad=True)
    a = torch.tensor(0.9, requires_grad=True)
    for _ in range(iters):
        x = torch.sin(x) * a + x * 0.5
    return x


def w2_sample(lib, iters: int) -> float:
    """Seconds per recorded op of one chain."""
    start = time.perf_counter()
    out = chain(lib, iters)
    elapsed = time.perf_counter() - start
    del out
    return elapsed / (4 * iters)


def step_sampler(case: str):
    """``(setup(lib), sample(lib, state, iters))`` for a step workload: seconds per step."""
    from jitgrad import bench

    setup, step = {
        "W1": (bench.w1_setup, bench.w1_step),
        "W3-1e3": (lambda lib: bench.w3_setup(lib, 1000), bench.w3_step),
        "W4": (bench.w4_setup, bench.w4_step),
    }[case]

    def sample(lib, state, iters: int) -> float:
        start = time.perf_counter()
        for _ in range(iters):
            step(lib, state)
        return (time.perf_counter() - start) / iters

    return setup, sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("revisions", nargs=2, help="two git revisions (commits, HEAD, ...)")
    parser.add_argument("--samples", type=int, default=100, help="samples per version (W2: chains)")
    parser.add_argument("--iters", type=int, default=None,
                        help="W2: iterations per chain (4 recorded ops each; default 2500); "
                             "W1, W3-1e3, W4: steps per sample (default 20)")
    parser.add_argument("--case", choices=("W1", "W2", "W3-1e3", "W4"), default="W2",
                        help="the workload (default W2's recording)")
    args = parser.parse_args()
    if args.iters is None:
        args.iters = 2500 if args.case == "W2" else 20
    if args.case != "W2":
        from jitgrad.bench import limit_blas_threads

        limit_blas_threads(1)  # as the bench: OpenBLAS on one thread
    with tempfile.TemporaryDirectory() as folder:
        sys.path.insert(0, folder)
        names = [export(revision, Path(folder)) for revision in args.revisions]
        libs = [importlib.import_module(name) for name in names]
        if args.case == "W2":
            states = [None] * len(libs)

            def sample(lib, state, iters):
                return w2_sample(lib, iters)
        else:
            setup, sample = step_sampler(args.case)
            states = [setup(lib) for lib in libs]
        for lib, state in zip(libs, states):  # warm-up: imports, kernels, the first restarts
            for _ in range(3):
                sample(lib, state, args.iters)
        times: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(args.samples):
            for name, lib, state in zip(names, libs, states):
                times[name].append(sample(lib, state, args.iters))
    if args.case == "W2":
        print(f"W2 recording, ns per op ({args.samples} chains of {4 * args.iters} ops each, "
              "interleaved)")
    else:
        print(f"{args.case}, ns per step ({args.samples} samples of {args.iters} steps each, "
              "interleaved)")
    print("| version | min | 10% | 25% | median |")
    print("|---|---|---|---|---|")
    for revision, name in zip(args.revisions, names):
        ts = sorted(times[name])
        k = len(ts)
        row = [ts[0], ts[k // 10], ts[k // 4], ts[k // 2]]
        print(f"| {revision} ({name}) | " + " | ".join(f"{t * 1e9:.0f}" for t in row) + " |")


if __name__ == "__main__":
    main()
