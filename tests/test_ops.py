"""Generic tests driven by the op-spec table: every registered op, every check."""
from __future__ import annotations

import numpy as np
import pytest
from op_specs import BY_OP, SPECS, inputs_for

import jitgrad
from jitgrad.ops.registry import OPS, PYTHON

FD_EPS = 1e-6


def _leaves(arrays, dtype=jitgrad.float64):
    return [jitgrad.tensor(a, dtype=dtype, requires_grad=True) for a in arrays]


def _weights(out_shape, seed=1):
    return np.random.default_rng(seed).uniform(0.5, 1.5, size=out_shape)


def _scalar_objective(spec, arrays, weights):
    """sum(fn(x) * w) as a float, for finite differences."""
    xs = [jitgrad.tensor(a, dtype=jitgrad.float64) for a in arrays]
    out = spec.fn(jitgrad, *xs)
    return float((out.numpy() * weights).sum())


def _gradients(spec, arrays, weights):
    xs = _leaves(arrays)
    out = spec.fn(jitgrad, *xs)
    (out * jitgrad.tensor(weights)).sum().backward()
    return [x.grad.numpy() for x in xs]


def _finite_differences(spec, arrays, weights):
    grads = []
    for k, a in enumerate(arrays):
        g = np.zeros_like(a)
        for i in np.ndindex(a.shape):
            up = [b.copy() for b in arrays]
            down = [b.copy() for b in arrays]
            up[k][i] += FD_EPS
            down[k][i] -= FD_EPS
            g[i] = (_scalar_objective(spec, up, weights) -
                    _scalar_objective(spec, down, weights)) / (2 * FD_EPS)
        grads.append(g)
    return grads


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_every_op_has_a_spec(op):
    if op.kind == PYTHON:
        pytest.skip("custom Function entries: tests/test_function.py covers them")
    assert op.name in BY_OP, f"op {op.name!r} has no entry in tests/op_specs.py"


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.id)
def test_spec_exercises_its_op(spec):
    xs = _leaves(inputs_for(spec))
    out = spec.fn(jitgrad, *xs)
    expected = next(op.grad_fn for op in OPS if op.name == spec.op)
    assert type(out.grad_fn).__name__ in (expected, "MulBackward0"), type(out.grad_fn)
    # the op's own entry is on the tape (to_dtype is followed by a product)
    tape = jitgrad.tape.current_tape()
    codes = {tape.entry_op(e) for e in range(tape.n_entries)}
    assert next(op.code for op in OPS if op.name == spec.op) in codes


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.id)
@pytest.mark.parametrize("dtype", [jitgrad.float32, jitgrad.float64], ids=str)
def test_forward_matches_numpy(spec, dtype):
    arrays = inputs_for(spec, dtype=dtype.numpy)
    out = spec.fn(jitgrad, *[jitgrad.tensor(a, dtype=dtype) for a in arrays])
    expected = spec.numpy(*arrays)
    tol = 1e-5 if dtype is jitgrad.float32 else 1e-12
    np.testing.assert_allclose(out.numpy(), expected, rtol=tol, atol=tol)
    if spec.op != "to_dtype":
        assert out.dtype is dtype


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.id)
def test_gradient_matches_finite_differences(spec):
    if not spec.finite_differences:
        pytest.skip("the op rounds to float32: differences below its resolution are noise")
    arrays = inputs_for(spec)
    weights = _weights(np.shape(spec.numpy(*arrays)))
    analytic = _gradients(spec, arrays, weights)
    numeric = _finite_differences(spec, arrays, weights)
    for a, n in zip(analytic, numeric):
        np.testing.assert_allclose(a, n, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.id)
def test_numba_sweep_matches_differentiable_rule(spec):
    """The generated Numba step and the create_graph rule are the same derivative."""
    arrays = inputs_for(spec)
    weights = _weights(np.shape(spec.numpy(*arrays)))
    fast = _gradients(spec, arrays, weights)
    xs = _leaves(arrays)
    out = (spec.fn(jitgrad, *xs) * jitgrad.tensor(weights)).sum()
    rule = jitgrad.autograd.grad(out, xs, create_graph=True)
    for f, r in zip(fast, rule):
        np.testing.assert_allclose(f, r.detach().numpy(), rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.id)
def test_second_order_matches_finite_differences(spec):
    """Hessian-vector product through create_graph vs differences of gradients."""
    if not spec.finite_differences:
        pytest.skip("the op rounds to float32: differences below its resolution are noise")
    arrays = inputs_for(spec)
    weights = _weights(np.shape(spec.numpy(*arrays)))
    directions = [np.random.default_rng(7 + k).normal(size=a.shape) for k, a in enumerate(arrays)]
    xs = _leaves(arrays)
    out = (spec.fn(jitgrad, *xs) * jitgrad.tensor(weights)).sum()
    grads = jitgrad.autograd.grad(out, xs, create_graph=True)
    terms = [(g * jitgrad.tensor(d)).sum() for g, d in zip(grads, directions)
             if g.requires_grad]
    if terms:
        inner = terms[0]
        for term in terms[1:]:
            inner = inner + term
        hvp = jitgrad.autograd.grad(inner, xs, allow_unused=True)
    else:  # the gradient does not depend on the inputs: a piecewise-linear op
        hvp = [None] * len(xs)
    step = 1e-5
    plus = _gradients(spec, [a + step * d for a, d in zip(arrays, directions)], weights)
    minus = _gradients(spec, [a - step * d for a, d in zip(arrays, directions)], weights)
    for h, p, m in zip(hvp, plus, minus):
        expected = (p - m) / (2 * step)
        got = np.zeros_like(expected) if h is None else h.numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.id)
def test_float32_gradients(spec):
    arrays = inputs_for(spec, dtype=np.float32)
    xs = _leaves(arrays, dtype=jitgrad.float32)
    out = spec.fn(jitgrad, *xs)
    out.sum().backward()
    reference = _gradients(spec, [a.astype(np.float64) for a in arrays],
                           np.ones(np.shape(spec.numpy(*arrays))))
    for x, r in zip(xs, reference):
        assert x.grad.dtype is jitgrad.float32
        np.testing.assert_allclose(x.grad.numpy(), r, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("spec", [s for s in SPECS if s.torch], ids=lambda s: s.id)
def test_against_torch(spec):
    torch = pytest.importorskip("torch")
    arrays = inputs_for(spec)
    weights = _weights(np.shape(spec.numpy(*arrays)))
    ours = _gradients(spec, arrays, weights)
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    out = spec.fn(torch, *ts)
    expected_out = out.detach().numpy()
    (out * torch.tensor(weights)).sum().backward()
    mine = spec.fn(jitgrad, *[jitgrad.tensor(a) for a in arrays])
    np.testing.assert_allclose(mine.numpy(), expected_out, rtol=1e-12, atol=1e-12)
    for o, t in zip(ours, ts):
        np.testing.assert_allclose(o, t.grad.numpy(), rtol=1e-10, atol=1e-12)
    # grad_fn names agree with torch's
    ours_out = spec.fn(jitgrad, *_leaves(arrays))
    theirs_out = spec.fn(torch, *[torch.tensor(a, requires_grad=True) for a in arrays])
    # torch names a product by a view of it for batched inputs (matmul, linear of 3-D)
    if spec.op not in ("matmul", "linear", "linear_bias", "squeeze", "to_dtype", "select",
                       "view"):
        assert type(ours_out.grad_fn).__name__ == type(theirs_out.grad_fn).__name__


def test_broadcast_scalar_tensor_operands():
    a = jitgrad.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    b = jitgrad.tensor(3.0, requires_grad=True)
    (a * b + b).sum().backward()
    np.testing.assert_allclose(a.grad.numpy(), np.full((2, 2), 3.0))
    assert b.grad.item() == pytest.approx(10.0 + 4.0)


_NAN = float("nan")
# torch's derivatives at nan, zero and ties: relu passes the gradient where its output is
# not <= 0 (a nan included), abs multiplies by sign (0 at nan), 0 ** x has derivative 0
# for x >= 0 (not y * log(0)), maximum/minimum split ties
# evenly and give all of it to both inputs where a nan leaves them unordered
_EDGE_CASES = [
    ("relu", lambda L, x: L.relu(x), [[_NAN, 0.0, -0.0, -1.0, 2.0]], [[1, 0, 0, 0, 1]]),
    ("abs", lambda L, x: L.abs(x), [[_NAN, 0.0, -0.0, -1.0, 2.0]], [[0, 0, 0, -1, 1]]),
    ("rpow_scalar", lambda L, x: 0.0 ** x, [[0.0, 1.0, 2.0, -1.0]], [[0, 0, 0, -np.inf]]),
    ("maximum", lambda L, a, b: L.maximum(a, b),
     [[_NAN, 1.0, 2.0, 2.0, 3.0], [1.0, _NAN, 2.0, 1.0, 5.0]],
     [[1, 1, 0.5, 1, 0], [1, 1, 0.5, 0, 1]]),
    ("minimum", lambda L, a, b: L.minimum(a, b),
     [[_NAN, 1.0, 2.0, 2.0, 3.0], [1.0, _NAN, 2.0, 1.0, 5.0]],
     [[1, 1, 0.5, 0, 1], [1, 1, 0.5, 1, 0]]),
]


@pytest.mark.parametrize("case", _EDGE_CASES, ids=lambda c: c[0])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_derivatives_at_nan_zero_and_ties(case, dtype):
    name, fn, values, expected = case
    d = getattr(jitgrad, dtype)
    leaves = [jitgrad.tensor(v, dtype=d, requires_grad=True) for v in values]
    fn(jitgrad, *leaves).sum().backward()                       # the Numba sweep
    rule = jitgrad.autograd.grad(fn(jitgrad, *leaves).sum(), leaves, create_graph=True)
    for leaf, by_rule, want in zip(leaves, rule, expected):     # and the differentiable rule
        np.testing.assert_array_equal(leaf.grad.numpy(), np.array(want, np.float64))
        np.testing.assert_array_equal(by_rule.detach().numpy(), np.array(want, np.float64))
    torch = pytest.importorskip("torch")
    ts = [torch.tensor(v, dtype=getattr(torch, dtype), requires_grad=True) for v in values]
    fn(torch, *ts).sum().backward()
    for leaf, t in zip(leaves, ts):
        np.testing.assert_array_equal(leaf.grad.numpy(), t.grad.numpy())


def test_sign_of_nan_is_zero():
    x = jitgrad.tensor([_NAN, 0.0, -0.0, -2.0, 3.0])
    assert jitgrad.sign(x).tolist() == [0.0, 0.0, 0.0, -1.0, 1.0]
    assert jitgrad.sign(jitgrad.tensor(_NAN, dtype=jitgrad.float64)).item() == 0.0
    assert jitgrad.sign(jitgrad.tensor([-3, 0, 4])).tolist() == [-1, 0, 1]


# a selection's adjoint is masked, not multiplied: where it selects nothing the gradient is
# exactly 0 even when the incoming one is inf or nan (sqrt'(0) = inf), as torch's threshold,
# clamp, where and maximum backwards; a product (abs, mul) lets inf * 0 be nan, as torch's
def _masked_programs(L, shape=(3,)):
    zeros = L.zeros(shape, dtype=L.float64)
    return {
        "relu": lambda x: L.sqrt(L.relu(x)),
        "clamp": lambda x: L.sqrt(L.clamp(x, min=0.0)),
        "where": lambda x: L.log(L.where(x > 0, x, zeros)),
        "maximum": lambda x: L.sqrt(L.maximum(x, zeros)),
        "abs_times_zero": lambda x: L.sqrt(L.abs(x) * 0.0),
    }


_MASKED = {  # x = [-1, 0, 4]
    "relu": [0.0, 0.0, 0.25],
    "clamp": [0.0, np.inf, 0.25],  # clamp passes the gradient at its bound
    "where": [0.0, 0.0, 0.25],
    "maximum": [0.0, np.inf, 0.25],  # a tie: half of inf
    "abs_times_zero": [np.nan, np.nan, np.nan],
}


@pytest.mark.parametrize("name", sorted(_MASKED))
def test_selections_mask_an_infinite_incoming_gradient(name):
    x = np.array([-1.0, 0.0, 4.0])
    expected = np.array(_MASKED[name])
    f = _masked_programs(jitgrad)[name]
    t = jitgrad.tensor(x, dtype=jitgrad.float64, requires_grad=True)
    f(t).sum().backward()  # the Numba sweep
    np.testing.assert_array_equal(t.grad.numpy(), expected)
    t = jitgrad.tensor(x, dtype=jitgrad.float64, requires_grad=True)
    (g,) = jitgrad.autograd.grad(f(t).sum(), t, create_graph=True)  # the rule
    np.testing.assert_array_equal(g.detach().numpy(), expected)
    tape = jitgrad.compile(lambda u: f(u).sum(), np.ones(3))  # the compiled replay
    np.testing.assert_array_equal(tape.grad(x), expected)
    program = _masked_programs(jitgrad, ())
    for i, v in enumerate(x):  # 0-d values take the scalar paths
        s = jitgrad.tensor(v, dtype=jitgrad.float64, requires_grad=True)
        program[name](s).backward()
        np.testing.assert_array_equal(s.grad.item(), expected[i])
    torch = pytest.importorskip("torch")
    t = torch.tensor(x, requires_grad=True)
    _masked_programs(torch)[name](t).sum().backward()
    np.testing.assert_array_equal(t.grad.numpy(), expected)


def test_second_order_through_a_selection_of_a_nan_derivative():
    # norm's second derivative at 0 is nan; relu selects nothing there: torch gives 0
    def f(L, t):
        return L.relu(t).norm(dim=0).sum()

    x = np.array([[0.0, -1.0, 2.0]])
    t = jitgrad.tensor(x, dtype=jitgrad.float64, requires_grad=True)
    (g,) = jitgrad.autograd.grad(f(jitgrad, t), t, create_graph=True)
    (h,) = jitgrad.autograd.grad(g.sum(), t)
    np.testing.assert_array_equal(h.numpy(), [[0.0, 0.0, 0.0]])
    hv = jitgrad.func.hvp(lambda u: f(jitgrad, u), (jitgrad.tensor(x, dtype=jitgrad.float64),),
                          (jitgrad.tensor(np.ones((1, 3)), dtype=jitgrad.float64),))
    np.testing.assert_array_equal(hv.numpy(), [[0.0, 0.0, 0.0]])
