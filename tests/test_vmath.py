"""The vectorized float64 sin/cos (jitgrad/kernels/vmath.py): within one ulp of NumPy's libm
results everywhere, libm's own answer beyond the reduction's range, and wired into the eager
forward and the generated kernels."""
from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import zlib

import numba
import numpy as np
import pytest

import jitgrad as torch
from jitgrad import _vmath_forward
from jitgrad.kernels import expressions, vmath


def ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """How many doubles (or floats) lie from ``a`` to ``b``; nan == nan, -0.0 != 0.0."""
    a, b = np.asarray(a), np.asarray(b)
    ints = {8: np.int64, 4: np.int32}[a.dtype.itemsize]
    ia, ib = a.view(ints).astype(np.int64), b.view(ints).astype(np.int64)
    sign = np.int64(-(2 ** (8 * a.dtype.itemsize - 1)))
    ia = np.where(ia < 0, sign - ia, ia)  # ordered like the values: -0.0 just below 0.0
    ib = np.where(ib < 0, sign - ib, ib)
    d = np.abs(ia - ib)
    both_nan = np.isnan(a) & np.isnan(b)
    return np.where(both_nan, 0, np.where(np.isnan(a) | np.isnan(b), 2 ** 62, d))


def _sample(name: str, n: int = 10 ** 6) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    if name == "tiny":
        return rng.uniform(-1e-8, 1e-8, n)
    if name == "huge":
        return rng.choice([-1.0, 1.0], n) * 10.0 ** rng.uniform(10, 300, n)
    if name == "spread":  # every binade up to the reduction's limit
        return rng.choice([-1.0, 1.0], n) * 2.0 ** rng.uniform(-40, 29, n)
    if name == "limit":  # both sides of the switch to libm
        return rng.choice([-1.0, 1.0], n) * rng.uniform(0.5, 2.0, n) * vmath.LIMIT
    if name == "near":  # multiples of pi/2 and pi/4 (the hardest reductions) and neighbours
        k = rng.integers(-vmath.LIMIT / 1.6, vmath.LIMIT / 1.6, n // 4).astype(float)
        m = np.concatenate([k * (np.pi / 2), np.arange(-n // 8, n // 8) * (np.pi / 4)])
        return np.concatenate([m, np.nextafter(m, np.inf), np.nextafter(m, -np.inf)])
    bound = {"pi": np.pi, "100": 100.0, "1e5": 1e5}[name]
    return rng.uniform(-bound, bound, n)


RANGES = ["tiny", "pi", "100", "1e5", "spread", "limit", "huge", "near"]


@pytest.mark.parametrize("name", RANGES)
def test_array_kernels_within_one_ulp_of_numpy(name):
    x = _sample(name)
    out = np.empty_like(x)
    vmath.sin_array(x, out)
    assert ulps(out, np.sin(x)).max() <= 1
    vmath.cos_array(x, out)
    assert ulps(out, np.cos(x)).max() <= 1
    vmath.sin_array(x, x)  # in place
    assert ulps(x, np.sin(_sample(name))).max() <= 1


@pytest.mark.parametrize("name", ["pi", "1e5", "spread", "near"])
def test_faithful_against_exact_values(name):
    """Below one ulp of the exact value (and so within one ulp of any faithful libm)."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.prec = 200
    x = _sample(name)[::500]
    s, c = np.empty_like(x), np.empty_like(x)
    vmath.sin_array(x, s)
    vmath.cos_array(x, c)
    worst = 0.0
    for xi, si, ci in zip(x.tolist(), s.tolist(), c.tolist()):
        for got, exact in ((si, mpmath.sin(xi)), (ci, mpmath.cos(xi))):
            worst = max(worst, float(abs(got - exact)) / np.spacing(abs(float(exact))))
    assert worst < 0.75, worst


def test_special_values():
    big = np.finfo(np.float64).max
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 5e-324, -5e-324, 1e-310, 2.0 ** -27,
                  vmath.LIMIT, -vmath.LIMIT, np.nextafter(vmath.LIMIT, np.inf), 1e22, big, -big])
    with np.errstate(invalid="ignore"):
        want_sin, want_cos = np.sin(x), np.cos(x)
    for fn, want in ((vmath.sin_array, want_sin), (vmath.cos_array, want_cos)):
        out = np.empty_like(x)
        fn(x, out)
        assert ulps(out, want).max() <= 1
        assert np.array_equal(np.isnan(out), np.isnan(want))
    out = np.empty_like(x)
    vmath.sin_array(x, out)
    assert np.signbit(out[4]) and not np.signbit(out[3])  # sin(-0.0) is -0.0
    assert np.array_equal(out[5:9], x[5:9])


@numba.njit
def _loop(f, x, out):
    for i in range(x.shape[0]):
        out[i] = f(x[i])


@pytest.mark.parametrize("helper, ref", [(expressions.sin, np.sin), (expressions.cos, np.cos)])
def test_expression_helpers_any_float(helper, ref):
    x = np.concatenate([_sample("100", 10 ** 5), _sample("huge", 10 ** 3),
                        [np.nan, np.inf, -np.inf, 0.0, -0.0]])
    x32 = np.concatenate([x[:10 ** 5], x[-5:], [3e38, -3e38]]).astype(np.float32)
    with np.errstate(invalid="ignore"):
        want = ref(x)
        want32 = ref(x32)
    out = np.empty_like(x)
    _loop(helper, x, out)
    assert ulps(out, want).max() <= 1
    out32 = np.empty(len(x32), np.float32)
    _loop(helper, x32, out32)
    assert ulps(out32, want32).max() <= 1
    # one value at a time, as the 0-d replay calls them
    for v in (0.5, -0.0, 1e300, float("nan"), np.float32(2.5)):
        with np.errstate(invalid="ignore"):
            got, expect = helper(v), ref(v)
        assert ulps(np.asarray(got, np.asarray(expect).dtype), np.asarray(expect)) <= 1
    assert np.signbit(expressions.sin(-0.0))
    # float32 in, float32 out (as np.sin), so that float32 kernels keep their arithmetic
    types = {sig.args: sig.return_type for sig in helper.nopython_signatures}
    assert types[(numba.float32,)] == numba.float32
    assert types[(numba.float64,)] == numba.float64


def test_helpers_as_plain_python():
    """NUMBA_DISABLE_JIT=1: the same code runs as Python (fma is exact rational arithmetic)."""
    code = ("import numpy as np\nfrom jitgrad.kernels import expressions as e\n"
            "xs = [0.5, -0.0, 3.0, 1e5 + 0.1, 1e300, float('nan'), float('inf')]\n"
            "print(repr([(float(e.sin(v)), float(e.cos(v))) for v in xs]))")
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env)
    assert done.returncode == 0, done.stderr
    got = np.array(eval(done.stdout, {"nan": np.nan}))
    xs = np.array([0.5, -0.0, 3.0, 1e5 + 0.1, 1e300, np.nan, np.inf])
    with np.errstate(invalid="ignore"):
        assert ulps(got[:, 0], np.sin(xs)).max() <= 1
        assert ulps(got[:, 1], np.cos(xs)).max() <= 1
    assert np.signbit(got[1, 0])


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 assembly")
def test_vector_loop_is_vectorized():
    fresh = numba.njit(error_model="numpy")(vmath.sin_array.py_func)  # cached code has no asm
    x = _sample("pi", 1000)
    fresh(x, np.empty_like(x))
    asm = fresh.inspect_asm(fresh.signatures[0])
    assert re.search(r"vfmadd\w*pd\s[^\n]*%[yz]mm", asm), "no packed FMA in sin_array"

    @numba.njit
    def plain(x, out):  # the element function alone, libm fallback included
        for i in range(x.shape[0]):
            out[i] = vmath.vsin(x[i])

    plain(x, np.empty_like(x))
    asm = plain.inspect_asm(plain.signatures[0])
    assert re.search(r"vfmadd\w*pd\s[^\n]*%[yz]mm", asm), "vsin loop not vectorized"


@pytest.mark.parametrize("name, ref", [("sin", np.sin), ("cos", np.cos)])
def test_eager_forward_keeps_numpy_semantics(name, ref):
    fn = getattr(_vmath_forward, name)
    x = _sample("100", 6000).reshape(20, 300)
    y = fn(x, 0.0, 0.0, None)
    assert type(y) is np.ndarray and y.shape == x.shape and y.dtype == x.dtype
    assert y is not x and ulps(y, ref(x)).max() <= 1
    out = np.empty_like(x)
    assert fn(x, 0.0, 0.0, out) is out and ulps(out, ref(x)).max() <= 1
    x32 = x.astype(np.float32)
    assert np.array_equal(fn(x32, 0.0, 0.0, None), ref(x32))  # NumPy's own float32 path
    strided = x[:, ::2]
    assert np.array_equal(fn(strided, 0.0, 0.0, None), ref(strided))
    small = x[0, :10].copy()
    assert np.array_equal(fn(small, 0.0, 0.0, None), ref(small))
    inplace = x.copy()
    assert fn(inplace, 0.0, 0.0, inplace) is inplace and ulps(inplace, ref(x)).max() <= 1


@pytest.mark.parametrize("name, ref, dref", [("sin", np.sin, np.cos),
                                             ("cos", np.cos, lambda v: -np.sin(v))])
def test_end_to_end_values_and_gradients(name, ref, dref):
    x = _sample("100", 10 ** 5)
    t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y = getattr(torch, name)(t)
    assert ulps(y.detach().numpy(), ref(x)).max() <= 1
    y.sum().backward()
    assert ulps(t.grad.numpy(), dref(x)).max() <= 1
    with torch.no_grad():
        assert ulps(getattr(torch, name)(t).numpy(), ref(x)).max() <= 1
