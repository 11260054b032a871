"""sign, floor, ceil, round, trunc, frac, fmod, remainder and hypot: one op each
(``jitgrad/ops/elementwise.py``), so eager values, the 0-d path, the reverse sweep, the
create_graph rule, forward mode and compiled replays come from the declaration. The generic
checks run through tests/op_specs.py; these pin the edges: halves (round is half to even),
signed zeros, infinities and nan, integer inputs, signs of remainders, grad_fn names of
number operands, and compiled replays across the jumps."""
from __future__ import annotations

import numpy as np
import pytest

import jitgrad
from jitgrad import func

try:
    import torch as real_torch
except ImportError:  # pragma: no cover - torch is the oracle where installed
    real_torch = None

needs_torch = pytest.mark.skipif(real_torch is None, reason="torch not installed")

EDGES = np.array([-2.5, -1.5, -0.5, -0.0, 0.0, 0.5, 1.5, 2.5, 3.5, -3.7, 3.7, 0.49999999999999994,
                  1e300, -1e300, 4503599627370497.0, np.inf, -np.inf, np.nan])
UNARY = {
    "sign": np.sign, "floor": np.floor, "ceil": np.ceil, "round": np.rint,
    "trunc": np.trunc, "frac": lambda x: x - np.trunc(x),
}


def _bits_equal(a, b):
    """Equal values, nan where nan, and the same sign of zero (a nan's sign is no value)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.signbit(a) & ~np.isnan(a), np.signbit(b) & ~np.isnan(b))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(UNARY))
def test_unary_values_at_the_edges_in_every_path(name, dtype):
    with np.errstate(over="ignore"):  # 1e300 is inf in float32
        x = EDGES.astype(dtype)
    with np.errstate(invalid="ignore"):
        expected = UNARY[name](x)
    expected = np.where(np.isnan(x), 0.0, expected).astype(dtype) if name == "sign" else expected
    f = getattr(jitgrad, name)
    d = getattr(jitgrad, dtype)
    _bits_equal(f(jitgrad.tensor(x, dtype=d)).numpy(), expected)
    recorded = f(jitgrad.tensor(x, dtype=d, requires_grad=True))
    assert recorded.requires_grad
    _bits_equal(recorded.detach().numpy(), expected)
    scalars = [f(jitgrad.tensor(v, dtype=d, requires_grad=True)).item() for v in x]
    _bits_equal(np.array(scalars, dtype), expected)
    tape = jitgrad.compile(lambda t: f(t * 1.0), np.ones(x.size, dtype))
    _bits_equal(np.asarray(tape(x)), expected)


@needs_torch
@pytest.mark.parametrize("name", list(UNARY))
def test_unary_values_match_torch(name):
    ours = getattr(jitgrad, name)(jitgrad.tensor(EDGES, dtype=jitgrad.float64)).numpy()
    theirs = getattr(real_torch, name)(real_torch.tensor(EDGES, dtype=real_torch.float64))
    _bits_equal(ours, theirs.numpy())


@needs_torch
@pytest.mark.parametrize("decimals", [-2, -1, 1, 2, 3])
def test_round_to_decimals_matches_torch(decimals):
    data = np.array([1234.5678, -0.125, 0.0451, 99.995, -250.0, 7.0])
    for dtype in ("float32", "float64"):
        x = jitgrad.tensor(data, dtype=getattr(jitgrad, dtype), requires_grad=True)
        y = jitgrad.round(x, decimals=decimals)
        t = real_torch.round(real_torch.tensor(data, dtype=getattr(real_torch, dtype),
                                               requires_grad=True), decimals=decimals)
        np.testing.assert_array_equal(y.detach().numpy(), t.detach().numpy())
        assert type(y.grad_fn).__name__ == type(t.grad_fn).__name__ == "RoundBackward1"
        y.sum().backward()
        np.testing.assert_array_equal(x.grad.numpy(), np.zeros(6))
    with pytest.raises(TypeError, match="decimals"):
        jitgrad.round(jitgrad.ones(2), decimals=1.5)


def test_integer_and_bool_inputs():
    ints = jitgrad.tensor([-3, 0, 4])
    for name in ("floor", "ceil", "round", "trunc", "fix"):
        out = getattr(jitgrad, name)(ints)
        assert out.dtype == jitgrad.int64
        np.testing.assert_array_equal(out.numpy(), [-3, 0, 4])
    np.testing.assert_array_equal(jitgrad.sign(ints).numpy(), [-1, 0, 1])
    assert jitgrad.sign(ints).dtype == jitgrad.int64
    flags = jitgrad.sign(jitgrad.tensor([True, False]))
    assert flags.dtype == jitgrad.bool and flags.tolist() == [True, False]
    with pytest.raises(RuntimeError, match=r"frac\(\): not implemented for torch.int64"):
        jitgrad.frac(ints)
    np.testing.assert_array_equal(jitgrad.fmod(jitgrad.tensor([5, -5]), 3).numpy(), [2, -2])
    np.testing.assert_array_equal((jitgrad.tensor([5, -5]) % 3).numpy(), [2, 1])
    assert jitgrad.hypot(jitgrad.tensor([3]), jitgrad.tensor([4])).tolist() == [5.0]


def _program(name):
    op = getattr(jitgrad, name)
    return lambda p, q: op(p * 1.0, q * 1.0)


@needs_torch
def test_remainders_signs_and_names_match_torch():
    a = np.array([5.5, -5.5, 5.5, -5.5, 0.0, -0.0, 3.0, 1e-20])
    b = np.array([2.0, 2.0, -2.0, -2.0, 3.0, 3.0, 1.5, -3.0])
    for name in ("fmod", "remainder"):
        expected = getattr(real_torch, name)(real_torch.tensor(a), real_torch.tensor(b)).numpy()
        ours = getattr(jitgrad, name)(jitgrad.tensor(a, requires_grad=True), jitgrad.tensor(b))
        theirs = getattr(real_torch, name)(real_torch.tensor(a, requires_grad=True),
                                           real_torch.tensor(b))
        _bits_equal(ours.detach().numpy(), theirs.detach().numpy())
        assert type(ours.grad_fn).__name__ == type(theirs.grad_fn).__name__
        ours = getattr(jitgrad, name)(jitgrad.tensor(a, requires_grad=True), -1.5)
        theirs = getattr(real_torch, name)(real_torch.tensor(a, requires_grad=True), -1.5)
        _bits_equal(ours.detach().numpy(), theirs.detach().numpy())
        assert type(ours.grad_fn).__name__ == type(theirs.grad_fn).__name__
        # 0-d operands take the Python-float path: the same values
        scalars = [getattr(jitgrad, name)(jitgrad.tensor(p, requires_grad=True), q).item()
                   for p, q in zip(a, b)]
        _bits_equal(np.array(scalars), expected)
        tape = jitgrad.compile(_program(name), np.ones(a.size), np.ones(a.size))
        _bits_equal(np.asarray(tape(a, b)), expected)
    x = jitgrad.tensor(a, requires_grad=True)
    _bits_equal((x % 2.5).detach().numpy(), real_torch.remainder(real_torch.tensor(a),
                                                                 2.5).numpy())
    _bits_equal((7.0 % jitgrad.tensor(b)).numpy(),
                real_torch.remainder(7.0, real_torch.tensor(b)).numpy())
    with np.errstate(invalid="ignore"):  # a zero divisor: nan, as torch
        assert np.isnan(jitgrad.fmod(jitgrad.tensor([1.0]), 0.0).item())
        assert np.isnan(jitgrad.remainder(jitgrad.tensor(1.0), jitgrad.tensor(0.0)).item())


@needs_torch
def test_derivatives_match_torch():
    a = np.array([[5.5, -5.2, 0.3], [-0.7, 2.25, -3.9]])
    b = np.array([2.0, -1.5, 0.4])
    for name in ("fmod", "remainder", "hypot"):
        grads = []
        for lib in (jitgrad, real_torch):
            x = lib.tensor(a, requires_grad=True)
            y = lib.tensor(b, requires_grad=True)
            out = getattr(lib, name)(x, y)
            (out * out).sum().backward()
            grads.append((x.grad.numpy(), y.grad.numpy()))
        for ours, theirs in zip(*grads):
            np.testing.assert_allclose(ours, theirs, rtol=1e-14, atol=1e-14)
    # hypot at the origin: 0/0, nan as torch's
    x = jitgrad.tensor(0.0, requires_grad=True)
    jitgrad.hypot(x, jitgrad.tensor(0.0)).backward()
    assert np.isnan(x.grad.item())


@needs_torch
@pytest.mark.parametrize("create_graph", [False, True])
def test_remainder_derivative_at_infinite_and_odd_divisors_matches_torch(create_graph):
    # torch's floor division: -1 // inf is -1 (the remainder is inf), inf // 2 is nan
    a = np.array([-1.0, 1.0, -0.0, 3.0, np.inf, -2.5, 0.3, 1e-300, 5.0, 6.0])
    b = np.array([np.inf, np.inf, -np.inf, -np.inf, 2.0, np.nan, 0.1, -1e300, 0.0, -3.0])
    grads = []
    for lib in (jitgrad, real_torch):
        x = lib.tensor(a, requires_grad=True)
        y = lib.tensor(b, requires_grad=True)
        out = lib.remainder(x, y)
        (gy,) = lib.autograd.grad(out.sum(), y, create_graph=create_graph)
        grads.append(gy.detach().numpy())
    _bits_equal(*grads)


def test_piecewise_constant_ops_have_zero_derivatives_to_any_order():
    x = jitgrad.tensor([0.3, -1.7, 2.5], dtype=jitgrad.float64, requires_grad=True)
    for name in ("sign", "floor", "ceil", "round", "trunc"):
        y = getattr(jitgrad, name)(x * x)
        (g,) = jitgrad.autograd.grad(y.sum() + (x * x).sum(), x, create_graph=True)
        np.testing.assert_array_equal(g.detach().numpy(), 2 * x.detach().numpy())
        (h,) = jitgrad.autograd.grad(g.sum(), x)
        np.testing.assert_array_equal(h.numpy(), [2.0, 2.0, 2.0])
    (g,) = jitgrad.autograd.grad(jitgrad.frac(x * 3.0).sum(), x)
    np.testing.assert_array_equal(g.numpy(), [3.0, 3.0, 3.0])


def test_forward_mode_and_hvp():
    def f(x):
        return (jitgrad.floor(x * 2.0) * x + jitgrad.frac(x) * x
                + jitgrad.fmod(x, 0.7) * x + jitgrad.hypot(x, x * 0.5)).sum()

    x0 = np.array([0.3, -1.2, 2.6])
    v = np.array([1.0, -0.5, 2.0])
    _, tangent = func.jvp(f, (jitgrad.tensor(x0),), (jitgrad.tensor(v),))
    grad = func.grad(f)(jitgrad.tensor(x0)).numpy()
    np.testing.assert_allclose(tangent.item(), grad @ v, rtol=1e-13)
    h = 1e-6
    fd = (func.grad(f)(jitgrad.tensor(x0 + h * v)).numpy()
          - func.grad(f)(jitgrad.tensor(x0 - h * v)).numpy()) / (2 * h)
    np.testing.assert_allclose(func.hvp(f, (jitgrad.tensor(x0),), (jitgrad.tensor(v),))
                               .numpy(), fd, rtol=1e-6, atol=1e-8)


def test_compiled_replays_cross_the_jumps_without_recording_again():
    def f(x):
        return (jitgrad.floor(x) * x + jitgrad.round(x) * x * x + jitgrad.sign(x) * x
                + jitgrad.remainder(x, 1.5) * x).sum()

    tape = jitgrad.compile(f, np.array([0.2, 1.7, -0.4]))
    for data in (np.array([-2.3, 0.6, 3.5]), np.array([1.5, -0.5, 2.2])):
        x = jitgrad.tensor(data, requires_grad=True)
        y = f(x)
        y.backward()
        assert tape(data) == pytest.approx(y.item(), rel=1e-14)
        np.testing.assert_allclose(tape.grad(data), x.grad.numpy(), rtol=1e-14)
        v = np.array([0.5, 1.0, -1.0])
        np.testing.assert_allclose(tape.jvp(data, v)[1], x.grad.numpy() @ v, rtol=1e-13)
    assert tape.recordings == 1


def test_methods_aliases_and_in_place_forms():
    data = np.array([1.25, -2.75, 3.5])
    t = jitgrad.tensor(data)
    np.testing.assert_array_equal(t.floor().numpy(), np.floor(data))
    np.testing.assert_array_equal(t.fix().numpy(), np.trunc(data))
    np.testing.assert_array_equal(t.round(decimals=1).numpy(), [1.2, -2.8, 3.5])
    np.testing.assert_array_equal(t.fmod(2.0).numpy(), np.fmod(data, 2.0))
    np.testing.assert_array_equal(t.remainder(2.0).numpy(), np.remainder(data, 2.0))
    np.testing.assert_array_equal(t.hypot(t).numpy(), np.hypot(data, data))
    for name, expected in [("floor_", np.floor(data)), ("ceil_", np.ceil(data)),
                           ("round_", np.rint(data)), ("trunc_", np.trunc(data)),
                           ("frac_", data - np.trunc(data)), ("sign_", np.sign(data))]:
        u = jitgrad.tensor(data)
        assert getattr(u, name)() is u
        np.testing.assert_array_equal(u.numpy(), expected)
    u = jitgrad.tensor(data)
    u.remainder_(2.0)
    np.testing.assert_array_equal(u.numpy(), np.remainder(data, 2.0))
    leaf = jitgrad.tensor(data, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        leaf.floor_()
