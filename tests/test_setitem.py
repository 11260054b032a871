"""``t[key] = value`` on recorded tensors (torch's CopySlices): values, gradients (first and
second order) and errors, against explicit values, finite differences and torch."""
from __future__ import annotations

import numpy as np
import pytest

import jitgrad as torch

try:
    import torch as real_torch
except ImportError:  # pragma: no cover - the oracle is optional
    real_torch = None

needs_torch = pytest.mark.skipif(real_torch is None, reason="torch (the oracle) not installed")


def test_assigning_a_number_into_a_recorded_tensor():
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = x * 2
    y[0] = 10.0
    assert y.tolist() == [10.0, 4.0, 6.0]
    assert y.requires_grad and not y.is_leaf
    assert repr(y) == "tensor([10.,  4.,  6.], grad_fn=<CopySlices>)"  # torch's
    assert type(y.grad_fn).__name__ == "CopySlices"
    assert "MulBackward0" in [type(f).__name__ for f, _ in y.grad_fn.next_functions]
    assert type(torch.where(x > 1, x, y).grad_fn).__name__ == "WhereBackward0"
    (y * y).sum().backward()
    assert x.grad.tolist() == [0.0, 16.0, 24.0]  # nothing through the overwritten element


def test_assigning_recorded_values_into_a_plain_tensor():
    # building a result by assignment: the plain tensor becomes part of the graph
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    out = torch.zeros(3, 2)
    assert not out.requires_grad
    out[1] = w * 3
    out[2, 0] = w[1] ** 2
    assert out.requires_grad and out.grad_fn is not None
    assert out.tolist() == [[0.0, 0.0], [3.0, 6.0], [4.0, 0.0]]
    out.sum().backward()
    assert w.grad.tolist() == [3.0, 3.0 + 4.0]


def test_integer_array_and_mask_keys_and_broadcast_values():
    x = torch.arange(12.0).reshape(3, 4).requires_grad_(True)
    v = torch.tensor([[-1.0, -2.0, -3.0, -4.0]], requires_grad=True)
    y = x * 1.0
    y[[0, 2]] = v  # (1, 4) broadcast to the (2, 4) region
    y[y > 6.0] = 0.0
    expected = np.arange(12.0).reshape(3, 4)
    expected[[0, 2]] = [[-1.0, -2.0, -3.0, -4.0]]
    kept = expected <= 6.0
    expected[~kept] = 0.0
    np.testing.assert_array_equal(y.detach().numpy(), expected)
    (y * torch.arange(12.0).reshape(3, 4)).sum().backward()
    weights = np.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(
        x.grad.numpy(), np.where((np.arange(3) == 1)[:, None] & kept, weights, 0))
    np.testing.assert_array_equal(v.grad.numpy(), (weights[0] + weights[2])[None])


def test_repeated_positions_keep_the_last_value():
    x = torch.zeros(3, requires_grad=True)
    a = torch.tensor([5.0, 7.0], requires_grad=True)
    y = x + 1.0
    y[[1, 1]] = a
    assert y.tolist() == [1.0, 7.0, 1.0]
    y.sum().backward()
    assert a.grad.tolist() == [0.0, 1.0]
    assert x.grad.tolist() == [1.0, 0.0, 1.0]


def test_second_order_through_an_assignment():
    x = torch.tensor([1.5, -0.5], dtype=torch.float64, requires_grad=True)
    out = torch.zeros(2, 2, dtype=torch.float64)
    out[0] = x ** 3
    out[:, 1] = torch.sin(x)
    f = (out * out).sum()
    (g,) = torch.autograd.grad(f, x, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), x)

    def f_np(v):
        o = np.zeros((2, 2))
        o[0] = v ** 3
        o[:, 1] = np.sin(v)
        return (o * o).sum()

    def grad_np(v, eps=1e-6):
        return np.array([(f_np(v + eps * e) - f_np(v - eps * e)) / (2 * eps) for e in np.eye(2)])

    v = x.detach().numpy()
    np.testing.assert_allclose(g.detach().numpy(), grad_np(v), rtol=1e-7)
    hess = np.array([(grad_np(v + 1e-4 * e) - grad_np(v - 1e-4 * e)) / 2e-4 for e in np.eye(2)])
    np.testing.assert_allclose(h.numpy(), hess.sum(axis=0), rtol=1e-4)


def test_dtypes_follow_the_target():
    x = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    y = torch.zeros(2)  # float32
    y[0] = x[1] * 2
    assert y.dtype == torch.float32
    y.sum().backward()
    assert x.grad.dtype == torch.float64 and x.grad.tolist() == [0.0, 2.0]
    counts = torch.zeros(2, dtype=torch.long)
    counts[1] = x[0] * 3  # an integer target takes the value, not the graph
    assert counts.tolist() == [0, 3] and not counts.requires_grad


def test_errors():
    leaf = torch.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        leaf[0] = 3.0
    y = leaf * 2
    with pytest.raises(RuntimeError, match=r"shape mismatch: value tensor of shape \[3\] "
                                           r"cannot be broadcast to indexing result of shape "
                                           r"\[2\]"):
        y[:] = torch.ones(3)
    with pytest.raises(IndexError, match="shape \\[2\\]"):
        y[5] = 1.0
    assert y.tolist() == [2.0, 4.0]  # unchanged by the failed writes
    z = y * y  # saves y
    y[0] = 0.0
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        z.sum().backward()
    with torch.no_grad():  # not recorded: a plain write
        w = leaf * 1
        w[1] = 9.0
    assert w.tolist() == [1.0, 9.0] and not w.requires_grad


def test_a_compiled_replay_assigns_at_new_inputs():
    def f(x):
        y = x * 2.0
        y[1] = x[0] * 5.0
        y[y > 3.0] = 0.0  # a data-dependent key: guarded, recorded again when it changes
        return (y * y).sum()

    def eager(v):
        t = torch.tensor(v, dtype=torch.float64, requires_grad=True)
        out = f(t)
        out.backward()
        return out.item(), t.grad.numpy()

    x1, x2 = np.array([0.25, 2.0, 1.0]), np.array([0.5, 1.0, 0.75])
    compiled = torch.compile(f, x1)
    for v in (x1, x2, np.array([0.1, 0.2, 0.3])):
        value, grad = compiled.value_and_grad(v)
        expected_value, expected_grad = eager(v)
        assert value == expected_value
        np.testing.assert_array_equal(grad, expected_grad)


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_against_torch(dtype):
    rng = np.random.default_rng(3)
    data = rng.normal(size=(4, 5))
    values = rng.normal(size=(5,))

    def program(lib, x, v):
        y = lib.tanh(x) * 2.0
        y[1] = v * 3.0
        y[:, 2] = lib.sin(v[:4])
        y[[0, 3], 1:3] = v[0] * v[1]
        y[y < -1.0] = -1.0
        return (y ** 2).sum() + y[2].sum()

    results = []
    for lib in (torch, real_torch):
        d = getattr(lib, dtype)
        x = lib.tensor(data, dtype=d, requires_grad=True)
        v = lib.tensor(values, dtype=d, requires_grad=True)
        out = program(lib, x, v)
        gx, gv = lib.autograd.grad(out, (x, v), create_graph=True)
        hx = lib.autograd.grad((gx.sum() + gv.sum()), x, allow_unused=True)[0]
        results.append([out.detach().numpy(), gx.detach().numpy(), gv.detach().numpy(),
                        np.zeros_like(data) if hx is None else hx.detach().numpy()])
    rtol = 1e-5 if dtype == "float32" else 1e-12
    for ours, theirs in zip(*results):
        np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=rtol)


@needs_torch
def test_augmented_assignment_into_a_recorded_tensor():
    # y[k] op= v is y[k] read, the op in place on that copy, then y[k] = the result
    data = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    results = []
    for lib in (torch, real_torch):
        x = lib.tensor(data, requires_grad=True)
        y = x * 1.0
        y[:, :2] *= 2
        y[y > 5] += 100
        y[0] -= x[1]
        y[1, 1:] /= x[0, :2] + 1.0
        y.sum().backward()
        results.append((y.detach().numpy(), x.grad.numpy()))
    for ours, theirs in zip(*results):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6)
