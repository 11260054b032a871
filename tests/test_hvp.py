"""``func.hvp`` by the second-order sweep (jitgrad/kernels/second_order.py): every op of the
op-spec table against the recorded (create_graph) path, torch.func and finite differences
of the gradient; mixtures; the cases that must take the recorded path."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from op_specs import SPECS, inputs_for

import jitgrad
from jitgrad import func
from jitgrad.autograd import second_order
from jitgrad.kernels.generate_hvp import second_order_mask

ROOT = Path(__file__).resolve().parents[1]


class _Spy:
    """Counts the second-order sweep's answers; ``refuse`` makes it hand every recording
    to the recorded path (the reference)."""

    def __init__(self, monkeypatch, refuse: bool = False):
        self.fast = self.refused = 0
        original = second_order.hessian_vector_product

        def spy(*args, **kwargs):
            result = None if refuse else original(*args, **kwargs)
            if result is None:
                self.refused += 1
            else:
                self.fast += 1
            return result

        monkeypatch.setattr(second_order, "hessian_vector_product", spy)


def _recorded_hvp(monkeypatch, f, primals, tangents):
    with monkeypatch.context() as m:
        spy = _Spy(m, refuse=True)
        result = func.hvp(f, primals, tangents)
    assert spy.refused == 1
    return result


def _fast_hvp(monkeypatch, f, primals, tangents):
    with monkeypatch.context() as m:
        spy = _Spy(m)
        result = func.hvp(f, primals, tangents)
    assert spy.fast == 1, "the second-order sweep refused the recording"
    return result


def _as_list(value) -> list:
    return [np.asarray(v) for v in value] if isinstance(value, tuple) else [np.asarray(value)]


def _gradient(f, arrays) -> list:
    nums = tuple(range(len(arrays)))
    return _as_list(func.grad(f, argnums=nums if len(nums) > 1 else 0)(*arrays))


def _differences(f, arrays, directions, step=1e-5) -> list:
    """H v as central differences of the gradient along v."""
    plus = _gradient(f, [a + step * d for a, d in zip(arrays, directions)])
    minus = _gradient(f, [a - step * d for a, d in zip(arrays, directions)])
    return [(p - m) / (2 * step) for p, m in zip(plus, minus)]


def _torch_hvp(torch, f, arrays, directions) -> list:
    primals = tuple(torch.tensor(a, dtype=torch.float64) for a in arrays)
    tangents = tuple(torch.tensor(d, dtype=torch.float64) for d in directions)
    nums = tuple(range(len(arrays)))
    grad = torch.func.grad(f, argnums=nums if len(nums) > 1 else 0)
    _, out = torch.func.jvp(grad, primals, tangents)
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


def _objective(spec, weights, outer: str):
    """A scalar function of the op's inputs. ``linear``: sum(w * op(x)), where the op's own
    second derivative is all there is; ``sin``: sum(w * sin(op(x))), where the adjoint
    reaching the op moves with x too."""

    def f(*xs):
        lib = jitgrad if isinstance(xs[0], jitgrad.Tensor) else _torch()
        out = spec.fn(lib, *xs)
        if outer == "sin":
            out = lib.sin(out)
        return (out * lib.tensor(weights, dtype=out.dtype)).sum()

    return f


def _torch():
    import torch

    return torch


def test_generated_hvp_kernels_match_the_registry():
    result = subprocess.run([sys.executable, "-m", "jitgrad.kernels.generate_hvp", "--check"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_op_but_custom_functions_has_a_second_order_step():
    from jitgrad.ops.registry import OPS, PYTHON

    assert [op.name for op in OPS if not second_order_mask(op)] == \
        [op.name for op in OPS if op.kind == PYTHON]


@pytest.mark.parametrize("outer", ["linear", "sin"])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.id)
def test_op_matches_recorded_path_and_differences(spec, outer, monkeypatch):
    arrays = inputs_for(spec)
    weights = np.random.default_rng(1).uniform(0.5, 1.5, np.shape(spec.numpy(*arrays)))
    directions = [np.random.default_rng(7 + k).normal(size=a.shape) for k, a in enumerate(arrays)]
    f = _objective(spec, weights, outer)
    fast = _as_list(_fast_hvp(monkeypatch, f, tuple(arrays), tuple(directions)))
    recorded = _as_list(_recorded_hvp(monkeypatch, f, tuple(arrays), tuple(directions)))
    for a, b in zip(fast, recorded):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    if spec.finite_differences:
        for a, b in zip(fast, _differences(f, arrays, directions)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spec", [s for s in SPECS if s.torch], ids=lambda s: s.id)
def test_op_matches_torch_func(spec, monkeypatch):
    torch = pytest.importorskip("torch")
    arrays = inputs_for(spec)
    weights = np.random.default_rng(1).uniform(0.5, 1.5, np.shape(spec.numpy(*arrays)))
    directions = [np.random.default_rng(7 + k).normal(size=a.shape) for k, a in enumerate(arrays)]
    f = _objective(spec, weights, "sin")
    fast = _as_list(_fast_hvp(monkeypatch, f, tuple(arrays), tuple(directions)))
    for a, b in zip(fast, _torch_hvp(torch, f, arrays, directions)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", ["sin", "pow_scalar", "mul", "tanh", "logsumexp", "mm",
                                  "to_dtype"])
def test_float32(name, monkeypatch):
    spec = next(s for s in SPECS if s.op == name)
    arrays = inputs_for(spec, dtype=np.float32)
    weights = np.random.default_rng(1).uniform(0.5, 1.5, np.shape(spec.numpy(*arrays)))
    directions = [np.random.default_rng(7 + k).normal(size=a.shape).astype(np.float32)
                  for k, a in enumerate(arrays)]
    f = _objective(spec, weights, "sin")
    fast = _as_list(_fast_hvp(monkeypatch, f, tuple(arrays), tuple(directions)))
    recorded = _as_list(_recorded_hvp(monkeypatch, f, tuple(arrays), tuple(directions)))
    for a, b in zip(fast, recorded):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# -- mixtures -------------------------------------------------------------------------------------
def test_w5_function_matches_its_closed_form(monkeypatch):
    rng = np.random.default_rng(3)
    x, v = rng.uniform(-2, 2, 1000), rng.standard_normal(1000)
    hv = _fast_hvp(monkeypatch, lambda t: (jitgrad.sin(t) * t ** 2).sum(), (x,), (v,))
    second = -np.sin(x) * x ** 2 + 4 * x * np.cos(x) + 2 * np.sin(x)
    assert isinstance(hv, np.ndarray)
    np.testing.assert_allclose(hv, second * v, rtol=1e-12, atol=1e-12)


def _rosenbrock(x):
    return (100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2).sum()


def test_rosenbrock_matches_its_hessian(monkeypatch):
    rng = np.random.default_rng(4)
    x, v = rng.uniform(-1.5, 1.5, 9), rng.standard_normal(9)
    hv = _fast_hvp(monkeypatch, _rosenbrock, (x,), (v,))
    h = np.zeros((9, 9))
    for i in range(8):  # 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2
        h[i, i] += 1200 * x[i] ** 2 - 400 * x[i + 1] + 2
        h[i, i + 1] += -400 * x[i]
        h[i + 1, i] += -400 * x[i]
        h[i + 1, i + 1] += 200
    np.testing.assert_allclose(hv, h @ v, rtol=1e-11, atol=1e-10)
    recorded = _recorded_hvp(monkeypatch, _rosenbrock, (x,), (v,))
    np.testing.assert_allclose(hv, recorded, rtol=1e-12, atol=1e-12)


def _mlp(lib, w1, b1, w2, data):
    hidden = lib.tanh(data @ w1 + b1)
    scores = hidden @ w2
    return (lib.logsumexp(scores, 1) - scores[:, 0]).mean() + 0.01 * (w1 * w1).sum()


def test_mlp_with_several_primals(monkeypatch):
    rng = np.random.default_rng(5)
    data = rng.standard_normal((6, 4))
    params = (rng.standard_normal((4, 5)), rng.standard_normal(5), rng.standard_normal((5, 3)))
    directions = tuple(rng.standard_normal(p.shape) for p in params)
    f = lambda w1, b1, w2: _mlp(jitgrad, w1, b1, w2, jitgrad.tensor(data))
    fast = _fast_hvp(monkeypatch, f, params, directions)
    assert isinstance(fast, tuple) and len(fast) == 3
    recorded = _recorded_hvp(monkeypatch, f, params, directions)
    for a, b in zip(fast, recorded):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(fast, _differences(f, list(params), list(directions))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    torch = pytest.importorskip("torch")
    g = lambda w1, b1, w2: _mlp(torch, w1, b1, w2, torch.tensor(data))
    for a, b in zip(fast, _torch_hvp(torch, g, list(params), list(directions))):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)


def test_tensor_inputs_unused_inputs_and_constants(monkeypatch):
    x = jitgrad.tensor([0.5, -1.0], dtype=jitgrad.float64)
    y = jitgrad.tensor(2.0, dtype=jitgrad.float64)
    ones = jitgrad.ones(2, dtype=jitgrad.float64)
    hx, hy = _fast_hvp(monkeypatch, lambda x, y: (jitgrad.exp(x) * 3.0).sum() + x.sum() * 0.0,
                       (x, y), (ones, jitgrad.tensor(1.0, dtype=jitgrad.float64)))
    assert isinstance(hx, jitgrad.Tensor) and hx.shape == (2,) and hy.shape == ()
    np.testing.assert_allclose(hx.numpy(), 3 * np.exp([0.5, -1.0]), rtol=1e-14)
    assert hy.item() == 0.0
    # a 0-d primal; a function of a constant only
    half = jitgrad.tensor(0.5, dtype=jitgrad.float64)
    hv = _fast_hvp(monkeypatch, lambda t: t ** 4, (y,), (half,))
    assert hv.shape == () and hv.item() == pytest.approx(12 * 4.0 * 0.5)
    zero = func.hvp(lambda t: (ones * 2.0).sum(), (x,), (ones,))
    assert zero.tolist() == [0.0, 0.0]


def test_one_node_as_both_operands_and_a_dict_of_primals(monkeypatch):
    x0, v0 = np.array([0.4, -1.3, 2.2]), np.array([1.0, -0.5, 0.25])
    f = lambda p: (p["x"] * p["x"]).sum() + (jitgrad.sin(p["x"]) * jitgrad.sin(p["x"])).sum()
    hv = _fast_hvp(monkeypatch, f, ({"x": x0},), ({"x": v0},))
    assert isinstance(hv, dict) and set(hv) == {"x"}
    np.testing.assert_allclose(hv["x"], (2 + 2 * np.cos(2 * x0)) * v0, rtol=1e-12)


# -- what takes the recorded path -----------------------------------------------------------------
def test_custom_function_takes_the_recorded_path(monkeypatch):
    from test_function import Cube

    f = lambda x: (Cube.apply(x) * jitgrad.sin(x)).sum()
    x, v = np.array([1.0, 2.0, -0.5]), np.array([1.0, -1.0, 0.5])
    with monkeypatch.context() as m:
        spy = _Spy(m)
        hv = func.hvp(f, (x,), (v,))
    assert spy.refused == 1 and spy.fast == 0
    second = 6 * x * np.sin(x) + 6 * x ** 2 * np.cos(x) - x ** 3 * np.sin(x)
    np.testing.assert_allclose(hv, second * v, rtol=1e-12)


def test_values_modified_in_place_take_the_recorded_path(monkeypatch):
    def f(x):
        y = x * 2.0
        y.mul_(3.0)
        return (y * y * x).sum()

    x, v = np.array([1.0, -2.0]), np.array([0.5, 1.0])
    with monkeypatch.context() as m:
        spy = _Spy(m)
        hv = func.hvp(f, (x,), (v,))
    assert spy.refused == 1
    np.testing.assert_allclose(hv, 216 * x * v, rtol=1e-12)  # f = 36 x^3


def test_hooks_take_the_recorded_path(monkeypatch):
    def f(x):
        y = jitgrad.sin(x)
        y.register_hook(lambda g: g * 2.0)
        return (y * y).sum()

    x, v = np.array([0.3, 1.1]), np.array([1.0, 1.0])
    expected = _recorded_hvp(monkeypatch, f, (x,), (v,))
    with monkeypatch.context() as m:
        spy = _Spy(m)
        hv = func.hvp(f, (x,), (v,))
    assert spy.refused == 1
    np.testing.assert_allclose(hv, expected, rtol=1e-14)


def test_hooks_and_functions_elsewhere_on_the_tape_keep_the_fast_path(monkeypatch):
    # a hooked leaf and a custom Function recorded earlier in the same tape generation,
    # alive but not part of f's graph: the sweep does not reach them
    leaf = jitgrad.tensor([1.0, 2.0], requires_grad=True)
    calls = []
    leaf.register_hook(lambda g: calls.append(1))
    (leaf * leaf).sum().backward()
    kept = jitgrad.tanh(leaf) * 3.0  # a pending graph holding the leaf
    x, v = np.array([0.3, 1.1]), np.array([1.0, -1.0])
    hv = _fast_hvp(monkeypatch, lambda t: (jitgrad.sin(t) * t ** 2).sum(), (x,), (v,))
    expected = ((2 - x ** 2) * np.sin(x) + 4 * x * np.cos(x)) * v
    np.testing.assert_allclose(hv, expected, rtol=1e-13)
    kept.sum().backward()
    assert calls == [1, 1]  # the hook still runs for its own graph
    np.testing.assert_allclose(leaf.grad.numpy(), 2 * leaf.detach().numpy()
                               + 3.0 * (1 - np.tanh(leaf.detach().numpy()) ** 2))


def test_nested_hvp_keeps_the_composable_path():
    torch = pytest.importorskip("torch")
    x0, v0 = np.array([0.3, -1.2, 0.8]), np.array([1.0, 0.5, -2.0])
    ours = func.grad(lambda x: func.hvp(lambda t: (jitgrad.sin(t) * t ** 3).sum(), (x,),
                                        (jitgrad.tensor(v0),)).sum())(jitgrad.tensor(x0))
    theirs = torch.func.grad(lambda x: torch.func.jvp(
        torch.func.grad(lambda t: (torch.sin(t) * t ** 3).sum()), (x,),
        (torch.tensor(v0, dtype=torch.float64),))[1].sum())(torch.tensor(x0, dtype=torch.float64))
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-12)


def test_closing_over_a_tensor_that_requires_grad_keeps_the_result_differentiable():
    w = jitgrad.tensor([0.5, 2.0], dtype=jitgrad.float64, requires_grad=True)
    hv = func.hvp(lambda x: (w * x ** 3).sum(), (jitgrad.tensor([1.0, 2.0]),),
                  (jitgrad.tensor([1.0, 1.0]),))
    assert hv.requires_grad
    hv.sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), [6.0, 12.0])


_PLAIN_PYTHON = """
import numpy as np, jitgrad
from jitgrad import func
x = np.linspace(-1.0, 1.5, 6)
v = np.cos(np.arange(6.0))
f = lambda t: ((jitgrad.sin(t) * t ** 2).sum()
               + jitgrad.logsumexp(t.reshape(2, 3) @ t.reshape(3, 2), 1).sum())
print(repr(func.hvp(f, (x,), (v,)).tolist()))
"""


def test_second_order_kernels_run_as_plain_python():
    """NUMBA_DISABLE_JIT=1 runs the same kernel code as Python (tracebacks, coverage)."""
    jitted = subprocess.run([sys.executable, "-c", _PLAIN_PYTHON], capture_output=True,
                            text=True, check=True, cwd=ROOT).stdout
    plain = subprocess.run([sys.executable, "-c", _PLAIN_PYTHON], capture_output=True, text=True,
                           env=dict(os.environ, NUMBA_DISABLE_JIT="1"), cwd=ROOT)
    assert plain.returncode == 0, plain.stderr
    np.testing.assert_allclose(eval(plain.stdout), eval(jitted), rtol=1e-12)
