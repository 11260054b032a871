"""The tutorial's autograd API: requires_grad, backward, .grad, no_grad, grad_fn,
retain_graph, create_graph, autograd.grad, and a training loop."""
from __future__ import annotations

import re
import threading

import numpy as np
import pytest

import jitgrad as torch


def _repr(obj) -> str:
    return re.sub(r" at 0x[0-9a-fA-F]+", " at 0x", repr(obj))


def test_requires_grad_and_leaf_flags():
    x = torch.ones(2, 2, requires_grad=True)
    assert repr(x) == "tensor([[1., 1.],\n        [1., 1.]], requires_grad=True)"
    assert x.is_leaf and x.grad_fn is None
    y = x * 2
    assert y.requires_grad and not y.is_leaf
    assert type(y.grad_fn).__name__ == "MulBackward0"
    a = torch.randn(2, 2)
    assert a.requires_grad_() is a and a.requires_grad


def test_scalar_backward_tutorial_values():
    x = torch.ones(2, 2, requires_grad=True)
    out = ((x + 2) * (x + 2) * 3).mean()
    assert repr(out) == "tensor(27., grad_fn=<MeanBackward0>)"
    out.backward()
    assert repr(x.grad) == "tensor([[4.5000, 4.5000],\n        [4.5000, 4.5000]])"


def test_backward_with_gradient_argument():
    x = torch.randn(3, requires_grad=True)
    (x * 2).backward(torch.tensor([0.1, 1.0, 0.001]))
    assert repr(x.grad) == "tensor([0.2000, 2.0000, 0.0020])"


def test_grad_accumulates_and_zeroes():
    x = torch.ones(2, requires_grad=True)
    for _ in range(3):
        (x * x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [6.0, 6.0])
    x.grad.zero_()
    np.testing.assert_allclose(x.grad.numpy(), [0.0, 0.0])
    (x * 3).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [3.0, 3.0])


def test_non_leaf_grad_is_none_unless_retained():
    x = torch.ones(3, requires_grad=True)
    y = x * 2
    z = y * y
    y.retain_grad()
    z.sum().backward()
    np.testing.assert_allclose(y.grad.numpy(), [4.0, 4.0, 4.0])
    w = x * 3
    (w * 2).sum().backward()
    assert w.grad is None


def test_no_grad_context_and_decorators():
    x = torch.ones(1, requires_grad=True)
    with torch.no_grad():
        assert not (x * 2).requires_grad
        with torch.enable_grad():
            assert (x * 2).requires_grad
    assert (x * 2).requires_grad

    @torch.no_grad()
    def f(t):
        return t * 2

    @torch.no_grad
    def g(t):
        return t * 2

    assert not f(x).requires_grad and not g(x).requires_grad
    with torch.set_grad_enabled(False):
        assert not (x * 2).requires_grad
    assert torch.is_grad_enabled()


def test_grad_mode_is_thread_local():
    seen = []

    def worker():
        seen.append(torch.is_grad_enabled())

    with torch.no_grad():
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
    assert seen == [True]


def test_detach_shares_data_and_leaves_graph():
    x = torch.ones(2, requires_grad=True)
    y = x * 2
    z = y.detach()
    assert not z.requires_grad and z.grad_fn is None
    z.zero_()
    np.testing.assert_allclose(y.detach().numpy(), [0.0, 0.0])


def test_grad_fn_next_functions_and_accumulate_grad():
    x = torch.tensor([2.0, 3.0])
    w = torch.tensor([0.5, 0.1], requires_grad=True)
    b = torch.tensor(0.1, requires_grad=True)
    y = torch.dot(w, x) + b
    assert _repr(y.grad_fn) == "<AddBackward0 object at 0x>"
    names = [type(f).__name__ if f is not None else None for f, _ in y.grad_fn.next_functions]
    assert names == ["DotBackward0", "AccumulateGrad"]
    dot = y.grad_fn.next_functions[0][0]
    assert dot.next_functions[0][0].variable is w
    assert dot.next_functions[1][0] is None
    assert y.grad_fn.next_functions[1][0].variable is b
    assert (x + 2 * w).grad_fn.next_functions[1][0].next_functions[0][0].variable is w


def test_retain_graph_allows_second_backward():
    x = torch.tensor([2.0], requires_grad=True)
    y = x * x
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), [8.0])


def test_autograd_grad_higher_orders():
    x = torch.tensor([2.0], requires_grad=True)
    (g1,) = torch.autograd.grad(x ** 4, x, create_graph=True)
    assert repr(g1) == "tensor([32.], grad_fn=<MulBackward0>)"
    (g2,) = torch.autograd.grad(g1, x, create_graph=True)
    (g3,) = torch.autograd.grad(g2, x, create_graph=True)
    (g4,) = torch.autograd.grad(g3, x)
    assert [g1.item(), g2.item(), g3.item(), g4.item()] == [32.0, 48.0, 48.0, 24.0]
    assert x.grad is None


def test_backward_create_graph_then_grad_of_grad():
    x = torch.tensor(3.0, requires_grad=True)
    y = torch.sin(x) * x
    y.backward(create_graph=True)
    g = x.grad
    assert g.requires_grad
    (h,) = torch.autograd.grad(g, x)
    expected = 2 * np.cos(3.0) - 3.0 * np.sin(3.0)
    assert h.item() == pytest.approx(expected, rel=1e-6)


def test_backward_inputs_limits_accumulation():
    a = torch.tensor(1.0, requires_grad=True)
    b = torch.tensor(2.0, requires_grad=True)
    (a * b).backward(inputs=[a])
    assert a.grad.item() == 2.0 and b.grad is None


def test_autograd_grad_several_outputs_and_grad_outputs():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y1, y2 = x * 2, x * x
    (g,) = torch.autograd.grad([y1, y2], [x], grad_outputs=[torch.ones(2), torch.ones(2)])
    np.testing.assert_allclose(g.numpy(), [4.0, 6.0])


def test_autograd_grad_allow_unused():
    x = torch.tensor(1.0, requires_grad=True)
    z = torch.tensor(1.0, requires_grad=True)
    gx, gz = torch.autograd.grad(x * 3, [x, z], allow_unused=True)
    assert gx.item() == 3.0 and gz is None


def test_training_loop_with_sgd_and_zero_grad():
    x = torch.tensor(3.0)
    w = torch.tensor(4.0, requires_grad=True)
    b = torch.tensor(5.0, requires_grad=True)
    y_true = torch.tensor(18.0)
    opt = torch.optim.SGD([w, b], lr=0.01)
    for _ in range(300):
        opt.zero_grad()
        loss = (w * x + b - y_true) ** 2
        loss.backward()
        opt.step()
    assert loss.item() < 1e-8
    assert w.is_leaf and w.requires_grad


def test_tutorial_linear_regression_prints():
    x = torch.tensor(3.0)
    w = torch.tensor(4.0, requires_grad=True)
    b = torch.tensor(5.0, requires_grad=True)
    y_pred = w * x + b
    assert f"{y_pred}" == "17.0"
    loss = (y_pred - torch.tensor(18.0)) ** 2
    assert repr(loss) == "tensor(1., grad_fn=<PowBackward0>)"
    loss.backward()
    assert repr(w.grad) == "tensor(-6.)" and f"{b.grad}" == "-2.0"


def test_mixed_dtype_graph():
    a = torch.tensor([1.0, 2.0], dtype=torch.float32, requires_grad=True)
    b = torch.tensor([3.0, 4.0], dtype=torch.float64, requires_grad=True)
    y = (a * b).sum()
    assert y.dtype is torch.float64
    y.backward()
    assert a.grad.dtype is torch.float32 and b.grad.dtype is torch.float64
    np.testing.assert_allclose(a.grad.numpy(), [3.0, 4.0])
    np.testing.assert_allclose(b.grad.numpy(), [1.0, 2.0])


def test_in_place_on_non_leaf_is_recorded():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2
    y.add_(1)
    assert type(y.grad_fn).__name__ == "AddBackward0"
    y.mul_(3)
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [6.0, 6.0])
    np.testing.assert_allclose(y.detach().numpy(), [9.0, 15.0])


@pytest.mark.parametrize("shape", [(), (3,)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_in_place_ops_that_read_the_value_they_overwrite(shape, dtype):
    # u.mul_(m) reads u for m's gradient, u.div_(x) and u.pow_(2) for their own: the
    # overwritten value is kept for the op's backward (torch saves the original self)
    d = getattr(torch, dtype)
    x = torch.full(shape, 2.0, dtype=d, requires_grad=True)
    mask = torch.full(shape, 3.0, dtype=d)
    u = x * 2.0
    u.mul_(mask)  # a constant mask: dropout's pattern
    assert type(u.grad_fn).__name__ == "MulBackward0"
    v = x * 1.5
    v.mul_(x)  # x requires grad: its gradient reads v's value before the write
    w = x + 1.0
    w.div_(x)
    p = x - 1.0
    p.pow_(3)
    (u + v * v + w + p).sum().backward()
    # d/dx [6x + (1.5 x^2)^2 + (x + 1) / x + (x - 1)^3] = 6 + 9 x^3 - 1 / x^2 + 3 (x - 1)^2
    expected = 6.0 + 9.0 * 8.0 - 0.25 + 3.0
    np.testing.assert_array_equal(x.grad.numpy(), np.full(shape, expected, d.numpy))
    np.testing.assert_array_equal(u.detach().numpy(), np.full(shape, 12.0))
    np.testing.assert_array_equal(v.detach().numpy(), np.full(shape, 6.0))
    # create_graph reads the kept values too: d2/dx2 = 27 x^2 + 2 / x^3 + 6 (x - 1)
    x = torch.full(shape, 2.0, dtype=d, requires_grad=True)
    v = x * 1.5
    v.mul_(x)
    w = x + 1.0
    w.div_(x)
    p = x - 1.0
    p.pow_(3)
    (g,) = torch.autograd.grad((v * v + w + p).sum(), x, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), x)
    np.testing.assert_allclose(h.numpy(), np.full(shape, 27.0 * 4 + 0.25 + 6.0), rtol=1e-6)


def test_a_value_saved_before_an_in_place_op_still_fails_its_backward():
    # the kept value serves the in-place op's own entry only; an older consumer sees the
    # version change, as torch's
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    u = x * 2.0
    z = u * u
    u.mul_(torch.tensor([3.0, 3.0]))
    u.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [6.0, 6.0])
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        z.sum().backward()


def test_in_place_ops_match_torch():
    torch_ = pytest.importorskip("torch")
    results = []
    for lib in (torch_, torch):
        x = lib.tensor([0.5, -1.0, 2.0], dtype=lib.float64, requires_grad=True)
        m = lib.tensor([1.0, 0.0, 2.0], dtype=lib.float64)
        h = lib.tanh(x) * 3.0
        h.mul_(m)
        h.add_(x * x)
        k = x * 2.0 + 1.0
        k.div_(x * x + 1.0)
        k.sub_(h)
        (h * k).sum().backward()
        results.append((h.detach().numpy(), k.detach().numpy(), x.grad.numpy()))
    for ours, theirs in zip(results[1], results[0]):
        np.testing.assert_allclose(ours, theirs, rtol=1e-13)


def test_views_of_recorded_tensors_see_writes_to_their_base():
    # as torch's (tests/test_views.py has the rest)
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    u = x * 2.0
    v = u[0:2]
    u.mul_(3.0)
    assert v.tolist() == [6.0, 12.0] and u.tolist() == [6.0, 12.0, 18.0]
    plain = torch.tensor([1.0, 2.0, 3.0]) * 2.0
    alias = plain[0:2]
    plain.mul_(3.0)
    assert alias.tolist() == [6.0, 12.0]  # not recorded: a NumPy view, as torch's


def test_view_grad_fn_names_and_identities_as_torch():
    m = torch.ones(2, 3, requires_grad=True)
    x = torch.ones(4, requires_grad=True)
    assert type(m.T.grad_fn).__name__ == "PermuteBackward0"  # torch's T is a permute
    assert type(m.t().grad_fn).__name__ == "TBackward0"
    assert x.flatten() is x and m.flatten(1, 1) is m and m.flatten(-1) is m
    assert type(m.flatten().grad_fn).__name__ == "ViewBackward0"
    assert torch.ones((), requires_grad=True).flatten().shape == (1,)


def test_softmax_and_losses_compose():
    torch.manual_seed(0)
    logits = torch.randn(4, 3, requires_grad=True)
    target = torch.tensor([0, 2, 1, 2])
    loss = -torch.log_softmax(logits, dim=1)[torch.arange(4), target].mean()
    loss.backward()
    p = torch.softmax(logits, 1).detach().numpy()
    onehot = np.eye(3)[[0, 2, 1, 2]]
    np.testing.assert_allclose(logits.grad.numpy(), (p - onehot) / 4, rtol=1e-5, atol=1e-6)


def test_max_along_dim_returns_values_and_indices():
    x = torch.tensor([[1.0, 5.0, 2.0], [7.0, 0.0, 3.0]], requires_grad=True)
    values, indices = x.max(dim=1)
    assert indices.tolist() == [1, 0]
    values.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [[0, 1, 0], [1, 0, 0]])


def test_no_python_per_entry_in_backward(monkeypatch):
    """A backward is one kernel call: the create_graph (Python) rules never run."""
    from jitgrad.autograd import rules

    def fail(*args, **kwargs):
        raise AssertionError("the Python sweep ran")

    monkeypatch.setattr(rules, "differentiable_sweep", fail)
    x = torch.tensor(0.5, requires_grad=True)
    y = x
    for _ in range(100):
        y = torch.sin(y) * 0.9 + y * 0.1
    y.backward()
    assert x.grad is not None


def test_set_grad_enabled_as_function_and_decorator():
    x = torch.ones(1, requires_grad=True)
    torch.set_grad_enabled(False)
    assert not (x * 2).requires_grad
    torch.set_grad_enabled(True)

    @torch.set_grad_enabled(False)
    def f(t):
        return t * 2

    assert torch.is_grad_enabled()
    assert not f(x).requires_grad and (x * 2).requires_grad


@pytest.mark.parametrize("key", [
    0, -1, (1, 2), (Ellipsis, 1), (slice(None), None, 1), (slice(None, None, -1), slice(1, 3)),
    (slice(1, None), 0), ([0, 2, 2],), (np.array([True, False, True]),), ([0, 1], [3, 2]),
    (slice(None), [1, 1, 3]),
], ids=str)
def test_indexing_gradient_matches_numpy(key):
    values = np.arange(12.0).reshape(3, 4)
    x = torch.tensor(values, requires_grad=True)
    weights = np.random.default_rng(0).uniform(size=np.shape(values[key]))
    out = x[key]
    np.testing.assert_array_equal(out.detach().numpy(), values[key])
    (out * torch.tensor(weights)).sum().backward()
    expected = np.zeros_like(values)
    grid = np.arange(values.size).reshape(values.shape)[key]
    np.add.at(expected.reshape(-1), np.ravel(grid), np.ravel(weights))
    np.testing.assert_allclose(x.grad.numpy(), expected)
