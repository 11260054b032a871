"""``var``/``std`` and the activations softplus, logsigmoid, silu, leaky_relu, elu
(composites of the recorded ops): values, gradients and Hessian-vector products against
torch and finite differences, torch's grad_fn names, and the module forms."""
from __future__ import annotations

import numpy as np
import pytest

import jitgrad

torch = pytest.importorskip("torch")

DATA = np.array([[0.5, -1.0, 2.0, 0.0], [3.0, -0.25, 1.0, 1.0], [-30.0, 25.0, 0.1, -0.1]])

CASES = {
    "var": lambda L, x: x.var(),
    "var dim": lambda L, x: x.var(0),
    "var dims keepdim": lambda L, x: x.var(dim=(0, 1), keepdim=True),
    "var unbiased=False": lambda L, x: L.var(x, 1, unbiased=False),
    "var correction": lambda L, x: L.var(x, dim=1, correction=2),
    "std": lambda L, x: x.std(),
    "std dim keepdim": lambda L, x: x.std(1, keepdim=True),
    "std correction=0": lambda L, x: L.std(x, -1, correction=0),
    "softplus": lambda L, x: L.nn.functional.softplus(x),
    "softplus beta threshold": lambda L, x: L.nn.functional.softplus(x, beta=2.0, threshold=3.0),
    "logsigmoid": lambda L, x: L.nn.functional.logsigmoid(x),
    "silu": lambda L, x: L.nn.functional.silu(x),
    "leaky_relu": lambda L, x: L.nn.functional.leaky_relu(x, 0.1),
    "elu": lambda L, x: L.nn.functional.elu(x, 0.5),
}


def _run(L, name, dtype):
    x = L.tensor(DATA, dtype=getattr(L, dtype), requires_grad=True)
    out = CASES[name](L, x)
    weights = L.tensor(np.linspace(0.5, 1.5, out.numel()).reshape(tuple(out.shape)),
                       dtype=out.dtype)
    (g,) = L.autograd.grad((out * weights).sum(), x, create_graph=True)
    direction = L.tensor(np.linspace(-1.0, 1.0, DATA.size).reshape(DATA.shape), dtype=x.dtype)
    if g.requires_grad:
        (h,) = L.autograd.grad((g * direction).sum(), x, allow_unused=True)
        h = np.zeros(DATA.shape) if h is None else h.detach().numpy()
    else:  # piecewise linear: no second derivative
        h = np.zeros(DATA.shape)
    return out.detach().numpy(), g.detach().numpy(), h, type(out.grad_fn).__name__


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_against_torch(name, dtype):
    ours, theirs = _run(jitgrad, name, dtype), _run(torch, name, dtype)
    rtol = 1e-5 if dtype == "float32" else 1e-12
    if name == "elu":
        # at x = 0 torch's first derivative is the negative side's (alpha) but its second
        # is 0; here both are the negative side's: alpha * exp(0)
        at_zero = DATA == 0.0
        np.testing.assert_allclose(ours[2][at_zero], 0.5 * _weights_and_direction()[at_zero],
                                   rtol=rtol)
        ours, theirs = list(ours), list(theirs)
        ours[2], theirs[2] = ours[2][~at_zero], theirs[2][~at_zero]
    for a, b in zip(ours[:3], theirs[:3]):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol)
    assert ours[3] == theirs[3]


def _weights_and_direction():
    """The product of _run's weights and direction per element (an elementwise op's
    Hessian-vector product is its second derivative times this)."""
    return (np.linspace(0.5, 1.5, DATA.size) * np.linspace(-1.0, 1.0, DATA.size)).reshape(
        DATA.shape)


@pytest.mark.parametrize("name", list(CASES))
def test_against_finite_differences(name):
    x = jitgrad.tensor(DATA, dtype=jitgrad.float64, requires_grad=True)
    out = CASES[name](jitgrad, x)
    out.sum().backward()

    def f(v):
        return CASES[name](jitgrad, jitgrad.tensor(v, dtype=jitgrad.float64)).sum().item()

    eps = 1e-6
    numeric = np.zeros(DATA.shape)
    for i in np.ndindex(DATA.shape):
        step = np.zeros(DATA.shape)
        step[i] = eps
        numeric[i] = (f(DATA + step) - f(DATA - step)) / (2 * eps)
    kinks = DATA == 0.0  # leaky_relu/elu: one-sided derivatives at 0
    np.testing.assert_allclose(x.grad.numpy()[~kinks], numeric[~kinks], rtol=1e-6, atol=1e-8)


def test_arguments_and_errors():
    x = jitgrad.tensor(DATA)
    assert jitgrad.var(x, False).item() == pytest.approx(DATA.var())
    assert x.var(unbiased=True).item() == pytest.approx(DATA.var(ddof=1))
    with pytest.raises(ValueError, match="both unbiased and correction"):
        x.var(0, unbiased=True, correction=1)
    with pytest.raises(RuntimeError, match="floating point"):
        jitgrad.tensor([1, 2, 3]).var()
    assert np.isnan(jitgrad.tensor([1.0]).var().item())  # no degree of freedom: nan, as torch
    assert jitgrad.tensor([1.0]).var(correction=0).item() == 0.0


def test_modules():
    nn = jitgrad.nn
    x = jitgrad.tensor(DATA, requires_grad=True)
    F = jitgrad.nn.functional
    for module, function in [(nn.Softplus(beta=2.0), lambda t: F.softplus(t, 2.0)),
                             (nn.LogSigmoid(), F.logsigmoid),
                             (nn.SiLU(), F.silu),
                             (nn.LeakyReLU(0.2), lambda t: F.leaky_relu(t, 0.2)),
                             (nn.ELU(alpha=0.3), lambda t: F.elu(t, 0.3))]:
        np.testing.assert_array_equal(module(x).detach().numpy(), function(x).detach().numpy())
    assert repr(nn.LeakyReLU(0.2)) == repr(torch.nn.LeakyReLU(0.2))
    assert repr(nn.ELU(alpha=0.3)) == repr(torch.nn.ELU(alpha=0.3))
    assert repr(nn.Softplus(beta=2.0)) == repr(torch.nn.Softplus(beta=2.0))
    y = x * 1.0
    nn.functional.leaky_relu(y, 0.1, inplace=True)
    np.testing.assert_allclose(y.detach().numpy(), np.where(DATA > 0, DATA, 0.1 * DATA),
                               rtol=1e-6)

