"""The op-spec table: one entry per registered primitive.

Each spec says how to reach the op through the public API (``fn(lib, *inputs)`` works with
``lib`` = jitgrad and, where the op is public, ``lib`` = torch), which input shapes and
domain to use, and a NumPy reference for the forward. The generic tests in test_ops.py
run every check on every spec; test_every_op_has_a_spec fails when an op is added to the
registry without one.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class OpSpec:
    op: str                              # registry name of the primitive exercised
    fn: Callable                         # fn(lib, *tensors) -> tensor
    shapes: list                         # input shapes
    numpy: Callable | None = None        # reference forward on arrays
    low: float = -2.0                    # input domain
    high: float = 2.0
    torch: bool = True                   # the public API exists in torch too
    smooth: bool = True                  # finite differences are meaningful (no kinks hit)
    linear: bool = False                 # second derivative is zero
    finite_differences: bool = True      # differences of the output resolve the derivative
    integer_args: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.op


def _logsumexp(x, axis):
    m = np.max(x, axis=axis, keepdims=True)
    return np.squeeze(np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m, axis)


def _internal_place(lib, x):
    from jitgrad.autograd.rules import _place

    # place a (2, 3) block into a (4, 3) zero tensor at row 1
    return _place(x, (4, 3), [2, 2, 3, 3, 1, 3])


def _internal_alias(lib, x):
    from jitgrad.autograd.rules import _restride

    # read the (2, 2) block at rows 1-2, columns 0-1 of a (4, 3) tensor
    return _restride(x, [2, 2, 2, 3, 1, 3])


def _internal_scatter(lib, x):
    from jitgrad.autograd.rules import _scatter

    return _scatter(x, (5,), np.array([4, 0, 4, 2], np.int64))


SPECS = [
    # unary elementwise
    OpSpec("neg", lambda L, x: -x, [(3, 4)], np.negative, linear=True),
    OpSpec("exp", lambda L, x: L.exp(x), [(3, 4)], np.exp),
    OpSpec("log", lambda L, x: L.log(x), [(3, 4)], np.log, low=0.3, high=3.0),
    OpSpec("sqrt", lambda L, x: L.sqrt(x), [(3, 4)], np.sqrt, low=0.3, high=3.0),
    OpSpec("sin", lambda L, x: L.sin(x), [(3, 4)], np.sin),
    OpSpec("cos", lambda L, x: L.cos(x), [(3, 4)], np.cos),
    OpSpec("tan", lambda L, x: L.tan(x), [(3, 4)], np.tan, low=-1.2, high=1.2),
    OpSpec("tanh", lambda L, x: L.tanh(x), [(3, 4)], np.tanh),
    OpSpec("sigmoid", lambda L, x: L.sigmoid(x), [(3, 4)], lambda x: 1 / (1 + np.exp(-x))),
    OpSpec("relu", lambda L, x: L.relu(x), [(3, 4)], lambda x: np.maximum(x, 0)),
    OpSpec("abs", lambda L, x: L.abs(x), [(3, 4)], np.abs),
    OpSpec("log1p", lambda L, x: L.log1p(x), [(3, 4)], np.log1p, low=-0.6, high=2.0),
    OpSpec("expm1", lambda L, x: L.expm1(x), [(3, 4)], np.expm1),
    OpSpec("reciprocal", lambda L, x: L.reciprocal(x), [(3, 4)], np.reciprocal, low=0.4,
           high=2.0),
    OpSpec("erf", lambda L, x: L.erf(x), [(3, 4)],
           lambda x: np.vectorize(math.erf, otypes=[x.dtype])(x)),
    OpSpec("atan", lambda L, x: L.atan(x), [(3, 4)], np.arctan),
    OpSpec("asin", lambda L, x: L.asin(x), [(3, 4)], np.arcsin, low=-0.9, high=0.9),
    OpSpec("acos", lambda L, x: L.acos(x), [(3, 4)], np.arccos, low=-0.9, high=0.9),
    OpSpec("sign", lambda L, x: L.sign(x), [(3, 4)], np.sign, linear=True),
    OpSpec("floor", lambda L, x: L.floor(x), [(3, 4)], np.floor, linear=True),
    OpSpec("ceil", lambda L, x: x.ceil(), [(3, 4)], np.ceil, linear=True),
    OpSpec("round", lambda L, x: L.round(x * 2.0), [(3, 4)], lambda x: np.rint(x * 2.0),
           linear=True),
    OpSpec("trunc", lambda L, x: L.trunc(x), [(3, 4)], np.trunc, linear=True),
    OpSpec("frac", lambda L, x: L.frac(x), [(3, 4)], lambda x: x - np.trunc(x), linear=True),
    OpSpec("clone", lambda L, x: L.clone(x), [(3, 4)], np.copy, linear=True),
    OpSpec("clamp", lambda L, x: L.clamp(x, -0.7, 0.9), [(3, 4)],
           lambda x: np.clip(x, -0.7, 0.9)),
    # with a Python scalar
    OpSpec("add_scalar", lambda L, x: x + 1.5, [(3, 4)], lambda x: x + 1.5, linear=True),
    OpSpec("sub_scalar", lambda L, x: x - 1.5, [(3, 4)], lambda x: x - 1.5, linear=True),
    OpSpec("rsub_scalar", lambda L, x: 1.5 - x, [(3, 4)], lambda x: 1.5 - x, linear=True),
    OpSpec("mul_scalar", lambda L, x: x * 2.5, [(3, 4)], lambda x: x * 2.5, linear=True),
    OpSpec("div_scalar", lambda L, x: x / 2.5, [(3, 4)], lambda x: x / 2.5, linear=True),
    OpSpec("pow_scalar", lambda L, x: x ** 3, [(3, 4)], lambda x: x ** 3),
    OpSpec("rpow_scalar", lambda L, x: 2.0 ** x, [(3, 4)], lambda x: 2.0 ** x),
    # binary, with broadcasting
    OpSpec("add", lambda L, a, b: a + b, [(3, 4), (4,)], np.add, linear=True),
    OpSpec("sub", lambda L, a, b: a - b, [(3, 1), (1, 4)], np.subtract, linear=True),
    OpSpec("mul", lambda L, a, b: a * b, [(2, 3, 4), (3, 1)], np.multiply),
    OpSpec("div", lambda L, a, b: a / b, [(3, 4), (3, 4)], np.divide, low=0.5, high=2.0),
    OpSpec("pow", lambda L, a, b: a ** b, [(3, 4), (4,)], np.power, low=0.5, high=2.0),
    OpSpec("maximum", lambda L, a, b: L.maximum(a, b), [(3, 4), (3, 4)], np.maximum),
    OpSpec("atan2", lambda L, a, b: L.atan2(a, b), [(3, 4), (4,)], np.arctan2, low=0.5,
           high=2.0),
    OpSpec("minimum", lambda L, a, b: L.minimum(a, b), [(3, 4), (4,)], np.minimum),
    OpSpec("fmod", lambda L, a, b: L.fmod(a * 3.0 - 3.5, b), [(3, 4), (4,)],
           lambda a, b: np.fmod(a * 3.0 - 3.5, b), low=0.5, high=2.0),
    OpSpec("remainder", lambda L, a, b: L.remainder(a * 3.0 - 3.5, b), [(3, 4), (4,)],
           lambda a, b: np.remainder(a * 3.0 - 3.5, b), low=0.5, high=2.0),
    OpSpec("hypot", lambda L, a, b: L.hypot(a, b), [(3, 4), (4,)], np.hypot),
    OpSpec("where", lambda L, a, b: L.where(a > 0, a, b), [(3, 4), (4,)],
           lambda a, b: np.where(a > 0, a, b)),
    # reductions
    OpSpec("sum", lambda L, x: x.sum(), [(3, 4)], np.sum, linear=True),
    OpSpec("sum_dim", lambda L, x: x.sum(dim=(0, 2), keepdim=True), [(2, 3, 4)],
           lambda x: np.sum(x, axis=(0, 2), keepdims=True), linear=True),
    OpSpec("mean", lambda L, x: x.mean(), [(3, 4)], np.mean, linear=True),
    OpSpec("mean_dim", lambda L, x: x.mean(1), [(3, 4)], lambda x: np.mean(x, 1),
           linear=True),
    OpSpec("prod", lambda L, x: x.prod(), [(2, 3)], np.prod, low=0.5, high=1.5),
    OpSpec("prod_dim", lambda L, x: x.prod(0), [(3, 4)], lambda x: np.prod(x, 0), low=0.5,
           high=1.5),
    OpSpec("logsumexp", lambda L, x: L.logsumexp(x, 1), [(3, 4)], lambda x: _logsumexp(x, 1)),
    OpSpec("norm", lambda L, x: x.norm(), [(3, 4)], np.linalg.norm),
    # views and data movement
    OpSpec("view", lambda L, x: x.reshape(6, 2), [(3, 4)], lambda x: x.reshape(6, 2),
           linear=True),
    OpSpec("slice", lambda L, x: x[1:, ::2], [(3, 4)], lambda x: x[1:, ::2], linear=True),
    OpSpec("select", lambda L, x: x[1], [(3, 4)], lambda x: x[1], linear=True),
    OpSpec("t", lambda L, x: x.t(), [(3, 4)], np.transpose, linear=True),
    OpSpec("transpose", lambda L, x: x.transpose(0, 2), [(2, 3, 4)],
           lambda x: np.swapaxes(x, 0, 2), linear=True),
    OpSpec("permute", lambda L, x: x.permute(2, 0, 1), [(2, 3, 4)],
           lambda x: np.transpose(x, (2, 0, 1)), linear=True),
    OpSpec("expand", lambda L, x: x.expand(2, 3, 4), [(3, 1)],
           lambda x: np.broadcast_to(x, (2, 3, 4)), linear=True),
    OpSpec("squeeze", lambda L, x: x.squeeze(), [(3, 1, 4)], np.squeeze, linear=True),
    OpSpec("squeeze_dim", lambda L, x: x.squeeze(1), [(3, 1, 4)],
           lambda x: np.squeeze(x, 1), linear=True),
    OpSpec("unsqueeze", lambda L, x: x.unsqueeze(1), [(3, 4)],
           lambda x: np.expand_dims(x, 1), linear=True),
    OpSpec("alias", _internal_alias, [(4, 3)], lambda x: x[1:3, 0:2], torch=False,
           linear=True),
    OpSpec("cat", lambda L, a, b: L.cat([a, b], 1), [(3, 2), (3, 4)],
           lambda a, b: np.concatenate([a, b], 1), linear=True),
    OpSpec("stack", lambda L, a, b: L.stack([a, b], 1), [(3, 4), (3, 4)],
           lambda a, b: np.stack([a, b], 1), linear=True),
    OpSpec("place", _internal_place, [(2, 3)],
           lambda x: np.concatenate([np.zeros((1, 3)), x, np.zeros((1, 3))]), torch=False,
           linear=True),
    OpSpec("index", lambda L, x: x[[0, 2, 2], 1:], [(3, 4)], lambda x: x[[0, 2, 2], 1:],
           linear=True),
    OpSpec("max_dim", lambda L, x: x.max(1).values, [(3, 4)], lambda x: np.max(x, 1),
           linear=True),
    OpSpec("min_dim", lambda L, x: x.min(0, keepdim=True).values, [(3, 4)],
           lambda x: np.min(x, 0, keepdims=True), linear=True),
    OpSpec("max_all", lambda L, x: x.max(), [(3, 4)], np.max, linear=True),
    OpSpec("min_all", lambda L, x: x.min(), [(3, 4)], np.min, linear=True),
    OpSpec("amax", lambda L, x: L.amax(x, (0, 2), keepdim=True), [(2, 3, 4)],
           lambda x: np.max(x, axis=(0, 2), keepdims=True), linear=True),
    OpSpec("amin", lambda L, x: x.amin(1), [(3, 4)], lambda x: np.min(x, 1), linear=True),
    OpSpec("index_add", _internal_scatter, [(4,)],
           lambda x: np.array([x[1], 0, x[3], 0, x[0] + x[2]]), torch=False, linear=True),
    OpSpec("to_dtype", lambda L, x: x.double() * x.float().double(), [(3, 4)],
           lambda x: x.astype(np.float64) * x.astype(np.float32).astype(np.float64),
           finite_differences=False),
    # matrix products
    OpSpec("dot", lambda L, a, b: L.dot(a, b), [(5,), (5,)], np.dot),
    OpSpec("mv", lambda L, a, b: L.mv(a, b), [(3, 4), (4,)], np.dot),
    OpSpec("mm", lambda L, a, b: a @ b, [(3, 4), (4, 2)], np.matmul),
    OpSpec("bmm", lambda L, a, b: L.bmm(a, b), [(2, 3, 4), (2, 4, 2)], np.matmul),
    OpSpec("matmul", lambda L, a, b: a @ b, [(2, 3, 4), (4, 2)], np.matmul),
    # a linear layer's product: the weight (out, in) is read in place; rows from every
    # leading dim of the input
    OpSpec("linear", lambda L, a, w: L.nn.functional.linear(a, w), [(2, 3, 4), (5, 4)],
           lambda a, w: a @ w.T),
    OpSpec("linear_bias", lambda L, a, w, c: L.nn.functional.linear(a, w, c),
           [(2, 3, 4), (5, 4), (5,)], lambda a, w, c: a @ w.T + c),
]

BY_OP = {spec.op: spec for spec in SPECS}


def inputs_for(spec: OpSpec, seed: int = 0, dtype=np.float64) -> list:
    """Random inputs in the spec's domain, away from kinks and ties."""
    rng = np.random.default_rng(seed)
    arrays = []
    for shape in spec.shapes:
        values = rng.uniform(spec.low, spec.high, size=shape)
        if not spec.smooth or spec.op in ("relu", "abs", "clamp", "maximum", "minimum",
                                          "where", "max_all", "min_all", "max_dim", "min_dim",
                                          "amax", "amin"):
            # keep clear of 0, of the clamp bounds and of ties between operands
            values = np.where(np.abs(values) < 0.1, values + 0.3, values)
            values = values + rng.uniform(0, 1e-3, size=shape) * np.arange(values.size).reshape(
                shape)
        arrays.append(values.astype(dtype))
    return arrays
