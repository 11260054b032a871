"""Elementwise primitives: forward expression and one local derivative per input.

The derivative expressions read like DiffRules: ``d sin(x)/dx = cos(x)``. ``y`` is the
op's output, so rules such as ``exp`` reuse the forward value instead of recomputing it.
"""
from .registry import elementwise as op

# unary
op("neg", "NegBackward0", ("x",), "-1.0", "-x")
op("exp", "ExpBackward0", ("x",), "y", "exp(x)")
op("log", "LogBackward0", ("x",), "1.0 / x", "log(x)")
op("sqrt", "SqrtBackward0", ("x",), "0.5 / y", "sqrt(x)")
op("sin", "SinBackward0", ("x",), "cos(x)", "sin(x)")
op("cos", "CosBackward0", ("x",), "-sin(x)", "cos(x)")
op("tan", "TanBackward0", ("x",), "1.0 + y * y", "sin(x) / cos(x)")
op("tanh", "TanhBackward0", ("x",), "1.0 - y * y", "tanh(x)")
op("sigmoid", "SigmoidBackward0", ("x",), "y * (1.0 - y)", "1.0 / (1.0 + exp(-x))")
# relu's derivative is 0 where the output is <= 0 and 1 elsewhere, a nan included, as torch
op("relu", "ReluBackward0", ("x",), "where(y <= 0.0, 0.0, 1.0)",
   "where(x <= 0.0, 0.0, x)")  # nan stays nan
op("abs", "AbsBackward0", ("x",), "sign(x)", "where(x < 0.0, -x, x)")  # sign(nan) is 0
op("log1p", "Log1PBackward0", ("x",), "1.0 / (1.0 + x)", "log1p(x)")
op("expm1", "Expm1Backward0", ("x",), "y + 1.0", "expm1(x)")
op("reciprocal", "ReciprocalBackward0", ("x",), "-(y * y)", "1.0 / x")
op("clone", "CloneBackward0", ("x",), "1.0", "x")
# clamp: c0 = min, c1 = max (+-inf when absent); the gradient passes where min <= x <= max
op("clamp", "ClampBackward1", ("x",), "in_range(x, c0, c1)",
   "where(x < c0, c0, where(x > c1, c1, x))")
# erf's derivative is 2/sqrt(pi) * exp(-x^2); the inverse trigonometric functions are
# libm's (asin and acos leave their domain with nan, as torch)
op("erf", "ErfBackward0", ("x",), "1.1283791670955126 * exp(-(x * x))", "erf(x)")
op("atan", "AtanBackward0", ("x",), "1.0 / (1.0 + x * x)", "atan(x)")
op("asin", "AsinBackward0", ("x",), "1.0 / sqrt(1.0 - x * x)", "asin(x)")
op("acos", "AcosBackward0", ("x",), "-1.0 / sqrt(1.0 - x * x)", "acos(x)")
# piecewise constant: derivative 0 (also at the jumps, as torch); round is half to even
op("sign", "SignBackward0", ("x",), "0.0", "sign(x)")
op("floor", "FloorBackward0", ("x",), "0.0", "floor(x)")
op("ceil", "CeilBackward0", ("x",), "0.0", "ceil(x)")
op("round", "RoundBackward0", ("x",), "0.0", "rint(x)")
op("trunc", "TruncBackward0", ("x",), "0.0", "trunc(x)")
op("frac", "FracBackward0", ("x",), "1.0", "x - trunc(x)")

# a tensor with a Python scalar c0
op("add_scalar", "AddBackward0", ("x",), "1.0", "x + c0")
op("sub_scalar", "SubBackward0", ("x",), "1.0", "x - c0")
op("rsub_scalar", "RsubBackward1", ("x",), "-1.0", "c0 - x")
op("mul_scalar", "MulBackward0", ("x",), "c0", "x * c0")
op("div_scalar", "DivBackward0", ("x",), "1.0 / c0", "x / c0")
# x ** 0 has derivative 0 everywhere, also at x = 0 where c0 * x ** -1 would be nan
op("pow_scalar", "PowBackward0", ("x",), "where(c0 == 0.0, 0.0, c0 * power(x, c0 - 1.0))",
   "x ** c0")
# 0 ** x for x >= 0 has derivative 0 (y * log(0) would be nan or -inf), as torch
op("rpow_scalar", "PowBackward2", ("x",),
   "where(c0 == 0.0, where(x >= 0.0, 0.0, y * log(c0)), y * log(c0))", "c0 ** x")

# binary, broadcasting
op("add", "AddBackward0", ("a", "b"), ("1.0", "1.0"), "a + b")
op("sub", "SubBackward0", ("a", "b"), ("1.0", "-1.0"), "a - b")
op("mul", "MulBackward0", ("a", "b"), ("b", "a"), "a * b")
op("div", "DivBackward0", ("a", "b"), ("1.0 / b", "-a / (b * b)"), "a / b")
op("pow", "PowBackward1", ("a", "b"),
   ("where(b == 0.0, 0.0, b * a ** (b - 1.0))",
    "where((a == 0.0) & (b >= 0.0), 0.0, y * log(a))"), "a ** b")
# ties split the gradient evenly between the two inputs, as torch does; where a nan makes
# them unordered, both inputs get all of it (torch's masks are "<" and ">", not ">=")
op("maximum", "MaximumBackward0", ("a", "b"),
   ("where(a == b, 0.5, where(a < b, 0.0, 1.0))", "where(a == b, 0.5, where(a > b, 0.0, 1.0))"),
   "where((a > b) | (a != a), a, b)")  # a nan operand wins, as in torch
op("minimum", "MinimumBackward0", ("a", "b"),
   ("where(a == b, 0.5, where(a > b, 0.0, 1.0))", "where(a == b, 0.5, where(a < b, 0.0, 1.0))"),
   "where((a < b) | (a != a), a, b)")
# at the origin (a squared radius of 0) both derivatives are 0, as torch's
op("atan2", "Atan2Backward0", ("a", "b"),
   ("b * where(a * a + b * b == 0.0, 0.0, 1.0 / (a * a + b * b))",
    "-a * where(a * a + b * b == 0.0, 0.0, 1.0 / (a * a + b * b))"), "atan2(a, b)")
# fmod's result has the sign of a, remainder's that of b (Python's %); the integer part of
# the quotient is piecewise constant (floor_divide: torch's, exact at infinite divisors).
# grad_fn names are a tensor divisor's; a Python number's are ...Backward0 (functions.fmod,
# functions.remainder). hypot's derivatives are nan at the origin, as torch's
op("fmod", "FmodBackward1", ("a", "b"), ("1.0", "-trunc(a / b)"), "fmod(a, b)")
op("remainder", "RemainderBackward1", ("a", "b"), ("1.0", "-floor_divide(a, b)"),
   "remainder(a, b)")
op("hypot", "HypotBackward0", ("a", "b"), ("a / y", "b / y"), "hypot(a, b)")
# cond is stored as 0.0/1.0 in the op's float type; it is not differentiable
op("where", "WhereBackward0", ("a", "b", "cond"), ("cond", "1.0 - cond", None),
   "where(cond != 0.0, a, b)")
