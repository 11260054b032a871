"""The 0-d ops' log (``Tape.record_scalar``, ``Tape.flush``): after the first ops of a run,
rows logged per op and written out in bulk give the same tables, values and gradients as
rows written one by one; and a graph dropped without a backward restarts the tape at the
next recording."""
from __future__ import annotations

import numpy as np
import pytest

import jitgrad as torch
from jitgrad.kernels.layout import N_OFFSET
from jitgrad.tape import _EAGER_RUN, _FLUSH_IN_PYTHON, _LOG_ROWS, Tape, _state, current_tape


@pytest.fixture
def tape(monkeypatch):
    tape = Tape()
    monkeypatch.setattr(_state, "tape", tape)
    return tape


def _program(flush_each: bool, n: int):
    """0-d ops of both dtypes, with constants, a three-input op and two constants; returns
    the leaves and the output."""
    tape = current_tape()
    x = torch.tensor(0.5, requires_grad=True)
    w = torch.tensor(0.25, dtype=torch.float64, requires_grad=True)
    conds = (torch.tensor(True), torch.tensor(False))  # constants: registered once
    y, v = x, w
    for k in range(n):
        kind = k % 6
        if kind == 0:
            y = torch.sin(y) * x + y * 0.5
        elif kind == 1:
            v = torch.exp(v * -0.25) - v / 3.0
        elif kind == 2:
            if k < 6 or k % 60 == 2:  # two constants: written at once, after the log
                y = torch.clamp(y, -0.75, 0.75)
            else:
                y = y * 0.75 - 0.125
        elif kind == 3:
            if k < 6:  # three inputs (a new mask each time: a constant that is registered)
                v = torch.where(conds[0], v, w * 2.0) + torch.where(conds[1], v, w * 2.0)
            else:
                v = torch.hypot(v, w * 0.5)
        elif kind == 4:
            y = 2.0 ** y - torch.tanh(y)
        else:
            v = v ** 2 + torch.sqrt(torch.abs(v) + 1.0)
        if flush_each:
            tape.flush()
    return x, w, y, v


def _tables(tape):
    entries, consts, nodes, versions, refs, _ = tape.tables()
    values = [tape.node_view(node).tobytes() for node in range(tape.n_nodes)]
    kept = np.delete(nodes, N_OFFSET, axis=1)  # offsets follow the order of allocation
    return entries.copy(), consts.copy(), kept.copy(), versions.copy(), refs.copy(), values


@pytest.mark.parametrize("n", [3, _EAGER_RUN + _FLUSH_IN_PYTHON // 2, 400])
def test_logged_rows_are_the_rows_written_one_by_one(monkeypatch, n):
    runs = []
    for flush_each in (True, False):
        tape = Tape()
        monkeypatch.setattr(_state, "tape", tape)
        x, w, y, v = _program(flush_each, n)
        if not flush_each and n > _EAGER_RUN:
            assert 0 < tape.logged < tape.n_entries
        runs.append((_tables(tape), (y.item(), v.item())))
        (y + v.float()).backward()
        runs[-1] += ((x.grad.item(), w.grad.item()),)
    (eager, eager_out, eager_grads), (logged, logged_out, logged_grads) = runs
    for a, b in zip(eager[:5], logged[:5]):
        np.testing.assert_array_equal(a, b)
    assert eager[5] == logged[5]  # every node's value, bit for bit
    assert eager_out == logged_out and eager_grads == logged_grads


def test_a_long_logged_chain_differentiates_as_torch(tape):
    torch_ = pytest.importorskip("torch")
    for lib_dtype in ("float32", "float64"):
        grads = []
        for lib in (torch, torch_):
            d = getattr(lib, lib_dtype)
            x0 = lib.tensor(0.5, dtype=d, requires_grad=True)
            a = lib.tensor(0.9, dtype=d, requires_grad=True)
            x = x0
            for _ in range(3000):
                x = lib.sin(x) * a + x * 0.5
            x.backward()
            grads.append((x.item(), x0.grad.item(), a.grad.item()))
        np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5 if lib_dtype == "float32"
                                   else 1e-12)


def test_array_ops_between_logged_ops(tape):
    torch_ = pytest.importorskip("torch")
    results = []
    for lib in (torch, torch_):
        x = lib.tensor(0.3, dtype=lib.float64, requires_grad=True)
        v = lib.tensor([1.0, 2.0, 3.0], dtype=lib.float64, requires_grad=True)
        s = x
        for _ in range(40):
            s = lib.cos(s) * 0.9 + x
        u = (v * s).sum()  # the log is written out before the array rows
        for _ in range(40):
            u = u * 0.99 + lib.sin(u) * s
        u.backward()
        results.append((u.item(), x.grad.item(), *v.grad.tolist()))
    np.testing.assert_allclose(results[0], results[1], rtol=1e-12)


def test_an_in_place_write_to_a_logged_value_fails_its_backward(tape):
    x = torch.tensor(2.0, requires_grad=True)
    for _ in range(_EAGER_RUN):
        x = x * 1.0
    y = x * 3.0
    z = y * y  # saves y
    assert tape.logged
    y.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        z.backward()


@pytest.mark.parametrize("write", ["add_", "mul_", "copy_"])
def test_an_in_place_write_under_no_grad_to_a_logged_input_fails_the_backward(tape, write):
    # nothing is recorded for the write: the logged rows must still keep the versions
    # their inputs had when they were recorded
    x = torch.tensor(2.0, requires_grad=True)
    for _ in range(_EAGER_RUN):
        x = x * 1.0
    y = x * 3.0
    z = y * y  # saves y
    assert tape.logged >= 2
    with torch.no_grad():
        getattr(y, write)(torch.tensor(1.5) if write == "copy_" else 1.5)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        z.backward()


def test_small_graphs_are_written_at_once_and_long_runs_logged(tape):
    x = torch.tensor(1.5, requires_grad=True)
    y = x
    for k in range(_EAGER_RUN):
        y = y * 1.5
        assert tape.logged == -(k + 1)
        assert tape._nodes[(tape.n_nodes - 1) * 40:tape.n_nodes * 40] != bytes(40)
    y = y * 1.5
    assert tape.logged == 1  # its node row is not written yet
    assert tape._nodes[(tape.n_nodes - 1) * 40:tape.n_nodes * 40] == bytes(40)
    v = torch.ones(2, requires_grad=True) * 2.0  # another op: the run ends
    assert tape.logged == 0
    assert tape._nodes[(tape.n_nodes - 3) * 40:(tape.n_nodes - 2) * 40] != bytes(40)
    y = y * v.sum()
    assert tape.logged == -1  # a new run
    y.backward()
    assert x.grad.item() == pytest.approx(1.5 ** (_EAGER_RUN + 1) * 4.0)


def test_liveness_counts_logged_nodes_without_writing_them_out(tape):
    x = torch.tensor(1.5, requires_grad=True)
    ys = [x * float(k) for k in range(_EAGER_RUN + 5)]
    del ys[1], ys[-2]
    assert tape.logged
    assert tape._count_pending_alive() == _EAGER_RUN + 3
    assert tape.logged  # still logged
    tape.flush()
    assert tape._count_pending_alive() == _EAGER_RUN + 3


def _chain(x, a, n):
    for _ in range(n):
        x = torch.sin(x) * a + x * 0.5
    return x


@pytest.fixture
def compactions(monkeypatch):
    """One item per ``Tape.compact`` call."""
    calls = []
    compact = Tape.compact
    monkeypatch.setattr(Tape, "compact", lambda self: calls.append(1) or compact(self))
    return calls


def test_a_dropped_graph_restarts_the_tape_at_the_next_op(tape, compactions):
    x0 = torch.tensor(0.5, requires_grad=True)
    a = torch.tensor(0.9, requires_grad=True)
    for _ in range(3):
        out = _chain(x0, a, 1100)  # 4400 entries: large enough to restart
        generation = tape.generation
        del out  # dropped, never differentiated
        y = torch.sin(x0) * a
        assert tape.generation == generation + 1
        assert tape.n_entries == 2
        y.backward()  # the leaves still work in the new generation
        assert x0.grad.item() == pytest.approx(np.cos(0.5) * 0.9, rel=1e-6)
        x0.grad = a.grad = None
    assert not compactions


def test_a_dropped_graph_is_compacted_away_under_a_live_one(tape, compactions):
    x0 = torch.tensor(0.5, requires_grad=True)
    a = torch.tensor(0.9, requires_grad=True)
    kept = _chain(x0, a, 10)  # alive and pending: no restart
    out = _chain(kept, a, 1100)
    generation = tape.generation
    del out
    y = torch.sin(kept) * a
    # the dropped rows go at once (not in the middle of the next graph): kept's 40 entries
    # and the two new ones are left
    assert compactions == [1] and tape.generation == generation + 1
    assert tape.n_entries == 42
    z = _chain(y, a, 10)
    del z  # a small tape: no check
    torch.sin(kept) * a
    assert tape.maybe_restart is False and compactions == [1]
    kept.backward()  # its graph is intact
    x64 = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    expected = _chain(x64, 0.9, 10)
    expected.backward()
    assert kept.item() == pytest.approx(expected.item(), rel=1e-6)
    assert x0.grad.item() == pytest.approx(x64.grad.item(), rel=1e-5)


@pytest.mark.parametrize("logged", [False, True])
def test_anomaly_mode_names_a_0d_op_after_ops_written_at_once_or_logged(tape, logged):
    x = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    z = x
    if logged:  # past the ops written at once
        for _ in range(_EAGER_RUN + 1):
            z = z * 1.0
        assert tape.logged > 0
    with torch.autograd.detect_anomaly():
        for _ in range(_EAGER_RUN):
            z = z * 1.0
        y = torch.sqrt(z) * 0.0 + z
        assert tape.logged <= 0  # anomaly mode writes every op out at once
        with pytest.raises(RuntimeError) as info:
            y.backward()
    message = str(info.value)
    assert message.startswith("Function 'SqrtBackward0' returned nan values in its 0th output")
    assert "y = torch.sqrt(z) * 0.0 + z" in message  # the forward call's line


@pytest.mark.parametrize("n", [_EAGER_RUN + 3, _EAGER_RUN + 400])
def test_a_stale_view_of_the_tables_when_the_log_is_written_out(tape, n):
    # a view kept alive (by a traceback, say) does not stop the tables from growing: they
    # grow into new buffers, never by a resize (which a view would make fail)
    x = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    y = x
    for _ in range(_EAGER_RUN):
        y = torch.sin(y) * 0.5 + y
    assert tape.logged > 0
    stale = (np.frombuffer(tape._entries, np.int64), np.frombuffer(tape._nodes, np.int64),
             np.frombuffer(tape.versions, np.int64), np.frombuffer(tape.refs, np.int64))
    pinned, capacity = tape._entries, tape.capacity
    for _ in range(n - _EAGER_RUN):
        y = torch.sin(y) * 0.5 + y
    y.backward()
    assert (tape._entries is not pinned) == (tape.n_entries > capacity)
    z, dz = 0.5, 1.0
    for _ in range(n):
        dz *= np.cos(z) * 0.5 + 1.0
        z = np.sin(z) * 0.5 + z
    assert x.grad.item() == pytest.approx(dz, rel=1e-12)
    assert y.item() == pytest.approx(z, rel=1e-14)
    del stale


def test_a_restart_reuses_the_tables_and_a_far_larger_graph_gives_its_room_back(tape):
    x0 = torch.tensor(0.5, requires_grad=True)
    a = torch.tensor(0.9, requires_grad=True)
    _chain(x0, a, 1100).backward()  # 4400 entries: the tables grow
    buffers = (tape._entries, tape._nodes, tape.versions, tape.refs)
    capacity = tape.capacity
    assert capacity >= 4400
    for _ in range(3):
        out = _chain(x0, a, 1100)  # a restart first: the same buffers, no new memory
        assert tape.generation > 0 and tape.n_entries == 4400
        assert all(now is before for now, before in
                   zip((tape._entries, tape._nodes, tape.versions, tape.refs), buffers))
        out.backward()
    _chain(x0, a, 20000).backward()  # 80000 rows
    assert tape.capacity >= 80000
    _chain(x0, a, 1100).backward()  # 4400 rows: room for 80000 kept
    assert tape.capacity >= 80000
    y = _chain(x0, a, 10)  # the restart after 4400 rows gives most of the room back
    assert tape.capacity < 80000 and tape.n_entries == 40
    y.backward()
    assert len(tape._entries) == tape.capacity * 96 and len(tape.refs) == tape.capacity


def test_a_compaction_keeps_room_in_the_tables(tape, compactions):
    x0 = torch.tensor(0.5, requires_grad=True)
    a = torch.tensor(0.9, requires_grad=True)
    kept = _chain(x0, a, 5)  # alive and pending: the periodic check compacts
    for _ in range(10):
        _chain(kept, a, 500)
    assert compactions and tape.n_entries < 6000
    assert tape.capacity >= tape.n_entries and len(tape._entries) == tape.capacity * 96
    y = _chain(kept, a, 3000)  # grows past the room the compaction kept
    y.backward()
    expected = _chain(_chain(torch.tensor(0.5, dtype=torch.float64), 0.9, 5), 0.9, 3000)
    assert y.item() == pytest.approx(expected.item(), rel=1e-5)


def test_each_log_sets_the_versions_and_live_counts_of_its_nodes(tape):
    """A new log sets its nodes' versions and live counts when it starts (a logged op only
    counts its node): across three logs, the tables growing as the later ones start, the
    live counts are those of the tensors alive, and a write to one of them is caught."""
    x = torch.tensor(1.5, requires_grad=True)
    kept, y = [], x
    for k in range(2 * _LOG_ROWS + 100):
        y = torch.sin(y)  # (its derivative reads its input)
        if k % 97 == 0:
            kept.append(y)
    capacity = tape.capacity
    assert tape.logged and capacity >= tape.n_nodes > 2 * _LOG_ROWS
    alive = {x._node, y._node, *(t._node for t in kept)}
    assert tape._count_pending_alive() == len(alive) - 1  # the leaf's node has no entry
    tape.flush()
    _, _, _, versions, refs, _ = tape.tables()
    assert set(np.flatnonzero(refs > 0).tolist()) == alive
    assert not versions.any()
    kept[7].mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()
