"""The eager logsumexp along one dim through one kernel (jitgrad/_logsumexp.py): the same
values as the NumPy formula it replaces (to the float64 rounding of a different summation
order), the same answers for nan and infinities, used where it is meant to be and not
elsewhere, and the ops built on it (logsumexp, log_softmax, softmax, cross_entropy)
unchanged for the user."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import jitgrad as torch
from jitgrad import _logsumexp
from jitgrad.functions import _logsumexp_forward
from jitgrad.nn import functional as F


def numpy_logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    """The formula in float64, with NumPy's pairwise sums."""
    x = x.astype(np.float64)
    peak = np.max(x, axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    with np.errstate(all="ignore"):
        total = np.sum(np.exp(x - peak), axis=axis, keepdims=True)
        return np.squeeze(np.log(total) + peak, axis=axis)


SHAPES = [((64, 10), 1), ((64, 10), 0), ((3, 5, 7), 1), ((3, 5, 7), 2), ((3, 5, 7), 0),
          ((17,), 0), ((1, 1), 1), ((2, 0, 3), 2), ((4, 1000), 1), ((2, 3, 4, 5), 2)]


@pytest.mark.parametrize("shape, dim", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_matches_the_formula(shape, dim, dtype):
    rng = np.random.default_rng(len(shape) * 100 + dim)
    x = (rng.standard_normal(shape) * 30).astype(dtype)
    assert _logsumexp.usable(x, (dim,))
    got = _logsumexp.along(x, (dim,))
    want = numpy_logsumexp(x, dim)
    assert got.dtype == dtype and got.shape == want.shape
    if dtype == np.float64:
        np.testing.assert_allclose(got, want, rtol=4e-16 * max(shape), atol=1e-300)
    else:  # the kernel rounds the float64 result once: exactly the formula's, rounded
        np.testing.assert_array_equal(got, want.astype(np.float32))


def test_special_values_row_by_row():
    inf, nan = np.inf, np.nan
    rows = np.array([[1.0, nan, 2.0], [inf, 1.0, 2.0], [-inf, -inf, -inf], [inf, -inf, 0.0],
                     [inf, inf, 1.0], [-inf, 3.0, 4.0], [1e308, 1e308, 1e308],
                     [-1e308, -1e308, 0.0], [nan, inf, -inf]])
    for dtype in (np.float64, np.float32):
        with np.errstate(over="ignore"):
            x = rows.astype(dtype)  # 1e308 is inf in float32
        got = _logsumexp.along(x, (1,))
        with np.errstate(all="ignore"):
            want = np.asarray(_numpy_path(x, (1,)), dtype)
        np.testing.assert_array_equal(got, want)
        t = torch.tensor(x)
        np.testing.assert_array_equal(torch.logsumexp(t, 1).numpy(), want)


def _numpy_path(x, axis):
    """The NumPy code path of ``_logsumexp_forward`` (a non-contiguous view skips the
    kernel)."""
    wide = np.repeat(x, 2, axis=-1)[..., ::2]
    assert not _logsumexp.usable(wide, axis)
    return _logsumexp_forward(wide, axis)


def test_where_the_kernel_is_used():
    f64, f32 = np.zeros((64, 10)), np.zeros((64, 10), np.float32)
    assert _logsumexp.usable(f64, (1,)) and _logsumexp.usable(f32, (1,))
    assert _logsumexp.usable(np.zeros((1000, 10), np.float32), (1,))  # short rows
    assert not _logsumexp.usable(np.zeros((10, 1000), np.float32), (1,))  # NumPy's exp
    assert _logsumexp.usable(np.zeros((10, 1000)), (1,))
    assert not _logsumexp.usable(np.zeros((2, _logsumexp.MAX_ROW + 1)), (1,))
    assert not _logsumexp.usable(f64, (0, 1)) and not _logsumexp.usable(f64, None)
    assert not _logsumexp.usable(f64.T, (0,))  # not C-contiguous
    assert not _logsumexp.usable(f64.astype(np.int64), (1,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ops_on_it_agree_with_torch(dtype):
    pt = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((64, 10)) * 5
    y = rng.integers(0, 10, 64)
    w = rng.standard_normal((64, 10))
    tol = dict(rtol=2e-6, atol=2e-6) if dtype is torch.float32 else dict(rtol=1e-13,
                                                                         atol=1e-13)
    ptype = {torch.float32: pt.float32, torch.float64: pt.float64}[dtype]
    a = torch.tensor(x, dtype=dtype, requires_grad=True)
    b = pt.tensor(x, dtype=ptype, requires_grad=True)
    for ours, theirs in [
        (torch.logsumexp(a, 1, keepdim=True), pt.logsumexp(b, 1, keepdim=True)),
        (torch.log_softmax(a, dim=1), pt.log_softmax(b, dim=1)),
        (torch.softmax(a, dim=0), pt.softmax(b, dim=0)),
        (F.cross_entropy(a, torch.tensor(y)), pt.nn.functional.cross_entropy(
            b, pt.tensor(y))),
    ]:
        np.testing.assert_allclose(ours.detach().numpy(), theirs.detach().numpy(), **tol)
        a.grad = None
        b.grad = None
        weight = w[:ours.shape[0], :ours.shape[1]] if ours.ndim else w[0, 0]
        (ours * torch.tensor(weight, dtype=dtype)).sum().backward()
        (theirs * pt.tensor(weight, dtype=ptype)).sum().backward()
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), **tol)


def test_gradient_against_finite_differences():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 5))
    t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    w = rng.standard_normal((6, 5))
    (torch.log_softmax(t, dim=1) * torch.tensor(w)).sum().backward()
    eps = 1e-6
    numeric = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[i] += eps
        down[i] -= eps
        numeric[i] = ((np.sum((up - numpy_logsumexp(up, 1)[:, None]) * w)
                       - np.sum((down - numpy_logsumexp(down, 1)[:, None]) * w)) / (2 * eps))
    np.testing.assert_allclose(t.grad.numpy(), numeric, rtol=1e-7, atol=1e-8)


# -- log_softmax of a recorded array: the kernel, then one subtraction ---------------------------
def _composition(a, dim):
    return a - torch.logsumexp(a, dim, keepdim=True)


def _names(fn):
    return [None if f is None else f.name() for f, _ in fn.next_functions]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,dim", [((64, 10), 1), ((64, 10), -1), ((5, 7), 0),
                                       ((2, 3, 4), 1), ((3, 1), 1), ((6,), 0), ((4, 6), -2)])
def test_log_softmax_records_what_its_composition_records(dtype, shape, dim, monkeypatch):
    """The direct path of ``log_softmax`` writes the entries ``x - logsumexp(x, dim,
    keepdim=True)`` writes, values included: the same bits forward, in the gradient and in
    the second derivative; only its grad_fn's name differs."""
    from jitgrad import functions

    rng = np.random.default_rng(11)
    x = rng.standard_normal(shape) * 4
    w = torch.tensor(rng.standard_normal(shape), dtype=dtype)
    results = []
    for fast in (True, False):
        a = torch.tensor(x, dtype=dtype, requires_grad=True)
        h = a * 1.5  # a recorded input, as in a training step
        if fast:
            with monkeypatch.context() as m:  # the general path's reduction is not run
                m.setattr(functions, "_reduce", None)
                out = torch.log_softmax(h, dim)
            assert out.grad_fn.name() == "LogSoftmaxBackward0"
        else:
            out = _composition(h, dim)
        (g,) = torch.autograd.grad((out * w).sum(), a, create_graph=True)
        (gg,) = torch.autograd.grad((g * g).sum(), a)
        results.append((out.detach().numpy(), g.detach().numpy(), gg.numpy(),
                        _names(out.grad_fn)))
    for ours, theirs in zip(*results, strict=True):
        if isinstance(ours, list):
            assert ours == theirs
        else:
            np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("room", [0, 1, 5, 9])
def test_log_softmax_when_the_arena_grows_between_its_entries(room):
    """The output's slot may need a larger arena than the one ``lse`` was written to: the
    values move with it."""
    from jitgrad.recording import node_of
    from jitgrad.tape import _state

    def run(result):
        rng = np.random.default_rng(room)
        x = rng.standard_normal((8, 10))
        a = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        h = a * 1.0
        tape = _state.tape
        free = tape._arenas[1].shape[0] - tape.used[1]
        # leave room for lse (8 values) and `room` more: the 80 outputs do not fit
        pad = torch.zeros(free - 8 - room, dtype=torch.float64, requires_grad=True)
        node_of(tape, pad)
        arena = tape._arenas[1]
        out = torch.log_softmax(h, 1)
        grown = tape._arenas[1] is not arena
        (out * torch.tensor(x)).sum().backward()
        result.extend([grown, out.detach().numpy(), a.grad.numpy(), pad.grad, x])

    result = []
    worker = threading.Thread(target=run, args=(result,))  # a fresh tape
    worker.start()
    worker.join()
    grown, out, grad, pad_grad, x = result
    assert grown
    want = x - numpy_logsumexp(x, 1)[:, None]
    np.testing.assert_allclose(out, want, rtol=1e-15, atol=1e-15)
    softmax = np.exp(want)
    np.testing.assert_allclose(grad, x - softmax * x.sum(1, keepdims=True), rtol=1e-13,
                               atol=1e-13)
    assert pad_grad is None


def test_log_softmax_without_grad_or_of_empty_and_bad_dims():
    x = np.random.default_rng(2).standard_normal((3, 4))
    a = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        out = torch.log_softmax(a, 1)
    assert out.grad_fn is None
    np.testing.assert_allclose(out.numpy(), x - numpy_logsumexp(x, 1)[:, None], rtol=1e-15)
    empty = torch.zeros((0, 3), requires_grad=True)
    assert torch.log_softmax(empty, 1).shape == (0, 3)
    with pytest.raises(IndexError, match="Dimension out of range"):
        torch.log_softmax(a, 2)
