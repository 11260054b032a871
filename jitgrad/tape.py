"""The flat tape: one per thread, with grad mode.

Every recorded op appends one row to the entry table, one row to the node table for its
output, and writes its output's values into the value arena of its dtype. The arenas are
flat NumPy buffers; a recorded tensor's data is a view into them, so the Numba sweeps reach
every value by offset with no Python per node. Rows are appended to ``array.array`` buffers
(cheap appends) and seen by the kernels as NumPy views of those buffers, made per sweep.

Lifetimes: a tape has a generation number. When no live tensor refers to an entry that is
still pending (not freed by a backward), the next recording starts a new generation: the
tables restart at row 0 and the arenas are swapped for ones no tensor views. Tensors of an
old generation keep their data (their arena stays alive through their views) and read as
graph-freed. This keeps training loops and forgotten-``no_grad`` inference in constant
memory.
"""
from __future__ import annotations

import sys
import threading
from array import array

import numpy as np

from .kernels.layout import (
    C_WIDTH, DTYPE_F32, DTYPE_F64, E_FREED, E_OUT, E_WIDTH, N_DTYPE, N_ENTRY, N_GRAD, N_OFFSET,
    N_REFS, N_SIZE, N_VERSION, N_WIDTH,
)

_ARENA_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_INITIAL_ARENA = 1 << 12
_CHECK_EVERY = 1 << 14  # entries between liveness checks when no backward ran


class Tape:
    """Flat tables of one thread's recorded ops (see the module docstring)."""

    def __init__(self) -> None:
        self.generation = 0
        self.entries = array("q")
        self.consts = array("d")
        self.nodes = array("q")
        self.meta = array("q")
        self.shapes: list[tuple] = []  # node -> shape, for the create_graph sweep and grad_fn
        self.n_entries = 0
        self.n_nodes = 0
        self.arenas = [np.empty(_INITIAL_ARENA, d) for d in _ARENA_DTYPES]
        self.used = [0, 0]
        self.spare_arenas: list[list[np.ndarray]] = [[], []]
        self.leaves: dict[int, object] = {}    # node -> leaf Tensor that accumulates .grad
        self.retained: dict[int, object] = {}  # node -> non-leaf Tensor with retain_grad()
        self.maybe_restart = False
        self.next_check = _CHECK_EVERY

    # -- values -------------------------------------------------------------------------
    def alloc(self, dtype_code: int, size: int) -> int:
        """Reserve ``size`` elements in an arena; returns their offset."""
        offset = self.used[dtype_code]
        end = offset + size
        arena = self.arenas[dtype_code]
        if end > arena.shape[0]:
            grown = np.empty(max(2 * arena.shape[0], 2 * end), arena.dtype)
            # views made before keep the old buffer alive; values are the same
            grown[:offset] = arena[:offset]
            self.arenas[dtype_code] = grown
        self.used[dtype_code] = end
        return offset

    def new_node(self, dtype_code: int, shape: tuple, size: int, requires_grad: bool,
                 entry: int) -> int:
        node = self.n_nodes
        self.shapes.append(shape)
        self.nodes.extend((self.alloc(dtype_code, size), size, dtype_code,
                           1 if requires_grad else 0, entry, 0, 1))
        self.n_nodes = node + 1
        return node

    def node_view(self, node: int) -> np.ndarray:
        """The node's value: a view into the current arena."""
        row = node * N_WIDTH
        offset = self.nodes[row + N_OFFSET]
        arena = self.arenas[self.nodes[row + N_DTYPE]]
        return arena[offset:offset + self.nodes[row + N_SIZE]].reshape(self.shapes[node])

    # -- entries ------------------------------------------------------------------------
    def record(self, code: int, out: int, in0: int, in1: int, in2: int, meta: int,
               c0: float = 0.0, c1: float = 0.0) -> int:
        entry = self.n_entries
        nodes = self.nodes
        self.entries.extend((
            code, out, in0, in1, in2, meta,
            nodes[in0 * N_WIDTH + N_VERSION] if in0 >= 0 else 0,
            nodes[in1 * N_WIDTH + N_VERSION] if in1 >= 0 else 0,
            nodes[in2 * N_WIDTH + N_VERSION] if in2 >= 0 else 0,
            0,
        ))
        self.consts.extend((c0, c1))
        nodes[out * N_WIDTH + N_ENTRY] = entry
        self.n_entries = entry + 1
        return entry

    def add_meta(self, values) -> int:
        offset = len(self.meta)
        self.meta.extend(values)
        return offset

    def bump_version(self, node: int) -> None:
        self.nodes[node * N_WIDTH + N_VERSION] += 1

    def entry_freed(self, entry: int) -> bool:
        return self.entries[entry * E_WIDTH + E_FREED] != 0

    # -- lifetimes ----------------------------------------------------------------------
    def before_record(self) -> None:
        """Called before an op is recorded: start a new generation when nothing alive
        refers to a pending entry."""
        if (self.maybe_restart or self.n_entries >= self.next_check) and self.n_entries:
            self.maybe_restart = False
            if self._nothing_pending_alive():
                self._restart()
            else:
                self.next_check = 2 * self.n_entries

    def _nothing_pending_alive(self) -> bool:
        nodes = np.frombuffer(self.nodes, np.int64).reshape(-1, N_WIDTH)
        entries = np.frombuffer(self.entries, np.int64).reshape(-1, E_WIDTH)
        try:
            live = nodes[:, N_REFS] > 0
            produced = nodes[:, N_ENTRY]
            pending = (produced >= 0) & (entries[np.maximum(produced, 0), E_FREED] == 0)
            return not bool(np.any(live & pending))
        finally:
            del nodes, entries, live, produced, pending

    def _restart(self) -> None:
        self.generation += 1
        for buf in (self.entries, self.consts, self.nodes, self.meta):
            del buf[:]
        self.shapes = []
        self.n_entries = self.n_nodes = 0
        self.next_check = _CHECK_EVERY
        self.leaves.clear()
        self.retained.clear()
        for code in (DTYPE_F32, DTYPE_F64):
            if self.used[code]:
                self.arenas[code] = self._fresh_arena(code)
            self.used[code] = 0

    def _fresh_arena(self, code: int) -> np.ndarray:
        """An arena no tensor views: a spare whose only references are ours, or a new one.
        Reusing one avoids the page faults of touching fresh memory every step."""
        current = self.arenas[code]
        spares = self.spare_arenas[code]
        for i, spare in enumerate(spares):
            # references: the list, the loop variable, getrefcount's argument
            if sys.getrefcount(spare) <= 3 and spare.shape[0] >= current.shape[0] // 2:
                spares[i] = current
                return spare
        spares.append(current)
        if len(spares) > 2:
            spares.pop(0)
        return np.empty(current.shape[0], current.dtype)

    def release(self, node: int, generation: int) -> None:
        """A tensor referring to ``node`` died."""
        if generation == self.generation:
            self.nodes[node * N_WIDTH + N_REFS] -= 1

    def add_ref(self, node: int) -> None:
        self.nodes[node * N_WIDTH + N_REFS] += 1

    def tables(self):
        """NumPy views of the tables for a sweep. Drop them before the next append."""
        return (np.frombuffer(self.entries, np.int64).reshape(-1, E_WIDTH),
                np.frombuffer(self.consts, np.float64).reshape(-1, C_WIDTH),
                np.frombuffer(self.nodes, np.int64).reshape(-1, N_WIDTH),
                np.frombuffer(self.meta, np.int64) if len(self.meta) else _EMPTY_META)

    def node_requires_grad(self, node: int) -> bool:
        return self.nodes[node * N_WIDTH + N_GRAD] != 0

    def node_entry(self, node: int) -> int:
        return self.nodes[node * N_WIDTH + N_ENTRY]

    def entry_row(self, entry: int):
        base = entry * E_WIDTH
        return self.entries[base:base + E_WIDTH]

    def entry_out(self, entry: int) -> int:
        return self.entries[entry * E_WIDTH + E_OUT]


_EMPTY_META = np.zeros(1, np.int64)


class _ThreadState(threading.local):
    def __init__(self) -> None:
        self.grad_enabled = True
        self.tape = Tape()


_state = _ThreadState()


def current_tape() -> Tape:
    return _state.tape


def is_grad_enabled() -> bool:
    return _state.grad_enabled


def _set_grad_enabled(mode: bool) -> None:
    _state.grad_enabled = bool(mode)


def thread_state() -> _ThreadState:
    return _state
