"""The Numba meaning of the derivative-expression language (see ``ops/registry.py``).

Scalar helpers work on one element; ``matmul``/``mT`` on 2-D blocks.
"""
import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def exp(v):
    return np.exp(v)


@njit(cache=True, inline="always")
def log(v):
    return np.log(v)


@njit(cache=True, inline="always")
def sqrt(v):
    return np.sqrt(v)


@njit(cache=True, inline="always")
def sin(v):
    return np.sin(v)


@njit(cache=True, inline="always")
def cos(v):
    return np.cos(v)


@njit(cache=True, inline="always")
def tanh(v):
    return np.tanh(v)


@njit(cache=True, inline="always")
def sign(v):
    return np.sign(v)


@njit(cache=True, inline="always")
def positive(v):
    return 1.0 if v > 0 else 0.0


@njit(cache=True, inline="always")
def in_range(v, low, high):
    return 1.0 if (v >= low and v <= high) else 0.0


@njit(cache=True, inline="always")
def where(condition, if_true, if_false):
    return if_true if condition else if_false


@njit(cache=True)
def matmul(p, q):
    return np.dot(p, q)


@njit(cache=True, inline="always")
def mT(m):  # noqa: N802 - torch's name for the matrix transpose
    return m.T
