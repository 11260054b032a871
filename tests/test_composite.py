"""torch functions written as compositions of recorded ops (``jitgrad/composite.py``):
values, first and second derivatives and grad_fn names against torch, finite differences,
errors, views, and a compiled replay that must not reuse a sort's permutation."""
from __future__ import annotations

import numpy as np
import pytest

import jitgrad as torch

try:
    import torch as real_torch
except ImportError:  # pragma: no cover - the oracle is optional
    real_torch = None

needs_torch = pytest.mark.skipif(real_torch is None, reason="torch (the oracle) not installed")

X = np.array([[0.7, -1.2, 2.5, 0.3], [1.9, 0.4, -0.6, 1.1], [-0.8, 2.2, 0.9, -1.7]])
POSITIVE = np.abs(X) + 0.2


def _long(L, data):
    return L.tensor(data, dtype=L.int64)


# name -> (input data, function of (lib, x)); each returns a tensor (or a tuple of them)
CASES = {
    "square": (X, lambda L, x: L.square(x)),
    "rsqrt": (POSITIVE, lambda L, x: L.rsqrt(x)),
    "sinh": (X, lambda L, x: L.sinh(x)),
    "cosh": (X, lambda L, x: L.cosh(x)),
    "log2": (POSITIVE, lambda L, x: L.log2(x)),
    "log10": (POSITIVE, lambda L, x: x.log10()),
    "clamp tensor bounds": (X, lambda L, x: L.clamp(x, min=x[0] * 0.5, max=x[1] + 0.5)),
    "clamp_min": (X, lambda L, x: x.clamp_min(0.1)),
    "clamp_max tensor": (X, lambda L, x: L.clamp_max(x, x[2])),
    "masked_fill": (X, lambda L, x: x.masked_fill(x > 0.5, -1.0)),
    "masked_fill tensor": (X, lambda L, x: L.masked_fill(x, x < 0, x[0, 0] * 3)),
    "gather dim 1": (X, lambda L, x: L.gather(x, 1, _long(L, [[3, 0], [1, 1], [0, 2]]))),
    "gather dim 0": (X, lambda L, x: x.gather(0, _long(L, [[2, 0, 1, 0], [1, 1, 0, 2]]))),
    "index_select": (X, lambda L, x: L.index_select(x, 1, _long(L, [3, 0, 3]))),
    "flip": (X, lambda L, x: L.flip(x, [0, 1])),
    "repeat": (X, lambda L, x: x.repeat(2, 1, 3)),
    "triu": (X, lambda L, x: L.triu(x, 1)),
    "tril": (X, lambda L, x: x.tril(-1)),
    "diag of a matrix": (X, lambda L, x: L.diag(x, 1)),
    "diag of a vector": (X[0], lambda L, x: L.diag(x, -1)),
    "trace": (X, lambda L, x: L.trace(x)),
    "outer": (X[0], lambda L, x: L.outer(x, x * 2)),
    "sort": (X, lambda L, x: L.sort(x, 1).values),
    "sort descending": (X, lambda L, x: x.sort(0, descending=True)[0]),
    "topk": (X, lambda L, x: L.topk(x, 2).values),
    "topk smallest": (X, lambda L, x: x.topk(2, dim=0, largest=False).values),
    "narrow": (X, lambda L, x: x.narrow(1, 1, 2) * 2),
    "split": (X, lambda L, x: L.cat([p * (k + 1) for k, p in enumerate(x.split(3, 1))], 1)),
    "split sections": (X, lambda L, x: L.cat([p.sum(0) for p in L.split(x, [1, 2], 0)])),
    "chunk": (X, lambda L, x: L.stack([p.sum() for p in x.chunk(3, 1)])),
    "unbind": (X, lambda L, x: L.stack([r * (k + 1) for k, r in enumerate(x.unbind(0))])),
    "std_mean": (X, lambda L, x: L.stack(list(L.std_mean(x, 1)))),
    "var_mean": (X, lambda L, x: L.stack(list(L.var_mean(x)))),
    "dist": (X, lambda L, x: L.dist(x[0], x[1], 3)),
    "dist 2": (X, lambda L, x: x[0].dist(x[2])),
    "dist inf": (X, lambda L, x: L.dist(x[0], x[1], float("inf"))),
    "roll": (X, lambda L, x: L.roll(x, (1, -2), (0, 1))),
    "roll flat": (X, lambda L, x: x.roll(5)),
    "diff": (X, lambda L, x: L.diff(x)),
    "diff twice dim 0 prepend": (X, lambda L, x: L.diff(x, 2, 0, prepend=x[:1] * 3)),
    "lerp scalar": (X, lambda L, x: L.lerp(x, x.flip(0) * 2, 0.3)),
    "lerp scalar high": (X, lambda L, x: x.lerp(x.flip(1), 0.8)),
    "lerp tensor": (X, lambda L, x: L.lerp(x[0], x[1], x[2])),
    "logaddexp": (X, lambda L, x: L.logaddexp(x, x.flip(0) * 2)),
    "logaddexp ties": (X, lambda L, x: L.logaddexp(x, x)),
    "cumsum": (X, lambda L, x: L.cumsum(x, 1)),
    "cumsum dim 0": (X, lambda L, x: x.cumsum(-2)),
    "cumsum long": (np.linspace(-1, 1, 37), lambda L, x: L.cumsum(x, 0)),
    "cumprod": (X, lambda L, x: L.cumprod(x, 1)),
    "cumprod dim 0": (X, lambda L, x: x.cumprod(-2)),
    "cumprod with zeros": (np.array([[0.7, 0.0, 1.3, 0.0, -1.1], [0.0, 1.2, -0.9, 1.4, 0.8]]),
                           lambda L, x: L.cumprod(x, 1)),
    "cumprod long": (1 + 0.1 * np.sin(np.arange(37.0)), lambda L, x: L.cumprod(x, 0)),
}


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(CASES))
def test_composite_matches_torch_to_second_order(name, dtype):
    data, f = CASES[name]
    results = []
    for lib in (torch, real_torch):
        d = getattr(lib, dtype)
        x = lib.tensor(data, dtype=d, requires_grad=True)
        y = f(lib, x)
        w = lib.tensor(np.cos(np.arange(y.numel()) + 1.0).reshape(tuple(y.shape)), dtype=d)
        # y * y: the second derivative is not zero even where y is linear in x
        (g,) = lib.autograd.grad((y * y * w).sum(), x, create_graph=True)
        u = lib.tensor(np.sin(np.arange(x.numel()) + 2.0).reshape(data.shape), dtype=d)
        (h,) = lib.autograd.grad((g * u).sum(), x)
        results.append((y.detach().numpy(), g.detach().numpy(), h.numpy(),
                        type(y.grad_fn).__name__))
    ours, theirs = results
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == "float32" else dict(rtol=1e-12, atol=1e-12)
    for a, b in zip(ours[:3], theirs[:3]):
        np.testing.assert_allclose(a, b, **tol)
    if name not in ("split", "split sections", "chunk", "unbind", "std_mean", "var_mean",
                    "narrow", "diff", "diff twice dim 0 prepend"):
        # their last op is the composite's, not a named one
        assert ours[3] == theirs[3]


@pytest.mark.parametrize("name", ["sinh", "cosh", "log2", "rsqrt", "gather dim 1", "sort",
                                  "clamp tensor bounds", "diag of a vector", "roll",
                                  "diff twice dim 0 prepend", "lerp tensor", "logaddexp",
                                  "cumsum long", "cumprod with zeros", "cumprod long"])
def test_composite_gradients_match_finite_differences(name):
    data, f = CASES[name]
    x = torch.tensor(data, dtype=torch.float64, requires_grad=True)
    w = np.cos(np.arange(f(torch, x).numel()) + 1.0)

    def value(a):
        out = f(torch, torch.tensor(a, dtype=torch.float64)).detach().numpy().reshape(-1)
        return float((out * out * w).sum())

    y = f(torch, x)
    (y * y * torch.tensor(w.reshape(tuple(y.shape)))).sum().backward()
    h = 1e-6
    numeric = np.zeros(data.size)
    for k in range(data.size):
        e = np.zeros(data.size)
        e[k] = h
        numeric[k] = (value(data + e.reshape(data.shape)) -
                      value(data - e.reshape(data.shape))) / (2 * h)
    np.testing.assert_allclose(x.grad.numpy().reshape(-1), numeric, rtol=1e-6, atol=1e-7)


@needs_torch
def test_indices_and_non_differentiable_results_match_torch():
    data = np.array([[3.0, 1.0, 3.0, 2.0], [0.5, 0.5, -1.0, 4.0]])
    for a, b in [
        (torch.sort(torch.tensor(data), 1).indices, real_torch.sort(real_torch.tensor(data),
                                                                    dim=1, stable=True).indices),
        (torch.argsort(torch.tensor(data), 0, descending=True),
         real_torch.argsort(real_torch.tensor(data), dim=0, descending=True, stable=True)),
        (torch.topk(torch.tensor(data), 3).indices[:, 0],
         real_torch.topk(real_torch.tensor(data), 3).indices[:, 0]),
        (torch.isclose(torch.tensor([1.0, np.nan, np.inf, 1.0]),
                       torch.tensor([1.0 + 1e-9, np.nan, np.inf, 1.1]), equal_nan=True),
         real_torch.isclose(real_torch.tensor([1.0, np.nan, np.inf, 1.0]),
                            real_torch.tensor([1.0 + 1e-9, np.nan, np.inf, 1.1]),
                            equal_nan=True)),
    ]:
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for make in (lambda L: L.ones(2, 3).new_zeros(4), lambda L: L.ones(2).new_full((2, 2), 3),
                 lambda L: L.ones(2, dtype=L.float64).new_ones((1, 2)),
                 lambda L: L.logspace(0, 2, 3), lambda L: L.ones(2).new_tensor([1, 2])):
        ours, theirs = make(torch), make(real_torch)
        assert repr(ours) == repr(theirs)


def test_split_chunk_unbind_narrow_are_views():
    b = torch.arange(12.0).reshape(3, 4)
    first, _ = b.split(2, 1)
    first.mul_(-1)
    b.unbind(0)[2].fill_(0.0)
    b.narrow(0, 1, 1).add_(100)
    assert b.tolist() == [[-0.0, -1.0, 2.0, 3.0], [96.0, 95.0, 106.0, 107.0],
                          [0.0, 0.0, 0.0, 0.0]]
    assert [tuple(p.shape) for p in b.chunk(3, 1)] == [(3, 2), (3, 2)]  # as torch's
    assert [tuple(p.shape) for p in torch.ones(5).split([2, 3])] == [(2,), (3,)]


def test_in_place_forms_and_methods():
    x = torch.tensor([0.5, 1.0, 2.0], requires_grad=True)
    y = x * 1
    y.sin_().clamp_max_(0.9).masked_fill_(torch.tensor([True, False, False]), 0.0)
    assert type(y.grad_fn).__name__ == "MaskedFillBackward0"
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [0.0, np.cos(1.0), 0.0])  # sin 2 > 0.9
    z = torch.ones(2, 2)
    z.tril_()
    assert z.tolist() == [[1.0, 0.0], [1.0, 1.0]]


def test_errors_name_the_problem():
    x = torch.ones(2, 3)
    with pytest.raises(RuntimeError, match="out of bounds for dimension 1 with size 3"):
        torch.gather(x, 1, torch.tensor([[3], [0]]))
    with pytest.raises(RuntimeError, match="same number of dimensions"):
        torch.gather(x, 1, torch.tensor([0, 1]))
    with pytest.raises(RuntimeError, match="int64"):
        torch.gather(x, 1, torch.tensor([[0.0], [1.0]]))
    with pytest.raises(IndexError, match="index out of range"):
        torch.index_select(x, 0, torch.tensor([2]))
    with pytest.raises(RuntimeError, match="boolean masks"):
        x.masked_fill(torch.tensor([[1, 0, 1], [0, 0, 0]]), 0.0)
    with pytest.raises(RuntimeError, match="selected index k out of range"):
        torch.topk(x, 4)
    with pytest.raises(RuntimeError, match="sum exactly to 3"):
        x.split([1, 1], 1)
    with pytest.raises(RuntimeError, match="exceeds dimension size"):
        x.narrow(1, 2, 2)
    with pytest.raises(RuntimeError, match="at least 2 dimensions"):
        torch.triu(torch.ones(3))
    with pytest.raises(TypeError, match="must be callable"):
        torch.trace(3.0)  # neither a matrix nor a function


def test_a_compiled_replay_sorts_again():
    def f(x):
        values = torch.sort(x).values
        return (values * torch.arange(1.0, 5.0, dtype=torch.float64)).sum()

    tape = torch.compile(f, np.array([1.0, 2.0, 3.0, 4.0]))
    for a in ([4.0, 3.0, 2.0, 1.0], [2.0, 1.0, 4.0, 3.0]):
        a = np.array(a)
        x = torch.tensor(a, requires_grad=True)
        f(x).backward()
        np.testing.assert_array_equal(tape.grad(a), x.grad.numpy())
    assert torch.trace(f, np.zeros(4)).recordings == 1  # trace(f, ...) is compile


@needs_torch
def test_logaddexp_of_infinities_and_lerp_at_the_ends_match_torch():
    a = [float("-inf"), float("inf"), 1.0, float("-inf"), 3.0]
    b = [float("-inf"), float("inf"), float("-inf"), 2.0, 3.0]
    ours = torch.logaddexp(torch.tensor(a), torch.tensor(b))
    theirs = real_torch.logaddexp(real_torch.tensor(a), real_torch.tensor(b))
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    start, end = np.array([1.0, -3.0, 1e16]), np.array([2.5, 7.0, 1.0])
    for w in (0.0, 0.49, 0.5, 1.0):
        ours = torch.lerp(torch.tensor(start), torch.tensor(end), w)
        theirs = real_torch.lerp(real_torch.tensor(start), real_torch.tensor(end), w)
        if w in (0.0, 1.0):  # the ends exactly
            np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
        else:  # torch's vector loop rounds once (a fused multiply-add), NumPy twice
            np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=5e-16)
    with pytest.raises(RuntimeError, match="shifts and dimensions must align"):
        torch.roll(torch.ones(2, 2), (1, 1))
    with pytest.raises(RuntimeError, match="at least one-dimensional"):
        torch.diff(torch.tensor(1.0))


@needs_torch
def test_cumsum_of_integers_bools_and_with_a_dtype_matches_torch():
    data = [[3, -1, 4], [1, 5, -9]]
    for ours, theirs in [
        (torch.cumsum(torch.tensor(data), 1), real_torch.cumsum(real_torch.tensor(data), 1)),
        (torch.tensor([True, False, True]).cumsum(0),
         real_torch.tensor([True, False, True]).cumsum(0)),
        (torch.cumsum(torch.tensor(data), 0, dtype=torch.float64),
         real_torch.cumsum(real_torch.tensor(data), 0, dtype=real_torch.float64)),
    ]:
        assert str(ours.dtype) == str(theirs.dtype)
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    x = torch.tensor(2.5, requires_grad=True)
    assert torch.cumsum(x, 0).grad_fn.name() == "CumsumBackward0"
    with pytest.raises(IndexError, match="Dimension out of range"):
        torch.cumsum(torch.ones(3), 1)


@needs_torch
def test_cumprod_of_integers_bools_and_with_a_dtype_matches_torch():
    data = [[3, -1, 4], [1, 5, -9]]
    for ours, theirs in [
        (torch.cumprod(torch.tensor(data), 1), real_torch.cumprod(real_torch.tensor(data), 1)),
        (torch.tensor([True, True, False, True]).cumprod(0),
         real_torch.tensor([True, True, False, True]).cumprod(0)),
        (torch.cumprod(torch.tensor(data), 0, dtype=torch.float64),
         real_torch.cumprod(real_torch.tensor(data), 0, dtype=real_torch.float64)),
    ]:
        assert str(ours.dtype) == str(theirs.dtype)
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    x = torch.tensor(2.5, requires_grad=True)
    y = torch.cumprod(x, 0)
    assert y.grad_fn.name() == "CumprodBackward0" and y.item() == 2.5
    with pytest.raises(IndexError, match="Dimension out of range"):
        torch.cumprod(torch.ones(3), -2)
    t = torch.tensor([1.5, 2.0, -1.0])
    t.cumprod_(0)
    np.testing.assert_array_equal(t.numpy(), [1.5, 3.0, -3.0])


def test_compiled_cumsum_replays_at_new_inputs():
    def f(x):
        return (torch.cumsum(x, 0) ** 2).sum()

    tape = torch.compile(f, np.arange(1.0, 11.0))
    for data in (np.linspace(-2, 3, 10), np.cos(np.arange(10.0))):
        x = torch.tensor(data, dtype=torch.float64, requires_grad=True)
        f(x).backward()
        np.testing.assert_allclose(tape.grad(data), x.grad.numpy(), rtol=1e-14)
        # the gradient of sum(c^2) is the reversed running sum of 2c
        c = np.cumsum(data)
        np.testing.assert_allclose(tape.grad(data), np.cumsum((2 * c)[::-1])[::-1],
                                   rtol=1e-12)
