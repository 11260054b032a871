"""The eager per-op shortcuts (array arithmetic with numbers, 1-d slices, whole-tensor
sum/mean, NumPy's error state set without np.errstate) give what the general paths give:
values, dtypes, grad_fn names and gradients, checked against NumPy and torch."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import jitgrad
from jitgrad._quiet import quietly

SLICES = [slice(1, None), slice(None, -1), slice(None, None, 2), slice(1, 8, 3),
          slice(-3, None), slice(5, 2), slice(0, 100), slice(-100, 3), slice(None),
          slice(9, None), slice(3, 4)]


def _torch():
    return pytest.importorskip("torch")


# -- NumPy's error state --------------------------------------------------------------------
def test_quietly_silences_and_restores_the_error_state():
    before = np.geterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isneginf(quietly(np.log, np.zeros(3))).all()
    assert np.geterr() == before
    with pytest.raises(ZeroDivisionError):
        quietly(lambda: 1 / 0)
    assert np.geterr() == before
    with np.errstate(divide="raise"):  # the caller's own state comes back after the call
        quietly(np.log, np.zeros(2))
        with pytest.raises(FloatingPointError):
            np.log(np.zeros(2))


@pytest.mark.parametrize("requires_grad", [False, True])
def test_ops_do_not_warn_at_domain_edges(requires_grad):
    x = jitgrad.tensor([0.0, -1.0, 1e300], dtype=jitgrad.float64, requires_grad=requires_grad)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values = [jitgrad.log(x), x ** 2.0, 1.0 / x, x * 1e300, jitgrad.sqrt(x),
                  (x * 1e300).sum(), (x * 1e300).mean()]
        y = x.detach().clone()
        y.mul_(1e300)
    values = [v.detach().numpy() for v in values]
    assert np.isneginf(values[0][0]) and np.isnan(values[0][1])
    assert np.isinf(values[1][2]) and np.isinf(values[2][0])
    assert np.isinf(values[5]) and np.isinf(y.numpy()[2])


def test_recording_without_numpys_error_state_variable(monkeypatch):
    """NumPy 1.x has no error-state context variable: the recording path uses np.errstate."""
    from jitgrad import functions

    monkeypatch.setattr(functions, "ERROR_STATE", None)
    x = jitgrad.tensor([0.0, 1e300], dtype=jitgrad.float64, requires_grad=True)
    before = np.geterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        big = x * 1e300
        logs = jitgrad.log(x)
    assert np.geterr() == before
    assert np.isinf(big.detach().numpy()[1]) and np.isneginf(logs.detach().numpy()[0])
    (big + logs).sum().backward()
    assert x.grad.numpy()[1] == pytest.approx(1e300 + 1e-300)


# -- 1-d slices -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [jitgrad.float32, jitgrad.float64])
@pytest.mark.parametrize("key", SLICES, ids=str)
def test_slices_of_a_vector(dtype, key):
    data = np.arange(10.0) * 1.5 - 4.0
    x = jitgrad.tensor(data, dtype=dtype, requires_grad=True)
    y = x[key]
    np.testing.assert_array_equal(y.detach().numpy(), data.astype(dtype.numpy)[key])
    assert y.dtype is dtype and y.shape == data[key].shape
    assert type(y.shape) is jitgrad.Size
    assert y.grad_fn.name() == "SliceBackward0"
    weights = np.linspace(0.5, 2.0, y.numel())
    (y * jitgrad.tensor(weights, dtype=dtype)).sum().backward()
    expected = np.zeros(10)
    expected[key] = weights
    np.testing.assert_allclose(x.grad.numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("key", SLICES, ids=str)
def test_slices_of_a_vector_against_torch(key):
    torch = _torch()
    data = np.random.default_rng(3).standard_normal(10)
    weights = np.random.default_rng(4).standard_normal(len(data[key]))
    ours = jitgrad.tensor(data, requires_grad=True)
    theirs = torch.tensor(data, requires_grad=True)
    for lib, x in ((jitgrad, ours), (torch, theirs)):
        y = x[key]
        (y * lib.tensor(weights)).sum().backward()
    np.testing.assert_allclose(ours.grad.numpy(), theirs.grad.numpy(), rtol=1e-12)


@pytest.mark.parametrize("dtype", [jitgrad.float32, jitgrad.float64], ids=str)
@pytest.mark.parametrize("index", [0, 3, 9, -1, -10])
def test_an_element_of_a_vector_against_torch(dtype, index):
    torch = _torch()
    data = np.random.default_rng(5).standard_normal(10)
    ours = jitgrad.tensor(data, dtype=dtype, requires_grad=True)
    theirs = torch.tensor(data, dtype=getattr(torch, str(dtype).split(".")[1]),
                          requires_grad=True)
    results = []
    for x in (ours, theirs):
        y = x[index]
        assert y.shape == () and y.grad_fn.name() == "SelectBackward0"
        results.append(y.item())
        (y * y * 3.0).backward()
    assert results[0] == results[1] and ours[index].dtype is dtype
    np.testing.assert_allclose(ours.grad.numpy(), theirs.grad.numpy(), rtol=1e-6)
    (g,) = jitgrad.autograd.grad(ours[index] ** 3, ours, create_graph=True)
    (h,) = jitgrad.autograd.grad(g[index], ours)
    assert h[index].item() == pytest.approx(6 * data[index], rel=1e-6)


def test_an_element_out_of_range_or_of_a_matrix():
    x = jitgrad.tensor(np.arange(4.0), requires_grad=True)
    with pytest.raises(IndexError, match="shape \\[4\\]"):
        x[4]
    with pytest.raises(IndexError):
        x[-5]
    m = jitgrad.tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    row = m[1]
    assert row.shape == (3,) and row.tolist() == [3.0, 4.0, 5.0]


def test_slices_of_slices_and_of_recorded_values():
    x = jitgrad.tensor(np.arange(12.0), requires_grad=True)
    y = (x * 2.0)[2:][::3][1:]
    np.testing.assert_array_equal(y.detach().numpy(), (np.arange(12.0) * 2)[2:][::3][1:])
    y.sum().backward()
    expected = np.zeros(12)
    expected[[5, 8, 11]] = 2.0
    np.testing.assert_array_equal(x.grad.numpy(), expected)


def test_slice_second_order():
    x = jitgrad.tensor([1.0, 2.0, 3.0, 4.0], dtype=jitgrad.float64, requires_grad=True)
    f = (x[1:] ** 3).sum() + (x[:-1] * x[1:]).sum()
    (g,) = jitgrad.autograd.grad(f, x, create_graph=True)
    (h,) = jitgrad.autograd.grad(g[2], x)
    np.testing.assert_allclose(g.detach().numpy(), [2.0, 3 * 4 + 4, 27 + 6, 48 + 3])
    np.testing.assert_allclose(h.numpy(), [0.0, 1.0, 18.0, 1.0])


def test_slices_without_grad_and_bad_keys():
    x = jitgrad.tensor(np.arange(5.0))
    y = x[1:4]
    assert y.grad_fn is None and y.tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(TypeError):
        jitgrad.tensor(np.arange(5.0), requires_grad=True)[1.5:3]


# -- arithmetic with numbers and tensors ----------------------------------------------------
BINARY = [("add", lambda a, b: a + b), ("sub", lambda a, b: a - b),
          ("mul", lambda a, b: a * b), ("div", lambda a, b: a / b),
          ("pow", lambda a, b: a ** b)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name,fn", BINARY, ids=[b[0] for b in BINARY])
@pytest.mark.parametrize("side", ["tensor-number", "number-tensor", "int", "tensor-tensor",
                                  "tensor-constant", "constant-tensor"])
def test_array_arithmetic_against_torch(dtype, name, fn, side):
    torch = _torch()
    data = np.random.default_rng(5).uniform(0.5, 2.0, (3, 4))
    other = np.random.default_rng(6).uniform(0.5, 2.0, (3, 4))
    results = []
    for lib in (jitgrad, torch):
        d = getattr(lib, dtype)
        x = lib.tensor(data, dtype=d, requires_grad=True)
        y = lib.tensor(other, dtype=d, requires_grad=not side.endswith("constant")
                       and not side.startswith("constant"))
        if side == "tensor-number":
            out = fn(x, 1.7)
        elif side == "number-tensor":
            out = fn(1.7, x)
        elif side == "int":
            out = fn(x, 3)
        elif side == "constant-tensor":  # the derivative reads the constant's value
            out = fn(y, x)
        else:
            out = fn(x, y)
        (out * lib.tensor(other, dtype=d)).sum().backward()
        results.append((out, x.grad, y.grad, type(out.grad_fn).__name__
                        if lib is torch else out.grad_fn.name()))
    ours, theirs = results
    assert str(ours[0].dtype) == str(theirs[0].dtype)
    assert ours[3] == theirs[3]
    rtol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(ours[0].detach().numpy(), theirs[0].detach().numpy(), rtol=rtol)
    np.testing.assert_allclose(ours[1].numpy(), theirs[1].numpy(), rtol=rtol)
    if theirs[2] is None:
        assert ours[2] is None
    else:
        np.testing.assert_allclose(ours[2].numpy(), theirs[2].numpy(), rtol=rtol)


BROADCAST_SHAPES = [((3, 4), (4,)), ((3, 4), (3, 1)), ((4,), (3, 4)), ((2, 3, 4), (3, 1)),
                    ((3, 4), (1, 4)), ((3, 4), ()), ((3, 1), (1, 4))]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name,fn", BINARY, ids=[b[0] for b in BINARY])
@pytest.mark.parametrize("shapes", BROADCAST_SHAPES, ids=str)
def test_broadcast_arithmetic_against_torch(dtype, name, fn, shapes):
    """A bias added to a batch: the first call works out the broadcast and caches it, later
    ones take the cached layout straight to the tape; both give torch's values, grad_fn
    and gradients, the second derivative too."""
    from jitgrad import functions

    torch = _torch()
    rng = np.random.default_rng(8)
    left, right = (rng.uniform(0.5, 2.0, s) for s in shapes)
    out_shape = np.broadcast_shapes(*shapes)
    weights = rng.uniform(-1.0, 1.0, out_shape)
    for attempt in range(2):
        results = []
        for lib in (jitgrad, torch):
            d = getattr(lib, dtype)
            x = lib.tensor(left, dtype=d, requires_grad=True)
            y = lib.tensor(right, dtype=d, requires_grad=attempt == 0)
            out = fn(x, y)
            loss = (out * lib.tensor(weights, dtype=d)).sum()
            (gx,) = lib.autograd.grad(loss, x, create_graph=True)
            gxx = (lib.autograd.grad((gx * gx).sum(), x, allow_unused=True)[0]
                   if gx.requires_grad else None)  # add's gradient is a constant
            gy = lib.autograd.grad(loss, y)[0] if attempt == 0 else None
            results.append((out, gx, gxx, gy, type(out.grad_fn).__name__
                            if lib is torch else out.grad_fn.name()))
        if attempt == 0 and len(shapes[0]) >= 1:
            assert (shapes[0], shapes[1]) in functions._BROADCASTS  # the next call's path
        ours, theirs = results
        assert ours[4] == theirs[4] and ours[0].shape == theirs[0].shape
        rtol = 1e-5 if dtype == "float32" else 1e-12
        for a, b in zip(ours[:4], theirs[:4], strict=True):
            if b is None:
                assert a is None
            else:
                np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=rtol,
                                           atol=rtol)


def test_array_arithmetic_keeps_the_general_rules():
    x = jitgrad.tensor([1.0, 2.0], requires_grad=True)             # float32
    assert (x * 2).dtype is jitgrad.float32
    assert (x * jitgrad.tensor([1.0, 2.0], dtype=jitgrad.float64)).dtype is jitgrad.float64
    assert (x + True).dtype is jitgrad.float32                     # bool: the general path
    with pytest.raises(RuntimeError, match=r"\[2\].*\[3\]|\(2,\).*\(3,\)"):
        x + jitgrad.tensor([1.0, 2.0, 3.0])
    i = jitgrad.tensor([1, 2])
    assert (i * 2).dtype is jitgrad.int64 and (2.5 * i).dtype is jitgrad.float32


# -- whole-tensor sum and mean --------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ["sum", "mean"])
def test_full_reductions_against_torch(dtype, name):
    torch = _torch()
    data = np.random.default_rng(7).standard_normal((5, 7))
    results = []
    for lib in (jitgrad, torch):
        x = lib.tensor(data, dtype=getattr(lib, dtype), requires_grad=True)
        out = getattr(x, name)()
        (out * 3.0).backward()
        results.append((out, x.grad, type(out.grad_fn).__name__ if lib is torch
                        else out.grad_fn.name()))
    ours, theirs = results
    assert ours[0].shape == () and str(ours[0].dtype) == str(theirs[0].dtype)
    assert ours[2] == theirs[2]
    rtol = 1e-6 if dtype == "float32" else 1e-14
    assert ours[0].item() == pytest.approx(theirs[0].item(), rel=rtol)
    np.testing.assert_allclose(ours[1].numpy(), theirs[1].numpy(), rtol=rtol)


def test_full_reductions_of_empty_and_second_order():
    empty = jitgrad.tensor(np.zeros(0), requires_grad=True)
    assert empty.sum().item() == 0.0 and np.isnan(empty.mean().item())
    x = jitgrad.tensor([1.0, 2.0, 3.0], dtype=jitgrad.float64, requires_grad=True)
    (g,) = jitgrad.autograd.grad((x ** 3).mean(), x, create_graph=True)
    (h,) = jitgrad.autograd.grad(g.sum(), x)
    np.testing.assert_allclose(h.numpy(), 6 * x.detach().numpy() / 3)


# -- registering leaves and constants (every training step copies them into the arena) ------
@pytest.mark.parametrize("shape", [(), (1,), (1, 1)])
@pytest.mark.parametrize("dtype", [jitgrad.float32, jitgrad.float64])
def test_one_element_leaves_keep_their_exact_value(shape, dtype):
    """A one-element leaf whose value lives in an array (after an in-place update, as an
    optimizer's) is copied exactly, whatever its dtype, and constants of other dtypes are
    converted as NumPy converts them."""
    value = np.full(shape, 0.1 + 2.0 ** -40)  # not a float32: rounds when stored as one
    w = jitgrad.tensor(value, dtype=dtype, requires_grad=True)
    with jitgrad.no_grad():
        w.mul_(3.0)  # the value now lives in the tensor's own array
    expected = w.detach().numpy().reshape(-1)[0]
    assert expected.dtype == dtype.numpy
    for constant in (jitgrad.tensor(np.full(shape, 2 ** 40 + 1)),
                     jitgrad.tensor(np.full(shape, True)), jitgrad.tensor(np.full(shape, 1.5))):
        w.grad = None
        y = (w * constant).sum()  # the product has w's dtype (torch's promotion)
        y.backward()
        c = constant.numpy().reshape(-1)[0].astype(dtype.numpy)  # one rounding
        assert w.grad.numpy().reshape(-1)[0] == c
        assert y.item() == (expected * c).item()


# -- the product of two recorded matrices ---------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("call", ["operator", "matmul", "mm", "transposed"])
def test_matrix_products_record_what_the_general_path_records(dtype, call):
    """``a @ b`` of two matrices goes straight to mm's entry: the same bits as the general
    product (values, gradients, second derivatives), torch's grad_fn name and values."""
    from jitgrad import functions

    torch = _torch()
    rng = np.random.default_rng(9)
    left, right = rng.standard_normal((5, 4)), rng.standard_normal((4, 3))
    weights = rng.standard_normal((5, 3))

    def product(lib, a, b):
        if call == "operator":
            return a @ b
        if call == "transposed":  # a view that is not C-contiguous
            return (b.T @ a.T).T
        return getattr(lib, call)(a, b)

    results = []
    for lib, general in ((jitgrad, False), (jitgrad, True), (torch, False)):
        d = getattr(lib, dtype)
        a = lib.tensor(left, dtype=d, requires_grad=True)
        b = lib.tensor(right, dtype=d, requires_grad=True)
        h = a * 1.0
        if general:
            out = functions._matmul_record("mm", h, b, (), 5, 4, 3, (5, 3))
        else:
            out = product(lib, h, b)
        loss = (out * out * lib.tensor(weights, dtype=d)).sum()
        ga, gb = lib.autograd.grad(loss, (a, b), create_graph=True)
        (gga,) = lib.autograd.grad((ga * gb.sum()).sum(), a)
        name = type(out.grad_fn).__name__ if lib is torch else out.grad_fn.name()
        results.append(([out, ga, gb, gga], name))
    (fast, fast_name), (slow, slow_name), (theirs, their_name) = results
    if call != "transposed":
        assert fast_name == slow_name == their_name == "MmBackward0"
    for a, b, c in zip(fast, slow, theirs, strict=True):
        np.testing.assert_array_equal(a.detach().numpy(), b.detach().numpy())
        np.testing.assert_allclose(a.detach().numpy(), c.detach().numpy(),
                                   rtol=1e-5 if dtype == "float32" else 1e-12, atol=1e-5)


def test_matrix_products_the_fast_path_leaves_alone():
    x = jitgrad.tensor(np.ones((2, 3)), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"2x3 and 2x3"):
        x @ jitgrad.ones(2, 3)
    mixed = x @ jitgrad.ones(3, 2, dtype=jitgrad.float64)  # promoted: the general path
    assert mixed.dtype is jitgrad.float64 and mixed.grad_fn.name() == "MmBackward0"
    with jitgrad.no_grad():
        assert (x @ jitgrad.ones(3, 2)).grad_fn is None
    assert (jitgrad.ones(2, 3) @ jitgrad.ones(3, 2)).grad_fn is None


# -- a parameter written in place on a tape that keeps growing -------------------------------
def test_a_training_loop_rewrites_its_parameters_nodes_against_torch():
    """A small training loop's tape keeps growing (no restart): after each optimizer step
    the parameters' nodes take their new values instead of new nodes being made, and the
    trajectory is torch's (the tutorial's part to the last bit)."""
    from jitgrad.tape import _state

    torch = _torch()
    results = []
    for lib in (jitgrad, torch):
        x, y = lib.tensor(3.0), lib.tensor(18.0)
        w = lib.tensor(4.0, requires_grad=True)
        b = lib.tensor(5.0, requires_grad=True)
        v = lib.tensor([0.5, -1.0, 2.0], requires_grad=True)
        opt = lib.optim.SGD([w, b, v], lr=0.01)
        trace = []
        for step in range(40):
            opt.zero_grad()
            loss = (w * x + b - y) ** 2 + (v * v * w).sum()
            loss.backward()
            opt.step()
            if lib is jitgrad and step == 20:
                nodes = _state.tape.n_nodes
            if lib is jitgrad and step == 21:
                grown = _state.tape.n_nodes - nodes
            trace.append((loss.item(), w.item(), b.item(), *v.tolist()))
        results.append(trace)
        if lib is jitgrad:
            assert grown <= 9  # the ops' outputs only: no new node for w, b, v or x
    ours, theirs = np.array(results[0]), np.array(results[1])
    np.testing.assert_array_equal(ours[:, 1:3], theirs[:, 1:3])  # w and b
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)


@pytest.mark.parametrize("saved", [True, False])
def test_a_leaf_written_after_recording_fails_the_old_graph_as_torch(saved):
    """The old graph's entries that read the leaf's value fail their backward after an
    in-place write (its node now holds the new value); entries that do not read it still
    give their gradient, and a new graph uses the new value."""
    torch = _torch()
    outcomes = []
    for lib in (jitgrad, torch):
        w = lib.tensor([1.0, 2.0], requires_grad=True)
        first = (w * w).sum() if saved else (w + 1.0).sum()
        first.backward(retain_graph=True)
        with lib.no_grad():
            w.mul_(3.0)
        second = (w * w * w).sum()
        second.backward()
        try:
            first.backward()
            outcome = w.grad.tolist()
        except RuntimeError as error:
            assert "modified by an inplace operation" in str(error)
            outcome = "error"
        outcomes.append((outcome, second.item()))
    assert outcomes[0] == outcomes[1]


def test_a_constant_written_in_place_and_a_leaf_whose_flag_changed():
    x = jitgrad.tensor([1.0, 2.0])
    w = jitgrad.tensor([3.0, 4.0], requires_grad=True)
    (w * x).sum().backward()
    x.add_(1.0)  # a constant: its node takes the new value
    w.grad = None
    (w * x).sum().backward()
    assert w.grad.tolist() == [2.0, 3.0]
    x.requires_grad_()  # registered again, now as a leaf that accumulates a gradient
    with jitgrad.no_grad():
        x.add_(1.0)
    (w * x).sum().backward()
    assert x.grad.tolist() == [3.0, 4.0] and w.grad.tolist() == [5.0, 7.0]
