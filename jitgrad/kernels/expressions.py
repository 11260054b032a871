"""The Numba meaning of the derivative-expression language (see ``ops/registry.py``).

Scalar helpers work on one element; ``matmul``/``mT`` on 2-D blocks.
"""
import math

import numpy as np

from .jit import inline_kernel, kernel
from .vmath import like, vcos, vsin


@inline_kernel
def exp(v):
    return np.exp(v)


@inline_kernel
def log(v):
    return np.log(v)


@inline_kernel
def log1p(v):
    return np.log1p(v)


@inline_kernel
def expm1(v):
    return np.expm1(v)


@inline_kernel
def sqrt(v):
    return np.sqrt(v)


@inline_kernel
def sin(v):
    # vectorizable in the generated loops (np.sin is a scalar libm call); computed in
    # float64, a float32 ``v`` gets its float32 result back, as from np.sin
    return like(v, vsin(float(v)))


@inline_kernel
def cos(v):
    return like(v, vcos(float(v)))


@inline_kernel
def scalar_sin(v):
    # one value at a time (the 0-d steps of compiled tapes): libm's call is the cheaper
    return np.sin(v)


@inline_kernel
def scalar_cos(v):
    return np.cos(v)


@inline_kernel
def tanh(v):
    return np.tanh(v)


@inline_kernel
def erf(v):
    # libm's erf in float64 (a float32 ``v`` gets its rounded float32 result back), as the
    # eager forward (``special.erf_array``) and the 0-d path (``math.erf``) compute it
    return like(v, math.erf(float(v)))


@inline_kernel
def atan(v):
    return np.arctan(v)


@inline_kernel
def asin(v):
    return np.arcsin(v)


@inline_kernel
def acos(v):
    return np.arccos(v)


@inline_kernel
def atan2(a, b):
    return np.arctan2(a, b)


@inline_kernel
def floor(v):
    return np.floor(v)


@inline_kernel
def ceil(v):
    return np.ceil(v)


@inline_kernel
def rint(v):
    return np.rint(v)  # half to even, as torch.round


@inline_kernel
def trunc(v):
    return np.trunc(v)


@inline_kernel
def fmod(a, b):
    return np.fmod(a, b)


@inline_kernel
def remainder(a, b):
    # torch's: fmod moved into b's sign; a zero keeps fmod's sign (NumPy's takes b's)
    m = np.fmod(a, b)
    if m != 0 and (b < 0) != (m < 0):
        m += b
    return m


@inline_kernel
def floor_divide(a, b):
    # torch's floor division of floats: the quotient of a - fmod(a, b), moved down where
    # the remainder changes sign, rounded to the nearest whole number (exact where a / b
    # rounds up to a whole number, and -1 for -1 // inf)
    if b == 0:
        return a / b
    m = np.fmod(a, b)
    q = (a - m) / b
    if m != 0 and (b < 0) != (m < 0):
        q -= 1.0
    if q == 0:
        return np.copysign(0.0, a / b)
    whole = np.floor(q)
    return whole + 1.0 if q - whole > 0.5 else whole


@inline_kernel
def hypot(a, b):
    return np.hypot(a, b)


@inline_kernel
def sign(v):
    return 1.0 if v > 0 else (-1.0 if v < 0 else 0.0)  # 0 for nan, as torch.sign


@inline_kernel
def positive(v):
    return 1.0 if v > 0 else 0.0


@inline_kernel
def in_range(v, low, high):
    return 1.0 if (v >= low and v <= high) else 0.0


@inline_kernel
def power(base, exponent):
    # small integer exponents as products: the exponent is the same for a whole loop, so
    # the branch is hoisted and the loop avoids a pow() call per element
    if exponent == 1.0:
        return base
    if exponent == 2.0:
        return base * base
    if exponent == 0.0:
        return base * 0.0 + 1.0
    if exponent == -1.0:
        return 1.0 / base
    return base ** exponent


@inline_kernel
def product_exponent(exponent):
    """Whether ``power`` computes ``base ** exponent`` by products, without a pow() call.
    Generated loops test it once, before a loop version that uses ``power_by_products``:
    with a pow() call left in the loop (even one never taken) LLVM may not vectorize it."""
    return exponent == 1.0 or exponent == 2.0 or exponent == 0.0 or exponent == -1.0


@inline_kernel
def power_by_products(base, exponent):
    """``power`` for an exponent ``product_exponent`` accepted, the same results without
    branches: every candidate is computed and the exponent's is selected."""
    result = 1.0 / base
    result = base * 0.0 + 1.0 if exponent == 0.0 else result
    result = base * base if exponent == 2.0 else result
    return base if exponent == 1.0 else result


@inline_kernel
def where(condition, if_true, if_false):
    return if_true if condition else if_false


@kernel
def matmul(p, q):
    return np.dot(p, q)


@inline_kernel
def mT(m):  # noqa: N802 - torch's name for the matrix transpose
    return m.T
