"""``python -m jitgrad bench``: jitgrad's speed next to the autograd engines installed beside it.

    python -m jitgrad bench [--quick] [--json out.json] [--plot out.png]
                            [--cases W1,W4] [--libs jitgrad,torch] [--inprocess] [--startup]

Every workload is written **once** against the torch API, as functions taking the module
``lib`` (``jitgrad`` or ``torch``), so the very same code runs on both. The functional peers
(JAX, HIPS autograd) have no torch-like API; they get one functional version of each
workload, written against ``(numpy-like module, grad API)``. A peer that is not installed is
reported as such (a row of the peers table, ``"not installed"`` in the JSON), never an error.

=============  ==============================================================================
W1             tutorial scalar train step (zero_grad, (w*x+b-y)**2, backward, SGD step)
W2-record      record a 10,000-iteration 0-d chain ``x = sin(x)*a + x*0.5`` (40,000 ops)
W2-backward    backward through that chain
W3-1e3         Rosenbrock value + gradient, n = 1,000, float64
W3-1e6         Rosenbrock value + gradient, n = 1,000,000, float64
W4             one SGD step of a 64-128-10 tanh MLP, log-softmax CE, digits batch 64, float32
W4-nn          one epoch (28 steps) of the same MLP as ``nn.Sequential(nn.Linear, nn.Tanh,
               nn.Linear)``, ``nn.functional.cross_entropy``, ``optim.SGD(momentum=0.9)``
W5-1e4         Hessian-vector product of ``sum(sin(x) * x**2)``, n = 10,000, float64
W5-1e6         the same at n = 1,000,000
W6-1e6         JVP of ``tanh(x) * exp(-x**2)``, n = 1,000,000, float64
W7-chain       W2's chain with 25,000 iterations (100,000 ops) recorded once by
               ``jitgrad.compile``, value + gradient replayed at new inputs; torch re-records
W7-rosen       a Rosenbrock written as a Python loop over 12,500 scalars, the same way
=============  ==============================================================================

W4-nn runs on the torch-like libraries only. W5-W7 measure features
(``jitgrad.func.hvp``/``jvp``, ``jitgrad.compile``) that are checked first: where jitgrad
lacks one, the row says "not available". W5 takes each library's best method (its
functional transform or a double backward), W6 its best forward-mode API (``func.jvp`` or
``autograd.forward_ad``); W7 in ``--quick`` mode runs
programs a tenth of the size (jitgrad's fixed cost per replay then weighs more).

How it times: warm-up runs first (Numba compilation, JAX tracing and first-call allocations
are not timed), then interleaved samples (lib A, lib B, lib A, ... in rotating order, so drift
and noise hit every lib alike); the table shows the median sample. By default every workload
runs in a worker process (one for all of them, a fresh one after a jitgrad error, one per lib
if a worker crashes), so a crash costs one row, not the table. Everything is single-threaded
by default (torch and OpenBLAS get one thread each): on a small busy machine their thread
pools spin against each other and the numbers mean nothing.

The same machinery serves ``benchmarks/compare.py`` and the pytest-benchmark suite in
``benchmarks/``, which import the workloads from here.
"""
from __future__ import annotations

import argparse
import collections
import functools
import gc
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import types
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

        jax.config.update("jax_enable_x64", True)  # W3, W5-W7 are float64
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


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        module = sys.modules.get(name)
        return getattr(module, "__version__", None)


def lib_status(name: str, try_import: bool = True) -> dict:
    """Whether ``name`` can be benchmarked here: ``{"status": "ok", "version": ...}``,
    ``{"status": "not installed"}`` or ``{"status": "not importable", "error": ...}``. With
    ``try_import=False`` only looks for it (cheap: imports nothing)."""
    try:
        found = importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        return {"status": "not installed"}
    if try_import:
        try:
            import_lib(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                return {"status": "not installed"}
            return {"status": "not importable", "error": _error(exc)}
        except Exception as exc:  # noqa: BLE001 - a broken install is reported, not raised
            return {"status": "not importable", "error": _error(exc)}
    return {"status": "ok", "version": _version(name)}



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


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()  # bundled with scikit-learn: no download
    return (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64)


def w4_data():
    """Digits, scaled to [0, 1], cut into full batches of 64 (float32 X, int64 y), plus the
    initial parameters (float32) drawn with a fixed seed so every lib starts identically."""
    X, y = (a.copy() for a in _digits())
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


# -- W4-nn: the same model through nn, a loss function and an optimizer, one epoch --------------
def w4nn_setup(lib):
    """``nn.Sequential(Linear, Tanh, Linear)`` holding W4's initial parameters (torch's
    ``(out, in)`` weight layout), SGD with momentum 0.9, the digits batches as tensors."""
    batches, params = w4_data()
    model = lib.nn.Sequential(lib.nn.Linear(64, W4_HIDDEN), lib.nn.Tanh(),
                              lib.nn.Linear(W4_HIDDEN, 10))
    with lib.no_grad():
        for layer, (weight, bias) in zip((model[0], model[2]), (params[:2], params[2:])):
            layer.weight.copy_(lib.tensor(np.ascontiguousarray(weight.T)))
            layer.bias.copy_(lib.tensor(bias))
    optimizer = lib.optim.SGD(model.parameters(), lr=W4_LR, momentum=0.9)
    batches = [(lib.tensor(X, dtype=lib.float32), lib.tensor(y, dtype=lib.int64))
               for X, y in batches]
    return model, optimizer, batches


def w4nn_epoch(lib, state):
    """One pass over the digits batches: zero_grad, cross_entropy, backward, step."""
    model, optimizer, batches = state
    loss = None
    for X, y in batches:
        optimizer.zero_grad()
        loss = lib.nn.functional.cross_entropy(model(X), y)
        loss.backward()
        optimizer.step()
    return loss


# -- W5: Hessian-vector product ------------------------------------------------------------------
def w5_f(lib, x):
    # lib: a torch-like module, or jax.numpy / autograd.numpy (the same expression works)
    return (lib.sin(x) * x ** 2).sum()


def w5_inputs(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return rng.uniform(-2.0, 2.0, n), rng.standard_normal(n)  # float64


def _func_module(lib):
    return importlib.import_module(f"{lib.__name__}.func")


def w5_hvp_func(lib, x, v):
    """``H(x) @ v`` by the library's functional transforms: jitgrad's ``func.hvp`` (one tangent
    sweep over the recorded gradient), or ``func.jvp(func.grad(f))`` (torch.func, which has
    no ``hvp``): forward-over-reverse either way."""
    func = _func_module(lib)
    f = lambda x: w5_f(lib, x)
    hvp = getattr(func, "hvp", None)
    if hvp is not None:
        return hvp(f, (x,), (v,))
    return func.jvp(func.grad(f), (x,), (v,))[1]


def w5_hvp_double_backward(lib, x, v):
    """``H(x) @ v`` as the gradient of ``<grad f(x), v>``: reverse-over-reverse through
    ``autograd.grad(..., create_graph=True)``. ``x`` requires grad."""
    (g,) = lib.autograd.grad(w5_f(lib, x), x, create_graph=True)
    (hv,) = lib.autograd.grad(g, x, grad_outputs=v)
    return hv


# -- W6: Jacobian-vector product -----------------------------------------------------------------
W6_N = 1_000_000


def w6_g(lib, x):
    return lib.tanh(x) * lib.exp(-x ** 2)


def w6_jvp(lib, x, v):
    """``(g(x), J(x) @ v)`` by forward mode: ``func.jvp`` in jitgrad and in torch."""
    return _func_module(lib).jvp(lambda x: w6_g(lib, x), (x,), (v,))


def w6_jvp_dual(lib, x, v):
    """``(g(x), J(x) @ v)`` with dual numbers: ``autograd.forward_ad``."""
    fwad = importlib.import_module(f"{lib.__name__}.autograd.forward_ad")
    with fwad.dual_level():
        primal, tangent = fwad.unpack_dual(w6_g(lib, fwad.make_dual(x, v)))
    return primal, tangent


# -- W7: one big scalar program, recorded once, replayed for new inputs ---------------------------
W7_SIZES = {  # per mode: (chain iterations, Rosenbrock length)
    "default": (25_000, 12_500),
    "quick": (2_500, 1_250),
    "smoke": (250, 125),
}
W7_ROSEN_OPS_PER_ELEMENT = 10  # 2 selections, x*x, -, **2, *100, 1-, **2, +, +


def w7_rosenbrock_loop(lib, x):
    """Rosenbrock as a Python loop over scalars (``x[i]`` is one op per element)."""
    total = 0.0
    for i in range(x.shape[0] - 1):
        xi, xn = x[i], x[i + 1]
        total = total + 100.0 * (xn - xi * xi) ** 2 + (1.0 - xi) ** 2
    return total


def w7_program(case: str, mode: str) -> tuple[Callable, list[np.ndarray], int]:
    """``(program(lib, *inputs), [inputs for run 0, 1, ...], nominal op count)`` of a W7
    case: the program is written against the torch API, the inputs are float64 arrays."""
    iters, n = W7_SIZES[mode]
    if case == "W7-chain":
        inputs = [[np.array(0.5 + 0.01 * k), np.array(0.9 - 0.01 * k)] for k in range(3)]
        return (lambda lib, x0, a: w2_record(lib, x0, a, iters)), inputs, \
            W2_OPS_PER_ITER * iters
    x = w3_input(n)
    inputs = [[x + 0.01 * k] for k in range(3)]
    return w7_rosenbrock_loop, inputs, W7_ROSEN_OPS_PER_ELEMENT * (n - 1)


def jitgrad_compile() -> Callable:
    """``jitgrad.compile`` (raises ImportError where it doesn't exist)."""
    import jitgrad

    compile_ = getattr(jitgrad, "compile", None)
    if isinstance(compile_, types.ModuleType) or compile_ is None:
        compile_ = getattr(importlib.import_module("jitgrad.compile"), "compile", None)
    if not callable(compile_):
        raise ImportError("jitgrad.compile has no compile()")
    return compile_


# -- functional peers (JAX, HIPS autograd) -------------------------------------------------------
@dataclass
class Functional:
    """What the functional versions need from a peer: a numpy-like module, ``value_and_grad``
    over a tuple argument, ``vjp(f, *args) -> (out, pullback)``, an optional ``jit``, and
    builders ``make_hvp(f) -> (x, v) -> H v`` and ``make_jvp(f) -> (x, v) -> (f(x), J v)``."""

    np: Any
    value_and_grad: Callable
    vjp: Callable
    jit: Callable = lambda f: f
    log_softmax: Callable | None = None
    make_hvp: Callable | None = None
    make_jvp: Callable | None = None


def functional(name: str) -> Functional:
    if name == "jax":
        import_lib("jax")
        import jax
        import jax.numpy as jnp

        return Functional(jnp, jax.value_and_grad, jax.vjp, jax.jit,
                          lambda z: jax.nn.log_softmax(z, axis=1),
                          make_hvp=lambda f: jax.jit(
                              lambda x, v: jax.jvp(jax.grad(f), (x,), (v,))[1]),
                          make_jvp=lambda f: jax.jit(lambda x, v: jax.jvp(f, (x,), (v,))))
    if name == "autograd":
        import autograd
        import autograd.numpy as anp
        from autograd.scipy.special import logsumexp

        def vjp(f, *args):
            pullback, out = autograd.make_vjp(lambda p: f(*p))(tuple(args))
            return out, pullback

        return Functional(anp, autograd.value_and_grad, vjp,
                          log_softmax=lambda z: z - logsumexp(z, axis=1, keepdims=True),
                          make_hvp=autograd.hessian_tensor_product,
                          make_jvp=lambda f: lambda x, v: autograd.make_jvp(f)(x)(v))
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


def f_w2_chain(fn: Functional, iters: int = W2_ITERS):
    sin = fn.np.sin

    def chain(x0, a):
        x = x0
        for _ in range(iters):
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


# -- the cases -----------------------------------------------------------------------------------
CORE_CASES = ("W1", "W2-record", "W2-backward", "W3-1e3", "W3-1e6", "W4")
FEATURE_CASES = ("W4-nn", "W5-1e4", "W5-1e6", "W6-1e6", "W7-chain", "W7-rosen")
CASES = CORE_CASES + FEATURE_CASES
W3_SIZES = {"W3-1e3": 1_000, "W3-1e6": 1_000_000}
W5_SIZES = {"W5-1e4": 10_000, "W5-1e6": 1_000_000}

GOALS = {  # torch time / jitgrad time must be at least this
    "W1": 3.0,
    "W2-record": 2.0,
    "W2-backward": 50.0,
    "W3-1e3": 2.0,
    "W3-1e6": 1.2,
    "W4": 1.0,
    "W4-nn": 1.2,
    "W5-1e4": 3.0,
    "W5-1e6": 1.5,
    "W6-1e6": 1.5,
    "W7-chain": 500.0,
    "W7-rosen": 500.0,
}

DESCRIPTIONS = {
    "W1": "tutorial scalar SGD step",
    "W2-record": "0-d chain, record 10k iters (40k ops)",
    "W2-backward": "0-d chain, backward (40k ops)",
    "W3-1e3": "Rosenbrock f+grad, n=1e3, f64",
    "W3-1e6": "Rosenbrock f+grad, n=1e6, f64",
    "W4": "MLP 64-128-10 SGD step, batch 64, f32",
    "W4-nn": "W4 via nn.Linear/cross_entropy/SGD(momentum), 1 epoch",
    "W5-1e4": "HVP of sum(sin(x)*x**2), n=1e4, f64",
    "W5-1e6": "HVP of sum(sin(x)*x**2), n=1e6, f64",
    "W6-1e6": "JVP of tanh(x)*exp(-x**2), n=1e6, f64",
    "W7-chain": "compiled tape: 0-d chain, f+grad at new inputs",
    "W7-rosen": "compiled tape: scalar-loop Rosenbrock, f+grad",
}

OPS_PER_RUN = {"W2-record": W2_ITERS * W2_OPS_PER_ITER, "W2-backward": W2_ITERS * W2_OPS_PER_ITER}


def ops_per_run(case: str, mode: str = "default") -> int | None:
    """The recorded ops of one run of ``case`` (for per-op times), where that is the point."""
    if case.startswith("W7-"):
        return w7_program(case, mode)[2]
    return OPS_PER_RUN.get(case)


def describe(case: str, mode: str = "default") -> str:
    if case.startswith("W7-"):
        return f"{DESCRIPTIONS[case]} ({ops_per_run(case, mode) // 1000}k ops)"
    return DESCRIPTIONS[case]


def missing_feature(case: str) -> str | None:
    """Why jitgrad can't run ``case`` here (None: it can). W5-W7 need features that are
    looked up, not assumed."""
    try:
        if case.startswith("W5"):
            func = importlib.import_module("jitgrad.func")
            if not hasattr(func, "hvp"):
                return "jitgrad.func.hvp does not exist"
        elif case == "W6-1e6":
            func = importlib.import_module("jitgrad.func")
            if not hasattr(func, "jvp"):
                return "jitgrad.func.jvp does not exist"
        elif case.startswith("W7"):
            jitgrad_compile()
    except Exception as exc:  # noqa: BLE001 - whatever it is, the feature isn't there
        return f"not importable: {_error(exc)}"
    return None


def skip_reason(case: str, libname: str, all_peers: bool = False) -> str | None:
    """Why ``libname`` sits out ``case`` (None: it runs)."""
    if all_peers:
        return None
    if libname == "jax" and case.startswith("W2"):
        return "skipped: eager JAX takes ~10 s per 40k-op chain (use --all-peers)"
    if libname in FUNCTIONAL and case == "W4-nn":
        return "skipped: the case is torch's nn/optim API (W4 is the functional version)"
    if libname in FUNCTIONAL and case.startswith("W7"):
        return ("skipped: jax.jit of a 100k-op unrolled program takes minutes and eager "
                "peers seconds per run (use --all-peers)")
    return None


# -- runners ---------------------------------------------------------------------------------------
@dataclass
class Runner:
    """``run()`` is timed; ``setup()`` (if any) is untimed and must precede every ``run()``.
    ``result()`` returns a float summarizing the last run, for cross-lib sanity checks.
    ``number`` is how many ``run()`` calls make one reasonable timing sample. ``extra``
    holds facts worth reporting (the method chosen, the recording time)."""

    run: Callable[[], Any]
    setup: Callable[[], None] | None = None
    result: Callable[[], float] = lambda: float("nan")
    number: int = 1
    extra: dict = field(default_factory=dict)


def _to_float(v) -> float:
    if hasattr(v, "detach"):
        v = v.detach()
    if hasattr(v, "numpy"):
        v = v.numpy()
    return float(np.asarray(v))


def _sum(v) -> float:
    return _to_float(v.sum() if hasattr(v, "sum") else np.sum(v))


def make_runner(case: str, libname: str, mode: str = "default") -> Runner:
    """The runner of ``case`` for library ``libname`` (raises ImportError if absent)."""
    lib = import_lib(libname)
    if libname in TORCH_LIKE:
        return _torch_like_runner(case, lib, mode)
    return _functional_runner(case, functional(libname), mode)


def _torch_like_runner(case: str, lib, mode: str) -> Runner:
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
    if case in W3_SIZES:
        n = W3_SIZES[case]
        x = w3_setup(lib, n)

        def run():
            last["f"] = w3_step(lib, x)

        return Runner(run, result=lambda: _to_float(last["f"]) + _sum(x.grad),
                      number=50 if n <= 1000 else 1)
    if case == "W4":
        state = w4_setup(lib)

        def run():
            last["loss"] = w4_step(lib, state)

        return Runner(run, result=lambda: _sum(state.params[2]), number=20)
    if case == "W4-nn":
        state = w4nn_setup(lib)

        def run():
            last["loss"] = w4nn_epoch(lib, state)

        return Runner(run, result=lambda: _sum(state[0][2].weight))
    if case in W5_SIZES:
        return next(iter(_w5_runners(case, lib).values()))
    if case == "W6-1e6":
        return next(iter(_w6_runners(lib).values()))
    if case.startswith("W7-"):
        return _w7_runner(case, lib, mode)
    raise ValueError(f"unknown case {case!r}")


def _w5_runners(case: str, lib, mode: str = "default") -> dict[str, Runner]:
    """Both ways a torch-like library computes ``H(x) @ v``: its functional transforms and a
    double backward. Both are timed; the table shows the faster (torch's best method, and
    jitgrad's), the notes both. To save time, ``--quick`` times one method per library:
    jitgrad's ``func.hvp`` (the feature measured) and torch's double backward (1.7-3x faster
    than torch.func's forward-over-reverse in full runs here)."""
    n = W5_SIZES[case]
    x_np, v_np = w5_inputs(n)
    x = lib.tensor(x_np, dtype=lib.float64)
    v = lib.tensor(v_np, dtype=lib.float64)
    x_leaf = lib.tensor(x_np, dtype=lib.float64, requires_grad=True)
    number = 20 if n <= 10_000 else 1
    last: dict = {}

    def functional_hvp():
        last["func"] = w5_hvp_func(lib, x, v)

    def double_backward():
        last["double backward"] = w5_hvp_double_backward(lib, x_leaf, v)

    has_hvp = hasattr(_func_module(lib), "hvp")
    runners = {
        "func.hvp" if has_hvp else "func.jvp(func.grad)":
            Runner(functional_hvp, result=lambda: _sum(last["func"]), number=number),
        "double backward": Runner(double_backward, number=number,
                                  result=lambda: _sum(last["double backward"])),
    }
    if mode != "default":
        return dict([list(runners.items())[0 if has_hvp else 1]])
    return runners


def _w6_runners(lib, mode: str = "default") -> dict[str, Runner]:
    """The two forward-mode APIs of a torch-like library: ``func.jvp`` and the dual numbers
    of ``autograd.forward_ad``. ``--quick`` times ``func.jvp`` only."""
    x_np, v_np = w5_inputs(W6_N)
    x = lib.tensor(x_np, dtype=lib.float64)
    v = lib.tensor(v_np, dtype=lib.float64)
    last: dict = {}

    def functional_jvp():
        last["func.jvp"] = w6_jvp(lib, x, v)

    def dual_numbers():
        last["forward_ad"] = w6_jvp_dual(lib, x, v)

    runners = {"func.jvp": Runner(functional_jvp, result=lambda: _sum(last["func.jvp"][1])),
               "forward_ad": Runner(dual_numbers, result=lambda: _sum(last["forward_ad"][1]))}
    return runners if mode == "default" else {"func.jvp": runners["func.jvp"]}


def make_runners(case: str, libname: str, mode: str = "default") -> dict[str, Runner]:
    """The runners of ``case`` for ``libname``, by method: ``{"": runner}`` where a library
    has one way to run the case; W5 and W6 on torch-like libraries have two (see
    ``_w5_runners`` and ``_w6_runners``): the table shows the faster."""
    if case in W5_SIZES and libname in TORCH_LIKE:
        return _w5_runners(case, import_lib(libname), mode)
    if case == "W6-1e6" and libname in TORCH_LIKE:
        return _w6_runners(import_lib(libname), mode)
    return {"": make_runner(case, libname, mode)}


def _w7_runner(case: str, lib, mode: str) -> Runner:
    """jitgrad: record the program once with ``jitgrad.compile`` (timed apart, reported as
    ``record_s``), then each run replays value and gradient at new inputs. torch: each run
    records the program eagerly at the new inputs and runs backward, the only way it has."""
    program, inputs, _ = w7_program(case, mode)
    last: dict = {"k": 0}

    def next_inputs():
        last["k"] = (last["k"] + 1) % len(inputs)
        return inputs[last["k"]]

    if lib.__name__ == "jitgrad":
        compile_ = jitgrad_compile()
        t0 = time.perf_counter()
        tape = compile_(lambda *args: program(lib, *args), *inputs[0])
        t1 = time.perf_counter()
        tape.value_and_grad(*inputs[1])
        t2 = time.perf_counter()
        extra = {"record_s": t1 - t0, "first_replay_s": t2 - t1}
        try:
            extra["tape_length"] = len(tape)
        except TypeError:
            pass

        def run():
            last["vg"] = tape.value_and_grad(*next_inputs())

        # steady replay, as an optimization loop runs it: a sample is 20 replays in a row
        # (one alone after the peer's second of work measures cold caches, not the replay)
        return Runner(run, result=lambda: _to_float(last["vg"][0]), extra=extra, number=20)

    def run():
        leaves = [lib.tensor(a, dtype=lib.float64, requires_grad=True) for a in next_inputs()]
        out = program(lib, *leaves)
        out.backward()
        last["vg"] = (out, [t.grad for t in leaves])

    return Runner(run, result=lambda: _to_float(last["vg"][0]))


def _block(value):
    """Wait for JAX's asynchronous dispatch to finish (a no-op for other arrays)."""
    leaves = value if isinstance(value, (tuple, list)) else (value,)
    for leaf in leaves:
        if hasattr(leaf, "block_until_ready"):
            leaf.block_until_ready()
    return value


def _functional_runner(case: str, fn: Functional, mode: str) -> Runner:
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
    if case in W3_SIZES:
        n = W3_SIZES[case]
        vg = f_w3(fn, n)

        def run():
            last["vg"] = _block(vg())

        return Runner(run, result=lambda: _to_float(last["vg"][0]) + _sum(last["vg"][1]),
                      number=50 if n <= 1000 else 1)
    if case == "W4":
        run4 = f_w4(fn)

        def run():
            last["v"] = _block(run4())

        return Runner(run, number=20)
    if case in W5_SIZES:
        n = W5_SIZES[case]
        hvp = fn.make_hvp(lambda x: w5_f(fn.np, x))
        x, v = (fn.np.asarray(a) for a in w5_inputs(n))

        def run():
            last["hv"] = _block(hvp(x, v))

        return Runner(run, result=lambda: _sum(last["hv"]), number=20 if n <= 10_000 else 1)
    if case == "W6-1e6":
        jvp = fn.make_jvp(lambda x: w6_g(fn.np, x))
        x, v = (fn.np.asarray(a) for a in w5_inputs(W6_N))

        def run():
            last["out"] = _block(jvp(x, v))

        return Runner(run, result=lambda: _sum(last["out"][1]))
    if case.startswith("W7-"):
        program, inputs, _ = w7_program(case, mode)
        vg = fn.value_and_grad(lambda args: program(fn.np, *args))
        state = {"k": 0}

        def run():
            state["k"] = (state["k"] + 1) % len(inputs)
            last["vg"] = _block(vg(tuple(fn.np.asarray(a) for a in inputs[state["k"]])))

        return Runner(run, result=lambda: _to_float(last["vg"][0]))
    raise ValueError(f"unknown case {case!r}")


def smoke(case: str, libname: str, runs: int = 3) -> float:
    """Run ``case`` ``runs`` times untimed (setup included); the result afterwards. Used in
    a subprocess before a pytest benchmark, so a crash there can't take pytest down."""
    runner = make_runner(case, libname)
    for _ in range(runs):
        if runner.setup is not None:
            runner.setup()
        runner.run()
    return runner.result()


# -- startup programs ------------------------------------------------------------------------------
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


def numba_floor_source(folder: str) -> str:
    """A ``python -c`` program timing (JSON ``time``) what any Numba program pays before its
    first kernel runs: ``import numba`` and the first call of a trivial ``cache=True`` kernel
    (written to ``folder``, cached there by an earlier run), which loads Numba's registries."""
    return ("import sys, time\n"
            "t0 = time.perf_counter()\n"
            "import numba\n"
            f"sys.path.insert(0, {folder!r})\n"
            "import jitgrad_numba_probe\n"
            "jitgrad_numba_probe.one(1.0)\n"
            "t = time.perf_counter() - t0\n"
            "import json\n"
            "print(json.dumps({'time': t}))\n")


NUMBA_PROBE = ("import numba\n\n\n"
               "@numba.njit(cache=True)\n"
               "def one(x):\n"
               "    return x + 1.0\n")


def per_op(case: str, seconds: float, mode: str = "default") -> float | None:
    ops = ops_per_run(case, mode)
    return None if ops is None else seconds / ops


# -- timing ----------------------------------------------------------------------------------------
# per mode: samples per lib (interleaved), warm-up runs, target seconds per sample,
# and fresh-process repeats for the startup numbers
MODES = {
    # 15 short samples: on a shared machine whose speed moves within seconds, the median
    # of 7 put a workload's ratio anywhere in a +-25% band from run to run
    "default": {"samples": 15, "warmup": 3, "target": 0.05, "startup": 4},
    "quick": {"samples": 3, "warmup": 2, "target": 0.01, "startup": 2},
    "smoke": {"samples": 1, "warmup": 1, "target": 0.002, "startup": 1},  # tests, notebooks
}
# W2 and W7: each run is a whole long program, so fewer samples and warm-ups
SLOW = {"default": {"samples": 9, "warmup": 2}, "quick": {"samples": 2, "warmup": 1},
        "smoke": {"samples": 1, "warmup": 1}}
WORKER_TIMEOUT = 600


BIG_ARRAYS = ("W3-1e6", "W5-1e6", "W6-1e6")


def _settings(case: str, mode: str) -> dict:
    cfg = dict(MODES[mode])
    if case.startswith(("W2", "W7")):
        cfg.update(SLOW[mode])
    if case in BIG_ARRAYS and mode != "smoke":
        # jitgrad's 2nd and 3rd runs on 1e6-element arrays are still 3-5x slower than its
        # steady state (W3-1e6: 0.15-0.35 s, then 30 ms): keep them out of the samples
        cfg["warmup"] = max(cfg["warmup"], 3)
    return cfg


def steps(case: str, libs: list[str], mode: str) -> int:
    """How many progress steps ``measure_case`` reports: one per lib, one per sample round."""
    return len(libs) + _settings(case, mode)["samples"]


def _sample(runner: Runner, number: int) -> float:
    """Seconds per run(), averaged over ``number`` runs (setup excluded). The cyclic garbage
    collector is off while it runs, as in ``timeit`` (``gc.collect()`` before every sample
    costs ~0.15 s with torch and numba loaded: most of a quick run)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _timed(runner, number)
    finally:
        if enabled:
            gc.enable()


def _timed(runner: Runner, number: int) -> float:
    clock = time.perf_counter
    if runner.setup is None:
        run = runner.run
        t0 = clock()
        for _ in range(number):
            run()
        return (clock() - t0) / number
    total = 0.0
    for _ in range(number):
        runner.setup()
        t0 = clock()
        runner.run()
        total += clock() - t0
    return total / number


def _error(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}"[:300]


def _failure(exc: BaseException) -> dict:
    """An error record: message, traceback, and the line of this file that raised."""
    rec = {"error": _error(exc), "traceback": traceback.format_exc()}
    here = os.path.abspath(__file__)
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if os.path.abspath(f.filename) == here]
    if frames:
        f = frames[-1]
        rec["where"] = f"jitgrad/bench.py:{f.lineno} in {f.name}: {f.line}"
    return rec


def _warm_up(runner: Runner, cfg: dict) -> dict:
    """Run ``runner`` ``cfg["warmup"]`` times; its record, with how many runs make a sample."""
    t_warm = float("inf")
    for _ in range(cfg["warmup"]):
        if runner.setup is not None:
            runner.setup()
        t0 = time.perf_counter()
        runner.run()
        t_warm = min(t_warm, time.perf_counter() - t0)
    if runner.setup is not None:  # each run needs its own (untimed, maybe slow) setup
        number = runner.number
    else:  # enough runs for a sample of about cfg["target"] seconds
        number = max(1, min(runner.number * 10, round(cfg["target"] / max(t_warm, 1e-7))))
    rec = {"samples": [], "number": number, "result": runner.result()}
    if runner.extra:
        rec["extra"] = runner.extra
    return rec


def _combine(case: str, recs: dict[str, dict]) -> dict:
    """One lib's record from those of its methods: the fastest, with every method's median
    (or error) under ``methods``."""
    if list(recs) == [""]:
        return recs[""]
    timed = {m: r for m, r in recs.items() if "median" in r}
    methods = {m: ({"median": r["median"]} if "median" in r else
                   {"error": r.get("error", "no samples")}) for m, r in recs.items()}
    if not timed:
        rec = dict(next(iter(recs.values())))
    else:
        best = min(timed, key=lambda m: timed[m]["median"])
        rec = dict(timed[best], method=best)
    rec["methods"] = methods
    return rec


def measure_case(case: str, libs: list[str], mode: str = "default", all_peers: bool = False,
                 progress: Callable[[str], None] | None = None,
                 unavailable: dict[str, str] | None = None) -> dict:
    """Time ``case`` on every lib of ``libs`` in this process; one dict per lib. Calls
    ``progress(label)`` ``steps(case, libs, mode)`` times as it goes. Libs in
    ``unavailable`` (lib: why) are only marked as such."""
    cfg = _settings(case, mode)
    tick = progress or (lambda label: None)
    out: dict[str, dict] = {}
    recs: dict[tuple[str, str], dict] = {}  # (lib, method) -> its record
    runners: dict[tuple[str, str], Runner] = {}
    for libname in libs:
        reason = (unavailable or {}).get(libname)
        if reason:
            out[libname] = {"unavailable": reason}
            tick(f"{case}: {libname} {reason}")
            continue
        reason = skip_reason(case, libname, all_peers)
        if reason:
            out[libname] = {"skipped": reason}
            tick(f"{case}: {libname} skipped")
            continue
        try:
            variants = make_runners(case, libname, mode)
        except Exception as exc:  # noqa: BLE001 - report it as the row's error
            out[libname] = dict(_failure(exc), phase="setup of the workload")
            tick(f"{case}: {libname} failed")
            continue
        # warm-up: the same number of runs for every lib, so result() is comparable
        for method, runner in variants.items():
            try:
                recs[(libname, method)] = _warm_up(runner, cfg)
                runners[(libname, method)] = runner
            except Exception as exc:  # noqa: BLE001
                recs[(libname, method)] = dict(_failure(exc), phase="warm-up")
        tick(f"{case}: {libname} warmed up")
    order = list(runners)
    gc.collect()  # once: the warm-ups' garbage, not the next lib's, is collected here
    for i in range(cfg["samples"]):
        k = i % len(order) if order else 0
        for key in order[k:] + order[:k]:  # rotate who goes first
            if "error" in recs[key]:
                continue
            try:
                recs[key]["samples"].append(_sample(runners[key], recs[key]["number"]))
            except Exception as exc:  # noqa: BLE001
                recs[key] = dict(_failure(exc), phase=f"timed sample {i + 1}")
        tick(f"{case}: sample {i + 1}/{cfg['samples']}")
    for rec in recs.values():
        if "error" not in rec and rec["samples"]:
            rec["median"] = statistics.median(rec["samples"])
            rec["min"] = min(rec["samples"])
    for libname in libs:
        mine = {method: rec for (lib, method), rec in recs.items() if lib == libname}
        if mine:
            out[libname] = _combine(case, mine)
    return {lib: out[lib] for lib in libs if lib in out}


# -- progress --------------------------------------------------------------------------------------
class Progress:
    """A tqdm bar on stderr when tqdm is installed, else one plain line per finished case;
    nothing at all when disabled."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total, self.enabled, self.done = total, enabled, 0
        self.bar = None
        self.case_started = time.perf_counter()
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, desc="bench", unit="step", file=sys.stderr,
                                leave=False, dynamic_ncols=True)

    def step(self, label: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(label, refresh=False)
            self.bar.update(1)

    def case_done(self, case: str, index: int, count: int, note: str = "") -> None:
        elapsed = time.perf_counter() - self.case_started
        self.case_started = time.perf_counter()
        if not self.enabled:
            return
        line = f"  [{index}/{count}] {case} {note or 'measured'} ({elapsed:.1f} s)"
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# -- worker processes ------------------------------------------------------------------------------
_PROGRESS_MARK = "\x1ejitgrad-bench-progress "


def _read_worker_out(path: str) -> dict:
    if not os.path.exists(path):
        return {"peers": {}, "cases": {}}
    with open(path) as f:
        return json.load(f)


def _write_worker_out(path: str, out: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f)
    os.replace(tmp, path)  # the parent never reads half a file


def _spawn_worker(cases: list[str], libs: list[str], opts: dict,
                  on_step: Callable[[str], None], on_case: Callable[[str, dict], None]
                  ) -> tuple[dict, dict, str | None]:
    """Run ``measure_case`` for ``cases`` in a fresh worker process: the results it wrote
    (a dict per finished case), the status of each lib there (it imports them), and, if it
    didn't exit cleanly, why. ``on_step(label)`` follows its progress; ``on_case(case,
    result)`` gets each case as soon as it is done."""
    env = dict(os.environ)
    if opts["blas_threads"]:
        env["OPENBLAS_NUM_THREADS"] = str(opts["blas_threads"])  # before NumPy loads OpenBLAS
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "out.json")
        cmd = [sys.executable, "-m", "jitgrad.bench", "--worker", ",".join(cases),
               "--worker-out", path, "--libs", ",".join(libs), "--mode", opts["mode"],
               "--torch-threads", str(opts["torch_threads"] or 0),
               "--blas-threads", str(opts["blas_threads"] or 0)]
        if opts["all_peers"]:
            cmd.append("--all-peers")
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, env=env)
        killed = threading.Event()

        def kill():
            killed.set()
            proc.kill()

        timer = threading.Timer(WORKER_TIMEOUT, kill)
        timer.start()
        tail: collections.deque = collections.deque(maxlen=20)
        reported: set = set()

        def report_new_cases():
            done = _read_worker_out(path)["cases"]
            for case in done:
                if case not in reported:
                    reported.add(case)
                    on_case(case, done[case])

        try:
            for line in proc.stderr:
                if line.startswith(_PROGRESS_MARK):
                    kind, _, label = line[len(_PROGRESS_MARK):].rstrip("\n").partition(" ")
                    if kind == "step":
                        on_step(label)
                    elif kind == "case":
                        report_new_cases()
                elif line.strip():
                    tail.append(line.rstrip("\n"))
            proc.wait()
        finally:
            timer.cancel()
        failure = None
        if killed.is_set():
            failure = f"worker timed out after {WORKER_TIMEOUT} s"
        elif proc.returncode != 0:
            why = (f"worker process died (signal {-proc.returncode})" if proc.returncode < 0
                   else f"worker process exited with {proc.returncode}")
            failure = f"{why}: {tail[-1][:200]}" if tail else why
        report_new_cases()
        out = _read_worker_out(path)
    return out["cases"], out["peers"], failure


def _measure_in_workers(cases: list[str], libs: list[str], opts: dict, progress: Progress
                        ) -> tuple[dict, dict]:
    """``measure_case`` for every case, in fresh worker processes; the results, and the
    status of each lib as the workers found it (they import the libs: this process only
    looked for them).

    One worker runs the cases in order and writes its results after each. It stops after a
    case where jitgrad failed (its tape may be corrupt); a fresh worker takes the remaining
    cases. If a worker dies (segfault, abort, timeout), the case it was on is rerun with
    one worker per lib, so only the lib that crashes gets the error."""
    results: dict[str, dict] = {}
    peers: dict[str, dict] = {}
    index = {"n": 0}

    def on_case(case, result):
        index["n"] += 1
        progress.case_done(case, index["n"], len(cases))

    todo = list(cases)
    while todo:
        done, seen, failure = _spawn_worker(todo, libs, opts, progress.step, on_case)
        peers.update(seen)
        for case in list(todo):
            if case not in done:
                break
            results[case] = done[case]
            todo.remove(case)
        if failure is None or not todo:
            continue  # finished, or stopped early after a jitgrad error: go on
        case = todo.pop(0)  # the case the worker was on when it died
        index["n"] += 1
        progress.case_done(case, index["n"], len(cases), f"crashed a worker ({failure}); "
                           "rerunning it one lib per worker")
        results[case] = {}
        for lib in libs:
            if len(libs) == 1:
                one, why = {}, failure
            else:
                one, seen, why = _spawn_worker([case], [lib], opts, lambda label: None,
                                               lambda case, result: None)
                peers.update(seen)
            rec = one.get(case, {}).get(lib)
            results[case][lib] = rec if rec is not None else {"error": why or "no result"}
    return {case: results[case] for case in cases if case in results}, peers


def _worker_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m jitgrad.bench")
    p.add_argument("--worker", required=True)
    p.add_argument("--worker-out", required=True)
    p.add_argument("--libs", required=True)
    p.add_argument("--mode", default="default", choices=sorted(MODES))
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--blas-threads", type=int, default=1)
    p.add_argument("--all-peers", action="store_true")
    args = p.parse_args(argv)
    libs = args.libs.split(",")
    out: dict[str, dict] = {"peers": {lib: lib_status(lib) for lib in libs}, "cases": {}}
    _write_worker_out(args.worker_out, out)
    unavailable = {lib: st["status"] for lib, st in out["peers"].items() if st["status"] != "ok"}
    _set_threads(args.torch_threads)
    if args.blas_threads:
        limit_blas_threads(args.blas_threads)

    def step(label):
        print(f"{_PROGRESS_MARK}step {label}", file=sys.stderr, flush=True)

    for case in args.worker.split(","):
        out["cases"][case] = measure_case(case, libs, args.mode, args.all_peers, step,
                                          unavailable)
        _write_worker_out(args.worker_out, out)
        print(f"{_PROGRESS_MARK}case {case}", file=sys.stderr, flush=True)
        if "error" in out["cases"][case].get("jitgrad", {}):
            return 0  # jitgrad's state may be corrupt now: the parent starts a fresh worker
    return 0


def _set_threads(n) -> None:
    if n:
        try:
            import torch

            torch.set_num_threads(int(n))
        except ImportError:
            pass


# -- startup numbers -------------------------------------------------------------------------------
def _child_env() -> dict:
    """The environment of the startup probes: this one, less ``PYTHONDONTWRITEBYTECODE``, so
    that every package's compiled bytecode is cached on disk as Python does by default (pip
    writes it for installed packages at install time; an editable install gets it on its
    first import), not recompiled from source by each probe."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _child(source: str) -> dict:
    """Run a fresh ``python -c source``; its printed JSON plus ``wall`` (spawn to exit)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True,
                          timeout=300, env=_child_env())
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError((proc.stderr.strip().splitlines() or ["?"])[-1])
    lines = proc.stdout.strip().splitlines()
    info = json.loads(lines[-1]) if lines else {}
    info["wall"] = wall
    return info


def measure_startup(libs: list[str], repeats: int) -> dict:
    """Medians over ``repeats`` interleaved fresh processes of: the wall time of ``python -c
    pass``, the in-process time of ``import numba`` and of Numba's first cached call
    (:func:`numba_floor_source`), and the tutorial's first gradient per lib: wall time of the
    fresh process, and inside it the time of the import, forward and backward. One untimed
    run of each cached probe comes first, so the on-disk caches are warm: Numba's (it
    recompiles after a kernel edit) and Python's bytecode (see :func:`_child_env`)."""
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "jitgrad_numba_probe.py"), "w") as fh:
            fh.write(NUMBA_PROBE)
        return _measure_startup(libs, repeats, folder)


def _measure_startup(libs: list[str], repeats: int, folder: str) -> dict:
    probes = {"python -c pass": "pass", "import numba": import_time_source("numba"),
              "numba first call": numba_floor_source(folder)}
    for lib in ("jitgrad", "torch"):
        if lib in libs:
            probes[f"first gradient {lib}"] = first_gradient_source(lib)
    out: dict[str, dict] = {name: {"samples": []} for name in probes}
    for name, src in probes.items():
        if name.startswith(("first gradient", "numba first")):
            try:
                _child(src)
            except Exception as exc:  # noqa: BLE001
                out[name] = {"error": _error(exc)}
    for _ in range(repeats):
        for name, src in probes.items():
            if "error" in out[name]:
                continue
            try:
                out[name]["samples"].append(_child(src))
            except Exception as exc:  # noqa: BLE001
                out[name] = {"error": _error(exc)}
    for rec in out.values():
        samples = rec.get("samples")
        if samples:
            rec["median"] = {key: statistics.median(s[key] for s in samples)
                             for key in samples[0] if isinstance(samples[0][key], float)}
            for key in samples[0]:
                if isinstance(samples[0][key], bool):
                    rec[key] = any(s[key] for s in samples)
    if "PYTHONDONTWRITEBYTECODE" in os.environ:
        out["bytecode"] = {"unset": "PYTHONDONTWRITEBYTECODE"}
    return out


# -- the table -------------------------------------------------------------------------------------
def fmt_time(seconds: float) -> str:
    """A duration the way the table shows it.

    >>> fmt_time(2.5), fmt_time(0.0123), fmt_time(4.2e-5)
    ('2.50 s', '12.30 ms', '42.0 µs')
    """
    if seconds >= 1.0:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


def fmt_cell(case: str, rec: dict | None, mode: str = "default") -> str:
    if rec is None:
        return "—"
    if "skipped" in rec:
        return "skipped"
    if "error" in rec:
        return "ERROR (see notes)"
    if "median" not in rec:
        return "—"
    cell = fmt_time(rec["median"])
    op = per_op(case, rec["median"], mode)
    if op is not None:
        cell += f" ({op * 1e9:.0f} ns/op)"
    return cell


def ratio(peer: dict | None, base: dict | None) -> float | None:
    if not peer or not base or "median" not in peer or "median" not in base:
        return None
    return peer["median"] / base["median"]


def results_agree(recs: dict) -> str | None:
    """A note when the libs' results after the same warm-up disagree."""
    vals = {lib: r["result"] for lib, r in recs.items()
            if isinstance(r, dict) and isinstance(r.get("result"), float)
            and r["result"] == r["result"]}  # not NaN
    if "jitgrad" not in vals or len(vals) < 2:
        return None
    ref = vals["jitgrad"]
    bad = [f"{lib}={v:.6g}" for lib, v in vals.items()
           if lib != "jitgrad" and abs(v - ref) > 1e-3 * max(1.0, abs(v))]
    return f"result mismatch: jitgrad={ref:.6g} vs " + ", ".join(bad) if bad else None


def aligned(rows: list[list[str]]) -> str:
    """Rows of cells as a markdown table whose columns line up in a terminal too.

    >>> print(aligned([["case", "ratio"], ["W1", "3.20x"]]))
    | case | ratio |
    |------|-------|
    | W1   | 3.20x |
    """
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(rows[0], widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |"
              for row in rows[1:]]
    return "\n".join(lines)


def _startup_rows(startup: dict, ncols: int) -> tuple[list[list[str]], list[str]]:
    def med(name, key):
        return ((startup.get(name) or {}).get("median") or {}).get(key)

    def err(name):
        return (startup.get(name) or {}).get("error")

    rows, notes = [], []
    pad = ["—"] * (ncols - 5)
    nb, jg = med("import numba", "time"), med("first gradient jitgrad", "import")
    tc = med("first gradient torch", "import")
    if jg is not None and nb is not None:
        added = jg - nb
        jcell = f"{added:+.3f} s ({jg:.3f} − {nb:.3f})"
        status = "PASS" if added <= 0.2 else "FAIL"
    else:
        jcell = "ERROR: " + (err("first gradient jitgrad") or err("import numba") or "?")
        status = "n/a"
    tcell = "—" if tc is None else f"import torch: {tc:.3f} s"
    rows.append(["startup: import jitgrad − import numba", jcell, tcell, "—",
                 f"<= 0.2 s {status}"] + pad)
    if jg is not None and not (startup.get("first gradient jitgrad") or {}).get("numba_loaded"):
        notes.append("`import jitgrad` does not import numba (it is imported on first use), so "
                     "the import row's difference can be negative; the numba import is paid "
                     "inside the first-gradient row instead")
    fj, ft = med("first gradient jitgrad", "wall"), med("first gradient torch", "wall")
    if fj is not None:
        jcell, status = f"{fj:.3f} s", ("PASS" if fj < 1.0 else "FAIL")
    else:
        jcell, status = "ERROR: " + (err("first gradient jitgrad") or "?"), "n/a"
    tcell = "—" if ft is None else f"{ft:.3f} s"
    rcell = "—" if (fj is None or ft is None) else f"{ft / fj:.2f}x"
    rows.append(["startup: fresh process, first gradient (wall)", jcell, tcell, rcell,
                 f"< 1 s {status}"] + pad)
    if "bytecode" in startup:
        notes.append("this environment sets PYTHONDONTWRITEBYTECODE; the startup probes run "
                     "without it, so each package's bytecode is read from its cache as in a "
                     "default Python (one untimed run per lib writes it first)")
    floor, floor_wall = med("numba first call", "time"), med("numba first call", "wall")
    if fj is not None and floor is not None:
        notes.append(f"Numba alone, in a fresh process: `import numba` and the first call of a "
                     f"trivial cached kernel take {floor:.3f} s ({floor_wall:.3f} s wall, "
                     f"start and exit included), paid by any Numba program before its first "
                     f"kernel runs (it loads Numba's registries, and SciPy's BLAS where SciPy "
                     f"is installed)")
    py = med("python -c pass", "wall")
    for lib in ("jitgrad", "torch"):
        parts = [med(f"first gradient {lib}", k) for k in ("import", "forward", "backward")]
        if None not in parts:
            notes.append(f"first gradient, {lib}, inside the process: import {parts[0]:.3f} s, "
                         f"forward {parts[1]:.3f} s, backward {parts[2]:.3f} s"
                         + ("" if py is None else f" (bare `python -c pass`: {py:.3f} s)"))
    return rows, notes


def build_table(payload: dict) -> tuple[str, list[str]]:
    """The aligned results table of a :func:`run` payload, and the notes that go under it."""
    mode = payload["mode"]
    peers = payload["peers"]
    extra = [lib for lib in FUNCTIONAL if peers.get(lib, {}).get("status") == "ok"
             and lib in payload["libs"]]
    head = ["workload", "jitgrad", "torch", "torch/jitgrad", "goal"] + [
        f"{lib} ({lib}/jitgrad)" for lib in extra]
    rows = [head]
    notes: list[str] = []
    torch_missing = "torch" not in payload["libs"]
    for row in payload["rows"]:
        case = row["case"]
        label = f"{case}: {row['description']}"
        if not row["available"]:
            rows.append([label, f"not available ({row['reason']})", "—", "—",
                         f">= {row['goal']:g}x n/a"] + ["—"] * len(extra))
            continue
        recs = row["results"]
        r = row["ratios"].get("torch")
        status = "n/a" if r is None else ("PASS" if r >= row["goal"] else "FAIL")
        torch_cell = ("not installed" if torch_missing
                      else fmt_cell(case, recs.get("torch"), mode))
        cells = [label, fmt_cell(case, recs.get("jitgrad"), mode), torch_cell,
                 "—" if r is None else f"{r:.2f}x", f">= {row['goal']:g}x {status}"]
        for lib in extra:
            c = fmt_cell(case, recs.get(lib), mode)
            rr = row["ratios"].get(lib)
            cells.append(c + ("" if rr is None else f" ({rr:.2f}x)"))
        rows.append(cells)
        note = results_agree(recs)
        if note:
            notes.append(f"{case}: {note}")
        for lib, rec in recs.items():
            ex = rec.get("extra") or {}
            if "methods" in rec:
                timed = ", ".join(f"{m} {fmt_time(r['median'])}" if "median" in r
                                  else f"{m} failed: {r['error']}"
                                  for m, r in rec["methods"].items())
                if len(rec["methods"]) == 1:
                    timed += " (the one method timed in this mode)"
                elif "method" in rec:
                    timed += f" (the table shows {rec['method']})"
                notes.append(f"{case}, {lib}: {timed}")
            if "record_s" in ex:
                length = f", {ex['tape_length']} tape entries" if "tape_length" in ex else ""
                notes.append(f"{case}, {lib}: jitgrad.compile recorded the program in "
                             f"{ex['record_s']:.2f} s{length}; first replay "
                             f"{ex['first_replay_s'] * 1e3:.1f} ms")
            if "error" in rec:
                where = ", ".join(rec[k] for k in ("phase", "where") if rec.get(k))
                notes.append(f"{case} on {lib} failed: {rec['error']}"
                             + (f" ({where})" if where else ""))
    if payload.get("startup"):
        more_rows, more_notes = _startup_rows(payload["startup"], len(head))
        rows += more_rows
        notes += more_notes
    return aligned(rows), notes


def peers_table(payload: dict) -> str:
    """One row per library: its version, or that it is not installed / not importable."""
    rows = [["library", "status"]]
    for lib, info in payload["peers"].items():
        if info["status"] == "ok":
            status = f"{info.get('version') or 'installed'}"
            if lib not in payload["libs"]:
                status += " (not selected)"
        elif info["status"] == "not installed":
            status = "not installed: no column, nothing measured"
        else:
            status = f"not importable: {info.get('error', '?')}"
        rows.append([lib, status])
    return aligned(rows)


def report(payload: dict) -> str:
    """The text ``python -m jitgrad bench`` prints: results, notes, peers."""
    mode = payload["mode"]
    t = payload["threads"]
    lines = [f"# jitgrad vs peers ({mode} mode)", "",
             f"Python {payload['python']} on {payload['machine']}, {payload['cpus']} CPUs; "
             f"torch threads: {t['torch'] or 'default'}, OpenBLAS threads: "
             f"{t['blas'] or 'default'}", "", payload["table"], "",
             "Times are medians of interleaved samples; ratio = peer time / jitgrad time "
             "(> 1: jitgrad is faster). Per-op times divide by the recorded ops."]
    lines += [f"- {note}" for note in payload["notes"]]
    lines += ["", peers_table(payload), "", f"(total {payload['total_s']:.0f} s)"]
    return "\n".join(lines)


# -- the plot --------------------------------------------------------------------------------------
def plot(payload: dict, path: str | None = None):
    """A bar chart of a :func:`run` payload: median time per workload and library (log
    scale), and torch/jitgrad against each workload's goal. Saved to ``path`` if given;
    returns the matplotlib Figure (a notebook displays it)."""
    from matplotlib.figure import Figure  # no pyplot: works headless, leaves backends alone

    rows = [r for r in payload["rows"] if r["available"]
            and "median" in r["results"].get("jitgrad", {})]
    libs = [lib for lib in payload["libs"]
            if any("median" in r["results"].get(lib, {}) for r in rows)]
    fig = Figure(figsize=(11, 4.5 + 0.1 * len(rows)), layout="constrained")
    ax_time, ax_ratio = fig.subplots(1, 2, width_ratios=[1.3, 1])
    labels = [r["case"] for r in rows]
    y = np.arange(len(rows))
    height = 0.8 / max(1, len(libs))
    for i, lib in enumerate(libs):
        times = [r["results"].get(lib, {}).get("median", np.nan) for r in rows]
        ax_time.barh(y + (i - (len(libs) - 1) / 2) * height, times, height, label=lib)
    ax_time.set_xscale("log")
    ax_time.set_yticks(y, labels)
    ax_time.invert_yaxis()
    ax_time.set_xlabel("median time per run (s, log scale)")
    ax_time.set_title("time per run")
    ax_time.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(libs),
                   fontsize="small", frameon=False)
    ratios = [r["ratios"].get("torch", np.nan) for r in rows]
    goals = [r["goal"] for r in rows]
    colors = ["tab:green" if q >= g else "tab:red" for q, g in zip(ratios, goals)]
    ax_ratio.barh(y, ratios, 0.6, color=colors)
    ax_ratio.scatter(goals, y, marker="|", s=300, color="black", label="goal", zorder=3)
    ax_ratio.axvline(1.0, color="gray", lw=0.8, ls="--")
    ax_ratio.set_xscale("log")
    ax_ratio.set_yticks(y, labels)
    ax_ratio.invert_yaxis()
    ax_ratio.set_xlabel("torch time / jitgrad time (log scale; > 1: jitgrad faster)")
    ax_ratio.set_title("speed-up over torch")
    for yi, q in zip(y, ratios):
        if q == q:  # not NaN
            ax_ratio.annotate(f"{q:.2f}x" if q < 10 else f"{q:.0f}x", (q, yi), xytext=(3, 0),
                              textcoords="offset points", va="center", fontsize="small")
    ax_ratio.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), fontsize="small",
                    frameon=False)
    fig.suptitle(f"jitgrad vs peers ({payload['mode']} mode, {payload['cpus']} CPUs)")
    if path:
        fig.savefig(path, dpi=110)
    return fig


# -- driver ----------------------------------------------------------------------------------------
def _selection(cases, libs, mode: str) -> tuple[list[str], list[str]]:
    """The cases and libs asked for, checked (ValueError names what is unknown)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
    cases = list(CASES if cases is None else cases)
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise ValueError(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    wanted = list(ALL_LIBS if libs is None else libs)
    unknown = [lib for lib in wanted if lib not in ALL_LIBS]
    if unknown:
        raise ValueError(f"unknown lib(s) {', '.join(unknown)}; known: {', '.join(ALL_LIBS)}")
    return cases, wanted if "jitgrad" in wanted else ["jitgrad", *wanted]


def run(cases=None, libs=None, *, quick: bool = False, mode: str | None = None,
        isolate: bool = True, progress: bool = True, all_peers: bool = False,
        torch_threads: int = 1, blas_threads: int = 1, startup: bool = False) -> dict:
    """Measure ``cases`` (default: all) on ``libs`` (default: jitgrad and every installed
    peer) and return the payload that ``--json`` writes: ``rows`` (one per case: its
    results per lib, ratios to jitgrad, goal, or why it is not available), ``peers`` (every
    library with its status: ``"ok"``, ``"not installed"``, ``"not importable"``), the
    ``table`` as printed, ``notes``, and the settings.

    ``isolate``: one worker process measures the cases (a crash costs a row, not the run);
    ``False`` measures in this process. ``mode``: ``"default"``, ``"quick"`` or ``"smoke"``
    (one sample each, for tests); ``quick=True`` is ``mode="quick"``."""
    t_start = time.perf_counter()
    mode = mode or ("quick" if quick else "default")
    cases, wanted = _selection(cases, libs, mode)
    # the workers import the libs; in this process a lib is only looked for
    peers = {lib: lib_status(lib, try_import=not isolate) for lib in ALL_LIBS}
    libs = [lib for lib in ALL_LIBS if lib in wanted and peers[lib]["status"] == "ok"]
    if not isolate:
        _set_threads(torch_threads)
        if blas_threads:
            limit_blas_threads(blas_threads)

    missing = {case: missing_feature(case) for case in cases}
    measured = [case for case in cases if missing[case] is None]
    bar = Progress(sum(steps(case, libs, mode) for case in measured), enabled=progress)
    try:
        if isolate:
            opts = {"mode": mode, "all_peers": all_peers, "torch_threads": torch_threads,
                    "blas_threads": blas_threads}
            results, seen = _measure_in_workers(measured, libs, opts, bar)
            for lib, status in seen.items():  # what the workers found importing the libs
                if status["status"] != "ok":
                    peers[lib] = status
            libs = [lib for lib in libs if peers[lib]["status"] == "ok"]
            results = {case: {lib: rec for lib, rec in recs.items() if lib in libs}
                       for case, recs in results.items()}
        else:
            results = {}
            for i, case in enumerate(measured):
                results[case] = measure_case(case, libs, mode, all_peers, bar.step)
                bar.case_done(case, i + 1, len(measured))
    finally:
        bar.close()
    startup_results = measure_startup(libs, MODES[mode]["startup"]) if startup else None

    rows = []
    for case in cases:
        row = {"case": case, "description": describe(case, mode), "goal": GOALS[case],
               "ops_per_run": ops_per_run(case, mode)}
        if missing[case] is not None:
            row.update(available=False, reason=missing[case], results={}, ratios={})
        else:
            recs = results.get(case, {})
            row.update(available=True, reason=None, results=recs,
                       ratios={lib: r for lib in libs if lib != "jitgrad"
                               for r in [ratio(recs.get(lib), recs.get("jitgrad"))]
                               if r is not None})
        rows.append(row)
    for lib in ALL_LIBS:
        if lib in libs and peers[lib].get("version") is None:
            peers[lib]["version"] = _version(lib)
    payload = {"mode": mode, "python": platform.python_version(),
               "machine": platform.machine(), "cpus": os.cpu_count(),
               "threads": {"torch": torch_threads, "blas": blas_threads},
               "libs": libs, "peers": peers, "cases": cases, "rows": rows,
               "startup": startup_results}
    payload["table"], payload["notes"] = build_table(payload)
    payload["total_s"] = time.perf_counter() - t_start
    return payload


def main(argv: list[str] | None = None, prog: str = "python -m jitgrad bench",
         startup_default: bool = False) -> int:
    """The command line of ``python -m jitgrad bench`` (and ``benchmarks/compare.py``)."""
    p = argparse.ArgumentParser(prog=prog, description="jitgrad's speed next to the "
                                "installed peers (torch, jax, HIPS autograd): one table of "
                                "medians and ratios.")
    p.add_argument("--quick", action="store_true",
                   help="fewer samples and a smaller W7 (about 20 s instead of 2 minutes)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument("--plot", metavar="PATH", help="also draw a bar chart (PNG) to PATH "
                   "(needs matplotlib)")
    p.add_argument("--libs", help="comma-separated subset of " + ",".join(ALL_LIBS))
    p.add_argument("--cases", help="comma-separated subset of " + ",".join(CASES))
    if startup_default:
        p.add_argument("--no-startup", action="store_true", help="skip the startup numbers")
    else:
        p.add_argument("--startup", action="store_true",
                       help="also time import and the first gradient in fresh processes")
    p.add_argument("--all-peers", action="store_true",
                   help="also run the very slow peer cases (eager JAX on W2, peers on W7)")
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch.set_num_threads(N) (default 1, like jitgrad's single-threaded "
                   "kernels: on a small, busy machine torch's OpenMP pool swings from 0.3 ms "
                   "to 100 ms per W4 step; 0 keeps torch's default)")
    p.add_argument("--blas-threads", type=int, default=1,
                   help="OpenBLAS threads (default 1: OpenBLAS's threads, used by NumPy and "
                   "jitgrad, and torch's OpenMP threads otherwise spin against each other in "
                   "one process; 0 keeps OpenBLAS's default)")
    p.add_argument("--inprocess", action="store_true",
                   help="measure in this process (no worker process, no crash isolation)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
    args = p.parse_args(argv)
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            p.error("--plot needs matplotlib (pip install matplotlib)")
    cases = args.cases.split(",") if args.cases else None
    libs = args.libs.split(",") if args.libs else None
    try:
        _selection(cases, libs, "quick" if args.quick else "default")
    except ValueError as exc:
        p.error(str(exc))
    payload = run(cases, libs, quick=args.quick, isolate=not args.inprocess,
                  progress=not args.no_progress, all_peers=args.all_peers,
                  torch_threads=args.torch_threads, blas_threads=args.blas_threads,
                  startup=(not args.no_startup) if startup_default else args.startup)
    print(report(payload), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2)
    if args.plot:
        plot(payload, args.plot)
    return 0


if __name__ == "__main__":
    if "--worker" in sys.argv[1:]:  # the worker processes of run(isolate=True)
        sys.exit(_worker_main(sys.argv[1:]))
    sys.exit(main(sys.argv[1:]))
