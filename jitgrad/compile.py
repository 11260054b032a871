"""Compiled tapes: record a function once, replay it for new inputs in Numba.

``tape = jitgrad.compile(f, *example_inputs)`` runs ``f`` (written with ordinary jitgrad
ops) once on a private tape and keeps the recorded entries, nodes, meta and values. The
tape then gives, for new NumPy inputs, the value ``tape(x)``, ``tape.grad(x)``,
``tape.value_and_grad(x)``, ``tape.vjp(x, u)``, ``tape.jvp(x, v)``, ``tape.hvp(x, v)``,
``tape.jacobian(x)`` and ``tape.hessian(x)``, each one or two Numba calls with no Python
per entry (the idea of ReverseDiff's compiled tapes and of ADOL-C/CppAD taping).

>>> import numpy as np, jitgrad
>>> def f(x):
...     return (jitgrad.sin(x) * x).sum()
>>> tape = jitgrad.compile(f, np.array([0.5, 1.0]))
>>> float(tape(np.array([1.0, 2.0]))) == float(np.sin(1.0) * 1.0 + np.sin(2.0) * 2.0)
True
>>> np.allclose(tape.grad(np.array([1.0, 2.0])), np.cos([1.0, 2.0]) * [1.0, 2.0] +
...             np.sin([1.0, 2.0]))
True

**Guards.** A recorded tape is only right for inputs that make the same data-dependent
decisions. Every decision ``f`` takes while recording is watched:

* selections that are ops (``relu``, ``abs``, ``clamp``, ``maximum``, ``max`` along a
  dim, ``where``, a mask ``(x > 0).float()``) are recomputed by the replay: they never
  need recording again;
* a value that leaves the tape for Python -- ``bool(x > 0)`` in an ``if``, ``x.item()``,
  ``float(x)``, ``x.tolist()``, ``x.numpy()``, an index tensor -- becomes a *guard*: a
  comparison is re-checked in the kernel (only its outcome is pinned), a number is pinned
  to its recorded value (anything may have been done with it);
* a constant computed from traced values outside the graph (``x.detach() * 2``) is
  pinned through what it was computed from.

A replay whose guard fails records ``f`` again at the new inputs (``on_branch_change=
"rerecord"``, the default; the tape keeps a few variants) or raises :class:`BranchChanged`
naming the guard, its op and where it was recorded (``on_branch_change="raise"``). It
never returns the gradient of another branch.

The guards come from watching the core while recording (:class:`_Hooks` wraps a few
functions of :mod:`jitgrad.functions` for the duration of a recording); tensors ``f``
reads from its closure are constants of the tape, checked for in-place changes.

**Loops.** A Python loop over scalars leaves the same few entries on the tape again and
again; ``value_and_grad``, ``grad``, ``vjp`` and the value replay such runs with Numba code
generated for the loop's body (:mod:`jitgrad.kernels.loops`, from the second replay on),
its values and adjoints in registers, instead of the interpreter's ~8 ns per entry. The
results are the interpreter's (float64: to the last bit). ``JITGRAD_LOOPS=0`` turns it off.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import sys
import threading
import weakref
from dataclasses import dataclass, field

import numpy as np

from . import _dtype as dt
from . import functions as F
from . import recording
from .kernels.layout import (
    DTYPE_F32,
    E_C0,
    E_C1,
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
)
from .ops.registry import (
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
from .tape import Tape, thread_state
from .tensor import Tensor, _storage_of

__all__ = ["BranchChanged", "CompiledTape", "compile", "load", "trace"]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_FORMAT = "jitgrad-compiled-tape"
_FORMAT_VERSION = 1
_EXTREMES = ("max_dim", "min_dim")


class BranchChanged(RuntimeError):
    """A replay met a guard that no longer holds: the inputs take another branch than the
    one recorded. ``guard`` describes it (op, recording site)."""

    def __init__(self, message: str, guard: Guard | None = None) -> None:
        super().__init__(message)
        self.guard = guard


def _kernels():
    """The Numba replay kernels, imported on first use (``import jitgrad`` stays free of
    Numba)."""
    from .kernels import replay

    return replay


def _core_tables():
    from .autograd.engine import _op_tables

    return _op_tables()


# -- pytrees ------------------------------------------------------------------------------------
def _flatten(value, leaves: list):
    """Leaves of nested tuples/lists/dicts, in order, and a JSON-able structure."""
    if isinstance(value, (tuple, list)) and not isinstance(value, Tensor):
        return ["tuple" if isinstance(value, tuple) else "list",
                [_flatten(v, leaves) for v in value]]
    if isinstance(value, dict):
        keys = list(value)
        if not all(isinstance(k, str) for k in keys):
            raise TypeError("compile: dict keys of inputs and outputs must be strings")
        return ["dict", keys, [_flatten(value[k], leaves) for k in keys]]
    leaves.append(value)
    return ["leaf"]


def _unflatten(structure, leaves):
    iterator = iter(leaves)

    def build(node):
        kind = node[0]
        if kind == "leaf":
            return next(iterator)
        if kind == "dict":
            return {k: build(v) for k, v in zip(node[1], node[2])}
        items = [build(v) for v in node[1]]
        return tuple(items) if kind == "tuple" else items

    return build(structure)


# -- input signature -------------------------------------------------------------------------
@dataclass
class _Leaf:
    """One leaf of the inputs: traced (an independent or a parameter) or static."""

    arg: int                  # positional argument it belongs to
    traced: bool
    independent: bool = False
    shape: tuple = ()
    dtype: np.dtype | None = None
    scalar: bool = False      # given as a Python/NumPy scalar (returned as one)
    static: object = None     # the value of a static leaf (compared on replay)


def _describe_leaf(value, arg: int, is_parameter: bool) -> _Leaf:
    if isinstance(value, Tensor):
        value = value.detach().numpy()
    if isinstance(value, (float, np.floating)) and not isinstance(value, bool):
        kind = np.dtype(np.float32) if isinstance(value, np.float32) else np.dtype(np.float64)
        return _Leaf(arg, True, not is_parameter, (), kind, scalar=True)
    if isinstance(value, np.ndarray) and value.dtype in (np.float32, np.float64):
        return _Leaf(arg, True, not is_parameter, tuple(value.shape), value.dtype)
    return _Leaf(arg, False, static=_freeze_static(value))


def _freeze_static(value):
    if isinstance(value, np.ndarray):
        return value.copy()
    return value


def _same_static(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and np.array_equal(a, b))
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # noqa: BLE001 - an uncomparable static argument: treat as changed
        return False


# -- watching a recording -------------------------------------------------------------------------
_active = threading.local()


def _recorder() -> _Recorder | None:
    return getattr(_active, "recorder", None)


def _site() -> str:
    """Where the current op was called from: the first frame outside jitgrad, or the
    recorded entry whose derivative is being built."""
    frame = sys._getframe(2)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "differentiable_sweep" and code.co_filename.startswith(_PACKAGE_DIR):
            op = frame.f_locals.get("op")
            name = getattr(op, "name", "?")
            return f"the derivative of entry {frame.f_locals.get('e')} ({name})"
        name = code.co_filename
        # the derivative rules are eval'd expressions (their "file name" is the expression)
        if not name.startswith(_PACKAGE_DIR) and (os.path.isabs(name) or name.startswith("<")):
            return f"{name}:{frame.f_lineno} in {code.co_name}"
        frame = frame.f_back
    return "an unknown place"


# what a tensor seen while recording is, besides a node of the tape
@dataclass(frozen=True)
class _Sel:
    """The result of recomputable selection ``k`` (comparison, sign, argmax...)."""
    k: int


@dataclass(frozen=True)
class _Cast:
    """Selection ``k`` converted to a float dtype (a mask)."""
    k: int


@dataclass(frozen=True)
class _Copy:
    """A detached alias of node ``node`` (``x.detach()``, ``x.data``)."""
    node: int


@dataclass(frozen=True)
class _Derived:
    """Computed outside the graph from ``sources``: ('node', n) and ('sel', k) pairs."""
    sources: frozenset


@dataclass
class _Select:
    op: int
    operands: list          # ('node', n) | ('slot', k) | ('const', array)
    shape: tuple
    result: np.ndarray      # float64, as seen while recording
    pos: int
    seq: int
    site: str = ""
    name: str = ""
    fibers: tuple | None = None   # argmax/argmin: (count, length, stride, starts)
    needed: bool = False


# the comparisons of jitgrad.functions._compare: (replay opcode A_*, torch's name)
_COMPARE = {np.greater: (0, "gt"), np.greater_equal: (1, "ge"), np.less: (2, "lt"),
            np.less_equal: (3, "le"), np.equal: (4, "eq"), np.not_equal: (5, "ne"),
            np.logical_and: (6, "logical_and"), np.logical_or: (7, "logical_or")}


class _Recorder:
    """Watches one recording: what each tensor seen outside the graph is made of, the
    decisions that become guards, and the aux ops that recompute selections."""

    def __init__(self, tape: Tape) -> None:
        self.tape = tape
        self.generation = tape.generation
        self.tracked: dict[int, tuple] = {}   # id(tensor) -> (tensor, info)
        self.selects: list[_Select] = []
        self.value_guards: dict[int, tuple] = {}  # node -> (pos, seq, site, name)
        self.copies: list[tuple] = []   # (dst node, source ('node', n) | ('slot', k), pos, seq)
        self.read: dict[int, tuple] = {}  # id -> (weakref, version): tensors read, untracked
        self.seq = 0
        self.failure: str | None = None

    # -- what a tensor is ------------------------------------------------------------------
    def info(self, t):
        if not isinstance(t, Tensor):
            return None
        if t._tape is self.tape and t._gen == self.generation and t._node >= 0:
            storage = t._storage
            if t._op >= 0 or (storage.version if storage is not None else 0) == \
                    t._node_version:
                return ("node", t._node)
        held = self.tracked.get(id(t))
        if held is not None and held[0] is t:
            return held[1]
        storage = t._storage
        if (storage is not None and storage.tape is self.tape
                and storage.generation == self.generation and storage.node >= 0):
            return _Copy(storage.node)
        return None

    def _note_read(self, t) -> None:
        held = self.read.get(id(t))
        if held is None or held[0]() is not t:
            self.read[id(t)] = (weakref.ref(t), t._version)

    @staticmethod
    def sources(info) -> frozenset:
        if info is None:
            return frozenset()
        if isinstance(info, tuple):
            return frozenset([info])
        if isinstance(info, _Copy):
            return frozenset([("node", info.node)])
        if isinstance(info, (_Sel, _Cast)):
            return frozenset([("sel", info.k)])
        return info.sources

    def _track(self, t, info) -> None:
        self.tracked[id(t)] = (t, info)

    def _next(self) -> int:
        self.seq += 1
        return self.seq

    # -- events ------------------------------------------------------------------------------
    def after_op(self, out, tensors) -> None:
        """An op ran on ``tensors``; when ``out`` was not recorded but some input is on the
        tape or made from it, ``out`` is a value computed outside the graph."""
        if not isinstance(out, Tensor) or (out._tape is self.tape and out._node >= 0
                                           and out._gen == self.generation):
            return
        if any(out is t for t in tensors):
            return
        self.derive(out, tensors)

    def derive(self, out, tensors) -> None:
        """``out`` now holds values computed (outside the graph) from ``tensors``."""
        found = frozenset()
        for t in tensors:
            info = self.info(t)
            if info is None:
                if isinstance(t, Tensor):
                    self._note_read(t)
            else:
                found |= self.sources(info)
        if found:
            self._track(out, _Derived(found))

    def after_cast(self, out, t) -> None:
        if out is t:
            return
        info = self.info(t)
        if isinstance(info, (_Sel, _Cast)) and out.dtype.is_floating_point and \
                out.shape == t.shape:
            self._track(out, _Cast(info.k))
        else:
            self.after_op(out, [t])

    def need(self, info, name: str) -> None:
        """A value leaves the tape (Python control flow, an index, a constant)."""
        if info is None:
            return
        if isinstance(info, (_Sel, _Cast)):
            self._need_select(info.k)
            return
        for kind, which in self.sources(info):
            if kind == "sel":
                self._need_select(which)
            elif which not in self.value_guards:
                self.value_guards[which] = (self.tape.n_entries, self._next(), _site(), name)

    def _need_select(self, k: int) -> None:
        select = self.selects[k]
        if not select.needed:
            select.needed = True
            select.site = select.site or "an unknown place"

    def escape(self, t, name: str) -> None:
        if isinstance(t, Tensor):
            info = self.info(t)
            if info is None:
                self._note_read(t)
            self.need(info, name)

    def select(self, op: int, operands: list, out, name: str, fibers=None) -> None:
        """A selection (comparison, sign, argmax...) of ``operands`` gave ``out``."""
        refs = []
        found = frozenset()
        recomputable = True
        any_traced = False
        for x in operands:
            info = self.info(x) if isinstance(x, Tensor) else None
            if info is None:
                if isinstance(x, Tensor):
                    self._note_read(x)
                refs.append(("const", x))
                continue
            any_traced = True
            found |= self.sources(info)
            if isinstance(info, tuple):
                refs.append(info)
            elif isinstance(info, _Copy):
                refs.append(("node", info.node))
            elif isinstance(info, (_Sel, _Cast)):
                refs.append(("slot", info.k))
            else:
                recomputable = False
        if not any_traced:
            return
        if not recomputable:
            self._track(out, _Derived(found))
            return
        # constants compare as NumPy did: in the operands' common dtype (Python numbers
        # are weak), stored in float64, which holds every such value exactly
        values = [x._value() if isinstance(x, Tensor) else x for x in operands]
        common = np.result_type(*values) if op <= 5 else np.dtype(np.float64)
        resolved = []
        for ref in refs:
            if ref[0] == "const":
                value = ref[1]._value() if isinstance(ref[1], Tensor) else ref[1]
                array = np.asarray(value).astype(common).astype(np.float64)
                ref = ("const", array)
            resolved.append(ref)
        result = np.asarray(out._value(), np.float64).copy()
        k = len(self.selects)
        self.selects.append(_Select(op, resolved, tuple(out.shape), result,
                                    self.tape.n_entries, self._next(), _site(), name, fibers))
        self._track(out, _Sel(k))

    def constant(self, t, node: int, info) -> None:
        """``t`` (seen as ``info`` before) became constant node ``node``."""
        if info is None:
            if isinstance(t, Tensor):
                self._note_read(t)
            return
        if isinstance(info, _Copy):
            self.copies.append((node, ("node", info.node), self.tape.n_entries, self._next()))
        elif isinstance(info, (_Sel, _Cast)):
            self.copies.append((node, ("slot", info.k), self.tape.n_entries, self._next()))
        elif isinstance(info, tuple):
            self.copies.append((node, info, self.tape.n_entries, self._next()))
        else:
            self.need(info, "constant")

    def mask(self, cond_info, mask_node: int, entry: int) -> None:
        """``where`` read its condition as the float mask ``mask_node``."""
        if isinstance(cond_info, (_Sel, _Cast)):
            self.copies.append((mask_node, ("slot", cond_info.k), entry, self._next()))
        elif isinstance(cond_info, (tuple, _Copy)):
            node = cond_info[1] if isinstance(cond_info, tuple) else cond_info.node
            self.copies.append((mask_node, ("node", node), entry, self._next()))
        elif cond_info is not None:
            self.need(cond_info, "where")

    def mutate(self, t, name: str) -> None:
        """``t`` is written in place without the write being recorded."""
        info = self.info(t)
        if info is None:
            return
        if isinstance(info, (tuple, _Copy)):
            self.failure = (
                f"{name} writes a traced value in place without recording it (under "
                f"no_grad(), or through .data/.detach()), at {_site()}: a replay would "
                f"recompute the value without the write. Write out of place instead.")


# -- the hooks -------------------------------------------------------------------------------------
class _Hooks:
    """Wraps the core functions through which data-dependent decisions are made, for the
    duration of recordings (reference counted; other threads pass straight through)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.saved: list = []
        self.saves: list = []

    def install(self) -> None:
        with self.lock:
            self.count += 1
            if self.count > 1:
                return
            _core_tables()  # the reverse sweep's saves masks, before saves are widened
            for owner, name, wrapper in _wrappers():
                self.saved.append((owner, name, owner.__dict__[name] if isinstance(
                    owner, type) else getattr(owner, name)))
                setattr(owner, name, wrapper)
            # record every input of an op, not only those its derivative reads: the
            # forward replay needs them all
            self.saves = [(op, op.saves) for op in OPS]
            for op in OPS:
                op.saves = frozenset(op.saves | set(op.inputs))

    def uninstall(self) -> None:
        with self.lock:
            self.count -= 1
            if self.count:
                return
            for owner, name, original in reversed(self.saved):
                setattr(owner, name, original)
            for op, saves in self.saves:
                op.saves = saves
            self.saved = []
            self.saves = []


_hooks = _Hooks()


def _tensors_in(args) -> list:
    found = []
    for a in args:
        if isinstance(a, Tensor):
            found.append(a)
        elif isinstance(a, (list, tuple)):
            found.extend(x for x in a if isinstance(x, Tensor))
    return found


def _wrappers() -> list:
    """(owner, attribute, wrapper) for every hooked function."""
    import jitgrad

    out = []

    def hook(owners, name, make):
        first = owners[0]
        original = first.__dict__[name] if isinstance(first, type) else getattr(first, name)
        wrapper = make(original)
        for owner in owners:
            out.append((owner, name, wrapper))

    def op_wrapper(original):
        def wrapper(*args, **kwargs):
            result = original(*args, **kwargs)
            rec = _recorder()
            # a recorded output (the common case) is on the tape: nothing to watch
            if rec is not None and (result._node < 0 or result._tape is not rec.tape):
                rec.after_op(result, _tensors_in(args))
            return result
        return wrapper

    for name in ("_elementwise", "_finish_scalar", "_reduce", "_restride", "_gather",
                 "_matmul_record"):
        hook([F], name, op_wrapper)

    def place_parts(original):
        def wrapper(name, parts, out_value, regions):
            result = original(name, parts, out_value, regions)
            rec = _recorder()
            if rec is not None:
                if result._tape is rec.tape and result._node >= 0:
                    # parts that do not require grad are not recorded: their values are
                    # part of the output's base, so they must not change
                    for part in parts:
                        if not part._requires_grad:
                            rec.escape(part, name)
                else:
                    rec.after_op(result, parts)
            return result
        return wrapper

    hook([F], "_place_parts", place_parts)

    def to_dtype(original):
        def wrapper(t, d):
            result = original(t, d)
            rec = _recorder()
            if rec is not None:
                rec.after_cast(result, t)
            return result
        return wrapper

    hook([F], "to_dtype", to_dtype)

    def compare(original):
        def wrapper(ufunc, a, b):
            result = original(ufunc, a, b)
            rec = _recorder()
            if rec is not None:
                known = _COMPARE.get(ufunc)
                if known is None:  # a comparison the replay cannot recompute: a value
                    rec.after_op(result, [a, b])
                else:
                    rec.select(known[0], [a, b], result, known[1])
            return result
        return wrapper

    hook([F], "_compare", compare)

    def holds_zero(original):
        def wrapper(t):
            if _recorder() is None:
                return original(t)
            return bool(F.any_(F.eq(t, 0)))  # a selection: replays guard the answer
        return wrapper

    hook([F], "_holds_zero", holds_zero)
    # opcodes of jitgrad.kernels.replay (A_NOT...), not imported here: it loads Numba
    unary = {"logical_not": 8, "isnan": 9, "isfinite": 10, "sign": 11}

    def unary_select(op, name):
        def make(original):
            def wrapper(input):
                result = original(input)
                rec = _recorder()
                # (a float sign that requires grad is a recorded op, replayed as one)
                if rec is not None and result._op < 0:
                    rec.select(op, [input], result, name)
                return result
            return wrapper
        return make

    for name, op in unary.items():
        hook([F, jitgrad, Tensor], name, unary_select(op, name))

    def extreme_select(op, name):
        def make(original):
            def wrapper(input, dim=None, keepdim=False):
                result = original(input, dim, keepdim)
                rec = _recorder()
                if rec is not None and isinstance(input, Tensor):
                    rec.select(op, [input], result, name, _fibers(input.shape, dim))
                return result
            return wrapper
        return make

    hook([F, jitgrad, Tensor], "argmax", extreme_select(14, "argmax"))
    hook([F, jitgrad, Tensor], "argmin", extreme_select(15, "argmin"))

    def where(original):
        def wrapper(condition, input, other):
            rec = _recorder()
            if rec is None:
                return original(condition, input, other)
            cond = condition if isinstance(condition, Tensor) else F.tensor(condition)
            if cond.dtype is not dt.bool_:
                cond = cond != 0
            result = original(cond, input, other)
            tape = rec.tape
            if result._tape is tape and result._node >= 0 and result._gen == rec.generation:
                entry = tape.node_entry(result._node)
                if entry >= 0 and tape.entry_op(entry) == BY_NAME["where"].code:
                    rec.mask(rec.info(cond), tape.entry_fields(entry)[4], entry)
                    return result
            rec.after_op(result, [cond, input, other])
            return result
        return wrapper

    hook([F, jitgrad], "where", where)

    def escaping(name):
        def make(original):
            def wrapper(self, *args, **kwargs):
                rec = _recorder()
                if rec is not None:
                    rec.escape(self, name)
                return original(self, *args, **kwargs)
            return wrapper
        return make

    for name in ("item", "tolist", "numpy", "__array__"):
        hook([Tensor], name, escaping(name))

    def pair_escape(name):
        def make(original):
            def wrapper(a, b, *args, **kwargs):
                rec = _recorder()
                if rec is not None:
                    rec.escape(a, name)
                    rec.escape(b, name)
                return original(a, b, *args, **kwargs)
            return wrapper
        return make

    for name in ("allclose", "equal"):
        hook([F, jitgrad, Tensor], name, pair_escape(name))

    def normalize_index(original):
        def wrapper(key):
            rec = _recorder()
            if rec is not None:
                for k in (key if isinstance(key, tuple) else (key,)):
                    rec.escape(k, "index")
            return original(key)
        return wrapper

    hook([F], "_normalize_index", normalize_index)

    def array_from(original):
        def wrapper(data, dtype=None):
            rec = _recorder()
            if rec is not None:
                _escape_nested(rec, data)
            return original(data, dtype)
        return wrapper

    hook([F], "_array_from", array_from)

    def register(original):
        def wrapper(tape, t):
            rec = _recorder()
            if rec is None or tape is not rec.tape:
                return original(tape, t)
            before = rec.info(t)
            node = original(tape, t)
            rec.constant(t, node, before)
            return node
        return wrapper

    hook([recording], "register", register)

    def inplace(original):
        def wrapper(t, compute):
            rec = _recorder()
            if rec is None:
                return original(t, compute)
            box = []

            def computed():
                box.append(compute())
                return box[0]

            node = t._node
            result = original(t, computed)
            if not (t._node != node and t._node >= 0 and t._tape is rec.tape):
                rec.mutate(t, "an in-place op")
                rec.derive(t, [t, *box])
                _derive_views(rec, t)
            return result
        return wrapper

    hook([F], "inplace", inplace)

    def synced(original):
        def wrapper(target, source):
            rec = _recorder()
            if rec is not None:  # a write through a view, outside the graph
                rec.mutate(target, "a write through a view")
                rec.derive(target, [target, source])
            return original(target, source)
        return wrapper

    hook([F], "_synced", synced)

    def detach(original):
        def wrapper(self):
            result = original(self)
            rec = _recorder()
            if rec is not None and rec.info(result) is None:
                info = rec.info(self)  # a value computed outside the graph stays one
                if info is not None:
                    rec.derive(result, [self])
            return result
        return wrapper

    hook([Tensor], "detach", detach)

    def setitem(original):
        def wrapper(self, key, value):
            rec = _recorder()
            node = self._node
            original(self, key, value)
            # a recorded write (self or value requires grad) made self a new node
            if rec is not None and not (self._node != node and self._tape is rec.tape):
                rec.mutate(self, "x[...] = v")
                rec.derive(self, [self, value] if isinstance(value, Tensor) else [self])
                _derive_views(rec, self)
        return wrapper

    hook([Tensor], "__setitem__", setitem)

    def copy_(original):
        def wrapper(self, src, non_blocking=False):
            rec = _recorder()
            node = self._node
            result = original(self, src, non_blocking)
            if rec is not None and not (self._node != node and self._tape is rec.tape):
                rec.mutate(self, "copy_()")
                rec.derive(self, [self, src] if isinstance(src, Tensor) else [self])
                _derive_views(rec, self)
            return result
        return wrapper

    hook([Tensor], "copy_", copy_)
    return out


def _derive_views(rec: _Recorder, t) -> None:
    """``t`` was written outside the graph: its bases and its views, which share its
    memory, now hold values computed from what ``t`` was computed from."""
    storage, seen = t._storage, t
    while storage is not None and storage.link is not None:
        base = storage.link[0]
        rec.mutate(base, "a write through a view")
        rec.derive(base, [base, seen])
        storage, seen = base._storage, base
    for ref in (t._storage.views or ()) if t._storage is not None else ():
        view = ref()
        if view is not None:
            rec.mutate(view, "a write to a view's base")
            rec.derive(view, [view, t])


def _escape_nested(rec: _Recorder, data) -> None:
    if isinstance(data, Tensor):
        rec.escape(data, "tensor()")
    elif isinstance(data, (list, tuple)):
        for item in data:
            _escape_nested(rec, item)


def _fibers(shape: tuple, dim) -> tuple:
    """(count, length, stride, starts) of argmax/argmin of an array of ``shape``."""
    size = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if dim is None or not shape:
        return (1, max(size, 1), 1, np.zeros(1, np.int64))
    d = dim + len(shape) if dim < 0 else dim
    grid = np.arange(size, dtype=np.int64).reshape(shape)
    starts = np.take(grid, 0, axis=d).reshape(-1)
    stride = int(np.prod(shape[d + 1:], dtype=np.int64)) if d + 1 < len(shape) else 1
    return (starts.size, shape[d], max(stride, 1), starts)


# -- programs ------------------------------------------------------------------------------------
@dataclass
class Guard:
    """A guard of a compiled tape: what a replay re-checks, and where it was recorded."""

    number: int
    op: str      # the op that made the decision: gt, item, argmax, ...
    text: str    # what is checked, in the listing's node names
    site: str    # where it was recorded

    def __str__(self) -> str:
        return f"guard #{self.number}: {self.text}, recorded at {self.site}"


@dataclass
class _Aux:
    """An auxiliary op, referring to nodes (lowered to arena offsets by ``_lower``)."""

    pos: int
    seq: int
    op: int
    dst: tuple | None          # ('node', n) | ('slot', k) | ('meta', entry) | None
    a: tuple                   # ('node', n) | ('slot', k) | ('const', array)
    b: tuple | None = None
    size: int = 1
    layout: tuple | None = None   # broadcasting: (shape, strides of a, strides of b)
    fibers: tuple | None = None   # argmax/argmin: (count, length, stride, starts)
    flat: bool = False            # argmax/argmin: flat positions (gather indices)
    expect: np.ndarray | None = None
    guard: int = -1
    text: str = ""
    site: str = ""
    name: str = ""


@dataclass
class _Program:
    """One recorded variant: private copies of the core tables of its entries, the values
    they were recorded with, its auxiliary ops and guards."""

    entries: np.ndarray        # (n, E_WIDTH) int64, the core layout
    nodes: np.ndarray          # (m, N_WIDTH) int64; N_GRAD: depends on an independent
    meta: np.ndarray
    vals32: np.ndarray
    vals64: np.ndarray
    shapes: list
    inputs: list               # node of each traced input leaf
    independent: list          # per traced input leaf
    outputs: list              # node of each output leaf
    out_shapes: list
    gradients: list | None     # order 2: node of d(output)/d(each independent leaf)
    aux: list
    guards: list
    order: int
    signature: list = field(default_factory=list)  # (shape, dtype) of each traced leaf
    statics: list = field(default_factory=list)
    captured: list = field(default_factory=list)   # (weakref, version) of closure tensors
    place_bases: dict = field(default_factory=dict)  # concatenation node -> its base node
    optimized: bool = False
    _lowered: object = None
    _orders: dict = field(default_factory=dict)
    _plans: dict = field(default_factory=dict)

    @property
    def consts(self) -> np.ndarray:
        return self.entries.view(np.float64)

    def node_location(self, node: int) -> tuple:
        return (int(self.nodes[node, N_OFFSET]), int(self.nodes[node, N_SIZE]),
                int(self.nodes[node, N_DTYPE]))

    def node_values(self, node: int, vals32, vals64) -> np.ndarray:
        offset, size, code = self.node_location(node)
        arena = vals32 if code == DTYPE_F32 else vals64
        return arena[offset:offset + size]

    def lowered(self):
        if self._lowered is None:
            self._lowered = _lower(self)
        return self._lowered

    def reverse_order(self, roots: tuple) -> np.ndarray:
        """Entries (ascending) the adjoints of ``roots`` flow through."""
        order = self._orders.get(roots)
        if order is None:
            grad = (self.nodes[:, N_GRAD] != 0).astype(np.uint8)
            order = _kernels().needed_entries(self.entries, grad,
                                              np.array(roots, np.int64))
            self._orders[roots] = order
        return order

    def loop_plan(self):
        """How to replay with generated code for the program's loops, for a reverse sweep
        from every output (None when it has none, or ``JITGRAD_LOOPS=0``)."""
        roots = tuple(sorted(set(self.outputs)))
        if roots not in self._plans:
            self._plans[roots] = _loop_plan(self, roots)
        return self._plans[roots]


def _loop_plan(program: _Program, roots: tuple):
    if os.environ.get("JITGRAD_LOOPS", "1") == "0" or len(program.entries) == 0:
        return None
    from .kernels import loops

    low = program.lowered()
    external = np.zeros(len(program.nodes), np.uint8)
    refs = [*program.outputs, *program.inputs, *(program.gradients or ()),
            *program.place_bases.keys(), *program.place_bases.values()]
    for x in program.aux:
        refs += [r[1] for r in (x.dst, x.a, x.b) if r is not None and r[0] == "node"]
    external[np.array(refs, np.int64)] = 1
    return loops.plan(roots, low.inst, low.cst, low.aux[:, 0], program.entries, external,
                      program.reverse_order(roots), len(program.vals32),
                      len(program.vals64))


def _region_indices(meta: np.ndarray, mo: int) -> np.ndarray:
    """Flat positions of the strided region ``meta[mo:] = ndim, shape, strides, offset``."""
    ndim = int(meta[mo])
    shape = meta[mo + 1:mo + 1 + ndim]
    strides = meta[mo + 1 + ndim:mo + 1 + 2 * ndim]
    index = np.full((1,) * ndim, int(meta[mo + 1 + 2 * ndim]), np.int64)
    for d in range(ndim):
        axis = [1] * ndim
        axis[d] = int(shape[d])
        index = index + (np.arange(shape[d], dtype=np.int64) * strides[d]).reshape(axis)
    return index.reshape(-1)


def _broadcast_layout(out_shape: tuple, shapes: list) -> tuple | None:
    """(shape, strides per operand) reading each operand broadcast to ``out_shape``; None
    when every operand has the output's shape."""
    if all(tuple(s) == tuple(out_shape) for s in shapes):
        return None
    meta = recording.broadcast_meta(tuple(out_shape), [tuple(s) for s in shapes])
    ndim = meta[1]
    strides = [meta[2 + (k + 1) * ndim:2 + (k + 2) * ndim] for k in range(len(shapes))]
    return (tuple(out_shape), *strides)


def _build(tape: Tape, rec: _Recorder, inputs: list, independent: list, outputs: list,
           out_shapes: list, gradients: list | None, order: int) -> _Program:
    """The program of one recording, from the private tape and what the recorder saw."""
    entries_view, _, nodes_view, _, _, meta_view = tape.tables()
    entries = entries_view.copy()
    nodes = nodes_view.copy()
    meta = meta_view.copy() if len(tape.meta) else np.zeros(1, np.int64)
    del entries_view, nodes_view, meta_view
    kinds, _ = _core_tables()
    codes = entries[:, E_OP]
    if len(entries) and (kinds[codes] == PYTHON).any():
        op = OPS[int(codes[kinds[codes] == PYTHON][0])]
        raise TypeError(
            f"compile: f uses a custom autograd.Function ({op.grad_fn}), whose backward runs "
            f"Python: a compiled tape replays in Numba only. Write it with jitgrad ops.")
    if len(entries) and entries[:, E_FREED].any():
        raise RuntimeError("compile: f ran a backward() that freed part of its own graph; "
                           "call backward outside f (the tape gives gradients itself)")
    entries[:, E_VER0:E_VER0 + 3] = 0
    entries[:, E_FREED] = 0
    if len(entries):
        arity = np.array([op.arity for op in OPS], np.int64)[codes]
        missing = ((entries[:, E_IN0:E_IN0 + 3] < 0) &
                   (np.arange(3) < arity[:, None])).any(axis=1) & (kinds[codes] == ELEMENTWISE)
        if missing.any():
            e = int(np.flatnonzero(missing)[0])
            raise AssertionError(f"compile: entry {e} ({OPS[codes[e]].name}) was recorded "
                                 f"without all its inputs")
    vals32 = tape.arenas[0][:tape.used[0]].copy()
    vals64 = tape.arenas[1][:tape.used[1]].copy()
    shapes = [tuple(s) for s in tape.shapes]
    program = _Program(entries, nodes, meta, vals32, vals64, shapes, list(inputs),
                       list(independent), list(outputs), list(out_shapes), gradients, [], [],
                       order)
    _add_place_bases(program)
    aux = _extreme_aux(program) + _recorded_aux(program, rec)
    aux.sort(key=lambda x: (x.pos, x.seq))
    for x in aux:
        if x.guard >= 0:
            x.guard = len(program.guards)
            program.guards.append(Guard(x.guard, x.name, x.text, x.site))
    program.aux = aux
    _mark_gradients(program)
    return program


def _add_place_bases(program: _Program) -> None:
    """A concatenation records only its parts that require grad: the others (constants)
    are kept as a base node the replay starts the output from."""
    entries, kinds = program.entries, _core_tables()[0]
    place = np.flatnonzero(kinds[entries[:, E_OP]] == PLACE) if len(entries) else []
    for e in place:
        if e > 0 and entries[e - 1, E_OUT] == entries[e, E_OUT] and \
                kinds[entries[e - 1, E_OP]] == PLACE:
            continue  # not the first part
        out = int(entries[e, E_OUT])
        base = program.node_values(out, program.vals32, program.vals64).copy()
        k = e
        while k < len(entries) and entries[k, E_OUT] == out:
            base[_region_indices(program.meta, int(entries[k, E_META]))] = 0
            k += 1
        if base.any():
            program.place_bases[out] = _append_constant(program, base, program.shapes[out])


def _append_constant(program: _Program, values: np.ndarray, shape: tuple) -> int:
    code = DTYPE_F32 if values.dtype == np.float32 else 1
    if code == DTYPE_F32:
        offset = len(program.vals32)
        program.vals32 = np.concatenate([program.vals32, values])
    else:
        offset = len(program.vals64)
        program.vals64 = np.concatenate([program.vals64, values])
    node = len(program.nodes)
    row = np.array([[offset, values.size, code, 0, -1]], np.int64)
    program.nodes = np.concatenate([program.nodes, row])
    program.shapes.append(tuple(shape))
    return node


def _extreme_aux(program: _Program) -> list:
    """max/min along a dim were recorded as gathers at the recorded argmax: recompute the
    indices on replay (first order), or guard them (second order: the gradient graph
    scatters at the recorded indices)."""
    entries, meta, kinds = program.entries, program.meta, _core_tables()[0]
    extremes = np.array([op.code for op in OPS if op.name in _EXTREMES], np.int64)
    out = []
    for e in np.flatnonzero(np.isin(entries[:, E_OP], extremes)).tolist():
        name = OPS[entries[e, E_OP]].name
        if kinds[entries[e, E_OP]] != GATHER:
            continue
        x = int(entries[e, E_IN0])
        mo = int(entries[e, E_META])
        count = int(meta[mo])
        recorded = meta[mo + 1:mo + 1 + count].copy()
        shape = program.shapes[x]
        fitting = []
        for d in range(len(shape)):
            fibers = _fibers(shape, d)
            if fibers[0] != count:
                continue
            index = (recorded - fibers[3]) // fibers[2]
            if ((recorded - fibers[3]) % fibers[2] == 0).all() and \
                    ((index >= 0) & (index < fibers[1])).all():
                fitting.append((d, fibers))
        op = 14 if name.startswith("max") else 15   # A_ARGMAX / A_ARGMIN
        if program.order == 1 and len(fitting) == 1:
            out.append(_Aux(e, -1, op, ("meta", e), ("node", x), size=count,
                            fibers=fitting[0][1], flat=True))
            continue
        for d, fibers in fitting:
            out.append(_Aux(e, -1, op, None, ("node", x), size=count, fibers=fibers,
                            flat=True, expect=recorded.astype(np.float64), guard=0,
                            text=f"arg{name[:3]} of %{x} along dim {d} stays at the recorded "
                                 f"positions", site=f"entry {e} ({name})",
                            name=f"arg{name[:3]}"))
    return out


def _operand_text(program: _Program, rec: _Recorder, ref) -> str:
    if ref[0] == "node":
        return f"%{ref[1]}"
    if ref[0] == "slot":
        return _select_text(program, rec, rec.selects[ref[1]])
    value = ref[1]
    return repr(float(value)) if value.size == 1 else f"const{list(value.shape)}"


def _select_text(program: _Program, rec: _Recorder, select: _Select) -> str:
    args = ", ".join(_operand_text(program, rec, r) for r in select.operands)
    return f"{select.name}({args})"


def _recorded_aux(program: _Program, rec: _Recorder) -> list:
    """Aux ops for what the recorder saw: selections that are needed (as guards, or to
    recompute a mask), copies into constant nodes, value guards."""
    used = set()

    def use(k: int) -> None:
        if k not in used:
            used.add(k)
            for ref in rec.selects[k].operands:
                if ref[0] == "slot":
                    use(ref[1])

    for k, select in enumerate(rec.selects):
        if select.needed:
            use(k)
    for _, source, _, _ in rec.copies:
        if source[0] == "slot":
            use(source[1])
    dynamic = np.zeros(len(program.nodes), bool)
    dynamic[program.inputs] = True
    if len(program.entries):
        dynamic[program.entries[:, E_OUT]] = True
    out = []
    for node, source, pos, seq in rec.copies:
        dynamic[node] = True
        out.append(_Aux(pos, seq, 12, ("node", node), source, size=int(
            program.nodes[node, N_SIZE])))   # A_COPY
    for k in sorted(used, key=lambda k: rec.selects[k].seq):
        select = rec.selects[k]
        size = int(np.prod(select.shape, dtype=np.int64))
        operand_shapes = [_ref_shape(program, rec, r) for r in select.operands]
        layout = None if select.fibers is not None else _broadcast_layout(select.shape,
                                                                          operand_shapes)
        text = _select_text(program, rec, select)
        out.append(_Aux(select.pos, select.seq, select.op, ("slot", k), select.operands[0],
                        select.operands[1] if len(select.operands) > 1 else None, size,
                        layout, select.fibers, expect=select.result.reshape(-1)
                        if select.needed else None, guard=0 if select.needed else -1,
                        text=f"{text} gives the recorded result", site=select.site,
                        name=select.name))
    for node, (pos, seq, site, name) in rec.value_guards.items():
        if not dynamic[node]:
            continue  # a constant: always the recorded value
        expect = program.node_values(node, program.vals32, program.vals64)
        out.append(_Aux(pos, seq, 13, None, ("node", node),
                        size=int(program.nodes[node, N_SIZE]),
                        expect=expect.astype(np.float64), guard=0,
                        text=f"%{node} keeps its recorded value (read by {name})", site=site,
                        name=name))
    return out


def _ref_shape(program: _Program, rec: _Recorder, ref) -> tuple:
    if ref[0] == "node":
        return program.shapes[ref[1]]
    if ref[0] == "slot":
        return rec.selects[ref[1]].shape
    return tuple(ref[1].shape)


def _mark_gradients(program: _Program) -> None:
    """N_GRAD: the node depends on an independent input (its adjoint is wanted)."""
    flags = np.zeros(len(program.nodes), np.uint8)
    for node, independent in zip(program.inputs, program.independent):
        if independent:
            flags[node] = 1
    if len(program.entries):
        _kernels().propagate_flags(program.entries, flags)
    program.nodes[:, N_GRAD] = flags


# -- lowering to the replay kernels' layout -------------------------------------------------------
@dataclass
class _Lowered:
    inst: np.ndarray
    cst: np.ndarray
    general: np.ndarray
    aux: np.ndarray
    auxvals: np.ndarray
    auxmeta: np.ndarray


def _lower(program: _Program) -> _Lowered:
    """The compact instruction rows and aux rows of :mod:`jitgrad.kernels.replay`."""
    R = _kernels()  # noqa: N806
    kinds = _core_tables()[0]
    entries, nodes, meta = program.entries, program.nodes, program.meta
    n = len(entries)
    codes = entries[:, E_OP]
    kind = kinds[codes] if n else np.zeros(0, np.int64)
    out = entries[:, E_OUT]
    ins = entries[:, E_IN0:E_IN0 + 3]
    offsets = nodes[:, N_OFFSET]
    inst = np.empty((n, 5), np.int64)
    inst[:, 1] = offsets[out]
    inst[:, 2:5] = np.where(ins >= 0, offsets[np.maximum(ins, 0)], -1)
    cst = np.ascontiguousarray(program.consts[:, [E_C0, E_C1]])
    size = nodes[out, N_SIZE]
    f32 = nodes[out, N_DTYPE] == DTYPE_F32
    wants = (ins >= 0) & (nodes[np.maximum(ins, 0), N_GRAD] != 0)
    mo = entries[:, E_META]
    recomputed = np.zeros(n, bool)
    for x in program.aux:
        if x.dst is not None and x.dst[0] == "meta":
            recomputed[x.dst[1]] = True
    tag = np.full(n, R.TAG_GENERAL, np.int64)
    tag[(kind == ELEMENTWISE) & (size == 1)] = R.TAG_SCALAR
    for e in np.flatnonzero((size == 1) & ((kind == RESTRIDE) | ((kind == GATHER) &
                                                                  ~recomputed))):
        m = int(mo[e])
        inst[e, 2] += meta[m + 1 + 2 * meta[m]] if kind[e] == RESTRIDE else meta[m + 1]
        tag[e] = R.TAG_COPY
    heads = (tag | (kind << R.H_KIND_SHIFT) | (f32.astype(np.int64) * R.H_F32)
             | (wants[:, 0] * R.H_W0) | (wants[:, 1] * R.H_W1) | (wants[:, 2] * R.H_W2)
             | (codes << R.H_CODE_SHIFT))
    rows = []
    for e in np.flatnonzero(tag == R.TAG_GENERAL):
        k = kind[e]
        if k == REDUCE:
            row = [nodes[ins[e, 0], N_SIZE], mo[e], size[e], 0]
        elif k == PLACE:
            if e > 0 and entries[e - 1, E_OUT] == out[e]:
                row = [size[e], mo[e], R.PLACE_ACCUMULATE, 0]
            elif out[e] in program.place_bases:
                base = program.place_bases[out[e]]
                row = [size[e], mo[e], R.PLACE_BASE, offsets[base]]
            else:
                row = [size[e], mo[e], R.PLACE_ZERO, 0]
        else:
            row = [size[e], mo[e], 0, 0]
        heads[e] |= len(rows) << R.H_ROW_SHIFT
        rows.append(row)
    inst[:, 0] = heads
    general = np.array(rows, np.int64).reshape(-1, R.G_WIDTH)
    aux, auxvals, auxmeta = _lower_aux(program, R)
    return _Lowered(inst, cst, general, aux, auxvals, auxmeta)


def _lower_aux(program: _Program, R):  # noqa: N803
    values: list = []
    meta: list = []
    used = [0]
    slots: dict = {}

    def allocate(array) -> int:
        offset = used[0]
        values.append(np.asarray(array, np.float64).reshape(-1))
        used[0] += values[-1].size
        return offset

    for x in program.aux:
        if x.dst is not None and x.dst[0] == "slot":
            slots[x.dst[1]] = allocate(np.zeros(x.size))

    def ref(r):
        if r is None:
            return (0, -1)
        if r[0] == "node":
            code = int(program.nodes[r[1], N_DTYPE])
            return (R.SPACE_F32 if code == DTYPE_F32 else R.SPACE_F64,
                    int(program.nodes[r[1], N_OFFSET]))
        if r[0] == "slot":
            return (R.SPACE_AUX, slots[r[1]])
        if r[0] == "meta":
            return (R.SPACE_META, int(program.entries[r[1], E_META]) + 1)
        return (R.SPACE_AUX, allocate(r[1]))

    rows = np.zeros((len(program.aux), R.X_WIDTH), np.int64)
    for i, x in enumerate(program.aux):
        row = rows[i]
        row[R.X_POS] = x.pos
        row[R.X_OP] = x.op
        row[R.X_DST_SPACE], row[R.X_DST] = ref(x.dst)
        row[R.X_A_SPACE], row[R.X_A] = ref(x.a)
        if x.fibers is not None:
            row[R.X_B] = 1 if x.flat else 0
        else:
            row[R.X_B_SPACE], row[R.X_B] = ref(x.b)
        row[R.X_SIZE] = x.size
        row[R.X_BMETA] = -1
        if x.layout is not None:
            shape, sa, *rest = x.layout
            sb = rest[0] if rest else [0] * len(shape)
            row[R.X_BMETA] = len(meta)
            meta.extend([len(shape), *shape, *sa, *sb])
        elif x.fibers is not None:
            count, length, stride, starts = x.fibers
            row[R.X_BMETA] = len(meta)
            meta.extend([count, length, stride, *np.asarray(starts).tolist()])
        row[R.X_EXPECT] = allocate(x.expect) if x.expect is not None else -1
        row[R.X_GUARD] = x.guard
    auxvals = np.concatenate(values) if values else np.zeros(1)
    return rows, auxvals, np.array(meta or [0], np.int64)


# -- replaying one program ----------------------------------------------------------------------
_NO_REUSE = np.zeros(0, np.int64)  # tangent_sweep: no partials taken from other nodes


class _Runner:
    """Working buffers of one program: replays write the values, adjoints and recomputed
    indices here (the program keeps the recorded ones)."""

    def __init__(self, program: _Program) -> None:
        self.program = program
        self.low = program.lowered()
        self.vals32 = program.vals32.copy()
        self.vals64 = program.vals64.copy()
        self.meta = program.meta.copy()
        self.auxvals = self.low.auxvals.copy()
        self.adj32 = np.zeros_like(self.vals32)
        self.adj64 = np.zeros_like(self.vals64)
        self.plan = None  # the loop plan of the last forward, if it used one
        self.generated = None  # CompiledTape._generated_call(self), once asked

    def _arena(self, f32: bool) -> tuple:
        """(values, adjoints) of one precision."""
        return (self.vals32, self.adj32) if f32 else (self.vals64, self.adj64)

    def set_inputs(self, arrays: list) -> None:
        program = self.program
        for node, array in zip(program.inputs, arrays):
            offset, size, code = program.node_location(node)
            arena = self.vals32 if code == DTYPE_F32 else self.vals64
            if size == 1:
                arena[offset] = array.reshape(-1)[0]
            else:
                arena[offset:offset + size] = array.reshape(-1)

    def forward(self, loops: bool = False) -> int:
        """Recompute the values; with ``loops``, the program's loops run generated code
        (which writes only the values read outside them: what a reverse sweep from the
        outputs needs) once it is ready. Returns 0 or the failed guard + 1."""
        low = self.low
        self.plan = None
        plan = self.program.loop_plan() if loops else None
        if plan is not None and plan.ready():
            R = _kernels()  # noqa: N806
            from numba.core.errors import NumbaError

            try:
                for start, stop, run in plan.segments:
                    if run is None:
                        status = R.forward_entries(low.inst, low.cst, low.general, self.meta,
                                                   self.vals32, self.vals64, low.aux,
                                                   self.auxvals, low.auxmeta, start, stop)
                        if status:
                            return int(status)
                    else:
                        run.kernels.forward(*self._arena(run.body.f32), low.cst, run.start,
                                            run.count, run.offsets, run.constants)
            except NumbaError as error:
                plan.fail(error)
                return self.forward()
            self.plan = plan
            return 0
        return int(_kernels().forward_replay(low.inst, low.cst, low.general, self.meta,
                                             self.vals32, self.vals64, low.aux, self.auxvals,
                                             low.auxmeta))

    def value(self, node: int, shape: tuple):
        values = self.program.node_values(node, self.vals32, self.vals64)
        if not shape:
            return values[0]
        return values.reshape(shape).copy()

    def reverse(self, seeds: list) -> None:
        """Adjoints for ``seeds`` = [(node, cotangent array)]."""
        program, low = self.program, self.low
        roots = tuple(sorted({node for node, _ in seeds}))
        plan = self.plan
        if plan is not None and plan.roots != roots:
            self.forward()  # the loops left values unwritten that this sweep reads
            plan = None
        if plan is None:
            self.adj32.fill(0.0)
            self.adj64.fill(0.0)
        else:
            for start, stop in plan.zero32:
                self.adj32[start:stop] = 0.0
            for start, stop in plan.zero64:
                self.adj64[start:stop] = 0.0
        for node, seed in seeds:
            offset, size, code = program.node_location(node)
            arena = self.adj32 if code == DTYPE_F32 else self.adj64
            arena[offset:offset + size] += np.asarray(seed).reshape(-1)
        R = _kernels()  # noqa: N806
        if plan is None:
            R.reverse_replay(low.inst, low.cst, low.general, self.meta, self.vals32,
                             self.vals64, self.adj32, self.adj64,
                             program.reverse_order(roots))
            return
        from numba.core.errors import NumbaError

        try:
            for (_, _, run), (first, end) in zip(reversed(plan.segments),
                                                 reversed(plan.bounds)):
                if run is None:
                    if end > first:
                        R.reverse_entries(low.inst, low.cst, low.general, self.meta,
                                          self.vals32, self.vals64, self.adj32, self.adj64,
                                          plan.order, first, end)
                elif run.in_reverse:
                    run.kernels.reverse(*self._arena(run.body.f32), low.cst, run.start,
                                        run.count, run.offsets, run.constants)
        except NumbaError as error:
            plan.fail(error)
            self.forward()  # every value, for the interpreter
            self.reverse(seeds)

    def adjoint(self, node: int, shape: tuple):
        values = self.program.node_values(node, self.adj32, self.adj64)
        if not shape:
            return values[0]
        return values.reshape(shape).copy()

    def tangents(self, seeds: list, directions: int):
        """Push ``directions`` tangents from ``seeds`` = [(input node, (k, size) array)]
        through every entry; returns the (k, arena) tangent buffers."""
        from .kernels.tangent import INACTIVE, SEED, tangent_sweep

        program = self.program
        tan32 = np.zeros((directions, len(self.vals32)), np.float32)
        tan64 = np.zeros((directions, len(self.vals64)))
        active = np.full(len(program.nodes), INACTIVE, np.uint8)
        for node, rows in seeds:
            offset, size, code = program.node_location(node)
            (tan32 if code == DTYPE_F32 else tan64)[:, offset:offset + size] = rows
            active[node] = SEED
        tangent_sweep(program.entries, program.consts, program.nodes, self.meta, self.vals32,
                      self.vals64, tan32, tan64, 0, len(program.entries), _core_tables()[0],
                      active, _NO_REUSE)
        return tan32, tan64

    def captured_changed(self) -> bool:
        for ref, version in self.program.captured:
            t = ref()
            if t is not None and t._version != version:
                return True
        return False


# -- recording -------------------------------------------------------------------------------------
def _input_tensor(value, leaf: _Leaf) -> Tensor:
    array = np.asarray(value.detach().numpy() if isinstance(value, Tensor) else value)
    if array.dtype not in (np.float32, np.float64):  # a Python number
        array = array.astype(leaf.dtype)
    d = dt.float32 if array.dtype == np.float32 else dt.float64
    if array.shape == ():
        t = F._scalar_tensor(float(array), d)
    else:
        t = Tensor._wrap(np.array(array, order="C"), d)
    t.requires_grad_(True)
    _storage_of(t)  # registering attaches it: x.detach() is then known to be x's node
    return t


def _record_program(f, specs: list, args: tuple, order: int):
    """Run ``f`` on a private tape at ``args``, watched; returns its program and the
    structure of its outputs."""
    state = thread_state()
    saved_tape = state.tape
    previous = _recorder()
    tape = Tape()
    tape.next_check = 1 << 62  # keep every entry: no liveness restarts while recording
    tape.compactable = False  # the recording keeps node ids of its own
    _hooks.install()
    try:
        state.tape = tape  # (grad mode on: a new tape's)
        call_args, inputs, independent, tensors = [], [], [], []
        for arg, (structure, leaves) in zip(args, specs):
            values: list = []
            _flatten(arg, values)
            made = []
            for value, leaf in zip(values, leaves):
                if leaf.traced:
                    t = _input_tensor(value, leaf)
                    inputs.append(recording.node_of(tape, t))
                    independent.append(leaf.independent)
                    tensors.append(t)
                    made.append(t)
                else:
                    made.append(value)
            call_args.append(_unflatten(structure, made))
        rec = _Recorder(tape)
        _active.recorder = rec
        result = f(*call_args)
        leaves: list = []
        out_structure = _flatten(result, leaves)
        for i, t in enumerate(leaves):
            if not isinstance(t, Tensor) or not t.dtype.is_floating_point:
                what = type(t).__name__ if not isinstance(t, Tensor) else f"{t.dtype} Tensor"
                raise TypeError(
                    f"compile: f must return floating-point jitgrad Tensors (or tuples, lists, "
                    f"dicts of them); output {i} is a {what}. A Python number or NumPy array "
                    f"has left the tape: return the Tensor (e.g. x.sum(), not "
                    f"x.sum().item()).")
        outputs = [recording.node_of(tape, t) for t in leaves]
        out_shapes = [tuple(t.shape) for t in leaves]
        gradients = None
        if order == 2:
            gradients = _gradient_nodes(tape, leaves, tensors, independent)
        _active.recorder = previous
        if rec.failure:
            raise RuntimeError(f"compile: {rec.failure}")
        if tape.generation != 0:
            raise RuntimeError("compile: the recording tape was restarted (f ran a backward "
                               "that freed its graph): call backward outside f")
        program = _build(tape, rec, inputs, independent, outputs, out_shapes, gradients,
                         order)
        del result, leaves, call_args, tensors
        read = list(rec.read.values())
        rec.tracked.clear()
        del rec, tape
        program.captured = [(ref, version) for ref, version in read if ref() is not None]
        return program, out_structure
    finally:
        _active.recorder = previous
        state.tape = saved_tape  # (and the grad mode kept on it)
        _hooks.uninstall()


def _gradient_nodes(tape: Tape, leaves: list, tensors: list, independent: list) -> list:
    """Record d(output)/d(independents) with create_graph: the gradient is on the tape."""
    from .autograd.engine import grad

    if len(leaves) != 1 or leaves[0].numel() != 1:
        raise ValueError("hvp/hessian: f must return a single scalar (one element)")
    wrt = [t for t, ind in zip(tensors, independent) if ind]
    out = leaves[0]
    if out._requires_grad:
        grads = grad([out], wrt, create_graph=True, allow_unused=True, materialize_grads=True)
    else:
        grads = [F.zeros_like(t) for t in wrt]
    return [recording.node_of(tape, g) for g in grads]


# -- the compiled tape -----------------------------------------------------------------------------
class CompiledTape:
    """A function recorded once, replayed in Numba for new inputs (see the module
    docstring). Made by :func:`compile`; inputs and outputs are NumPy arrays (float64 or
    float32, as recorded), or tuples/lists/dicts of them.

    >>> import numpy as np, jitgrad
    >>> tape = jitgrad.compile(lambda x: (x * x).sum(), np.ones(3))
    >>> tape.value_and_grad(np.array([1.0, 2.0, 3.0]))
    (np.float64(14.0), array([2., 4., 6.]))
    """

    def __init__(self, f, example_inputs: tuple, *, parameters=(), on_branch_change="rerecord",
                 dynamic: bool = False, optimize: bool = True, max_variants: int = 8) -> None:
        if f is not None and not callable(f):
            raise TypeError(f"compile: f must be callable, got {type(f).__name__}")
        if on_branch_change not in ("rerecord", "raise"):
            raise ValueError(f"on_branch_change must be 'rerecord' or 'raise', got "
                             f"{on_branch_change!r}")
        parameters = (parameters,) if isinstance(parameters, int) else tuple(parameters)
        for p in parameters:
            if not isinstance(p, int) or not 0 <= p < len(example_inputs):
                raise ValueError(f"parameters: {p!r} is not the index of an example input "
                                 f"(there are {len(example_inputs)})")
        self._f = f
        self.name = getattr(f, "__name__", "f")
        self.on_branch_change = on_branch_change
        self.dynamic = dynamic
        self.optimize = optimize
        self.max_variants = max(1, int(max_variants))
        self._specs = []
        for i, arg in enumerate(example_inputs):
            values: list = []
            structure = _flatten(arg, values)
            self._specs.append((structure, [_describe_leaf(v, i, i in parameters)
                                            for v in values]))
        if not any(leaf.independent for _, leaves in self._specs for leaf in leaves):
            if not parameters:
                raise TypeError(
                    "compile: no example input is a float array or number: pass the inputs "
                    "to differentiate as NumPy float64/float32 arrays (or Python floats)")
        self._variants: dict = {1: [], 2: []}
        self._out_structure = None
        self._lock = threading.RLock()
        self.recordings = 0
        self.calls = 0
        self._warned = False
        self._runner(1, example_inputs)

    # -- inputs --------------------------------------------------------------------------------
    def _inputs(self, args: tuple) -> tuple:
        """(arrays of the traced leaves, values of the static leaves), checked."""
        if len(args) != len(self._specs):
            raise TypeError(f"{self.name} was compiled with {len(self._specs)} argument(s); "
                            f"got {len(args)}")
        arrays, statics = [], []
        for i, (arg, (structure, leaves)) in enumerate(zip(args, self._specs)):
            values: list = []
            if _flatten(arg, values) != structure:
                raise TypeError(f"argument {i} of {self.name} has another structure than "
                                f"when compiled (tuples/lists/dicts must match)")
            for value, leaf in zip(values, leaves):
                if leaf.traced:
                    arrays.append(self._as_array(value, leaf, i))
                else:
                    statics.append(value)
        return arrays, statics

    def _batch(self, args: tuple):
        """(rows of all traced leaves, one row per batch element) when every
        differentiated input has one more leading axis than recorded; else None."""
        if self.dynamic or len(args) != len(self._specs):
            return None
        rows, batch = [], None
        for arg, (structure, leaves) in zip(args, self._specs):
            values: list = []
            if _flatten(arg, values) != structure:
                return None
            for value, leaf in zip(values, leaves):
                if not leaf.traced:
                    return None  # static arguments: one call each
                array = np.asarray(value.detach().numpy() if isinstance(value, Tensor)
                                   else value)
                if array.dtype != leaf.dtype:
                    return None
                if array.shape == leaf.shape and not leaf.independent:
                    rows.append(array)  # a parameter shared by the batch
                    continue
                if array.shape[1:] != leaf.shape or array.ndim != len(leaf.shape) + 1:
                    return None
                if batch is not None and array.shape[0] != batch:
                    return None
                batch = array.shape[0]
                rows.append(array)
        if batch is None:
            return None
        columns = [r.reshape(batch, -1) if r.ndim > len(leaf_shape) else
                   np.broadcast_to(r.reshape(1, -1), (batch, r.size))
                   for r, leaf_shape in zip(rows, [leaf.shape for leaf in self._leaves()
                                                    if leaf.traced])]
        return np.concatenate([np.asarray(c, np.float64) for c in columns], axis=1)

    def _batched(self, xs: np.ndarray, args: tuple, want_grad: bool):
        """Value (and gradient) of the scalar f for each row of ``xs``, one Numba call;
        rows whose guards fail go through the ordinary path (recording again)."""
        runner = self._variants[1][0]
        program = runner.program
        self._scalar_output(program, "a batch replay")
        numba_program = self._numba_program(runner)
        independent = self._independent(program)
        width = sum(int(np.prod(s)) for _, s in independent)
        values = np.empty(len(xs))
        grads = np.zeros((len(xs), width))
        status = np.zeros(len(xs), np.int64)
        _kernels().batch_value_and_grad(numba_program, xs, values, grads, status)
        for b in np.flatnonzero(status):
            row = tuple(_index_batch(arg, leaves, b) for arg, (_, leaves) in
                        zip(args, self._specs))
            value, grad = self.value_and_grad(*row)
            values[b] = value
            grads[b] = np.concatenate([np.ravel(g) for g in
                                       (grad if isinstance(grad, tuple) else (grad,))])
        shapes = [s for _, s in independent]
        bounds = np.cumsum([0] + [int(np.prod(s)) for s in shapes])
        per_leaf = [grads[:, lo:hi].reshape((len(xs), *shape)) for lo, hi, shape in
                    zip(bounds[:-1], bounds[1:], shapes)]
        return values, (self._arrange(per_leaf) if want_grad else None)

    def _numba_program(self, runner: _Runner) -> tuple:
        program, low = runner.program, runner.low
        rows, position = [], 0
        for node, leaf in zip(program.inputs, [leaf for leaf in self._leaves() if leaf.traced]):
            offset, size, code = program.node_location(node)
            rows.append([offset, size, int(code == DTYPE_F32),
                         position if leaf.independent else -1])
            if leaf.independent:
                position += size
        out = program.outputs[0]
        offset, _, code = program.node_location(out)
        return (low.inst, low.cst, low.general, runner.meta, runner.vals32, runner.vals64,
                low.aux, runner.auxvals, low.auxmeta, runner.adj32, runner.adj64,
                program.reverse_order((out,)), np.array(rows, np.int64).reshape(-1, 4),
                np.array([offset, int(code == DTYPE_F32)], np.int64))

    def numba_program(self) -> tuple:
        """The current recording as a tuple of arrays for
        :func:`jitgrad.kernels.replay.replay_value_and_grad` / ``replay_value``, callable
        from the user's own Numba-compiled code (f must return one scalar). ``x`` holds every
        traced input leaf flattened, one after the other; the gradient holds the
        differentiated ones. The tuple owns working buffers: use it from one thread.

        >>> import numpy as np, jitgrad
        >>> from numba import njit
        >>> from jitgrad.kernels.replay import replay_value_and_grad
        >>> tape = jitgrad.compile(lambda x: (x * x).sum(), np.ones(2))
        >>> def descend(program, x):
        ...     g = np.empty_like(x)
        ...     for _ in range(100):
        ...         replay_value_and_grad(program, x, g)
        ...         x = x - 0.25 * g
        ...     return x
        >>> descend = njit(descend)  # the user's Numba code calls the replay
        >>> bool(np.allclose(descend(tape.numba_program(), np.array([1.0, -2.0])), 0.0))
        True
        """
        with self._lock:
            runner = self._variants[1][0]
            self._scalar_output(runner.program, "numba_program")
            return self._numba_program(runner)

    def _as_array(self, value, leaf: _Leaf, i: int) -> np.ndarray:
        if isinstance(value, Tensor):
            value = value.detach().numpy()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            array = np.asarray(value, leaf.dtype)
        else:
            array = np.asarray(value)
            if array.dtype != leaf.dtype and not (self.dynamic and array.dtype.kind == "f"):
                raise TypeError(
                    f"argument {i} of {self.name}: recorded as {leaf.dtype}"
                    f"{list(leaf.shape)}, got {array.dtype}{list(array.shape)}: pass "
                    f"{leaf.dtype} (x.astype(np.{leaf.dtype})), or compile with dynamic=True")
        if array.shape != leaf.shape and not self.dynamic:
            raise ValueError(
                f"argument {i} of {self.name}: recorded with shape {list(leaf.shape)}, got "
                f"{list(array.shape)}: pass the recorded shape, or compile with dynamic=True "
                f"(a new shape records again)")
        return array if array.flags.c_contiguous else np.ascontiguousarray(array)

    def _leaves(self):
        for _, leaves in self._specs:
            yield from leaves

    # -- variants and guards --------------------------------------------------------------------
    def _runner(self, order: int, args: tuple, loops: bool = False) -> _Runner:
        """A runner whose buffers hold this call's values: a variant whose guards hold, or a
        new recording. ``loops``: the caller reads only the outputs and sweeps back from
        them (:meth:`_Runner.forward`)."""
        arrays, statics = self._inputs(args)
        self.calls += 1
        signature = [(a.shape, a.dtype) for a in arrays]
        variants = self._variants[order]
        failure = None
        for runner in [r for r in variants if r.captured_changed()]:
            variants.remove(runner)  # recorded with a closure tensor's old value: stale
            failure = failure or (runner, None)
        for i, runner in enumerate(variants):
            program = runner.program
            if program.signature != signature or not all(
                    _same_static(a, b) for a, b in zip(program.statics, statics)):
                continue
            runner.set_inputs(arrays)
            status = runner.forward(loops)
            if status == 0:
                if i:
                    variants.insert(0, variants.pop(i))
                return runner
            failure = failure or (runner, program.guards[status - 1])
        if failure is not None and (self.on_branch_change == "raise" or self._f is None):
            raise self._branch_error(*failure)
        if self._f is None:
            raise TypeError(f"{self.name} was loaded without f and holds no recording for "
                            f"these input shapes/static values: load(path, f=...) to record")
        program, structure = _record_program(self._f, self._specs, args, order)
        if self._out_structure is None:
            self._out_structure = structure
        elif structure != self._out_structure:
            raise TypeError(f"{self.name} returned outputs of another structure than when "
                            f"compiled")
        program.signature = signature
        program.statics = [_freeze_static(s) for s in statics]
        if self.optimize:
            program = _optimized(program)
        self.recordings += 1
        if failure is not None:
            self._warn_rerecording(failure)
        runner = _Runner(program)
        variants.insert(0, runner)
        del variants[self.max_variants:]
        return runner

    def _branch_error(self, runner: _Runner, guard: Guard | None) -> BranchChanged:
        if guard is None:
            what = ("a tensor that f reads from its closure or globals was modified in place "
                    "since the recording")
        else:
            what = (f"{guard} no longer holds: these inputs take another branch than the "
                    f"one recorded")
        hint = ("load(path, f=...) to allow recording again" if self._f is None else
                "compile with on_branch_change='rerecord' to record again")
        return BranchChanged(f"{self.name}: {what}; {hint}", guard)

    def _warn_rerecording(self, failure) -> None:
        if self._warned or self.recordings < 8 or self.recordings * 2 < self.calls:
            return
        import warnings

        self._warned = True
        guard = failure[1]
        warnings.warn(
            f"{self.name} was recorded {self.recordings} times in {self.calls} calls; the "
            f"guard failing most recently: {guard or 'a captured tensor changed'}. A value "
            f"read with .item()/float() is pinned: compare tensors instead (if x > 0:), or "
            f"use where(); pass changing tensors as inputs.", RuntimeWarning, stacklevel=3)

    @property
    def _current(self) -> _Program:
        return self._variants[1][0].program

    @property
    def guards(self) -> list:
        """The guards of the current recording."""
        return list(self._current.guards)

    # -- outputs ---------------------------------------------------------------------------------
    def _outputs(self, runner: _Runner):
        program = runner.program
        values = [runner.value(node, shape) for node, shape in
                  zip(program.outputs, program.out_shapes)]
        return _unflatten(self._out_structure, values)

    def _arrange(self, per_leaf: list):
        """Values per independent traced leaf -> the structure of the independent args."""
        iterator = iter(per_leaf)
        args = []
        for structure, leaves in self._specs:
            if not any(leaf.independent for leaf in leaves):
                continue
            items = [next(iterator) if leaf.independent else None for leaf in leaves]
            args.append(_unflatten(structure, items))
        return args[0] if len(args) == 1 else tuple(args)

    def _independent(self, program: _Program) -> list:
        """(node, shape) of each independent traced leaf."""
        leaves = [leaf for leaf in self._leaves() if leaf.traced]
        return [(node, shape) for node, leaf, shape in
                zip(program.inputs, leaves, (s for s, _ in program.signature))
                if leaf.independent]

    def _scalar_output(self, program: _Program, what: str) -> int:
        if len(program.outputs) != 1 or int(np.prod(program.out_shapes[0])) != 1:
            raise ValueError(f"{what} needs f to return a single scalar; {self.name} returns "
                             f"{len(program.outputs)} output(s) of shapes "
                             f"{[list(s) for s in program.out_shapes]}: use vjp() or "
                             f"jacobian()")
        return program.outputs[0]

    # -- the replays -----------------------------------------------------------------------------
    def __call__(self, *args):
        """The value of ``f`` at ``args``. With a leading batch axis on the differentiated
        inputs (and a scalar ``f``), the values for each row, in one Numba call."""
        with self._lock:
            xs = self._batch(args)
            if xs is not None:
                return self._batched(xs, args, False)[0]
            return self._outputs(self._runner(1, args, loops=True))

    def value_and_grad(self, *args):
        """``(f(args), gradient)``; ``f`` returns one scalar. The gradient has the structure
        of the differentiated arguments (a tuple when there are several). With a leading
        batch axis on the differentiated inputs: values and gradients per row, in one
        Numba call."""
        with self._lock:
            result = self._generated_value_and_grad(args)
            if result is not None:
                return result
            xs = self._batch(args)
            if xs is not None:
                return self._batched(xs, args, True)
            runner = self._runner(1, args, loops=True)
            program = runner.program
            out = self._scalar_output(program, "value_and_grad")
            value = runner.value(out, program.out_shapes[0])
            runner.reverse([(out, 1.0)])
            return value, self._arrange([runner.adjoint(node, shape) for node, shape in
                                         self._independent(program)])

    def _generated_value_and_grad(self, args: tuple):
        """``value_and_grad`` in one call of the generated code of the program's loops
        (:mod:`jitgrad.kernels.loops`) for plain array arguments of the recorded shapes and
        dtypes, once the current variant's plan has it. None: take the ordinary path (which
        also records again where a guard failed)."""
        variants = self._variants[1]
        if not variants:
            return None
        runner = variants[0]
        fast = runner.generated
        if fast is None:
            fast = self._generated_call(runner)
            if fast is None:
                return None
            runner.generated = fast
        if fast is False:
            return None
        driver, numba_program, plan, signature, leaves, out_dtype = fast
        if len(args) != len(signature) or runner.captured_changed():
            return None
        for a, (shape, dtype) in zip(args, signature):
            if type(a) is not np.ndarray or a.shape != shape or a.dtype != dtype or \
                    not a.flags.c_contiguous:
                return None
        x = args[0] if len(args) == 1 and args[0].dtype == np.float64 else \
            np.concatenate([np.ravel(a) for a in args]).astype(np.float64)
        grad = np.empty(sum(size for size, _, _ in leaves))
        from numba.core.errors import NumbaError

        try:
            value, status = driver(numba_program, x, grad, plan)
        except NumbaError as error:
            runner.program.loop_plan().fail(error)
            runner.generated = False
            return None
        if status:
            return None
        self.calls += 1
        per_leaf, at = [], 0
        for size, shape, dtype in leaves:
            per_leaf.append(grad[at:at + size].reshape(shape).astype(dtype, copy=False))
            at += size
        return out_dtype(value), self._arrange(per_leaf)

    def _generated_call(self, runner: _Runner):
        """What :meth:`_generated_value_and_grad` needs: None while the plan has no driver
        (asked again later), False where it does not apply (pytree or static arguments, an
        output that is not 0-d)."""
        program, plan = runner.program, runner.plan
        if plan is None or plan.driver is None:
            return None
        plain = all(structure == ["leaf"] and leaves[0].traced for structure, leaves
                    in self._specs)
        if not plain or program.out_shapes[0] != () or len(program.outputs) != 1:
            return False
        traced = [leaf for leaf in self._leaves() if leaf.traced]
        leaves = [(math.prod(shape), shape, leaf.dtype) for (_, shape), leaf in
                  zip(self._independent(program), [leaf for leaf in traced
                                                   if leaf.independent])]
        out_dtype = (np.float32 if program.node_location(program.outputs[0])[2] == DTYPE_F32
                     else np.float64)
        return (plan.driver, self._numba_program(runner), plan.arrays,
                [tuple(sig) for sig in program.signature], leaves, out_dtype)

    def grad(self, *args):
        """The gradient of the scalar ``f`` at ``args``."""
        return self.value_and_grad(*args)[1]

    def vjp(self, *args):
        """``vjp(*inputs, cotangent)``: the cotangent (shaped like the outputs) pulled back
        to the differentiated inputs.

        >>> import numpy as np, jitgrad
        >>> tape = jitgrad.compile(lambda x: x * x, np.ones(2))
        >>> tape.vjp(np.array([1.0, 3.0]), np.array([1.0, 10.0]))
        array([ 2., 60.])
        """
        if not args:
            raise TypeError("vjp(*inputs, cotangent): the cotangent is missing")
        *args, cotangent = args
        with self._lock:
            runner = self._runner(1, tuple(args), loops=True)
            program = runner.program
            values: list = []
            if _flatten(cotangent, values) != self._out_structure:
                raise TypeError("vjp: the cotangent must have the structure of f's outputs")
            seeds = []
            for k, (node, shape, u) in enumerate(zip(program.outputs, program.out_shapes,
                                                     values)):
                u = np.asarray(u)
                if u.shape != tuple(shape):
                    raise ValueError(f"vjp: cotangent {k} has shape {list(u.shape)}, output "
                                     f"{k} has shape {list(shape)}")
                seeds.append((node, u))
            runner.reverse(seeds)
            return self._arrange([runner.adjoint(node, shape) for node, shape in
                                  self._independent(program)])

    def _tangent_seeds(self, program: _Program, v, directions: int = 1) -> list:
        values: list = []
        structure = []
        independent = self._independent(program)
        if len(independent) == 1:
            values = [v]
        else:
            _flatten(v, values)
        del structure
        if len(values) != len(independent):
            raise TypeError(f"the tangent must match the {len(independent)} differentiated "
                            f"input(s)")
        seeds = []
        for (node, shape), t in zip(independent, values):
            t = np.asarray(t, np.float64)
            if t.shape != tuple(shape):
                raise ValueError(f"tangent of shape {list(t.shape)} for an input of shape "
                                 f"{list(shape)}")
            seeds.append((node, t.reshape(1, -1)))
        return seeds

    def jvp(self, *args):
        """``jvp(*inputs, tangent)``: ``(f(inputs), J @ tangent)``; the tangent is shaped
        like the differentiated inputs (a tuple when there are several). One tangent
        sweep (forward mode) after the value replay.

        >>> import numpy as np, jitgrad
        >>> tape = jitgrad.compile(lambda x: (x ** 3).sum(), np.ones(2))
        >>> tape.jvp(np.array([1.0, 2.0]), np.array([1.0, 1.0]))
        (np.float64(9.0), np.float64(15.0))
        """
        if not args:
            raise TypeError("jvp(*inputs, tangent): the tangent is missing")
        *args, v = args
        with self._lock:
            runner = self._runner(1, tuple(args))
            program = runner.program
            tan32, tan64 = runner.tangents(self._tangent_seeds(program, v), 1)
            tangents = [_row(program, node, shape, tan32, tan64, 0)
                        for node, shape in zip(program.outputs, program.out_shapes)]
            return self._outputs(runner), _unflatten(self._out_structure, tangents)

    def hvp(self, *args):
        """``hvp(*inputs, v)``: the Hessian of the scalar ``f`` times ``v``, by
        forward-over-reverse: the gradient was recorded on the tape (``create_graph``),
        its values are replayed and one tangent sweep pushes ``v`` through it.

        >>> import numpy as np, jitgrad
        >>> tape = jitgrad.compile(lambda x: (x ** 3).sum(), np.ones(2))
        >>> tape.hvp(np.array([1.0, 2.0]), np.array([1.0, 1.0]))
        array([ 6., 12.])
        """
        if not args:
            raise TypeError("hvp(*inputs, v): the vector is missing")
        *args, v = args
        with self._lock:
            runner = self._runner(2, tuple(args))
            program = runner.program
            tan32, tan64 = runner.tangents(self._tangent_seeds(program, v), 1)
            return self._arrange([
                _row(program, g, shape, tan32, tan64, 0)
                for g, (_, shape) in zip(program.gradients, self._independent(program))])

    def jacobian(self, *args):
        """The Jacobian d(outputs)/d(inputs): an array of shape ``out.shape + in.shape`` for
        one output and one differentiated input, else tuples (outputs, then inputs). Reverse
        sweeps (one per output element) or tangent sweeps, whichever are fewer.

        >>> import numpy as np, jitgrad
        >>> tape = jitgrad.compile(lambda x: x[:2] * x[1:], np.ones(3))
        >>> tape.jacobian(np.array([1.0, 2.0, 3.0]))
        array([[2., 1., 0.],
               [0., 3., 2.]])
        """
        with self._lock:
            runner = self._runner(1, args)
            program = runner.program
            independent = self._independent(program)
            outs = list(zip(program.outputs, program.out_shapes))
            n_in = sum(int(np.prod(s)) for _, s in independent)
            n_out = sum(int(np.prod(s)) for _, s in outs)
            full = np.zeros((n_out, n_in))
            if n_out <= n_in:
                row = 0
                for node, shape in outs:
                    for i in range(int(np.prod(shape))):
                        seed = np.zeros(int(np.prod(shape)))
                        seed[i] = 1.0
                        runner.reverse([(node, seed)])
                        full[row] = np.concatenate([
                            np.ravel(runner.adjoint(n, s)) for n, s in independent])
                        row += 1
            else:
                for start, seeds in _direction_chunks(independent, n_in, len(runner.vals64)):
                    tan32, tan64 = runner.tangents(seeds, seeds[0][1].shape[0])
                    k = seeds[0][1].shape[0]
                    full[:, start:start + k] = np.concatenate([
                        _rows(program, node, tan32, tan64) for node, _ in outs], axis=1).T
            return _blocks(full, [s for _, s in outs], [s for _, s in independent])

    def hessian(self, *args):
        """The Hessian of the scalar ``f``: tangent sweeps over the recorded gradient, a
        chunk of directions per sweep.

        >>> import numpy as np, jitgrad
        >>> tape = jitgrad.compile(lambda x: x[0] ** 2 * x[1], np.ones(2))
        >>> tape.hessian(np.array([1.0, 3.0]))
        array([[6., 2.],
               [2., 0.]])
        """
        with self._lock:
            runner = self._runner(2, args)
            program = runner.program
            independent = self._independent(program)
            n = sum(int(np.prod(s)) for _, s in independent)
            full = np.zeros((n, n))
            for start, seeds in _direction_chunks(independent, n, len(runner.vals64)):
                tan32, tan64 = runner.tangents(seeds, seeds[0][1].shape[0])
                k = seeds[0][1].shape[0]
                full[:, start:start + k] = np.concatenate([
                    _rows(program, g, tan32, tan64) for g in program.gradients], axis=1).T
            shapes = [s for _, s in independent]
            return _blocks(full, shapes, shapes)

    # -- the tape as data ------------------------------------------------------------------------
    def save(self, path) -> None:
        """Write the tape (every recorded variant) to ``path``, a NumPy ``.npz`` of arrays
        and a JSON header: no pickled code. :func:`load` reads it back.

        >>> import numpy as np, jitgrad, tempfile, os
        >>> tape = jitgrad.compile(lambda x: (x ** 3).sum(), np.ones(2))
        >>> path = os.path.join(tempfile.mkdtemp(), "cube.npz")
        >>> tape.save(path)
        >>> jitgrad.load(path).grad(np.array([1.0, 2.0]))
        array([ 3., 12.])
        """
        with self._lock:
            arrays: dict = {}
            programs = []
            for order in (1, 2):
                for runner in self._variants[order]:
                    programs.append(_program_json(runner.program, f"p{len(programs)}.",
                                                  arrays))
            header = {
                "format": _FORMAT, "version": _FORMAT_VERSION, "name": self.name,
                "ops": [op.name for op in OPS],
                "specs": [[structure, [_leaf_json(leaf) for leaf in leaves]]
                          for structure, leaves in self._specs],
                "out_structure": self._out_structure, "on_branch_change": self.on_branch_change,
                "dynamic": self.dynamic, "optimize": self.optimize,
                "max_variants": self.max_variants, "programs": programs,
            }
            text = json.dumps(header)
            arrays["checksum"] = np.array(_checksum(text, arrays))
            arrays["header"] = np.array(text)
            np.savez(path, **arrays)

    def __len__(self) -> int:
        """Entries of the current recording."""
        return len(self._current.entries)

    def __repr__(self) -> str:
        program = self._current
        return (f"<CompiledTape {self.name}: {len(program.entries)} entries, "
                f"{len(program.guards)} guards, {self.recordings} recording(s)>")

    def __str__(self) -> str:
        return _listing(self, self._current)


def _index_batch(arg, leaves: list, b: int):
    """Row ``b`` of a batched argument (its unbatched leaves as they are)."""
    values: list = []
    structure = _flatten(arg, values)
    picked = [np.asarray(v)[b] if np.ndim(v) > len(leaf.shape) else v
              for v, leaf in zip(values, leaves)]
    return _unflatten(structure, picked)


def _row(program: _Program, node: int, shape: tuple, tan32, tan64, k: int):
    offset, size, code = program.node_location(node)
    values = (tan32 if code == DTYPE_F32 else tan64)[k, offset:offset + size]
    return values[0] if not shape else values.reshape(shape).copy()


def _rows(program: _Program, node: int, tan32, tan64) -> np.ndarray:
    offset, size, code = program.node_location(node)
    return np.asarray((tan32 if code == DTYPE_F32 else tan64)[:, offset:offset + size],
                      np.float64)


def _direction_chunks(independent: list, n: int, arena: int):
    """(first direction, seeds) for chunks of unit tangent directions."""
    chunk = int(max(1, min(n, 64, (1 << 24) // max(arena, 1))))
    starts = np.cumsum([0] + [int(np.prod(s)) for _, s in independent])
    for start in range(0, n, chunk):
        k = min(chunk, n - start)
        seeds = []
        for (node, _), lo, hi in zip(independent, starts[:-1], starts[1:]):
            rows = np.zeros((k, hi - lo))
            for j in range(k):
                if lo <= start + j < hi:
                    rows[j, start + j - lo] = 1.0
            seeds.append((node, rows))
        yield start, seeds


def _blocks(full: np.ndarray, out_shapes: list, in_shapes: list):
    rows = np.cumsum([0] + [int(np.prod(s)) for s in out_shapes])
    cols = np.cumsum([0] + [int(np.prod(s)) for s in in_shapes])
    table = [tuple(full[rows[i]:rows[i + 1], cols[j]:cols[j + 1]].reshape(
        tuple(so) + tuple(si)) for j, si in enumerate(in_shapes))
        for i, so in enumerate(out_shapes)]
    table = [row[0] if len(in_shapes) == 1 else row for row in table]
    return table[0] if len(out_shapes) == 1 else tuple(table)


def compile(f, *example_inputs, parameters=(), on_branch_change: str = "rerecord",  # noqa: A001
            dynamic: bool = False, optimize: bool = True,
            max_variants: int = 8) -> CompiledTape:
    """Record ``f`` at ``example_inputs`` once; replay it in Numba for new inputs.

    ``f`` takes the inputs as jitgrad Tensors and returns Tensors (or tuples/lists/dicts of
    them). Float arrays and Python floats among the inputs are traced: differentiated,
    unless their positional index is in ``parameters`` (then they may change between calls,
    CppAD's dynamic parameters, but get no gradient). Other inputs (ints, strings, int
    arrays) are static: a new value records again.

    ``on_branch_change``: what a replay does when a guard fails -- ``"rerecord"`` (record
    ``f`` again at the new inputs; up to ``max_variants`` recordings are kept and tried) or
    ``"raise"`` (:class:`BranchChanged`). ``dynamic``: a new input shape or float dtype
    records again instead of raising. ``optimize``: run the optimization pass (dead code,
    constant folding, exact common subexpressions), which does not change any result.

    >>> import numpy as np, jitgrad
    >>> def f(x, a):
    ...     return jitgrad.relu(x * a).sum()
    >>> tape = jitgrad.compile(f, np.array([1.0, -2.0]), 3.0, parameters=[1])
    >>> tape.grad(np.array([-1.0, 2.0]), 0.5)   # relu flips are recomputed: no guard
    array([0. , 0.5])
    """
    return CompiledTape(f, example_inputs, parameters=parameters,
                        on_branch_change=on_branch_change, dynamic=dynamic, optimize=optimize,
                        max_variants=max_variants)


trace = compile


# -- the optimization pass ----------------------------------------------------------------------
# x * 1, x / 1, x - (+0), x + (-0) and clone give x exactly (signed zeros and NaN included)
_IDENTITY = {"mul_scalar": 1.0, "div_scalar": 1.0, "sub_scalar": 0.0, "add_scalar": -0.0,
             "clone": None}


def _bits(value: float) -> int:
    return struct.unpack("<q", struct.pack("<d", value))[0]


def _optimized(program: _Program) -> _Program:
    """The program without dead entries, with entries of constants folded, exact identities
    removed and repeated non-differentiated entries merged; results do not change:

    * dead code: entries nothing live reads run nowhere (their adjoints are not reached);
    * constant folding: an entry reading only constants is computed once, by the same
      replay kernel, at compile time;
    * identities (``x * 1``, ``x - 0``, clone, a contiguous view) whose input has no other
      reader: the output is the input's value exactly, and the input's adjoint receives
      the same contributions in the same order (they reached it through the identity);
    * common subexpressions: only among entries that no differentiated input reaches, so
      no adjoint sum is reassociated.
    """
    kinds = _core_tables()[0]
    entries = program.entries.copy()
    nodes = program.nodes
    n, m = len(entries), len(nodes)
    codes = entries[:, E_OP]
    kind = kinds[codes] if n else np.zeros(0, np.int64)
    out = entries[:, E_OUT]
    ins = entries[:, E_IN0:E_IN0 + 3]
    alias = np.arange(m)

    def find(x: int) -> int:
        while alias[x] != x:
            alias[x] = alias[alias[x]]
            x = alias[x]
        return int(x)

    aux_written = np.zeros(m, bool)
    aux_entry = np.zeros(n + 1, bool)
    uses = np.bincount(ins[ins >= 0], minlength=m)
    for x in program.aux:
        if x.dst is not None and x.dst[0] == "node":
            aux_written[x.dst[1]] = True
        if x.fibers is not None:
            aux_entry[x.pos] = True
        for ref in (x.a, x.b):
            if ref is not None and ref[0] == "node":
                uses[ref[1]] += 1
    aux_entry = aux_entry[:n]
    is_input = np.zeros(m, bool)
    is_input[program.inputs] = True
    roots = np.zeros(m, bool)
    roots[program.outputs + (program.gradients or [])] = True
    drop = np.zeros(n, bool)
    folded = _fold(program, entries, kind, aux_written, aux_entry, is_input, drop)
    dropped_inputs = ins[drop]
    np.subtract.at(uses, dropped_inputs[dropped_inputs >= 0], 1)
    # the few entries that may be identities or merged: the rest are renamed at the end
    c0_bits = program.consts[:, E_C0].view(np.int64)
    identity = np.zeros(n, bool)
    for name, value in _IDENTITY.items():
        match = codes == BY_NAME[name].code
        if value is not None:
            match &= c0_bits == _bits(value)
        identity |= match
    # a view is the identity only if it has every element of its input (25k ``x[i]`` of a
    # scalar loop need not be looked at one by one)
    whole = nodes[out, N_SIZE] == nodes[np.maximum(ins[:, 0], 0), N_SIZE]
    identity |= (kind == RESTRIDE) & whole
    mergeable = (nodes[out, N_GRAD] == 0) & (kind != PLACE) & (kind != SCATTER)
    free = ~drop & ~aux_entry & ~aux_written[out] & ~is_input[out]
    seen: dict = {}
    for e in np.flatnonzero(free & (identity | mergeable)):
        for col in range(E_IN0, E_IN0 + 3):
            if entries[e, col] >= 0:
                entries[e, col] = find(int(entries[e, col]))
        y = int(out[e])
        x = _identity_input(program, entries, kind, e) if identity[e] else None
        if (x is not None and uses[x] == 1 and not roots[x]
                and nodes[x, N_DTYPE] == nodes[y, N_DTYPE]):
            alias[y] = x
            uses[x] += uses[y] - 1
            drop[e] = True
            continue
        if not mergeable[e]:
            continue
        key = _entry_key(program, entries, kind, e)
        first = seen.setdefault(key, y)
        if first != y:
            alias[y] = first
            uses[first] += uses[y]
            drop[e] = True
            row = entries[e, E_IN0:E_IN0 + 3]
            np.subtract.at(uses, row[row >= 0], 1)
    while True:  # every name to its final one
        hop = alias[alias]
        if (hop == alias).all():
            break
        alias = hop
    entries[:, E_IN0:E_IN0 + 3] = np.where(ins >= 0, alias[np.maximum(ins, 0)], -1)
    return _compacted(program, entries, kind, drop, alias, folded)


def _identity_input(program: _Program, entries, kind, e: int) -> int | None:
    """The input of entry ``e`` when its output is that input's value exactly."""
    x = int(entries[e, E_IN0])
    if kind[e] != RESTRIDE:
        return x
    meta, mo = program.meta, int(entries[e, E_META])
    ndim = int(meta[mo])
    shape = meta[mo + 1:mo + 1 + ndim]
    strides = meta[mo + 1 + ndim:mo + 1 + 2 * ndim]
    if meta[mo + 1 + 2 * ndim] != 0 or int(np.prod(shape)) != program.nodes[x, N_SIZE]:
        return None
    step = 1
    for d in range(ndim - 1, -1, -1):
        if shape[d] != 1 and strides[d] != step:
            return None
        step *= int(shape[d])
    return x


def _meta_lengths(kind: np.ndarray, arity: np.ndarray, mo: np.ndarray,
                  meta: np.ndarray) -> np.ndarray:
    """How many meta values each entry owns from its offset ``mo`` on."""
    top = len(meta) - 1
    first = meta[np.clip(mo, 0, top)]
    second = meta[np.clip(mo + 1, 0, top)]
    lengths = np.zeros(len(kind), np.int64)
    lengths = np.where(kind == ELEMENTWISE, np.where(first == 0, 1, 2 + second * (1 + arity)),
                       lengths)
    lengths = np.where(kind == REDUCE, 1 + 2 * first, lengths)
    lengths = np.where((kind == RESTRIDE) | (kind == PLACE), 2 + 2 * first, lengths)
    lengths = np.where((kind == GATHER) | (kind == SCATTER), 1 + first, lengths)
    lengths = np.where(kind == MATMUL, 6, lengths)
    return np.where(mo >= 0, lengths, 0)


def _arity(codes: np.ndarray) -> np.ndarray:
    return np.array([op.arity for op in OPS], np.int64)[codes]


def _entry_key(program: _Program, entries, kind, e: int) -> tuple:
    mo = int(entries[e, E_META])
    length = int(_meta_lengths(kind[e:e + 1], _arity(entries[e:e + 1, E_OP]),
                               entries[e:e + 1, E_META], program.meta)[0])
    return (int(entries[e, E_OP]), *entries[e, E_IN0:E_IN0 + 3].tolist(),
            _bits(program.consts[e, E_C0]), _bits(program.consts[e, E_C1]),
            tuple(program.meta[mo:mo + length].tolist()),
            int(program.nodes[entries[e, E_OUT], N_DTYPE]))


def _fold(program: _Program, entries, kind, aux_written, aux_entry, is_input, drop) -> dict:
    """Entries reading only constants: their values from one replay (the same kernel as
    any later replay), {node: values}; marks them dropped."""
    static = ((program.nodes[:, N_ENTRY] < 0) & ~is_input & ~aux_written).astype(np.uint8)
    allowed = ((kind != PLACE) & ~aux_entry).astype(np.uint8)
    found = np.flatnonzero(_kernels().fold_candidates(entries, static, allowed))
    if not found.size:
        return {}
    runner = _Runner(program)
    if runner.forward() != 0:
        return {}  # a guard at its edge (replay rounding): keep the entries
    drop[found] = True
    return {int(entries[e, E_OUT]): program.node_values(
        int(entries[e, E_OUT]), runner.vals32, runner.vals64).copy() for e in found}


def _compacted(program: _Program, entries, kind, drop, alias, folded: dict) -> _Program:
    """Drop dead and removed entries and the nodes no one reads; pack the arenas."""
    n, m = len(entries), len(program.nodes)

    def find(x: int) -> int:
        return int(alias[x])

    outputs = [find(x) for x in program.outputs]
    gradients = None if program.gradients is None else [find(x) for x in program.gradients]
    aux = [_Aux(**{**x.__dict__, "a": _renamed(x.a, find), "b": _renamed(x.b, find),
                   "dst": _renamed(x.dst, find)}) for x in program.aux]
    # liveness: from the outputs and every guard, backwards through entries and aux ops
    live = np.zeros(m, np.uint8)
    live[outputs + (gradients or [])] = 1
    live_entry = np.zeros(n, np.uint8)
    bases = np.full(m, -1, np.int64)
    for k, v in program.place_bases.items():
        bases[k] = v
    live_slots: set = set()
    live_aux = [x.guard >= 0 for x in aux]
    dropped = drop.astype(np.uint8)
    changed = True
    while changed:
        changed = False
        for i, x in enumerate(aux):
            dst = x.dst
            if not live_aux[i] and dst is not None and (
                    (dst[0] == "node" and live[dst[1]]) or
                    (dst[0] == "slot" and dst[1] in live_slots) or
                    (dst[0] == "meta" and live_entry[dst[1]])):
                live_aux[i] = changed = True
            if live_aux[i]:
                for ref in (x.a, x.b):
                    if ref is not None and ref[0] == "node" and not live[ref[1]]:
                        live[ref[1]] = 1
                        changed = True
                    elif ref is not None and ref[0] == "slot" and ref[1] not in live_slots:
                        live_slots.add(ref[1])
                        changed = True
        changed |= bool(_kernels().live_entries(entries, dropped, live, live_entry, bases))
    keep = np.flatnonzero(live_entry)
    live[program.inputs] = 1
    live[entries[keep, E_OUT]] = 1
    # new node ids; the arenas packed, node after node
    old = np.flatnonzero(live)
    new_id = np.full(m, -1, np.int64)
    new_id[old] = np.arange(len(old))
    sizes = program.nodes[old, N_SIZE]
    codes = program.nodes[old, N_DTYPE]
    offsets = np.zeros(len(old), np.int64)
    arenas = []
    for code, source in ((DTYPE_F32, program.vals32), (1, program.vals64)):
        mine = np.flatnonzero(codes == code)
        ends = np.cumsum(sizes[mine])
        offsets[mine] = ends - sizes[mine]
        starts = program.nodes[old[mine], N_OFFSET]
        index = np.repeat(starts - offsets[mine], sizes[mine]) + np.arange(
            int(ends[-1]) if len(ends) else 0)
        arena = source[index]
        for node, values in folded.items():
            i = new_id[node]
            if i >= 0 and codes[i] == code:
                arena[offsets[i]:offsets[i] + sizes[i]] = values
        arenas.append(arena)
    nodes = np.zeros((len(old), N_WIDTH), np.int64)
    nodes[:, N_OFFSET] = offsets
    nodes[:, N_SIZE] = sizes
    nodes[:, N_DTYPE] = codes
    nodes[:, N_GRAD] = program.nodes[old, N_GRAD]
    nodes[:, N_ENTRY] = -1
    new_entries = entries[keep].copy()
    for col in (E_OUT, E_IN0, E_IN0 + 1, E_IN0 + 2):
        column = new_entries[:, col]
        new_entries[:, col] = np.where(column >= 0, new_id[np.maximum(column, 0)], -1)
    mo = entries[keep, E_META]
    lengths = _meta_lengths(kind[keep], _arity(entries[keep, E_OP]), mo, program.meta)
    ends = np.cumsum(lengths)
    new_entries[:, E_META] = np.where(lengths > 0, ends - lengths, -1)
    index = np.repeat(mo - (ends - lengths), lengths) + np.arange(int(ends[-1]) if len(ends)
                                                                   else 0)
    meta = program.meta[index] if index.size else np.zeros(1, np.int64)
    nodes[new_entries[:, E_OUT], N_ENTRY] = np.arange(len(keep))
    new_entry = np.full(n + 1, -1, np.int64)
    new_entry[keep] = np.arange(len(keep))
    first_at = np.searchsorted(keep, np.arange(n + 1))  # entries kept before each position
    kept_aux = [_Aux(**{**x.__dict__, "pos": int(first_at[x.pos]),
                        "a": _renumbered(x.a, new_id, new_entry),
                        "b": _renumbered(x.b, new_id, new_entry),
                        "dst": _renumbered(x.dst, new_id, new_entry)})
                for x, alive in zip(aux, live_aux) if alive]
    return _Program(
        new_entries, nodes, meta, arenas[0], arenas[1], [program.shapes[i] for i in old],
        [int(new_id[x]) for x in program.inputs], list(program.independent),
        [int(new_id[x]) for x in outputs], list(program.out_shapes),
        None if gradients is None else [int(new_id[x]) for x in gradients], kept_aux,
        list(program.guards), program.order, signature=program.signature,
        statics=program.statics, captured=program.captured,
        place_bases={int(new_id[k]): int(new_id[v]) for k, v in program.place_bases.items()
                     if new_id[k] >= 0 and new_id[v] >= 0},
        optimized=True)


def _renamed(ref, find):
    if ref is not None and ref[0] == "node":
        return ("node", find(ref[1]))
    return ref


def _renumbered(ref, new_id, new_entry):
    if ref is None:
        return None
    if ref[0] == "node":
        return ("node", int(new_id[ref[1]]))
    if ref[0] == "meta":
        return ("meta", int(new_entry[ref[1]]))
    return ref


# -- the listing ----------------------------------------------------------------------------------
_LISTING_HEAD = 40
_LISTING_TAIL = 10


def _listing(tape: CompiledTape, program: _Program) -> str:
    """``print(tape)``: inputs, entries (``%out = op(%in, ...)``), outputs and guards."""
    traced = [leaf for leaf in tape._leaves() if leaf.traced]
    names = _leaf_names(tape)
    lines = [f"CompiledTape {tape.name}: {len(program.entries)} entries, "
             f"{len(program.nodes)} nodes, {len(program.guards)} guard(s)"
             f"{', optimized' if program.optimized else ''}; {tape.recordings} recording(s)"]
    for node, leaf, name in zip(program.inputs, traced, names):
        role = "input" if leaf.independent else "parameter"
        lines.append(f"  %{node} = {role} {name}  {_type(program, node)}")
    aux_at: dict = {}
    for x in program.aux:
        aux_at.setdefault(x.pos, []).append(x)
    body = []
    for e in range(len(program.entries)):
        body += [_aux_line(x) for x in aux_at.get(e, [])]
        body.append(_entry_line(program, e))
    body += [_aux_line(x) for x in aux_at.get(len(program.entries), [])]
    if len(body) > _LISTING_HEAD + _LISTING_TAIL:
        skipped = len(body) - _LISTING_HEAD - _LISTING_TAIL
        body = body[:_LISTING_HEAD] + [f"  ... {skipped} more lines ..."] + \
            body[-_LISTING_TAIL:]
    lines += body
    outs = ", ".join(f"%{node}" for node in program.outputs)
    lines.append(f"  return {outs}")
    if program.gradients is not None:
        lines.append("  gradient " + ", ".join(f"%{node}" for node in program.gradients))
    lines += [f"  {guard}" for guard in program.guards]
    return "\n".join(lines)


def _leaf_names(tape: CompiledTape) -> list:
    import inspect

    try:
        params = list(inspect.signature(tape._f).parameters) if tape._f else []
    except (TypeError, ValueError):
        params = []
    names = []
    for i, (_, leaves) in enumerate(tape._specs):
        base = params[i] if i < len(params) else f"arg{i}"
        traced = [leaf for leaf in leaves if leaf.traced]
        for k, _leaf in enumerate(traced):
            names.append(base if len(leaves) == 1 else f"{base}[{k}]")
    return names


def _type(program: _Program, node: int) -> str:
    code = program.nodes[node, N_DTYPE]
    return f"{'float32' if code == DTYPE_F32 else 'float64'}{list(program.shapes[node])}"


def _operand(program: _Program, node: int) -> str:
    if node < 0:
        return "_"
    if program.nodes[node, N_ENTRY] < 0 and node not in program.inputs:
        values = program.node_values(node, program.vals32, program.vals64)
        if values.size == 1:
            return f"{values[0]:g}"
    return f"%{node}"


def _entry_line(program: _Program, e: int) -> str:
    row = program.entries[e]
    op = OPS[row[E_OP]]
    args = [_operand(program, int(row[E_IN0 + k])) for k in range(op.arity)
            if k == 0 or row[E_IN0 + k] >= 0]
    if op.kind == ELEMENTWISE:
        used = recording_names(op.forward or "")
        args += [f"{c}={program.consts[e, col]:g}" for c, col in (("c0", E_C0), ("c1", E_C1))
                 if c in used]
    out = int(row[E_OUT])
    return f"  %{out} = {op.name}({', '.join(args)})  {_type(program, out)}"


def recording_names(expression: str) -> set:
    from .ops.registry import _names_in

    return _names_in(expression) if expression else set()


def _aux_line(x: _Aux) -> str:
    from .kernels import replay as R  # noqa: N812

    if x.guard >= 0:
        return f"  guard #{x.guard}: {x.text}"
    target = {"node": "%{}", "slot": "s{}", "meta": "indices of entry {}"}[x.dst[0]].format(
        x.dst[1]) if x.dst is not None else "_"
    sources = [_aux_operand(ref) for ref in (x.a, x.b) if ref is not None]
    return f"  {target} <- {R.A_NAMES.get(x.op, '?')}({', '.join(sources)})  (recomputed)"


def _aux_operand(ref) -> str:
    if ref[0] == "node":
        return f"%{ref[1]}"
    if ref[0] == "slot":
        return f"s{ref[1]}"
    value = ref[1]
    return f"{float(value.reshape(-1)[0]):g}" if value.size == 1 else f"const{list(value.shape)}"


# -- saving and loading ----------------------------------------------------------------------------
def _leaf_json(leaf: _Leaf) -> dict:
    static = leaf.static
    if isinstance(static, np.ndarray):
        static = {"array": static.tolist(), "dtype": str(static.dtype)}
    elif not (static is None or isinstance(static, (bool, int, float, str))):
        raise TypeError(f"save: static argument {static!r} cannot be written (only numbers, "
                        f"strings, None and arrays)")
    return {"arg": leaf.arg, "traced": leaf.traced, "independent": leaf.independent,
            "shape": list(leaf.shape), "dtype": None if leaf.dtype is None else str(leaf.dtype),
            "scalar": leaf.scalar, "static": static}


def _leaf_from_json(item: dict) -> _Leaf:
    static = item["static"]
    if isinstance(static, dict):
        static = np.array(static["array"], dtype=static["dtype"])
    return _Leaf(item["arg"], item["traced"], item["independent"], tuple(item["shape"]),
                 None if item["dtype"] is None else np.dtype(item["dtype"]), item["scalar"],
                 static)


def _ref_json(ref, key: str, arrays: dict):
    if ref is None:
        return None
    if ref[0] == "const":
        arrays[key] = np.asarray(ref[1], np.float64)
        return ["const", key]
    return [ref[0], int(ref[1])]


def _program_json(program: _Program, prefix: str, arrays: dict) -> dict:
    for name in ("entries", "nodes", "meta", "vals32", "vals64"):
        arrays[prefix + name] = getattr(program, name)
    aux = []
    for j, x in enumerate(program.aux):
        key = f"{prefix}aux{j}."
        item = {"pos": x.pos, "seq": x.seq, "op": x.op, "size": x.size, "flat": x.flat,
                "guard": x.guard, "text": x.text, "site": x.site, "name": x.name,
                "dst": _ref_json(x.dst, key + "dst", arrays),
                "a": _ref_json(x.a, key + "a", arrays), "b": _ref_json(x.b, key + "b", arrays),
                "layout": None if x.layout is None else [list(map(int, part))
                                                         for part in x.layout],
                "fibers": None if x.fibers is None else [int(v) for v in x.fibers[:3]],
                "expect": x.expect is not None}
        if x.fibers is not None:
            arrays[key + "starts"] = np.asarray(x.fibers[3], np.int64)
        if x.expect is not None:
            arrays[key + "expect"] = np.asarray(x.expect, np.float64)
        aux.append(item)
    statics = []
    for value in program.statics:
        statics.append(_leaf_json(_Leaf(0, False, static=value))["static"])
    return {
        "prefix": prefix, "order": program.order, "inputs": program.inputs,
        "independent": program.independent, "outputs": program.outputs,
        "out_shapes": [list(s) for s in program.out_shapes], "gradients": program.gradients,
        "shapes": [list(s) for s in program.shapes], "optimized": program.optimized,
        "signature": [[list(shape), str(dtype)] for shape, dtype in program.signature],
        "statics": statics, "guards": [[g.number, g.op, g.text, g.site] for g in program.guards],
        "place_bases": [[int(k), int(v)] for k, v in program.place_bases.items()], "aux": aux,
    }


def _checksum(text: str, arrays: dict) -> str:
    digest = hashlib.sha256(text.encode())
    for key in sorted(arrays):
        if key in ("checksum", "header"):
            continue
        array = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def load(path, f=None) -> CompiledTape:
    """Read a tape written by :meth:`CompiledTape.save`. Without ``f`` it replays only what
    was recorded (a failing guard raises :class:`BranchChanged`); with ``f`` it can record
    again. A file that is not such a tape, or was changed, raises ``ValueError``.

    >>> import jitgrad, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "junk.npz")
    >>> _ = open(path, "wb").write(b"not a tape")
    >>> jitgrad.load(path)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: ...junk.npz is not a jitgrad compiled tape (...)
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise
    except Exception as error:  # noqa: BLE001 - zip, pickle and format errors alike
        raise ValueError(f"{path} is not a jitgrad compiled tape ({error})") from None
    if "header" not in arrays or "checksum" not in arrays:
        raise ValueError(f"{path} is not a jitgrad compiled tape (no header: written by "
                         f"something else)")
    text = str(arrays.pop("header")[()])
    stored = str(arrays.pop("checksum")[()])
    if _checksum(text, arrays) != stored:
        raise ValueError(f"{path}: the compiled tape is corrupt (its checksum does not match)")
    try:
        header = json.loads(text)
        if header.get("format") != _FORMAT:
            raise ValueError("not a compiled tape header")
        if header.get("version") != _FORMAT_VERSION:
            raise ValueError(f"format version {header.get('version')}, this jitgrad reads "
                             f"{_FORMAT_VERSION}")
        return _tape_from(header, arrays, f)
    except (KeyError, TypeError, IndexError, ValueError, AssertionError) as error:
        raise ValueError(f"{path}: unreadable compiled tape ({error})") from None


def _tape_from(header: dict, arrays: dict, f) -> CompiledTape:
    codes = []
    for name in header["ops"]:
        if name not in BY_NAME:
            raise ValueError(f"the tape uses op {name!r}, unknown to this jitgrad")
        codes.append(BY_NAME[name].code)
    codes = np.array(codes, np.int64)
    tape = CompiledTape.__new__(CompiledTape)
    tape._f = f
    tape.name = header["name"]
    tape.on_branch_change = header["on_branch_change"]
    tape.dynamic = bool(header["dynamic"])
    tape.optimize = bool(header["optimize"])
    tape.max_variants = int(header["max_variants"])
    tape._specs = [(structure, [_leaf_from_json(item) for item in leaves])
                   for structure, leaves in header["specs"]]
    tape._out_structure = header["out_structure"]
    tape._variants = {1: [], 2: []}
    tape._lock = threading.RLock()
    tape.recordings = tape.calls = 0
    tape._warned = False
    for item in header["programs"]:
        program = _program_from(item, arrays, codes)
        _validate(program, len(tape._specs) and sum(
            leaf.traced for _, leaves in tape._specs for leaf in leaves))
        tape._variants[program.order].append(_Runner(program))
    if not tape._variants[1]:
        raise ValueError("the tape holds no recording")
    return tape


def _ref_from(ref, arrays: dict):
    if ref is None:
        return None
    if ref[0] == "const":
        return ("const", np.asarray(arrays[ref[1]], np.float64))
    if ref[0] not in ("node", "slot", "meta"):
        raise ValueError(f"unknown reference {ref[0]!r}")
    return (ref[0], int(ref[1]))


def _program_from(item: dict, arrays: dict, codes: np.ndarray) -> _Program:
    prefix = item["prefix"]
    entries = np.array(arrays[prefix + "entries"], np.int64)
    if entries.ndim != 2 or entries.shape[1] != E_WIDTH:
        raise ValueError("entry table of the wrong width")
    ops = entries[:, E_OP]
    if ((ops < 0) | (ops >= len(codes))).any():
        raise ValueError("unknown opcode")
    entries[:, E_OP] = codes[ops]
    aux = []
    for j, x in enumerate(item["aux"]):
        key = f"{prefix}aux{j}."
        fibers = None
        if x["fibers"] is not None:
            fibers = (*[int(v) for v in x["fibers"]], np.asarray(arrays[key + "starts"],
                                                                   np.int64))
        aux.append(_Aux(int(x["pos"]), int(x["seq"]), int(x["op"]),
                        _ref_from(x["dst"], arrays), _ref_from(x["a"], arrays),
                        _ref_from(x["b"], arrays), int(x["size"]),
                        None if x["layout"] is None else tuple(tuple(p) for p in x["layout"]),
                        fibers, bool(x["flat"]),
                        np.asarray(arrays[key + "expect"], np.float64) if x["expect"] else
                        None, int(x["guard"]), x["text"], x["site"], x["name"]))
    statics = [_leaf_from_json({"arg": 0, "traced": False, "independent": False, "shape": [],
                                "dtype": None, "scalar": False, "static": v}).static
               for v in item["statics"]]
    return _Program(
        entries, np.array(arrays[prefix + "nodes"], np.int64),
        np.array(arrays[prefix + "meta"], np.int64),
        np.array(arrays[prefix + "vals32"], np.float32),
        np.array(arrays[prefix + "vals64"], np.float64),
        [tuple(s) for s in item["shapes"]], [int(v) for v in item["inputs"]],
        [bool(v) for v in item["independent"]], [int(v) for v in item["outputs"]],
        [tuple(s) for s in item["out_shapes"]],
        None if item["gradients"] is None else [int(v) for v in item["gradients"]], aux,
        [Guard(*g) for g in item["guards"]], int(item["order"]),
        signature=[(tuple(shape), np.dtype(d)) for shape, d in item["signature"]],
        statics=statics, place_bases={int(k): int(v) for k, v in item["place_bases"]},
        optimized=bool(item["optimized"]))


def _validate(program: _Program, traced_leaves: int) -> None:
    """Check every index the replay kernels will follow (they do not check bounds)."""
    entries, nodes, meta = program.entries, program.nodes, program.meta
    n, m = len(entries), len(nodes)

    def require(condition, what: str) -> None:
        if not condition:
            raise ValueError(f"inconsistent tape: {what}")

    require(nodes.ndim == 2 and nodes.shape[1] == N_WIDTH, "node table width")
    require(meta.ndim == 1 and len(meta) >= 1, "meta buffer")
    require(program.vals32.ndim == 1 and program.vals64.ndim == 1, "value arenas")
    require(len(program.shapes) == m, "node shapes")
    codes, sizes, offsets = nodes[:, N_DTYPE], nodes[:, N_SIZE], nodes[:, N_OFFSET]
    require(np.isin(codes, (0, 1)).all() and (sizes >= 0).all() and (offsets >= 0).all(),
            "node rows")
    limit = np.where(codes == DTYPE_F32, len(program.vals32), len(program.vals64))
    require((offsets + sizes <= limit).all(), "a node outside its arena")
    require(all(int(np.prod(s, dtype=np.int64)) == size for s, size in
                zip(program.shapes, sizes)), "node shapes and sizes")
    require(np.isin(nodes[:, N_GRAD], (0, 1)).all(), "gradient flags")
    for group in (program.inputs, program.outputs, program.gradients or []):
        require(all(0 <= x < m for x in group), "input/output nodes")
    require(len(program.inputs) == traced_leaves == len(program.independent) ==
            len(program.signature), "inputs")
    require(len(program.outputs) == len(program.out_shapes), "outputs")
    require(all(int(np.prod(s, dtype=np.int64)) == sizes[x] for x, s in
                zip(program.outputs, program.out_shapes)), "output shapes")
    require(all(int(np.prod(shape, dtype=np.int64)) == sizes[x] for x, (shape, _) in
                zip(program.inputs, program.signature)), "input shapes")
    if n:
        require((entries[:, E_OUT] >= 0).all() and (entries[:, E_OUT] < m).all(), "outputs")
        ins = entries[:, E_IN0:E_IN0 + 3]
        require(((ins >= -1) & (ins < m)).all(), "entry inputs")
        require(((entries[:, E_META] >= -1) & (entries[:, E_META] < len(meta))).all(),
                "meta offsets")
    kinds = _core_tables()[0]
    for e in range(n):
        _validate_entry(program, e, int(kinds[entries[e, E_OP]]), require)
    for base, node in program.place_bases.items():
        require(0 <= base < m and 0 <= node < m and sizes[base] == sizes[node] and
                codes[base] == codes[node], "concatenation base")
    _validate_aux(program, require)


def _validate_entry(program: _Program, e: int, kind: int, require) -> None:
    entries, nodes, meta = program.entries, program.nodes, program.meta
    row = entries[e]
    op = OPS[row[E_OP]]
    out, mo = int(row[E_OUT]), int(row[E_META])
    ins = [int(row[E_IN0 + k]) for k in range(3)]
    size = int(nodes[out, N_SIZE])
    code = nodes[out, N_DTYPE]
    what = f"entry {e} ({op.name})"

    def segment(length: int) -> np.ndarray:
        require(mo >= 0 and mo + length <= len(meta), f"{what}: meta")
        return meta[mo:mo + length]

    def reach(shape, strides, offset, target: int) -> None:
        low = offset + sum(min(0, (s - 1) * t) for s, t in zip(shape, strides) if s > 0)
        high = offset + sum(max(0, (s - 1) * t) for s, t in zip(shape, strides) if s > 0)
        require(min(shape, default=1) == 0 or (low >= 0 and high < target),
                f"{what}: strides reach outside")

    require(kind != PYTHON, f"{what}: a custom Function")
    if kind == ELEMENTWISE:
        operands = ins[:op.arity]
        require(all(x >= 0 and nodes[x, N_DTYPE] == code for x in operands),
                f"{what}: inputs")
        if mo < 0 or meta[mo] == 0:
            require(all(nodes[x, N_SIZE] == size for x in operands), f"{what}: sizes")
            return
        ndim = int(segment(2)[1])
        part = segment(2 + ndim * (1 + op.arity))
        shape = part[2:2 + ndim]
        require(ndim >= 0 and (shape >= 0).all() and int(np.prod(shape)) == size,
                f"{what}: shape")
        for k, x in enumerate(operands):
            strides = part[2 + (k + 1) * ndim:2 + (k + 2) * ndim]
            require((strides >= 0).all(), f"{what}: strides")
            reach(shape, strides, 0, int(nodes[x, N_SIZE]))
    elif kind == REDUCE:
        x = ins[0]
        require(x >= 0 and nodes[x, N_DTYPE] == code, f"{what}: input")
        ndim = int(segment(1)[0])
        if ndim == 0:
            require(size == 1, f"{what}: a full reduction has one output")
            return
        part = segment(1 + 2 * ndim)
        shape, strides = part[1:1 + ndim], part[1 + ndim:]
        require((shape >= 0).all() and int(np.prod(shape)) == nodes[x, N_SIZE] and
                (strides >= 0).all(), f"{what}: shape")
        reach(shape, strides, 0, size)
    elif kind in (RESTRIDE, PLACE):
        x = ins[0]
        require(x >= 0 and nodes[x, N_DTYPE] == code, f"{what}: input")
        ndim = int(segment(1)[0])
        require(ndim >= 0, f"{what}: ndim")
        part = segment(2 + 2 * ndim)
        shape, strides, offset = part[1:1 + ndim], part[1 + ndim:1 + 2 * ndim], part[-1]
        strided, dense = (x, out) if kind == RESTRIDE else (out, x)
        require((shape >= 0).all() and int(np.prod(shape)) == nodes[dense, N_SIZE],
                f"{what}: shape")
        reach(shape, strides, int(offset), int(nodes[strided, N_SIZE]))
    elif kind in (GATHER, SCATTER):
        x = ins[0]
        require(x >= 0 and nodes[x, N_DTYPE] == code, f"{what}: input")
        count = int(segment(1)[0])
        index = segment(1 + count)[1:]
        dense, indexed = (out, x) if kind == GATHER else (x, out)
        require(count == nodes[dense, N_SIZE] and ((index >= 0) &
                (index < nodes[indexed, N_SIZE])).all(), f"{what}: indices")
    elif kind == MATMUL:
        a, b = ins[0], ins[1]
        require(a >= 0 and b >= 0 and nodes[a, N_DTYPE] == code == nodes[b, N_DTYPE],
                f"{what}: inputs")
        batch, batch_a, batch_b, rows, inner, cols = (int(v) for v in segment(6))
        require(min(batch, rows, inner, cols) >= 0 and batch_a in (1, batch) and
                batch_b in (1, batch) and nodes[a, N_SIZE] == batch_a * rows * inner and
                nodes[b, N_SIZE] == batch_b * inner * cols and size == batch * rows * cols,
                f"{what}: sizes")
        if ins[2] >= 0:  # a bias row
            require(nodes[ins[2], N_DTYPE] == code and nodes[ins[2], N_SIZE] == cols,
                    f"{what}: bias")
    elif kind == CAST:
        x = ins[0]
        require(x >= 0 and nodes[x, N_SIZE] == size and nodes[x, N_DTYPE] != code,
                f"{what}: cast")


def _validate_aux(program: _Program, require) -> None:
    nodes, n = program.nodes, len(program.entries)
    slots = {x.dst[1]: x.size for x in program.aux if x.dst is not None and x.dst[0] == "slot"}
    guards = [x.guard for x in program.aux if x.guard >= 0]
    require(sorted(guards) == list(range(len(program.guards))), "guard numbers")
    kinds = _core_tables()[0]

    def extent(ref) -> int:
        if ref[0] == "node":
            require(0 <= ref[1] < len(nodes), "aux node")
            return int(nodes[ref[1], N_SIZE])
        if ref[0] == "slot":
            require(ref[1] in slots, "aux slot")
            return slots[ref[1]]
        if ref[0] == "meta":
            e = ref[1]
            require(0 <= e < n and kinds[program.entries[e, E_OP]] == GATHER, "aux indices")
            return int(program.meta[program.entries[e, E_META]])
        return ref[1].size

    for x in program.aux:
        require(0 <= x.pos <= n and 0 <= x.op <= 15 and x.size >= 0, "aux op")
        if x.dst is not None:
            require(extent(x.dst) == x.size, "aux destination size")
        if x.expect is not None:
            require(x.expect.size == x.size, "aux expected values")
        if x.fibers is not None:
            count, length, stride, starts = x.fibers
            require(count == x.size == len(starts) and length >= 1 and stride >= 1 and
                    ((starts >= 0) & (starts + (length - 1) * stride < extent(x.a))).all(),
                    "aux fibers")
            continue
        operands = [r for r in (x.a, x.b) if r is not None]
        if x.layout is None:
            require(all(extent(r) == x.size for r in operands), "aux operand sizes")
            continue
        shape, *strides = x.layout
        require(int(np.prod(shape, dtype=np.int64)) == x.size and len(strides) >= len(
            operands), "aux layout")
        for r, st in zip(operands, strides):
            high = sum((s - 1) * t for s, t in zip(shape, st) if s > 0)
            require(len(st) == len(shape) and min(st, default=0) >= 0 and
                    (x.size == 0 or high < extent(r)), "aux strides")
