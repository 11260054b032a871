"""Every public op: forward on NumPy (or Python floats for 0-d tensors), recorded on the tape
when grad mode is on and an input requires grad. Derivatives are not here: they come from
the op's declaration in :mod:`jitgrad.ops`.
"""
from __future__ import annotations

import builtins
import math
import numbers
import weakref
from array import array
from collections import namedtuple

import numpy as np

from . import _dtype as dt
from . import _logsumexp, _vmath_forward
from ._quiet import ERROR_STATE, IGNORE, quietly
from .kernels.layout import E_IN0, E_OP
from .ops.registry import BY_NAME, OPS
from .recording import (
    SCALAR_FORWARD,
    broadcast_meta,
    broadcast_shape,
    dtype_code,
    fast_scalar_forward,
    node_of,
)
from .tape import _LOG_BYTES, _LOG_ROWS, _LOGGED, _state
from .tensor import (
    Size,
    Tensor,
    _bump_version,
    _canonical_dim,
    _init,
    _Storage,
    _storage_of,
)

_F32 = dt.float32
_F64 = dt.float64
_SCALAR_SHAPE = Size(())
_new = object.__new__
_weak = weakref.ref
_SLICE_CODE = BY_NAME["slice"].code
_SELECT_CODE = BY_NAME["select"].code

# ops that can divide by zero, overflow or leave their domain: NumPy would warn (torch
# does not); the others skip the cost of np.errstate
_MAY_WARN = {"exp", "log", "sqrt", "sin", "cos", "tan", "log1p", "expm1", "reciprocal",
             "div", "div_scalar", "pow", "pow_scalar", "rpow_scalar", "mul", "mul_scalar",
             "sigmoid", "asin", "acos", "fmod", "remainder", "frac"}

# ops whose result is floating point even for integer inputs
_FLOAT_RESULT = {"exp", "log", "sqrt", "sin", "cos", "tan", "tanh", "sigmoid", "log1p",
                 "expm1", "reciprocal", "div", "div_scalar", "rpow_scalar", "erf", "atan",
                 "asin", "acos", "atan2", "hypot"}


# -- creation --------------------------------------------------------------------------------
def _array_from(data, dtype=None) -> tuple[np.ndarray, dt.dtype]:
    """NumPy array and jitgrad dtype for ``tensor(data, dtype)``, with torch's inference:
    Python floats give the default float type, ints int64, bools bool."""
    if isinstance(data, Tensor):
        array = data._value()
        d = data.dtype
    else:
        array = np.asarray(_unwrap_nested(data))
        if array.dtype == object:
            raise TypeError(f"Could not infer dtype of {type(data).__name__}")
        if array.dtype.kind == "f" and not isinstance(data, (np.ndarray, np.generic)):
            d = dt.get_default_dtype()
        elif array.dtype.kind in "iu":
            d = dt.int64
        elif array.dtype.kind == "b":
            d = dt.bool_
        elif array.dtype.kind == "f":
            d = dt.from_numpy_dtype(array.dtype)
        else:
            raise TypeError(f"can't convert data of dtype {array.dtype} to a tensor")
    if dtype is not None:
        d = dt.to_dtype(dtype)
    return np.asarray(array, dtype=d.numpy, order="C"), d


def _unwrap_nested(data):
    if isinstance(data, (list, tuple)):
        return [_unwrap_nested(v) for v in data]
    if isinstance(data, Tensor):
        return data._value()
    return data


def tensor(data, *, dtype=None, requires_grad: bool = False) -> Tensor:
    """A new leaf tensor holding a copy of ``data``.

    >>> import jitgrad as torch
    >>> torch.tensor([[1, 2], [3, 4]])
    tensor([[1, 2],
            [3, 4]])
    """
    if type(data) is float and dtype is None:
        t = _scalar_tensor(data, dt.get_default_dtype())
    else:
        array, d = _array_from(data, dtype)
        if array is _value_of(data):
            array = array.copy()
        t = Tensor._wrap(array, d)
    if requires_grad:
        t.requires_grad_(True)
    return t


def _value_of(data):
    return data._value() if isinstance(data, Tensor) else data


def _scalar_tensor(value, d: dt.dtype) -> Tensor:
    t = object.__new__(Tensor)
    if d is _F32:
        value = float(np.float32(value))
    _init(t, None, value, d, _SCALAR_SHAPE)
    return t


def as_tensor(data, dtype=None) -> Tensor:
    if isinstance(data, Tensor) and (dtype is None or dt.to_dtype(dtype) is data.dtype):
        return data
    if isinstance(data, np.ndarray):
        d = dt.to_dtype(dtype) if dtype is not None else dt.from_numpy_dtype(data.dtype)
        return Tensor._wrap(np.asarray(data, dtype=d.numpy, order="C"), d)
    return tensor(data, dtype=dtype)


def from_numpy(array: np.ndarray) -> Tensor:
    """A tensor sharing memory with ``array`` (which must be C-contiguous)."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"expected np.ndarray (got {type(array).__name__})")
    d = dt.from_numpy_dtype(array.dtype)
    if array.dtype != d.numpy or not array.flags.c_contiguous:
        raise TypeError(
            f"from_numpy: can only share memory with a C-contiguous float64, float32, int64 or "
            f"bool array (got {array.dtype}, contiguous={array.flags.c_contiguous}); use "
            f"torch.tensor(array) to copy it")
    return Tensor._wrap(array, d)


def _shape_arg(size) -> tuple:
    if len(size) == 1 and isinstance(size[0], (tuple, list, Size)):
        size = tuple(size[0])
    for s in size:
        if not isinstance(s, numbers.Integral) or isinstance(s, bool):
            raise TypeError(f"size must contain ints, got {type(s).__name__}")
        if s < 0:
            raise RuntimeError(f"Trying to create tensor with negative dimension {s}: {list(size)}")
    return tuple(int(s) for s in size)


def _filled(size, value, dtype, requires_grad) -> Tensor:
    d = dt.to_dtype(dtype) if dtype is not None else dt.get_default_dtype()
    t = Tensor._wrap(np.full(_shape_arg(size), value, dtype=d.numpy), d)
    if requires_grad:
        t.requires_grad_(True)
    return t


def zeros(*size, dtype=None, requires_grad: bool = False) -> Tensor:
    return _filled(size, 0, dtype, requires_grad)


def ones(*size, dtype=None, requires_grad: bool = False) -> Tensor:
    return _filled(size, 1, dtype, requires_grad)


def empty(*size, dtype=None, requires_grad: bool = False) -> Tensor:
    return _filled(size, 0, dtype, requires_grad)


def full(size, fill_value, *, dtype=None, requires_grad: bool = False) -> Tensor:
    if dtype is None:
        dtype = (dt.bool_ if isinstance(fill_value, bool) else
                 dt.int64 if isinstance(fill_value, numbers.Integral) else None)
    return _filled(tuple(size), fill_value, dtype, requires_grad)


def _like(t: Tensor, dtype):
    return t.dtype if dtype is None else dtype


def zeros_like(t: Tensor, *, dtype=None, requires_grad: bool = False) -> Tensor:
    return _filled(tuple(t.shape), 0, _like(t, dtype), requires_grad)


def ones_like(t: Tensor, *, dtype=None, requires_grad: bool = False) -> Tensor:
    return _filled(tuple(t.shape), 1, _like(t, dtype), requires_grad)


def empty_like(t: Tensor, *, dtype=None, requires_grad: bool = False) -> Tensor:
    return _filled(tuple(t.shape), 0, _like(t, dtype), requires_grad)


def full_like(t: Tensor, fill_value, *, dtype=None, requires_grad: bool = False) -> Tensor:
    return _filled(tuple(t.shape), fill_value, _like(t, dtype), requires_grad)


def arange(start, end=None, step=1, *, dtype=None, requires_grad: bool = False) -> Tensor:
    if end is None:
        start, end = 0, start
    if dtype is None:
        is_int = all(isinstance(v, numbers.Integral) for v in (start, end, step))
        dtype = dt.int64 if is_int else dt.get_default_dtype()
    d = dt.to_dtype(dtype)
    t = Tensor._wrap(np.arange(start, end, step).astype(d.numpy), d)
    return t.requires_grad_(True) if requires_grad else t


def linspace(start, end, steps: int, *, dtype=None, requires_grad: bool = False) -> Tensor:
    d = dt.to_dtype(dtype) if dtype is not None else dt.get_default_dtype()
    t = Tensor._wrap(np.linspace(start, end, steps).astype(d.numpy), d)
    return t.requires_grad_(True) if requires_grad else t


def eye(n: int, m: int | None = None, *, dtype=None, requires_grad: bool = False) -> Tensor:
    d = dt.to_dtype(dtype) if dtype is not None else dt.get_default_dtype()
    t = Tensor._wrap(np.eye(n, m, dtype=d.numpy), d)
    return t.requires_grad_(True) if requires_grad else t


class Generator:
    """A random generator (NumPy's PCG64), seeded like ``torch.Generator``."""

    def __init__(self) -> None:
        self._rng = np.random.default_rng()

    def manual_seed(self, seed: int) -> Generator:
        self._rng = np.random.default_rng(seed)
        return self

    def integers(self, *args, **kwargs):
        return self._rng.integers(*args, **kwargs)

    def permutation(self, n: int):
        return self._rng.permutation(n)


default_generator = Generator()


def manual_seed(seed: int) -> Generator:
    """Seed the default generator (``rand``, ``randn``, shuffling, dropout, init)."""
    return default_generator.manual_seed(seed)


def _random(sample, size, dtype, requires_grad, generator) -> Tensor:
    d = dt.to_dtype(dtype) if dtype is not None else dt.get_default_dtype()
    rng = (generator or default_generator)._rng
    t = Tensor._wrap(np.asarray(sample(rng, _shape_arg(size)), dtype=d.numpy, order="C"), d)
    return t.requires_grad_(True) if requires_grad else t


def rand(*size, dtype=None, requires_grad: bool = False, generator=None) -> Tensor:
    return _random(lambda r, s: r.random(s), size, dtype, requires_grad, generator)


def randn(*size, dtype=None, requires_grad: bool = False, generator=None) -> Tensor:
    return _random(lambda r, s: r.standard_normal(s), size, dtype, requires_grad, generator)


def rand_like(t: Tensor, *, dtype=None, requires_grad: bool = False) -> Tensor:
    return rand(*t.shape, dtype=_like(t, dtype), requires_grad=requires_grad)


def randn_like(t: Tensor, *, dtype=None, requires_grad: bool = False) -> Tensor:
    return randn(*t.shape, dtype=_like(t, dtype), requires_grad=requires_grad)


def randint(low, high=None, size=(), *, dtype=None, generator=None) -> Tensor:
    if high is None:
        low, high = 0, low
    d = dt.to_dtype(dtype) if dtype is not None else dt.int64
    rng = (generator or default_generator)._rng
    return Tensor._wrap(np.asarray(rng.integers(low, high, size), dtype=d.numpy, order="C"), d)


def randperm(n: int, *, generator=None) -> Tensor:
    rng = (generator or default_generator)._rng
    return Tensor._wrap(rng.permutation(n).astype(np.int64), dt.int64)


# -- recording core ------------------------------------------------------------------------------
def _recording(*tensors) -> bool:
    if not _state.tape.grad_enabled:
        return False
    for t in tensors:
        if t._requires_grad:
            return True
    return False


def _output(tape, value, item, d: dt.dtype, shape, node: int, op_code: int) -> Tensor:
    t = _new(Tensor)
    if node < 0:
        _init(t, value, item, d, shape)
        return t
    t._data = value  # _init's stores inline: the per-op cost of array programs
    t._item = item
    t.dtype = d
    t._shape = shape if type(shape) is Size else Size(shape)
    t._requires_grad = True
    t._grad = None
    t._tape = tape
    t._gen = tape.generation
    t._node = node
    t._node_version = 0
    t._op = op_code
    t._storage = None
    t._retains_grad = False
    return t


def _new_output_node(tape, d: dt.dtype, shape: tuple) -> tuple[int, np.ndarray]:
    """Allocate the output node of an op about to be recorded; returns it and its slot.
    Call it after the inputs' nodes are known: a later allocation may move the arena."""
    size = 1
    for s in shape:
        size *= s
    code = dtype_code(d)
    node = tape.new_node(code, shape, size, True, -1)
    offset = tape.used[code] - size
    return node, tape.arenas[code][offset:offset + size].reshape(shape)


def _cast_input(t: Tensor, d: dt.dtype) -> Tensor:
    """``t`` converted to ``d`` for an op computing in ``d`` (recorded when it matters)."""
    if t.dtype is d:
        return t
    return to_dtype(t, d)


_BROADCASTS: dict = {}  # operand shapes -> (output shape, size, entry meta or None if equal)


def _broadcast_layout(name: str, shapes: tuple) -> tuple:
    """(output shape, size, meta of the entry or None when every operand has the output's
    shape) of elementwise op ``name`` on operands of ``shapes``, remembered in
    ``_BROADCASTS``; torch's RuntimeError when they do not broadcast."""
    cached = _BROADCASTS.get(shapes)
    if cached is not None:
        return cached
    shape = Size(broadcast_shape(_op_label(name), *shapes))
    # an array: the tape's meta (an array too) extends by a copy, not element-wise
    layout = None if all(s == shape for s in shapes) else array(
        "q", broadcast_meta(shape, list(shapes)))
    size = 1
    for s in shape:
        size *= s
    if len(_BROADCASTS) < 4096:
        _BROADCASTS[shapes] = shape, size, layout
    return shape, size, layout


def _elementwise(name: str, inputs: list, c0: float = 0.0, c1: float = 0.0,
                 result=None) -> Tensor:
    """Apply elementwise op ``name`` to tensors ``inputs`` (promoted to ``result``)."""
    op = BY_NAME[name]
    if result is None:
        result = inputs[0].dtype
        for t in inputs[1:]:
            if t.dtype is not result:
                result = dt.result_type(result, 1, t.dtype, 1)
        if name in _FLOAT_RESULT and not result.is_floating_point:
            result = dt.get_default_dtype()
    record = False
    if _state.tape.grad_enabled and result.is_floating_point:
        for t in inputs:
            if t._requires_grad:
                record = True
                break
    scalar = True
    for t in inputs:
        if t._shape or (record and t.dtype is not result):
            scalar = False  # the cast is recorded on the array path
            break
    if scalar:
        out = _scalar_elementwise(op, inputs, c0, c1, result, record)
        if out is not None:
            return out
    if record:
        for t in inputs:
            if t.dtype is not result:
                inputs = [_cast_input(t, result) for t in inputs]
                break
    arrays = [t._data if t._data is not None else t._value() for t in inputs]
    forward = NUMPY_FORWARD[name]
    if not record:
        arrays = [a if a.dtype == result.numpy else a.astype(result.numpy) for a in arrays]
        try:
            value = quietly(forward, *arrays, c0, c1, None)
        except ValueError:
            if len(arrays) > 1:  # operands that do not broadcast: torch's error
                broadcast_shape(_op_label(name), *[a.shape for a in arrays])
            raise
        value = np.asarray(value, dtype=result.numpy)
        shape = value.shape
        if not shape:
            return _output(None, None, value.item(), result, (), -1, -1)
        return _output(None, value, None, result, shape, -1, -1)
    if len(arrays) == 1:
        shape = inputs[0]._shape  # a Size already
        size = arrays[0].size
        layout = None
    elif len(arrays) == 2 and inputs[0]._shape == inputs[1]._shape:
        shape = inputs[0]._shape
        size = arrays[0].size
        layout = None
    else:
        shape, size, layout = _broadcast_layout(name, tuple([a.shape for a in arrays]))
    tape = _state.tape
    tape.before_record()  # may start a new generation: before any node id is taken
    # inputs first: registering one may grow an arena, which would orphan an earlier slot
    in0 = _input_node(tape, inputs[0], op, 0)
    in1 = in2 = -1
    if len(inputs) == 1:
        meta = -1
    else:
        in1 = _input_node(tape, inputs[1], op, 1)
        if len(inputs) == 3:
            in2 = _input_node(tape, inputs[2], op, 2)
        # meta[0] is a shared 0: operands have the output's shape
        meta = 0 if layout is None else tape.add_meta(layout)
    node, slot = tape.record_output(op.code, 0 if result is _F32 else 1, shape, size, in0,
                                    in1, in2, meta, c0, c1)
    if len(shape) != 1:
        slot = slot.reshape(*shape) if shape else slot.reshape(())  # *: a Size is slower
    try:
        if name in _MAY_WARN:
            quietly(forward, *arrays, c0, c1, slot)
        else:
            forward(*arrays, c0, c1, slot)
    except BaseException:
        tape.refs[node] -= 1  # no tensor holds the entry: it never keeps the tape pending
        raise
    if not shape:
        return _output(tape, None, slot.item(), result, _SCALAR_SHAPE, node, op.code)
    return _output(tape, slot, None, result, shape, node, op.code)


_round32_buffer = array("f", [0.0])
_pack_log = _LOGGED.pack_into  # (bound once: the per-op cost of 0-d programs)


def _scalar_elementwise(op, inputs: list, c0, c1, result: dt.dtype, record: bool):
    """The 0-d fast path: Python floats in, one tape row out. None when the value needs
    NumPy's inf/nan semantics (log(0), overflow, a negative base to a fractional power)."""
    try:
        value = SCALAR_FORWARD[op.code](*[t._item if t._data is None else t._data.item()
                                          for t in inputs], c0, c1)
    except (ArithmeticError, ValueError):
        return None
    kind = type(value)
    if kind is complex:
        return None
    if result is _F32:
        _round32_buffer[0] = value
        value = _round32_buffer[0]
    elif result is _F64:
        if kind is not float:
            value = float(value)
    elif result is dt.int64:
        value = int(value)
    else:
        value = bool(value)
    t = object.__new__(Tensor)
    _init(t, None, value, result, _SCALAR_SHAPE)
    if record:
        tape = _state.tape
        generation = tape.generation
        if tape.maybe_restart or tape.n_entries >= tape.next_check:
            tape.before_record()
            generation = tape.generation
        saves = op.saves
        names = op.inputs
        ins = [-1, -1, -1]
        for k, x in enumerate(inputs):
            if x._requires_grad or names[k] in saves:
                if x._tape is tape and x._gen == generation and x._node >= 0 and x._op >= 0:
                    ins[k] = x._node
                else:
                    ins[k] = node_of(tape, x)
        node = tape.record_scalar(op.code, 0 if result is _F32 else 1, value,
                                  ins[0], ins[1], ins[2], c0, c1)
        t._requires_grad = True
        t._tape = tape
        t._gen = generation
        t._node = node
        t._op = op.code
    return t


def _finish_scalar(op, value, d: dt.dtype, a: Tensor, b, c0: float) -> Tensor:
    """Wrap a 0-d float result computed on Python floats; record it when needed. ``b`` is
    the second tensor operand or None."""
    if d is _F32:
        _round32_buffer[0] = value
        value = _round32_buffer[0]
    elif type(value) is not float:
        value = float(value)
    t = _new(Tensor)  # _init's stores inline
    t._data = None
    t._item = value
    t.dtype = d
    t._shape = _SCALAR_SHAPE
    t._grad = None
    t._node_version = 0
    t._storage = None
    t._retains_grad = False
    tape = _state.tape
    if not tape.grad_enabled or not (a._requires_grad or (b is not None and b._requires_grad)):
        t._requires_grad = False
        t._tape = None
        t._gen = -1
        t._node = -1
        t._op = -1
        return t
    if tape.maybe_restart or tape.n_entries >= tape.next_check:
        tape.before_record()
    generation = tape.generation
    in0 = in1 = -1
    # an operand's node is current when it is of this generation and, for a leaf or a
    # constant (whose value was copied in), when its memory was not written since
    if a._requires_grad or op.inputs[0] in op.saves:
        in0 = a._node
        if (in0 < 0 or a._tape is not tape or a._gen != generation
                or (a._op < 0 and a._storage is not None
                    and a._storage.version != a._node_version)):
            in0 = node_of(tape, a)
    if b is not None and (b._requires_grad or op.inputs[1] in op.saves):
        in1 = b._node
        if (in1 < 0 or b._tape is not tape or b._gen != generation
                or (b._op < 0 and b._storage is not None
                    and b._storage.version != b._node_version)):
            in1 = node_of(tape, b)
    code = op.code
    # Tape.record_scalar2 for an op past the first of a run while the log has room, inline
    logged = tape.logged
    if 0 < logged < _LOG_ROWS:
        _pack_log(tape.log, logged * _LOG_BYTES, code, in0, in1, value, c0,
                  0 if d is _F32 else 1)
        tape.logged = logged + 1
        node = tape.n_nodes  # (its version and live count were set when the log started)
        tape.n_nodes = node + 1
        tape.n_entries += 1
        t._node = node
    else:
        t._node = tape.record_scalar2(code, 0 if d is _F32 else 1, value, in0, in1, c0)
    t._requires_grad = True
    t._tape = tape
    t._gen = generation
    t._op = code
    return t


def _array_spec(name: str) -> tuple:
    """What :func:`_record_array_op` needs of elementwise op ``name``: the op, its code,
    NumPy forward, whether it may warn, and its inputs' names."""
    op = BY_NAME[name]
    return (op, op.code, NUMPY_FORWARD[name], name in _MAY_WARN, (*op.inputs, "", ""))


def _record_array_op(spec: tuple, a: Tensor, b, c0: float, broadcast=None) -> Tensor:
    """:func:`_elementwise`'s recorded path where nothing needs working out: grad mode on,
    ``a`` (and ``b``, None for a unary op or one with a number) float arrays of one dtype
    and shape, one of them requiring grad. The per-op cost of array programs. With
    ``broadcast`` (the cached ``(shape, size, layout)`` of ``_BROADCASTS``) the shapes may
    differ: a bias added to a batch."""
    op, code, forward, may_warn, names = spec
    x = a._data if a._data is not None else a._value()
    tape = _state.tape
    tape.before_record()  # may start a new generation: before any node id is taken
    generation = tape.generation
    in0 = in1 = -1
    # node_of inline for a current recorded output; op.saves read now (a compiled tape's
    # recording widens it to every input)
    if a._requires_grad or names[0] in op.saves:
        in0 = a._node
        if in0 < 0 or a._op < 0 or a._tape is not tape or a._gen != generation:
            in0 = node_of(tape, a)
    if b is not None:
        y = b._data if b._data is not None else b._value()
        if b._requires_grad or names[1] in op.saves:
            in1 = b._node
            if in1 < 0 or b._op < 0 or b._tape is not tape or b._gen != generation:
                in1 = node_of(tape, b)
    d = a.dtype
    if broadcast is None:
        shape = a._shape  # not 0-d: the callers send 0-d tensors elsewhere
        size = x.size
        meta = -1 if b is None else 0  # meta[0] is a shared 0: the operands' shapes agree
    else:
        shape, size, layout = broadcast
        meta = tape.add_meta(layout)
    node, slot = tape.record_output(code, 0 if d is _F32 else 1, shape, size, in0, in1, -1,
                                    meta, c0, 0.0)
    if len(shape) != 1:
        slot = slot.reshape(*shape)  # NumPy takes a tuple subclass (Size) at half speed
    token = None
    if may_warn:  # NumPy's warnings off (quietly's work, inline)
        if ERROR_STATE is None:  # NumPy 1.x: np.errstate
            numpy_forward = forward
            forward = lambda *args: quietly(numpy_forward, *args)  # noqa: E731
        else:
            token = ERROR_STATE.set(IGNORE)
    try:
        if b is None:
            forward(x, c0, 0.0, slot)
        else:
            forward(x, y, c0, 0.0, slot)
    except BaseException:
        tape.refs[node] -= 1  # no tensor holds the entry: it never keeps the tape pending
        raise
    finally:
        if token is not None:
            ERROR_STATE.reset(token)
    return _output(tape, slot, None, d, shape, node, code)


_SCALAR_OPS = {"add": "add_scalar", "sub": "sub_scalar", "mul": "mul_scalar",
               "div": "div_scalar", "pow": "pow_scalar"}
_REFLECTED_SCALAR_OPS = {"add": "add_scalar", "mul": "mul_scalar", "sub": "rsub_scalar",
                         "pow": "rpow_scalar"}


def arithmetic_methods(name: str):
    """``Tensor.__op__`` and ``__rop__`` for ``+ - * / **``: a direct path for 0-d float
    tensors (the per-op cost of scalar programs), :func:`_binary` for everything else."""
    op = BY_NAME[name]
    forward = fast_scalar_forward(op)  # of a and b
    scalar_op = BY_NAME[_SCALAR_OPS[name]]
    scalar_forward = fast_scalar_forward(scalar_op)  # of x and c0
    scalar_name = scalar_op.name
    reflected_op = BY_NAME.get(_REFLECTED_SCALAR_OPS.get(name, ""))
    reflected_forward = fast_scalar_forward(reflected_op) if reflected_op else None
    array_spec = _array_spec(name)
    scalar_spec = _array_spec(scalar_name)
    reflected_spec = _array_spec(reflected_op.name) if reflected_op else None

    def method(self, other):
        if not self._shape and self.dtype.is_floating_point:
            kind = type(other)
            a = self._item if self._data is None else self._data.item()
            try:
                if kind is Tensor:
                    if not other._shape and other.dtype is self.dtype:
                        b = other._item if other._data is None else other._data.item()
                        value = forward(a, b)
                        if type(value) is not complex:
                            return _finish_scalar(op, value, self.dtype, self, other, 0.0)
                elif kind is float or kind is int:
                    value = scalar_forward(a, other)
                    if type(value) is not complex:
                        return _finish_scalar(scalar_op, value, self.dtype, self, None,
                                              float(other))
            except (ArithmeticError, ValueError):
                pass
        elif self.dtype.is_floating_point:  # arrays: straight to the op (as _binary would)
            kind = type(other)
            if kind is Tensor:
                if other.dtype is self.dtype:
                    if _state.tape.grad_enabled and (self._requires_grad
                                                     or other._requires_grad):
                        if other._shape == self._shape:
                            return _record_array_op(array_spec, self, other, 0.0)
                        # shapes that broadcast, seen before: a bias added to a batch
                        cached = _BROADCASTS.get((self._shape, other._shape))
                        if cached is not None:
                            return _record_array_op(array_spec, self, other, 0.0, cached)
                    return _elementwise(name, [self, other], result=self.dtype)
            elif kind is float or kind is int:
                if self._requires_grad and _state.tape.grad_enabled:
                    return _record_array_op(scalar_spec, self, None, float(other))
                return _elementwise(scalar_name, [self], float(other), result=self.dtype)
        return _binary(name, self, other)

    def reflected(self, other):
        kind = type(other)
        if (reflected_op is not None and (kind is float or kind is int)
                and self.dtype.is_floating_point):
            if self._shape:  # an array: straight to the op (as _binary would)
                if self._requires_grad and _state.tape.grad_enabled:
                    return _record_array_op(reflected_spec, self, None, float(other))
                return _elementwise(reflected_op.name, [self], float(other), result=self.dtype)
            a = self._item if self._data is None else self._data.item()
            try:
                value = reflected_forward(a, other)
                if type(value) is not complex:
                    return _finish_scalar(reflected_op, value, self.dtype, self, None,
                                          float(other))
            except (ArithmeticError, ValueError):
                pass
        return _binary(name, other, self)

    return method, reflected


def _pad3(nodes: list) -> list:
    return nodes + [-1] * (3 - len(nodes))


def _input_node(tape, t: Tensor, op, k: int) -> int:
    """Node of input ``k`` of ``op``, or -1 when the sweep needs neither its value nor its
    gradient (a constant the derivative does not read)."""
    if t._requires_grad or op.inputs[k] in op.saves:
        return node_of(tape, t)
    return -1


def _scalar_forward(code: int, values: list, c0, c1, result: dt.dtype):
    try:
        value = SCALAR_FORWARD[code](*values, c0, c1)
    except (ArithmeticError, ValueError):
        return None  # domain edge (log(0), overflow, 0 ** -1): NumPy gives inf/nan
    if type(value) is complex:
        return None
    if result is _F32:
        value = float(np.float32(value))
    elif result is dt.float64:
        value = float(value)
    elif result is dt.int64:
        value = int(value)
    else:
        value = bool(value)
    return value


def _op_label(name: str) -> str:
    return {"add": "add (+)", "sub": "sub (-)", "mul": "mul (*)", "div": "div (/)",
            "pow": "pow (**)"}.get(name, name)


def _stable_sigmoid(x, c0, c1, out):
    # exp of a non-positive number never overflows
    e = np.exp(-np.abs(x))
    return np.divide(np.where(x >= 0, 1.0, e), 1.0 + e, out=out)


def _where_forward(a, b, cond, c0, c1, out):
    if out is None:
        return np.where(cond != 0, a, b)
    out[...] = np.where(cond != 0, a, b)
    return out


def _copy(x, c0, c1, out):
    if out is None:
        return x.copy()
    out[...] = x
    return out


_erf_array = None


def _erf_forward(x, c0, c1, out):
    """erf as the kernels compute it (``kernels/special.py``: libm's, in float64); Numba is
    loaded on the first call."""
    global _erf_array
    if _erf_array is None:
        from .kernels.special import erf_array as _erf_array
    erf_array = _erf_array
    x = np.ascontiguousarray(x)
    result = out if out is not None and out.flags.c_contiguous else np.empty(x.shape, x.dtype)
    erf_array(x.reshape(-1), result.reshape(-1))
    if out is not None and result is not out:
        out[...] = result
        return out
    return result


def _sign_forward(x, c0, c1, out):
    out = np.sign(x, out)
    if x.dtype.kind == "f":
        np.copyto(out, 0, where=np.isnan(x))  # 0 for nan, as torch
    return out


def _frac_forward(x, c0, c1, out):
    whole = np.trunc(x)
    return np.subtract(x, whole, out)


def _remainder_forward(a, b, c0, c1, out):
    """torch's remainder: ``fmod`` moved into ``b``'s sign where it is not zero (a zero
    keeps ``fmod``'s sign; NumPy's ``remainder`` gives it ``b``'s)."""
    m = np.asarray(np.fmod(a, b, out))
    np.add(m, b, out=m, where=(m != 0) & ((b < 0) != (m < 0)))
    return m


def _unary_ufunc(f):
    return lambda x, c0, c1, out: f(x, out)  # out positional: the ufunc parses it faster


def _binary_ufunc(f):
    return lambda a, b, c0, c1, out: f(a, b, out)


def _with_constant(f):
    return lambda x, c0, c1, out: f(x, c0, out)


def _constant_first(f):
    return lambda x, c0, c1, out: f(c0, x, out)


NUMPY_FORWARD = {
    "neg": _unary_ufunc(np.negative),
    "exp": _unary_ufunc(np.exp),
    "log": _unary_ufunc(np.log),
    "sqrt": _unary_ufunc(np.sqrt),
    "sin": _vmath_forward.sin,  # vectorized for large float64 arrays
    "cos": _vmath_forward.cos,
    "tan": _unary_ufunc(np.tan),
    "tanh": _unary_ufunc(np.tanh),
    "sigmoid": _stable_sigmoid,
    # maximum keeps nan and gives +0.0 (not -0.0) for negative inputs
    "relu": lambda x, c0, c1, out: np.maximum(x, 0, out=out),  # (out positional: deprecated)
    "abs": _unary_ufunc(np.abs),
    "log1p": _unary_ufunc(np.log1p),
    "expm1": _unary_ufunc(np.expm1),
    "reciprocal": lambda x, c0, c1, out: np.divide(1, x, out),
    "erf": _erf_forward,
    "atan": _unary_ufunc(np.arctan),
    "asin": _unary_ufunc(np.arcsin),
    "acos": _unary_ufunc(np.arccos),
    "sign": _sign_forward,
    "floor": _unary_ufunc(np.floor),
    "ceil": _unary_ufunc(np.ceil),
    "round": _unary_ufunc(np.rint),
    "trunc": _unary_ufunc(np.trunc),
    "frac": _frac_forward,
    "clone": _copy,
    "clamp": lambda x, c0, c1, out: np.clip(x, c0, c1, out=out),
    "add_scalar": _with_constant(np.add),
    "sub_scalar": _with_constant(np.subtract),
    "rsub_scalar": _constant_first(np.subtract),
    "mul_scalar": _with_constant(np.multiply),
    "div_scalar": _with_constant(np.divide),
    "pow_scalar": lambda x, c0, c1, out: (np.square(x, out) if c0 == 2.0 else
                                         np.power(x, c0, out)),
    "rpow_scalar": _constant_first(np.power),
    "add": _binary_ufunc(np.add),
    "sub": _binary_ufunc(np.subtract),
    "mul": _binary_ufunc(np.multiply),
    "div": _binary_ufunc(np.divide),
    "pow": _binary_ufunc(np.power),
    "maximum": lambda a, b, c0, c1, out: np.maximum(a, b, out=out),
    "minimum": lambda a, b, c0, c1, out: np.minimum(a, b, out=out),
    "where": _where_forward,
    "atan2": _binary_ufunc(np.arctan2),
    "fmod": _binary_ufunc(np.fmod),
    "remainder": _remainder_forward,
    "hypot": _binary_ufunc(np.hypot),
}


# -- elementwise public API ----------------------------------------------------------------------
def _unary(name: str):
    definition = BY_NAME[name]
    forward = fast_scalar_forward(definition)  # of x alone: no unary op reads a constant
    spec = _array_spec(name)

    def op(input: Tensor) -> Tensor:
        if type(input) is Tensor and input.dtype.is_floating_point:
            if input._shape:
                if input._requires_grad and _state.tape.grad_enabled:
                    return _record_array_op(spec, input, None, 0.0)
                return _elementwise(name, [input])
            x = input._item if input._data is None else input._data.item()
            try:
                value = forward(x)
                if type(value) is not complex:
                    return _finish_scalar(definition, value, input.dtype, input, None, 0.0)
            except (ArithmeticError, ValueError):
                pass
        return _elementwise(name, [_check_tensor(input, name)])

    op.__name__ = name
    op.__doc__ = f"Elementwise ``{name}``, differentiable (grad_fn ``{BY_NAME[name].grad_fn}``)."
    return op


def _check_tensor(value, op: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{op}(): argument 'input' must be Tensor, not {type(value).__name__}")
    return value


exp = _unary("exp")
log = _unary("log")
sqrt = _unary("sqrt")
sin = _unary("sin")
cos = _unary("cos")
tan = _unary("tan")
tanh = _unary("tanh")
sigmoid = _unary("sigmoid")
relu = _unary("relu")
abs = _unary("abs")  # noqa: A001 - torch's name
log1p = _unary("log1p")
expm1 = _unary("expm1")
reciprocal = _unary("reciprocal")
neg = _unary("neg")
negative = neg
erf = _unary("erf")
atan = arctan = _unary("atan")
asin = arcsin = _unary("asin")
acos = arccos = _unary("acos")
_sign = _unary("sign")
_floor = _unary("floor")
_ceil = _unary("ceil")
_round = _unary("round")
_trunc = _unary("trunc")
_frac = _unary("frac")


def _whole(name: str, float_op):
    """``float_op`` for float tensors; integer and bool tensors are whole already (a copy,
    not recorded, as torch)."""
    def op(input: Tensor) -> Tensor:
        if isinstance(input, Tensor) and not input.dtype.is_floating_point:
            return Tensor._wrap(input._value().copy(), input.dtype)
        return float_op(input)

    op.__name__ = name
    op.__doc__ = (f"Elementwise ``{name}``; its derivative is 0 (grad_fn "
                  f"``{BY_NAME[name].grad_fn}``); integer tensors come back as they are.")
    return op


floor = _whole("floor", _floor)
ceil = _whole("ceil", _ceil)
trunc = fix = _whole("trunc", _trunc)
_round_whole = _whole("round", _round)


def round(input: Tensor, *, decimals: int = 0) -> Tensor:  # noqa: A001 - torch's name
    """Round half to even (``RoundBackward0``); ``decimals``: to that many decimal places
    (negative: tens, hundreds, ...), as torch: ``round(x * 10**d) / 10**d``
    (``RoundBackward1``). The derivative is 0."""
    if not isinstance(decimals, int):
        raise TypeError(f"round(): argument 'decimals' must be int, not "
                        f"{type(decimals).__name__}")
    if decimals == 0 or not (isinstance(input, Tensor) and input.dtype.is_floating_point):
        return _round_whole(input)
    scale = 10.0 ** builtins.abs(decimals)
    if decimals > 0:
        return named(_round(input * scale) / scale, "RoundBackward1")
    return named(_round(input / scale) * scale, "RoundBackward1")


def frac(input: Tensor) -> Tensor:
    """``input - trunc(input)`` (the sign is ``input``'s), derivative 1 (``FracBackward0``)."""
    if isinstance(input, Tensor) and not input.dtype.is_floating_point:
        raise RuntimeError(f"frac(): not implemented for {input.dtype} tensors (an integer "
                           "has no fractional part); convert with .double() or .float()")
    return _frac(input)


def clone(input: Tensor) -> Tensor:
    """A copy of ``input`` that stays in the graph (grad_fn ``CloneBackward0``)."""
    return _elementwise("clone", [_check_tensor(input, "clone")])


def clamp(input: Tensor, min=None, max=None) -> Tensor:  # noqa: A002 - torch's names
    """Clamp to ``[min, max]``; the gradient passes where ``min <= x <= max``."""
    if min is None and max is None:
        raise RuntimeError("torch.clamp: At least one of 'min' or 'max' must not be None")
    low = -math.inf if min is None else float(min)
    high = math.inf if max is None else float(max)
    return _elementwise("clamp", [_check_tensor(input, "clamp")], low, high)


clip = clamp


def _is_number(v) -> bool:
    kind = type(v)
    if kind is float or kind is int:
        return True
    return kind is not Tensor and isinstance(v, numbers.Number)


def _scalar_operand(t: Tensor, value, name: str):
    """``t op value`` for a Python number: the op on the tensor with a float constant."""
    result = dt.scalar_result_type(t.dtype, value)
    if isinstance(value, complex):
        raise TypeError(f"{name}: complex numbers are not supported")
    return result, float(value) if result.is_floating_point else value


def _binary(name: str, a, b) -> Tensor:
    if type(a) is Tensor and type(b) is Tensor and a.dtype is b.dtype:
        return _elementwise(name, [a, b], result=a.dtype if a.dtype.is_floating_point or
                            name not in _FLOAT_RESULT else dt.get_default_dtype())
    a_num, b_num = _is_number(a), _is_number(b)
    if a_num and b_num:
        raise TypeError(f"{name}: at least one argument must be a Tensor")
    if b_num:
        return _with_scalar(name, a, b)
    if a_num:
        return _with_scalar_left(name, a, b)
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        bad = b if isinstance(a, Tensor) else a
        raise TypeError(f"{name}(): expected Tensor or number, got {type(bad).__name__}")
    result = dt.result_type(a.dtype, a.ndim, b.dtype, b.ndim)
    if name in _FLOAT_RESULT and not result.is_floating_point:
        result = dt.get_default_dtype()
    return _elementwise(name, [a, b], result=result)


def _with_scalar(name: str, t: Tensor, value) -> Tensor:
    result, c = _scalar_operand(t, value, name)
    if name in _FLOAT_RESULT and not result.is_floating_point:
        result = dt.get_default_dtype()
    if not result.is_floating_point:
        return _integer_with_scalar(name, t, value, result)
    scalar_op = {"add": "add_scalar", "sub": "sub_scalar", "mul": "mul_scalar",
                 "div": "div_scalar", "pow": "pow_scalar"}.get(name)
    if scalar_op is None:  # maximum, minimum, ...: a constant tensor of t's dtype
        return _elementwise(name, [t, _scalar_tensor(c, result)], result=result)
    return _elementwise(scalar_op, [t], float(c), result=result)


def _with_scalar_left(name: str, value, t: Tensor) -> Tensor:
    result, c = _scalar_operand(t, value, name)
    if name in _FLOAT_RESULT and not result.is_floating_point:
        result = dt.get_default_dtype()
    if not result.is_floating_point:
        return _integer_with_scalar(name, _scalar_tensor(value, result), t, result)
    if name in ("add", "mul"):
        return _with_scalar(name, t, value)
    if name == "sub":
        return _elementwise("rsub_scalar", [t], float(c), result=result)
    if name == "div":  # as torch: reciprocal, then a product
        return _elementwise("mul_scalar", [_elementwise("reciprocal", [t], result=result)],
                            float(c), result=result)
    if name == "pow":
        return _elementwise("rpow_scalar", [t], float(c), result=result)
    return _elementwise(name, [_scalar_tensor(c, result), t], result=result)


def _integer_with_scalar(name, a, b, result) -> Tensor:
    a = a if isinstance(a, Tensor) else _scalar_tensor(a, result)
    b = b if isinstance(b, Tensor) else _scalar_tensor(b, result)
    return _elementwise(name, [a, b], result=result)


def add(input, other, *, alpha=None) -> Tensor:
    if alpha is not None:
        other = other * alpha
    return _binary("add", input, other)


def sub(input, other, *, alpha=None) -> Tensor:
    if alpha is not None:
        other = other * alpha
    return _binary("sub", input, other)


subtract = sub


def mul(input, other) -> Tensor:
    return _binary("mul", input, other)


multiply = mul


def div(input, other) -> Tensor:
    return _binary("div", input, other)


divide = true_divide = div


def pow(input, exponent) -> Tensor:  # noqa: A001 - torch's name
    return _binary("pow", input, exponent)


def maximum(input: Tensor, other: Tensor) -> Tensor:
    """Elementwise maximum; at ties the gradient is split evenly, as torch does."""
    return _binary("maximum", input, other)


def minimum(input: Tensor, other: Tensor) -> Tensor:
    return _binary("minimum", input, other)


def atan2(input: Tensor, other: Tensor) -> Tensor:
    """The angle of the point (``other``, ``input``), elementwise and broadcasting:
    ``atan(input / other)`` in the right quadrant (grad_fn ``Atan2Backward0``)."""
    return _binary("atan2", input, other)


arctan2 = atan2


def fmod(input: Tensor, other) -> Tensor:
    """C's ``fmod``, elementwise and broadcasting: the remainder of the division rounded
    toward zero, with ``input``'s sign (grad_fn ``FmodBackward1``; ``FmodBackward0`` for
    a number ``other``)."""
    if _is_number(other) and isinstance(input, Tensor) and input.dtype.is_floating_point:
        return named(_binary("fmod", input, other), "FmodBackward0")
    return _binary("fmod", input, other)


def remainder(input, other) -> Tensor:
    """Python's ``%``, elementwise and broadcasting: the remainder of the division rounded
    down, with ``other``'s sign (grad_fn ``RemainderBackward1``; ``RemainderBackward0`` for
    a number ``other``)."""
    if _is_number(other) and isinstance(input, Tensor) and input.dtype.is_floating_point:
        return named(_binary("remainder", input, other), "RemainderBackward0")
    return _binary("remainder", input, other)


def hypot(input: Tensor, other: Tensor) -> Tensor:
    """``sqrt(input**2 + other**2)`` without overflow (grad_fn ``HypotBackward0``)."""
    return _binary("hypot", input, other)


def where(condition: Tensor, input, other) -> Tensor:
    """Select ``input`` where ``condition`` holds, else ``other``."""
    cond = condition if isinstance(condition, Tensor) else tensor(condition)
    if cond.dtype is not dt.bool_:
        cond = cond != 0
    if _is_number(input) and _is_number(other):
        d = dt.get_default_dtype() if isinstance(input, float) or isinstance(other, float) \
            else dt.int64
        input, other = _scalar_tensor(input, d), _scalar_tensor(other, d)
    elif _is_number(input):
        input = _scalar_tensor(input, other.dtype)
    elif _is_number(other):
        other = _scalar_tensor(other, input.dtype)
    result = dt.result_type(input.dtype, input.ndim, other.dtype, other.ndim)
    if not result.is_floating_point:
        shape = broadcast_shape("where", input.shape, other.shape, cond.shape)
        value = np.where(cond._value(), input._value(), other._value()).astype(result.numpy)
        return Tensor._wrap(np.asarray(value.reshape(shape), order="C"), result)
    # the condition travels as 0/1 in the op's float type
    mask = Tensor._wrap(cond._value().astype(result.numpy), result)
    return _elementwise("where", [input, other, mask], result=result)


# -- comparisons and logic (not differentiable) --------------------------------------------------
def _compare(ufunc, a, b) -> Tensor:
    av = a._value() if isinstance(a, Tensor) else a
    bv = b._value() if isinstance(b, Tensor) else b
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        broadcast_shape(ufunc.__name__, a.shape, b.shape)
    return Tensor._wrap(np.asarray(ufunc(av, bv), order="C"), dt.bool_)


def eq(a, b) -> Tensor:
    return _compare(np.equal, a, b)


def ne(a, b) -> Tensor:
    return _compare(np.not_equal, a, b)


def lt(a, b) -> Tensor:
    return _compare(np.less, a, b)


def le(a, b) -> Tensor:
    return _compare(np.less_equal, a, b)


def gt(a, b) -> Tensor:
    return _compare(np.greater, a, b)


def ge(a, b) -> Tensor:
    return _compare(np.greater_equal, a, b)


def logical_and(a, b) -> Tensor:
    return _compare(np.logical_and, a, b)


def logical_or(a, b) -> Tensor:
    return _compare(np.logical_or, a, b)


def logical_not(a: Tensor) -> Tensor:
    return Tensor._wrap(np.asarray(np.logical_not(a._value()), order="C"), dt.bool_)


def sign(input: Tensor) -> Tensor:
    """The sign (-1, 0, 1; 0 for nan, as torch); its derivative is 0 (``SignBackward0``).
    Integer tensors give integer signs, bool tensors themselves."""
    if isinstance(input, Tensor) and not input.dtype.is_floating_point:
        x = input._value()
        return Tensor._wrap(x.copy() if x.dtype == np.bool_ else np.sign(x), input.dtype)
    return _sign(input)


def isnan(input: Tensor) -> Tensor:
    return Tensor._wrap(np.isnan(input._value()), dt.bool_)


def isfinite(input: Tensor) -> Tensor:
    return Tensor._wrap(np.isfinite(input._value()), dt.bool_)


def allclose(a: Tensor, b: Tensor, rtol: float = 1e-5, atol: float = 1e-8,
             equal_nan: bool = False) -> bool:
    return bool(np.allclose(a._value(), b._value(), rtol=rtol, atol=atol, equal_nan=equal_nan))


def equal(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a._value(), b._value()))


# -- dtype conversion ------------------------------------------------------------------------
def to_dtype(t: Tensor, d) -> Tensor:
    """``t.to(dtype)``: recorded (``ToCopyBackward0``) between floating types."""
    d = dt.to_dtype(d)
    if t.dtype is d:
        return t
    if _recording(t) and d.is_floating_point:
        tape = _state.tape
        tape.before_record()  # may start a new generation: before any node id is taken
        src = node_of(tape, t)
        node, slot = _new_output_node(tape, d, tuple(t.shape))
        slot[...] = t._value()
        tape.record(BY_NAME["to_dtype"].code, node, src, -1, -1, -1)
        return _output(tape, slot, None, d, t.shape, node, BY_NAME["to_dtype"].code)
    if t._data is None:
        value = t._item
        value = (float(np.float32(value)) if d is _F32 else float(value) if d.is_floating_point
                 else int(value) if d is dt.int64 else bool(value))
        return _scalar_tensor(value, d) if d is not _F32 else _output(None, None, value, d, (),
                                                                      -1, -1)
    return Tensor._wrap(t._value().astype(d.numpy), d)


# -- reductions ------------------------------------------------------------------------------
def _dims(dim, ndim: int, op: str) -> tuple:
    if dim is None:
        return tuple(range(ndim))
    if isinstance(dim, (tuple, list)):
        dims = tuple(sorted({_canonical_dim(d, ndim, op) for d in dim}))
        if len(dims) != len(dim):
            raise RuntimeError(f"{op}(): dim appears multiple times in the list of dims")
        return dims
    return (_canonical_dim(dim, ndim, op),)


def _reduced_shape(shape: tuple, dims: tuple, keepdim: bool) -> tuple:
    if keepdim:
        return tuple(1 if d in dims else s for d, s in enumerate(shape))
    return tuple(s for d, s in enumerate(shape) if d not in dims)


_REDUCE_LAYOUTS: dict = {}  # (shape, dim, keepdim) -> what _reduce derives from them


def _reduce_layout(name: str, shape: tuple, dim, keepdim: bool) -> tuple:
    """(dims, output shape, elements per output, meta of the entry, or None for a full
    reduction) of a reduction; remembered per shape and dim (a training loop asks for the
    same few every step)."""
    key = (shape, dim, keepdim) if dim is None or type(dim) is int else None
    layout = _REDUCE_LAYOUTS.get(key) if key is not None else None
    if layout is not None:
        return layout
    ndim = len(shape)
    dims = _dims(dim, ndim, name)
    out_shape = () if dim is None and not keepdim else _reduced_shape(shape, dims, keepdim)
    keep_shape = _reduced_shape(shape, dims, True)
    count = 1
    for d in dims:
        count *= shape[d]
    if len(keep_shape) == 0 or all(s == 1 for s in keep_shape):
        meta = None  # a full reduction: the tape's meta[0] is a shared 0
    else:
        strides, step = [0] * ndim, 1
        for d in range(ndim - 1, -1, -1):
            if keep_shape[d] != 1:
                strides[d] = step
            step *= keep_shape[d]
        meta = array("q", (ndim, *shape, *strides))  # added to the tape's meta by a copy
    layout = (dims, out_shape, count, meta)
    if key is not None and len(_REDUCE_LAYOUTS) < 4096:
        _REDUCE_LAYOUTS[key] = layout
    return layout


def _reduce(name: str, input: Tensor, dim, keepdim: bool, forward, dim_name=None) -> Tensor:
    t = _check_tensor(input, name)
    ndim = len(t._shape)
    dims, out_shape, count, layout_meta = _reduce_layout(name, tuple(t._shape), dim, keepdim)
    full_reduction = dim is None
    op_name = name if full_reduction or dim_name is None else dim_name
    x = t._value()
    result = t.dtype
    if name in ("mean", "logsumexp", "norm") and not result.is_floating_point:
        raise RuntimeError(
            f"{name}(): could not infer output dtype. Input dtype must be either a floating "
            f"point or complex dtype. Got: {t.dtype.name.capitalize()}")
    record = _recording(t) and result.is_floating_point
    axis = dims if ndim else None
    value = np.asarray(quietly(forward, x, axis), dtype=result.numpy)
    if not record:
        value = value.reshape(out_shape)
        if not out_shape:
            return _output(None, None, value.item(), result, (), -1, -1)
        return _output(None, np.asarray(value, order="C"), None, result, out_shape, -1, -1)
    tape = _state.tape
    tape.before_record()  # may start a new generation: before any node id is taken
    src = node_of(tape, t)
    meta = 0 if layout_meta is None else tape.add_meta(layout_meta)
    code = BY_NAME[op_name].code
    size = 1
    for s in out_shape:
        size *= s
    node, slot = tape.record_output(code, dtype_code(result), out_shape, size, src, -1, -1,
                                    meta, float(count))
    slot = slot.reshape(out_shape)
    slot[...] = value.reshape(out_shape)
    if not out_shape:
        return _output(tape, None, float(slot), result, (), node, code)
    return _output(tape, slot, None, result, out_shape, node, code)


def _whole_recorded(input, dim, keepdim: bool, dtype) -> bool:
    """A reduction of all of a recorded float array, to a 0-d result: the loss of every
    training step, which :func:`_full_reduction` records without the layout work."""
    return (dim is None and dtype is None and not keepdim and type(input) is Tensor
            and input._shape and input._requires_grad and input.dtype.is_floating_point
            and _state.tape.grad_enabled)


def _full_reduction(code: int, t: Tensor, forward) -> Tensor:
    """Record the reduction of op ``code`` of all of ``t`` (see :func:`_whole_recorded`);
    ``forward(x, axis)`` computes it."""
    x = t._data  # (an array: ``t`` is not 0-d)
    if ERROR_STATE is None:  # NumPy 1.x
        value = quietly(forward, x, None)
    else:  # quietly's work, inline
        token = ERROR_STATE.set(IGNORE)
        try:
            value = forward(x, None)
        finally:
            ERROR_STATE.reset(token)
    tape = _state.tape
    tape.before_record()  # may start a new generation: before any node id is taken
    src = node_of(tape, t)
    node, slot = tape.record_output(code, 0 if t.dtype is _F32 else 1, _SCALAR_SHAPE, 1, src,
                                    -1, -1, 0, float(x.size))
    slot[0] = value
    return _output(tape, None, slot.item(), t.dtype, _SCALAR_SHAPE, node, code)


def sum(input: Tensor, dim=None, keepdim: bool = False, *, dtype=None) -> Tensor:  # noqa: A001
    """Sum of all elements, or along ``dim`` (an int or a tuple of ints)."""
    if _whole_recorded(input, dim, keepdim, dtype):
        return _full_reduction(_SUM_CODE, input, np.add.reduce)
    t = input if dtype is None else to_dtype(input, dtype)
    if t.dtype is dt.bool_:
        t = to_dtype(t, dt.int64)
    # the ufuncs' reduce directly: np.sum/np.max/... add microseconds of Python per call
    return _reduce("sum", t, dim, keepdim, lambda x, axis: np.add.reduce(x, axis=axis),
                   "sum_dim")


def mean(input: Tensor, dim=None, keepdim: bool = False, *, dtype=None) -> Tensor:
    if _whole_recorded(input, dim, keepdim, dtype):
        return _full_reduction(_MEAN_CODE, input, _mean_of_all)
    t = input if dtype is None else to_dtype(input, dtype)
    return _reduce("mean", t, dim, keepdim, _mean_forward, "mean_dim")


def _dispersion(name: str, input: Tensor, dim, unbiased, keepdim: bool, correction):
    """The variance of ``input`` along ``dim`` (all dims when None), divided by the count
    less ``correction`` (1, Bessel's, unless ``unbiased=False`` or ``correction`` says
    otherwise), as torch's ``var``/``std`` with their legacy positional ``unbiased``."""
    if isinstance(dim, bool):  # var(x, False): the legacy unbiased flag
        dim, unbiased = None, dim
    if correction is None:
        correction = 1 if unbiased is None or unbiased else 0
    elif unbiased is not None:
        raise ValueError(f"{name}(): cannot specify both unbiased and correction")
    if not input.dtype.is_floating_point:
        raise RuntimeError(f"{name}(): input dtype should be floating point, but got "
                           f"{input.dtype}")
    dims = range(input.ndim) if dim is None else (dim,) if isinstance(dim, int) else dim
    count = 1
    for d in dims:
        count *= input.shape[_canonical_dim(d, input.ndim, name)] if input.ndim else 1
    centered = input - mean(input, dim, keepdim=True)
    squares = sum(centered * centered, dim, keepdim=keepdim)
    return squares / float(builtins.max(count - correction, 0))


def var(input: Tensor, dim=None, unbiased=None, keepdim: bool = False, *,
        correction=None) -> Tensor:
    """Variance along ``dim`` (an int, a tuple, or None for all), with Bessel's correction
    unless ``unbiased=False`` or ``correction=`` says otherwise."""
    return named(_dispersion("var", input, dim, unbiased, keepdim, correction), "VarBackward0")


def std(input: Tensor, dim=None, unbiased=None, keepdim: bool = False, *,
        correction=None) -> Tensor:
    """Standard deviation: the square root of :func:`var`."""
    return named(sqrt(_dispersion("std", input, dim, unbiased, keepdim, correction)),
                 "StdBackward0")


def _mean_of_all(x, _axis):
    """The mean of every element of ``x`` (nan for none), for :func:`_full_reduction`."""
    if not x.size:
        return x.dtype.type(np.nan)
    return np.add.reduce(x, axis=None) / x.size


_SUM_CODE = BY_NAME["sum"].code
_MEAN_CODE = BY_NAME["mean"].code


def _mean_forward(x, axis):
    total = np.add.reduce(x, axis=axis)  # np.mean's own sum, without its Python layers
    if x.size == 0:  # the mean of nothing is nan (NumPy would also warn)
        return np.full(np.shape(total), np.nan, x.dtype)
    return total / (x.size // np.size(total))


def prod(input: Tensor, dim=None, keepdim: bool = False, *, dtype=None) -> Tensor:
    """Product of the elements (grad_fn ``ProdBackward0``/``ProdBackward1``). The op's
    derivative ``y / x`` holds where no factor is 0; with zeros among recorded factors the
    product is taken as (product of the nonzero ones) * (the zeros' part), exact to second
    order at up to two zeros (torch's product of the other factors)."""
    t = input if dtype is None else to_dtype(input, dtype)
    if _recording(t) and t.dtype.is_floating_point and t.numel() and _holds_zero(t):
        return _prod_with_zeros(t, dim, keepdim)
    return _reduce("prod", t, dim, keepdim, _prod_forward, "prod_dim")


def _holds_zero(t: Tensor) -> bool:
    """Whether a factor of ``t`` is 0: one NumPy pass. While a compiled tape records, this
    is the recorded ``any(eq(t, 0))`` instead, a selection its replays guard
    (``compile._wrappers``)."""
    if t._data is None:
        return t._item == 0
    return bool((t._data == 0).any())


def any_(input: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    """``torch.any``: whether any element (along ``dim``) is nonzero, as a bool tensor."""
    return ne(sum(ne(input, 0), dim, keepdim, dtype=dt.int64), 0)


def all_(input: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    """``torch.all``: whether every element (along ``dim``) is nonzero, as a bool tensor."""
    return eq(sum(eq(input, 0), dim, keepdim, dtype=dt.int64), 0)


def _prod_forward(x, axis):
    return np.multiply.reduce(x, axis=axis)


def _prod_with_zeros(t: Tensor, dim, keepdim: bool) -> Tensor:
    zero = t == 0
    others = _reduce("prod", where(zero, 1.0, t), dim, keepdim, _prod_forward, "prod_dim")
    count = sum(zero.to(t.dtype), dim, keepdim)
    zeros = where(zero, t, 0.0)  # the zero factors (0 or -0), differentiable
    first = sum(zeros, dim, keepdim)
    # the product of the zero factors: the zero itself where there is one; where there
    # are two, e2 = (s^2 - sum of squares) / 2, whose mixed second derivative is 1
    second = (first * first - sum(zeros * zeros, dim, keepdim)) * 0.5
    part = where(count == 1, first, where(count == 2, second, 0.0))
    return named(where(count == 0, others, others * part),
                 "ProdBackward0" if dim is None else "ProdBackward1")


def _logsumexp_forward(x, axis):
    if _logsumexp.usable(x, axis):  # one dim of a small batch: one kernel call
        return _logsumexp.along(x, axis)
    peak = (np.maximum.reduce(x, axis=axis, keepdims=True) if x.size
            else np.zeros((1,) * x.ndim))
    peak = np.where(np.isfinite(peak), peak, 0)
    total = np.add.reduce(np.exp(x - peak), axis=axis, keepdims=True)
    return np.squeeze(np.log(total) + peak, axis=axis)


def logsumexp(input: Tensor, dim, keepdim: bool = False) -> Tensor:
    """``log(sum(exp(x)))`` along ``dim``, computed without overflow."""
    return _reduce("logsumexp", input, dim, keepdim, _logsumexp_forward)


def norm(input: Tensor, p=2, dim=None, keepdim: bool = False) -> Tensor:
    """The 2-norm (``p='fro'`` or 2) of all elements or along ``dim``."""
    if p not in (2, 2.0, "fro"):
        raise NotImplementedError(f"norm: only p=2 is supported, got p={p!r}")
    return _reduce("norm", input, dim, keepdim,
                   lambda x, axis: np.sqrt(np.sum(x * x, axis=axis)))


# the ufuncs' reduce directly (np.max adds Python layers); both keep a nan, as torch
_EXTREME_FORWARD = {"max": lambda x, axis: np.maximum.reduce(x, axis=axis),
                    "min": lambda x, axis: np.minimum.reduce(x, axis=axis)}
_MaxResult = namedtuple("max", ["values", "indices"])
_MinResult = namedtuple("min", ["values", "indices"])


def _extreme(name: str, input: Tensor, dim, keepdim: bool, argfn):
    t = _check_tensor(input, name)
    x = t._value()
    _check_nonempty(name, t, dim)
    if dim is None:  # the gradient is split between ties, as torch's MaxBackward1
        return _reduce(f"{name}_all", t, None, False, _EXTREME_FORWARD[name])
    d = _canonical_dim(dim, t.ndim, name)
    if t.ndim == 0:
        picked = np.zeros((), np.int64)
        out_shape = ()
    else:
        picked = argfn(x, axis=d)
        out_shape = _reduced_shape(t.shape, (d,), keepdim)
    # flat positions of the picked elements
    grid = np.arange(x.size).reshape(x.shape)
    flat = np.take_along_axis(grid, np.expand_dims(picked, d), axis=d) if t.ndim else grid
    values = _gather(f"{name}_dim", t, flat.reshape(-1), out_shape, None)
    indices = Tensor._wrap(np.asarray(picked.reshape(out_shape), order="C"), dt.int64)
    return (_MaxResult if name == "max" else _MinResult)(values, indices)


def max(input: Tensor, dim=None, keepdim: bool = False):  # noqa: A001 - torch's name
    """Largest element, or ``(values, indices)`` along ``dim``. Also ``max(a, b)``."""
    if isinstance(dim, Tensor):
        return maximum(input, dim)
    return _extreme("max", input, dim, keepdim, np.argmax)


def min(input: Tensor, dim=None, keepdim: bool = False):  # noqa: A001 - torch's name
    if isinstance(dim, Tensor):
        return minimum(input, dim)
    return _extreme("min", input, dim, keepdim, np.argmin)


def amax(input: Tensor, dim=(), keepdim: bool = False) -> Tensor:
    """Largest elements along ``dim`` (an int, a tuple, or all dims); the gradient is split
    evenly between ties, as torch's."""
    return _extreme_values("amax", input, dim, keepdim)


def amin(input: Tensor, dim=(), keepdim: bool = False) -> Tensor:
    return _extreme_values("amin", input, dim, keepdim)


def _extreme_values(name: str, input: Tensor, dim, keepdim: bool) -> Tensor:
    t = _check_tensor(input, name)
    if dim is None or (isinstance(dim, (tuple, list)) and len(dim) == 0):
        dim = None
    _check_nonempty(name, t, dim)
    return _reduce(name, t, dim, keepdim, _EXTREME_FORWARD[name[1:]])


def _check_nonempty(name: str, t: Tensor, dim) -> None:
    """An extreme of nothing is torch's error: RuntimeError without a dim, IndexError for an
    empty reduced dim (other empty tensors give empty results)."""
    if t.numel() != 0:
        return
    if dim is None:
        raise RuntimeError(f"{name}(): Expected reduction dim to be specified for input.numel() "
                           f"== 0. Specify the reduction dim with the 'dim' argument.")
    for d in _dims(dim, t.ndim, name):
        if t._shape[d] == 0:
            raise IndexError(f"{name}(): Expected reduction dim {d} to have non-zero size.")


def argmax(input: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    x = input._value()
    if dim is None:
        return Tensor._wrap(np.array(np.argmax(x), np.int64), dt.int64)
    value = np.argmax(x, axis=_canonical_dim(dim, input.ndim, "argmax"))
    if keepdim:
        value = np.expand_dims(value, dim)
    return Tensor._wrap(np.asarray(value, np.int64, order="C"), dt.int64)


def argmin(input: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    x = input._value()
    if dim is None:
        return Tensor._wrap(np.array(np.argmin(x), np.int64), dt.int64)
    value = np.argmin(x, axis=_canonical_dim(dim, input.ndim, "argmin"))
    if keepdim:
        value = np.expand_dims(value, dim)
    return Tensor._wrap(np.asarray(value, np.int64, order="C"), dt.int64)


def softmax(input: Tensor, dim: int, dtype=None) -> Tensor:
    """``exp(log_softmax(x))``: a composition, differentiated through its parts."""
    return named(exp(log_softmax(input, dim, dtype)), "SoftmaxBackward0")


def log_softmax(input: Tensor, dim: int, dtype=None) -> Tensor:
    t = input if dtype is None else to_dtype(input, dtype)
    if type(dim) is int and type(t) is Tensor and t._requires_grad and t._shape:
        out = _log_softmax_recorded(t, dim)
        if out is not None:
            return out
    return named(t - logsumexp(t, dim, keepdim=True), "LogSoftmaxBackward0")


_LOGSUMEXP = BY_NAME["logsumexp"]
_SUB = BY_NAME["sub"]


def _log_softmax_recorded(t: Tensor, dim: int) -> Tensor | None:
    """``log_softmax`` of a recorded float array along one dim (the loss of every
    classification step) with the entries the general path records, ``x - lse`` with
    ``lse = logsumexp(x, dim, keepdim=True)``, but without its per-op work: the kernel
    writes ``lse`` into its slot, one subtraction the output. None where the general path
    is needed (grad mode off, a dim out of range, an input the kernel does not take)."""
    shape = t._shape
    ndim = len(shape)
    if not (-ndim <= dim < ndim) or not _state.tape.grad_enabled:
        return None
    x = t._data  # (an array: ``t`` is not 0-d)
    d = dim % ndim
    if not x.size or not _logsumexp.usable(x, (d,)):
        return None
    _, keep_shape, count, reduce_meta = _reduce_layout("logsumexp", tuple(shape), dim, True)
    out_shape, size, layout = _broadcast_layout("sub", (shape, keep_shape))
    result = t.dtype
    code = 0 if result is _F32 else 1
    tape = _state.tape
    tape.before_record()  # may start a new generation: before any node id is taken
    src = node_of(tape, t)
    meta = 0 if reduce_meta is None else tape.add_meta(reduce_meta)
    lse_node, lse = tape.record_output(_LOGSUMEXP.code, code, keep_shape, size // shape[d], src,
                                       -1, -1, meta, float(count))
    tape.refs[lse_node] = 0  # no tensor holds it: only the subtraction reads it
    _logsumexp.rows(x, d, lse)
    # recorded second: a grown arena leaves `lse` a view of the old one, still valid to read
    meta = 0 if layout is None else tape.add_meta(layout)
    node, slot = tape.record_output(_SUB.code, code, out_shape, size, src, lse_node, -1, meta)
    tape.names[tape.n_entries - 1] = "LogSoftmaxBackward0"
    slot = slot.reshape(*out_shape)  # (a tuple subclass, Size, is slower)
    np.subtract(x, lse.reshape(*keep_shape), out=slot)
    return _output(tape, slot, None, result, out_shape, node, _SUB.code)


# -- linear data movement ----------------------------------------------------------------------
def _contiguous_strides(shape: tuple) -> list:
    strides, step = [0] * len(shape), 1
    for d in range(len(shape) - 1, -1, -1):
        strides[d] = step
        step *= shape[d]
    return strides


def _restride(name: str, t: Tensor, view: np.ndarray, offset: int | None = 0,
              link: bool = True) -> Tensor:
    """Record ``view`` (a NumPy view of ``t``'s contiguous data, starting ``offset``
    elements in; None: find out) as op ``name``; the result is a view of ``t`` (writes to
    either reach the other) unless ``link`` is false (a copy)."""
    base = t._value()
    itemsize = base.itemsize
    if offset is None:
        offset = (view.__array_interface__["data"][0] -
                  base.__array_interface__["data"][0]) // itemsize
    strides = [s // itemsize for s in view.strides]
    if not _recording(t):
        if view.ndim == 0:
            out = _output(None, None, view.item(), t.dtype, (), -1, -1)
        else:
            out = Tensor._wrap(np.asarray(view, order="C") if link else
                               np.array(view, order="C"), t.dtype)
        return _link(out, t, name, view.shape, strides, offset) if link else out
    # the sweep trusts these numbers: check that every element read lies inside the input
    low = high = offset
    for size, stride in zip(view.shape, strides):
        if size == 0:
            low, high = 0, -1
            break
        low += builtins.min(0, (size - 1) * stride)
        high += builtins.max(0, (size - 1) * stride)
    if low > high:
        low, high = 0, -1
    if low < 0 or high >= base.size:
        raise AssertionError(f"{name}: view outside its input ({low}..{high} of {base.size})")
    tape = _state.tape
    tape.before_record()  # may start a new generation: before any node id is taken
    src = node_of(tape, t)
    meta = tape.add_meta((view.ndim, *view.shape, *strides, offset))
    code = BY_NAME[name].code
    node, slot = tape.record_output(code, dtype_code(t.dtype), view.shape, view.size, src, -1,
                                    -1, meta)
    slot = slot.reshape(view.shape)
    slot[...] = view
    if view.ndim == 0:
        out = _output(tape, None, float(slot), t.dtype, (), node, code)
    else:
        out = _output(tape, slot, None, t.dtype, view.shape, node, code)
    return _link(out, t, name, view.shape, strides, offset) if link else out


# -- views: torch's views share their base's memory; here a view of a recorded tensor is a
# copy (its own arena slot), kept in step with its base: a write to either reaches the other
def _link(out: Tensor, base: Tensor, name: str, shape, strides, offset: int) -> Tensor:
    """Make ``out`` the view ``name`` of ``base``: element ``i`` of ``out`` (shape ``shape``)
    is element ``offset + sum(i * strides)`` of ``base``'s (C-ordered) data."""
    storage = _new(_Storage)  # every view op makes one: _Storage's fields, inline
    storage.version = 0
    storage.tape = out._tape  # a recorded view's slot mirrors its memory (None: not recorded)
    storage.generation = out._gen
    storage.node = out._node
    storage.link = (base, name, shape, strides, offset)  # read only: no copies
    storage.views = None
    out._storage = storage
    owner = base._storage
    if owner is None:
        owner = _storage_of(base)
    views = owner.views
    if views is None:
        owner.views = [_weak(out)]
    else:
        views.append(_weak(out))
        n = len(views)
        if n >= 16 and not n & (n - 1):  # at each power of two: drop the dead
            views[:] = [ref for ref in views if ref() is not None]
    return out


def is_contiguous(t: Tensor) -> bool:
    """Whether ``t``'s elements lie in its memory in C order with no gaps, as torch's: true
    but for a view that transposes, steps or expands its base."""
    storage = t._storage
    if storage is None or storage.link is None:
        return True
    _, _, shape, strides, _ = storage.link
    step = 1
    for size, stride in zip(reversed(shape), reversed(strides)):
        if size != 1:
            if stride != step:
                return False
            step *= size
    return True


def _positions(link: tuple) -> np.ndarray:
    """Where a view's elements lie in its base's flat data, in the view's C order."""
    base, _, shape, strides, offset = link
    grid = np.arange(base.numel(), dtype=np.int64)[offset:]
    return np.lib.stride_tricks.as_strided(
        grid, shape, [s * grid.itemsize for s in strides]).reshape(-1)


def _overlapping(link: tuple) -> bool:
    shape, strides = link[2], link[3]
    return any(stride == 0 and size > 1 for size, stride in zip(shape, strides))


def _check_write(t: Tensor) -> None:
    """Before an in-place write to ``t``: torch's errors for writes it refuses through
    views (of a leaf that requires grad, to an expanded view)."""
    storage = t._storage
    while storage is not None and storage.link is not None:
        link = storage.link
        if _overlapping(link):
            raise RuntimeError(
                "unsupported operation: more than one element of the written-to tensor "
                "refers to a single memory location. Please clone() the tensor before "
                "performing the operation.")
        base = link[0]
        if _state.tape.grad_enabled and base._requires_grad and base._op < 0:
            raise RuntimeError("a view of a leaf Variable that requires grad is being used in "
                               "an in-place operation.")
        storage = base._storage


def _remade(link: tuple) -> Tensor:
    """The view ``link`` names, taken again of its base's current value (recorded)."""
    base, name, shape, strides, offset = link
    data = base._value()
    view = np.lib.stride_tricks.as_strided(
        data.reshape(-1)[offset:], shape, [s * data.itemsize for s in strides])
    return named(_restride(name, base, view, offset), "AsStridedBackward0")


def _propagate(t: Tensor, origin) -> None:
    """After a write to ``t``: write its base (a view's values go back to the region they
    came from) and its views (taken again), but not ``origin``, the tensor the write came
    from. Recorded where the written tensor is (torch's CopySlices and regenerated views),
    else a copy of the data with the versions bumped."""
    storage = t._storage
    link = storage.link
    if link is not None and link[0] is not origin:
        base = link[0]
        positions = _positions(link)
        if _state.tape.grad_enabled and t._requires_grad and base.dtype.is_floating_point:
            values = reshape(t, (-1,)) if t.ndim != 1 else t
            _assign(base, positions, values, lambda b, compute: _inplace(b, compute, t))
        else:
            data, into = t._value(), base._value()
            if not np.may_share_memory(data, into):  # else an alias: nothing to copy
                into.reshape(-1)[positions] = data.reshape(-1)
            _bump_version(base, t)
            _synced(base, t)
    views = storage.views
    if views:
        live = [view for view in [ref() for ref in views] if view is not None]
        if len(live) < len(views):
            storage.views = [weakref.ref(view) for view in live] or None
        for view in live:
            if view is origin or view._storage is None:
                continue
            link = view._storage.link
            base = link[0]
            if _state.tape.grad_enabled and base._requires_grad and view.dtype.is_floating_point:
                _inplace(view, lambda link=link: _remade(link), t)
            else:
                data, source = view._value(), base._value()
                if not np.may_share_memory(data, source):
                    data.reshape(-1)[...] = source.reshape(-1)[_positions(link)]
                _bump_version(view, t)
                _synced(view, base)


def _synced(target: Tensor, source: Tensor) -> None:
    """``target``'s memory was written from ``source``'s outside the graph (a compiled
    tape's recording wraps this to see it)."""


_SLICES: dict = {}  # (size, step, start) of a 1-d slice -> (entry meta, output shape)


def _slice_1d(t: Tensor, key: slice) -> Tensor:
    """``t[a:b:c]`` of a 1-d tensor, recorded: :func:`_restride` without working out the
    view's layout (``slice.indices`` keeps it inside ``t``)."""
    start, stop, step = key.indices(t._shape[0])  # TypeError for non-integer bounds
    view = t._data[start:stop:step]  # (a 1-d tensor has its array)
    size = view.shape[0]
    if size == 0:
        start = 0
    layout = _SLICES.get((size, step, start))
    if layout is None:  # the meta as an array (the tape's meta extends by a copy)
        layout = array("q", (1, size, step, start)), Size((size,))
        if len(_SLICES) < 4096:
            _SLICES[(size, step, start)] = layout
    tape = _state.tape
    tape.before_record()  # may start a new generation: before any node id is taken
    src = node_of(tape, t)
    meta = tape.add_meta(layout[0])
    shape = layout[1]
    node, slot = tape.record_output(_SLICE_CODE, 0 if t.dtype is _F32 else 1, shape, size, src,
                                    -1, -1, meta)
    slot[...] = view
    return _link(_output(tape, slot, None, t.dtype, shape, node, _SLICE_CODE), t, "slice",
                 shape, (step,), start)


def _select_1d(t: Tensor, index: int) -> Tensor:
    """``t[i]`` of a 1-d tensor, ``i`` in range, recorded: :func:`_restride` for one
    element (a scalar loop reads every element this way)."""
    if index < 0:
        index += t._shape[0]
    value = t._value()[index]
    tape = _state.tape
    tape.before_record()  # may start a new generation: before any node id is taken
    src = node_of(tape, t)
    meta = tape.add_meta((0, index))
    node, slot = tape.record_output(_SELECT_CODE, 0 if t.dtype is _F32 else 1, (), 1, src, -1,
                                    -1, meta)
    slot[0] = value
    return _link(_output(tape, None, float(slot[0]), t.dtype, (), node, _SELECT_CODE), t,
                 "select", (), (), index)


def _infer_shape(shape: tuple, numel: int, op: str) -> tuple:
    shape = list(shape)
    unknown = [i for i, s in enumerate(shape) if s == -1]
    if len(unknown) > 1:
        raise RuntimeError("only one dimension can be inferred")
    known = 1
    for s in shape:
        if s != -1:
            known *= s
    if unknown:
        if known == 0 or numel % known:
            raise RuntimeError(f"shape '{shape}' is invalid for input of size {numel}")
        shape[unknown[0]] = numel // known
    elif known != numel:
        raise RuntimeError(f"shape '{shape}' is invalid for input of size {numel}")
    return tuple(shape)


def reshape(input: Tensor, *shape) -> Tensor:
    """Same data, new shape (grad_fn ``ViewBackward0``, as torch for contiguous data)."""
    shape = _shape_arg_allow_inferred(shape)
    shape = _infer_shape(shape, input.numel(), "reshape")
    if tuple(shape) == tuple(input.shape) and not _recording(input):
        return _restride("view", input, input._value())
    # a transposed or strided view is copied by a reshape, as in torch: no longer a view
    return _restride("view", input, input._value().reshape(shape),
                     link=is_contiguous(input) or tuple(shape) == tuple(input.shape))


def _shape_arg_allow_inferred(shape) -> tuple:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list, Size)):
        shape = tuple(shape[0])
    return tuple(int(s) for s in shape)


view = reshape


def flatten(input: Tensor, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    if input.ndim == 0:
        return reshape(input, 1)
    start = _canonical_dim(start_dim, input.ndim, "flatten")
    end = _canonical_dim(end_dim, input.ndim, "flatten")
    if start > end:
        raise RuntimeError("flatten() has invalid args: start_dim cannot come after end_dim")
    if start == end:  # nothing to merge: the input itself, as torch
        return input
    shape = input.shape
    middle = 1
    for s in shape[start:end + 1]:
        middle *= s
    return reshape(input, *shape[:start], middle, *shape[end + 1:])


def squeeze(input: Tensor, dim=None) -> Tensor:
    x = input._value()
    if dim is None:
        return _restride("squeeze", input, np.squeeze(x) if x.ndim else x)
    dims = _dims(dim, input.ndim, "squeeze")
    keep = tuple(d for d in dims if input.shape[d] == 1)
    return _restride("squeeze_dim", input, np.squeeze(x, axis=keep) if keep else x)


def unsqueeze(input: Tensor, dim: int) -> Tensor:
    d = _canonical_dim(dim, input.ndim + 1, "unsqueeze")
    return _restride("unsqueeze", input, np.expand_dims(input._value(), d))


def transpose(input: Tensor, dim0: int, dim1: int) -> Tensor:
    n = input.ndim
    a, b = _canonical_dim(dim0, n, "transpose"), _canonical_dim(dim1, n, "transpose")
    return _restride("transpose", input, np.swapaxes(input._value(), a, b) if n else
                     input._value())


swapaxes = transpose


def t(input: Tensor) -> Tensor:
    if input.ndim > 2:
        raise RuntimeError(f"t() expects a tensor with <= 2 dimensions, but self is {input.ndim}D")
    return _restride("t", input, input._value().T)


def permute(input: Tensor, *dims) -> Tensor:
    dims = _shape_arg_allow_inferred(dims)
    if len(dims) != input.ndim:
        raise RuntimeError(
            f"permute(sparse_coo): number of dimensions in the tensor input does not match "
            f"the length of the desired ordering of dimensions i.e. input.dim() = "
            f"{input.ndim} is not equal to len(dims) = {len(dims)}")
    canon = tuple(_canonical_dim(d, input.ndim, "permute") for d in dims)
    if sorted(canon) != list(range(input.ndim)):
        raise RuntimeError("permute(): duplicate dims are not allowed.")
    return _restride("permute", input, np.transpose(input._value(), canon))


def expand(input: Tensor, *sizes) -> Tensor:
    sizes = _shape_arg_allow_inferred(sizes)
    if len(sizes) < input.ndim:
        raise RuntimeError(
            f"expand(torch.FloatTensor{{{list(input.shape)}}}, size={list(sizes)}): the number "
            f"of sizes provided ({len(sizes)}) must be greater or equal to the number of "
            f"dimensions in the tensor ({input.ndim})")
    lead = len(sizes) - input.ndim
    target = tuple(input.shape[d - lead] if (s == -1 and d >= lead) else s
                   for d, s in enumerate(sizes))
    for d in range(input.ndim):
        if input.shape[d] != 1 and input.shape[d] != target[d + lead]:
            raise RuntimeError(
                f"The expanded size of the tensor ({target[d + lead]}) must match the existing "
                f"size ({input.shape[d]}) at non-singleton dimension {d + lead}.  Target sizes: "
                f"{list(sizes)}.  Tensor sizes: {list(input.shape)}")
    return _restride("expand", input, np.broadcast_to(input._value(), target))


def broadcast_to(input: Tensor, shape) -> Tensor:
    return expand(input, *shape)


def _normalize_index(key):
    if isinstance(key, Tensor):
        return key._value()
    if isinstance(key, tuple):
        return tuple(k._value() if isinstance(k, Tensor) else k for k in key)
    return key


def _is_basic(key) -> bool:
    parts = key if isinstance(key, tuple) else (key,)
    for k in parts:
        if isinstance(k, (np.ndarray, list)) or (isinstance(k, bool)):
            return False
    return True


def getitem(input: Tensor, key) -> Tensor:
    if (type(key) is slice and len(input._shape) == 1 and (key.step is None or
                                                          type(key.step) is int and key.step > 0)
            and _recording(input)):
        return _slice_1d(input, key)
    if (type(key) is int and len(input._shape) == 1 and -input._shape[0] <= key < input._shape[0]
            and _recording(input)):
        return _select_1d(input, key)
    key = _normalize_index(key)
    x = input._value()
    try:
        if _is_basic(key):
            # a trailing Ellipsis makes NumPy return a view even for x[0] (not a scalar)
            parts = key if isinstance(key, tuple) else (key,)
            view = x[parts if Ellipsis in parts else (*parts, Ellipsis)]
            if type(key) is slice and x.ndim:  # x[a:b:c]: the offset is the start
                return _restride("slice", input, view, key.indices(x.shape[0])[0] *
                                 (x.strides[0] // x.itemsize))
            name = "select" if any(isinstance(k, numbers.Integral) for k in parts) else "slice"
            return _restride(name, input, view, None)
        grid = np.arange(x.size).reshape(x.shape)[key]
    except IndexError as error:
        raise IndexError(f"{error} (indexing a tensor of shape {list(input.shape)})") from None
    return _gather("index", input, np.asarray(grid, order="C").reshape(-1), grid.shape, None)


def _gather(name: str, t: Tensor, flat_index: np.ndarray, shape: tuple, _unused) -> Tensor:
    values = t._value().reshape(-1)[flat_index].reshape(shape)
    if not _recording(t):
        if not shape:
            return _output(None, None, values.item(), t.dtype, (), -1, -1)
        return _output(None, np.asarray(values, order="C"), None, t.dtype, shape, -1, -1)
    tape = _state.tape
    tape.before_record()  # may start a new generation: before any node id is taken
    src = node_of(tape, t)
    meta = tape.add_index_meta(flat_index)
    code = BY_NAME[name].code
    node, slot = tape.record_output(code, dtype_code(t.dtype), shape, flat_index.size, src,
                                    -1, -1, meta)
    slot = slot.reshape(shape)
    slot[...] = values
    if not shape:
        return _output(tape, None, float(slot), t.dtype, (), node, code)
    return _output(tape, slot, None, t.dtype, shape, node, code)


def _place_parts(name: str, parts: list, out_value: np.ndarray, regions: list) -> Tensor:
    """Record ``out_value`` as built from ``parts``, part k at strided region k (meta
    without the leading ndim/shape/strides/offset of the part)."""
    d = out_value.dtype
    result = dt.from_numpy_dtype(d)
    if not _recording(*parts):
        return Tensor._wrap(np.asarray(out_value, order="C"), result)
    tape = _state.tape
    tape.before_record()  # may start a new generation: before any node id is taken
    sources = [node_of(tape, _cast_input(part, result)) if part._requires_grad else -1
               for part in parts]
    node, slot = _new_output_node(tape, result, out_value.shape)
    slot[...] = out_value
    code = BY_NAME[name].code
    for src, region in zip(sources, regions):
        if src >= 0:
            tape.record(code, node, src, -1, -1, tape.add_meta(region))
    return _output(tape, slot, None, result, out_value.shape, node, code)


def cat(tensors, dim: int = 0) -> Tensor:
    """Concatenate along ``dim`` (grad_fn ``CatBackward0``)."""
    tensors = list(tensors)
    if not tensors:
        raise RuntimeError("torch.cat(): expected a non-empty list of Tensors")
    ndim = tensors[0].ndim
    if ndim == 0:
        raise RuntimeError("zero-dimensional tensor (at position 0) cannot be concatenated")
    d = _canonical_dim(dim, ndim, "cat")
    result = tensors[0].dtype
    for i, t in enumerate(tensors):
        if t.ndim != ndim or any(t.shape[k] != tensors[0].shape[k] for k in range(ndim)
                                 if k != d):
            raise RuntimeError(
                f"Sizes of tensors must match except in dimension {d}. Expected size "
                f"{list(tensors[0].shape)} but got size {list(t.shape)} for tensor number {i} "
                f"in the list.")
        result = dt.promote(result, t.dtype)
    value = np.concatenate([t._value().astype(result.numpy, copy=False) for t in tensors], d)
    out_strides = _contiguous_strides(value.shape)
    regions, start = [], 0
    for t in tensors:
        regions.append([ndim, *t.shape, *out_strides, start * out_strides[d]])
        start += t.shape[d]
    return _place_parts("cat", tensors, value, regions)


concat = concatenate = cat


def stack(tensors, dim: int = 0) -> Tensor:
    """Stack along a new dim (grad_fn ``StackBackward0``)."""
    tensors = list(tensors)
    if not tensors:
        raise RuntimeError("stack expects a non-empty TensorList")
    shape = tensors[0].shape
    for i, t in enumerate(tensors):
        if t.shape != shape:
            raise RuntimeError(
                f"stack expects each tensor to be equal size, but got {list(shape)} at entry 0 "
                f"and {list(t.shape)} at entry {i}")
    d = _canonical_dim(dim, len(shape) + 1, "stack")
    result = tensors[0].dtype
    for t in tensors:
        result = dt.promote(result, t.dtype)
    value = np.stack([t._value().astype(result.numpy, copy=False) for t in tensors], d)
    out_strides = _contiguous_strides(value.shape)
    part_strides = out_strides[:d] + out_strides[d + 1:]
    regions = [[len(shape), *shape, *part_strides, k * out_strides[d]]
               for k in range(len(tensors))]
    return _place_parts("stack", tensors, value, regions)


# -- matrix products -----------------------------------------------------------------------
def _matmul_record(name: str, a: Tensor, b: Tensor, batch_shape: tuple, rows: int, inner: int,
                   cols: int, out_shape: tuple, bias: Tensor | None = None) -> Tensor:
    """``a @ b`` (``bias``: plus that row of ``cols`` values, for ``linear_bias``)."""
    result = dt.promote(a.dtype, b.dtype)
    if bias is not None:
        result = dt.promote(result, bias.dtype)
        record = _recording(a, b, bias) and result.is_floating_point
    else:
        record = _recording(a, b) and result.is_floating_point
    if record:
        a, b = _cast_input(a, result), _cast_input(b, result)
        if bias is not None:
            bias = _cast_input(bias, result)
    av, bv = a._value(), b._value()
    batch = 1
    for s in batch_shape:
        batch *= s
    a3 = av.reshape(_matrices(av, rows, inner, batch), rows, inner).astype(
        result.numpy, copy=False)
    if BY_NAME[name].transposed_b:  # b is stored (cols, inner): multiply by its transpose
        b3 = bv.reshape(_matrices(bv, cols, inner, batch), cols, inner).astype(
            result.numpy, copy=False).transpose(0, 2, 1)
    else:
        b3 = bv.reshape(_matrices(bv, inner, cols, batch), inner, cols).astype(
            result.numpy, copy=False)
    if not record:
        value = np.matmul(a3, b3)
        if bias is not None:
            value += bias._value().astype(result.numpy, copy=False)
        value = value.reshape(out_shape)
        if not out_shape:
            return _output(None, None, value.item(), result, (), -1, -1)
        return _output(None, np.asarray(value, order="C"), None, result, out_shape, -1, -1)
    tape = _state.tape
    tape.before_record()  # may start a new generation: before any node id is taken
    in0, in1 = node_of(tape, a), node_of(tape, b)
    in2 = -1 if bias is None else node_of(tape, bias)
    meta = tape.add_meta((batch, a3.shape[0], b3.shape[0], rows, inner, cols))
    code = BY_NAME[name].code
    node, slot = tape.record_output(code, dtype_code(result), out_shape, batch * rows * cols,
                                    in0, in1, in2, meta)
    try:
        out3 = slot.reshape(batch, rows, cols)
        np.matmul(a3, b3, out=out3)
        if bias is not None:
            np.add(out3, bias._value(), out=out3)
    except BaseException:
        tape.refs[node] -= 1  # no tensor holds the entry: it never keeps the tape pending
        raise
    slot = slot.reshape(out_shape)
    if not out_shape:
        return _output(tape, None, float(slot), result, (), node, code)
    return _output(tape, slot, None, result, out_shape, node, code)


def _matrices(v: np.ndarray, rows: int, cols: int, batch: int) -> int:
    """How many (rows, cols) matrices ``v`` holds (1: broadcast over the batch); not a
    reshape's -1, which a size-0 ``v`` leaves ambiguous."""
    if rows * cols:
        return v.size // (rows * cols)
    return batch if v.ndim > 2 else 1


def _matmul_shapes_error(op: str, a: Tensor, b: Tensor, detail: str):
    return RuntimeError(
        f"{op}: shapes {list(a.shape)} and {list(b.shape)} cannot be multiplied ({detail}); "
        f"the last dim of the first operand must equal the first matrix dim of the second")


def dot(input: Tensor, other: Tensor) -> Tensor:
    """Inner product of two 1-D tensors (grad_fn ``DotBackward0``)."""
    if input.ndim != 1 or other.ndim != 1:
        raise RuntimeError(f"1D tensors expected, but got {input.ndim}D and {other.ndim}D tensors")
    if input.shape[0] != other.shape[0]:
        raise RuntimeError(
            f"inconsistent tensor size, expected tensor [{input.shape[0]}] and src "
            f"[{other.shape[0]}] to have the same number of elements, but got "
            f"{input.shape[0]} and {other.shape[0]} elements respectively")
    return _matmul_record("dot", input, other, (), 1, input.shape[0], 1, ())


def mv(input: Tensor, vec: Tensor) -> Tensor:
    if input.ndim != 2 or vec.ndim != 1:
        raise RuntimeError(f"vector + matrix @ vector expected, got {input.ndim}, {vec.ndim}")
    if input.shape[1] != vec.shape[0]:
        raise RuntimeError(
            f"size mismatch, got input ({input.shape[0]}), mat ({input.shape[0]}x"
            f"{input.shape[1]}), vec ({vec.shape[0]})")
    return _matmul_record("mv", input, vec, (), input.shape[0], input.shape[1], 1,
                          (input.shape[0],))


def _mm_recorded(a: Tensor, b: Tensor) -> Tensor | None:
    """``a @ b`` of two recorded 2-D float arrays of one dtype whose shapes fit (a layer of
    every training step): the entry :func:`_matmul_record` writes, without its work for
    batches, casts and the unrecorded case. None for anything else."""
    if not (type(b) is Tensor and type(a) is Tensor and len(a._shape) == 2
            and len(b._shape) == 2 and a.dtype is b.dtype and a.dtype.is_floating_point
            and a._shape[1] == b._shape[0] and (a._requires_grad or b._requires_grad)
            and _state.tape.grad_enabled):
        return None
    rows, inner = a._shape
    cols = b._shape[1]
    tape = _state.tape
    tape.before_record()  # may start a new generation: before any node id is taken
    in0, in1 = node_of(tape, a), node_of(tape, b)
    meta = tape.add_meta((1, 1, 1, rows, inner, cols))
    d = a.dtype
    shape = (rows, cols)
    node, slot = tape.record_output(_MM.code, 0 if d is _F32 else 1, shape, rows * cols, in0,
                                    in1, -1, meta)
    try:
        slot = slot.reshape(shape)
        np.matmul(a._data, b._data, out=slot)
    except BaseException:
        tape.refs[node] -= 1  # no tensor holds the entry: it never keeps the tape pending
        raise
    return _output(tape, slot, None, d, shape, node, _MM.code)


_MM = BY_NAME["mm"]


def mm(input: Tensor, mat2: Tensor) -> Tensor:
    out = _mm_recorded(input, mat2)
    if out is not None:
        return out
    if input.ndim != 2 or mat2.ndim != 2:
        raise RuntimeError(f"mm: expected 2D tensors, got {input.ndim}D and {mat2.ndim}D")
    if input.shape[1] != mat2.shape[0]:
        raise RuntimeError(
            f"mat1 and mat2 shapes cannot be multiplied ({input.shape[0]}x{input.shape[1]} and "
            f"{mat2.shape[0]}x{mat2.shape[1]})")
    return _matmul_record("mm", input, mat2, (), input.shape[0], input.shape[1],
                          mat2.shape[1], (input.shape[0], mat2.shape[1]))


def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``input @ weight.T (+ bias)`` for a weight stored ``(out_features, in_features)``,
    as one recorded product that reads the weight in place (no transposed copy) and adds
    the bias row; every leading dim of ``input`` is a row."""
    if weight.ndim != 2 or input.ndim == 0:
        raise RuntimeError(f"linear: expected a 2-D weight and an input of at least 1 dim, "
                           f"got {input.ndim}-D input and {weight.ndim}-D weight")
    cols, inner = weight.shape
    if input.shape[-1] != inner:
        rows = int(np.prod(input.shape[:-1], dtype=np.int64))
        raise RuntimeError(
            f"mat1 and mat2 shapes cannot be multiplied ({rows}x{input.shape[-1]} and "
            f"{inner}x{cols}): linear's input needs {inner} features (its last dim), as the "
            f"weight {list(weight.shape)} says")
    rows = 1
    for s in input.shape[:-1]:
        rows *= s
    out_shape = tuple(input.shape[:-1]) + (cols,)
    if bias is None:
        return _matmul_record("linear", input, weight, (), rows, inner, cols, out_shape)
    if tuple(bias.shape) != (cols,):
        try:
            np.broadcast_shapes(tuple(bias.shape), out_shape)
        except ValueError:
            raise RuntimeError(f"linear: the bias has shape {list(bias.shape)}; it must "
                               f"broadcast to the output {list(out_shape)}, e.g. shape "
                               f"[{cols}]") from None
        # another shape that broadcasts to the output: a product and an add
        return _matmul_record("linear", input, weight, (), rows, inner, cols, out_shape) + bias
    return _matmul_record("linear_bias", input, weight, (), rows, inner, cols, out_shape, bias)


def bmm(input: Tensor, mat2: Tensor) -> Tensor:
    if input.ndim != 3 or mat2.ndim != 3:
        raise RuntimeError(f"bmm: expected 3D tensors, got {input.ndim}D and {mat2.ndim}D")
    if input.shape[0] != mat2.shape[0] or input.shape[2] != mat2.shape[1]:
        raise _matmul_shapes_error("bmm", input, mat2, "batch or inner size differs")
    return _matmul_record("bmm", input, mat2, (input.shape[0],), input.shape[1],
                          input.shape[2], mat2.shape[2],
                          (input.shape[0], input.shape[1], mat2.shape[2]))


def matmul(input: Tensor, other: Tensor) -> Tensor:
    """``@`` with NumPy's rules: 1-D operands get a unit dim, batch dims broadcast."""
    out = _mm_recorded(input, other)  # two matrices: mm's entry
    if out is not None:
        return out
    a, b = input, other
    if a.ndim == 0 or b.ndim == 0:
        raise RuntimeError(
            f"both arguments to matmul need to be at least 1D, but they are {a.ndim}D and "
            f"{b.ndim}D")
    if a.ndim == 1 and b.ndim == 1:
        return dot(a, b)
    if a.ndim == 2 and b.ndim == 1:
        return mv(a, b)
    if a.ndim == 2 and b.ndim == 2:
        return mm(a, b)
    a_shape = (1, a.shape[0]) if a.ndim == 1 else tuple(a.shape)
    b_shape = (b.shape[0], 1) if b.ndim == 1 else tuple(b.shape)
    if a_shape[-1] != b_shape[-2]:
        raise _matmul_shapes_error("matmul", a, b, f"{a_shape[-1]} != {b_shape[-2]}")
    try:
        batch = tuple(np.broadcast_shapes(a_shape[:-2], b_shape[:-2]))
    except ValueError:
        raise _matmul_shapes_error("matmul", a, b, "batch dims do not broadcast") from None
    rows, inner, cols = a_shape[-2], a_shape[-1], b_shape[-1]
    # an operand whose batch is neither full nor 1 is expanded (recorded) to the full batch
    a_batch = int(np.prod(a_shape[:-2], dtype=np.int64))
    b_batch = int(np.prod(b_shape[:-2], dtype=np.int64))
    full = int(np.prod(batch, dtype=np.int64))
    if a_batch not in (1, full) or (a_batch == full and a_shape[:-2] != batch and full > 1):
        a = expand(reshape(a, *a_shape), *batch, rows, inner)
    if b_batch not in (1, full) or (b_batch == full and b_shape[:-2] != batch and full > 1):
        b = expand(reshape(b, *b_shape), *batch, inner, cols)
    out_shape = batch + ((rows,) if a.ndim > 1 or input.ndim > 1 else ()) + \
        ((cols,) if other.ndim > 1 else ())
    if input.ndim == 1:
        out_shape = batch + (cols,)
    elif other.ndim == 1:
        out_shape = batch + (rows,)
    else:
        out_shape = batch + (rows, cols)
    return _matmul_record("matmul", a, b, batch, rows, inner, cols, out_shape)


# -- in place ------------------------------------------------------------------------------
def named(result: Tensor, grad_fn: str) -> Tensor:
    """Show the grad_fn of ``result``, the output of a composite recorded as several
    entries, as torch's single op ``grad_fn`` (its last entry takes the name)."""
    tape = result._tape
    if result._op >= 0 and result._node >= 0 and tape is not None and tape.adopt(result):
        entry = tape.node_entry(result._node)
        if entry >= 0:
            tape.names[entry] = grad_fn
    return result


def setitem(t: Tensor, key, value) -> None:
    """``t[key] = value`` when ``t`` or ``value`` is recorded (``t`` floating): ``t`` becomes
    ``where(region, value placed there, t)``, as torch's CopySlices, so the gradient reaches
    ``value`` from the region and ``t``'s old value from everywhere else. Repeated
    positions of an integer-array key keep the last value written, as NumPy's assignment."""
    index = _normalize_index(key)
    try:
        positions = np.arange(t.numel(), dtype=np.int64).reshape(t.shape)[index]
    except IndexError as error:
        raise IndexError(f"{error} (assigning into a tensor of shape {list(t.shape)})") \
            from None
    region = np.shape(positions)
    if not isinstance(value, Tensor):
        value = tensor(value, dtype=t.dtype)
    elif value.dtype is not t.dtype:
        value = to_dtype(value, t.dtype)
    shape = tuple(value.shape)
    while len(shape) > len(region) and shape[0] == 1:  # leading ones broadcast away
        shape = shape[1:]
    try:
        target = np.broadcast_shapes(shape, region)
    except ValueError:
        target = None
    if len(shape) > len(region) or target != region:
        raise RuntimeError(f"shape mismatch: value tensor of shape {list(value.shape)} cannot "
                           f"be broadcast to indexing result of shape {list(region)}")
    if shape != tuple(value.shape):
        value = reshape(value, shape)
    if shape != region:
        value = expand(value, *region)
    flat = np.asarray(positions, order="C").reshape(-1)
    values = reshape(value, (-1,)) if value.ndim != 1 else value
    # the last write at each position wins: keep that one of every repeated position
    order = flat[::-1]
    unique, first = np.unique(order, return_index=True)
    if unique.size != flat.size:
        last = flat.size - 1 - first
        values = _gather("index", values, last, (last.size,), None)
        flat = unique
    _assign(t, flat, values, inplace)


def _assign(t: Tensor, flat: np.ndarray, values: Tensor, write) -> None:
    """``t.view(-1)[flat] = values`` (``flat`` without repeats, ``values`` 1-d), recorded
    by ``write(t, compute)`` as ``where(region, values placed there, t)``."""
    from .autograd.rules import _scatter

    placed = _scatter(values, tuple(t.shape), flat)
    mask = np.zeros(t.numel(), bool)
    mask[flat] = True

    def compute():
        return where(Tensor._wrap(mask.reshape(t.shape), dt.bool_), placed, t)

    named(write(t, compute), "CopySlices")


def inplace(t: Tensor, compute) -> Tensor:
    """Run ``compute()`` (an out-of-place op giving the new value) and store the result in
    ``t``'s memory. When the op is recorded ``t`` becomes its output (torch's rebase). A
    view's base and a base's views see the write, as in torch."""
    return _inplace(t, compute, None)


def _inplace(t: Tensor, compute, origin) -> Tensor:
    if _state.tape.grad_enabled and t._requires_grad and t._op < 0:
        raise RuntimeError(
            "a leaf Variable that requires grad is being used in an in-place operation.")
    if origin is None:
        _check_write(t)
    result = compute()
    if result.dtype is not t.dtype:
        if dt.promote(result.dtype, t.dtype) is not t.dtype:
            raise RuntimeError(
                f"result type {result.dtype.name.capitalize()} can't be cast to the desired "
                f"output type {t.dtype.name.capitalize()}")
        result = to_dtype(result, t.dtype)
    if result.shape != t.shape:
        raise RuntimeError(
            f"output with shape {list(t.shape)} doesn't match the broadcast shape "
            f"{list(result.shape)}")
    data = t._value()
    kept = None
    if (result._op >= 0 and t._op >= 0 and t._tape is result._tape and t._node >= 0
            and t._gen == result._gen and _storage_of(t).node == t._node):
        # the op may read t's value (x.mul_(y) does, for y's gradient): keep it in a slot
        # of its own instead of failing the backward (torch saves the original self)
        entry = result._tape.node_entry(result._node)
        fields = result._tape.entry_fields(entry)
        saves = OPS[fields[E_OP]].saves
        if any(fields[E_IN0 + k] == t._node and name in saves
               for k, name in enumerate(OPS[fields[E_OP]].inputs)):
            kept = (entry, result._tape.node_view(t._node).copy())
    data[...] = result._value()
    _bump_version(t, False)
    if kept is not None:
        result._tape.keep_overwritten_input(kept[0], t._node, result._node, kept[1])
    if result._op >= 0:  # recorded: t now stands for the op's output
        tape = result._tape
        if t._node >= 0 and t._tape is not None:
            t._tape.release(t._node, t._gen)
        t._tape, t._gen, t._node, t._op = tape, result._gen, result._node, result._op
        t._requires_grad = True
        tape.add_ref(result._node)
        t._storage.attach(tape, result._node)
        if t._retains_grad:
            tape.retained[t._node] = t
    storage = t._storage
    if storage.link is not None or storage.views:
        _propagate(t, origin)
    return t
