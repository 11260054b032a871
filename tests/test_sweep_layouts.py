"""The reverse steps walk broadcast operands and reductions row by row (vectorized loops
over views): every stride pattern, checked against the create_graph rules (the same
derivatives evaluated with jitgrad ops) and against torch where it is installed."""
from __future__ import annotations

import numpy as np
import pytest

import jitgrad

BROADCASTS = [((3, 4), (4,)), ((3, 1), (1, 4)), ((2, 3, 4), (3, 1)), ((2, 1, 4), (3, 1)),
              ((5, 1), (5, 7)), ((1,), (2, 3)), ((2, 3, 1), (2, 1, 5)), ((4, 0), (4, 1))]
REDUCTIONS = [((3, 4), 0), ((3, 4), 1), ((2, 3, 4), (0, 2)), ((2, 3, 4), 1), ((2, 3, 4), (1, 2)),
              ((2, 3, 4), (0, 1)), ((5,), 0), ((2, 1, 3), 1)]


def _grads(f, arrays, create_graph: bool):
    ts = [jitgrad.tensor(a, requires_grad=True) for a in arrays]
    out = f(*ts)
    weights = jitgrad.tensor(np.random.default_rng(1).standard_normal(out.shape))
    total = (out * weights).sum()
    grads = jitgrad.autograd.grad(total, ts, create_graph=create_graph)
    return [g.detach().numpy() for g in grads]


def _torch_grads(f, arrays):
    torch = pytest.importorskip("torch")
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    out = f(*ts)
    weights = torch.tensor(np.random.default_rng(1).standard_normal(tuple(out.shape)))
    total = (out * weights).sum()
    return [g.numpy() for g in torch.autograd.grad(total, ts)]


def _check(f, arrays):
    fast = _grads(f, arrays, False)
    rule = _grads(f, arrays, True)
    for a, b in zip(fast, rule):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    try:
        import torch  # noqa: F401
    except ImportError:
        return
    for a, b in zip(fast, _torch_grads(f, arrays)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shapes", BROADCASTS)
@pytest.mark.parametrize("op", ["add", "mul", "div", "maximum"])
def test_broadcast_binary(shapes, op):
    rng = np.random.default_rng(0)
    arrays = [rng.uniform(0.5, 2.0, s) for s in shapes]
    fns = {"add": lambda a, b: a + b, "mul": lambda a, b: a * b, "div": lambda a, b: a / b,
           "maximum": lambda a, b: (a.maximum(b) if hasattr(a, "maximum")
                                    else __import__("torch").maximum(a, b))}
    _check(fns[op], arrays)


@pytest.mark.parametrize("shape, dim", REDUCTIONS)
@pytest.mark.parametrize("op", ["sum", "mean", "logsumexp", "prod"])
@pytest.mark.parametrize("keepdim", [False, True])
def test_reduction_along_dims(shape, dim, op, keepdim):
    x = np.random.default_rng(0).uniform(0.5, 2.0, shape)
    if op == "logsumexp":
        f = lambda t: t.logsumexp(dim, keepdim=keepdim)
    else:
        f = lambda t: getattr(t, op)(dim, keepdim=keepdim)
    if op == "prod" and isinstance(dim, tuple):
        pytest.skip("prod reduces one dim at a time, as torch")
    _check(f, [x])


@pytest.mark.parametrize("index", [np.s_[1:], np.s_[:-1], np.s_[1:3], np.s_[::2], np.s_[:, 1:],
                                   np.s_[1:, :], np.s_[..., 0]])
def test_strided_views(index):
    x = np.random.default_rng(0).standard_normal((4, 5))
    _check(lambda t: t[index] * 2.0, [x])


def test_several_slices_of_one_input_add_up():
    # the first slice the sweep meets clears the rest of the input's adjoint and copies
    # itself in; the others add: every element must get every contribution once
    x = np.random.default_rng(2).standard_normal(9)
    _check(lambda t: (t[1:] * 2.0).sum() + (t[:-1] * 3.0).sum() + t[2:4].sum() * t[4:5].sum()
           + t[3:].reshape(2, 3)[:, 1:].sum(), [x])
    t = jitgrad.tensor(x, requires_grad=True)
    (t[1:] * 2.0).sum().backward()
    np.testing.assert_array_equal(t.grad.numpy(), [0.0] + [2.0] * 8)
