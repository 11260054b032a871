"""The one way kernels are compiled: Numba nopython, cached on disk, NumPy's error model
(float division by zero gives inf/nan as in NumPy and torch, instead of raising)."""
from numba import njit

kernel = njit(cache=True, error_model="numpy")
inline_kernel = njit(cache=True, error_model="numpy", inline="always")
