"""Benchmark workloads, shared by ``test_bench.py`` (pytest-benchmark) and ``compare.py``.

Every workload is written ONCE against the torch API, as functions taking the module
``lib`` (``jitgrad`` or ``torch``), so the very same code runs on both. The optional
functional peers (JAX, HIPS autograd) have no torch-like API; they get one functional
version of each workload written against ``(numpy-like module, grad API)``.

A workload is exposed as a *case*: ``make_runner(case, libname)`` returns a ``Runner``
whose ``run()`` is the timed part and whose optional ``setup()`` is untimed work that must
be redone before every ``run()`` (e.g. recording the chain that W2-backward differentiates).

Cases (see README.md):

=============  ==============================================================================
W1             tutorial scalar train step (zero_grad, (w*x+b-y)**2, backward, SGD step)
W2-record      record a 10,000-iteration 0-d chain ``x = sin(x)*a + x*0.5`` (40,000 ops)
W2-backward    backward through that chain
W3-1e3         Rosenbrock value + gradient, n = 1,000, float64
W3-1e6         Rosenbrock value + gradient, n = 1,000,000, float64
W4             one SGD step of a 64-128-10 tanh MLP, log-softmax CE, digits batch 64, float32
=============  ==============================================================================
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# -- libraries ------------------------------------------------------------------------------
TORCH_LIKE = ("jitgrad", "torch")
FUNCTIONAL = ("jax", "autograd")
ALL_LIBS = TORCH_LIKE + FUNCTIONAL


def import_lib(name: str):
    """The module for ``name`` (raises ImportError when it isn't installed)."""
    if name == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)  # W3 is float64
        return jax
    return importlib.import_module(name)


_BLAS_LIMIT = None


def limit_blas_threads(n: int) -> None:
    """Cap OpenBLAS (NumPy's, and SciPy's that jitgrad's kernels call) at ``n`` threads.

    With several libraries in one process on a small machine, OpenBLAS's idle threads spin
    against torch's OpenMP threads and inflate whichever lib runs next (here: torch's W4 step
    from 0.3 ms to 100 ms). Sets the environment variable for libraries not loaded yet and
    uses threadpoolctl (a scikit-learn dependency) for the loaded ones."""
    global _BLAS_LIMIT
    os.environ["OPENBLAS_NUM_THREADS"] = str(n)
    try:
        import scipy.linalg  # noqa: F401 - loads SciPy's OpenBLAS now, so the limit reaches it
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    _BLAS_LIMIT = threadpool_limits(n, user_api="blas")


def available_libs(try_import: bool = True) -> list[str]:
    """The libraries of ALL_LIBS installed here (jitgrad first): those that import, or with
    ``try_import=False`` those that are merely found (cheap: imports nothing)."""
    found = []
    for name in ALL_LIBS:
        if importlib.util.find_spec(name) is None:
            continue
        if try_import:
            try:
                import_lib(name)
            except Exception:  # noqa: BLE001 - broken install: skip it
                continue
        found.append(name)
    return found


# -- W1: the tutorial's scalar train step ------------------------------------------------------
def w1_setup(lib):
    x = lib.tensor(3.0)
    w = lib.tensor(4.0, requires_grad=True)
    b = lib.tensor(5.0, requires_grad=True)
    y = lib.tensor(18.0)
    opt = lib.optim.SGD([w, b], lr=0.01)
    return x, w, b, y, opt


def w1_step(lib, state):
    x, w, b, y, opt = state
    opt.zero_grad()
    loss = (w * x + b - y) ** 2
    loss.backward()
    opt.step()
    return loss


# -- W2: a long 0-d chain ------------------------------------------------------------------------
W2_ITERS = 10_000
W2_OPS_PER_ITER = 4  # sin, *a, *0.5, +


def w2_leaves(lib):
    x0 = lib.tensor(0.5, requires_grad=True)
    a = lib.tensor(0.9, requires_grad=True)
    return x0, a


def w2_record(lib, x0, a, iters: int = W2_ITERS):
    x = x0
    for _ in range(iters):
        x = lib.sin(x) * a + x * 0.5
    return x


def w2_backward(lib, out):
    out.backward()


# -- W3: Rosenbrock value + gradient ------------------------------------------------------------
def rosenbrock(lib, x):
    # the same expression for every lib: torch-like tensors and jax/autograd numpy arrays
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


def w3_input(n: int) -> np.ndarray:
    return np.random.default_rng(0).uniform(-2.0, 2.0, n)  # float64


def w3_setup(lib, n: int):
    return lib.tensor(w3_input(n), dtype=lib.float64, requires_grad=True)


def w3_step(lib, x):
    x.grad = None
    f = rosenbrock(lib, x)
    f.backward()
    return f


# -- W4: MLP SGD step on digits ------------------------------------------------------------------
W4_BATCH = 64
W4_HIDDEN = 128
W4_LR = 0.1


def w4_data():
    """Digits, scaled to [0, 1], cut into full batches of 64 (float32 X, int64 y), plus the
    initial parameters (float32) drawn with a fixed seed so every lib starts identically."""
    from sklearn.datasets import load_digits

    digits = load_digits()  # bundled with scikit-learn: no download
    X = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    nb = len(X) // W4_BATCH
    batches = [(X[i * W4_BATCH:(i + 1) * W4_BATCH], y[i * W4_BATCH:(i + 1) * W4_BATCH])
               for i in range(nb)]
    rng = np.random.default_rng(0)
    params = [
        (rng.standard_normal((64, W4_HIDDEN)) * 0.1).astype(np.float32),
        np.zeros(W4_HIDDEN, np.float32),
        (rng.standard_normal((W4_HIDDEN, 10)) * 0.1).astype(np.float32),
        np.zeros(10, np.float32),
    ]
    return batches, params


@dataclass
class W4State:
    params: list
    batches: list
    rows: Any
    i: int = 0


def w4_setup(lib):
    batches, params = w4_data()
    params = [lib.tensor(p, dtype=lib.float32, requires_grad=True) for p in params]
    batches = [(lib.tensor(X, dtype=lib.float32), lib.tensor(y, dtype=lib.int64))
               for X, y in batches]
    return W4State(params, batches, lib.arange(W4_BATCH))


def w4_loss(lib, params, X, y, rows):
    W1, b1, W2, b2 = params
    h = lib.tanh(X @ W1 + b1)
    logits = h @ W2 + b2
    return -(lib.log_softmax(logits, dim=1)[rows, y]).mean()


def w4_step(lib, state: W4State):
    X, y = state.batches[state.i]
    state.i = (state.i + 1) % len(state.batches)
    loss = w4_loss(lib, state.params, X, y, state.rows)
    loss.backward()
    with lib.no_grad():
        for p in state.params:
            p -= W4_LR * p.grad
            p.grad = None
    return loss


# -- functional peers (JAX, HIPS autograd) -------------------------------------------------------
@dataclass
class Functional:
    """What the functional versions need from a peer: a numpy-like module, ``value_and_grad``
    over a tuple argument, ``vjp(f, *args) -> (out, pullback)``, and an optional ``jit``."""

    np: Any
    value_and_grad: Callable
    vjp: Callable
    jit: Callable = lambda f: f
    log_softmax: Callable | None = None


def functional(name: str) -> Functional:
    if name == "jax":
        import_lib("jax")
        import jax
        import jax.numpy as jnp

        return Functional(jnp, jax.value_and_grad, jax.vjp, jax.jit,
                          lambda z: jax.nn.log_softmax(z, axis=1))
    if name == "autograd":
        import autograd
        import autograd.numpy as anp
        from autograd.scipy.special import logsumexp

        def vjp(f, *args):
            pullback, out = autograd.make_vjp(lambda p: f(*p))(tuple(args))
            return out, pullback

        return Functional(anp, autograd.value_and_grad, vjp,
                          log_softmax=lambda z: z - logsumexp(z, axis=1, keepdims=True))
    raise ValueError(f"no functional version for {name!r}")


def f_w1(fn: Functional):
    x, y, lr = 3.0, 18.0, 0.01

    def loss(p):
        w, b = p
        return (w * x + b - y) ** 2

    vg = fn.value_and_grad(loss)

    @fn.jit
    def step(p):
        value, (gw, gb) = vg(p)
        return (p[0] - lr * gw, p[1] - lr * gb), value

    state = {"p": (fn.np.asarray(4.0), fn.np.asarray(5.0))}

    def run():
        state["p"], value = step(state["p"])
        return value

    return run, state


def f_w2_chain(fn: Functional):
    sin = fn.np.sin

    def chain(x0, a):
        x = x0
        for _ in range(W2_ITERS):
            x = sin(x) * a + x * 0.5
        return x

    return chain


def f_w3(fn: Functional, n: int):
    np_ = fn.np
    vg = fn.jit(fn.value_and_grad(lambda x: rosenbrock(np_, x)))
    x = np_.asarray(w3_input(n))
    return lambda: vg(x)


def f_w4(fn: Functional):
    np_ = fn.np
    batches, params = w4_data()
    batches = [(np_.asarray(X), np_.asarray(y)) for X, y in batches]
    rows = np_.arange(W4_BATCH)

    def loss(p, X, y):
        W1, b1, W2, b2 = p
        h = np_.tanh(X @ W1 + b1)
        logits = h @ W2 + b2
        return -np_.mean(fn.log_softmax(logits)[rows, y])

    vg = fn.value_and_grad(loss)

    @fn.jit
    def step(p, X, y):
        value, grads = vg(p, X, y)
        return tuple(q - W4_LR * g for q, g in zip(p, grads, strict=True)), value

    state = {"p": tuple(np_.asarray(q) for q in params), "i": 0}

    def run():
        X, y = batches[state["i"]]
        state["i"] = (state["i"] + 1) % len(batches)
        state["p"], value = step(state["p"], X, y)
        return value

    return run


# -- runners ---------------------------------------------------------------------------------------
CASES = ("W1", "W2-record", "W2-backward", "W3-1e3", "W3-1e6", "W4")

GOALS = {  # torch time / jitgrad time must be at least this
    "W1": 3.0,
    "W2-record": 2.0,
    "W2-backward": 50.0,
    "W3-1e3": 2.0,
    "W3-1e6": 1.2,
    "W4": 1.0,
}

DESCRIPTIONS = {
    "W1": "tutorial scalar SGD step",
    "W2-record": "0-d chain, record 10k iters (40k ops)",
    "W2-backward": "0-d chain, backward (40k ops)",
    "W3-1e3": "Rosenbrock f+grad, n=1e3, f64",
    "W3-1e6": "Rosenbrock f+grad, n=1e6, f64",
    "W4": "MLP 64-128-10 SGD step, batch 64, f32",
}

OPS_PER_RUN = {"W2-record": W2_ITERS * W2_OPS_PER_ITER, "W2-backward": W2_ITERS * W2_OPS_PER_ITER}


@dataclass
class Runner:
    """``run()`` is timed; ``setup()`` (if any) is untimed and must precede every ``run()``.
    ``result()`` returns a float summarizing the last run, for cross-lib sanity checks.
    ``number`` is how many ``run()`` calls make one reasonable timing sample."""

    run: Callable[[], Any]
    setup: Callable[[], None] | None = None
    result: Callable[[], float] = lambda: float("nan")
    number: int = 1
    extra: dict = field(default_factory=dict)


def _to_float(v) -> float:
    return float(np.asarray(v.detach() if hasattr(v, "detach") else v))


def make_runner(case: str, libname: str) -> Runner:
    """The runner of ``case`` for library ``libname`` (raises ImportError if absent)."""
    lib = import_lib(libname)
    if libname in TORCH_LIKE:
        return _torch_like_runner(case, lib)
    return _functional_runner(case, functional(libname))


def _torch_like_runner(case: str, lib) -> Runner:
    last: dict = {}
    if case == "W1":
        state = w1_setup(lib)

        def run():
            last["v"] = w1_step(lib, state)

        return Runner(run, result=lambda: _to_float(state[1]), number=200)
    if case in ("W2-record", "W2-backward"):
        x0, a = w2_leaves(lib)
        if case == "W2-record":
            def run():
                last.clear()  # drop the previous chain before recording a new one
                last["out"] = w2_record(lib, x0, a)

            return Runner(run, result=lambda: _to_float(last["out"]))

        def setup():
            last.clear()
            x0.grad = None
            a.grad = None
            last["out"] = w2_record(lib, x0, a)

        def run():
            w2_backward(lib, last["out"])

        return Runner(run, setup=setup, result=lambda: _to_float(a.grad))
    if case.startswith("W3-"):
        n = int(float(case[3:]))
        x = w3_setup(lib, n)

        def run():
            last["f"] = w3_step(lib, x)

        return Runner(run, result=lambda: _to_float(last["f"]) + _to_float(x.grad.sum()),
                      number=50 if n <= 1000 else 1)
    if case == "W4":
        state = w4_setup(lib)

        def run():
            last["loss"] = w4_step(lib, state)

        return Runner(run, result=lambda: _to_float(state.params[2].sum()), number=20)
    raise ValueError(f"unknown case {case!r}")


def _functional_runner(case: str, fn: Functional) -> Runner:
    last: dict = {}
    if case == "W1":
        run, state = f_w1(fn)
        return Runner(run, result=lambda: _to_float(state["p"][0]), number=200)
    if case in ("W2-record", "W2-backward"):
        chain = f_w2_chain(fn)
        x0, a = fn.np.asarray(0.5), fn.np.asarray(0.9)
        if case == "W2-record":
            def run():
                last.clear()
                last["out"], last["pullback"] = fn.vjp(chain, x0, a)

            return Runner(run, result=lambda: _to_float(last["out"]))

        def setup():
            last.clear()
            last["out"], last["pullback"] = fn.vjp(chain, x0, a)

        def run():
            last["grads"] = last["pullback"](fn.np.ones_like(last["out"]))

        return Runner(run, setup=setup, result=lambda: _to_float(last["grads"][1]))
    if case.startswith("W3-"):
        n = int(float(case[3:]))
        vg = f_w3(fn, n)

        def run():
            last["vg"] = vg()
            if hasattr(last["vg"][1], "block_until_ready"):
                last["vg"][1].block_until_ready()

        return Runner(run, result=lambda: _to_float(last["vg"][0]) + _to_float(last["vg"][1].sum()),
                      number=50 if n <= 1000 else 1)
    if case == "W4":
        run4 = f_w4(fn)
        holder: dict = {}

        def run():
            holder["v"] = run4()
            if hasattr(holder["v"], "block_until_ready"):
                holder["v"].block_until_ready()

        return Runner(run, number=20)
    raise ValueError(f"unknown case {case!r}")


def first_gradient_source(libname: str) -> str:
    """The tutorial's first gradient, as a ``python -c`` program that prints (JSON) how long
    its import, forward and backward took inside the process, and whether the import
    loaded numba."""
    return ("import sys, time\n"
            "t0 = time.perf_counter()\n"
            f"import {libname} as torch\n"
            "t1 = time.perf_counter()\n"
            "numba_loaded = 'numba' in sys.modules\n"
            "x = torch.ones(2, 2, requires_grad=True)\n"
            "out = ((x + 2) * (x + 2) * 3).mean()\n"
            "t2 = time.perf_counter()\n"
            "out.backward()\n"
            "t3 = time.perf_counter()\n"
            "assert abs(float(x.grad[0, 0]) - 4.5) < 1e-6, x.grad\n"
            "import json\n"
            "print(json.dumps({'import': t1 - t0, 'forward': t2 - t1, 'backward': t3 - t2,\n"
            "                  'numba_loaded': numba_loaded}))\n")


def import_time_source(module: str) -> str:
    """A ``python -c`` program printing (JSON) how long ``import module`` takes, in seconds,
    and whether numba got imported by it."""
    return ("import sys, time\n"
            "t0 = time.perf_counter()\n"
            f"import {module}\n"
            "t = time.perf_counter() - t0\n"
            "import json\n"
            "print(json.dumps({'time': t, 'numba_loaded': 'numba' in sys.modules}))\n")


def per_op(case: str, seconds: float) -> float | None:
    ops = OPS_PER_RUN.get(case)
    return None if ops is None else seconds / ops



def smoke(case: str, libname: str, runs: int = 3) -> float:
    """Run ``case`` ``runs`` times untimed (setup included); the result afterwards. Used in
    a subprocess before a pytest benchmark, so a crash there can't take pytest down."""
    runner = make_runner(case, libname)
    for _ in range(runs):
        if runner.setup is not None:
            runner.setup()
        runner.run()
    return runner.result()
