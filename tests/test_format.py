"""Tests for jitgrad._format.tensor_repr: it must print exactly what torch prints."""

from __future__ import annotations

import numpy as np
import pytest

from jitgrad import _dtype
from jitgrad._dtype import bool_, float32, float64, from_numpy_dtype, int64
from jitgrad._format import tensor_repr


@pytest.fixture(scope="module")
def torch():
    """torch is optional: only the comparisons against it are skipped when it is missing, so
    the hard-coded expectations below still run."""
    return pytest.importorskip("torch")


# ---------------------------------------------------------------------------------------------
# hard-coded expectations (no torch needed)
# ---------------------------------------------------------------------------------------------

HARD_CODED = [
    (27.0, float32, (), "tensor(27.)"),
    (3.5, float64, (), "tensor(3.5000, dtype=torch.float64)"),
    (-6.0, float32, (), "tensor(-6.)"),
    (5, int64, (), "tensor(5)"),
    ([True, False], bool_, (), "tensor([ True, False])"),
    ([1, 2], int64, (), "tensor([1, 2])"),
    ([1.0, 2.5], float32, (), "tensor([1.0000, 2.5000])"),
    (
        [[1.0, 1.0], [1.0, 1.0]],
        float32,
        ("requires_grad=True",),
        "tensor([[1., 1.],\n        [1., 1.]], requires_grad=True)",
    ),
    (
        [2.0, -4.0],
        float64,
        ("grad_fn=<MulBackward0>",),
        "tensor([ 2., -4.], dtype=torch.float64, grad_fn=<MulBackward0>)",
    ),
    ([1e-5, 1.0], float32, (), "tensor([1.0000e-05, 1.0000e+00])"),
    ([float("nan"), float("inf"), -float("inf"), 1.0], float32, (), "tensor([nan, inf, -inf, 1.])"),
    ([0.0, -0.0], float32, (), "tensor([0., -0.])"),
    (np.zeros((0, 3)), float32, (), "tensor([], size=(0, 3))"),
    (np.zeros((0,)), float32, (), "tensor([])"),
    (np.zeros((0,), np.int64), int64, (), "tensor([], dtype=torch.int64)"),
    (
        np.arange(8.0).reshape(2, 2, 2),
        float32,
        (),
        "tensor([[[0., 1.],\n         [2., 3.]],\n\n        [[4., 5.],\n         [6., 7.]]])",
    ),
    (np.arange(2000), int64, (), "tensor([   0,    1,    2,  ..., 1997, 1998, 1999])"),
]


@pytest.mark.parametrize("data, dtype, suffixes, expected", HARD_CODED)
def test_hard_coded(data, dtype, suffixes, expected):
    assert tensor_repr(np.asarray(data), dtype, list(suffixes)) == expected


def test_long_row_wraps_at_line_width():
    text = tensor_repr(np.arange(30.0) + 0.5, float32)
    lines = text.split("\n")
    assert len(lines) > 1
    assert all(len(line) <= 80 for line in lines)
    assert all(line.startswith(" " * 8) for line in lines[1:])


def test_float32_values_are_formatted_from_float32():
    # 0.00125 is 0.00124999997... in float32, so it rounds down; in float64 it rounds up
    values = np.array([0.00125, 1.0])
    assert tensor_repr(values.astype(np.float32), float32) == "tensor([0.0012, 1.0000])"
    assert tensor_repr(values, float64) == "tensor([0.0013, 1.0000], dtype=torch.float64)"
    assert tensor_repr(np.array(16777217.0), float32) == "tensor(16777216.)"


# ---------------------------------------------------------------------------------------------
# comparison with torch
# ---------------------------------------------------------------------------------------------


def _cases() -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    nan, inf = float("nan"), float("inf")
    f32, f64 = np.float32, np.float64
    cases = {
        # 0-d
        "0d_int_float": np.array(27.0, f32),
        "0d_fixed_f64": np.array(3.5, f64),
        "0d_neg": np.array(-6.0, f32),
        "0d_zero": np.array(0.0, f32),
        "0d_negzero": np.array(-0.0, f32),
        "0d_nan": np.array(nan, f32),
        "0d_inf": np.array(-inf, f64),
        "0d_tiny": np.array(1e-5, f32),
        "0d_huge": np.array(1e10, f64),
        "0d_third_f32": np.array(1 / 3, f32),
        "0d_int64": np.array(-42, np.int64),
        "0d_bool": np.array(True),
        # 1-d
        "ints_as_floats": np.array([1.0, 2.0, 3.0], f32),
        "neg_ints_as_floats": np.array([-10.0, 2.0, 300.0], f64),
        "fixed": np.array([1.5, -2.25, 0.125], f32),
        "f32_tenths": np.array([0.1, 0.2, 0.3], f32),
        "f64_tenths": np.array([0.1, 0.2, 0.3], f64),
        "halves": np.array([0.5, 1.5, 2.5, 3.00005, 0.00005 + 1], f64),
        "normal_f32": rng.standard_normal(50).astype(f32),
        "normal_f64": rng.standard_normal(17),
        "arange_float": np.arange(100, dtype=f32),
        "arange_int": np.arange(100, dtype=np.int64),
        "ints_neg_big": np.array([-(2**62), 0, 7, 123456789], np.int64),
        "bool_1d": np.array([True, False, True]),
        "bool_all_false": np.zeros(4, bool),
        "nan_inf": np.array([nan, inf, -inf, 1.0], f32),
        "nan_fixed": np.array([nan, 1.5, -inf], f64),
        "all_nan": np.array([nan, nan], f32),
        "all_inf_zero": np.array([inf, 0.0, -inf], f32),
        "zeros": np.zeros(5, f32),
        "neg_zero_mixed": np.array([0.0, -0.0, 1.5], f32),
        "neg_zero_ints": np.array([-0.0, 3.0], f64),
        "mixed_magnitudes": np.array([1e-5, 1.0, 1e5], f32),
        "big_and_one": np.array([1e9, 1.0], f64),
        "ratio_1000": np.array([1.0, 1000.0], f32),
        "ratio_1001": np.array([1.0, 1001.0], f32),
        "ratio_1000_fixed": np.array([0.5, 500.0], f32),
        "ratio_1001_fixed": np.array([0.5, 500.5], f32),
        "max_1e8": np.array([1e8, 3e7], f64),
        "max_over_1e8": np.array([1.00000001e8, 3e7], f64),
        "min_1e-4": np.array([1e-4, 2e-4], f64),
        "min_below_1e-4": np.array([9.9e-5, 2e-4], f64),
        "min_1e-4_f32": np.array([1e-4, 2e-4], f32),
        "big_int_float": np.array([123456789.0], f32),
        "sci_with_nan_zero": np.array([1e-7, nan, 0.0, -inf, -3e3], f32),
        "sci_negative": -np.logspace(-8, 8, 9),
        "tiny_f64": np.array([1e-300, 1e300]),
        "subnormal_f32": np.array([1e-45, 1.0], f32),
        "float32_max": np.array([np.finfo(f32).max, 1.0], f32),
        "rounding_f32": np.array([1.00005, 2.00015, 0.99995], f32),
        # long rows that wrap
        "long_row_f32": rng.standard_normal(100).astype(f32) * 10,
        "long_row_f64": rng.uniform(-1000, 1000, 60),
        "long_row_int": rng.integers(-(10**6), 10**6, 90),
        "long_row_bool": rng.random(40) > 0.5,
        "long_row_sci": rng.standard_normal(40) * 1e6,
        "long_row_1000": np.arange(1000, dtype=f32) / 7,
        "wide_rows_2d": rng.standard_normal((3, 50)).astype(f32),
        "wide_rows_3d": rng.integers(0, 10**5, (2, 2, 40)),
        # 2-d and more
        "2d_f32": rng.standard_normal((4, 5)).astype(f32),
        "2d_int": np.arange(9, dtype=np.int64).reshape(3, 3) - 4,
        "2d_bool": np.array([[True, False], [False, True]]),
        "2d_eye": np.eye(3),
        "2d_one_row": np.array([[1.5, 2.5]], f32),
        "2d_one_col": np.array([[1.0], [-2.0], [3.0]], f32),
        "3d_f64": rng.standard_normal((2, 3, 4)),
        "3d_int": np.arange(8, dtype=np.int64).reshape(2, 2, 2),
        "3d_ints_as_floats": np.arange(24, dtype=f32).reshape(2, 3, 4),
        "4d": rng.standard_normal((2, 2, 2, 2)).astype(f32),
        "5d": np.arange(32, dtype=f32).reshape(2, 2, 2, 2, 2),
        "size1_dims": np.array([[[7.25]]], f32),
        # empty
        "empty_1d_f32": np.zeros(0, f32),
        "empty_1d_f64": np.zeros(0, f64),
        "empty_1d_int": np.zeros(0, np.int64),
        "empty_1d_bool": np.zeros(0, bool),
        "empty_0x3": np.zeros((0, 3), f32),
        "empty_2x0x4_int": np.zeros((2, 0, 4), np.int64),
        "empty_3x0_f64": np.zeros((3, 0), f64),
        "empty_bool_2d": np.zeros((0, 2), bool),
        # large: summarized with '...'
        "large_arange_f32": np.arange(2000, dtype=f32),
        "large_arange_int": np.arange(5000, dtype=np.int64),
        "large_1001": rng.standard_normal(1001).astype(f32),
        "large_2d": rng.standard_normal((40, 40)).astype(f32),
        "large_2d_f64": rng.standard_normal((10, 200)) * 1e5,
        "large_2d_int": rng.integers(-100, 100, (200, 10)),
        "large_short_rows": rng.standard_normal((400, 3)),
        "large_short_cols": rng.standard_normal((3, 400)).astype(f32),
        "large_3d": rng.standard_normal((10, 10, 11)).astype(f32),
        "large_4d": np.arange(7**4, dtype=f32).reshape(7, 7, 7, 7),
        "large_small_dims": rng.standard_normal((6, 6, 6, 6)).astype(f32),
        "large_bool": rng.random((30, 40)) > 0.5,
        "large_with_nan": np.where(rng.random(1500) > 0.9, np.nan, rng.random(1500)),
        "large_sci_hidden": np.concatenate([[1e-8], np.ones(1000), [2.0]]).astype(f32),
    }
    return list(cases.items())


CASES = _cases()


@pytest.mark.parametrize("name, arr", CASES, ids=[name for name, _ in CASES])
def test_matches_torch(torch, name, arr):
    assert torch.get_default_dtype() == torch.float32
    t = torch.tensor(arr)
    assert tensor_repr(arr, from_numpy_dtype(arr.dtype)) == repr(t)
    assert str(t) == repr(t)


FLOAT_CASES = [(name, arr) for name, arr in CASES if arr.dtype.kind == "f"]


@pytest.mark.parametrize("name, arr", FLOAT_CASES, ids=[name for name, _ in FLOAT_CASES])
def test_requires_grad_suffix_matches_torch(torch, name, arr):
    t = torch.tensor(arr, requires_grad=True)
    dtype = from_numpy_dtype(arr.dtype)
    assert tensor_repr(arr, dtype, ["requires_grad=True"]) == repr(t)

    y = t * 2
    expected = repr(y)
    assert "grad_fn=<MulBackward0>" in expected
    assert tensor_repr(y.detach().numpy(), dtype, ["grad_fn=<MulBackward0>"]) == expected


@pytest.mark.parametrize("n", range(1, 25))
def test_suffix_wrapping_matches_torch(torch, n):
    # lines ending close to the line width push the suffixes onto their own line
    values = np.arange(n, dtype=np.float64) + 0.5
    t = torch.tensor(values, requires_grad=True)
    assert tensor_repr(values, float64, ["requires_grad=True"]) == repr(t)
    y = t * 3
    assert tensor_repr(y.detach().numpy(), float64, ["grad_fn=<MulBackward0>"]) == repr(y)


def test_float64_data_cast_to_dtype(torch):
    values = np.array([0.1, 1 / 3, 2.00005])
    assert tensor_repr(values, float32) == repr(torch.tensor(values, dtype=torch.float32))
    assert tensor_repr(values, int64) == repr(torch.tensor(values).to(torch.int64))


def test_default_dtype_float64_matches_torch(torch):
    old_torch, old_jit = torch.get_default_dtype(), _dtype.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    _dtype.set_default_dtype(float64)
    try:
        for arr in (
            np.array([1.5, 2.0]),
            np.array([1.5, 2.0], np.float32),
            np.zeros((0, 2)),
            np.zeros(0, np.float32),
            np.array(3.0),
        ):
            expected = repr(torch.tensor(arr))
            assert tensor_repr(arr, from_numpy_dtype(arr.dtype)) == expected
    finally:
        torch.set_default_dtype(old_torch)
        _dtype.set_default_dtype(old_jit)
