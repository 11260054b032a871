"""``einsum`` (``jitgrad/_einsum.py``): values against NumPy, values and first and second
derivatives against torch, gradients against finite differences, torch's errors, and a
compiled replay."""
from __future__ import annotations

import numpy as np
import pytest

import jitgrad as torch

try:
    import torch as real_torch
except ImportError:  # pragma: no cover - the oracle is optional
    real_torch = None

needs_torch = pytest.mark.skipif(real_torch is None, reason="torch (the oracle) not installed")

# equation -> operand shapes
CASES = {
    "ij,jk->ik": [(2, 3), (3, 4)],
    "ij,jk": [(2, 3), (3, 4)],
    "ii": [(3, 3)],
    "ii->i": [(3, 3)],
    "ij->ji": [(2, 3)],
    "ij->": [(2, 3)],
    "ij->ij": [(2, 3)],
    "bij,bjk->bik": [(5, 2, 3), (5, 3, 4)],
    "...ij,...jk->...ik": [(5, 2, 3), (3, 4)],
    "i,j->ij": [(3,), (4,)],
    "i,i->": [(3,), (3,)],
    "ij,ij->ij": [(2, 3), (2, 3)],
    "ij,kj->ik": [(2, 3), (4, 3)],
    "ij,jk,kl->il": [(2, 3), (3, 4), (4, 5)],
    "iij->j": [(3, 3, 2)],
    "ijji->": [(2, 3, 3, 2)],
    "ij,j->i broadcast": [(1, 3), (3,)],
    "ij,j->ij broadcast": [(2, 1), (3,)],
    "ab,b-> broadcast contracted": [(2, 3), (1,)],
    "i,->i": [(3,), ()],
    "Ba,ab->aB": [(3, 3), (3, 3)],
    "...,...->...": [(2, 3), (3,)],
    "i...->...": [(2, 3, 4)],
    "ijk,ikl->jl": [(2, 3, 4), (2, 4, 5)],
    "bhqd,bhkd->bhqk": [(2, 3, 4, 5), (2, 3, 6, 5)],
    "ij,ij": [(2, 3), (2, 3)],
    "ii,ij->j": [(3, 3), (3, 2)],
    "ij,jk->": [(2, 3), (3, 4)],
    "ij,jk->ki": [(2, 3), (3, 4)],
    "ij,ik,il->jkl": [(2, 3), (2, 4), (2, 5)],
    "i j , j k -> i k": [(2, 3), (3, 4)],
}


def _equation(name: str) -> str:
    return name.split(" broadcast")[0]


def _operands(name: str) -> list:
    rng = np.random.default_rng(sum(map(ord, name)))
    return [rng.standard_normal(shape) for shape in CASES[name]]


@pytest.mark.parametrize("name", list(CASES))
def test_values_match_numpy(name):
    arrays = _operands(name)
    ours = torch.einsum(_equation(name), *[torch.tensor(a) for a in arrays])
    expected = np.einsum(_equation(name).replace(" ", ""), *arrays)
    assert ours.dtype == torch.float64
    assert tuple(ours.shape) == expected.shape
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-13, atol=1e-13)


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(CASES))
def test_matches_torch_to_second_order(name, dtype):
    arrays = _operands(name)
    results = []
    for lib in (torch, real_torch):
        d = getattr(lib, dtype)
        xs = [lib.tensor(a, dtype=d, requires_grad=True) for a in arrays]
        y = lib.einsum(_equation(name), *xs)
        w = lib.tensor(np.cos(np.arange(y.numel()) + 1.0).reshape(tuple(y.shape)), dtype=d)
        gs = lib.autograd.grad((y * y * w).sum(), xs, create_graph=True)
        us = [lib.tensor(np.sin(np.arange(a.size) + 2.0).reshape(a.shape), dtype=d)
              for a in arrays]
        hs = lib.autograd.grad(sum((g * u).sum() for g, u in zip(gs, us)), xs)
        results.append([y.detach().numpy()] + [g.detach().numpy() for g in gs]
                       + [h.numpy() for h in hs])
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == "float32" else dict(rtol=1e-12, atol=1e-12)
    for a, b in zip(*results):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, **tol)


@pytest.mark.parametrize("name", ["ij,jk->ik", "ii->i", "...ij,...jk->...ik",
                                  "ij,j->ij broadcast", "ij,ik,il->jkl", "ijji->"])
def test_gradients_match_finite_differences(name):
    arrays = _operands(name)
    equation = _equation(name)
    w = None

    def value(values):
        out = torch.einsum(equation, *[torch.tensor(a) for a in values]).numpy()
        return float((np.sin(out) * w).sum())

    xs = [torch.tensor(a, requires_grad=True) for a in arrays]
    y = torch.einsum(equation, *xs)
    w = np.cos(np.arange(y.numel()) + 1.0).reshape(tuple(y.shape))
    torch.sin(y).mul(torch.tensor(w)).sum().backward()
    h = 1e-6
    for i, x in enumerate(xs):
        numeric = np.zeros(arrays[i].size)
        for k in range(arrays[i].size):
            plus = [a.copy() for a in arrays]
            minus = [a.copy() for a in arrays]
            plus[i].reshape(-1)[k] += h
            minus[i].reshape(-1)[k] -= h
            numeric[k] = (value(plus) - value(minus)) / (2 * h)
        np.testing.assert_allclose(x.grad.numpy().reshape(-1), numeric, rtol=1e-6, atol=1e-8)


def test_operands_as_a_list_integers_and_zero_sizes():
    a = torch.tensor([[1, 2], [3, 4]])
    b = torch.tensor([5, 6])
    out = torch.einsum("ij,j->i", [a, b])
    assert out.dtype == torch.int64
    np.testing.assert_array_equal(out.numpy(), [17, 39])
    empty = torch.einsum("ij,jk->ik", torch.ones(2, 0), torch.ones(0, 3))
    np.testing.assert_array_equal(empty.numpy(), np.zeros((2, 3), np.float32))
    # matmul of size-0 operands (batched, broadcast), gradients included
    for a, b, out in [((5, 2, 0), (5, 0, 3), (5, 2, 3)), ((1, 2, 0), (5, 0, 3), (5, 2, 3)),
                      ((2, 3), (3, 0), (2, 0)), ((4, 0, 3), (3, 2), (4, 0, 2))]:
        p = torch.ones(*a, requires_grad=True)
        q = torch.ones(*b, requires_grad=True)
        r = p @ q
        assert tuple(r.shape) == out and not r.detach().numpy().any()
        r.sum().backward()
        assert tuple(p.grad.shape) == a and tuple(q.grad.shape) == b
    x = torch.ones(2, 3, requires_grad=True)
    y = torch.einsum("ij->ij", x)
    assert y is not x and y.requires_grad
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.ones((2, 3)))


ERRORS = [
    ("ij,jk->ik", [(2, 3)], "fewer operands were provided than specified in the equation"),
    ("ij", [(2, 3), (4, 5)], "more operands were provided than specified in the equation"),
    ("ij->ik", [(2, 3)], "output subscript k does not appear in the equation for any input"),
    ("ij,jk->ik", [(2, 3), (4, 5)], "subscript j has size 4 for operand 1 which does not "
                                    "broadcast with previously seen size 3"),
    ("i1->i", [(2, 3)], "invalid subscript given at index 1 in the equation string, "
                        "subscripts must be in [a-zA-Z]"),
    ("ijk->i", [(2, 3)], "the number of subscripts in the equation (3) does not match the "
                         "number of dimensions (2) for operand 0 and no ellipsis was given"),
    ("ij->ii", [(2, 3)], "output subscript i appears more than once in the output"),
    ("ii->i", [(2, 3)], "subscript i is repeated for operand 0 but the sizes don't match, "
                        "3 != 2"),
    ("ijk...->i", [(2, 3)], "the number of subscripts in the equation (3) is more than the "
                            "number of dimensions (2) for operand 0"),
    ("i.j->i", [(2, 3)], "found '.' for operand 0 that is not part of any ellipsis"),
]


@pytest.mark.parametrize("equation, shapes, message", ERRORS)
def test_errors_are_torchs(equation, shapes, message):
    x = torch.ones(3, requires_grad=True)
    kept = (x * 2).sum()
    with pytest.raises(RuntimeError) as error:
        torch.einsum(equation, *[torch.ones(*s) for s in shapes])
    assert message in str(error.value)
    if real_torch is not None and "." not in equation:
        with pytest.raises(RuntimeError) as theirs:
            real_torch.einsum(equation, *[real_torch.ones(*s) for s in shapes])
        assert message in str(theirs.value)
    kept.backward()  # the tape is still usable
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 2.0, 2.0])


def test_bad_arguments():
    with pytest.raises(RuntimeError, match="same dtype"):
        torch.einsum("i,i", torch.ones(2), torch.ones(2, dtype=torch.float64))
    with pytest.raises(TypeError, match="operand 1 must be a Tensor"):
        torch.einsum("i,i", torch.ones(2), [1.0, 2.0])
    with pytest.raises(TypeError, match="'equation' must be str"):
        torch.einsum(torch.ones(2), torch.ones(2))


def test_compiled_einsum_replays_at_new_inputs():
    def f(x):
        m = torch.reshape(x, (3, 3))
        return torch.einsum("ij,jk,ii->", m, m, m)

    rng = np.random.default_rng(3)
    tape = torch.compile(f, rng.standard_normal(9))
    for data in (rng.standard_normal(9), np.linspace(-1, 1, 9)):
        x = torch.tensor(data, requires_grad=True)
        y = f(x)
        y.backward()
        m = data.reshape(3, 3)
        assert tape(data) == pytest.approx(np.einsum("ij,jk,ii->", m, m, m), rel=1e-13)
        np.testing.assert_allclose(tape.grad(data), x.grad.numpy(), rtol=1e-13)
