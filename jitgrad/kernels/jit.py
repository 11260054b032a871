"""The one way kernels are compiled: Numba nopython, cached on disk, NumPy's error model
(float division by zero gives inf/nan as in NumPy and torch, instead of raising).

This module is also where numba is first imported (every module that uses numba imports
this one first), and the place that keeps numba's objects out of Python's cyclic garbage
collector: numba and its type system are a few hundred thousand container objects that
every full collection would traverse, and the interpreter's final collections at exit
took ~0.25 s here (a fresh process computing one gradient ran 1.05 s, 0.73 s with them
frozen). So the objects alive once numba is loaded move to the permanent generation
(``gc.freeze``), after a collection, so that no garbage of the caller's is frozen with them.
Set ``JITGRAD_GC_FREEZE=0`` to leave the collector alone.
"""
import gc
import os
import sys

if "numba" not in sys.modules and os.environ.get("JITGRAD_GC_FREEZE", "1") != "0":
    gc.collect()
    import numba  # noqa: F401
    gc.freeze()

from numba import njit  # noqa: E402

kernel = njit(cache=True, error_model="numpy")
inline_kernel = njit(cache=True, error_model="numpy", inline="always")
