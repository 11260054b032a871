"""erf, atan, asin, acos and atan2: one op each (``jitgrad/ops/elementwise.py``), so the
reverse sweep, the create_graph rule, forward mode, Hessian-vector products and compiled
replays all come from the declaration. The generic checks (finite differences, torch,
float32, second order) run through tests/op_specs.py; these pin what is particular to them:
erf is libm's in every path, the domain edges, the quadrants, methods and in-place forms."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import jitgrad
from jitgrad import func

try:
    import torch as real_torch
except ImportError:  # pragma: no cover - torch is the oracle where installed
    real_torch = None

needs_torch = pytest.mark.skipif(real_torch is None, reason="torch not installed")

POINTS = np.array([-4.0, -1.5, -0.3, -1e-9, 0.0, 2e-8, 0.7, 1.2, 3.5, 6.5])


def test_erf_is_libms_in_the_array_the_scalar_and_the_compiled_paths():
    expected = np.array([math.erf(v) for v in POINTS])
    array = jitgrad.erf(jitgrad.tensor(POINTS, dtype=jitgrad.float64))
    np.testing.assert_array_equal(array.numpy(), expected)
    recorded = jitgrad.erf(jitgrad.tensor(POINTS, dtype=jitgrad.float64, requires_grad=True))
    np.testing.assert_array_equal(recorded.detach().numpy(), expected)
    scalars = [jitgrad.erf(jitgrad.tensor(v, dtype=jitgrad.float64)).item() for v in POINTS]
    assert scalars == expected.tolist()
    tape = jitgrad.compile(lambda x: jitgrad.erf(x * 1.0), np.ones(POINTS.size))
    np.testing.assert_array_equal(tape(POINTS), expected)


def test_float32_erf_is_the_rounded_float64_value():
    x = POINTS.astype(np.float32)
    expected = np.array([math.erf(float(v)) for v in x]).astype(np.float32)
    out = jitgrad.erf(jitgrad.tensor(x))
    assert out.dtype == jitgrad.float32
    np.testing.assert_array_equal(out.numpy(), expected)
    assert jitgrad.erf(jitgrad.tensor(x[2])).item() == float(expected[2])


def test_erf_of_a_strided_input_and_into_a_strided_output():
    base = np.arange(12.0).reshape(3, 4) / 5 - 1
    t = jitgrad.tensor(base, dtype=jitgrad.float64).T  # not contiguous
    np.testing.assert_array_equal(jitgrad.erf(t).numpy(),
                                  np.vectorize(math.erf)(base.T))
    u = jitgrad.tensor(base, dtype=jitgrad.float64)
    column = u[:, 1]
    column.erf_()
    np.testing.assert_array_equal(u.numpy()[:, 1], np.vectorize(math.erf)(base[:, 1]))


@pytest.mark.parametrize("dtype", [jitgrad.float32, jitgrad.float64])
def test_derivatives(dtype):
    x = jitgrad.tensor([-0.6, 0.1, 0.8], dtype=dtype, requires_grad=True)
    v = x.detach().numpy().astype(np.float64)
    expected = {
        "erf": 2 / math.sqrt(math.pi) * np.exp(-v * v),
        "atan": 1 / (1 + v * v),
        "asin": 1 / np.sqrt(1 - v * v),
        "acos": -1 / np.sqrt(1 - v * v),
    }
    rtol = 1e-6 if dtype == jitgrad.float32 else 1e-15
    for name, slope in expected.items():
        (grad,) = jitgrad.autograd.grad(getattr(jitgrad, name)(x).sum(), x)
        assert grad.dtype == dtype
        np.testing.assert_allclose(grad.numpy(), slope, rtol=rtol, err_msg=name)


def test_domain_edges_give_nan_and_infinities_quietly():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = jitgrad.tensor([2.0, -1.0, 1.0, 0.5], dtype=jitgrad.float64, requires_grad=True)
        y = jitgrad.asin(x)
        assert math.isnan(y[0].item()) and y[1].item() == -math.pi / 2
        y.sum().backward()
        g = x.grad.numpy()
        assert math.isnan(g[0]) and g[1] == math.inf and g[2] == math.inf
        s = jitgrad.tensor(3.0, dtype=jitgrad.float64, requires_grad=True)
        assert math.isnan(jitgrad.acos(s).item())  # the 0-d path: math.acos raises
        assert jitgrad.acos(jitgrad.tensor(-1.0)).item() == pytest.approx(math.pi)
    assert jitgrad.erf(jitgrad.tensor([math.inf, -math.inf])).tolist() == [1.0, -1.0]
    assert math.isnan(jitgrad.erf(jitgrad.tensor(math.nan)).item())


def test_atan2_quadrants_broadcasting_and_gradients():
    y = jitgrad.tensor([[1.0], [-1.0]], dtype=jitgrad.float64, requires_grad=True)
    x = jitgrad.tensor([2.0, -2.0, 0.0], dtype=jitgrad.float64, requires_grad=True)
    out = jitgrad.atan2(y, x)
    assert out.shape == (2, 3)
    assert out.grad_fn.name() == "Atan2Backward0"
    yv, xv = np.array([[1.0], [-1.0]]), np.array([2.0, -2.0, 0.0])
    np.testing.assert_array_equal(out.detach().numpy(), np.arctan2(yv, xv))
    out.sum().backward()
    r2 = yv * yv + xv * xv
    np.testing.assert_allclose(y.grad.numpy(), (xv / r2).sum(1, keepdims=True), rtol=1e-15)
    np.testing.assert_allclose(x.grad.numpy(), (-yv / r2).sum(0), rtol=1e-15)
    f64 = jitgrad.float64
    minus = jitgrad.atan2(jitgrad.tensor(-0.0, dtype=f64), jitgrad.tensor(-1.0, dtype=f64))
    assert minus.item() == -math.pi
    ints = jitgrad.atan2(jitgrad.tensor([1, -1]), jitgrad.tensor([0, 0]))
    assert ints.dtype == jitgrad.float32
    np.testing.assert_allclose(ints.numpy(), [math.pi / 2, -math.pi / 2], rtol=1e-7)
    with pytest.raises(RuntimeError, match=r"atan2: the shapes \[2\] and \[3\] cannot be"):
        jitgrad.atan2(jitgrad.ones(2), jitgrad.ones(3))


def test_methods_aliases_and_inplace_forms():
    a = jitgrad.tensor([0.2, -0.4], dtype=jitgrad.float64)
    for name, alias in (("atan", "arctan"), ("asin", "arcsin"), ("acos", "arccos")):
        expected = getattr(np, "arc" + name[1:])(a.numpy())
        np.testing.assert_array_equal(getattr(a, name)().numpy(), expected)
        np.testing.assert_array_equal(getattr(a, alias)().numpy(), expected)
        np.testing.assert_array_equal(getattr(jitgrad, alias)(a).numpy(), expected)
    np.testing.assert_array_equal(a.atan2(a + 1).numpy(), np.arctan2(a.numpy(), a.numpy() + 1))
    assert jitgrad.arctan2 is jitgrad.atan2
    b = a.clone()
    assert b.erf_() is b
    np.testing.assert_array_equal(b.numpy(), [math.erf(v) for v in a.tolist()])
    leaf = jitgrad.tensor([0.3, 0.1], requires_grad=True)
    c = leaf * 1.0
    c.atan_()
    assert c.grad_fn.name() == "AtanBackward0"
    c.sum().backward()
    np.testing.assert_allclose(leaf.grad.numpy(), 1 / (1 + np.array([0.3, 0.1]) ** 2),
                               rtol=1e-6)


def test_forward_mode_hvp_and_compiled_replays():
    def f(x):
        return (jitgrad.erf(x) * jitgrad.atan2(x, x * x + 1.0) + jitgrad.asin(x * 0.5)).sum()

    x0 = np.array([0.3, -0.8, 1.1])
    v = np.array([1.0, -2.0, 0.5])
    g = func.grad(f)(x0)
    # directional derivative by central differences of the gradient
    eps = 1e-6
    fd = (func.grad(f)(x0 + eps * v) - func.grad(f)(x0 - eps * v)) / (2 * eps)
    np.testing.assert_allclose(func.hvp(f, (x0,), (v,)), fd, rtol=1e-6, atol=1e-8)
    _, tangent = func.jvp(f, (x0,), (v,))
    np.testing.assert_allclose(tangent, g @ v, rtol=1e-13)
    tape = jitgrad.compile(f, x0)
    x1 = np.array([-0.2, 0.5, 0.9])
    np.testing.assert_allclose(tape.grad(x1), func.grad(f)(x1), rtol=1e-14)
    np.testing.assert_allclose(tape.hvp(x1, v), func.hvp(f, (x1,), (v,)), rtol=1e-12)


@needs_torch
@pytest.mark.parametrize("name", ["erf", "atan", "asin", "acos"])
def test_second_order_matches_torch(name):
    a = np.array([-0.7, -0.1, 0.4, 0.85])
    grads = []
    for lib in (jitgrad, real_torch):
        x = lib.tensor(a, dtype=lib.float64, requires_grad=True)
        (g,) = lib.autograd.grad((getattr(lib, name)(x) ** 2).sum(), x, create_graph=True)
        (h,) = lib.autograd.grad((g * g).sum(), x)
        grads.append((g.detach().numpy(), h.numpy()))
    np.testing.assert_allclose(grads[0][0], grads[1][0], rtol=1e-14)
    np.testing.assert_allclose(grads[0][1], grads[1][1], rtol=1e-13)


@needs_torch
def test_atan2_at_the_origin_matches_torch():
    results = []
    for lib in (jitgrad, real_torch):
        y = lib.tensor([0.0, 0.0, 1.0], dtype=lib.float64, requires_grad=True)
        x = lib.tensor([0.0, -0.0, 0.0], dtype=lib.float64, requires_grad=True)
        out = lib.atan2(y, x)
        out.sum().backward()
        results.append([out.detach().numpy(), y.grad.numpy(), x.grad.numpy()])
    for ours, theirs in zip(*results):
        np.testing.assert_array_equal(ours, theirs)


# -- jitgrad.special ----------------------------------------------------------------------------
SPECIAL = {
    "erf": (lambda S, x, y: S.erf(x), [-1.5, 0.2, 2.0]),
    "expit": (lambda S, x, y: S.expit(x), [-3.0, 0.0, 4.0]),
    "exp2": (lambda S, x, y: S.exp2(x), [-1.5, 0.5, 3.0]),
    "logit": (lambda S, x, y: S.logit(x), [0.1, 0.5, 0.85]),
    "logit eps": (lambda S, x, y: S.logit(x, eps=0.2), [0.1, 0.5, 0.85]),
    "xlogy": (lambda S, x, y: S.xlogy(x, y), [0.0, 1.5, -2.0]),
    "xlogy number": (lambda S, x, y: S.xlogy(2.5, x) + S.xlogy(x, 3.0), [0.3, 1.5, 2.0]),
    "log1p expm1": (lambda S, x, y: S.log1p(S.expm1(x)), [-0.5, 0.2, 1.0]),
    "logsumexp softmax": (lambda S, x, y: S.logsumexp(x, 0) * S.softmax(x, 0)
                          + S.log_softmax(x, 0), [-0.5, 0.2, 1.0]),
}


@needs_torch
@pytest.mark.parametrize("name", list(SPECIAL))
def test_special_functions_match_torch_to_second_order(name):
    f, data = SPECIAL[name]
    other = [0.5, 2.0, 0.7]
    results = []
    for lib in (jitgrad, real_torch):
        x = lib.tensor(data, dtype=lib.float64, requires_grad=True)
        y = lib.tensor(other, dtype=lib.float64, requires_grad=True)
        out = f(lib.special, x, y)
        (gx, gy) = lib.autograd.grad((out * out).sum(), (x, y), create_graph=True,
                                     allow_unused=True)
        gy = lib.zeros(3, dtype=lib.float64) if gy is None else gy
        (h,) = lib.autograd.grad((gx * gx).sum() + (gy * gy).sum(), x, allow_unused=True)
        h = lib.zeros(3, dtype=lib.float64) if h is None else h
        results.append([out.detach().numpy(), gx.detach().numpy(), gy.detach().numpy(),
                        h.numpy(), out.grad_fn.name()])
    ours, theirs = results
    for a, b in zip(ours[:4], theirs[:4]):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
    if name not in ("log1p expm1", "logsumexp softmax", "xlogy number"):
        assert ours[4] == theirs[4]


@needs_torch
def test_xlogy_at_zero_matches_torch_but_for_the_documented_point():
    a = [0.0, 0.0, -0.0, 0.0, 3.0]
    b = [float("nan"), 2.0, 0.5, 0.0, 0.0]
    results = []
    for lib in (jitgrad, real_torch):
        x = lib.tensor(a, dtype=lib.float64, requires_grad=True)
        y = lib.tensor(b, dtype=lib.float64, requires_grad=True)
        out = lib.special.xlogy(x, y)
        out.sum().backward()
        results.append([out.detach().numpy(), x.grad.numpy(), y.grad.numpy()])
    ours, theirs = results
    np.testing.assert_array_equal(ours[0], theirs[0])
    assert list(np.signbit(ours[0])) == list(np.signbit(theirs[0]))
    np.testing.assert_array_equal(ours[1], theirs[1])
    np.testing.assert_array_equal(ours[2][:3], theirs[2][:3])
    assert ours[2][3] == 0.0 and np.isnan(theirs[2][3])  # torch's 0 / 0
    assert ours[2][4] == theirs[2][4] == np.inf
