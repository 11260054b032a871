"""Running an op eagerly and recording it on the tape.

Every public op goes through here: its forward runs on NumPy (or on Python floats for
0-d tensors, which is where per-op overhead matters), its output is written straight into
the value arena when the op is recorded, and one entry is appended to the tape.
"""
from __future__ import annotations

import math
import operator
import re

import numpy as np

from . import _dtype as dt
from .kernels.layout import DTYPE_F32, DTYPE_F64
from .ops.registry import ELEMENTWISE, OPS
from .tape import _DEFER_SIZE

FREED_GRAPH = -2  # node-table entry value for a value whose graph was already freed


_F32 = dt.float32


def dtype_code(d: dt.dtype) -> int:
    return DTYPE_F32 if d is dt.float32 else DTYPE_F64


# -- scalar forwards, made from each elementwise op's declared forward expression -------------
def _scalar_where(condition, if_true, if_false):
    return if_true if condition else if_false


def _scalar_sign(v):
    return 1.0 if v > 0 else (-1.0 if v < 0 else 0.0)  # 0 for nan, as torch.sign


def _scalar_remainder(a, b):
    """torch's remainder (``kernels/expressions.remainder``); a zero divisor raises
    ValueError, and the caller takes NumPy's path."""
    m = math.fmod(a, b)
    if m and (b < 0) != (m < 0):
        m += b
    return m


def _whole(f):
    # math.floor and the others give ints: the sign of a zero comes from the input (floor
    # of -0.0, ceil of -0.5 are -0.0); they raise on inf and nan (OverflowError,
    # ValueError), and the caller then takes NumPy's path, which keeps them
    copysign = math.copysign
    return lambda v: copysign(float(f(v)), v)


_SCALAR_NAMESPACE = {
    "exp": math.exp, "log": math.log, "log1p": math.log1p, "expm1": math.expm1,
    "sqrt": math.sqrt, "sin": math.sin, "cos": math.cos,
    "tanh": math.tanh, "where": _scalar_where, "power": pow, "erf": math.erf,
    "atan": math.atan, "asin": math.asin, "acos": math.acos, "atan2": math.atan2,
    "sign": _scalar_sign, "floor": _whole(math.floor), "ceil": _whole(math.ceil),
    "rint": _whole(round), "trunc": _whole(math.trunc), "fmod": math.fmod,
    "remainder": _scalar_remainder, "hypot": lambda a, b: float(np.hypot(a, b)),
}




def _scalar_forward(op):
    args = ", ".join(op.inputs)
    return eval(f"lambda {args}, c0, c1: {op.forward}", dict(_SCALAR_NAMESPACE))  # noqa: S307


SCALAR_FORWARD = {op.code: _scalar_forward(op) for op in OPS if op.kind == ELEMENTWISE}

_OPERATORS = {"+": operator.add, "-": operator.sub, "*": operator.mul,
              "/": operator.truediv, "**": operator.pow}


def fast_scalar_forward(op):
    """The op's forward on Python floats as the cheapest callable of its inputs, then
    ``c0`` where the expression reads it: the C function itself where the expression is
    one operator on the inputs in order (``a * b``, ``x - c0``) or one math function of the
    input (``sin(x)``), else a lambda of the expression (the per-op cost of 0-d ops: no
    Python frame for the common ones)."""
    names = [*op.inputs, *(["c0"] if re.search(r"\bc0\b", op.forward) else [])]
    if re.search(r"\bc1\b", op.forward):
        raise ValueError(f"{op.name}: a forward that reads c1 has no fast form")
    binary = re.fullmatch(r"(\w+) (\*\*|[-+*/]) (\w+)", op.forward)
    if binary and [binary.group(1), binary.group(3)] == names:
        return _OPERATORS[binary.group(2)]
    call = re.fullmatch(r"(\w+)\((\w+)\)", op.forward)
    if call and [call.group(2)] == names and call.group(1) in _SCALAR_NAMESPACE:
        return _SCALAR_NAMESPACE[call.group(1)]
    return eval(f"lambda {', '.join(names)}: {op.forward}", dict(_SCALAR_NAMESPACE))  # noqa: S307


# -- node bookkeeping ---------------------------------------------------------------------------
def node_of(tape, t) -> int:
    """The node of tensor ``t`` on ``tape``'s current generation, registering it (copying
    its value into the arena) when it has none: leaves, constants, and values from an
    older generation."""
    if t._tape is tape and (t._gen == tape.generation or tape.adopt(t)):
        node = t._node
        if node >= 0:
            if t._op >= 0:
                return node
            storage = t._storage
            if storage is None or storage.version == t._node_version:
                return node
            if storage.node == node and storage.tape is tape and tape.compactable:
                return _rewrite(tape, t, node)
    return register(tape, t)


def _rewrite(tape, t, node: int) -> int:
    """A leaf or constant written in place since it was registered on this generation (a
    parameter after an optimizer step, in a loop whose tape keeps growing): its node takes
    the new value instead of a new node being made. The write bumped the node's version,
    so the entries recorded before that save this value fail their backward as torch's
    do; later ones record the new version. (A private recording tape registers anew:
    it watches every registration.)"""
    d = t.dtype
    if d is not _F32 and not d.is_floating_point:
        d = dt.get_default_dtype()
    code = DTYPE_F32 if d is _F32 else DTYPE_F64
    data = t._data
    size = 1 if data is None else data.size
    offset = tape.leaf_slot(node, size, code, t._requires_grad)
    if offset < 0:  # not the node this tensor would get now
        return register(tape, t)
    if tape.deferred is not None:
        tape.drop_deferred(node)  # the old value's copy: not to be written over the new
    _store(tape._arenas[code], offset, size, t, d)
    t._node_version = t._storage.version
    return node


def _store(arena, offset: int, size: int, t, d: dt.dtype) -> None:
    """Copy ``t``'s value (``size`` elements, stored as ``d``) into ``arena`` at ``offset``."""
    data = t._data
    if data is None:
        arena[offset] = t._item
    elif size == 1:  # a float's value through a Python float (exact), three times faster
        arena[offset] = data.item() if d is t.dtype else data.reshape(-1)[0]
    else:
        arena[offset:offset + size] = data.reshape(-1)


def register(tape, t) -> int:
    """Give ``t`` a node on ``tape``, its value copied into the arena (a tensor that is not
    a float one is a constant in the default float dtype). Every leaf of every training
    step comes here: the lookups are inline."""
    d = t.dtype
    if d is not _F32 and not d.is_floating_point:
        d = dt.get_default_dtype()
    code = DTYPE_F32 if d is _F32 else DTYPE_F64
    data = t._data
    size = 1 if data is None else data.size
    requires_grad = t._requires_grad
    # a non-leaf from an older generation: its graph was freed by the backward that ended it
    entry = FREED_GRAPH if (requires_grad and t._op >= 0) else -1
    if t._node >= 0 and t._tape is not None:
        t._tape.release(t._node, t._gen)
    node = tape.new_node(code, t._shape, size, requires_grad, entry)  # ends a 0-d run
    # (new_node wrote out any logged rows: the arena is the current one)
    if size >= _DEFER_SIZE and d is t.dtype and tape.compactable:
        tape.defer(node, code, tape.used[code] - size, data)  # copied in when read
    else:
        _store(tape._arenas[code], tape.used[code] - size, size, t, d)
    t._tape = tape
    t._gen = tape.generation
    t._node = node
    storage = t._storage
    if storage is None:
        t._node_version = 0
    else:
        t._node_version = storage.version
        storage.attach(tape, node)
    if requires_grad and t._op < 0:
        tape.leaves[node] = t
    return node


# -- broadcasting -------------------------------------------------------------------------------
def broadcast_shape(op_name: str, *shapes: tuple) -> tuple:
    """NumPy's broadcast of ``shapes``, or torch's RuntimeError naming all of them."""
    first = shapes[0]
    if all(s == first for s in shapes[1:]):
        return tuple(first)
    ndim = max(len(s) for s in shapes)
    result = [1] * ndim
    for shape in shapes:
        for d, size in enumerate(shape, ndim - len(shape)):
            if size != 1:
                if result[d] != 1 and result[d] != size:
                    listed = " and ".join(str(list(s)) for s in shapes)
                    raise RuntimeError(
                        f"{op_name}: the shapes {listed} cannot be broadcast together: each "
                        f"dim must be equal, 1, or absent (aligned from the right); reshape "
                        f"or expand an operand")
                result[d] = size
    return tuple(result)


def broadcast_meta(out_shape: tuple, shapes: list) -> list:
    """Meta of an elementwise entry: mode 0 when every operand has the output's shape,
    else 1 with the output shape and each operand's strides (0 along broadcast dims)."""
    if all(s == out_shape for s in shapes):
        return [0]
    ndim = len(out_shape)
    meta = [1, ndim, *out_shape]
    for shape in shapes:
        strides = [0] * ndim
        step = 1
        for d in range(len(shape) - 1, -1, -1):
            od = ndim - len(shape) + d
            if shape[d] != 1 or out_shape[od] == 1:
                strides[od] = step
            step *= shape[d]
        meta.extend(strides)
    return meta

