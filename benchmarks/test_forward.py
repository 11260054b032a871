"""Forward-mode and second-order workloads, jitgrad next to torch (pytest-benchmark), and a
ratio table when run as a script.

=======  ===========================================================================  ========
case     what one timed run is                                                        goal
=======  ===========================================================================  ========
W5-1e4   Hessian-vector product of ``f(x) = sum(sin(x) * x**2)``, n = 10^4, float64  >= 3x
W5-1e6   the same at n = 10^6                                                         >= 1.5x
W6-1e6   JVP of ``tanh(x) * exp(-x**2)``, n = 10^6, float64                           >= 1.5x
=======  ===========================================================================  ========

jitgrad runs ``jitgrad.func.hvp`` (forward-over-reverse over one recording of ``f``: for
this elementwise ``f``, one generated loop holding tangents, adjoints and their tangents in
registers, ``jitgrad/kernels/elementwise_hvp.py``; the second-order sweep for other
programs) and ``jitgrad.func.jvp`` (one tangent sweep).
torch runs every method it has, and the ratio uses its best: ``torch.func`` (``jvp`` of
``grad``; ``jvp``), double backward, and ``torch.autograd.forward_ad`` for W6.

    .venv/bin/python -m pytest benchmarks/test_forward.py      # pytest-benchmark groups
    .venv/bin/python benchmarks/test_forward.py                # the ratio table
    .venv/bin/python benchmarks/test_forward.py --rounds 30 --torch-threads 2

As in the rest of ``benchmarks/``, torch and OpenBLAS get one thread by default
(``BENCH_TORCH_THREADS``/``BENCH_BLAS_THREADS`` or ``--torch-threads`` to change it).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

GOALS = {"W5-1e4": 3.0, "W5-1e6": 1.5, "W6-1e6": 1.5}
SIZES = {"W5-1e4": 10_000, "W5-1e6": 1_000_000, "W6-1e6": 1_000_000}


def inputs(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal(n), rng.standard_normal(n)


# -- the workloads, per library and method -------------------------------------------------------
def w5(lib, x):
    return (lib.sin(x) * x ** 2).sum()


def w6(lib, x):
    return lib.tanh(x) * lib.exp(-x ** 2)


def jitgrad_methods(case: str, x0: np.ndarray, v0: np.ndarray) -> dict:
    import jitgrad
    from jitgrad import func

    x, v = jitgrad.tensor(x0), jitgrad.tensor(v0)
    if case.startswith("W5"):
        return {"jitgrad hvp": lambda: func.hvp(lambda x: w5(jitgrad, x), (x,), (v,))}
    return {"jitgrad jvp": lambda: func.jvp(lambda x: w6(jitgrad, x), (x,), (v,))[1]}


def torch_methods(case: str, x0: np.ndarray, v0: np.ndarray) -> dict:
    import torch
    import torch.autograd.forward_ad as fwAD

    x, v = torch.tensor(x0), torch.tensor(v0)
    if case.startswith("W5"):
        f = lambda x: w5(torch, x)  # noqa: E731

        def double_backward():
            leaf = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(f(leaf), leaf, create_graph=True)
            return torch.autograd.grad(g, leaf, v)[0]

        return {
            "torch.func jvp(grad)": lambda: torch.func.jvp(torch.func.grad(f), (x,), (v,))[1],
            "torch double backward": double_backward,
        }
    g = lambda x: w6(torch, x)  # noqa: E731

    def forward_ad():
        with fwAD.dual_level():
            return fwAD.unpack_dual(g(fwAD.make_dual(x, v))).tangent

    def double_backward():  # the double-vjp trick: a jvp from two reverse sweeps
        leaf = x.detach().requires_grad_(True)
        y = g(leaf)
        u = torch.zeros_like(y, requires_grad=True)
        (gu,) = torch.autograd.grad(y, leaf, u, create_graph=True)
        return torch.autograd.grad(gu, u, v)[0]

    return {"torch.func jvp": lambda: torch.func.jvp(g, (x,), (v,))[1],
            "torch forward_ad": forward_ad, "torch double backward": double_backward}


def all_methods(case: str, with_torch: bool) -> dict:
    x0, v0 = inputs(SIZES[case])
    methods = jitgrad_methods(case, x0, v0)
    if with_torch:
        methods.update(torch_methods(case, x0, v0))
    return methods


def _array(value) -> np.ndarray:
    return np.asarray(value.detach() if hasattr(value, "detach") else value)


def check_agreement(methods: dict) -> None:
    results = {name: _array(run()) for name, run in methods.items()}
    reference = next(iter(results.values()))
    for name, result in results.items():
        np.testing.assert_allclose(result, reference, rtol=1e-10, atol=1e-12, err_msg=name)


# -- pytest-benchmark -----------------------------------------------------------------------------
def _torch_available() -> bool:
    from conftest import lib_available

    return lib_available("torch") is None


CASE_METHODS = [
    ("W5-1e4", "jitgrad hvp"), ("W5-1e4", "torch.func jvp(grad)"),
    ("W5-1e4", "torch double backward"),
    ("W5-1e6", "jitgrad hvp"), ("W5-1e6", "torch.func jvp(grad)"),
    ("W5-1e6", "torch double backward"),
    ("W6-1e6", "jitgrad jvp"), ("W6-1e6", "torch.func jvp"), ("W6-1e6", "torch forward_ad"),
    ("W6-1e6", "torch double backward"),
]


@pytest.mark.parametrize(("case", "method"), CASE_METHODS,
                         ids=[f"{c}-{m.replace(' ', '_')}" for c, m in CASE_METHODS])
def test_forward_workload(benchmark, case, method):
    uses_torch = method.startswith("torch")
    if uses_torch and not _torch_available():
        pytest.skip("torch is not installed")
    methods = all_methods(case, with_torch=uses_torch)
    if uses_torch:
        check_agreement(methods)
    run = methods[method]
    for _ in range(2):  # Numba compilation, first-call allocations
        run()
    benchmark.group = case
    benchmark.pedantic(run, rounds=20 if case.endswith("1e4") else 8, iterations=1)


# -- the ratio table ------------------------------------------------------------------------------
def best_time(run, rounds: int) -> float:
    for _ in range(2):
        run()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def table(rounds: int) -> str:
    rows = ["| case | jitgrad | best torch (method) | torch / jitgrad | goal |",
            "|---|---|---|---|---|"]
    for case, goal in GOALS.items():
        methods = all_methods(case, with_torch=True)
        check_agreement(methods)
        n = rounds * (10 if case.endswith("1e4") else 1)
        # interleaved rounds: a busy machine slows every method alike
        times = {name: float("inf") for name in methods}
        for _ in range(3):
            for name, run in methods.items():
                times[name] = min(times[name], best_time(run, max(1, n // 3)))
        ours = next(t for name, t in times.items() if name.startswith("jitgrad"))
        best_name, best = min(((name, t) for name, t in times.items()
                               if name.startswith("torch")), key=lambda item: item[1])
        ratio = best / ours
        rows.append(f"| {case} | {ours * 1e3:.3f} ms | {best * 1e3:.3f} ms ({best_name}) | "
                    f"{ratio:.2f}x | >= {goal:g}x {'met' if ratio >= goal else 'not met'} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--torch-threads", type=int,
                        default=int(os.environ.get("BENCH_TORCH_THREADS", "1")))
    args = parser.parse_args(argv)
    import torch

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
          f"{os.cpu_count()} CPUs")
    print(table(args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
