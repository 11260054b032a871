"""Forward mode: the tangent sweep (generated from the same declarations as the reverse
sweep), dual tensors and levels (``jitgrad.autograd.forward_ad``)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from op_specs import BY_OP, inputs_for

import jitgrad
import jitgrad.autograd.forward_ad as fwAD
from jitgrad import func
from jitgrad.ops.registry import OPS, PYTHON

ROOT = Path(__file__).resolve().parents[1]
REGISTERED = [op for op in OPS if op.kind != PYTHON]
FD_EPS = 1e-6


def _spec(op):
    spec = BY_OP.get(op.name)
    if spec is None:
        pytest.fail(f"op {op.name!r} has no spec in tests/op_specs.py")
    return spec


def _directions(arrays, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(a.shape) for a in arrays]


def _apply(spec, arrays):
    return spec.fn(jitgrad, *[jitgrad.tensor(a, dtype=jitgrad.float64) for a in arrays])


def _jvp_dual(spec, arrays, directions, differentiable: bool):
    with fwAD.dual_level():
        if differentiable:  # force the recorded (create_graph-like) evaluation
            fwAD.current_level().differentiable = True
        duals = [fwAD.make_dual(jitgrad.tensor(a), jitgrad.tensor(d))
                 for a, d in zip(arrays, directions)]
        out = spec.fn(jitgrad, *duals)
        primal, tangent = fwAD.unpack_dual(out)
        return np.asarray(primal.detach()), np.asarray(tangent.detach())


# -- every registered op ------------------------------------------------------------------------
@pytest.mark.parametrize("op", REGISTERED, ids=lambda op: op.name)
@pytest.mark.parametrize("differentiable", [False, True], ids=["numba", "recorded"])
def test_jvp_matches_finite_differences(op, differentiable):
    spec = _spec(op)
    arrays = inputs_for(spec)
    directions = _directions(arrays, 3)
    primal, tangent = _jvp_dual(spec, arrays, directions, differentiable)
    np.testing.assert_allclose(primal, np.asarray(_apply(spec, arrays)), rtol=1e-14)
    if not spec.finite_differences:
        pytest.skip("the op rounds to float32: differences below its resolution are noise")
    plus = np.asarray(_apply(spec, [a + FD_EPS * d for a, d in zip(arrays, directions)]))
    minus = np.asarray(_apply(spec, [a - FD_EPS * d for a, d in zip(arrays, directions)]))
    np.testing.assert_allclose(tangent, (plus - minus) / (2 * FD_EPS), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("op", REGISTERED, ids=lambda op: op.name)
def test_jvp_and_vjp_are_transposes(op):
    """<u, vjp(v)> == <jvp(u), v> in float64."""
    spec = _spec(op)
    arrays = inputs_for(spec)
    u = _directions(arrays, 11)
    primals = tuple(jitgrad.tensor(a) for a in arrays)
    out, jvp_out = func.jvp(lambda *xs: spec.fn(jitgrad, *xs), primals,
                            tuple(jitgrad.tensor(d) for d in u))
    v = np.random.default_rng(12).standard_normal(tuple(out.shape))
    _, vjp_fn = func.vjp(lambda *xs: spec.fn(jitgrad, *xs), *primals)
    cotangents = vjp_fn(jitgrad.tensor(v))
    left = sum(float((np.asarray(c) * d).sum()) for c, d in zip(cotangents, u))
    right = float((np.asarray(jvp_out) * v).sum())
    # through float32 (a cast) both sides are rounded, differently
    tolerance = 1e-12 if spec.finite_differences else 1e-6
    assert left == pytest.approx(right, rel=tolerance, abs=tolerance)


def _second_derivatives(spec, arrays, u, v, w):
    """u^T H v of s(x) = <w, f(x)> three ways: forward-over-forward, forward-over-reverse,
    and create_graph double backward."""
    n = len(arrays)
    argnums = tuple(range(n))

    def s(*xs):
        return (spec.fn(jitgrad, *xs) * jitgrad.tensor(w)).sum()

    def directional(*xs):  # d s(x)[v], forward mode
        return func.jvp(s, xs, tuple(jitgrad.tensor(d) for d in v))[1]

    xs = tuple(jitgrad.tensor(a) for a in arrays)
    tu = tuple(jitgrad.tensor(d) for d in u)
    fwd_fwd = float(func.jvp(directional, xs, tu)[1])
    hv = func.hvp(s, xs, tu)
    hv = hv if isinstance(hv, tuple) else (hv,)
    fwd_rev = sum(float((np.asarray(h) * d).sum()) for h, d in zip(hv, v))
    jac_grad = func.jvp(func.grad(s, argnums=argnums), xs, tu)[1]
    fwd_grad = sum(float((np.asarray(h) * d).sum()) for h, d in zip(jac_grad, v))
    leaves = [jitgrad.tensor(a, requires_grad=True) for a in arrays]
    grads = jitgrad.autograd.grad(s(*leaves), leaves, create_graph=True)
    inner = sum(((g * jitgrad.tensor(d)).sum() for g, d in zip(grads, u)
                 if g.requires_grad), jitgrad.tensor(0.0, dtype=jitgrad.float64))
    if inner.requires_grad:
        second = jitgrad.autograd.grad(inner, leaves, allow_unused=True)
        rev_rev = sum(0.0 if h is None else float((h.numpy() * d).sum())
                      for h, d in zip(second, v))
    else:
        rev_rev = 0.0
    return fwd_fwd, fwd_rev, fwd_grad, rev_rev


@pytest.mark.parametrize("op", REGISTERED, ids=lambda op: op.name)
def test_second_derivatives_agree(op):
    """forward-over-forward, forward-over-reverse (hvp, jvp of grad) and reverse-over-reverse
    give the same u^T H v."""
    spec = _spec(op)
    arrays = inputs_for(spec)
    u, v = _directions(arrays, 21), _directions(arrays, 22)
    w = np.random.default_rng(23).uniform(0.5, 1.5, np.shape(_apply(spec, arrays)))
    fwd_fwd, fwd_rev, fwd_grad, rev_rev = _second_derivatives(spec, arrays, u, v, w)
    # through float32 (a cast) each way rounds differently
    scale = max(1.0, abs(rev_rev)) * (1.0 if spec.finite_differences else 1e4)
    assert fwd_fwd == pytest.approx(rev_rev, abs=1e-10 * scale)
    assert fwd_rev == pytest.approx(rev_rev, abs=1e-10 * scale)
    assert fwd_grad == pytest.approx(rev_rev, abs=1e-10 * scale)


@pytest.mark.parametrize("op", [op for op in REGISTERED if op.name in
                                ("sin", "mul", "div", "sum_dim", "logsumexp", "mm", "cat",
                                 "index", "expand", "norm")], ids=lambda op: op.name)
def test_float32_tangents(op):
    spec = _spec(op)
    arrays = inputs_for(spec)
    directions = _directions(arrays, 5)
    with fwAD.dual_level():
        duals = [fwAD.make_dual(jitgrad.tensor(a, dtype=jitgrad.float32),
                                jitgrad.tensor(d, dtype=jitgrad.float32))
                 for a, d in zip(arrays, directions)]
        out = spec.fn(jitgrad, *duals)
        tangent = fwAD.unpack_dual(out).tangent
    assert tangent.dtype is jitgrad.float32
    _, expected = _jvp_dual(spec, arrays, directions, False)
    np.testing.assert_allclose(np.asarray(tangent), expected, rtol=2e-4, atol=2e-5)


# -- the generated kernels ----------------------------------------------------------------------
def test_generated_tangent_kernels_match_the_registry():
    result = subprocess.run([sys.executable, "-m", "jitgrad.kernels.generate_tangent",
                             "--check"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_matmul_tangent_is_derived_from_the_declared_vjp():
    from jitgrad.kernels.generate_tangent import matmul_tangents, transpose_linear
    from jitgrad.ops.registry import BY_NAME

    assert matmul_tangents(BY_NAME["mm"]) == ("matmul(t, b)", "matmul(a, t)")
    # the transpose of any such map satisfies <f(g), t> == <g, f^T(t)>
    expression = "-(matmul(mT(g), a) * 2.0)"
    transposed = transpose_linear(expression)
    rng = np.random.default_rng(0)
    names = {"matmul": np.matmul, "mT": np.transpose, "a": rng.standard_normal((3, 4)),
             "g": rng.standard_normal((3, 2)), "t": rng.standard_normal((2, 4))}
    assert np.sum(eval(expression, names) * names["t"]) == pytest.approx(
        np.sum(names["g"] * eval(transposed, names)))
    with pytest.raises(ValueError, match="not a linear map"):
        transpose_linear("g * g")


_PYTHON_TANGENTS = """
import numpy as np, jitgrad as torch
from jitgrad.func import jvp, jacfwd
a = torch.tensor(np.linspace(-1, 1, 12).reshape(3, 4))
b = torch.tensor(np.linspace(0.5, 2, 4))
f = lambda a, b: (torch.sin(a) * b + a[1:, ::2].sum() + (a @ b).max()
                  + torch.cat([a, a], 0).norm() + torch.logsumexp(a, 1).mean()
                  + a.T[0].prod()).sum()
_, t = jvp(f, (a, b), (torch.ones(3, 4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)))
j = jacfwd(lambda a: torch.tanh(a) @ b)(a)
print(repr([float(t)] + np.asarray(j).ravel().tolist()))
"""


def test_tangent_kernels_run_as_plain_python():
    """NUMBA_DISABLE_JIT=1 runs the same tangent-kernel code as Python."""
    jitted = subprocess.run([sys.executable, "-c", _PYTHON_TANGENTS], capture_output=True,
                            text=True, check=True, cwd=ROOT).stdout
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    plain = subprocess.run([sys.executable, "-c", _PYTHON_TANGENTS], capture_output=True,
                           text=True, env=env, cwd=ROOT)
    assert plain.returncode == 0, plain.stderr
    np.testing.assert_allclose(eval(plain.stdout), eval(jitted), rtol=1e-12)


def test_chunked_tangents_match_one_direction_at_a_time():
    from jitgrad.autograd.forward_ad import new_buffers, run_tangent_sweep
    from jitgrad.tape import current_tape

    x0 = np.linspace(-1.0, 1.5, 6)
    directions = np.random.default_rng(0).standard_normal((5, 6))
    with fwAD.dual_level():
        x = fwAD.make_dual(jitgrad.tensor(x0), jitgrad.zeros(6, dtype=jitgrad.float64))
        y = (jitgrad.tanh(x) * jitgrad.exp(-x ** 2)).reshape(2, 3) @ jitgrad.ones(3, 2,
                                                                                dtype=jitgrad.float64)
        tape = current_tape()
        start = fwAD.current_level().start
        buffers, active = new_buffers(tape, 5)
        offset, size, code = tape.node_location(x._node)
        buffers[code][:, offset:offset + size] = directions
        active[x._node] = 2
        run_tangent_sweep(tape, buffers, active, start, tape.n_entries)
        offset, size, code = tape.node_location(y._node)
        chunked = buffers[code][:, offset:offset + size].copy()
    for r in range(5):
        _, single = func.jvp(lambda x: (jitgrad.tanh(x) * jitgrad.exp(-x ** 2)).reshape(2, 3)
                             @ jitgrad.ones(3, 2, dtype=jitgrad.float64),
                             (jitgrad.tensor(x0),), (jitgrad.tensor(directions[r]),))
        np.testing.assert_allclose(chunked[r], np.asarray(single).ravel(), rtol=1e-13)


# -- the forward_ad API -------------------------------------------------------------------------
def test_unpack_dual_is_a_namedtuple_and_plain_tensors_have_no_tangent():
    x = jitgrad.tensor([1.0, 2.0])
    with fwAD.dual_level():
        dual = fwAD.make_dual(x, jitgrad.tensor([1.0, 0.0]))
        unpacked = fwAD.unpack_dual(dual * 3)
        assert isinstance(unpacked, fwAD.UnpackedDualTensor)
        assert unpacked.primal.tolist() == [3.0, 6.0]
        assert unpacked.tangent.tolist() == [3.0, 0.0]
        assert fwAD.unpack_dual(x).tangent is None
        assert fwAD.unpack_dual(jitgrad.ones(2) * 2).tangent is None
        # the primal carries no tangent of this level
        assert fwAD.unpack_dual(unpacked.primal).tangent is None
    assert fwAD.unpack_dual(dual).tangent is None  # outside the level


def test_tangents_through_scalars_views_and_several_duals():
    with fwAD.dual_level():
        a = fwAD.make_dual(jitgrad.tensor(2.0), jitgrad.tensor(1.0))
        b = fwAD.make_dual(jitgrad.tensor([1.0, 2.0, 3.0]), jitgrad.tensor([0.0, 1.0, 0.0]))
        y = (a * a + b[1:] * a).sum()
        # a * a is broadcast over two elements: 2 * 2a + sum(b[1:]) + a * sum(tb[1:])
        assert fwAD.unpack_dual(y).tangent.item() == pytest.approx(8.0 + 5.0 + 2.0)


def test_nested_levels_give_second_derivatives_and_never_mix():
    x0 = jitgrad.tensor(0.7, dtype=jitgrad.float64)
    with fwAD.dual_level():
        x = fwAD.make_dual(x0, jitgrad.tensor(1.0, dtype=jitgrad.float64))
        with fwAD.dual_level():
            y = fwAD.make_dual(x, jitgrad.tensor(1.0, dtype=jitgrad.float64))
            inner = fwAD.unpack_dual(jitgrad.sin(y) * y).tangent  # d/dy at the inner level
        second = fwAD.unpack_dual(inner).tangent
    x = 0.7
    assert float(inner) == pytest.approx(np.cos(x) * x + np.sin(x))
    assert float(second) == pytest.approx(-np.sin(x) * x + 2 * np.cos(x))


def test_perturbation_confusion():
    """d/dx [x * d/dy (x + y)] = 1: the inner level's perturbation must not leak into x."""
    x0 = jitgrad.tensor(2.0, dtype=jitgrad.float64)
    one = jitgrad.tensor(1.0, dtype=jitgrad.float64)
    with fwAD.dual_level():
        x = fwAD.make_dual(x0, one)
        with fwAD.dual_level():
            y = fwAD.make_dual(one, one)
            inner = fwAD.unpack_dual(x + y).tangent
        result = fwAD.unpack_dual(x * inner).tangent
    assert float(result) == 1.0


def test_reverse_over_forward():
    """A tangent computed from tensors that require grad can be backpropagated."""
    x = jitgrad.tensor([0.3, 1.1], dtype=jitgrad.float64, requires_grad=True)
    with fwAD.dual_level():
        dual = fwAD.make_dual(x, jitgrad.ones(2, dtype=jitgrad.float64))
        tangent = fwAD.unpack_dual(jitgrad.sin(dual)).tangent  # cos(x)
    tangent.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), -np.sin([0.3, 1.1]))


def test_forward_over_reverse_with_the_public_api():
    x0 = np.array([0.3, -0.8, 1.4])
    v = np.array([1.0, 0.5, -2.0])
    with fwAD.dual_level():
        x = fwAD.make_dual(jitgrad.tensor(x0), jitgrad.tensor(v))
        (g,) = jitgrad.autograd.grad((jitgrad.sin(x) * x ** 2).sum(), x, create_graph=True)
        hv = fwAD.unpack_dual(g).tangent
    second = -np.sin(x0) * x0 ** 2 + 4 * x0 * np.cos(x0) + 2 * np.sin(x0)
    np.testing.assert_allclose(np.asarray(hv), second * v, rtol=1e-12)


def test_enter_and_exit_levels():
    level = fwAD.enter_dual_level()
    try:
        assert level == 0
        inner = fwAD.enter_dual_level()
        assert inner == 1
        with pytest.raises(RuntimeError, match="not the last one"):
            fwAD.exit_dual_level(level=level)
        fwAD.exit_dual_level(level=inner)
    finally:
        fwAD.exit_dual_level(level=level)
    with pytest.raises(RuntimeError, match="no dual level"):
        fwAD.exit_dual_level()


# -- bad input -----------------------------------------------------------------------------------
def test_make_dual_outside_a_level():
    with pytest.raises(RuntimeError, match="no level exists"):
        fwAD.make_dual(jitgrad.ones(2), jitgrad.ones(2))


def test_tangent_of_another_shape_or_dtype():
    with fwAD.dual_level():
        with pytest.raises(RuntimeError, match=r"different size .* \[3\] .* \[2\]"):
            fwAD.make_dual(jitgrad.ones(3), jitgrad.ones(2))
        with pytest.raises(RuntimeError, match="same dtype"):
            fwAD.make_dual(jitgrad.ones(2), jitgrad.ones(2, dtype=jitgrad.float64))
        with pytest.raises(ValueError, match="floating point"):
            fwAD.make_dual(jitgrad.tensor([1, 2]), jitgrad.tensor([1, 2]))
        # nothing left broken: the level still works
        x = fwAD.make_dual(jitgrad.tensor([2.0]), jitgrad.tensor([1.0]))
        assert fwAD.unpack_dual(x * x).tangent.tolist() == [4.0]


def test_an_exception_inside_a_level_leaves_no_level_behind():
    with pytest.raises(ZeroDivisionError):
        with fwAD.dual_level():
            raise ZeroDivisionError
    assert fwAD.current_level() is None
