"""Eager ``logsumexp`` along one dim in one pass of a Numba kernel.

NumPy's version is six array calls (the peak, its finite check, ``x - peak``, ``exp``, the
sum, ``log``); on the small batches of a training step (``log_softmax`` of 64 rows of 10
logits: W4's loss) those calls cost ~20 us while the arithmetic is 640 exponentials, and
its reductions along a short last dim pay NumPy's per-row overhead again. The kernel walks
each row twice (the peak, then the sum of ``exp(x - peak)``) in float64, whatever the
input's dtype, and rounds once at the end.

Where NumPy is faster the kernel is not used: float32 arrays of more than a few thousand
elements reduced along a long dim (NumPy's float32 ``exp`` is vectorized; the kernel's is
one libm call per element). A row longer than ``MAX_ROW`` keeps NumPy's pairwise sum,
so that the sequential sum's rounding stays far below the result's last bit. Numba is
imported on the first call (a backward has loaded it already in a training loop).
"""
from __future__ import annotations

import numpy as np

MAX_ROW = 8192  # elements summed in one row by the kernel (a sequential float64 sum)
# float32: NumPy's vectorized exp wins above this many elements, unless its rows are short
FLOAT32_SIZE = 4096
FLOAT32_SHORT_ROW = 16

_rows = None


def _kernel():
    global _rows
    if _rows is None:
        from ._logsumexp_rows import logsumexp_rows

        _rows = logsumexp_rows
    return _rows


def usable(x: np.ndarray, axis) -> bool:
    """Whether :func:`along` computes ``logsumexp(x, axis)`` (and is the faster way)."""
    if type(axis) is not tuple or len(axis) != 1 or not x.flags.c_contiguous:
        return False
    n = x.shape[axis[0]]
    if n > MAX_ROW:
        return False
    if x.dtype == np.float64:
        return True
    return x.dtype == np.float32 and (x.size <= FLOAT32_SIZE or n <= FLOAT32_SHORT_ROW)


def _blocks(shape: tuple, d: int) -> tuple:
    """(outer, n, inner): ``shape`` as the rows reduced along dim ``d``."""
    outer = 1
    for s in shape[:d]:
        outer *= s
    inner = 1
    for s in shape[d + 1:]:
        inner *= s
    return outer, shape[d], inner


def rows(x: np.ndarray, d: int, out: np.ndarray) -> None:
    """Write ``logsumexp`` of ``x`` along dim ``d`` into ``out``: a flat array (a slot of
    the arena) of ``x``'s dtype holding one element per row."""
    outer, n, inner = _blocks(x.shape, d)
    _kernel()(x.reshape(outer, n, inner), out.reshape(outer, inner))


def along(x: np.ndarray, axis: tuple) -> np.ndarray:
    """``log(sum(exp(x)))`` along the one dim in ``axis`` (the reduced shape, without it),
    for a C-contiguous float array :func:`usable` accepted."""
    d = axis[0]
    shape = x.shape
    outer, n, inner = _blocks(shape, d)
    out = np.empty((outer, inner), x.dtype)
    _kernel()(x.reshape(outer, n, inner), out)
    return out.reshape(shape[:d] + shape[d + 1:])
