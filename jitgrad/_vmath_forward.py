"""Eager float64 ``sin``/``cos`` through the vectorized kernels of ``kernels/vmath.py``.

NumPy's float64 sin/cos are one scalar libm call per element (~9 ns); the kernels take ~2 ns.
Numba is imported on the first large float64 call, not with ``jitgrad``. Everything else
(float32, small or strided arrays, an ``out`` that overlaps ``x`` other than being ``x``) keeps
NumPy's own path; the results are NumPy's to within one ulp.
"""
from __future__ import annotations

import numpy as np

# below this many elements NumPy is as fast: the kernel call costs ~0.5 us, the checks and
# views here about as much again
MIN_SIZE = 256

_array_kernels = None


def _kernels():
    global _array_kernels
    if _array_kernels is None:
        from .kernels.vmath import cos_array, sin_array

        _array_kernels = {"sin": sin_array, "cos": cos_array}
    return _array_kernels


def _usable(x, out) -> bool:
    if not (type(x) is np.ndarray and x.dtype == np.float64 and x.size >= MIN_SIZE
            and x.flags.c_contiguous):
        return False
    if out is None or out is x:
        return True
    return (type(out) is np.ndarray and out.dtype == np.float64 and out.shape == x.shape
            and out.flags.c_contiguous and not np.may_share_memory(x, out))


def _apply(name: str, ufunc, x, out):
    if not _usable(x, out):
        return ufunc(x, out=out)
    result = np.empty_like(x) if out is None else out
    _kernels()[name](x.reshape(-1), result.reshape(-1))
    return result


def sin(x, c0, c1, out):
    """``np.sin(x, out=out)``, vectorized for large contiguous float64 arrays."""
    return _apply("sin", np.sin, x, out)


def cos(x, c0, c1, out):
    """``np.cos(x, out=out)``, vectorized for large contiguous float64 arrays."""
    return _apply("cos", np.cos, x, out)
