"""The Numba meaning of the derivative-expression language (see ``ops/registry.py``).

Scalar helpers work on one element; ``matmul``/``mT`` on 2-D blocks.
"""
import numpy as np
from .jit import inline_kernel, kernel


@inline_kernel
def exp(v):
    return np.exp(v)


@inline_kernel
def log(v):
    return np.log(v)


@inline_kernel
def sqrt(v):
    return np.sqrt(v)


@inline_kernel
def sin(v):
    return np.sin(v)


@inline_kernel
def cos(v):
    return np.cos(v)


@inline_kernel
def tanh(v):
    return np.tanh(v)


@inline_kernel
def sign(v):
    return np.sign(v)


@inline_kernel
def positive(v):
    return 1.0 if v > 0 else 0.0


@inline_kernel
def in_range(v, low, high):
    return 1.0 if (v >= low and v <= high) else 0.0


@inline_kernel
def where(condition, if_true, if_false):
    return if_true if condition else if_false


@kernel
def matmul(p, q):
    return np.dot(p, q)


@inline_kernel
def mT(m):  # noqa: N802 - torch's name for the matrix transpose
    return m.T
