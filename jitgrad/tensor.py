"""The Tensor: NumPy data, a dtype, and a place on the tape when it takes part in a graph.

Operators and methods delegate to :mod:`jitgrad.functions`, where every op is computed and
recorded. A tensor produced by a recorded op views its value in the tape's arena; a 0-d
result computed on the scalar fast path keeps a Python number until its array is asked for.
"""
from __future__ import annotations

import numbers
import types

import numpy as np

from . import _dtype as dt
from ._format import tensor_repr
from ._quiet import quietly


class Size(tuple):
    """``torch.Size``: a tuple of ints that prints as ``torch.Size([2, 3])``."""

    def __repr__(self) -> str:
        return f"torch.Size({list(self)})"

    def numel(self) -> int:
        count = 1
        for s in self:
            count *= s
        return count


class _Storage:
    """Shared by a tensor and its aliases (``detach()``): the version counter bumped by
    in-place writes, and the tape node whose arena slot mirrors this memory. A view's
    storage names its base (``link``: base tensor, view op, shape, strides and offset in
    elements of the base's data) and a base's lists its views (weak references): a write to
    either is carried to the other (``functions._propagate``), as torch's views share
    memory."""

    __slots__ = ("version", "tape", "generation", "node", "link", "views")

    def __init__(self) -> None:
        self.version = 0
        self.tape = None
        self.generation = -1
        self.node = -1
        self.link = None
        self.views = None

    def attach(self, tape, node: int) -> None:
        self.tape = tape
        self.generation = tape.generation
        self.node = node


class Tensor:
    """A multi-dimensional array that can record the ops applied to it.

    >>> import jitgrad as torch
    >>> x = torch.tensor([1.0, 2.0], requires_grad=True)
    >>> (x * x).sum().backward()
    >>> x.grad
    tensor([2., 4.])
    """

    __slots__ = ("_data", "_item", "dtype", "_shape", "_requires_grad", "_grad", "_tape",
                 "_gen", "_node", "_node_version", "_op", "_storage", "_retains_grad",
                 "__weakref__")

    __array_priority__ = 1000  # numpy scalars and arrays defer to our operators

    def __init__(self, data=None, *, dtype=None, requires_grad: bool = False):
        from .functions import _array_from

        array, d = _array_from(data if data is not None else [], dtype)
        _init(self, array, None, d, array.shape)
        if requires_grad:
            self.requires_grad_(True)

    # -- construction helpers ---------------------------------------------------------------
    @staticmethod
    def _wrap(array: np.ndarray, d: dt.dtype | None = None) -> Tensor:
        t = object.__new__(Tensor)
        _init(t, array, None, d or dt.from_numpy_dtype(array.dtype), array.shape)
        return t

    # -- data access --------------------------------------------------------------------------
    def _value(self) -> np.ndarray:
        """The data as an ndarray (materializing a 0-d scalar result)."""
        data = self._data
        if data is None:
            tape = self._tape
            if tape is not None and self._node >= 0 and tape.adopt(self):
                # a view of the arena slot, so in-place writes reach the recorded value
                data = tape.node_view(self._node)
            else:
                data = np.array(self._item, dtype=self.dtype.numpy)
            self._data = data
            self._item = None
        return data

    @property
    def data(self) -> Tensor:
        return _alias(self, requires_grad=False)

    @data.setter
    def data(self, value: Tensor) -> None:
        array = value._value() if isinstance(value, Tensor) else np.asarray(value)
        self._data = np.asarray(array, order="C")
        self._item = None
        self._shape = Size(self._data.shape)
        self.dtype = dt.from_numpy_dtype(self._data.dtype)
        _bump_version(self, False)  # new memory: no longer a view's base or a view
        self._storage.link = self._storage.views = None

    def numpy(self, *, force: bool = False) -> np.ndarray:
        if self._requires_grad and not force:
            raise RuntimeError(
                "Can't call numpy() on Tensor that requires grad. Use tensor.detach().numpy() "
                "instead.")
        return self._value()

    def __array__(self, dtype=None, copy=None):
        array = self._value()
        if dtype is not None:
            array = array.astype(dtype, copy=False)
        return array

    def item(self):
        if self._data is None:
            return self._item
        if self._data.size != 1:
            raise RuntimeError(
                f"a Tensor with {self._data.size} elements cannot be converted to Scalar")
        return self._data.reshape(-1)[0].item()

    def tolist(self):
        if self._data is None:
            return self._item
        return self._data.tolist()

    # -- shape and type --------------------------------------------------------------------
    @property
    def shape(self) -> Size:
        return self._shape

    def size(self, dim: int | None = None):
        if dim is None:
            return self._shape
        return self._shape[_canonical_dim(dim, len(self._shape), "size")]

    def dim(self) -> int:
        return len(self._shape)

    @property
    def ndim(self) -> int:
        return len(self._shape)

    def numel(self) -> int:
        count = 1
        for s in self._shape:
            count *= s
        return count

    nelement = numel

    def __len__(self) -> int:
        if not self._shape:
            raise TypeError("len() of a 0-d tensor")
        return self._shape[0]

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    @property
    def device(self) -> str:
        return "cpu"

    # -- autograd state ---------------------------------------------------------------------
    @property
    def requires_grad(self) -> bool:
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        self.requires_grad_(value)

    def requires_grad_(self, requires_grad: bool = True) -> Tensor:
        if self._op >= 0 and not requires_grad:
            raise RuntimeError(
                "you can only change requires_grad flags of leaf variables. If you want to use "
                "a computed variable in a subgraph that doesn't require differentiation use "
                "var_no_grad = var.detach().")
        if requires_grad and not self.dtype.is_floating_point:
            raise RuntimeError(
                f"only Tensors of floating point dtype can require gradients (got "
                f"{self.dtype}); convert first, e.g. t.float().requires_grad_()")
        self._requires_grad = bool(requires_grad)
        if self._node >= 0 and self._op < 0:
            self._node = -1  # registered with the old flag: register again on next use
        return self

    @property
    def is_leaf(self) -> bool:
        return self._op < 0

    @property
    def grad(self) -> Tensor | None:
        return self._grad

    @grad.setter
    def grad(self, value: Tensor | None) -> None:
        if value is not None and not isinstance(value, Tensor):
            raise TypeError(f"assigned grad expected to be a Tensor or None but got {type(value)}")
        if value is not None and value._shape != self._shape:
            raise RuntimeError(
                f"assigned grad has data of a different size: {list(value._shape)} vs "
                f"{list(self._shape)}")
        self._grad = value

    @property
    def grad_fn(self):
        if self._op < 0:
            return None
        from .autograd.graph import node_for_tensor

        return node_for_tensor(self)

    def retain_grad(self) -> None:
        if not self._requires_grad:
            raise RuntimeError("can't retain_grad on Tensor that has requires_grad=False")
        if self._op < 0:
            return
        self._retains_grad = True
        if self._tape is not None and self._tape.adopt(self):
            self._tape.retained[self._node] = self

    @property
    def retains_grad(self) -> bool:
        return self._retains_grad

    def register_hook(self, hook):
        """Call ``hook(grad)`` when this tensor's gradient is computed; a Tensor it returns
        replaces the gradient. Returns a handle whose ``remove()`` unregisters it."""
        from .autograd.function import register_hook

        return register_hook(self, hook)

    @property
    def _version(self) -> int:
        return self._storage.version if self._storage is not None else 0

    def detach(self) -> Tensor:
        """A tensor sharing this one's data, outside the graph."""
        return _alias(self, requires_grad=False)

    def detach_(self) -> Tensor:
        if self._node >= 0 and self._tape is not None:
            self._tape.release(self._node, self._gen)
        self._node = -1
        self._op = -1
        self._requires_grad = False
        return self

    def backward(self, gradient=None, retain_graph=None, create_graph: bool = False,
                 inputs=None) -> None:
        """Accumulate d(self)/d(leaf) into ``leaf.grad`` for every leaf of the graph."""
        _engine().backward(self, gradient, retain_graph, create_graph, inputs)

    # -- printing ------------------------------------------------------------------------------
    def __repr__(self) -> str:
        suffixes = []
        if self._op >= 0:
            tape = self._tape
            # a composite's name (functions.named) is the tape's to tell
            name = (type(self.grad_fn).__name__ if tape is not None and tape.names
                    else _grad_fn_name(self._op))
            suffixes.append(f"grad_fn=<{name}>")
        elif self._requires_grad:
            suffixes.append("requires_grad=True")
        return tensor_repr(self._value() if self._data is not None else
                           np.array(self._item, self.dtype.numpy), self.dtype, suffixes)

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        if not self._shape:
            return format(self.item(), spec)
        return format(str(self), spec)

    # -- conversions -----------------------------------------------------------------------
    def __bool__(self) -> bool:
        if self.numel() != 1:
            raise RuntimeError(
                f"Boolean value of Tensor with {self.numel()} values is ambiguous")
        return bool(self.item())

    def __float__(self) -> float:
        return float(self.item())

    def __int__(self) -> int:
        return int(self.item())

    def __index__(self) -> int:
        if self.dtype.is_floating_point or self.numel() != 1:
            raise TypeError("only integer tensors of a single element can be converted to an index")
        return int(self.item())

    def __hash__(self) -> int:
        return id(self)

    def __iter__(self):
        if not self._shape:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self._shape[0]))

    def __del__(self) -> None:
        # the tape counts live tensors per node to know when it may start a new generation
        try:
            node = self._node
        except AttributeError:  # construction failed before the slots were set
            return
        if node >= 0:
            tape = self._tape
            if tape.generation == self._gen:
                refs = tape.refs
                refs[node] -= 1
                if node == tape.n_nodes - 1 and not refs[node]:
                    tape.newest_dropped()
            elif tape.carried is not None:  # moved to a compacted generation, unused since
                tape.release(node, self._gen)


_engine_module = None


def _engine():
    """``autograd.engine``, imported once on first use (it imports this module)."""
    global _engine_module
    if _engine_module is None:
        from .autograd import engine

        _engine_module = engine
    return _engine_module


def _init(t: Tensor, data, item, d: dt.dtype, shape, tape=None, generation: int = -1,
          node: int = -1, op: int = -1) -> None:
    """Every field of a new tensor; ``tape``, ``generation``, ``node``, ``op``: those of a
    recorded output (it requires grad)."""
    t._data = data
    t._item = item
    t.dtype = d
    t._shape = shape if type(shape) is Size else Size(shape)
    t._requires_grad = node >= 0
    t._grad = None
    t._tape = tape
    t._gen = generation
    t._node = node
    t._node_version = 0
    t._op = op
    t._storage = None
    t._retains_grad = False


def _storage_of(t: Tensor) -> _Storage:
    storage = t._storage
    if storage is None:
        storage = t._storage = _Storage()
        tape = t._tape
        if t._op >= 0 and tape is not None and tape.adopt(t):
            t._value()  # a recorded output: its memory is the node's arena slot
            storage.attach(tape, t._node)
    return storage


def _alias(t: Tensor, requires_grad: bool) -> Tensor:
    """A new leaf tensor sharing ``t``'s memory and version counter."""
    data = t._value()
    alias = object.__new__(Tensor)
    _init(alias, data, None, t.dtype, t._shape)
    alias._storage = _storage_of(t)
    alias._requires_grad = requires_grad
    return alias


def _bump_version(t: Tensor, origin=None) -> None:
    """After an in-place write to ``t``'s memory: bump the version that saved values are
    checked against, then carry the write to ``t``'s base and views (but ``origin``, where
    the write came from). A recorded output's memory is its node's arena slot, or a copy of it
    (a 0-d result, an arena that grew since): keep that slot in step with the memory, since
    later ops keep using the node. A leaf's or constant's node was a copy: the next op
    registers a new one."""
    storage = _storage_of(t)
    storage.version += 1
    tape = storage.tape
    if tape is not None:
        tape.adopt_storage(storage)  # (a no-op unless a compaction moved its node)
    if tape is not None and storage.generation == tape.generation and storage.node >= 0:
        tape.bump_version(storage.node)
        if t._op >= 0:
            slot = tape.node_view(storage.node)
            data = t._value()
            if slot.size == data.size and not np.may_share_memory(slot, data):
                slot[...] = data.reshape(slot.shape)
    own = t._tape
    if own is not None and t._node >= 0 and own.adopt(t) and t._node != storage.node:
        own.bump_version(t._node)
    if origin is not False and (storage.link is not None or storage.views):
        F._propagate(t, origin)


def _grad_fn_name(code: int) -> str:
    from .ops.registry import OPS

    return OPS[code].grad_fn


def _canonical_dim(dim: int, ndim: int, op: str) -> int:
    if not isinstance(dim, numbers.Integral):
        raise TypeError(f"{op}(): dim must be an int, got {type(dim).__name__}")
    low, high = (-1, 0) if ndim == 0 else (-ndim, ndim - 1)
    if not low <= dim <= high:
        raise IndexError(
            f"Dimension out of range (expected to be in range of [{low}, {high}], but got {dim})")
    return dim + ndim if dim < 0 else (0 if ndim == 0 else dim)


# -- operators and methods: thin delegations to jitgrad.functions ------------------------------
from . import functions as F  # noqa: E402  (functions imports this module's Tensor)


def _method(function):
    def method(self, *args, **kwargs):
        return function(self, *args, **kwargs)

    method.__name__ = function.__name__
    method.__doc__ = function.__doc__
    return method


def _reflected(function):
    def method(self, other):
        return function(other, self)

    return method


def _checked_other(function):
    def method(self, other):
        if not isinstance(other, (Tensor, numbers.Number)):
            return NotImplemented
        return function(self, other)

    return method


for _name in ("add", "sub", "mul", "truediv", "pow"):
    _forward, _backward = F.arithmetic_methods("div" if _name == "truediv" else _name)
    setattr(Tensor, f"__{_name}__", _forward)
    setattr(Tensor, f"__r{_name}__", _backward)

for _name, _function in {
    "__matmul__": F.matmul, "__eq__": F.eq, "__ne__": F.ne,
    "__lt__": F.lt, "__le__": F.le, "__gt__": F.gt, "__ge__": F.ge,
    "__and__": F.logical_and, "__or__": F.logical_or, "__mod__": F.remainder,
}.items():
    setattr(Tensor, _name, _checked_other(_function))
for _name, _function in {
    "__rmatmul__": F.matmul, "__rmod__": F.remainder,
}.items():
    setattr(Tensor, _name, _checked_other(_reflected(_function)))

for _name in ("exp", "log", "sqrt", "sin", "cos", "tan", "tanh", "sigmoid", "relu", "abs",
              "log1p", "expm1", "reciprocal", "neg", "clone", "clamp", "clip", "add", "sub",
              "mul", "div", "pow", "maximum", "minimum", "sum", "mean", "prod", "logsumexp",
              "norm", "max", "min", "amax", "amin", "argmax", "argmin", "softmax",
              "log_softmax", "reshape", "view", "flatten", "squeeze", "unsqueeze",
              "transpose", "t", "permute", "expand", "dot", "mv", "mm", "bmm", "matmul",
              "sign", "isnan", "isfinite", "eq", "ne", "lt", "le", "gt", "ge", "allclose",
              "equal", "negative", "subtract", "multiply", "divide", "swapaxes",
              "broadcast_to", "logical_not", "logical_and", "logical_or", "var", "std",
              "erf", "atan", "asin", "acos", "atan2", "arctan", "arcsin", "arccos",
              "arctan2", "floor", "ceil", "round", "trunc", "fix", "frac", "fmod",
              "remainder", "hypot"):
    _function = getattr(F, _name)
    # a Python function is a method as it is (one call less per use)
    setattr(Tensor, _name, _function if isinstance(_function, types.FunctionType)
            else _method(_function))

Tensor.__neg__ = lambda self: F.neg(self)
Tensor.__pos__ = lambda self: self
Tensor.__abs__ = lambda self: F.abs(self)
Tensor.__invert__ = lambda self: F.logical_not(self)
Tensor.__getitem__ = F.getitem


def _setitem(self, key, value) -> None:
    if F._recording(self) or (isinstance(value, Tensor) and F._recording(value)):
        if self.dtype.is_floating_point:
            F.setitem(self, key, value)  # recorded, as torch's CopySlices
            return
        value = value.detach()  # an integer or bool tensor takes the value, not its graph
    F._check_write(self)
    array = self._value()
    array[F._normalize_index(key)] = value._value() if isinstance(value, Tensor) else value
    _bump_version(self)


Tensor.__setitem__ = _setitem
Tensor.__hash__ = lambda self: id(self)

# torch's T is a permute of every dim (PermuteBackward0, for matrices too)
Tensor.T = property(lambda self: F.permute(self, *range(self.ndim - 1, -1, -1)))
Tensor.mT = property(lambda self: F.transpose(self, -2, -1))


def _to(self, *args, **kwargs):
    """``t.to(dtype)``; device arguments other than 'cpu' are refused."""
    target = kwargs.get("dtype")
    for arg in args:
        if isinstance(arg, (dt.dtype, type)) or hasattr(arg, "kind"):
            target = arg
        elif isinstance(arg, Tensor):
            target = arg.dtype
        elif arg not in ("cpu", None):
            raise RuntimeError(f"jitgrad runs on the CPU only; can't move a tensor to {arg!r}")
    return self if target is None else F.to_dtype(self, target)


Tensor.to = _to
Tensor.type_as = lambda self, other: F.to_dtype(self, other.dtype)
Tensor.float = lambda self: F.to_dtype(self, dt.float32)
Tensor.double = lambda self: F.to_dtype(self, dt.float64)
Tensor.long = lambda self: F.to_dtype(self, dt.int64)
Tensor.int = lambda self: F.to_dtype(self, dt.int64)
Tensor.bool = lambda self: F.to_dtype(self, dt.bool_)
Tensor.cpu = lambda self: self
Tensor.contiguous = lambda self: self if F.is_contiguous(self) else F.clone(self)
Tensor.is_contiguous = lambda self: F.is_contiguous(self)
Tensor.any = lambda self, dim=None, keepdim=False: F.any_(self, dim, keepdim)
Tensor.all = lambda self, dim=None, keepdim=False: F.all_(self, dim, keepdim)
Tensor.expand_as = lambda self, other: F.expand(self, *other.shape)
Tensor.view_as = lambda self, other: F.reshape(self, *other.shape)
Tensor.reshape_as = lambda self, other: F.reshape(self, *other.shape)
Tensor.where = lambda self, condition, other: F.where(condition, self, other)


def _inplace_method(name: str, compute):
    def method(self, *args, **kwargs):
        return F.inplace(self, lambda: compute(self, *args, **kwargs))

    method.__name__ = name
    return method


def _arithmetic_inplace_method(name: str, compute, ufunc):
    """``add_``/``sub_``/``mul_``/``div_``: when nothing is recorded and the operand has the
    tensor's float dtype (or is a Python number), the ufunc writes into the tensor's memory
    directly (the optimizer-loop case: one pass, no temporary); anything else, and every
    error, takes the general path."""
    general = _inplace_method(name, compute)
    plain = F.inplace  # a compiled tape's recording wraps it to see in-place writes

    def method(self, other, *args, **kwargs):
        data = self._data
        if (not args and not kwargs and data is not None and self.dtype.is_floating_point
                and F.inplace is plain
                and (not F._state.tape.grad_enabled
                     or not (self._requires_grad
                             or (type(other) is Tensor and other._requires_grad)))):
            kind = type(other)
            operand = None
            if kind is Tensor:
                if other.dtype is self.dtype:
                    operand = other._value()
            elif kind is float or kind is int:
                operand = other
            if operand is not None:
                if self._storage is not None:
                    F._check_write(self)  # a view's writes torch refuses
                try:
                    quietly(ufunc, data, operand, data)
                except (ValueError, TypeError):
                    pass  # not broadcastable to the tensor, read-only memory: the message
                else:
                    _bump_version(self)
                    return self
        return general(self, other, *args, **kwargs)

    method.__name__ = name
    return method


Tensor.add_ = _arithmetic_inplace_method("add_", F.add, np.add)
Tensor.sub_ = _arithmetic_inplace_method("sub_", F.sub, np.subtract)
Tensor.mul_ = _arithmetic_inplace_method("mul_", F.mul, np.multiply)
Tensor.div_ = _arithmetic_inplace_method("div_", F.div, np.divide)
Tensor.pow_ = _inplace_method("pow_", F.pow)
Tensor.clamp_ = _inplace_method("clamp_", F.clamp)
Tensor.__iadd__ = Tensor.add_
Tensor.__isub__ = Tensor.sub_
Tensor.__imul__ = Tensor.mul_
Tensor.__itruediv__ = Tensor.div_


def _zero_(self) -> Tensor:
    return _fill(self, 0)


def _fill(self, value) -> Tensor:
    if F._state.tape.grad_enabled and self._requires_grad and self._op < 0:
        raise RuntimeError(
            "a leaf Variable that requires grad is being used in an in-place operation.")
    if isinstance(value, Tensor):
        value = value.item()
    if F._state.tape.grad_enabled and self._requires_grad:
        return F.inplace(self, lambda: F.add(F.mul(self, 0), value))
    F._check_write(self)
    self._value()[...] = value
    _bump_version(self)
    return self


def _copy_(self, src, non_blocking: bool = False) -> Tensor:
    src = src if isinstance(src, Tensor) else F.tensor(src)
    if F._recording(self, src):
        return F.inplace(self, lambda: F.expand(F.to_dtype(src, self.dtype), *self.shape)
                         if src.shape != self.shape else F.clone(F.to_dtype(src, self.dtype)))
    F._check_write(self)
    self._value()[...] = np.broadcast_to(src._value(), self._shape)
    _bump_version(self)
    return self


Tensor.zero_ = _zero_
Tensor.fill_ = _fill
Tensor.copy_ = _copy_
