"""A tape with a live graph that is never differentiated stays small: its dead rows are
dropped by a compaction (``Tape.compact``), and every live tensor keeps its graph, its
values, its version checks, its grad_fn and its hooks."""
from __future__ import annotations

import sys

import numpy as np
import pytest

import jitgrad as torch
from jitgrad.tape import Tape, _state, current_tape

CHECK = 256  # entries between liveness checks on the tests' tapes


@pytest.fixture(autouse=True)
def small_tape(monkeypatch):
    """A fresh tape that checks liveness every CHECK entries (a default tape: 16384)."""
    monkeypatch.setattr("jitgrad.tape._CHECK_EVERY", CHECK)
    tape = Tape()
    tape.next_check = CHECK
    monkeypatch.setattr(_state, "tape", tape)
    return tape


def _chain(x, a, n: int = 50):
    for _ in range(n):
        x = torch.sin(x) * a + x * 0.5
    return x


def test_a_never_differentiated_loss_does_not_grow_the_tape(small_tape):
    # a validation loss computed in grad mode beside the training step: always one alive
    torch.manual_seed(0)
    w = torch.randn(10, 1, requires_grad=True)
    x, y, xv = torch.randn(64, 10), torch.randn(64, 1), torch.randn(64, 10)
    w_ref = w.detach().clone().requires_grad_(True)
    opt, opt_ref = torch.optim.SGD([w], lr=0.01), torch.optim.SGD([w_ref], lr=0.01)
    sizes = []
    for _ in range(400):
        for weight, o, validate in ((w, opt, True), (w_ref, opt_ref, False)):
            o.zero_grad()
            ((x @ weight - y) ** 2).mean().backward()
            o.step()
            if validate:
                val = ((xv @ weight - y) ** 2).mean()
            else:
                with torch.no_grad():
                    val_ref = ((xv @ weight - y) ** 2).mean()
        sizes.append(small_tape.n_entries)
    assert small_tape.generation > 5
    assert max(sizes[100:]) <= 4 * CHECK
    assert np.array_equal(w.detach().numpy(), w_ref.detach().numpy())
    assert val.item() == val_ref.item()
    val.backward()  # the live loss still has its graph
    assert w.grad is not None and w.grad.shape == (10, 1)


def test_a_forward_only_loop_stays_small_and_a_kept_result_still_differentiates(small_tape):
    x0 = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    a = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    first = _chain(x0, a)
    first_value = first.item()
    for _ in range(40):
        out = _chain(x0, a)
    assert small_tape.generation > 3
    assert small_tape.n_entries < 8 * CHECK
    assert first.item() == first_value == out.item()
    assert type(first.grad_fn).__name__ == "AddBackward0"
    assert len(first.grad_fn.next_functions) == 2
    grads = torch.autograd.grad(first, (x0, a), create_graph=True)
    expected = torch.autograd.grad(_chain(x0, a), (x0, a), create_graph=True)
    for g, e in zip(grads, expected):
        assert g.item() == e.item()
    # the carried graph differentiates twice too
    (gg,) = torch.autograd.grad(grads[0], x0, retain_graph=True)
    (ee,) = torch.autograd.grad(expected[0], x0, retain_graph=True)
    assert gg.item() == ee.item()
    first.backward()
    assert x0.grad.item() == grads[0].item()
    # tensors that die without being used again give back their live count: nothing pins
    # the tape once they are gone
    del first, out, grads, expected, gg, ee, g, e
    assert small_tape._count_pending_alive() == 0


def test_carried_arrays_keep_values_grads_and_retained_grads(small_tape):
    x = torch.linspace(-1.0, 1.0, 7, requires_grad=True)
    h = torch.tanh(x) * 3.0
    h.retain_grad()
    kept = (h * h).sum()
    probabilities = torch.log_softmax(h.reshape(1, -1), 1)  # a named composite
    generation = small_tape.generation
    for _ in range(60):
        _ = _chain(x.sum(), 0.5, 5)  # garbage on top
    assert small_tape.generation > generation
    assert type(probabilities.grad_fn).__name__ == "LogSoftmaxBackward0"
    assert type((x * 2.0).grad_fn).__name__ == "MulBackward0"
    assert list(small_tape.names.values()) == ["LogSoftmaxBackward0"]
    np.testing.assert_array_equal(h.detach().numpy(), np.tanh(x.detach().numpy()) * 3.0)
    kept.backward()
    t = x.detach().numpy()
    np.testing.assert_allclose(h.grad.numpy(), 2 * 3.0 * np.tanh(t), rtol=1e-6)
    np.testing.assert_allclose(x.grad.numpy(), 18 * np.tanh(t) * (1 - np.tanh(t) ** 2),
                               rtol=1e-5)


def _garbage(x, rounds: int = 60):
    for _ in range(rounds):
        _ = _chain(x, 0.5, 5)


def test_an_in_place_write_to_a_carried_tensor_still_fails_its_backward(small_tape):
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2.0
    z = (y * y).sum()  # saves y
    generation = small_tape.generation
    _garbage(x.sum())
    assert small_tape.generation > generation
    with torch.no_grad():
        y.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        z.backward()


def test_an_in_place_write_through_a_detached_alias_still_fails_the_backward(small_tape):
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y = x.exp()  # saves its output
    alias = y.detach()
    z = y.sum() * 1.0
    generation = small_tape.generation
    _garbage(x.sum())
    assert small_tape.generation > generation
    alias.add_(1.0)  # the alias was never used since: its storage moves on the write
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        z.backward()


def test_a_recorded_in_place_op_on_a_carried_tensor(small_tape):
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    u = x * 1.0
    _garbage(x.sum())
    generation = small_tape.generation
    _garbage(x.sum())
    assert small_tape.generation > generation
    u.mul_(x)  # reads the value it overwrites
    u.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), 2 * x.detach().numpy())


def test_hooks_on_carried_tensors_still_run(small_tape):
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    seen = []
    x.register_hook(lambda g: seen.append(g.clone()))
    kept = (x * x).sum()
    generation = small_tape.generation
    _garbage(torch.tensor(0.3, requires_grad=True))
    assert small_tape.generation > generation
    kept.backward()
    assert len(seen) == 1
    np.testing.assert_array_equal(seen[0].numpy(), [2.0, 4.0])


def test_a_freed_graph_kept_alive_reads_as_freed_after_a_compaction(small_tape):
    w = torch.tensor(3.0, requires_grad=True)
    done = w * w
    done.backward()  # freed; alive
    pending = w * 2.0  # pending: keeps the tape from restarting
    generation = small_tape.generation
    _garbage(w)
    assert small_tape.generation > generation
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        done.backward()
    pending.backward()
    assert w.grad.item() == 6.0 + 2.0


def test_transforms_between_compactions(small_tape):
    x = torch.tensor([0.3, -0.2], dtype=torch.float64)
    w = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    kept = w * 2.0

    def f(v):
        return _chain(v, 0.9, 80).sum()  # more ops than a check's worth

    generation = small_tape.generation
    expected = torch.func.grad(f)(x)
    hessian = torch.func.hessian(f)(x).numpy()
    for _ in range(3):
        np.testing.assert_array_equal(torch.func.grad(f)(x).numpy(), expected.numpy())
        np.testing.assert_allclose(torch.func.hvp(f, (x,), (torch.ones_like(x),)).numpy(),
                                   hessian.sum(axis=1), rtol=1e-12)
        _, vjp_fn = torch.func.vjp(f, x)
        _garbage(w)  # compactions between the call and its vjp_fn
        np.testing.assert_array_equal(vjp_fn(torch.tensor(1.0, dtype=torch.float64))[0],
                                      expected.numpy())
    assert small_tape.generation > generation
    kept.backward()
    assert w.grad.item() == 2.0


def test_compaction_leaves_a_large_live_graph_alone(small_tape):
    x = torch.tensor(0.5, requires_grad=True)
    total = x * 0.0
    for _ in range(200):  # everything stays reachable from total
        total = total + torch.sin(x)
    assert small_tape.generation == 0
    total.backward()
    assert abs(x.grad.item() - 200 * np.cos(0.5)) < 1e-3


def test_default_tapes_compact_too():
    # the default thresholds: a 0-d chain of 1000 ops evaluated over and over in grad mode
    tape = Tape()
    _state_tape = _state.tape
    _state.tape = tape
    try:
        x0 = torch.tensor(0.5, requires_grad=True)
        for _ in range(60):
            out = _chain(x0, 0.9, 250)
        assert tape.generation > 0
        assert tape.n_entries < 3 * 16384
        out.backward()
        assert x0.grad is not None
    finally:
        _state.tape = _state_tape
    assert current_tape() is _state_tape


def test_a_restart_after_a_compaction_releases_dying_leaves_cleanly(small_tape):
    # the restart drops its leaf table, whose tensors' __del__ then runs: the forwarding
    # maps of the compaction before must be gone by then (they name rows of the old tables)
    caught = []
    hook, sys.unraisablehook = sys.unraisablehook, lambda unraisable: caught.append(unraisable)
    try:
        w = torch.tensor([1.0, 2.0], requires_grad=True)
        kept = (w * 2).sum()  # alive and never differentiated: kept by the compaction
        a = torch.tensor(0.9, requires_grad=True)
        generation = small_tape.generation
        for _ in range(200):
            torch.sin(a) * a  # dead at once
        assert small_tape.generation > generation and small_tape.carried  # compacted
        generation = small_tape.generation
        del w, kept  # w lives on in the tape's leaf table only
        for _ in range(200):
            torch.sin(a) * a
        assert small_tape.generation > generation and small_tape.carried is None  # restarted
    finally:
        sys.unraisablehook = hook
    assert caught == []


@pytest.fixture
def restartable(monkeypatch):
    """Tapes of a few hundred entries restart (a default tape: from 4096)."""
    monkeypatch.setattr("jitgrad.tape._RESTART_ENTRIES", 64)


@pytest.fixture
def compactions(monkeypatch):
    """Every compaction's result, in order."""
    results = []
    compact = Tape.compact

    def counted(self):
        results.append(compact(self))
        return results[-1]

    monkeypatch.setattr(Tape, "compact", counted)
    return results


def test_a_chain_dropped_after_a_compaction_restarts_the_tape(small_tape, restartable,
                                                              compactions):
    # a chain kept alive while other work is recorded after it: the next chain is recorded
    # behind both and compacted once; every later chain, dropped and recorded again, then
    # restarts the tape instead of being compacted in the middle of the next one
    x0 = torch.tensor(0.5, requires_grad=True)
    a = torch.tensor(0.9, requires_grad=True)
    w = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    out = _chain(x0, a, 100)
    for _ in range(3):
        (w * w).sum().backward()
    for _ in range(6):
        out = None
        out = _chain(x0, a, 100)
    assert compactions.count(True) == 1
    counted = len(compactions)
    generation = small_tape.generation
    for _ in range(10):
        out = None
        out = _chain(x0, a, 100)
        assert small_tape.n_entries == 400  # the chain alone, on a restarted tape
    assert len(compactions) == counted
    assert small_tape.generation == generation + 10
    out.backward()
    assert abs(x0.grad.item() - _chain_derivative(0.5, 0.9, 100)) < 1e-4


def _chain_derivative(x: float, a: float, n: int) -> float:
    d = 1.0
    for _ in range(n):
        d *= np.cos(x) * a + 0.5
        x = np.sin(x) * a + x * 0.5
    return d


def test_a_pinned_graph_is_compacted_when_a_chain_is_dropped(small_tape, restartable,
                                                             compactions):
    # a tensor kept from an earlier step pins its graph: each dropped chain is compacted
    # away before the next is recorded (not in its middle, copying it), in tables that
    # keep their room
    x0 = torch.tensor(0.5, requires_grad=True)
    a = torch.tensor(0.9, requires_grad=True)
    pinned = torch.sin(x0) * a  # never differentiated until the end
    out = _chain(x0, a, 100)
    sizes, capacities = [], []
    for _ in range(8):
        out = None
        out = _chain(x0, a, 100)  # noqa: F841 - alive until the next chain is recorded
        sizes.append(small_tape.n_entries)
        capacities.append(small_tape.capacity)
    assert compactions[-6:] == [True] * 6
    assert len(compactions) <= 9
    assert len(set(sizes[2:])) == 1 and sizes[-1] <= 400 + 4  # the pinned rows and one chain
    assert len(set(capacities[2:])) == 1
    pinned.backward()
    assert abs(x0.grad.item() - np.cos(0.5) * 0.9) < 1e-6
    assert abs(a.grad.item() - np.sin(0.5)) < 1e-6


def test_a_differentiated_graph_sizes_the_next_check(small_tape, restartable, compactions):
    # a chain recorded, differentiated, recorded again: the first one meets the periodic
    # checks (everything alive: nothing compacted), the later ones restart a tape whose
    # next check waits for twice the graph, so none is checked in its middle
    x0 = torch.tensor(0.5, requires_grad=True)
    a = torch.tensor(0.9, requires_grad=True)
    checked = []
    for _ in range(6):
        out = _chain(x0, a, 200)  # 800 entries: past several checks of a fresh tape
        checked.append(len(compactions))
        out.backward()
        assert abs(x0.grad.item() - _chain_derivative(0.5, 0.9, 200)) < 1e-4
        x0.grad = a.grad = None
    assert checked[0] >= 1 and not any(compactions)
    assert checked[1:] == [checked[0]] * 5


def test_small_graphs_dropped_under_a_pinned_one_are_compacted_rarely(small_tape,
                                                                     compactions):
    # each slice is a graph of its own, dropped at once, with a large value: a compaction
    # at every drop (the tape restartable again after a few dozen of them) would cost far
    # more than recording them (it came every few dozen: 64 here); the drop check waits
    # for a restart's worth of entries
    x = torch.rand(1000, dtype=torch.float64, requires_grad=True)
    pinned = x * 2.0  # alive, never differentiated until the end
    for _ in range(2000):
        x[1:]
    # a periodic check's compaction, and at most one drop's after each
    assert len(compactions) <= 2 * (2000 // CHECK) + 4
    pinned.sum().backward()
    assert np.array_equal(x.grad.numpy(), np.full(1000, 2.0))
