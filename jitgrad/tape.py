"""The flat tape: one per thread, with grad mode.

Every recorded op writes one row to the entry table and one to the node table for its
output, and writes its output's values into the value arena of its dtype. The tables are
``bytearray`` buffers of packed int64/float64 rows with room kept beyond the rows in use
(``capacity``): a row is one ``struct.pack_into`` at its offset, and a restart reuses the
memory (growing a buffer again after each restart cost its copies and page faults). The
Numba sweeps see exactly the rows in use, as memoryviews or NumPy views made per sweep
(``entries``, ``nodes``, ``tables()``), so a sweep reaches every entry and value by offset
with no Python per node. The arenas are flat NumPy buffers; a recorded tensor's data is a
view into them.

Lifetimes: a tape has a generation number. When no live tensor refers to an entry that is
still pending (not freed by a backward), the next recording starts a new generation: the
tables restart at row 0 and the arenas are swapped for ones no tensor views. Tensors of an
old generation keep their data (their arena stays alive through their views) and read as
graph-freed. This keeps training loops and forgotten-``no_grad`` inference in constant
memory. When a liveness check finds live tensors on pending entries (a loss computed in
grad mode and never differentiated), the tape is compacted instead: the rows those
tensors' backward can reach move to a new generation, renumbered, and tensors of the old
one find their new rows through ``carried`` when next used (``adopt``).
"""
from __future__ import annotations

import operator
import struct
import sys
import threading
from array import array

import numpy as np

from .kernels.layout import (
    DTYPE_F32,
    DTYPE_F64,
    E_C0,
    E_FREED,
    E_IN0,
    E_META,
    E_OP,
    E_OUT,
    E_VER0,
    E_WIDTH,
    N_DTYPE,
    N_ENTRY,
    N_GRAD,
    N_OFFSET,
    N_SIZE,
    N_WIDTH,
    SWEEP_SCRATCH,
)

_ARENA_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_SCALAR = ()
_INITIAL_ARENA = 1 << 12
_CHECK_EVERY = 1 << 14  # entries between liveness checks
_CHECK_VALUES = 1 << 24  # arena elements between liveness checks
# a tape whose entries are all freed restarts once it is this large (entries, values)
_RESTART_ENTRIES = 1 << 12
_RESTART_VALUES = 1 << 15
_REUSE_SIZE = 1 << 16  # gradients from this many elements on reuse dropped ones' memory
_DEFER_SIZE = 1 << 16  # a registered value of this many elements is copied in when first read

_ENTRY = struct.Struct(f"<{E_WIDTH - 2}q2d")
_NODE = struct.Struct(f"<{N_WIDTH}q")
_INT = struct.Struct("<q")
_INITIAL_ROWS = 1 << 9  # rows a new tape's tables have room for
# a 0-d op as logged (see record_scalar2): its op code, inputs' nodes, value, constant and
# dtype code; the rest of its entry and node rows is known when they are written out
_LOGGED = struct.Struct("<3qddq")
_LOG_BYTES = _LOGGED.size
_LOG_ROWS = 1 << 12  # a full log is written out (its memory is reused: it stays in cache)
_LOG_FIELDS = np.dtype([("code", "<i8"), ("in0", "<i8"), ("in1", "<i8"), ("value", "<f8"),
                        ("c0", "<f8"), ("dtype", "<i8")])
# the version and live count of each node of a new log, set when the log starts
_LOG_VERSIONS = array("q", bytes(8 * _LOG_ROWS))
_LOG_REFS = array("q", [1]) * _LOG_ROWS
_FLUSH_IN_PYTHON = 24  # up to this many logged rows are written out row by row
_EAGER_RUN = 16  # the first 0-d ops of a run go to the tables at once
# maybe_restart's values past True (a check of liveness before the next recording):
_DROPPED = 2  # the newest node's last tensor died
_READY = 3  # a backward found nothing pending alive: restart at the next recording
_ENTRY_BYTES = _ENTRY.size
_NODE_BYTES = _NODE.size
_SCALAR_NODE = np.array([1 if field in (N_SIZE, N_GRAD) else 0 for field in range(N_WIDTH)],
                        np.int64)  # a logged op's node row before its offset, dtype, entry


def _with_room(rows, size: int, typecode: str = ""):
    """A new table buffer starting with the bytes of ``rows`` (any buffer), zeros after:
    an ``array`` of ``size`` items of ``typecode``, or without one a ``bytearray`` of
    ``size`` bytes."""
    zeros = bytes(size * 8 if typecode else size)
    table = array(typecode, zeros) if typecode else bytearray(zeros)
    data = memoryview(rows).cast("B")
    with memoryview(table).cast("B") as view:
        view[:data.nbytes] = data
    return table


def _grown(table, used: int, size: int):
    """A larger copy of a table buffer: its first ``used`` items, room up to ``size``. (The
    old buffer stays as it is for any view of it: a resize would fail.)"""
    return _with_room(table[:used], size, getattr(table, "typecode", ""))


def _written_out(name: str, rows: str = "", row_bytes: int = 0,
                 values: bool = False) -> property:
    """A tape's ``name`` with its logged 0-d rows written out first (``flush``); for a
    table (``rows``: the attribute counting its rows in use), a memoryview of those rows;
    ``values``: the arenas, with the deferred values copied in."""
    read = operator.attrgetter(name)
    count = operator.attrgetter(rows) if rows else None

    def table(tape):
        if tape.logged > 0:
            tape.flush()
        if values and tape.deferred is not None:
            tape.write_deferred()
        if count is None:
            return read(tape)
        return memoryview(read(tape))[:count(tape) * row_bytes]

    return property(table)


class _Checks:
    """When a tape's liveness checks other than the periodic one (``next_check``) run."""

    __slots__ = ("values", "recheck_at", "drop_at")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.values = _CHECK_VALUES  # arena elements of the next periodic check
        self.recheck_at = 0  # after_backward asks for a check from this many entries on
        # a tape's maybe_restart is _DROPPED when the newest node's last tensor died (a
        # graph dropped without a backward): the next recording checks liveness and restarts if
        # nothing pending is alive, without compacting; after such a check found live
        # tensors, the next one waits for this many entries
        self.drop_at = 0


class _Pools:
    """Memory a tape keeps for reuse: fresh memory costs its page faults again each step."""

    __slots__ = ("arenas", "gradients", "adjoints")

    def __init__(self) -> None:
        self.arenas: list[list[np.ndarray]] = [[], []]  # spare arenas, per dtype
        self.gradients: list[np.ndarray] = []  # large gradients given out
        self.adjoints = [np.empty(0, d) for d in _ARENA_DTYPES]  # the sweeps' buffers


class Tape:
    """Flat tables of one thread's recorded ops (see the module docstring)."""

    def __init__(self) -> None:
        self.generation = 0
        # the grad mode of the thread whose tape this is (kept here: a thread-local read
        # costs as much as several attribute reads, and a recording needs the tape anyway)
        self.grad_enabled = True
        # the tables, with room for ``capacity`` rows each; rows from ``n_entries`` and
        # ``n_nodes`` on are unused (a restart leaves old rows there)
        self.capacity = _INITIAL_ROWS
        self._entries = bytearray(_INITIAL_ROWS * _ENTRY_BYTES)
        self._nodes = bytearray(_INITIAL_ROWS * _NODE_BYTES)
        self.versions = _with_room(b"", _INITIAL_ROWS, "q")  # node -> in-place writes
        self.refs = _with_room(b"", _INITIAL_ROWS, "q")  # node -> live tensors on it
        # 0-d ops whose rows are not in the tables yet (see record_scalar2), ``logged`` (> 0)
        # of them: the last nodes and entries; every other recording writes them out
        # first. ``logged`` <= 0: nothing logged, and -n: the last n ops were 0-d ones
        # written out at once
        self.log = bytearray(_LOG_ROWS * _LOG_BYTES)
        self.logged = 0
        self.meta = array("q", [0])  # meta[0] = 0: shared by entries that need only a zero
        self._shapes: list[tuple] = []  # node -> shape, for the create_graph sweep and grad_fn
        self.n_entries = 0
        self.n_nodes = 0
        self._arenas = [np.empty(_INITIAL_ARENA, d) for d in _ARENA_DTYPES]
        self.used = [0, 0]
        self.pools = _Pools()  # memory kept for reuse
        # large values of leaves and constants registered but not copied into the arena
        # yet, [(node, dtype code, offset, array)]: a sweep copies in those its steps read,
        # any other reader of the arenas all of them (a value no op reads, as a sliced
        # leaf's, is never copied); None: none
        self.deferred: list | None = None
        self.leaves: dict[int, object] = {}    # node -> leaf Tensor that accumulates .grad
        self.retained: dict[int, object] = {}  # node -> non-leaf Tensor with retain_grad()
        # True: a sweep freed entries, check liveness before recording; _DROPPED (see
        # newest_dropped); _READY: a sweep found no live tensor on a pending entry
        self.maybe_restart = False
        self.next_check = _CHECK_EVERY
        self.checks = _Checks()  # when the other liveness checks may run
        self.holds = 0  # > 0 while something (a dual level) keeps node ids of this tape
        # kept here by other modules (autograd.function, autograd.second_order); attributes
        # set in __init__ keep the instance's attribute loads specialized (a dict lookup on
        # the instance would turn every later attribute load on the tape into a slow one)
        self.python_callbacks = None
        self.second_order_scratch = None
        # a compaction renumbers the rows it keeps: (generation, node) of a live tensor then
        # -> its node now, and (generation, entry) of its producing entry -> that entry now
        # (a grad_fn object names its entry); tensors move over when next used
        self.carried: dict | None = None
        self.carried_entries: dict | None = None
        self.compactable = True  # False for a private recording tape (compile)
        # entry -> torch's grad_fn name where a composite's last entry stands for the
        # whole (log_softmax's subtraction shows as LogSoftmaxBackward0)
        self.names: dict[int, str] = {}

    # -- values -------------------------------------------------------------------------
    def alloc(self, dtype_code: int, size: int) -> int:
        """Reserve ``size`` elements in an arena; returns their offset."""
        offset = self.used[dtype_code]
        end = offset + size
        arena = self._arenas[dtype_code]
        if end > arena.shape[0]:
            grown = np.empty(max(2 * arena.shape[0], 2 * end), arena.dtype)
            # views made before keep the old buffer alive; values are the same
            grown[:offset] = arena[:offset]
            self._arenas[dtype_code] = grown
        self.used[dtype_code] = end
        return offset

    def defer(self, node: int, dtype_code: int, offset: int, array: np.ndarray) -> None:
        """``array`` (``dtype_code``'s dtype) is the value of ``node`` at ``offset``: copied
        in when something reads it, not now (the value of a leaf that only slices read
        never is)."""
        if self.deferred is None:
            self.deferred = []
        self.deferred.append((node, dtype_code, offset, array))

    def write_deferred(self, saves: np.ndarray | None = None) -> None:
        """Copy the deferred values into the current arenas; with ``saves`` (the sweep's
        masks per op: bit k, input k's value is read) only those an entry reads."""
        deferred, self.deferred = self.deferred, None
        if saves is not None and self.n_entries:
            entries = np.frombuffer(self._entries, np.int64,
                                    self.n_entries * E_WIDTH).reshape(-1, E_WIDTH)
            masks = saves[entries[:, E_OP]]
            nodes = np.array([item[0] for item in deferred], np.int64)
            read = np.zeros(nodes.shape[0], np.bool_)
            for k in range(3):
                read |= np.isin(nodes, entries[(masks >> k) & 1 == 1, E_IN0 + k])
            kept = [item for item, r in zip(deferred, read.tolist()) if not r]
            deferred = [item for item, r in zip(deferred, read.tolist()) if r]
            self.deferred = kept or None
        for _, code, offset, value in deferred:
            self._arenas[code][offset:offset + value.size] = value.reshape(-1)

    def drop_deferred(self, node: int) -> None:
        """``node``'s value was written in (a leaf's new value): no deferred copy of an
        older one may overwrite it."""
        self.deferred = [item for item in self.deferred if item[0] != node] or None

    def _room(self, rows: int) -> int:
        """The tables' room for a new generation after a graph of ``rows`` rows: the room
        they have (the next graph is likely as large), unless that is far more."""
        if self.capacity > 4 * max(rows, _INITIAL_ROWS):
            return max(2 * rows, _INITIAL_ROWS)
        return self.capacity

    def _unpin(self) -> None:
        """``meta`` could not grow because a NumPy view of it is still alive somewhere (a
        frame kept by an exception or by a compiler's error handling): give the tape a
        fresh copy and let the stale views keep the old buffer. (The tables never resize:
        they grow into new buffers, see ``reserve``.)"""
        self.meta = array("q", self.meta)

    def reserve(self, rows: int) -> None:
        """Room for ``rows`` rows in every table: new buffers of twice the room (or
        ``rows``) holding the rows in use."""
        capacity = max(rows, 2 * self.capacity)
        self._entries = _grown(self._entries, self.n_entries * _ENTRY_BYTES,
                               capacity * _ENTRY_BYTES)
        self._nodes = _grown(self._nodes, self.n_nodes * _NODE_BYTES, capacity * _NODE_BYTES)
        # all of them: a log's nodes have theirs before they are in use
        self.versions = _grown(self.versions, len(self.versions), capacity)
        self.refs = _grown(self.refs, len(self.refs), capacity)
        self.capacity = capacity

    def new_node(self, dtype_code: int, shape: tuple, size: int, requires_grad: bool,
                 entry: int) -> int:
        if self.logged:  # rows of other ops end a run of 0-d ones
            self._end_run()
        node = self.n_nodes
        if node >= self.capacity:
            self.reserve(node + 1)
        offset = self.used[dtype_code]  # alloc's common case inline
        if offset + size > self._arenas[dtype_code].shape[0]:
            offset = self.alloc(dtype_code, size)
        else:
            self.used[dtype_code] = offset + size
        _NODE.pack_into(self._nodes, node * _NODE_BYTES, offset, size, dtype_code,
                        1 if requires_grad else 0, entry)
        self.versions[node] = 0
        self.refs[node] = 1
        self._shapes.append(shape)
        self.n_nodes = node + 1
        return node

    def adjoint_buffers(self) -> list:
        """Adjoint buffers as large as the arenas, kept from one backward to the next (the
        sweep zeroes what it uses): fresh memory would cost page faults every step. After
        the arena's columns: the scratch slots of the sweep's blocked runs."""
        if self.logged > 0:
            self.flush()
        for code in (DTYPE_F32, DTYPE_F64):
            if self.pools.adjoints[code].shape[0] < self.used[code] + SWEEP_SCRATCH:
                size = max(self.used[code], self._arenas[code].shape[0]) + SWEEP_SCRATCH
                self.pools.adjoints[code] = np.empty(size, _ARENA_DTYPES[code])
        return self.pools.adjoints

    def node_field(self, node: int, field: int) -> int:
        if self.logged > 0:
            self.flush()
        return _INT.unpack_from(self._nodes, (node * N_WIDTH + field) * 8)[0]

    def set_node_field(self, node: int, field: int, value: int) -> None:
        if self.logged > 0:
            self.flush()
        _INT.pack_into(self._nodes, (node * N_WIDTH + field) * 8, value)

    def node_view(self, node: int) -> np.ndarray:
        """The node's value: a view into the current arena."""
        if self.logged > 0:
            self.flush()
        if self.deferred is not None:
            self.write_deferred()
        offset, size, dtype_code, _, _ = _NODE.unpack_from(self._nodes, node * _NODE_BYTES)
        return self._arenas[dtype_code][offset:offset + size].reshape(self._shapes[node])

    # -- entries ------------------------------------------------------------------------
    def record(self, code: int, out: int, in0: int, in1: int, in2: int, meta: int,
               c0: float = 0.0, c1: float = 0.0) -> int:
        if self.logged:  # rows of other ops end a run of 0-d ones
            self._end_run()
        entry = self.n_entries
        if entry >= self.capacity:
            self.reserve(entry + 1)
        versions = self.versions
        _ENTRY.pack_into(
            self._entries, entry * _ENTRY_BYTES, code, out, in0, in1, in2, meta,
            versions[in0] if in0 >= 0 else 0,
            versions[in1] if in1 >= 0 else 0,
            versions[in2] if in2 >= 0 else 0,
            0, c0, c1)
        self.set_node_field(out, N_ENTRY, entry)
        self.n_entries = entry + 1
        return entry

    def record_output(self, code: int, dtype_code: int, shape: tuple, size: int, in0: int,
                      in1: int, in2: int, meta: int, c0: float = 0.0,
                      c1: float = 0.0) -> tuple[int, np.ndarray]:
        """``new_node`` + ``record`` in one step (the per-op cost of array graphs): the
        output node, recorded as produced by a new entry; returns the node and its slot (a
        flat view of the arena). The caller writes the value into the slot next (nothing
        refers to the node before)."""
        if self.logged:  # rows of other ops end a run of 0-d ones
            self._end_run()
        used = self.used
        offset = used[dtype_code]
        arena = self._arenas[dtype_code]
        if offset + size > len(arena):
            offset = self.alloc(dtype_code, size)
            arena = self._arenas[dtype_code]
        else:
            used[dtype_code] = offset + size
        node = self.n_nodes
        entry = self.n_entries
        if node >= self.capacity or entry >= self.capacity:
            self.reserve(max(node, entry) + 1)
        versions = self.versions
        # the rows (record_scalar writes them the same way: each inline, per op)
        _ENTRY.pack_into(
            self._entries, entry * _ENTRY_BYTES, code, node, in0, in1, in2, meta,
            versions[in0] if in0 >= 0 else 0,
            versions[in1] if in1 >= 0 else 0,
            versions[in2] if in2 >= 0 else 0,
            0, c0, c1)
        _NODE.pack_into(self._nodes, node * _NODE_BYTES, offset, size, dtype_code, 1, entry)
        versions[node] = 0
        self.refs[node] = 1
        self._shapes.append(shape)
        self.n_nodes = node + 1
        self.n_entries = entry + 1
        return node, arena[offset:offset + size]

    def record_scalar(self, code: int, dtype_code: int, value: float, in0: int, in1: int,
                      in2: int, c0: float, c1: float) -> int:
        """``new_node`` + ``record`` for a 0-d output. An op of at most two inputs and one
        constant goes to ``record_scalar2``; one of three inputs or two constants (rare
        in long runs) writes its rows to the tables at once, after the logged ones."""
        if in2 < 0 and c1 == 0.0:
            return Tape.record_scalar2(self, code, dtype_code, value, in0, in1, c0)
        if self.logged > 0:
            self.flush()
            self.logged = -_EAGER_RUN  # the run goes on: the next ops are logged
        return self._record_scalar_now(code, dtype_code, value, in0, in1, in2, c0, c1)

    def record_scalar2(self, code: int, dtype_code: int, value: float, in0: int, in1: int,
                       c0: float) -> int:
        """``new_node`` + ``record`` for a 0-d output of at most two inputs (``in1`` may be
        -1) and one constant: the per-op cost of scalar programs. The first ops of a run of
        0-d ops write their rows at once (a small graph is read soon: a tutorial step);
        after those, each op packs six fields into ``log`` (the tables have room for a
        full log of rows), and ``flush`` writes their rows out, all at once, when something
        first reads the tables or the log is full. A new log sets the versions (0) and
        live counts (1) of all the nodes it can hold at once: a logged op only counts its
        node. (``functions._finish_scalar`` logs an op inline while the log has room.)"""
        logged = self.logged
        if logged <= 0 and logged > -_EAGER_RUN:
            self.logged = logged - 1
            return self._record_scalar_now(code, dtype_code, value, in0, in1, -1, c0, 0.0)
        node = self.n_nodes
        if logged <= 0 or logged == _LOG_ROWS:  # a new log (a full one written out first)
            if logged > 0:
                self.flush()
            logged = 0
            rows = max(node, self.n_entries) + _LOG_ROWS
            if rows > self.capacity:
                self.reserve(rows)
            self.versions[node:node + _LOG_ROWS] = _LOG_VERSIONS
            self.refs[node:node + _LOG_ROWS] = _LOG_REFS
        _LOGGED.pack_into(self.log, logged * _LOG_BYTES, code, in0, in1, value, c0, dtype_code)
        self.logged = logged + 1
        self.n_nodes = node + 1
        self.n_entries += 1
        return node

    def _record_scalar_now(self, code: int, dtype_code: int, value: float, in0: int,
                           in1: int, in2: int, c0: float, c1: float) -> int:
        """A 0-d op's rows written to the tables at once."""
        offset = self.used[dtype_code]
        arena = self._arenas[dtype_code]
        if offset >= arena.shape[0]:
            offset = self.alloc(dtype_code, 1)
            arena = self._arenas[dtype_code]
        else:
            self.used[dtype_code] = offset + 1
        arena[offset] = value
        node = self.n_nodes
        entry = self.n_entries
        if node >= self.capacity or entry >= self.capacity:
            self.reserve(max(node, entry) + 1)
        versions = self.versions
        _ENTRY.pack_into(
            self._entries, entry * _ENTRY_BYTES,
            code, node, in0, in1, in2, 0,  # meta[0] is 0: operands have the output's shape
            versions[in0] if in0 >= 0 else 0,
            versions[in1] if in1 >= 0 else 0,
            versions[in2] if in2 >= 0 else 0,
            0, c0, c1)
        _NODE.pack_into(self._nodes, node * _NODE_BYTES, offset, 1, dtype_code, 1, entry)
        versions[node] = 0
        self.refs[node] = 1
        self._shapes.append(_SCALAR)
        self.n_nodes = node + 1
        self.n_entries = entry + 1
        return node

    def _end_run(self) -> None:
        """Another op is recorded: write out the logged rows, and the next 0-d op starts a
        new run."""
        if self.logged > 0:
            self.flush()
        self.logged = 0

    def flush(self) -> None:
        """Write the logged 0-d ops' rows out: their values to the arenas, their entry
        rows (the inputs' versions read now: an in-place write flushes first) and node
        rows, their shapes. Row by row for a few, with NumPy for many."""
        k = self.logged
        if k <= 0:
            return
        self.logged = 0  # (readers called below see nothing logged)
        node0 = self.n_nodes - k
        entry0 = self.n_entries - k
        if k <= _FLUSH_IN_PYTHON:
            entries, nodes, arenas, versions = self._entries, self._nodes, self._arenas, \
                self.versions
            for i, (code, in0, in1, value, c0, dtype_code) in enumerate(
                    _LOGGED.iter_unpack(memoryview(self.log)[:k * _LOG_BYTES])):
                offset = self.alloc(dtype_code, 1)
                arenas[dtype_code][offset] = value
                _ENTRY.pack_into(entries, (entry0 + i) * _ENTRY_BYTES, code, node0 + i, in0,
                                 in1, -1, 0, versions[in0] if in0 >= 0 else 0,
                                 versions[in1] if in1 >= 0 else 0, 0, 0, c0, 0.0)
                _NODE.pack_into(nodes, (node0 + i) * _NODE_BYTES, offset, 1, dtype_code, 1,
                                entry0 + i)
        else:
            self._flush_rows(k, node0, entry0)
        self._shapes.extend([_SCALAR] * k)

    def _flush_rows(self, k: int, node0: int, entry0: int) -> None:
        """``flush`` of many rows with NumPy, into the tables' rows in place."""
        log = np.frombuffer(self.log, _LOG_FIELDS, k)
        entries = np.frombuffer(self._entries, np.int64, k * E_WIDTH,
                                entry0 * _ENTRY_BYTES).reshape(k, E_WIDTH)
        consts = entries.view(np.float64)
        nodes = np.frombuffer(self._nodes, np.int64, k * N_WIDTH,
                              node0 * _NODE_BYTES).reshape(k, N_WIDTH)
        versions = np.frombuffer(self.versions, np.int64, self.n_nodes)
        entries[:] = 0  # meta[0] is 0: operands have the output's shape
        entries[:, E_OP] = log["code"]
        entries[:, E_OUT] = np.arange(node0, node0 + k)
        for k_in, name in ((0, "in0"), (1, "in1")):
            inputs = log[name]
            entries[:, E_IN0 + k_in] = inputs
            read = inputs >= 0
            entries[read, E_VER0 + k_in] = versions[inputs[read]]
        entries[:, E_IN0 + 2] = -1
        consts[:, E_C0] = log["c0"]
        values = log["value"]
        dtype_codes = log["dtype"]
        nodes[:] = _SCALAR_NODE
        n64 = int(np.count_nonzero(dtype_codes))
        for dtype_code, n in ((DTYPE_F32, k - n64), (DTYPE_F64, n64)):
            if not n:
                continue
            offset = self.alloc(dtype_code, n)
            slots = np.arange(offset, offset + n)
            if n == k:
                self._arenas[dtype_code][offset:offset + n] = values
                nodes[:, N_OFFSET] = slots
            else:
                rows = dtype_codes == dtype_code
                self._arenas[dtype_code][offset:offset + n] = values[rows]
                nodes[rows, N_OFFSET] = slots
        if n64:
            nodes[:, N_DTYPE] = dtype_codes
        nodes[:, N_ENTRY] = np.arange(entry0, entry0 + k)

    # the tables for readers outside the recording paths: the logged 0-d rows written out
    entries = _written_out("_entries", "n_entries", _ENTRY_BYTES)
    nodes = _written_out("_nodes", "n_nodes", _NODE_BYTES)
    shapes = _written_out("_shapes")
    arenas = _written_out("_arenas", values=True)

    def leaf_slot(self, node: int, size: int, dtype_code: int, requires_grad: bool) -> int:
        """The arena offset of ``node``'s value if it is a leaf's or a constant's node (no
        entry makes it) of ``size`` elements of ``dtype_code`` with that requires-grad
        flag, else -1. (Such a node's row is written when it is made, never logged.)"""
        offset, n, code, grad, entry = _NODE.unpack_from(self._nodes, node * _NODE_BYTES)
        if entry != -1 or n != size or code != dtype_code or grad != requires_grad:
            return -1
        return offset

    def sweep_tables(self, saves: np.ndarray) -> tuple:
        """What a reverse sweep reads, the logged 0-d rows written out first: entries,
        nodes, versions, live references, meta, the float32 and float64 arenas (with the
        deferred values that the entries read, per ``saves``, copied in)."""
        if self.logged > 0:
            self.flush()
        if self.deferred is not None:
            self.write_deferred(saves)
        return (memoryview(self._entries)[:self.n_entries * _ENTRY_BYTES],
                memoryview(self._nodes)[:self.n_nodes * _NODE_BYTES], self.versions,
                self.refs, self.meta, self._arenas[0], self._arenas[1])

    def adjoint_of(self, adjoints: list, node: int):
        """The adjoint of ``node`` in ``adjoints`` (a sweep's buffers, per dtype) handed
        out: a Python float for a 0-d value, else a new array (reusing a dropped gradient's
        memory when large)."""
        if self.logged > 0:
            self.flush()
        offset, size, dtype_code, _, _ = _NODE.unpack_from(self._nodes, node * _NODE_BYTES)
        shape = self._shapes[node]
        if not shape:
            return adjoints[dtype_code][offset].item()
        return self.copy_out(adjoints[dtype_code][offset:offset + size], shape)

    def entry_fields(self, entry: int) -> tuple:
        """The entry's row: (op, out, in0, in1, in2, meta, ver0, ver1, ver2, freed, c0, c1)."""
        if self.logged > 0:
            self.flush()
        return _ENTRY.unpack_from(self._entries, entry * _ENTRY_BYTES)

    def entry_field(self, entry: int, field: int) -> int:
        if self.logged > 0:
            self.flush()
        return _INT.unpack_from(self._entries, (entry * E_WIDTH + field) * 8)[0]

    def keep_overwritten_input(self, entry: int, old: int, new: int, values) -> None:
        """After an in-place write gave ``old``'s slot the values of ``new`` (made from
        ``old`` by ``entry``, which may read ``old``'s value): move ``old`` to ``new``'s
        slot, holding ``values`` (what ``old`` held), and ``new`` to the written slot. The
        entry accepts the version the write gave ``old``; older entries that saved it
        still fail their backward, as torch's."""
        if self.logged > 0:
            self.flush()
        self.node_view(new)[...] = values
        old_offset = self.node_field(old, N_OFFSET)
        self.set_node_field(old, N_OFFSET, self.node_field(new, N_OFFSET))
        self.set_node_field(new, N_OFFSET, old_offset)
        fields = self.entry_fields(entry)
        for k in range(3):
            if fields[E_IN0 + k] == old:
                _INT.pack_into(self._entries, (entry * E_WIDTH + E_VER0 + k) * 8,
                               self.versions[old])

    def free_entry(self, entry: int) -> None:
        if self.logged > 0:
            self.flush()
        _INT.pack_into(self._entries, (entry * E_WIDTH + E_FREED) * 8, 1)

    def entry_op(self, entry: int) -> int:
        return self.entry_field(entry, E_OP)

    def entry_out(self, entry: int) -> int:
        return self.entry_field(entry, E_OUT)

    def entry_meta(self, entry: int, count: int) -> list:
        offset = self.entry_field(entry, E_META)
        return list(self.meta[offset:offset + count])

    def add_index_meta(self, index: np.ndarray) -> int:
        """``add_meta([index.size, *index])`` for an integer array, without making Python
        ints of its elements."""
        raw = np.ascontiguousarray(index, np.int64).tobytes()
        offset = len(self.meta)
        try:
            self.meta.append(index.size)
            self.meta.frombytes(raw)
        except BufferError:
            self._unpin()
            del self.meta[offset:]
            self.meta.append(index.size)
            self.meta.frombytes(raw)
        return offset

    def add_meta(self, values) -> int:
        offset = len(self.meta)
        try:
            self.meta.extend(values)
        except BufferError:
            self._unpin()
            self.meta.extend(values)
        return offset

    def bump_version(self, node: int) -> None:
        """An in-place write to the node's value. The logged ops' rows are written out
        first: their inputs' versions are read then, and must be those of the recording."""
        if self.logged > 0:
            self.flush()
        self.versions[node] += 1

    def node_requires_grad(self, node: int) -> bool:
        return self.node_field(node, N_GRAD) != 0

    def node_entry(self, node: int) -> int:
        return self.node_field(node, N_ENTRY)

    def node_dtype(self, node: int) -> int:
        return self.node_field(node, N_DTYPE)

    def node_fields(self, node: int) -> tuple:
        """The node's row: (offset, size, dtype code, requires grad, producing entry)."""
        if self.logged > 0:
            self.flush()
        return _NODE.unpack_from(self._nodes, node * _NODE_BYTES)

    def node_location(self, node: int) -> tuple:
        """(offset, size, dtype code) of the node's value."""
        if self.logged > 0:
            self.flush()
        offset, size, dtype_code, _, _ = _NODE.unpack_from(self._nodes, node * _NODE_BYTES)
        return offset, size, dtype_code

    # -- lifetimes ----------------------------------------------------------------------
    def before_record(self) -> None:
        """Called before an op is recorded: start a new generation when nothing alive
        refers to a pending entry (never while ``holds``: code that keeps node ids)."""
        if self.holds:
            return
        if self.maybe_restart == _READY:
            self._restart_sized()
        elif (self.maybe_restart or self.n_entries >= self.next_check
              or self.used[0] + self.used[1] >= self.checks.values) and self.n_entries:
            dropped_only = (self.maybe_restart == _DROPPED and self.n_entries < self.next_check
                            and self.used[0] + self.used[1] < self.checks.values)
            self.maybe_restart = False
            if self._count_pending_alive() == 0:
                if dropped_only:
                    self._restart_sized()
                else:
                    self._restart()
            elif dropped_only:
                # a graph dropped while an older one stays alive (a tensor kept from an
                # earlier step): drop the dead rows now, while the next graph is not yet
                # recorded, instead of in the middle of it
                entries = self.n_entries
                if self._may_compact() and self.compact():
                    self.next_check = max(self.next_check, self.n_entries + 2 * entries)
                    # the next one when the tape has grown again (small graphs dropped
                    # one after another: a compaction per restart's worth of entries)
                    self.checks.drop_at = max(2 * self.n_entries,
                                              self.n_entries + _RESTART_ENTRIES)
                else:
                    self.checks.drop_at = 2 * self.n_entries
            elif not (self._may_compact() and self.compact()):
                self.next_check = self.checks.recheck_at = 2 * self.n_entries
                self.checks.values = 2 * (self.used[0] + self.used[1])

    def _restart_sized(self) -> None:
        """A restart after a graph was recorded whole, then differentiated or dropped (a
        training step, a chain read and forgotten, a forward-only loop that keeps nothing):
        the next graph is likely as large, and a periodic check inside it would find it all
        alive, so the next check waits for twice its size."""
        entries, values = self.n_entries, self.used[0] + self.used[1]
        self._restart()
        self.next_check = max(_CHECK_EVERY, 2 * entries)
        self.checks.values = max(_CHECK_VALUES, 2 * values)

    def newest_dropped(self) -> None:
        """The last tensor on the newest node died (called by ``Tensor.__del__``, which may
        run in the middle of a recording: only flags are set here). A graph dropped without
        a backward (a chain recorded, read and forgotten) then restarts the tape at the
        next recording instead of waiting for a periodic check to compact it."""
        if (not self.holds and not self.maybe_restart
                and self.n_entries >= self.checks.drop_at and self.restartable()):
            self.maybe_restart = _DROPPED

    def restartable(self) -> bool:
        """Whether a backward may restart the tape (small tapes keep growing: a restart
        costs more than the rows it saves), so the sweep must count what is pending."""
        return (self.n_entries > _RESTART_ENTRIES
                or self.used[0] + self.used[1] > _RESTART_VALUES)

    def after_backward(self, pending: int) -> None:
        """A backward without retain_graph freed its graph; ``pending``: live tensors still
        on unfreed entries. Small tapes keep growing (a restart costs more than the rows it
        saves); large ones restart at the next recording when nothing pending is alive."""
        if not self.restartable():
            return
        if not pending:
            self.maybe_restart = _READY
        elif self.n_entries >= self.checks.recheck_at:
            # the pending entries' tensors may die before the next op (a function's
            # temporaries): check then. Once a check finds one still alive, wait until the
            # tape doubles, so a pinned graph does not cost an O(tape) check per backward.
            self.maybe_restart = True

    def _count_pending_alive(self) -> int:
        """Live tensors referring to the output of an entry no backward has freed. The
        logged rows are not written out for this: every one is pending (a backward writes
        the log out first), so their live nodes count as they are."""
        logged = max(self.logged, 0)
        flushed = self.n_nodes - logged
        refs = self.refs
        count = 0
        if logged:
            view = np.frombuffer(refs, np.int64, logged, flushed * 8)
            count = int(np.count_nonzero(view > 0))
        if flushed <= 16:  # a few rows: read here, without a kernel call
            for node in range(flushed):
                if refs[node] > 0:
                    entry = _INT.unpack_from(self._nodes, (node * N_WIDTH + N_ENTRY) * 8)[0]
                    if entry >= 0 and _INT.unpack_from(
                            self._entries, (entry * E_WIDTH + E_FREED) * 8)[0] == 0:
                        count += 1
            return count
        from .kernels.sweep import count_pending_alive_on_tape

        entries = memoryview(self._entries)[:(self.n_entries - logged) * _ENTRY_BYTES]
        nodes = memoryview(self._nodes)[:flushed * _NODE_BYTES]
        return count + count_pending_alive_on_tape(entries, nodes, refs)

    def _may_compact(self) -> bool:
        """Whether nothing but tensors (and grad_fn objects) holds this generation's row
        numbers: no code that keeps node ids is running (``holds``: the engine, the
        function transforms, dual levels), no custom Function or tensor hook is recorded
        (their callbacks are keyed by node) and anomaly mode kept no traces."""
        # (getattr, not __dict__: reading an instance's __dict__ makes every later
        # attribute load on it a dictionary lookup)
        if self.holds or not self.compactable or getattr(self, "anomaly_traces", None):
            return False
        state = self.python_callbacks
        return state is None or state.generation != self.generation or not (
            state.functions or state.hooks)

    def compact(self) -> bool:
        """Keep only the rows a live tensor's backward can reach, renumbered in order, in a
        new generation, with their values packed into fresh arenas (tensors keep viewing
        the old ones, which hold the same values). Returns False, changing nothing, when
        the live rows are most of the tape. Tensors of the old generation move to their
        new rows when next used (``adopt``); the others read as graph-freed, as after a
        restart."""
        from .kernels.compact import gather_slots, live_subgraph

        entries, _, nodes, versions, refs, meta = self.tables()
        node_map, entry_map = live_subgraph(entries, nodes, refs)
        kept_nodes = np.flatnonzero(node_map >= 0)
        kept_entries = np.flatnonzero(entry_map >= 0)
        sizes = nodes[kept_nodes, N_SIZE]
        if (2 * kept_entries.shape[0] > self.n_entries
                and 2 * int(sizes.sum()) > self.used[0] + self.used[1]):
            return False
        new_entries = entries[kept_entries]
        for column in (E_OUT, E_IN0, E_IN0 + 1, E_IN0 + 2):
            new_entries[:, column] = _renumbered(new_entries[:, column], node_map)
        new_meta = self._compact_meta(entries[:, E_META], new_entries, meta)
        new_nodes = nodes[kept_nodes]
        new_nodes[:, N_ENTRY] = _renumbered(new_nodes[:, N_ENTRY], entry_map)
        for code in (DTYPE_F32, DTYPE_F64):
            rows = np.flatnonzero(new_nodes[:, N_DTYPE] == code)
            # in order of offset: packing then only moves values down (see gather_slots)
            rows = rows[np.argsort(new_nodes[rows, N_OFFSET], kind="stable")]
            offsets = new_nodes[rows, N_OFFSET]
            slot_sizes = new_nodes[rows, N_SIZE]
            ends = np.cumsum(slot_sizes)
            total = int(ends[-1]) if ends.shape[0] else 0
            arena = self._arenas[code]
            target = self._fresh_arena(code)
            if target.shape[0] < total:
                target = np.empty(max(2 * total, _INITIAL_ARENA), arena.dtype)
            gather_slots(arena, target, offsets, slot_sizes, ends - slot_sizes)
            new_nodes[rows, N_OFFSET] = ends - slot_sizes
            self._arenas[code] = target
            self.used[code] = total
        live = kept_nodes[refs[kept_nodes] > 0]
        self._carry(node_map, entry_map, live, nodes[live, N_ENTRY])
        self.generation += 1
        # the tables as new buffers, with room for as many rows again and the room a
        # restart would keep
        self.capacity = max(2 * max(new_entries.shape[0], new_nodes.shape[0]),
                            self._room(max(self.n_entries, self.n_nodes)))
        self._entries = _with_room(new_entries, self.capacity * _ENTRY_BYTES)
        self._nodes = _with_room(new_nodes, self.capacity * _NODE_BYTES)
        self.versions = _with_room(versions[kept_nodes], self.capacity, "q")
        self.refs = _with_room(refs[kept_nodes], self.capacity, "q")
        self.meta = array("q", new_meta.tobytes())
        shapes = self._shapes
        self._shapes = [shapes[node] for node in kept_nodes.tolist()]
        self.leaves = {int(node_map[node]): t for node, t in self.leaves.items()
                       if node_map[node] >= 0}
        self.retained = {int(node_map[node]): t for node, t in self.retained.items()
                         if node_map[node] >= 0}
        self.names = {int(entry_map[entry]): name for entry, name in self.names.items()
                      if entry_map[entry] >= 0}
        self.n_entries = kept_entries.shape[0]
        self.n_nodes = kept_nodes.shape[0]
        values = self.used[0] + self.used[1]
        # the next check when the tape has grown by a check's worth, and at least doubled:
        # a compaction costs the rows it keeps, so a large live graph is compacted rarely
        self.next_check = self.checks.recheck_at = max(self.n_entries + _CHECK_EVERY,
                                                2 * self.n_entries)
        self.checks.values = max(values + _CHECK_VALUES, 2 * values)
        # the rows kept are live now: a graph among them dropped next (the chain being
        # recorded) restarts the tape at once, as on a tape that never compacted
        self.checks.drop_at = 0
        self.maybe_restart = False
        self.second_order_scratch = None
        return True

    @staticmethod
    def _compact_meta(offsets, new_entries, meta) -> np.ndarray:
        """The meta rows of the kept entries, packed after the shared zero; rewrites the
        kept entries' meta offsets. An entry's rows run to the next offset any entry
        uses."""
        starts = np.unique(offsets[offsets > 0])
        ends = np.append(starts[1:], meta.shape[0])
        kept = new_entries[:, E_META]
        used = np.unique(kept[kept > 0])
        lengths = ends[np.searchsorted(starts, used)] - used
        new_starts = 1 + np.cumsum(lengths) - lengths
        packed = np.zeros(1 + int(lengths.sum()), np.int64)
        if used.shape[0]:
            from .kernels.compact import gather_slots

            gather_slots(meta, packed, used, lengths, new_starts)
            new_entries[:, E_META] = np.where(
                kept > 0, new_starts[np.minimum(np.searchsorted(used, kept),
                                                used.shape[0] - 1)], 0)
        return packed

    def _carry(self, node_map, entry_map, live, producers) -> None:
        """Where the tensors of this generation (and those carried before) will find their
        rows after a compaction; rows it drops are forgotten (their tensors read as
        graph-freed)."""
        self.carried = _carried(self.carried, node_map, self.generation, live)
        self.carried_entries = _carried(self.carried_entries, entry_map, self.generation,
                                        producers[producers >= 0])

    def adopt(self, t) -> bool:
        """Whether tensor ``t`` of this tape has a row in the current generation, moving it
        (and its storage) to the row a compaction carried it to."""
        generation = self.generation
        if t._gen == generation:
            return True
        carried = self.carried
        if carried is None or t._node < 0:
            return False
        node = carried.get((t._gen, t._node))
        if node is None:
            return False
        storage = t._storage
        if (storage is not None and storage.tape is self and storage.generation == t._gen
                and storage.node == t._node):
            storage.generation = generation
            storage.node = node
        t._gen = generation
        t._node = node
        return True

    def adopt_storage(self, storage) -> None:
        """Move a storage's node (a version counter's mirror) to its carried row."""
        if self.carried is not None and storage.generation != self.generation:
            node = self.carried.get((storage.generation, storage.node))
            if node is not None:
                storage.generation = self.generation
                storage.node = node

    def current_entry(self, entry: int, generation: int) -> int:
        """``entry`` of ``generation`` in the current generation, or -1 when it is gone."""
        if generation == self.generation:
            return entry
        if self.carried_entries is None:
            return -1
        return self.carried_entries.get((generation, entry), -1)

    def _restart(self) -> None:
        self.generation += 1
        # carried tensors still alive refer to freed entries or are leaves: graph-freed (and
        # forgotten first: dropping the leaves below runs __del__ of older tensors)
        self.carried = self.carried_entries = None
        self.maybe_restart = False
        self.deferred = None  # values of the generation that ends
        room = self._room(max(self.n_entries, self.n_nodes))
        if room != self.capacity:  # room for a far larger graph
            self.capacity = room
            self._entries = bytearray(self.capacity * _ENTRY_BYTES)
            self._nodes = bytearray(self.capacity * _NODE_BYTES)
            self.versions = _with_room(b"", self.capacity, "q")
            self.refs = _with_room(b"", self.capacity, "q")
        try:  # emptied in place: no new buffer (unless a view of it is still alive)
            del self.meta[1:]
        except BufferError:
            self.meta = array("q", [0])
        self._shapes = []
        self.logged = 0  # rows of the generation that ends
        self.n_entries = self.n_nodes = 0
        self.next_check = _CHECK_EVERY
        self.checks.reset()
        self.leaves.clear()
        self.retained.clear()
        self.names.clear()
        for code in (DTYPE_F32, DTYPE_F64):
            if self.used[code]:
                self._arenas[code] = self._fresh_arena(code)
            self.used[code] = 0

    def _fresh_arena(self, code: int) -> np.ndarray:
        """An arena no tensor views: the current one if none does, else a spare whose only
        references are ours, else a new one. Reusing one avoids the page faults of touching
        fresh memory every step (and the current one is likely still in cache)."""
        current = self._arenas[code]
        # references: the list, the local, getrefcount's argument
        if sys.getrefcount(current) <= 3:
            return current  # nothing views it: the memory most recently touched
        spares = self.pools.arenas[code]
        for i in range(len(spares)):
            spare = spares[i]
            # references: the list, the local, getrefcount's argument (an enumerate()
            # would hold one more in its result tuple: no spare would ever qualify)
            if sys.getrefcount(spare) <= 3 and spare.shape[0] >= current.shape[0] // 2:
                spares[i] = current
                return spare
        spares.append(current)
        if len(spares) > 2:
            spares.pop(0)
        return np.empty(current.shape[0], current.dtype)

    def copy_out(self, values: np.ndarray, shape: tuple) -> np.ndarray:
        """A new array holding ``values`` (a gradient handed to the user). A large one
        reuses the memory of an earlier one that nobody refers to any more (``x.grad =
        None`` each step): fresh memory would cost its page faults again every step."""
        size = values.shape[0]
        if size < _REUSE_SIZE:
            return values.reshape(shape).copy()
        pool = self.pools.gradients
        for i in range(len(pool)):
            old = pool[i]
            # references: the list, the local, getrefcount's argument
            if sys.getrefcount(old) <= 3 and old.shape[0] == size and old.dtype == values.dtype:
                np.copyto(old, values)
                return old.reshape(shape)
        result = values.copy()
        pool.append(result)
        if len(pool) > 4:
            pool.pop(0)
        return result.reshape(shape)

    def release(self, node: int, generation: int) -> None:
        """A tensor referring to ``node`` died."""
        if generation == self.generation:
            self.refs[node] -= 1
        elif self.carried is not None:
            node = self.carried.get((generation, node), -1)
            if node >= 0:
                self.refs[node] -= 1

    def add_ref(self, node: int) -> None:
        self.refs[node] += 1

    def tables(self):
        """NumPy views for a sweep: entries (int64 rows), the same rows as float64 (for the
        constants), nodes, versions, live references (their rows in use), meta. Drop them
        before the next append: ``meta`` cannot grow while a view of it is alive."""
        if self.logged > 0:
            self.flush()
        if self.deferred is not None:
            self.write_deferred()
        n_entries, n_nodes = self.n_entries, self.n_nodes
        width = n_entries * E_WIDTH
        entries = np.frombuffer(self._entries, np.int64, width) if n_entries else _EMPTY_INT
        consts = np.frombuffer(self._entries, np.float64, width) if n_entries else _EMPTY_FLOAT
        nodes = (np.frombuffer(self._nodes, np.int64, n_nodes * N_WIDTH) if n_nodes
                 else _EMPTY_INT)
        return (entries.reshape(n_entries, E_WIDTH), consts.reshape(n_entries, E_WIDTH),
                nodes.reshape(n_nodes, N_WIDTH),
                np.frombuffer(self.versions, np.int64, n_nodes) if n_nodes else _EMPTY_INT,
                np.frombuffer(self.refs, np.int64, n_nodes) if n_nodes else _EMPTY_INT,
                np.frombuffer(self.meta, np.int64) if len(self.meta) else _EMPTY_META)


def _renumbered(ids: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    """Row numbers through a compaction's ``mapping``; negative ones (none) stay."""
    return np.where(ids >= 0, mapping[np.maximum(ids, 0)], ids)


def _carried(before: dict | None, mapping: np.ndarray, generation: int,
             rows: np.ndarray) -> dict | None:
    """A forwarding map after a compaction: the keys carried before, moved on through
    ``mapping`` (dropped where their row was), and ``(generation, row)`` of ``rows``."""
    carried = {}
    for key, row in (before or {}).items():
        moved = int(mapping[row])
        if moved >= 0:
            carried[key] = moved
    for row, moved in zip(rows.tolist(), mapping[rows].tolist()):
        if moved >= 0:
            carried[(generation, row)] = moved
    return carried or None


_EMPTY_INT = np.zeros(0, np.int64)
_EMPTY_FLOAT = np.zeros(0, np.float64)
_EMPTY_META = np.zeros(1, np.int64)
_ = (E_META, N_OFFSET, N_SIZE)


class _ThreadState(threading.local):
    def __init__(self) -> None:
        self.tape = Tape()  # with the thread's grad mode: one thread-local read gives both


_state = _ThreadState()


def current_tape() -> Tape:
    return _state.tape


def is_grad_enabled() -> bool:
    return _state.tape.grad_enabled


def _set_grad_enabled(mode: bool) -> None:
    _state.tape.grad_enabled = bool(mode)


def thread_state() -> _ThreadState:
    return _state
