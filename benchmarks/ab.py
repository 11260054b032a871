"""Two versions of jitgrad side by side in one process: W2's recording, interleaved.

On a shared machine the same code's time can move by 2x between processes minutes apart,
so comparing two commits by alternating benchmark runs needs many runs. Here both
versions are imported at once (each commit's ``jitgrad/`` exported under its own package
name), and short W2 chains are recorded with each in turn, so both see the same machine
state; the table gives the per-op time's minimum and percentiles.

    python benchmarks/ab.py 37a0ca7 HEAD
    python benchmarks/ab.py 37a0ca7 HEAD --samples 200 --iters 2500

Only the recording is timed (the chain is dropped, never differentiated); the first run of
each version compiles its Numba kernels into a fresh cache next to the exported copy.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("revisions", nargs=2, help="two git revisions (commits, HEAD, ...)")
    parser.add_argument("--samples", type=int, default=100, help="chains per version")
    parser.add_argument("--iters", type=int, default=2500,
                        help="iterations per chain (4 recorded ops each)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        sys.path.insert(0, folder)
        names = [export(revision, Path(folder)) for revision in args.revisions]
        libs = [importlib.import_module(name) for name in names]
        for lib in libs:  # warm-up: imports, kernels, the first restarts
            for _ in range(3):
                chain(lib, args.iters)
        times: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(args.samples):
            for name, lib in zip(names, libs):
                start = time.perf_counter()
                out = chain(lib, args.iters)
                times[name].append((time.perf_counter() - start) / (4 * args.iters))
                del out
    print(f"W2 recording, ns per op ({args.samples} chains of {4 * args.iters} ops each, "
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
