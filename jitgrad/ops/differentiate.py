"""Symbolic derivatives of the derivative-expression language (see ``registry.py``).

The second-order sweep (``jitgrad/kernels/generate_hvp.py``) needs, for each declared
partial ``P``, its directional derivative ``dP``: how ``P`` moves when its operands move
along their tangents. Writing those by hand would be a second place where an op's derivative
math lives, so they are derived here from the declared strings.

:func:`tangent` maps an expression to its tangent: every name in ``tangents`` moves with the
tangent named there, every other name (``c0``, ``n``, ``cond``...) is a constant. The result
is simplified only trivially (zeros dropped, ones and constants folded) so generated code
stays readable. Piecewise-constant functions (``sign``, ``positive``, ``in_range``, and
comparisons) have derivative zero; ``where`` passes the tangent of the branch it picks.
Powers follow the declarations' own convention that ``u ** 0`` has derivative zero
everywhere (also at ``u = 0``, where ``0 * u ** -1`` would be nan), and the exponent's
derivative ``u ** e * log(u)`` is zero where ``u == 0`` and ``e >= 0``, as ``pow``'s
declared partial for its exponent is.

>>> tangent("cos(x)", {"x": "dx"})
'-(sin(x) * dx)'
>>> tangent("a / b", {"a": "da", "b": "db"})
'da / b - a * db / (b * b)'
>>> tangent("matmul(g, mT(b))", {"g": "dg", "b": "db"})
'matmul(dg, mT(b)) + matmul(g, mT(db))'
>>> tangent("in_range(x, c0, c1)", {"x": "dx"})
'0.0'
"""
from __future__ import annotations

import ast

from .registry import EXPRESSION_FUNCTIONS

# functions of zero derivative almost everywhere (also read by the HVP generator)
PIECEWISE_CONSTANT = ("sign", "positive", "in_range", "floor", "ceil", "rint", "trunc",
                      "floor_divide")


# -- building simplified expressions (None stands for zero) -----------------------------------
def _number(node: ast.expr | None) -> float | None:
    """The value of a numeric constant (also ``-1.0``, parsed as a negation), else None."""
    if node is None:
        return 0.0
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
            and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _number(node.operand)
        return None if inner is None else -inner
    return None


def _constant(value: float) -> ast.expr | None:
    if value == 0.0:
        return None
    if value < 0:
        return ast.UnaryOp(ast.USub(), ast.Constant(-value))
    return ast.Constant(value)


def _neg(u: ast.expr | None) -> ast.expr | None:
    value = _number(u)
    if value is not None:
        return _constant(-value)
    if isinstance(u, ast.UnaryOp) and isinstance(u.op, ast.USub):
        return u.operand
    return ast.UnaryOp(ast.USub(), u)


def _add(u: ast.expr | None, v: ast.expr | None) -> ast.expr | None:
    if u is None:
        return v
    if v is None:
        return u
    if _number(u) is not None and _number(v) is not None:
        return _constant(_number(u) + _number(v))
    if (_number(v) is not None and isinstance(u, ast.BinOp)
            and isinstance(u.op, (ast.Add, ast.Sub)) and _number(u.right) is not None):
        # (w - 1.0) - 1.0 is w - 2.0
        sign = 1.0 if isinstance(u.op, ast.Add) else -1.0
        return _add(u.left, _constant(sign * _number(u.right) + _number(v)))
    if isinstance(v, ast.UnaryOp) and isinstance(v.op, ast.USub):
        return ast.BinOp(u, ast.Sub(), v.operand)
    return ast.BinOp(u, ast.Add(), v)


def _sub(u: ast.expr | None, v: ast.expr | None) -> ast.expr | None:
    return _add(u, _neg(v))


def _mul(u: ast.expr | None, v: ast.expr | None) -> ast.expr | None:
    if u is None or v is None:
        return None
    a, b = _number(u), _number(v)
    if a is not None and b is not None:
        return _constant(a * b)
    for constant, other in ((a, v), (b, u)):
        if constant == 1.0:
            return other
        if constant == -1.0:
            return _neg(other)
    # a negation moves out of the product, where the simplifications can see it
    if isinstance(u, ast.UnaryOp) and isinstance(u.op, ast.USub) and a is None:
        return _neg(_mul(u.operand, v))
    if isinstance(v, ast.UnaryOp) and isinstance(v.op, ast.USub) and b is None:
        return _neg(_mul(u, v.operand))
    return ast.BinOp(u, ast.Mult(), v)


def _div(u: ast.expr | None, v: ast.expr) -> ast.expr | None:
    if u is None:
        return None
    if _number(v) == 1.0:
        return u
    if isinstance(u, ast.UnaryOp) and isinstance(u.op, ast.USub) and _number(u) is None:
        return _neg(_div(u.operand, v))
    return ast.BinOp(u, ast.Div(), v)


def _call(function: str, *args: ast.expr) -> ast.expr:
    return ast.Call(ast.Name(function, ast.Load()), list(args), [])


def _zero_or(u: ast.expr | None) -> ast.expr:
    return u if u is not None else ast.Constant(0.0)


def _where(condition: ast.expr, if_true: ast.expr | None,
           if_false: ast.expr | None) -> ast.expr | None:
    if if_true is None and if_false is None:
        return None
    return _call("where", condition, _zero_or(if_true), _zero_or(if_false))


def _compare(left: ast.expr, op: ast.cmpop, right: ast.expr) -> ast.expr:
    return ast.Compare(left, [op], [right])


# -- the derivative rules -----------------------------------------------------------------------
def _power_base(base: ast.expr, exponent: ast.expr, dbase, power) -> ast.expr | None:
    """d(base ** exponent) along the base: ``exponent * base ** (exponent - 1)``, zero where
    the exponent is 0."""
    if dbase is None:
        return None
    e = _number(exponent)
    if e == 0.0:
        return None
    lowered = _sub(exponent, ast.Constant(1.0))
    slope = _mul(exponent, power(base, _zero_or(lowered)))
    if e is None:
        slope = _where(_compare(exponent, ast.Eq(), ast.Constant(0.0)), None, slope)
    return _mul(slope, dbase)


def _power_exponent(base: ast.expr, exponent: ast.expr, dexponent, power) -> ast.expr | None:
    """d(base ** exponent) along the exponent: ``base ** exponent * log(base)``, zero where
    the base is 0 and the exponent >= 0."""
    if dexponent is None:
        return None
    at_zero = ast.BinOp(_compare(base, ast.Eq(), ast.Constant(0.0)), ast.BitAnd(),
                        _compare(exponent, ast.GtE(), ast.Constant(0.0)))
    slope = _where(at_zero, None, _mul(power(base, exponent), _call("log", base)))
    return _mul(slope, dexponent)


def _operator_power(base: ast.expr, exponent: ast.expr) -> ast.expr:
    return ast.BinOp(base, ast.Pow(), exponent)


def _function_power(base: ast.expr, exponent: ast.expr) -> ast.expr:
    return _call("power", base, exponent)


def _unary_slope(function: str, u: ast.expr) -> ast.expr:
    """d function(u) / du."""
    if function in ("exp", "expm1"):
        return _call("exp", u)
    if function == "log":
        return ast.BinOp(ast.Constant(1.0), ast.Div(), u)
    if function == "log1p":
        return ast.BinOp(ast.Constant(1.0), ast.Div(), ast.BinOp(ast.Constant(1.0), ast.Add(), u))
    if function == "sqrt":
        return ast.BinOp(ast.Constant(0.5), ast.Div(), _call("sqrt", u))
    if function == "sin":
        return _call("cos", u)
    if function == "cos":
        return _neg(_call("sin", u))
    if function == "tanh":
        t = _call("tanh", u)
        return ast.BinOp(ast.Constant(1.0), ast.Sub(), ast.BinOp(t, ast.Mult(), t))
    raise ValueError(f"no derivative rule for {function!r}")


def _tangent(node: ast.expr, tangents: dict[str, str]) -> ast.expr | None:
    if isinstance(node, ast.Constant):
        return None
    if isinstance(node, ast.Name):
        name = tangents.get(node.id)
        return ast.Name(name, ast.Load()) if name is not None else None
    if isinstance(node, ast.UnaryOp):
        if isinstance(node.op, ast.USub):
            return _neg(_tangent(node.operand, tangents))
        if isinstance(node.op, ast.UAdd):
            return _tangent(node.operand, tangents)
        if isinstance(node.op, ast.Not):
            return None
    if isinstance(node, ast.Compare):
        return None  # piecewise constant
    if isinstance(node, ast.BinOp):
        u, v = node.left, node.right
        if isinstance(node.op, (ast.BitAnd, ast.BitOr)):  # of comparisons
            return None
        du, dv = _tangent(u, tangents), _tangent(v, tangents)
        if isinstance(node.op, ast.Add):
            return _add(du, dv)
        if isinstance(node.op, ast.Sub):
            return _sub(du, dv)
        if isinstance(node.op, ast.Mult):
            return _add(_mul(du, v), _mul(u, dv))
        if isinstance(node.op, ast.Div):
            return _sub(_div(du, v), _div(_mul(u, dv), ast.BinOp(v, ast.Mult(), v)))
        if isinstance(node.op, ast.Pow):
            return _add(_power_base(u, v, du, _operator_power),
                        _power_exponent(u, v, dv, _operator_power))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        function, args = node.func.id, node.args
        if function not in EXPRESSION_FUNCTIONS:
            raise ValueError(f"unknown function {function!r}")
        if function in PIECEWISE_CONSTANT:
            return None
        if function == "where":
            condition, if_true, if_false = args
            return _where(condition, _tangent(if_true, tangents), _tangent(if_false, tangents))
        if function == "power":
            base, exponent = args
            return _add(_power_base(base, exponent, _tangent(base, tangents), _function_power),
                        _power_exponent(base, exponent, _tangent(exponent, tangents),
                                        _function_power))
        if function == "matmul":  # bilinear
            p, q = args
            dp, dq = _tangent(p, tangents), _tangent(q, tangents)
            return _add(None if dp is None else _call("matmul", dp, q),
                        None if dq is None else _call("matmul", p, dq))
        if function == "mT":  # linear
            dp = _tangent(args[0], tangents)
            return None if dp is None else _call("mT", dp)
        (u,) = args
        return _mul(_unary_slope(function, u), _tangent(u, tangents))
    raise ValueError(f"no derivative rule for {ast.unparse(node)!r}")


def tangent(expression: str, tangents: dict[str, str]) -> str:
    """The directional derivative of ``expression`` when each name ``k`` of ``tangents``
    moves with the tangent named ``tangents[k]`` (``'0.0'`` when it does not move).

    Raises ValueError for a construct the language does not define a derivative for.

    >>> tangent("where(c0 == 0.0, 0.0, c0 * power(x, c0 - 1.0))", {"x": "dx"})  # doctest: +ELLIPSIS
    'where(c0 == 0.0, 0.0, c0 * (where(c0 - 1.0 == 0.0, 0.0, (c0 - 1.0) * power(x, c0 - 2.0)) ...'
    >>> tangent("1.0 - y * y", {"y": "dy"})
    '-(dy * y + y * dy)'
    """
    tree = ast.parse(expression, mode="eval").body
    result = _tangent(tree, tangents)
    return ast.unparse(_zero_or(result))


def substitute(expression: str, pattern: str, name: str) -> str:
    """``expression`` with every occurrence of the sub-expression ``pattern`` replaced by
    ``name`` (e.g. an op's forward expression by its output ``y``, already computed).

    >>> substitute("-(sin(x) * dx)", "sin(x)", "y")
    '-(y * dx)'
    """
    target = ast.dump(ast.parse(pattern, mode="eval").body)

    class Replace(ast.NodeTransformer):
        def visit(self, node):
            if isinstance(node, ast.expr) and ast.dump(node) == target:
                return ast.Name(name, ast.Load())
            return super().visit(node)

    tree = Replace().visit(ast.parse(expression, mode="eval").body)
    return ast.unparse(tree)
