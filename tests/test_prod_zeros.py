"""prod where factors are 0 (torch's product of the other factors, to second order), and
the bool reductions any/all."""
from __future__ import annotations

import numpy as np
import pytest

import jitgrad as torch

try:
    import torch as real_torch
except ImportError:  # pragma: no cover - the oracle is optional
    real_torch = None

needs_torch = pytest.mark.skipif(real_torch is None, reason="torch (the oracle) not installed")

PROD_CASES = [[0.5, 0.0, 2.0, -1.5], [0.0, 3.0, -0.0, 2.0], [[0.0, 2.0, 0.0], [1.0, 0.0, 3.0]],
              [[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]], [1.0, 2.0, 3.0]]


@needs_torch
@pytest.mark.parametrize("dim", [None, -1, 0])
@pytest.mark.parametrize("case", range(len(PROD_CASES)))
def test_prod_at_zeros_matches_torch_to_second_order(case, dim):
    data = np.array(PROD_CASES[case])
    results = []
    for lib in (torch, real_torch):
        x = lib.tensor(data, dtype=lib.float64, requires_grad=True)
        y = lib.prod(x) if dim is None else lib.prod(x, dim)
        w = lib.tensor(np.linspace(0.5, 1.5, y.numel()).reshape(tuple(y.shape)),
                       dtype=lib.float64)
        (g,) = lib.autograd.grad((y * w).sum(), x, create_graph=True)
        u = lib.tensor(np.cos(np.arange(x.numel())).reshape(data.shape), dtype=lib.float64)
        (h,) = lib.autograd.grad((g * u).sum(), x)
        results.append((y.detach().numpy(), g.detach().numpy(), h.numpy(),
                        type(y.grad_fn).__name__))
    ours, theirs = results
    for a, b in zip(ours[:3], theirs[:3]):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
    assert ours[3] == theirs[3]


def test_prod_at_zeros_matches_finite_differences_and_any_all():
    x0 = np.array([0.0, 1.5, -2.0, 0.7])
    x = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
    torch.prod(x).backward()
    h = 1e-6
    numeric = [(np.prod(x0 + h * e) - np.prod(x0 - h * e)) / (2 * h) for e in np.eye(4)]
    np.testing.assert_allclose(x.grad.numpy(), numeric, atol=1e-9)
    assert not np.isnan(x.grad.numpy()).any()
    t = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    assert t.any().item() and not t.all().item()
    assert torch.any(t, 1).tolist() == [True, False]
    assert torch.all(t > -1, 0).tolist() == [True, True]
    assert torch.any(t, 1, keepdim=True).shape == (2, 1) and t.any().dtype is torch.bool


def test_compiled_prod_records_again_when_a_factor_becomes_zero():
    def f(x):
        return (torch.prod(x) + torch.prod(x * x, 0).sum()) * 1.0

    tape = torch.compile(f, np.array([1.0, 2.0, 3.0]))
    for point in ([2.0, 0.5, 4.0], [2.0, 0.0, 4.0], [0.0, 0.0, 1.5], [1.0, 3.0, 2.0]):
        x = torch.tensor(point, dtype=torch.float64, requires_grad=True)
        (expected,) = torch.autograd.grad(f(x), x)
        np.testing.assert_allclose(tape.grad(np.array(point)), expected.numpy(), rtol=1e-14)
    # f = x0 x1 x2 + (x0 x1 x2)^2: at x0 = 0 only x0's derivative, x1 x2, is nonzero
    np.testing.assert_allclose(tape.grad(np.array([0.0, 0.5, 4.0])), [2.0, 0.0, 0.0],
                               atol=1e-15)
