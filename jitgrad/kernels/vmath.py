"""Float64 sine and cosine that LLVM can vectorize.

``np.sin``/``np.cos`` on float64 (in NumPy, and in a Numba loop, where they become the
``llvm.sin``/``llvm.cos`` intrinsics) are one scalar libm call per element: there is no vector
math library here, so a loop over them never vectorizes. The functions below are branch-free
arithmetic (selects, not jumps), so the same loop runs on 8 lanes at once:

* range reduction ``r = x - k*pi/2`` with ``k = rint(x*2/pi)``, pi/2 split in three doubles;
  the first product is folded into one exact FMA, the second is an exact FMA product, and
  the sums are error-free transformations, so ``r = rh + rl`` is known to far below an ulp
  for every ``|x| <= LIMIT``: the reduction error is below 2**-128, and no double in that
  range lies within 2**-60.4 of a nonzero multiple of pi/2 (a continued-fraction bound);
* minimax polynomials for sin and cos on [-pi/4, pi/4], both evaluated, the quadrant
  ``k mod 4`` picks one and its sign.

Beyond ``LIMIT`` (and for nan and +-inf) the reduction is not attempted: those elements take
libm's answer. The array kernels do that in a second, scalar pass over the few elements the
vector pass flagged, so that the vector pass stays branch-free; the element functions
``vsin``/``vcos`` (used inside the generated kernels' loops) through a masked vector call.

The coefficients were fitted for this module (Remez exchange in 256-bit arithmetic on
``r**3`` / ``r**4`` weighted relative error, then rounded to double): the polynomials' own
relative error is below 2**-57; the largest error measured against exact values is 0.59
ulp (libm's own is about 0.5), so results are within one ulp of np.sin/np.cos.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from .jit import inline_kernel, kernel  # isort: skip  (numba is loaded there, first)
from llvmlite import ir  # isort: skip
from numba import types  # isort: skip
from numba.extending import intrinsic, overload  # isort: skip
from numba.np.numpy_support import as_dtype  # isort: skip

# |x| up to which the reduction is accurate: k = rint(x*2/pi) < 2**29 keeps the error of the
# last (rounded) product k*PIO2_3 below 2**-130
LIMIT = 2.0 ** 29
# below this, sin(x) rounds to x (|x**3/6| < half an ulp of x); returning x also keeps -0.0
_SIN_IS_X = 2.0 ** -27

TWO_OVER_PI = 0.6366197723675814         # 0x1.45f306dc9c883p-1
# pi/2 = PIO2_1 + PIO2_2 + PIO2_3 + O(2**-163), each part the rounded remainder
PIO2_1 = 1.5707963267948966              # 0x1.921fb54442d18p+0
PIO2_2 = 6.123233995736766e-17           # 0x1.1a62633145c07p-54
PIO2_3 = -1.4973849048591698e-33         # -0x1.f1976b7ed8fbcp-110

# sin(r) = r + r**3 * (S0 + S1 z + ... + S6 z**6), z = r*r, |r| <= pi/4
S0 = -0.16666666666666666                # -0x1.5555555555555p-3
S1 = 0.008333333333333333                # 0x1.1111111111111p-7
S2 = -0.00019841269841268586             # -0x1.a01a01a019e4bp-13
S3 = 2.7557319221940105e-06              # 0x1.71de3a54f684cp-19
S4 = -2.5052107068003497e-08             # -0x1.ae6455039a85dp-26
S5 = 1.6058652511234365e-10              # 0x1.61222d44de129p-33
S6 = -7.593164085817527e-13              # -0x1.ab7506eb8f106p-41
# cos(r) = 1 - z/2 + z**2 * (C0 + C1 z + ... + C5 z**5)
C0 = 0.041666666666666664                # 0x1.5555555555555p-5
C1 = -0.001388888888888853               # -0x1.6c16c16c16b71p-10
C2 = 2.4801587300292568e-05              # 0x1.a01a019fbcb60p-16
C3 = -2.7557317951075183e-07             # -0x1.27e4fa923b50ap-22
C4 = 2.0876266285124983e-09              # 0x1.1eebd5033432ap-29
C5 = -1.138995742264673e-11              # -0x1.90bf9db2c09dbp-37


def fma(a: float, b: float, c: float) -> float:
    """``a*b + c`` rounded once. Compiled code gets the ``llvm.fma`` instruction (exact
    products and remainders are what the reduction is built on); this exact rational form is
    the plain-Python meaning, for runs under NUMBA_DISABLE_JIT=1."""
    if math.isfinite(a) and math.isfinite(b) and math.isfinite(c):
        return float(Fraction(a) * Fraction(b) + Fraction(c))
    return a * b + c


@intrinsic
def _llvm_fma(typingctx, a, b, c):
    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return types.float64(types.float64, types.float64, types.float64), codegen


@overload(fma)
def _fma_overload(a, b, c):
    if all(isinstance(t, (types.Float, types.Integer)) for t in (a, b, c)):
        return lambda a, b, c: _llvm_fma(float(a), float(b), float(c))


def like(v, r):
    """``r`` as the float type of ``v`` (float32 stays float32, as np.sin would keep it);
    float64 for any other ``v``."""
    return type(v)(r) if isinstance(v, np.floating) else r


@overload(like)
def _like_overload(v, r):
    if isinstance(v, types.Float) and v != types.float64:
        to = as_dtype(v).type
        return lambda v, r: to(r)
    return lambda v, r: r


# -- libm beyond LIMIT, without stopping the vector loop ------------------------------------------
# In a loop, ``fast if inside else np.sin(x)`` is if-converted: np.sin (the speculatable llvm.sin)
# then runs on every lane, 8 scalar calls per vector, slower than no vectorizing at all. The call
# below is opaque to that (noinline, not speculatable) and names masked vector variants (the
# "vector-function-abi-variant" attribute), so the loop still vectorizes and calls libm only
# for the lanes that need it.
_VECTOR_WIDTHS = (2, 4, 8, 16)


def _declare_libm_calls(module) -> None:
    """Define ``jitgrad_vmath_{sin,cos}`` (scalar) and their masked vector variants in
    ``module``; linkonce_odr, so that the copies in linked modules merge."""
    double = ir.DoubleType()
    lane = ir.IntType(32)
    variants = []
    for name in ("sin", "cos"):
        scalar = ir.Function(module, ir.FunctionType(double, [double]), f"jitgrad_vmath_{name}")
        scalar.linkage = "linkonce_odr"
        for attr in ("noinline", "nounwind", "readnone"):
            scalar.attributes.add(attr)
        for attr in ("willreturn", "nosync", "nofree"):  # not in llvmlite's list
            set.add(scalar.attributes, attr)
        mapping = ",".join(f"_ZGV_LLVM_M{w}v_{scalar.name}({scalar.name}_m{w})"
                           for w in _VECTOR_WIDTHS)
        set.add(scalar.attributes, f'"vector-function-abi-variant"="{mapping}"')
        builder = ir.IRBuilder(scalar.append_basic_block())
        builder.ret(builder.call(module.declare_intrinsic(f"llvm.{name}", [double]),
                                 scalar.args))
        for width in _VECTOR_WIDTHS:
            vector, mask_type = ir.VectorType(double, width), ir.VectorType(ir.IntType(1), width)
            fn = ir.Function(module, ir.FunctionType(vector, [vector, mask_type]),
                             f"{scalar.name}_m{width}")
            fn.linkage = "linkonce_odr"
            fn.attributes.add("nounwind")
            x, mask = fn.args
            builder = ir.IRBuilder(fn.append_basic_block())
            bits = builder.bitcast(mask, ir.IntType(width))
            with builder.if_then(builder.icmp_unsigned("==", bits, bits.type(0)), likely=True):
                builder.ret(x)  # the usual case: no lane beyond LIMIT
            result = x
            for j in range(width):
                before = builder.block
                with builder.if_then(builder.extract_element(mask, lane(j)), likely=False):
                    y = builder.call(scalar, [builder.extract_element(x, lane(j))])
                    updated = builder.insert_element(result, y, lane(j))
                    then = builder.block
                phi = builder.phi(vector)
                phi.add_incoming(updated, then)
                phi.add_incoming(result, before)
                result = phi
            builder.ret(result)
            variants.append(fn)
    # nothing calls the variants until the vectorizer does: keep them alive until then
    pointer = ir.IntType(8).as_pointer()
    used = ir.GlobalVariable(module, ir.ArrayType(pointer, len(variants)), "llvm.compiler.used")
    used.linkage = "appending"
    used.section = "llvm.metadata"
    used.initializer = used.value_type([fn.bitcast(pointer) for fn in variants])


def _libm_intrinsic(name: str):
    @intrinsic
    def call(typingctx, x):
        def codegen(context, builder, signature, args):
            if "jitgrad_vmath_sin" not in builder.module.globals:
                _declare_libm_calls(builder.module)
            return builder.call(builder.module.globals[f"jitgrad_vmath_{name}"], args)

        return types.float64(types.float64), codegen

    return call


_libm_sin, _libm_cos = _libm_intrinsic("sin"), _libm_intrinsic("cos")


def libm_sin(x: float) -> float:
    """np.sin(x); compiled, a call that keeps the loop around it vectorizable."""
    return np.sin(x)


def libm_cos(x: float) -> float:
    """np.cos(x); compiled, a call that keeps the loop around it vectorizable."""
    return np.cos(x)


@overload(libm_sin)
def _libm_sin_overload(x):
    return lambda x: _libm_sin(float(x))


@overload(libm_cos)
def _libm_cos_overload(x):
    return lambda x: _libm_cos(float(x))



@inline_kernel
def _sin_quadrant(x, shift):
    """sin(x + shift*pi/2) for finite ``|x| <= LIMIT``; straight-line code for the vector
    loops."""
    k = np.rint(x * TWO_OVER_PI)
    a = fma(-k, PIO2_1, x)  # exact: the true difference is a multiple of ulp(x), below 2
    ph = k * PIO2_2
    pl = fma(k, PIO2_2, -ph)  # k*PIO2_2 == ph + pl exactly
    s = a - ph
    bb = s - a
    e = (a - (s - bb)) - (ph + bb)  # a - ph == s + e exactly
    t = fma(-k, PIO2_3, e - pl)
    rh = s + t
    rl = t - (rh - s)  # r = rh + rl, |rl| <= ulp(rh)/2
    z = rh * rh
    zl = fma(rh, rh, -z)  # rh**2 == z + zl exactly
    # sin(rh + rl) = sin(rh) + rl*cos(rh), cos(rh) ~ 1 - z/2 (rl is tiny). The r**3/6 term is
    # up to a tenth of r: it is carried in two parts, so that only the final sum rounds.
    p3 = rh * z
    p3l = fma(rh, z, -p3) + rh * zl  # rh**3 ~ p3 + p3l
    t3 = p3 * S0
    t3l = fma(p3, S0, -t3)
    ps = fma(fma(fma(fma(fma(S6, z, S5), z, S4), z, S3), z, S2), z, S1)
    tail = fma(p3 * z, ps, fma(p3l, S0, fma(-0.5 * z, rl, rl)))
    head = rh + t3
    sin_r = head + ((t3 - (head - rh)) + (t3l + tail))
    # cos(rh + rl) = cos(rh) - rl*sin(rh); 1 - z/2 is summed with its rounding error
    pc = fma(fma(fma(fma(fma(C5, z, C4), z, C3), z, C2), z, C1), z, C0)
    hz = 0.5 * z
    w = 1.0 - hz
    cos_r = w + (((1.0 - w) - hz) + fma(z * z, pc, fma(-rh, rl, -0.5 * zl)))
    q = np.int64(k) + shift
    res = cos_r if q & 1 else sin_r
    return -res if q & 2 else res


@inline_kernel
def _sin_or_x(x):
    """sin(x) where ``|x| <= LIMIT``, else ``x`` itself (marked for the fix-up pass)."""
    inside = abs(x) <= LIMIT
    r = _sin_quadrant(x if inside else 0.0, 0)
    r = x if abs(x) < _SIN_IS_X else r
    return r if inside else x


@inline_kernel
def _cos_or_x(x):
    """cos(x) where ``|x| <= LIMIT``, else ``x`` itself (marked for the fix-up pass)."""
    inside = abs(x) <= LIMIT
    r = _sin_quadrant(x if inside else 0.0, 1)
    return r if inside else x


@inline_kernel
def vsin(x):
    """sin(x) for float64 ``x``: the vector path for finite ``|x| <= LIMIT``, libm beyond."""
    return _sin_or_x(x) if abs(x) <= LIMIT else libm_sin(x)


@inline_kernel
def vcos(x):
    """cos(x) for float64 ``x``: the vector path for finite ``|x| <= LIMIT``, libm beyond."""
    return _cos_or_x(x) if abs(x) <= LIMIT else libm_cos(x)


@inline_kernel
def _vector_pass(x, out, cosine):
    """``out[i] = sin or cos(x[i])`` branch-free, ``x[i]`` itself beyond LIMIT; returns how
    many elements were beyond."""
    far = 0
    for i in range(x.shape[0]):
        v = x[i]
        out[i] = _cos_or_x(v) if cosine else _sin_or_x(v)
        far += 0 if abs(v) <= LIMIT else 1
    return far


@inline_kernel
def _array(x, out, cosine):
    if x.ctypes.data == out.ctypes.data:
        # in place: with one array the loop needs no overlap check (which would fail, and
        # send the whole loop down the scalar path)
        far = _vector_pass(out, out, cosine)
    else:
        far = _vector_pass(x, out, cosine)
    if far:
        for i in range(out.shape[0]):
            v = out[i]  # still x[i] where it was beyond LIMIT
            if not abs(v) <= LIMIT:
                out[i] = np.cos(v) if cosine else np.sin(v)


@kernel
def sin_array(x, out):
    """``out[:] = sin(x)`` for 1-D float64 arrays (``out`` may be ``x``): one vector pass
    that leaves the elements beyond LIMIT (and nan, +-inf) as they were, then, only if there
    were such, a scalar pass that gives them libm's answer."""
    _array(x, out, False)


@kernel
def cos_array(x, out):
    """``out[:] = cos(x)``, as :func:`sin_array`."""
    _array(x, out, True)
