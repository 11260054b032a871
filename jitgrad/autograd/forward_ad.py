"""Forward-mode AD, as ``torch.autograd.forward_ad``: dual tensors, levels, tangents.

A dual tensor is an ordinary recorded tensor: ``make_dual`` records an alias of the primal
on the tape and remembers the tangent as the seed of that node at the current level. Ops on
dual tensors are recorded as usual (so the primal values exist on the tape), and a tangent
is computed when it is asked for (``unpack_dual``) by sweeping the entries recorded since
the level began:

* **numerically**, by the Numba tangent sweep (:mod:`jitgrad.kernels.tangent`) when nothing
  needs to differentiate the tangent again (the common case, and what ``jvp`` uses);
* **differentiably**, by evaluating the same tangent rules with jitgrad ops, so the tangent
  is itself recorded on the tape, when the level is nested inside another level (or inside
  a ``jitgrad.func`` transform, or a seed requires grad). The enclosing level's sweep then
  goes through those recorded tangents: forward-over-forward gives second derivatives.

Levels are tagged: each level seeds only its own duals, so perturbations of different
levels never mix (the perturbation confusion ForwardDiff's tags exist to prevent).

>>> import jitgrad as torch
>>> import jitgrad.autograd.forward_ad as fwAD
>>> x = torch.tensor([1.0, 2.0])
>>> with fwAD.dual_level():
...     y = fwAD.make_dual(x, torch.tensor([1.0, 0.0])) ** 2
...     fwAD.unpack_dual(y).tangent
tensor([2., 0.])
"""
from __future__ import annotations

import threading
from collections import namedtuple

import numpy as np

from .. import functions as F
from .._dtype import float32
from ..kernels.layout import E_C0, E_C1, E_IN0, E_META, E_OP, E_OUT, E_VER0, SWEEP_SCRATCH
from ..ops.registry import (
    BY_NAME,
    CAST,
    ELEMENTWISE,
    GATHER,
    MATMUL,
    OPS,
    PLACE,
    PYTHON,
    REDUCE,
    RESTRIDE,
    SCATTER,
)
from ..recording import node_of
from ..tape import _state
from ..tensor import Tensor
from . import rules

__all__ = ["UnpackedDualTensor", "dual_level", "enter_dual_level", "exit_dual_level",
           "make_dual", "unpack_dual"]

UnpackedDualTensor = namedtuple("UnpackedDualTensor", ["primal", "tangent"])

_ALIAS = BY_NAME["alias"].code
_SEED = 2  # kernels.tangent.SEED, without importing the kernels at import time


class _LevelState(threading.local):
    def __init__(self) -> None:
        self.levels: list[_Level] = []
        self.transform_depth = 0  # jitgrad.func transforms being evaluated


_local = _LevelState()


def transform_depth() -> int:
    """How many ``jitgrad.func`` transforms enclose the current code."""
    return _local.transform_depth


class _TransformScope:
    """Marks code run inside a ``jitgrad.func`` transform: levels made there are
    differentiable, since the enclosing transform differentiates their results."""

    def __enter__(self):
        _local.transform_depth += 1
        return self

    def __exit__(self, *exc) -> None:
        _local.transform_depth -= 1


transform_scope = _TransformScope


class _Level:
    """One dual level: its seeds and the tangents computed so far."""

    def __init__(self, index: int, differentiable: bool) -> None:
        self.index = index
        self.differentiable = differentiable
        self.tape = None
        self.generation = -1
        self.start = 0                  # first entry that can carry this level's tangents
        self.seeds: dict[int, Tensor | None] = {}   # node -> tangent (None: zero, a cut)
        self.seed_tensors: list[Tensor] = []        # keeps the dual nodes alive
        # numeric sweep: buffers laid out like the arenas, swept up to entry `done`
        self.tangents: list[np.ndarray] | None = None
        self.active: np.ndarray | None = None
        self.seeded: set[int] = set()
        self.done = 0
        # differentiable evaluation: node -> tangent Tensor
        self.symbolic: dict[int, Tensor] = {}
        self.symbolic_done = 0

    # -- bookkeeping --------------------------------------------------------------------------
    def attach(self, tape) -> None:
        """Bind the level to the tape at its first dual."""
        if self.tape is None or self.generation != tape.generation:
            if self.seeds:
                raise RuntimeError(_RESTARTED)
            self.tape = tape
            self.generation = tape.generation
            self.start = self.done = self.symbolic_done = tape.n_entries

    def check(self) -> None:
        if self.tape is not None and self.generation != self.tape.generation:
            raise RuntimeError(_RESTARTED)

    def tangent_of(self, node: int):
        """The tangent of ``node`` at this level: a Tensor, or None when it has none."""
        self.check()
        if node in self.seeds:
            return self.seeds[node]
        if self.tape is None or node < 0:
            return None
        entry = self.tape.node_entry(node)
        if entry < self.start:
            return None
        if self.differentiable:
            self._evaluate_to(self.tape.n_entries)
            return self.symbolic.get(node)
        self._sweep_to(self.tape.n_entries)
        return self._numeric(node)

    # -- numeric: the Numba sweep ---------------------------------------------------------------
    def _sweep_to(self, stop: int) -> None:
        tape = self.tape
        self.tangents, self.active = _grown(tape, self.tangents, self.active, 1)
        for node, tangent in self.seeds.items():
            if node not in self.seeded:
                _write_seed(tape, self.tangents, self.active, node, tangent, 0)
                self.seeded.add(node)
        if self.done < stop:
            run_tangent_sweep(tape, self.tangents, self.active, self.done, stop)
            self.done = stop

    def _numeric(self, node: int):
        if node >= self.active.shape[0] or not self.active[node]:
            return None
        return _read_tangent(self.tape, self.tangents, node, 0)

    # -- differentiable: the same rules, evaluated with recorded ops ------------------------------
    def _evaluate_to(self, stop: int) -> None:
        if self.symbolic_done >= stop:
            return
        start = self.symbolic_done
        tangents = self.symbolic
        for node, tangent in self.seeds.items():
            tangents.setdefault(node, tangent)
        from .grad_mode import enable_grad

        with enable_grad():
            evaluate_tangents(self.tape, start, stop, tangents, set(self.seeds))
        # the entries just recorded compute this level's tangents: they carry none of it
        self.symbolic_done = self.tape.n_entries


_RESTARTED = ("the tape of this dual level was restarted (a backward without retain_graph "
              "freed the graph holding its dual tensors); make the duals again inside the "
              "level, or pass retain_graph=True")


# -- tangent buffers --------------------------------------------------------------------------
def new_buffers(tape, k: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Tangent buffers for ``k`` directions, laid out like the tape's arenas (their contents
    are garbage: the sweep zeroes a node's tangent when it first writes it), and the
    per-node activity flags (all inactive)."""
    return ([np.empty((k, tape.used[0]), np.float32), np.empty((k, tape.used[1]), np.float64)],
            np.zeros(tape.n_nodes, np.uint8))


class borrowed_buffers:  # noqa: N801 - used as a function in a with statement
    """Tangent buffers for ``k`` directions lent from the tape's pool: touching fresh
    memory on every jvp would cost more page faults than the sweep costs work. Only the
    one-direction buffers (jvp, hvp) are kept between calls, as large as the arenas."""

    def __init__(self, tape, k: int) -> None:
        self.tape, self.k = tape, k

    def __enter__(self):
        pool = self.tape.__dict__.setdefault("tangent_pool", {})
        cached = pool.pop(self.k, None)
        used = self.tape.used
        if cached is None or any(b.shape[1] < used[code] + SWEEP_SCRATCH
                                 for code, b in enumerate(cached)):
            # room after the arena's columns for the fused sweep's scratch slots
            cached = [np.empty((self.k, max(used[code], 1) * 5 // 4 + SWEEP_SCRATCH), dtype)
                      for code, dtype in enumerate((np.float32, np.float64))]
        self.buffers = cached
        return cached, np.zeros(self.tape.n_nodes, np.uint8)

    def __exit__(self, *exc) -> None:
        if self.k == 1:
            self.tape.__dict__.setdefault("tangent_pool", {})[1] = self.buffers


def _grown(tape, tangents, active, k: int):
    if tangents is None:
        return new_buffers(tape, k)
    grown = []
    for code, buffer in enumerate(tangents):
        if buffer.shape[1] < tape.used[code]:
            bigger = np.empty((buffer.shape[0], tape.used[code]), buffer.dtype)
            bigger[:, :buffer.shape[1]] = buffer
            buffer = bigger
        grown.append(buffer)
    if active.shape[0] < tape.n_nodes:
        bigger = np.zeros(tape.n_nodes, np.uint8)
        bigger[:active.shape[0]] = active
        active = bigger
    return grown, active


def _write_seed(tape, tangents, active, node: int, tangent, row: int) -> None:
    offset, size, code = tape.node_location(node)
    slot = tangents[code][row, offset:offset + size]
    if tangent is None:
        slot[...] = 0.0
    else:
        slot[...] = np.asarray(tangent._value()).reshape(-1)
    active[node] = _SEED


def _read_tangent(tape, tangents, node: int, row: int) -> Tensor:
    offset, size, code = tape.node_location(node)
    shape = tape.shapes[node]
    d = float32 if code == 0 else F.dt.float64
    if not shape:
        return F._scalar_tensor(tangents[code][row, offset].item(), d)
    return Tensor._wrap(tape.copy_out(tangents[code][row, offset:offset + size], shape), d)


_kinds = None


def _kinds_table() -> np.ndarray:
    global _kinds
    if _kinds is None or _kinds.shape[0] != len(OPS):
        _kinds = np.array([op.kind for op in OPS], np.int64)
    return _kinds


def run_tangent_sweep(tape, tangents, active, start: int, stop: int,
                      keep: list | None = None) -> None:
    """Numba tangent sweep over entries ``[start, stop)``, handing custom Functions' entries
    to their ``jvp`` in Python. ``keep``: the only nodes whose tangents the caller reads
    afterwards (None: any); given, large elementwise runs are swept block by block and the
    other tangents may be left out of the buffers."""
    from ..kernels.tangent import tangent_sweep, tangent_sweep_fused

    kinds = _kinds_table()
    if keep is not None:
        kept = np.zeros(tape.n_nodes, np.uint8)
        for node in keep:
            if node >= 0:
                kept[node] = 1
    e = start
    while e < stop:
        entries, consts, nodes, versions, _, meta = tape.tables()
        try:
            reuse = _reusable_partials(entries, versions, start, stop)
            if keep is None:
                e = tangent_sweep(entries, consts, nodes, meta, tape.arenas[0], tape.arenas[1],
                                  tangents[0], tangents[1], e, stop, kinds, active, reuse)
            else:
                e = tangent_sweep_fused(entries, consts, nodes, meta, tape.arenas[0],
                                        tape.arenas[1], tangents[0], tangents[1], e, stop,
                                        kinds, active, reuse, kept)
        finally:
            del entries, consts, nodes, versions, meta
        if e < stop:
            from .function import numeric_jvp

            e = numeric_jvp(tape, e, tangents, active)


_NO_REUSE = np.zeros(0, np.int64)
_partial_ops = None


def _partial_ops_table() -> tuple[dict, np.ndarray, np.ndarray]:
    """Unary elementwise ops whose partial is another unary op of the input, read off the
    declarations: sin's ``cos(x)`` is op cos, cos's ``-sin(x)`` is minus op sin."""
    global _partial_ops
    if _partial_ops is None:
        import ast

        found = {}
        for op in OPS:
            if op.kind != ELEMENTWISE or op.arity != 1 or op.partials[0] is None:
                continue
            tree = ast.parse(op.partials[0], mode="eval").body
            negated = isinstance(tree, ast.UnaryOp) and isinstance(tree.op, ast.USub)
            call = tree.operand if negated else tree
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
                    and len(call.args) == 1 and isinstance(call.args[0], ast.Name)
                    and call.args[0].id == "x"):
                continue
            source = BY_NAME.get(call.func.id)
            if (source is not None and source.kind == ELEMENTWISE and source.arity == 1
                    and source.forward == f"{call.func.id}(x)"):
                found[op.code] = (source.code, int(negated))
        # lookup tables by opcode (cheaper than np.isin on every sweep)
        wants = np.zeros(len(OPS) + 1, bool)
        wants[list(found)] = True
        sources = np.zeros(len(OPS) + 1, bool)
        sources[[code for code, _ in found.values()]] = True
        _partial_ops = (found, wants, sources)
    return _partial_ops


def _reusable_partials(entries, versions, start: int, stop: int) -> np.ndarray:
    """Per entry of ``[0, stop)``: the node holding its partial already (see
    ``kernels.tangent``), -1 where there is none; empty when no entry has one."""
    found, wants, sources = _partial_ops_table()
    ops = entries[:stop, E_OP]
    if ops.size and ops.max() >= wants.shape[0]:  # ops registered since the table was made
        return _NO_REUSE
    wanting = np.flatnonzero(wants[ops[start:stop]]) + start
    if not wanting.size:
        return _NO_REUSE
    computed = {}
    for e in np.flatnonzero(sources[ops]):
        out = entries[e, E_OUT]
        if versions[out] == 0:  # its value was not overwritten in place since
            computed[(ops[e], entries[e, E_IN0], entries[e, E_VER0])] = out
    reuse = np.full(stop, -1, np.int64)
    for e in wanting:
        source, negated = found[ops[e]]
        node = computed.get((source, entries[e, E_IN0], entries[e, E_VER0]))
        if node is not None:
            reuse[e] = 2 * node + negated
    return reuse


# -- the differentiable evaluation -------------------------------------------------------------
def _active_inputs(inputs, tangents) -> list:
    return [tangents.get(node) if node >= 0 else None for node in inputs]


def evaluate_tangents(tape, start: int, stop: int, tangents: dict, seeds: set) -> None:
    """Tangents of the outputs of entries ``[start, stop)`` as recorded jitgrad ops, from the
    tangents already in ``tangents`` (node -> Tensor); entries writing a seed are skipped."""
    e = start
    while e < stop:
        row = tape.entry_fields(e)
        out = row[E_OUT]
        op = OPS[row[E_OP]]
        if op.kind == PYTHON:
            from .function import symbolic_jvp

            e = symbolic_jvp(tape, e, tangents, seeds)
            continue
        e += 1
        if out in seeds:
            continue
        inputs = [row[E_IN0 + k] for k in range(op.arity)]
        ins = _active_inputs(inputs, tangents)
        if all(t is None for t in ins):
            continue
        contribution = _jvp(tape, op, row, inputs, ins, out)
        if contribution is None:
            continue
        previous = tangents.get(out)
        tangents[out] = contribution if previous is None else previous + contribution


def _jvp(tape, op, row, inputs, ins, out) -> Tensor | None:
    """The entry's tangent contribution to its output, evaluated with jitgrad ops."""
    kind = op.kind
    c0, c1 = row[E_C0], row[E_C1]
    out_shape = tuple(tape.shapes[out])
    if kind == ELEMENTWISE:
        env = {"c0": c0, "c1": c1}
        for name, node in zip(op.inputs, inputs):
            if node >= 0:
                env[name] = rules._node_tensor(tape, node)
        if "y" in op.saves:
            env["y"] = rules._node_tensor(tape, out)
        total = None
        for t, partial in zip(ins, op.partials):
            if t is None or partial is None:
                continue
            term = rules._evaluate(partial, env) * t
            if tuple(term.shape) != out_shape:
                term = F.expand(term, *out_shape)
            total = term if total is None else total + term
        return total
    tx = ins[0]
    if kind == REDUCE:
        x, keep, env = rules.reduction_env(tape, op, row, inputs[0], out, c0, c1)
        term = rules._evaluate(op.partials[0], env) * tx
        if tuple(term.shape) != tuple(x.shape):
            term = F.expand(term, *x.shape)
        dims = tuple(d for d, size in enumerate(keep) if size == 1)
        reduced = F.sum(term, dim=dims, keepdim=True) if dims else term
        return F.reshape(reduced, *out_shape)
    if kind == MATMUL:
        from ..kernels.generate_tangent import matmul_tangents

        batch, batch_a, batch_b, rows, inner, cols = rules._meta(tape, row, 6)
        a = F.reshape(rules._node_tensor(tape, inputs[0]), batch_a, rows, inner)
        b_dims = (cols, inner) if op.transposed_b else (inner, cols)
        b = F.reshape(rules._node_tensor(tape, inputs[1]), batch_b, *b_dims)
        total = None
        for k, (t, jvp) in enumerate(zip(ins, matmul_tangents(op))):
            if t is None:
                continue
            shape = ((batch_a, rows, inner), (batch_b, *b_dims), (1, 1, cols))[k]
            term = rules._evaluate(jvp, {"a": a, "b": b, "t": F.reshape(t, *shape)})
            total = term if total is None else total + term
        if tuple(total.shape) != (batch, rows, cols):  # the bias row's term alone
            total = F.expand(total, batch, rows, cols)
        return F.reshape(total, *out_shape)
    if kind in (RESTRIDE, PLACE):
        ndim = tape.meta[row[E_META]]
        region = rules._meta(tape, row, 2 + 2 * ndim)
        if kind == RESTRIDE:  # y = strided read of x
            return rules._restride(tx, region)
        return rules._place(tx, out_shape, region)  # y[region] += x
    if kind in (GATHER, SCATTER):
        count = tape.meta[row[E_META]]
        index = np.array(rules._meta(tape, row, count + 1)[1:], np.int64)
        if kind == GATHER:  # y[i] = x[index[i]]
            return rules._take(tx, index, out_shape)
        return rules._scatter(tx, out_shape, index)  # y[index[i]] += x[i]
    if kind == CAST:
        return F.to_dtype(tx, float32 if tape.node_dtype(out) == 0 else F.dt.float64)
    return None


# -- the public API -----------------------------------------------------------------------------
def enter_dual_level() -> int:
    """Enter a new dual level and return its index (``torch.autograd.forward_ad``).

    >>> import jitgrad.autograd.forward_ad as fwAD
    >>> level = fwAD.enter_dual_level()
    >>> fwAD.exit_dual_level(level=level)
    """
    return push_level(differentiable=False)


def push_level(differentiable: bool) -> int:
    levels = _local.levels
    nested = bool(levels) or _local.transform_depth > 0
    level = _Level(len(levels), differentiable or nested)
    levels.append(level)
    _state.tape.holds += 1  # the level keeps node ids: no restart until it exits
    return level.index


def exit_dual_level(*, level: int | None = None) -> None:
    """Leave the innermost dual level (which must be ``level`` when given)."""
    levels = _local.levels
    if not levels:
        raise RuntimeError("Trying to exit a forward AD level that was not the last one "
                           "that was created: no dual level is active")
    if level is not None and level != levels[-1].index:
        raise RuntimeError(
            f"Trying to exit a forward AD level that was not the last one that was created. "
            f"This is not supported: exit level {levels[-1].index} first (got level={level})")
    levels.pop()
    _state.tape.holds -= 1


class dual_level:  # noqa: N801 - torch's name
    """Context manager for a dual level: duals made inside get their tangents at this level;
    leaving it drops them.

    >>> import jitgrad as torch
    >>> import jitgrad.autograd.forward_ad as fwAD
    >>> with fwAD.dual_level():
    ...     x = fwAD.make_dual(torch.tensor(0.5), torch.tensor(1.0))
    ...     fwAD.unpack_dual(torch.cos(x)).tangent
    tensor(-0.4794)
    """

    def __enter__(self) -> int:
        self.level = enter_dual_level()
        return self.level

    def __exit__(self, *exc) -> None:
        exit_dual_level(level=self.level)


def current_level():
    return _local.levels[-1] if _local.levels else None


def _level(level: int | None, operation: str):
    levels = _local.levels
    if not levels:
        if operation == "make_dual":
            raise RuntimeError(
                "Trying to create a dual Tensor for forward AD but no level exists, make sure "
                "to enter_dual_level() first (or use `with forward_ad.dual_level():`)")
        return None
    if level is None:
        return levels[-1]
    if not 0 <= level < len(levels):
        raise RuntimeError(f"{operation}: dual level {level} is not active (active levels: "
                           f"0 to {len(levels) - 1})")
    return levels[level]


def make_dual(tensor: Tensor, tangent: Tensor, *, level: int | None = None) -> Tensor:
    """A dual tensor: the value of ``tensor`` carrying ``tangent`` at the current level.

    >>> import jitgrad as torch
    >>> import jitgrad.autograd.forward_ad as fwAD
    >>> with fwAD.dual_level():
    ...     x = fwAD.make_dual(torch.tensor([3.0]), torch.tensor([1.0]))
    ...     fwAD.unpack_dual(x * x).tangent
    tensor([6.])
    """
    lv = _level(level, "make_dual")
    if not isinstance(tensor, Tensor) or not isinstance(tangent, Tensor):
        bad = tensor if not isinstance(tensor, Tensor) else tangent
        raise TypeError(f"make_dual: expected Tensors for the primal and the tangent, got "
                        f"{type(bad).__name__}")
    if not tensor.dtype.is_floating_point:
        raise ValueError(f"Expected primal to be floating point, got {tensor.dtype}")
    if tuple(tangent.shape) != tuple(tensor.shape):
        raise RuntimeError(
            f"Trying to set a forward gradient that has a different size than that of the "
            f"original Tensor, this is not supported. Tensor is of size {list(tensor.shape)} "
            f"while the given forward gradient is of size {list(tangent.shape)}.")
    if tangent.dtype is not tensor.dtype:
        raise RuntimeError(
            f"Expected tangent to have the same dtype as the primal: the primal is "
            f"{tensor.dtype} and the tangent {tangent.dtype}; convert the tangent with "
            f"tangent.to(primal.dtype)")
    if tensor._requires_grad or tangent._requires_grad:
        lv.differentiable = True
    dual = record_alias(tensor)
    tape = _state.tape
    lv.attach(tape)
    lv.seeds[dual._node] = tangent
    lv.seed_tensors.append(dual)
    return dual


def record_alias(tensor: Tensor) -> Tensor:
    """A new recorded node holding ``tensor``'s value (an ``alias`` entry), so that levels
    enclosing this one see it as a function of ``tensor``."""
    from .grad_mode import enable_grad

    tape = _state.tape
    shape = tuple(tensor.shape)
    with enable_grad():
        tape.before_record()  # may start a new generation: before any node id is taken
        source = node_of(tape, tensor)
        node, slot = F._new_output_node(tape, tensor.dtype, shape)  # then the slot: the
        slot[...] = tensor._value()  # arena may move at any allocation
        strides = F._contiguous_strides(shape)
        meta = tape.add_meta([len(shape), *shape, *strides, 0])
        tape.record(_ALIAS, node, source, -1, -1, meta)
    if not shape:
        return F._output(tape, None, slot.item(), tensor.dtype, (), node, _ALIAS)
    return F._output(tape, slot, None, tensor.dtype, shape, node, _ALIAS)


def _node_on_tape(tensor: Tensor, tape) -> int:
    if tensor._tape is tape and tensor._node >= 0 and tape.adopt(tensor):
        return tensor._node
    return -1


def unpack_dual(tensor: Tensor, *, level: int | None = None) -> UnpackedDualTensor:
    """``(primal, tangent)`` of ``tensor`` at the current level; the tangent is None when
    ``tensor`` does not depend on a dual of that level.

    >>> import jitgrad as torch
    >>> import jitgrad.autograd.forward_ad as fwAD
    >>> with fwAD.dual_level():
    ...     x = fwAD.make_dual(torch.tensor([1.0, 2.0]), torch.ones(2))
    ...     primal, tangent = fwAD.unpack_dual(x.exp())
    ...     tangent
    tensor([2.7183, 7.3891])
    """
    if not isinstance(tensor, Tensor):
        raise TypeError(f"unpack_dual: expected a Tensor, got {type(tensor).__name__}")
    lv = _level(level, "unpack_dual")
    if lv is None or lv.tape is None:
        return UnpackedDualTensor(tensor, None)
    node = _node_on_tape(tensor, lv.tape)
    if node < 0 or not tensor._requires_grad:
        return UnpackedDualTensor(tensor, None)
    tangent = lv.tangent_of(node)
    if tangent is None:
        return UnpackedDualTensor(tensor, None)
    return UnpackedDualTensor(_primal_view(lv, tensor), tangent)


def _primal_view(lv: _Level, tensor: Tensor) -> Tensor:
    """The primal without this level's tangent: detached when nothing differentiates it
    again, else an alias whose tangent at this level is cut to zero."""
    if not lv.differentiable:
        return tensor.detach()
    alias = record_alias(tensor)
    lv.seeds[alias._node] = None
    lv.seed_tensors.append(alias)
    return alias

