"""``Tensor.register_hook`` on leaves and non-leaves, in the Numba and create_graph sweeps."""
from __future__ import annotations

import pytest

import jitgrad
from jitgrad.autograd import Function


def _leaf(values):
    return jitgrad.tensor(values, dtype=jitgrad.float64, requires_grad=True)


def test_non_leaf_hook_sees_the_full_gradient_and_can_replace_it():
    x = _leaf([1.0, 2.0])
    y = x * 3
    seen = []
    y.register_hook(lambda g: seen.append(g.tolist()))
    y.register_hook(lambda g: g * 10)
    (y * y).sum().backward()  # dL/dy = 2y = [6, 12], used twice in y * y
    assert seen == [[6.0, 12.0]]
    assert x.grad.tolist() == [180.0, 360.0]


def test_leaf_hook_runs_before_accumulation():
    x = _leaf([1.0, 2.0])
    seen = []
    x.register_hook(lambda g: seen.append(g.tolist()))
    x.register_hook(lambda g: g + 1)
    (x * x).sum().backward()
    assert seen == [[2.0, 4.0]]
    assert x.grad.tolist() == [3.0, 5.0]
    (g,) = jitgrad.autograd.grad((x * 2).sum(), x)
    assert g.tolist() == [3.0, 3.0]


def test_hook_removal():
    x = _leaf([1.0])
    y = x * 2
    handle = y.register_hook(lambda g: g * 100)
    handle.remove()
    y.sum().backward()
    assert x.grad.tolist() == [2.0]
    with x.register_hook(lambda g: g * 0) as _:
        pass  # removed on leaving the block
    (x * 1).sum().backward()
    assert x.grad.tolist() == [3.0]
    # no hooks left on x: nothing for the sweep to stop for
    from jitgrad.autograd.function import _hooks_of_leaf

    assert _hooks_of_leaf(x) is None


def test_hooks_in_a_chain_run_in_order_from_the_output():
    x = _leaf(2.0)
    order = []
    a = x * 2
    b = a * 3
    a.register_hook(lambda g: order.append(("a", float(g))))
    b.register_hook(lambda g: order.append(("b", float(g))))
    (b * b).backward()
    assert order == [("b", 24.0), ("a", 72.0)]
    assert x.grad.item() == 144.0


def test_hook_on_the_root():
    x = _leaf([1.0, 2.0])
    loss = (x * x).sum()
    loss.register_hook(lambda g: g * 2)
    loss.backward()
    assert x.grad.tolist() == [4.0, 8.0]


def test_hooks_with_create_graph():
    x = _leaf([1.0, 2.0])
    y = x ** 2
    y.register_hook(lambda g: g * 3)
    (g,) = jitgrad.autograd.grad(y.sum(), x, create_graph=True)
    assert g.tolist() == [6.0, 12.0]  # 3 * 2x
    (h,) = jitgrad.autograd.grad(g.sum(), x)
    assert h.tolist() == [6.0, 6.0]


def test_hook_on_the_output_of_a_custom_function():
    class Twice(Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, grad):
            return grad * 2

    x = _leaf([1.0])
    y = Twice.apply(x)
    y.register_hook(lambda g: g * 5)
    y.sum().backward()
    assert x.grad.tolist() == [10.0]


def test_bad_hooks():
    with pytest.raises(RuntimeError, match="doesn't require gradient"):
        jitgrad.ones(2).register_hook(lambda g: g)
    x = _leaf([1.0, 2.0])
    y = x * 2
    y.register_hook(lambda g: jitgrad.ones(3))
    with pytest.raises(RuntimeError, match="changed the size"):
        y.sum().backward()
    z = _leaf([1.0, 2.0])
    (z * 2).sum().backward()  # nothing left broken
    assert z.grad.tolist() == [2.0, 2.0]
