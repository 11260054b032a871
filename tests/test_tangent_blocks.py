"""The fused tangent sweep: runs of large elementwise entries swept block by block, with the
tangents nobody reads afterwards kept in scratch columns. Every result must equal the
entry-by-entry sweep bit for bit (the same steps on the same numbers, in another order)."""
from __future__ import annotations

import numpy as np
import pytest

import jitgrad as torch
from jitgrad import func
from jitgrad.autograd import forward_ad as fwad
from jitgrad.kernels.layout import SWEEP_BLOCK

N = 8 * SWEEP_BLOCK + 123  # large enough to be blocked; the last block is partial


def _inputs(dtype, n=N, seed=0):
    rng = np.random.default_rng(seed)
    x = torch.tensor(rng.uniform(-2, 2, n), dtype=dtype)
    v = torch.tensor(rng.uniform(-1, 1, n), dtype=dtype)
    return x, v


def _dual(f, x, v):
    """The eager dual-number path: tangents propagated op by op, no fused sweep."""
    with fwad.dual_level():
        out = f(fwad.make_dual(x, v))
        outs = out if isinstance(out, tuple) else (out,)
        return [fwad.unpack_dual(o).tangent.numpy().copy() for o in outs]


def _same(fused, plain):
    fused = fused if isinstance(fused, (tuple, list)) else (fused,)
    assert len(fused) == len(plain)
    for a, b in zip(fused, plain):
        np.testing.assert_array_equal(a.numpy(), b)


CHAINS = {
    # unary and binary elementwise entries: one run
    "w6": lambda x: torch.tanh(x) * torch.exp(-x ** 2),
    # an intermediate is also an output: it must stay in the tangent buffer
    "intermediate output": lambda x: (torch.sin(x) * x, torch.sin(x) + 1.0),
    # a reduction in the middle reads an intermediate after the run
    "reduction after": lambda x: torch.exp(torch.tanh(x) * 2.0) * torch.tanh(x).sum(),
    # broadcasting operands end a run, a scalar result stays small
    "broadcast": lambda x: (torch.cos(x) * x).reshape(-1, 1)[:8 * SWEEP_BLOCK]
    * torch.ones(2) + torch.sigmoid(x)[:8 * SWEEP_BLOCK].reshape(-1, 1),
    # more entries than one run holds
    "long": lambda x: _long_chain(x),
    # an input used again late: its tangent comes from the buffer in every block
    "reused input": lambda x: torch.sqrt(x * x + 1.0) * x - torch.log1p(x * x) / x,
}


def _long_chain(x):
    y = x
    for k in range(40):
        y = torch.sin(y) * 0.5 + x * (0.1 * k)
    return y


@pytest.mark.parametrize("name", sorted(CHAINS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_jvp_matches_the_dual_number_path_exactly(name, dtype):
    f = CHAINS[name]
    x, v = _inputs(dtype)
    _, tangents = func.jvp(f, (x,), (v,))
    _same(tangents, _dual(f, x, v))


def test_jvp_matches_finite_differences():
    f = CHAINS["w6"]
    x, v = _inputs(torch.float64)
    _, tangent = func.jvp(f, (x,), (v,))
    h = 1e-6
    xn, vn = x.numpy(), v.numpy()
    g = lambda z: np.tanh(z) * np.exp(-z ** 2)  # noqa: E731
    expected = (g(xn + h * vn) - g(xn - h * vn)) / (2 * h)
    np.testing.assert_allclose(tangent.numpy(), expected, rtol=1e-6, atol=1e-8)


def test_two_inputs_and_an_inactive_one():
    """A run whose entries read an input without a tangent (a constant) and one whose
    operands have none at all (their outputs stay inactive)."""
    x, v = _inputs(torch.float64)
    c = torch.tensor(np.linspace(0.5, 1.5, N))

    def f(x, y):
        constant = torch.exp(c) * torch.sin(c)  # no tangent reaches these
        return torch.tanh(x) * constant + y * y

    y, w = _inputs(torch.float64, seed=1)
    _, tangent = func.jvp(f, (x, y), (v, w))
    with fwad.dual_level():
        out = f(fwad.make_dual(x, v), fwad.make_dual(y, w))
        expected = fwad.unpack_dual(out).tangent.numpy()
    np.testing.assert_array_equal(tangent.numpy(), expected)


def test_custom_function_in_the_range_keeps_every_tangent():
    class Cube(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x ** 3

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 3 * x ** 2 * g

        @staticmethod
        def jvp(ctx, t):
            (x,) = ctx.saved_tensors
            return 3 * x ** 2 * t

    x, v = _inputs(torch.float64)
    f = lambda x: torch.exp(Cube.apply(torch.sin(x) * x)) * torch.cos(x)  # noqa: E731
    _, tangent = func.jvp(f, (x,), (v,))
    xn, vn = x.numpy(), v.numpy()
    s = np.sin(xn) * xn
    ds = (np.cos(xn) * xn + np.sin(xn)) * vn
    expected = (np.exp(s ** 3) * 3 * s ** 2 * ds * np.cos(xn)
                - np.exp(s ** 3) * np.sin(xn) * vn)
    np.testing.assert_allclose(tangent.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_hvp_through_the_recorded_gradient_uses_the_same_sweep():
    """func.hvp's fallback (a tangent sweep over the recorded reverse sweep) with a hook
    in the function, against the closed form."""
    x, v = _inputs(torch.float64)

    def f(x):
        y = torch.sin(x) * x
        y.register_hook(lambda g: g)  # a Python callback: the composable path
        return (y * y).sum()

    result = func.hvp(f, (x,), (v,))
    xn, vn = x.numpy(), v.numpy()
    y, dy = np.sin(xn) * xn, np.cos(xn) * xn + np.sin(xn)
    d2y = -np.sin(xn) * xn + 2 * np.cos(xn)
    expected = 2 * (dy * dy + y * d2y) * vn
    got = result[0] if isinstance(result, tuple) else result
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-10)


# -- the reverse sweep's blocked runs ----------------------------------------------------------
def _rosenbrock(x):
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


REVERSE = {
    # slices of one input and elementwise entries: one run
    "rosenbrock": _rosenbrock,
    "w6": lambda x: (torch.tanh(x) * torch.exp(-x ** 2)).sum(),
    # an operand used twice in one entry
    "square": lambda x: (torch.sin(x) * torch.sin(x) + x * x).sum(),
    # more entries than one run holds
    "long": lambda x: _long_chain(x).sum(),
    # an intermediate also read after the run (by a reduction)
    "reread": lambda x: (torch.exp(torch.tanh(x) * 2.0) * torch.tanh(x).sum()).sum(),
    # broadcasting ends a run
    "broadcast": lambda x: ((torch.cos(x) * x)[:8 * SWEEP_BLOCK].reshape(-1, 1)
                            * torch.ones(2)).sum(),
}


@pytest.mark.parametrize("name", sorted(REVERSE))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_backward_matches_the_differentiable_rules(name, dtype):
    """The Numba sweep (blocked runs) against the create_graph path (the derivative rules
    as recorded jitgrad ops, no blocking), and against torch where installed."""
    f = REVERSE[name]
    x, _ = _inputs(dtype)
    x.requires_grad_(True)
    f(x).backward()
    fast = x.grad.numpy().copy()
    (rules,) = torch.autograd.grad(f(x), x, create_graph=True)
    tol = 1e-13 if dtype is torch.float64 else 1e-5
    np.testing.assert_allclose(fast, rules.detach().numpy(), rtol=tol, atol=tol)
    peer = pytest.importorskip("torch")
    xt = peer.tensor(x.detach().numpy(), requires_grad=True)
    f_t = {"rosenbrock": _rosenbrock}.get(name)
    if f_t is not None:
        f_t(xt).backward()
        np.testing.assert_allclose(fast, xt.grad.numpy(), rtol=tol, atol=tol)


def test_live_and_retained_intermediates_keep_their_gradients():
    """Intermediates a tensor still refers to (one with retain_grad, one merely alive) are
    not scratch: the retained one gets its gradient, the gradient of x is right."""
    x, _ = _inputs(torch.float64)
    x.requires_grad_(True)
    a = torch.sin(x) * 2.0
    a.retain_grad()
    b = a * a + 1.0  # alive, not retained
    loss = (torch.exp(-b) * 3.0).sum()
    loss.backward()
    xn = x.detach().numpy()
    an = np.sin(xn) * 2.0
    bn = an * an + 1.0
    da = -3.0 * np.exp(-bn) * 2 * an
    np.testing.assert_allclose(a.grad.numpy(), da, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(x.grad.numpy(), da * 2.0 * np.cos(xn), rtol=1e-13, atol=1e-13)
    assert b.requires_grad


def test_a_hook_splits_the_run():
    x, _ = _inputs(torch.float64)
    x.requires_grad_(True)
    seen = []
    y = torch.tanh(x) * x
    y.register_hook(lambda g: seen.append(g.numpy().copy()) or g * 2.0)
    (torch.exp(y) * 0.5).sum().backward()
    xn = x.detach().numpy()
    yn = np.tanh(xn) * xn
    g_y = 0.5 * np.exp(yn)
    np.testing.assert_allclose(seen[0], g_y, rtol=1e-13)
    dy = (1 - np.tanh(xn) ** 2) * xn + np.tanh(xn)
    np.testing.assert_allclose(x.grad.numpy(), 2.0 * g_y * dy, rtol=1e-13)
