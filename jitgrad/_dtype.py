"""Tensor dtypes and torch's type-promotion rules."""
from __future__ import annotations

import numpy as np


class dtype:  # noqa: N801 - torch spells it in lower case
    """A tensor element type, printed as torch prints it (``torch.float32``)."""

    __slots__ = ("name", "numpy", "is_floating_point", "itemsize", "_rank")

    def __init__(self, name: str, numpy_dtype, rank: int):
        self.name = name
        self.numpy = np.dtype(numpy_dtype)
        self.is_floating_point = self.numpy.kind == "f"
        self.itemsize = self.numpy.itemsize
        self._rank = rank  # position in the promotion lattice bool < int64 < float32 < float64

    def __repr__(self) -> str:
        return f"torch.{self.name}"

    def __reduce__(self):
        return (_by_name, (self.name,))


bool_ = dtype("bool", np.bool_, 0)
int64 = dtype("int64", np.int64, 1)
float32 = dtype("float32", np.float32, 2)
float64 = dtype("float64", np.float64, 3)

_ALL = {d.name: d for d in (bool_, int64, float32, float64)}
_FROM_NUMPY = {d.numpy: d for d in _ALL.values()}


def _by_name(name: str) -> dtype:
    return _ALL[name]


_default_float = float32


def get_default_dtype() -> dtype:
    return _default_float


def set_default_dtype(d: dtype) -> None:
    global _default_float
    if d not in (float32, float64):
        raise TypeError(f"only floating-point types are supported as the default type, got {d}")
    _default_float = d


def from_numpy_dtype(np_dtype) -> dtype:
    """Map a NumPy dtype to the jitgrad dtype it is stored as."""
    np_dtype = np.dtype(np_dtype)
    found = _FROM_NUMPY.get(np_dtype)
    if found is not None:
        return found
    if np_dtype.kind == "f":
        return float64 if np_dtype.itemsize > 4 else float32
    if np_dtype.kind in "iu":
        return int64
    if np_dtype.kind == "b":
        return bool_
    raise TypeError(f"can't convert np.ndarray of type {np_dtype}; supported: float64, "
                    f"float32, int64, bool")


def to_dtype(d) -> dtype:
    """Accept a jitgrad dtype, a NumPy dtype or a Python type (``float``, ``int``, ``bool``)."""
    if isinstance(d, dtype):
        return d
    if d is float:
        return float64
    if d is int:
        return int64
    if d is bool:
        return bool_
    return from_numpy_dtype(d)


def promote(a: dtype, b: dtype) -> dtype:
    return a if a._rank >= b._rank else b


def result_type(a_dtype: dtype, a_dim: int, b_dtype: dtype, b_dim: int) -> dtype:
    """torch's promotion for two tensors: a 0-d tensor raises the dtype of a dimensioned
    tensor only when it is of a higher category (bool < integer < floating)."""
    if a_dtype is b_dtype:
        return a_dtype
    if (a_dim == 0) != (b_dim == 0):
        dimmed, zero = (a_dtype, b_dtype) if b_dim == 0 else (b_dtype, a_dtype)
        return zero if _category(zero) > _category(dimmed) else dimmed
    return promote(a_dtype, b_dtype)


def scalar_result_type(t_dtype: dtype, value) -> dtype:
    """dtype of ``tensor op python_scalar``: a Python float turns integer tensors into the
    default float type; otherwise the tensor's dtype wins."""
    if isinstance(value, bool):
        return t_dtype
    if isinstance(value, int):
        return int64 if t_dtype is bool_ else t_dtype
    if not t_dtype.is_floating_point:
        return _default_float
    return t_dtype


def _category(d: dtype) -> int:
    return 2 if d.is_floating_point else (1 if d is int64 else 0)
