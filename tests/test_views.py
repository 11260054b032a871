"""Views share their base's memory, as torch's: an in-place write to a view reaches its base
(recorded as torch's CopySlices when it is recorded), a write to a base reaches its views
(recorded as torch's regenerated AsStridedBackward0 views), and torch's errors for the
writes it refuses. Checked against explicit values, finite differences and torch."""
from __future__ import annotations

import numpy as np
import pytest

import jitgrad as torch

try:
    import torch as real_torch
except ImportError:  # pragma: no cover - the oracle is optional
    real_torch = None

needs_torch = pytest.mark.skipif(real_torch is None, reason="torch (the oracle) not installed")


def test_a_write_to_a_slice_reaches_its_base_and_its_gradient():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
    b = x * 1
    v = b[1:3]
    v.mul_(3)
    assert b.tolist() == [1.0, 6.0, 9.0, 4.0]
    assert repr(b) == "tensor([1., 6., 9., 4.], grad_fn=<CopySlices>)"
    (b * torch.arange(4.0)).sum().backward()
    assert x.grad.tolist() == [0.0, 3.0, 6.0, 3.0]  # the region through the product


def test_a_write_to_a_base_reaches_its_views():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
    b = x * 1
    v = b[1:3]
    w = b.view(2, 2)
    b.mul_(2)
    assert v.tolist() == [4.0, 6.0]
    assert w.tolist() == [[2.0, 4.0], [6.0, 8.0]]
    assert type(v.grad_fn).__name__ == "AsStridedBackward0"
    (v * torch.tensor([5.0, 7.0])).sum().backward()
    assert x.grad.tolist() == [0.0, 10.0, 14.0, 0.0]  # through the doubling


def test_siblings_views_of_views_and_detached_aliases():
    x = torch.arange(6.0).reshape(2, 3).requires_grad_(True)
    b = x * 1
    row, column = b[0], b[:, 0]
    row.add_(100)
    assert column.tolist() == [100.0, 3.0]
    inner = b[1][1:]  # a view of a view
    inner.add_(10)
    assert b.tolist() == [[100.0, 101.0, 102.0], [3.0, 14.0, 15.0]]
    alias = b[1].detach()
    alias.fill_(-1.0)  # outside the graph, through the same memory
    assert b[1].tolist() == [-1.0, -1.0, -1.0]
    assert inner.tolist() == [-1.0, -1.0]


def test_views_of_tensors_outside_the_graph_share_memory():
    w = torch.zeros(2, 3, requires_grad=True)
    with torch.no_grad():
        w[:, 0].fill_(5.0)  # a strided view
        w.t()[1].mul_(2)
        w[1, 2].add_(7.0)  # a 0-d view
        w.view(6)[1:3].add_(1.0)
    assert w.tolist() == [[5.0, 1.0, 1.0], [5.0, 0.0, 7.0]]
    assert w.is_leaf and w.grad_fn is None
    (w * w).sum().backward()  # the tape sees the new values
    assert w.grad.tolist() == [[10.0, 2.0, 2.0], [10.0, 0.0, 14.0]]


def test_a_saved_value_changed_through_a_view_fails_the_backward():
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    b = x * 1
    v = b[1:]
    y = (v * v).sum()
    b.mul_(2)  # v changes with b: its saved value is stale
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()
    b = x * 1
    y = (b * b).sum()
    b[1:].zero_()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


def test_refused_writes_leave_every_tensor_as_it_was():
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="a view of a leaf Variable that requires grad"):
        x[1:].mul_(2)
    with pytest.raises(RuntimeError, match="a view of a leaf Variable that requires grad"):
        x.view(3, 1)[0].fill_(2.0)
    assert x.tolist() == [1.0, 2.0, 3.0]
    b = x * 1
    e = b[:1].expand(3)
    with pytest.raises(RuntimeError, match="more than one element of the written-to tensor"):
        e.mul_(2)
    with pytest.raises(RuntimeError, match="more than one element of the written-to tensor"):
        e.fill_(0.0)
    assert b.tolist() == [1.0, 2.0, 3.0] and e.tolist() == [1.0, 1.0, 1.0]
    (b * b).sum().backward()  # the graph is usable afterwards
    assert x.grad.tolist() == [2.0, 4.0, 6.0]


def test_contiguity_and_copies():
    b = torch.arange(6.0).reshape(2, 3)
    assert b.is_contiguous() and b[1].is_contiguous() and b[:, :1].t().is_contiguous()
    assert not b.t().is_contiguous() and not b[:, 1].is_contiguous()
    c = b.t().contiguous()  # a copy, as torch's
    c.fill_(0.0)
    r = b.t().reshape(-1)  # reshaping a transposed view copies, as torch's
    r.fill_(0.0)
    assert b.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert b[1:].contiguous().fill_(9.0).tolist() == [[9.0, 9.0, 9.0]]  # still a view
    assert b.tolist() == [[0.0, 1.0, 2.0], [9.0, 9.0, 9.0]]
    g = b[[0]]  # integer-array indexing copies, as torch's
    g.fill_(-1.0)
    assert b[0].tolist() == [0.0, 1.0, 2.0]


def test_second_order_through_a_write_to_a_view_matches_finite_differences():
    x0 = np.array([0.5, 1.5, -0.7, 0.3])

    def f(x):
        b = torch.sin(x) * 1
        b[1:].mul_(x[:3] ** 2)
        b.t()  # a view taken and dropped changes nothing
        v = b.view(2, 2)
        v[:, 1].add_(x[0])
        return (b ** 3).sum()

    def value(a):
        return f(torch.tensor(a, dtype=torch.float64)).item()

    x = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(f(x), x, create_graph=True)
    h = 1e-6
    numeric = [(value(x0 + h * e) - value(x0 - h * e)) / (2 * h) for e in np.eye(4)]
    np.testing.assert_allclose(g.detach().numpy(), numeric, rtol=1e-6, atol=1e-8)
    u = np.array([0.3, -1.0, 0.5, 2.0])
    (hu,) = torch.autograd.grad((g * torch.tensor(u)).sum(), x)

    def grad_at(a):
        t = torch.tensor(a, dtype=torch.float64, requires_grad=True)
        return torch.autograd.grad(f(t), t)[0].numpy()

    numeric_hu = (grad_at(x0 + h * u) - grad_at(x0 - h * u)) / (2 * h)
    np.testing.assert_allclose(hu.numpy(), numeric_hu, rtol=1e-5, atol=1e-7)


def _program(lib, x, case):
    """Programs writing through views; returns the tensors to compare."""
    b = x * 1.5
    if case == "slice":
        b[:, 1:3].mul_(x[:, :2])
        b[1:].add_(x[:1])
        return [b]
    if case == "base_then_view":
        v = b[:, 1:]
        b.add_(x.sin())
        return [b, v * x[:, :2]]
    if case == "transpose":
        b.t()[0].add_(x[:, 2])
        return [b]
    if case == "view_of_view":
        v1 = b.view(-1)
        v2 = v1[2:5]
        v2.mul_(x[0])
        return [b, v1, v2 * 2]
    if case == "siblings":
        row, col = b[1], b[:, 2]
        row.div_(x[0] + 3)
        col.sub_(x[1, :2])
        return [b, row, col]
    if case == "select":
        b[0, 1].mul_(x[1, 1])
        b[1].unsqueeze(0).squeeze(0)[0].add_(1)
        return [b]
    raise AssertionError(case)


CASES = ["slice", "base_then_view", "transpose", "view_of_view", "siblings", "select"]


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES)
def test_writes_through_views_match_torch(case, dtype):
    data = np.random.default_rng(CASES.index(case)).uniform(-1.0, 1.0, (2, 3))
    results = {}
    for lib in (torch, real_torch):
        d = getattr(lib, dtype)
        x = lib.tensor(data, dtype=d, requires_grad=True)
        outs = _program(lib, x, case)
        weights = [lib.tensor(np.cos(np.arange(o.numel()) + k).reshape(tuple(o.shape)), dtype=d)
                   for k, o in enumerate(outs)]
        loss = sum((o * o * w).sum() for o, w in zip(outs, weights))
        (g,) = lib.autograd.grad(loss, x, create_graph=True)
        (gg,) = lib.autograd.grad((g * g).sum(), x)
        results[lib] = ([o.detach().numpy() for o in outs], g.detach().numpy(), gg.numpy(),
                        [type(o.grad_fn).__name__ for o in outs])
    ours, theirs = results[torch], results[real_torch]
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == "float32" else dict(rtol=1e-12, atol=1e-12)
    for a, b in zip(ours[0], theirs[0]):
        np.testing.assert_allclose(a, b, **tol)
    np.testing.assert_allclose(ours[1], theirs[1], **tol)
    np.testing.assert_allclose(ours[2], theirs[2], **tol)
    assert ours[3][0] == theirs[3][0]  # the base's grad_fn


def test_many_views_of_one_base_do_not_pile_up():
    x = torch.arange(100.0, requires_grad=True)
    b = x * 1
    total = 0.0
    for i in range(1000):
        total += b[i % 100].item()
    assert len(b._storage.views) < 64
    assert total == sum(range(100)) * 10


def _compiled_matches_eager(f, recordings):
    tape = torch.compile(f, np.full(4, 0.3))
    rng = np.random.default_rng(4)
    for _ in range(3):
        a = rng.standard_normal(4)
        x = torch.tensor(a, requires_grad=True)
        f(x).backward()
        np.testing.assert_allclose(tape.grad(a), x.grad.numpy(), rtol=1e-12, atol=1e-12)
    assert tape.recordings == recordings


def test_compiled_replay_of_recorded_writes_through_views():
    def f(x):
        b = torch.sin(x) * 1
        b[1:].mul_(x[:-1])
        v = b.view(2, 2)
        b.add_(1.0)
        return (v * v).sum() + (b ** 3).sum()

    def g(x):
        buf = torch.zeros(4, dtype=torch.float64)
        buf[1:3].add_(x[:2] * 2)  # a plain tensor joins the graph through a view
        return (buf * buf).sum()

    _compiled_matches_eager(f, 1)
    _compiled_matches_eager(g, 1)


def test_compiled_replay_sees_writes_through_views_outside_the_graph():
    # each writes values computed from x into a constant outside the graph: a replay would
    # bake them in, so every call records again (never a silently wrong gradient)
    def through_view(x):
        c = torch.ones(4, dtype=torch.float64)
        with torch.no_grad():
            c[1:].mul_(x[:3].detach())
        return (x * c).sum()

    def assign_into_view(x):
        c = torch.ones(2, 2, dtype=torch.float64)
        with torch.no_grad():
            c.view(4)[1:] = x[:3].detach()
        return (x * c.view(4)).sum()

    def into_base_of_view(x):
        c = torch.ones(4, dtype=torch.float64)
        v = c[1:]
        with torch.no_grad():
            c.copy_(x.detach())
        return (x[1:] * v).sum()

    def detached_slice(x):
        c = torch.ones(4, dtype=torch.float64)
        with torch.no_grad():
            c[1:] = x[:3].detach()
        return (x * c).sum()

    for f in (through_view, assign_into_view, into_base_of_view, detached_slice):
        _compiled_matches_eager(f, 4)


def test_an_optimizer_step_reaches_live_views_of_a_parameter():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    first, both = w[0], w.view(2, 1)
    opt = torch.optim.SGD([w], lr=0.5)
    (w * w).sum().backward()
    opt.step()
    assert w.tolist() == [0.0, 0.0]
    assert first.item() == 0.0 and both.tolist() == [[0.0], [0.0]]
    opt.zero_grad()
    (first * 3 + w[1]).backward()  # the views are views of the stepped parameter
    assert w.grad.tolist() == [3.0, 1.0]


def test_writes_outside_the_graph_to_an_expanded_view_are_refused_before_writing():
    b = torch.tensor([1.0, 2.0])
    e = b[:1].expand(3)
    for write in (lambda: e.fill_(0.0), lambda: e.mul_(2.0), lambda: e.add_(e),
                  lambda: e.copy_(torch.zeros(3)), lambda: e.__setitem__(0, 5.0)):
        with pytest.raises(RuntimeError, match="more than one element of the written-to"):
            write()
    assert e.tolist() == [1.0, 1.0, 1.0] and b.tolist() == [1.0, 2.0]
    with torch.no_grad():
        w = torch.ones(2, requires_grad=True)
        with pytest.raises(RuntimeError, match="more than one element"):
            w.expand(2, 2).zero_()
    assert w.tolist() == [1.0, 1.0]
