"""Large leaves and constants are registered without copying their values into the arena:
the copy is made when something reads the value (a sweep step that saves it, any reader
of the arenas), so a leaf that only slices, sums or additions read is never copied. Every
reader must still see the right value."""
from __future__ import annotations

import numpy as np
import pytest

import jitgrad as torch
from jitgrad.kernels.layout import N_OFFSET
from jitgrad.tape import _DEFER_SIZE, Tape, _state

N = _DEFER_SIZE + 3


@pytest.fixture
def tape(monkeypatch):
    tape = Tape()
    monkeypatch.setattr(_state, "tape", tape)
    return tape


def _leaf(seed: int = 0, dtype=torch.float64):
    values = np.random.default_rng(seed).uniform(-2.0, 2.0, N)
    return torch.tensor(values, dtype=dtype, requires_grad=True), values


def _rosenbrock_grad(v: np.ndarray) -> np.ndarray:
    g = np.zeros_like(v)
    inner = v[1:] - v[:-1] ** 2
    g[1:] += 200 * inner
    g[:-1] += -400 * inner * v[:-1] - 2 * (1 - v[:-1])
    return g


def test_a_leaf_only_sliced_is_never_copied_and_its_gradient_is_right(tape):
    x, v = _leaf()
    f = (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()
    assert [item[0] for item in tape.deferred] == [x._node]
    f.backward()
    assert [item[0] for item in tape.deferred] == [x._node]  # no step read x's value
    np.testing.assert_allclose(x.grad.numpy(), _rosenbrock_grad(v), rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_leaf_whose_value_a_step_reads_is_copied_for_the_sweep(tape, dtype):
    x, v = _leaf(1, dtype)
    y = x[1:] + torch.sin(x)[:-1] * x[:-1]  # sin and mul read x's value
    y.sum().backward()
    assert tape.deferred is None
    v = v.astype(dtype.numpy)
    expected = np.zeros_like(v)
    expected[1:] += 1
    expected[:-1] += np.cos(v[:-1]) * v[:-1] + np.sin(v[:-1])
    single = dtype is torch.float32
    np.testing.assert_allclose(x.grad.numpy(), expected, rtol=1e-5 if single else 1e-12,
                               atol=1e-6 if single else 0.0)


def test_a_constant_is_deferred_too(tape):
    x, v = _leaf(2)
    c = torch.tensor(np.linspace(-1.0, 1.0, N))  # a constant: mul reads it
    (x * c).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), c.numpy())


def test_a_leaf_written_after_it_was_registered(tape):
    x, v = _leaf(3)
    s = x[2:].sum()  # registers x, deferred
    with torch.no_grad():
        x.mul_(2.0)  # a new value in x's own memory
    f = (x * x).sum()  # the node takes the new value
    f.backward()
    np.testing.assert_allclose(x.grad.numpy(), 4 * v, rtol=1e-12)
    s.backward()
    assert x.grad.numpy()[2] == pytest.approx(4 * v[2] + 1.0)


def test_a_leaf_given_new_data_after_it_was_registered(tape):
    x, v = _leaf(4)
    with torch.no_grad():
        x.add_(0.0)  # x has a version counter when it is registered: its node is rewritten
    s = x[1:].sum()  # registers x, deferred: the old array
    x.data = torch.tensor(v * 3.0)  # a new array: the old one must not be copied over it
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 6 * v, rtol=1e-12)
    del s


def test_a_value_saved_before_an_in_place_write_still_fails_the_backward(tape):
    x, _ = _leaf(5)
    y = x * 1.0
    f = (y * y).sum()  # mul saves y (a recorded output, not deferred)
    g = (x * x).sum()  # saves x: deferred
    with torch.no_grad():
        x.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        g.backward()
    f.backward()  # its graph does not read x's value
    assert x.grad is not None


def test_second_order_reads_the_deferred_value(tape):
    x, v = _leaf(6)
    (g,) = torch.autograd.grad((x ** 3).sum(), x, create_graph=True)
    np.testing.assert_allclose(g.detach().numpy(), 3 * v ** 2, rtol=1e-12)
    g.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 6 * v, rtol=1e-12)


def test_forward_mode_reads_the_deferred_value(tape):
    x, v = _leaf(7)
    t = np.random.default_rng(8).standard_normal(N)
    out, tangent = torch.func.jvp(lambda a: (torch.sin(a) * a[0]).sum(), (x.detach(),),
                                  (torch.tensor(t),))
    expected = (np.cos(v) * v[0] * t).sum() + np.sin(v).sum() * t[0]
    assert tangent.item() == pytest.approx(expected, rel=1e-10)
    assert out.item() == pytest.approx((np.sin(v) * v[0]).sum(), rel=1e-12)


def test_a_compaction_keeps_a_deferred_value(tape, monkeypatch):
    monkeypatch.setattr("jitgrad.tape._RESTART_ENTRIES", 16)
    x, v = _leaf(9)
    kept = (x * x).sum()  # alive, never differentiated until the end: pins the tape
    a = torch.tensor(0.5, requires_grad=True)
    generation = tape.generation
    for _ in range(3):
        out = a
        for _ in range(40):
            out = torch.sin(out) * 0.5 + out
        del out  # dropped: compacted away, kept's rows (and x's value) stay
    assert tape.generation > generation and tape.carried
    kept.backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * v, rtol=1e-12)


def test_a_small_leaf_is_copied_at_once(tape):
    x = torch.ones(8, requires_grad=True)
    (x * x).sum()
    assert tape.deferred is None


@pytest.mark.parametrize("reader", ["arenas", "node_view", "tables"])
def test_every_reader_of_the_arenas_sees_the_value(tape, reader):
    x, v = _leaf(10)
    s = x[1:].sum()  # registers x: deferred
    assert tape.deferred
    offset = tape.node_field(x._node, N_OFFSET)
    if reader == "arenas":
        value = tape.arenas[1][offset:offset + N]
    elif reader == "node_view":
        value = tape.node_view(x._node)
    else:
        tape.tables()
        value = tape._arenas[1][offset:offset + N]
    np.testing.assert_array_equal(value, v)
    assert tape.deferred is None
    del s
