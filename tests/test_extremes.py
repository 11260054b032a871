"""max()/min() of a whole tensor and amax/amin split the gradient evenly between the
elements equal to the result, as torch does: explicit values through the Numba sweep, the
differentiable (create_graph) rule, forward mode, the Hessian-vector kernels and compiled
replays whose inputs tie where the recording's did not."""
from __future__ import annotations

import numpy as np
import pytest

import jitgrad
from jitgrad import func

nan, inf = np.nan, np.inf

# (function, input, value, gradient of the value, torch's grad_fn)
WHOLE = [
    ("max", [1.0, 3.0, 3.0, 2.0], 3.0, [0.0, 0.5, 0.5, 0.0], "MaxBackward1"),
    ("max", [1.0, nan, 3.0, nan], nan, [0.0, 0.5, 0.0, 0.5], "MaxBackward1"),  # among nans
    ("max", [3.0, inf, inf], inf, [0.0, 0.5, 0.5], "MaxBackward1"),
    ("max", [7.0], 7.0, [1.0], "MaxBackward1"),
    ("min", [2.0, -1.0, 5.0, -1.0, -1.0], -1.0, [0.0, 1 / 3, 0.0, 1 / 3, 1 / 3],
     "MinBackward1"),
    ("min", [nan, 1.0, 0.0], nan, [1.0, 0.0, 0.0], "MinBackward1"),
    ("amax", [1.0, 3.0, 3.0, 2.0], 3.0, [0.0, 0.5, 0.5, 0.0], "AmaxBackward0"),
    # a nan result equals no element: 0 / 0 everywhere, as torch's amax
    ("amax", [1.0, nan, 3.0], nan, [nan, nan, nan], "AmaxBackward0"),
    ("amin", [-inf, 0.0, -inf], -inf, [0.5, 0.0, 0.5], "AminBackward0"),
]


def _check(actual, expected, dtype) -> None:
    np.testing.assert_array_equal(np.asarray(actual), np.asarray(expected, dtype))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", WHOLE, ids=lambda c: f"{c[0]}{c[1]}")
def test_whole_tensor_extremes_split_the_gradient_between_ties(case, dtype):
    name, values, value, grad, grad_fn = case
    d = getattr(jitgrad, dtype)
    x = jitgrad.tensor(values, dtype=d, requires_grad=True)
    y = getattr(jitgrad, name)(x)
    assert type(y.grad_fn).__name__ == grad_fn and y.dtype is d
    _check(y.item(), value, dtype)
    y.backward()  # the Numba sweep
    _check(x.grad.numpy(), grad, dtype)
    x = jitgrad.tensor(values, dtype=d, requires_grad=True)
    (g,) = jitgrad.autograd.grad(getattr(jitgrad, name)(x), x, create_graph=True)  # the rule
    _check(g.detach().numpy(), grad, dtype)


def test_amax_and_amin_along_dims_split_each_output_between_its_ties():
    x = jitgrad.tensor([[1.0, 3.0, 3.0], [2.0, 2.0, 0.0], [nan, 1.0, nan]],
                       dtype=jitgrad.float64, requires_grad=True)
    y = jitgrad.amax(x, 1)
    assert type(y.grad_fn).__name__ == "AmaxBackward0"
    _check(y.detach().numpy(), [3.0, 2.0, nan], "float64")
    (y * jitgrad.tensor([1.0, 2.0, 4.0], dtype=jitgrad.float64)).sum().backward()
    _check(x.grad.numpy(), [[0.0, 0.5, 0.5], [1.0, 1.0, 0.0], [nan, nan, nan]], "float64")

    x = jitgrad.tensor([[1.0, 0.0, 5.0], [1.0, 2.0, 5.0], [1.0, 0.0, 4.0]],
                       dtype=jitgrad.float32, requires_grad=True)
    y = x.amin(0, keepdim=True)
    assert y.shape == (1, 3)
    y.sum().backward()
    _check(x.grad.numpy(), [[1 / 3, 0.5, 0.0], [1 / 3, 0.0, 0.0], [1 / 3, 0.5, 1.0]],
           "float32")
    # a tuple of dims: the second output is split between its two 5s
    x = jitgrad.tensor([[[5.0, 1.0], [5.0, 5.0]]], requires_grad=True)
    y = jitgrad.amax(x, (0, 2))
    y.backward(jitgrad.tensor([2.0, 3.0]))
    _check(x.grad.numpy(), [[[2.0, 0.0], [1.5, 1.5]]], "float32")


def test_forward_mode_and_reverse_mode_agree_at_ties():
    x = np.array([[1.0, 3.0, 3.0, 2.0], [4.0, 0.0, 4.0, 4.0]])

    def f(t):
        return jitgrad.amax(t, 1) * 2.0 + t.max()

    forward = func.jacfwd(f)(jitgrad.tensor(x)).numpy()
    reverse = func.jacrev(f)(jitgrad.tensor(x)).numpy()
    expected = np.zeros((2, 2, 4))
    expected[0, 0, [1, 2]] = 1.0
    expected[1, 1, [0, 2, 3]] = 2 / 3
    expected[:, 1, [0, 2, 3]] += 1 / 3  # the whole tensor's maximum, 4, three times
    np.testing.assert_allclose(forward, expected, rtol=1e-15)
    np.testing.assert_allclose(reverse, expected, rtol=1e-15)
    _, tangent = func.jvp(lambda t: jitgrad.amax(t), (jitgrad.tensor([1.0, 3.0, 3.0]),),
                          (jitgrad.tensor([5.0, 2.0, 4.0]),))
    assert tangent.item() == 3.0


def test_hessian_vector_products_through_tied_extremes():
    # amax(x * x) ties x0^2 = x1^2: the gradient 2 x / 2 there, the Hessian diag(1, 1, 0)
    def f(t):
        return jitgrad.amax(t * t, 1).sum() + t.min()

    x = jitgrad.tensor([[1.0, -1.0, 0.5]], dtype=jitgrad.float64)
    v = jitgrad.tensor([[1.0, 2.0, 3.0]], dtype=jitgrad.float64)
    hv = func.hvp(f, (x,), (v,))
    np.testing.assert_array_equal(hv.numpy(), [[1.0, 2.0, 0.0]])
    np.testing.assert_array_equal(func.grad(f)(x).numpy(), [[1.0, -1.0 + 1.0, 0.0]])
    hessian = func.hessian(f)(x).numpy().reshape(3, 3)
    np.testing.assert_array_equal(hessian, np.diag([1.0, 1.0, 0.0]))


def test_compiled_replays_split_between_ties_the_recording_did_not_have():
    def f(t):
        return jitgrad.amax(t * t, 1).sum() + t.max() - jitgrad.amin(t, 0).sum()

    tape = jitgrad.compile(f, np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]))
    for x in (np.array([[1.0, -1.0, 0.5], [2.0, 2.0, 2.0]]),
              np.array([[0.3, 0.2, 0.1], [0.0, 0.0, 0.0]]),
              np.array([[nan, 1.0, 1.0], [1.0, nan, 1.0]])):
        t = jitgrad.tensor(x, requires_grad=True)
        f(t).backward()
        before = tape.recordings
        np.testing.assert_array_equal(tape.grad(x), t.grad.numpy())
        assert tape.recordings == before  # the kernels count the ties: no guard, no recording
        v = np.arange(1.0, 7.0).reshape(2, 3)
        t = jitgrad.tensor(x)
        expected = func.hvp(f, (t,), (jitgrad.tensor(v),))
        # the second order replays the recorded derivative graph, whose masks are guarded:
        # other ties record it again
        np.testing.assert_array_equal(tape.hvp(x, v), expected.numpy())
    assert tape.recordings == 4 and not tape.guards
    assert all(guard.op == "eq" for guard in tape._variants[2][0].program.guards)


def test_extremes_of_empty_tensors_are_torchs_errors():
    with pytest.raises(RuntimeError, match=r"amax\(\): Expected reduction dim to be specified"):
        jitgrad.amax(jitgrad.zeros(0, 3))
    with pytest.raises(IndexError, match=r"amin\(\): Expected reduction dim 0 to have non-zero"):
        jitgrad.amin(jitgrad.zeros(0, 3), 0)
    assert jitgrad.amax(jitgrad.zeros(0, 3), 1).shape == (0,)
    with pytest.raises(RuntimeError, match=r"max\(\): Expected reduction dim to be specified"):
        jitgrad.zeros(0).max()
    with pytest.raises(IndexError, match=r"min\(\): Expected reduction dim 0 to have non-zero"):
        jitgrad.zeros(0, 3).min(0)
    values, indices = jitgrad.zeros(0, 3, requires_grad=True).max(1)
    assert values.shape == (0,) and indices.shape == (0,) and indices.dtype is jitgrad.int64


def test_ties_match_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    for name, kwargs in (("max", {}), ("min", {}), ("amax", {"dim": 1}),
                         ("amin", {"dim": (0, 2), "keepdim": True}), ("amax", {})):
        for trial in range(5):
            x = rng.choice([-1.0, 0.5, 2.0, nan, inf], size=(3, 4, 2),
                           p=[0.3, 0.3, 0.3, 0.05, 0.05] if trial else [0.4, 0.3, 0.3, 0, 0])
            results = []
            for lib in (torch, jitgrad):
                t = lib.tensor(x, dtype=lib.float64, requires_grad=True)
                y = getattr(lib, name)(t, **kwargs)
                w = lib.tensor(np.linspace(1.0, 2.0, y.numel()).reshape(tuple(y.shape)),
                               dtype=lib.float64)
                (y * w).sum().backward()
                results.append((y.detach().numpy(), t.grad.numpy()))
            for ours, theirs in zip(results[1], results[0]):
                np.testing.assert_allclose(ours, theirs, rtol=1e-15, equal_nan=True)
