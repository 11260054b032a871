"""pytest-benchmark setup for ``pytest benchmarks/`` (not part of the project's normal test
run: pyproject's ``testpaths`` names only ``tests`` and ``jitgrad``).

- Puts this folder on ``sys.path`` so the tests (and ``--doctest-modules``) import
  ``workloads``.
- Single-threaded by default, as in ``compare.py``: OpenBLAS (NumPy's, and SciPy's that
  jitgrad's kernels call) and torch both get one thread, since on a small busy machine their
  thread pools spin against each other and against other processes. Override with
  ``BENCH_TORCH_THREADS=N`` / ``BENCH_BLAS_THREADS=N`` (0 = the library's default).
- ``lib_available(name)``: whether a peer imports (tests of absent peers are skipped).
- ``jitgrad_smoke(case)``: the case run a few times on jitgrad in a subprocess first, so a
  crashing engine fails one test instead of killing the pytest process.
"""
from __future__ import annotations

import functools
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

BLAS_THREADS = int(os.environ.get("BENCH_BLAS_THREADS", "1"))
TORCH_THREADS = int(os.environ.get("BENCH_TORCH_THREADS", "1"))
if BLAS_THREADS:
    os.environ["OPENBLAS_NUM_THREADS"] = str(BLAS_THREADS)  # before NumPy loads OpenBLAS

import workloads as W  # noqa: E402

if BLAS_THREADS:
    W.limit_blas_threads(BLAS_THREADS)  # in case NumPy was loaded already


@functools.cache
def lib_available(name: str) -> str | None:
    """None if ``name`` imports, else why not."""
    try:
        W.import_lib(name)
    except Exception as exc:  # noqa: BLE001
        return f"{name} not importable: {type(exc).__name__}: {exc}"
    if name == "torch" and TORCH_THREADS:
        import torch

        torch.set_num_threads(TORCH_THREADS)
    return None


@functools.cache
def jitgrad_smoke(case: str) -> str | None:
    """None if ``case`` runs 3 times on jitgrad in a fresh process, else what went wrong."""
    src = f"import workloads; print(workloads.smoke({case!r}, 'jitgrad'))"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [HERE] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    try:
        proc = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True,
                              env=env, cwd=HERE, timeout=300)
    except subprocess.TimeoutExpired:
        return "timed out after 300 s"
    if proc.returncode == 0:
        return None
    how = (f"died with signal {-proc.returncode}" if proc.returncode < 0
           else f"exited with {proc.returncode}")
    tail = "\n".join(proc.stderr.strip().splitlines()[-6:])
    return f"{how}:\n{tail}"
