"""Compiled tapes: replay equals a fresh eager run; guards fire (and record again) when a
branch flips and only then; the tape is data (save/load, listing, optimization pass that
changes nothing); batch replay; entry points for Numba; bad input."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import jitgrad as torch
from jitgrad.compile import BranchChanged

ROOT = Path(__file__).resolve().parents[1]


def eager(f, *inputs, dtype=torch.float64):
    """Value and gradients of ``f`` by a fresh eager run."""
    tensors = [torch.tensor(np.asarray(x), dtype=dtype, requires_grad=True) for x in inputs]
    out = f(*tensors)
    out.backward()
    return out.item(), [t.grad.numpy() for t in tensors]


def random_like(rng, x):
    return rng.standard_normal(np.shape(x)) if np.ndim(x) else float(rng.standard_normal())


# -- replay equals eager ------------------------------------------------------------------------
PROGRAMS = {
    "elementwise": (lambda x: (torch.sin(x) * torch.exp(x / 3) + torch.tanh(x) ** 2
                               - torch.sigmoid(x) * torch.cos(x)).sum(), [(5,)]),
    "broadcast_matmul": (lambda x, w: (torch.tanh(w @ x + x[:4]) * w.sum(1)).sum()
                         + (x ** 2).mean(), [(6,), (4, 6)]),
    "selections": (lambda x: torch.relu(x).sum() + torch.abs(x).sum()
                   + torch.clamp(x, -0.5, 0.5).sum() + torch.maximum(x, 0.2 * x).sum(),
                   [(7,)]),
    "where": (lambda x: torch.where(x > 0, x ** 2, -x).sum(), [(6,)]),
    "max_along_dims": (lambda x: x.max() + x.max(dim=1).values.sum()
                       + x.min(dim=0).values.prod() + torch.logsumexp(x, dim=0).sum(),
                       [(3, 4)]),
    "views_and_indexing": (lambda x: (x.reshape(2, 3).T[1] * x[::3]).sum() + x[[0, 4, 4]].sum()
                           + x[1:4].norm(), [(6,)]),
    "concatenation": (lambda x, y: torch.cat([x, y * 2, torch.ones(2)]).prod()
                      + torch.stack([x, y]).sum(0).pow(3).sum(), [(3,), (3,)]),
    "scalar_chain": (lambda x, a: _chain(x, a, 30), [(), ()]),
    "masks_and_detach": (lambda x: (x * (x > 0).double() + x.detach() * x
                                    + torch.sign(x) * x).sum(), [(5,)]),
    "division_and_powers": (lambda x, y: (x / (y ** 2 + 1) + (y ** 2 + 1) ** x
                                          - 2 / (x ** 2 + 1)).sum(), [(4,), (4,)]),
}


def _chain(x, a, n):
    for _ in range(n):
        x = torch.sin(x) * a + x * 0.5
    return x


@pytest.mark.parametrize("name", sorted(PROGRAMS))
@pytest.mark.parametrize("optimize", [True, False])
def test_replay_equals_a_fresh_eager_run(name, optimize):
    f, shapes = PROGRAMS[name]
    rng = np.random.default_rng(len(name))
    example = [random_like(rng, np.zeros(s)) for s in shapes]
    tape = torch.compile(f, *example, optimize=optimize)
    for _ in range(6):
        inputs = [random_like(rng, np.zeros(s)) for s in shapes]
        value, grads = eager(f, *inputs)
        replay_value, replay_grads = tape.value_and_grad(*inputs)
        replay_grads = replay_grads if isinstance(replay_grads, tuple) else (replay_grads,)
        np.testing.assert_allclose(replay_value, value, rtol=1e-12)
        for got, want in zip(replay_grads, grads):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
        assert np.allclose(tape(*inputs), value, rtol=1e-12)
    assert tape.recordings == 1  # every selection above is recomputed: no guard fired


def test_float32_replay_matches_eager_float32():
    def f(x, w):
        return torch.tanh(w @ x).sum() + (torch.exp(x) * x).mean()

    rng = np.random.default_rng(1)
    x, w = rng.standard_normal(5).astype(np.float32), rng.standard_normal((3, 5)).astype(
        np.float32)
    tape = torch.compile(f, x, w)
    for _ in range(3):
        x, w = rng.standard_normal(5).astype(np.float32), rng.standard_normal(
            (3, 5)).astype(np.float32)
        value, (gx, gw) = eager(f, x, w, dtype=torch.float32)
        replay_value, (rx, rw) = tape.value_and_grad(x, w)
        assert replay_value.dtype == np.float32 and rx.dtype == np.float32
        np.testing.assert_allclose(replay_value, value, rtol=1e-5)
        np.testing.assert_allclose(rx, gx, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(rw, gw, rtol=1e-4, atol=1e-6)


def test_torch_is_the_oracle_for_value_gradient_and_hessian():
    torch_ = pytest.importorskip("torch")

    def f(lib, x):
        return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum() + lib.sin(x).prod()

    x = np.random.default_rng(2).uniform(-1, 1, 6)
    tape = torch.compile(lambda x: f(torch, x), x)
    reference = torch_.tensor(x, requires_grad=True)
    out = f(torch_, reference)
    (grad,) = torch_.autograd.grad(out, reference)
    hessian = torch_.autograd.functional.hessian(lambda t: f(torch_, t), reference)
    np.testing.assert_allclose(tape(x), out.item(), rtol=1e-12)
    np.testing.assert_allclose(tape.grad(x), grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(tape.hessian(x), hessian.numpy(), rtol=1e-9, atol=1e-10)
    v = np.arange(6.0)
    np.testing.assert_allclose(tape.hvp(x, v), hessian.numpy() @ v, rtol=1e-9, atol=1e-10)


# -- several inputs and outputs, forward and reverse products --------------------------------------
def test_pytrees_of_inputs_and_outputs():
    def f(params, x):
        h = torch.tanh(params["w"] @ x + params["b"])
        return {"sum": h.sum(), "parts": (h * 2, x.norm())}

    rng = np.random.default_rng(3)
    params = {"w": rng.standard_normal((3, 4)), "b": rng.standard_normal(3)}
    x = rng.standard_normal(4)
    tape = torch.compile(f, params, x)
    out = tape(params, x)
    assert set(out) == {"sum", "parts"} and out["parts"][0].shape == (3,)
    h = np.tanh(params["w"] @ x + params["b"])
    np.testing.assert_allclose(out["sum"], h.sum(), rtol=1e-12)
    cotangent = {"sum": 1.0, "parts": (np.ones(3), 0.0)}
    grads_params, grad_x = tape.vjp(params, x, cotangent)
    expected = (1 - h ** 2) * 3.0  # d(sum + 2 sum h)/d(pre-activation)
    np.testing.assert_allclose(grads_params["b"], expected, rtol=1e-10)
    np.testing.assert_allclose(grads_params["w"], np.outer(expected, x), rtol=1e-10)
    np.testing.assert_allclose(grad_x, params["w"].T @ expected, rtol=1e-10)


def test_jvp_and_vjp_are_adjoint_and_jacobian_matches():
    def f(x, y):
        return torch.stack([(x * y).sum(), torch.sin(x).prod(), (x ** 2).sum() - y[0]])

    rng = np.random.default_rng(4)
    x, y = rng.standard_normal(3), rng.standard_normal(3)
    tape = torch.compile(f, x, y)
    v = (rng.standard_normal(3), rng.standard_normal(3))
    u = rng.standard_normal(3)
    value, tangent = tape.jvp(x, y, v)
    cotangent = tape.vjp(x, y, u)
    assert np.isclose(u @ tangent, cotangent[0] @ v[0] + cotangent[1] @ v[1], rtol=1e-12)
    jx, jy = tape.jacobian(x, y)
    np.testing.assert_allclose(jx @ v[0] + jy @ v[1], tangent, rtol=1e-10)
    step = 1e-6
    numeric = (tape(x + step * v[0], y + step * v[1]) - tape(x - step * v[0], y - step * v[1]))
    np.testing.assert_allclose(numeric / (2 * step), tangent, rtol=1e-6)
    wide = torch.compile(lambda x: x * 2.0 + torch.sin(x), x)  # more outputs than inputs:
    np.testing.assert_allclose(wide.jacobian(x), np.diag(2 + np.cos(x)), atol=1e-15)


# -- guards ----------------------------------------------------------------------------------------
def item_branch(x):
    if x.sum().item() > 0:
        return (x ** 2).sum()
    return (x ** 3).sum()


def test_item_in_python_control_flow_records_again_when_the_branch_flips():
    tape = torch.compile(item_branch, np.array([1.0, 2.0]))
    positive, negative = np.array([0.5, 1.0]), np.array([-0.5, -1.0])
    np.testing.assert_allclose(tape.grad(positive), 2 * positive)
    np.testing.assert_allclose(tape.grad(negative), 3 * negative ** 2)
    np.testing.assert_allclose(tape.grad(positive), 2 * positive)  # the first variant again
    assert tape.recordings == 3  # .item() pins the value: a new value records again
    assert len(tape._variants[1]) == 3


def test_a_guard_raises_naming_the_op_and_where_it_was_recorded():
    def f(x):
        if x.sum() > 0:  # a tensor comparison: only its outcome is guarded
            return x.exp().sum()
        return x.sum()

    tape = torch.compile(f, np.array([1.0, 2.0]), on_branch_change="raise")
    tape.grad(np.array([3.0, -1.0]))  # same branch, another value: no guard fires
    assert tape.recordings == 1
    with pytest.raises(BranchChanged) as caught:
        tape.grad(np.array([-3.0, 1.0]))
    message = str(caught.value)
    assert "gt(" in message and "test_compile.py" in message and "another branch" in message
    assert caught.value.guard.op == "gt"


def test_relu_and_abs_flips_replay_gradients_and_guard_the_hessian():
    def f(x):
        return (torch.relu(x) * 3 + torch.abs(x) ** 3).sum()

    tape = torch.compile(f, np.array([1.0, -1.0, 2.0]))
    rng = np.random.default_rng(5)
    signs = set()
    for _ in range(6):
        x = rng.standard_normal(3)
        signs.add(tuple(x > 0))
        np.testing.assert_allclose(tape.grad(x), eager(f, x)[1][0], rtol=1e-12)
    assert tape.recordings == 1  # relu and abs are recomputed by the replay
    for _ in range(6):
        x = rng.standard_normal(3)
        np.testing.assert_allclose(tape.hvp(x, np.ones(3)), 6 * np.abs(x), rtol=1e-12)
    # relu's derivative mask (y <= 0), multiplied by a constant outside the graph, is guarded in
    # the recorded gradient: a sign flip records the second order again
    second = tape._variants[2][0].program
    assert any(g.op == "le" and "derivative of entry" in g.site for g in second.guards)
    assert tape.recordings > 2


def test_hvp_guards_a_selection_its_derivative_depends_on():
    def f(x):
        return (torch.maximum(x, -x) ** 3).sum()  # maximum's derivative reads a > b

    tape = torch.compile(f, np.array([1.0, 2.0]))
    np.testing.assert_allclose(tape.hvp(np.array([1.0, 2.0]), np.ones(2)), [6.0, 12.0])
    np.testing.assert_allclose(tape.hvp(np.array([-1.0, 2.0]), np.ones(2)), [6.0, 12.0])
    assert tape.recordings == 3  # the flip of a > b recorded the second order again
    assert any("gt" in str(g) for g in tape._variants[2][0].program.guards)


def test_where_and_max_replay_without_recording_again():
    def f(x):
        return torch.where(x > 0.5, torch.sin(x), x * x).sum() + x.max(dim=0).values.sum()

    tape = torch.compile(f, np.zeros((3, 2)))
    rng = np.random.default_rng(6)
    for _ in range(8):
        x = rng.standard_normal((3, 2))
        value, (grad,) = eager(f, x)
        np.testing.assert_allclose(tape.grad(x), grad, rtol=1e-12)
    assert tape.recordings == 1 and not tape.guards


def test_a_tensor_from_the_closure_modified_in_place_records_again():
    weight = torch.tensor([1.0, 2.0], dtype=torch.float64)
    tape = torch.compile(lambda x: (x * weight).sum(), np.ones(2))
    np.testing.assert_allclose(tape.grad(np.ones(2)), [1.0, 2.0])
    with torch.no_grad():
        weight.mul_(10)
    np.testing.assert_allclose(tape.grad(np.ones(2)), [10.0, 20.0])
    assert tape.recordings == 2


def test_values_computed_outside_the_graph_are_guarded():
    def f(x):
        scale = x.detach().sum() * 2  # computed from x, outside the graph
        return (x * scale).sum()

    tape = torch.compile(f, np.array([1.0, 2.0]))
    x = np.array([3.0, 4.0])
    np.testing.assert_allclose(tape.grad(x), eager(f, x)[1][0])
    assert tape.recordings == 2


def test_writing_a_traced_value_in_place_outside_the_graph_is_refused():
    def f(x):
        y = x * 2
        with torch.no_grad():
            y.add_(1)
        return y.sum()

    with pytest.raises(RuntimeError, match="in place"):
        torch.compile(f, np.ones(2))


# -- parameters, static arguments, shapes ----------------------------------------------------------
def test_parameters_change_without_recording_again_and_get_no_gradient():
    def f(x, a, n):
        return (torch.sin(x * a) ** n).sum()

    tape = torch.compile(f, np.ones(3), 2.0, 2, parameters=[1])
    x = np.array([0.1, 0.2, 0.3])
    for a in (0.5, 1.5, -2.0):
        expected = eager(lambda x, a=a: f(x, a, 2), x)[1][0]
        np.testing.assert_allclose(tape.grad(x, a, 2), expected, rtol=1e-12)
    assert tape.recordings == 1
    np.testing.assert_allclose(tape(x, 1.0, 3), np.sum(np.sin(x) ** 3))  # static: a new n
    assert tape.recordings == 2


def test_dynamic_shapes_record_again():
    tape = torch.compile(lambda x: (x * x).sum(), np.ones(2), dynamic=True)
    np.testing.assert_allclose(tape.grad(np.arange(4.0)), 2 * np.arange(4.0))
    assert tape.recordings == 2


# -- bad input -------------------------------------------------------------------------------------
def test_wrong_shape_and_dtype_are_clear_errors():
    tape = torch.compile(lambda x: x.sum(), np.ones(3))
    with pytest.raises(ValueError, match=r"recorded with shape \[3\], got \[4\]"):
        tape(np.ones(4))
    with pytest.raises(TypeError, match="recorded as float64"):
        tape(np.ones(3, np.float32))
    with pytest.raises(TypeError, match="compiled with 1 argument"):
        tape(np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="single scalar"):
        torch.compile(lambda x: x * 2, np.ones(3)).grad(np.ones(3))


@pytest.mark.parametrize("result", [1.0, np.ones(2), "text"])
def test_f_must_return_jitgrad_tensors(result):
    with pytest.raises(TypeError, match="must return floating-point jitgrad Tensors"):
        torch.compile(lambda x: result, np.ones(2))
    with pytest.raises(TypeError, match=r"x.sum\(\).item\(\)"):
        torch.compile(lambda x: x.sum().item(), np.ones(2))


def test_nan_inputs_propagate_as_nan():
    def f(x):
        return (torch.sin(x) * torch.exp(x) + x ** 2).sum() + torch.where(x > 0, x, -x).sum()

    tape = torch.compile(f, np.ones(3))
    value, grad = tape.value_and_grad(np.array([1.0, np.nan, 2.0]))
    assert np.isnan(value) and np.isnan(grad[1]) and np.isfinite(grad[[0, 2]]).all()
    guarded = torch.compile(lambda x: x.sum() * 2 if x.sum() > 0 else x.sum(), np.ones(2))
    assert np.isnan(guarded(np.array([np.nan, 1.0])))


def test_sign_replays_as_torch_sign_at_nan_and_zero():
    # sign() is recomputed on replay (the replay's own sign): 0 at nan and at +-0, as torch;
    # the gradient with respect to w is sign(x) itself
    def f(x, w):
        return (torch.sign(x) * w).sum()

    tape = torch.compile(f, np.ones(5), np.ones(5))
    x, w = np.array([np.nan, -2.0, 3.0, 0.0, -0.0]), np.ones(5)
    value, (_, grad_w) = tape.value_and_grad(x, w)
    leaf = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    eager_value = f(torch.tensor(x, dtype=torch.float64), leaf)
    eager_value.backward()
    np.testing.assert_array_equal(grad_w, [0.0, -1.0, 1.0, 0.0, 0.0])
    np.testing.assert_array_equal(grad_w, leaf.grad.numpy())
    assert value == eager_value.item() == 0.0
    assert tape.recordings == 1


def test_load_refuses_corrupt_and_foreign_files(tmp_path):
    path = tmp_path / "tape.npz"
    torch.compile(lambda x: (x * x).sum(), np.ones(2)).save(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "corrupt.npz").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="not a jitgrad compiled tape|corrupt"):
        torch.load(tmp_path / "corrupt.npz")
    np.savez(tmp_path / "foreign.npz", a=np.ones(3))
    with pytest.raises(ValueError, match="no header"):
        torch.load(tmp_path / "foreign.npz")
    (tmp_path / "pickled.npz").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="not a jitgrad compiled tape"):
        torch.load(tmp_path / "pickled.npz")


def test_load_refuses_a_tape_whose_indices_point_outside(tmp_path):
    from jitgrad.compile import _checksum

    path = tmp_path / "tape.npz"
    torch.compile(lambda x: (x * x).sum(), np.ones(2)).save(path)
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["p0.nodes"] = arrays["p0.nodes"].copy()
    arrays["p0.nodes"][-1, 0] = 10 ** 6  # an offset far outside the arena
    text = str(arrays.pop("header")[()])
    arrays.pop("checksum")
    np.savez(path, header=np.array(text), checksum=np.array(_checksum(text, arrays)),
             **arrays)
    with pytest.raises(ValueError, match="outside its arena"):
        torch.load(path)


# -- the tape as data ------------------------------------------------------------------------------
def test_save_and_load_round_trip(tmp_path):
    def f(x, a):
        y = torch.where(x > 0, x * a, -x)
        if y.sum() > 1:
            y = y * 2
        return (y ** 2).sum() + x.max()

    tape = torch.compile(f, np.array([1.0, -2.0, 0.5]), 2.0, parameters=[1])
    x = np.array([0.3, -0.1, 2.0])
    tape.hvp(x, 2.0, np.ones(3))
    path = tmp_path / "f.npz"
    tape.save(path)
    loaded = torch.load(path)
    for args in ((x, 2.0), (x * 3, 0.5)):
        np.testing.assert_array_equal(loaded(*args), tape(*args))
        np.testing.assert_array_equal(loaded.grad(*args), tape.grad(*args))
        np.testing.assert_array_equal(loaded.hvp(*args, np.ones(3)), tape.hvp(*args, np.ones(3)))
    assert len(loaded) == len(tape) and str(loaded.guards[0]) == str(tape.guards[0])
    flipped = np.array([0.1, -0.1, 0.1])  # y.sum() <= 1: the other branch
    with pytest.raises(BranchChanged, match="load"):
        loaded(flipped, 2.0)
    again = torch.load(path, f=f)
    np.testing.assert_allclose(again(flipped, 2.0), tape(flipped, 2.0))


def test_len_and_listing():
    def f(x):
        return torch.where(x > 0, torch.sin(x), x).sum() * 3.0

    tape = torch.compile(f, np.ones(2))
    listing = str(tape)
    assert len(tape) == 4  # sin, where, sum, mul_scalar; the comparison is an aux op
    for part in ("input x  float64[2]", "sin(%0)", "mul_scalar(", "c0=3", "gt(%0, 0)",
                 "(recomputed)", "return %"):
        assert part in listing, listing
    guarded = torch.compile(item_branch, np.ones(2))
    assert "keeps its recorded value (read by item)" in str(guarded)


def _optimizable(x, a):
    # dead code, constant folding (c), an identity (x * 1), a common subexpression of the
    # parameter (a * 2 twice), a contiguous view
    unused = torch.exp(x) * 5
    c = torch.tensor([1.0, 2.0]) * 3 + 1
    y = (x * 1.0).reshape(2, 1).reshape(2)
    del unused
    return (torch.sin(y) * (a * 2) + (a * 2) * c).sum() + torch.relu(y).sum()


def test_the_optimization_pass_changes_no_result():
    tape_on = torch.compile(_optimizable, np.ones(2), 1.5, parameters=[1])
    tape_off = torch.compile(_optimizable, np.ones(2), 1.5, parameters=[1], optimize=False)
    assert len(tape_on) < len(tape_off) - 4
    rng = np.random.default_rng(7)
    for _ in range(10):
        x, a, v = rng.standard_normal(2), float(rng.standard_normal()), rng.standard_normal(2)
        for method in ("__call__", "grad", "hessian"):
            np.testing.assert_array_equal(getattr(tape_on, method)(x, a),
                                          getattr(tape_off, method)(x, a))
        np.testing.assert_array_equal(tape_on.jvp(x, a, v)[1], tape_off.jvp(x, a, v)[1])
        np.testing.assert_array_equal(tape_on.hvp(x, a, v), tape_off.hvp(x, a, v))


def test_the_optimization_pass_changes_no_gradient_of_the_chain():
    rng = np.random.default_rng(8)
    on = torch.compile(lambda x, a: _chain(x, a, 200), 0.5, 0.9)
    off = torch.compile(lambda x, a: _chain(x, a, 200), 0.5, 0.9, optimize=False)
    for _ in range(5):
        args = (float(rng.uniform(-1, 1)), float(rng.uniform(0, 1)))
        assert on.value_and_grad(*args) == off.value_and_grad(*args)


# -- batches and Numba -----------------------------------------------------------------------------
def test_batch_replay_over_a_leading_axis():
    def f(x, a):
        return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum() * a

    tape = torch.compile(f, np.zeros(4), 1.0, parameters=[1])
    xs = np.random.default_rng(9).standard_normal((6, 4))
    values, grads = tape.value_and_grad(xs, 2.0)
    assert values.shape == (6,) and grads.shape == (6, 4)
    for row in range(6):
        value, grad = tape.value_and_grad(xs[row], 2.0)
        assert values[row] == value
        np.testing.assert_array_equal(grads[row], grad)
    np.testing.assert_array_equal(tape(xs, 2.0), values)


def test_a_batch_row_whose_guard_fails_is_recorded_again():
    tape = torch.compile(item_branch, np.array([1.0, 2.0]))
    xs = np.array([[1.0, 2.0], [-1.0, -2.0], [1.0, 2.0]])
    values, grads = tape.value_and_grad(xs)
    np.testing.assert_allclose(values, [5.0, -9.0, 5.0])
    np.testing.assert_allclose(grads[1], 3 * xs[1] ** 2)


def test_replay_from_the_users_numba_code():
    from numba import njit

    from jitgrad.kernels.replay import GuardFailed, replay_value, replay_value_and_grad

    tape = torch.compile(lambda x: (100 * (x[1] - x[0] ** 2) ** 2 + (1 - x[0]) ** 2),
                         np.zeros(2))

    @njit
    def descend(program, x, steps):
        g = np.empty_like(x)
        for _ in range(steps):
            replay_value_and_grad(program, x, g)
            x = x - 1e-3 * g
        return x, replay_value(program, x)

    x, value = descend(tape.numba_program(), np.array([-1.0, 1.0]), 20000)
    assert value < 1e-2 and np.allclose(x, 1.0, atol=0.2)
    guarded = torch.compile(item_branch, np.array([1.0, 2.0]))

    @njit
    def evaluate(program, x):
        return replay_value(program, x)

    with pytest.raises(GuardFailed):
        evaluate(guarded.numba_program(), np.array([-1.0, -2.0]))


# -- generated code and plain-Python kernels -------------------------------------------------------
def test_generated_forward_kernels_match_the_registry():
    result = subprocess.run([sys.executable, "-m", "jitgrad.kernels.generate_forward",
                             "--check"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


_PLAIN = """
import numpy as np, jitgrad as torch
def f(x, w):
    y = torch.where(x > 0, x * w[0], -x).sum() + torch.tanh(w @ x).max() + x[1:].norm()
    if y > -100:
        y = y * 2
    return y
tape = torch.compile(f, np.ones(3), np.ones((2, 3)))
x, w = np.array([0.5, -1.0, 2.0]), np.arange(6.0).reshape(2, 3) / 6
value, (gx, gw) = tape.value_and_grad(x, w)
print(repr([float(value), *gx.tolist(), *gw.ravel().tolist(), *tape.hvp(x, w, (x, w))[0]]))
"""


def test_replay_kernels_run_as_plain_python():
    """NUMBA_DISABLE_JIT=1 runs the same replay code as Python (tracebacks, coverage)."""
    jitted = subprocess.run([sys.executable, "-c", _PLAIN], capture_output=True, text=True,
                            check=True).stdout
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    plain = subprocess.run([sys.executable, "-c", _PLAIN], capture_output=True, text=True,
                           env=env)
    assert plain.returncode == 0, plain.stderr
    np.testing.assert_allclose(eval(plain.stdout), eval(jitted), rtol=1e-12)
