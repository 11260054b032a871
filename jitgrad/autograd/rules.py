"""The differentiable reverse sweep (``create_graph=True``).

Each reached entry's derivative is evaluated with jitgrad ops, so it is recorded and can be
differentiated again, to any order. The derivative expressions are the ones declared in
:mod:`jitgrad.ops` (the same strings the Numba sweep is generated from), evaluated here in
a namespace where ``cos`` is :func:`jitgrad.cos`, ``matmul`` is :func:`jitgrad.matmul`, and
so on. Linear kinds apply their transpose kind as a recorded op.
"""
from __future__ import annotations

import math

import numpy as np

from .. import functions as F
from ..kernels.layout import E_C0, E_C1, E_IN0, E_META, E_OP, E_OUT
from ..ops.registry import (
    BY_NAME,
    CAST,
    ELEMENTWISE,
    GATHER,
    MATMUL,
    OPS,
    PLACE,
    REDUCE,
    RESTRIDE,
    SCATTER,
    selects,
)
from ..tensor import Tensor, _init


def _constant(mask: Tensor, like: Tensor) -> Tensor:
    return F.to_dtype(mask, like.dtype)


def _where(condition, if_true, if_false):
    if isinstance(condition, (bool, np.bool_)):
        return if_true if condition else if_false
    return F.where(condition, if_true, if_false)


def _positive(x: Tensor) -> Tensor:
    return _constant(x.detach() > 0, x)


def _in_range(x: Tensor, low: float, high: float) -> Tensor:
    v = x.detach()
    return _constant((v >= low) & (v <= high), x)


def _power(x, exponent):
    return x if exponent == 1.0 else F.pow(x, exponent)


def _floor_divide(a: Tensor, b: Tensor) -> Tensor:
    """torch's floor division (``kernels/expressions.floor_divide``) of the values: piecewise
    constant, so not recorded."""
    a, b = a.detach(), b.detach()
    m = F.fmod(a, b)
    q = (a - m) / b
    q = F.where((m != 0) & ((b < 0) != (m < 0)), q - 1.0, q)
    whole = F.floor(q)
    whole = F.where(q - whole > 0.5, whole + 1.0, whole)
    whole = F.where(q != 0, whole, (a / b) * 0.0)  # a zero with the quotient's sign
    return F.where(b == 0, a / b, whole)


def _log(v):
    if isinstance(v, float):  # a constant: -inf at 0 and nan below, without NumPy's warning
        return math.log(v) if v > 0.0 else (-math.inf if v == 0.0 else math.nan)
    return F.log(v)


NAMESPACE = {
    "exp": F.exp, "log": _log, "log1p": F.log1p, "expm1": F.expm1, "sqrt": F.sqrt,
    "sin": F.sin, "cos": F.cos, "tanh": F.tanh, "erf": F.erf, "atan": F.atan, "asin": F.asin,
    "acos": F.acos, "atan2": F.atan2, "fmod": F.fmod, "remainder": F.remainder,
    "hypot": F.hypot, "floor": lambda x: F.floor(x.detach()),
    "ceil": lambda x: F.ceil(x.detach()), "rint": lambda x: F.round(x.detach()),
    "trunc": lambda x: F.trunc(x.detach()), "floor_divide": _floor_divide,
    "sign": lambda x: F.sign(x.detach()), "positive": _positive, "in_range": _in_range,
    "where": _where, "power": _power, "matmul": F.matmul, "mT": lambda m: F.transpose(m, -2, -1),
}
_COMPILED = {}


def _evaluate(expression: str, env: dict):
    code = _COMPILED.get(expression)
    if code is None:
        code = _COMPILED[expression] = compile(expression, expression, "eval")
    return eval(code, NAMESPACE, env)  # noqa: S307 - expressions come from the op registry


def _node_tensor(tape, node: int) -> Tensor:
    """A tensor standing for an existing node, so ops on it extend the same graph."""
    leaf = tape.leaves.get(node)
    if leaf is not None:
        return leaf
    d = F.dt.float32 if tape.node_dtype(node) == 0 else F.dt.float64
    t = object.__new__(Tensor)
    _init(t, tape.node_view(node), None, d, tape.shapes[node])
    if tape.node_requires_grad(node):
        entry = tape.node_entry(node)
        t._requires_grad = True
        t._op = tape.entry_op(entry) if entry >= 0 else -1
    t._tape, t._gen, t._node = tape, tape.generation, node
    tape.add_ref(node)
    return t


def sum_to(t: Tensor, shape: tuple) -> Tensor:
    """Sum ``t`` over the dims along which ``shape`` was broadcast to ``t.shape``."""
    if tuple(t.shape) == tuple(shape):
        return t
    lead = t.ndim - len(shape)
    dims = tuple(range(lead)) + tuple(
        d + lead for d, s in enumerate(shape) if s == 1 and t.shape[d + lead] != 1)
    out = F.sum(t, dim=dims, keepdim=True) if dims else t
    return F.reshape(out, *shape)


def differentiable_sweep(tape, reached, roots, seeds, outputs, lowest: int = 0) -> dict:
    """Walk the graph's entries (from the roots' down to ``lowest``, the last one
    ``mark_reached`` found) and apply each one's differentiable rule."""
    adjoints: dict[int, Tensor] = {}
    top = -1
    for root, seed, output in zip(roots, seeds, outputs):
        g = seed if seed is not None else F.ones_like(output)
        root = int(root)
        adjoints[root] = g if root not in adjoints else adjoints[root] + g
        top = max(top, tape.node_entry(root))
    for e in range(top, lowest - 1, -1):
        row = tape.entry_fields(e)
        out = row[E_OUT]
        if not reached[out] or out not in adjoints:
            continue
        op = OPS[row[E_OP]]
        g = adjoints[out]
        c0, c1 = row[E_C0], row[E_C1]
        inputs = [row[E_IN0 + k] for k in range(op.arity)]
        for k, contribution in _vjp(tape, op, row, inputs, out, g, c0, c1):
            node = inputs[k]
            adjoints[node] = contribution if node not in adjoints else \
                adjoints[node] + contribution
    return adjoints


def _wants(tape, node: int) -> bool:
    return node >= 0 and tape.node_requires_grad(node)


def _meta(tape, row, count: int) -> list:
    offset = row[E_META]
    return list(tape.meta[offset:offset + count])


def _vjp(tape, op, row, inputs, out, g, c0, c1):
    """Yield (input index, adjoint contribution) for the entry's inputs that want one."""
    kind = op.kind
    if not any(_wants(tape, n) for n in inputs):
        return
    if kind == ELEMENTWISE:
        env = {"c0": c0, "c1": c1}
        for name, node in zip(op.inputs, inputs):
            if node >= 0:
                env[name] = _node_tensor(tape, node)
        if "y" in op.saves:
            env["y"] = _node_tensor(tape, out)
        for k, (node, partial) in enumerate(zip(inputs, op.partials)):
            if partial is None or not _wants(tape, node):
                continue
            local = _evaluate(partial, env)
            if selects(partial) and isinstance(local, Tensor):  # a mask: exactly 0 where it is
                contribution = F.where(local == 0.0, 0.0, g * local)
            else:
                contribution = g * local
            yield k, sum_to(contribution, tape.shapes[node])
    elif kind == REDUCE:
        x, keep, env = reduction_env(tape, op, row, inputs[0], out, c0, c1)
        g_full = F.expand(F.reshape(g, *keep), *x.shape)
        yield 0, g_full * _evaluate(op.partials[0], env)
    elif kind == MATMUL:
        batch, batch_a, batch_b, rows, inner, cols = _meta(tape, row, 6)
        a = F.reshape(_node_tensor(tape, inputs[0]), batch_a, rows, inner)
        b_dims = (cols, inner) if op.transposed_b else (inner, cols)
        b = F.reshape(_node_tensor(tape, inputs[1]), batch_b, *b_dims)
        env = {"a": a, "b": b, "g": F.reshape(g, batch, rows, cols)}
        for k, (node, vjp) in enumerate(zip(inputs, op.partials)):
            if _wants(tape, node):
                contribution = _evaluate(vjp, env)
                if k == 2:  # a bias row: its vjp is per row, summed over all of them
                    yield k, F.reshape(F.sum(contribution, dim=(0, 1)), *tape.shapes[node])
                    continue
                if contribution.shape[0] != (batch_a, batch_b)[k]:
                    contribution = F.sum(contribution, dim=0, keepdim=True)
                yield k, F.reshape(contribution, *tape.shapes[node])
    elif kind in (RESTRIDE, PLACE):
        ndim = tape.meta[row[E_META]]
        region = _meta(tape, row, 2 + 2 * ndim)
        x_shape = tape.shapes[inputs[0]]
        if kind == RESTRIDE:  # transpose of a strided read: add g back at the same strides
            yield 0, _place(g, x_shape, region)
        else:  # transpose of a placement: read g's region
            yield 0, _restride(g, region)
    elif kind in (GATHER, SCATTER):
        count = tape.meta[row[E_META]]
        index = np.array(_meta(tape, row, count + 1)[1:], np.int64)
        x_shape = tape.shapes[inputs[0]]
        if kind == GATHER:
            yield 0, _scatter(g, x_shape, index)
        else:
            yield 0, _take(g, index, x_shape)
    elif kind == CAST:
        yield 0, F.to_dtype(g, F.dt.float32 if tape.node_dtype(inputs[0]) == 0
                            else F.dt.float64)


def reduction_env(tape, op, row, source: int, out: int, c0: float, c1: float) -> tuple:
    """(x, the output's shape with the reduced dims kept as 1, the names of the partial
    with ``y`` and ``k`` spread over x's shape) of a reduction entry."""
    x = _node_tensor(tape, source)
    keep = _keep_shape(tape, row, x.shape)
    env = {"x": x, "n": c0, "c0": c0, "c1": c1}
    if "y" in op.saves:
        env["y"] = F.expand(F.reshape(_node_tensor(tape, out), *keep), *x.shape)
    if op.count is not None:  # k: the count summed over the reduced elements
        counted = _evaluate(op.count, env)
        if counted.dtype != x.dtype:  # where() of two floats is float32
            counted = F.to_dtype(counted, x.dtype)
        dims = tuple(d for d, size in enumerate(keep) if size == 1)
        if dims:
            counted = F.sum(counted, dim=dims, keepdim=True)
        env["k"] = F.expand(counted, *x.shape) if x.shape else counted
    return x, keep, env


def _keep_shape(tape, row, x_shape) -> tuple:
    ndim = tape.meta[row[E_META]]
    if ndim == 0:
        return (1,) * len(x_shape)
    strides = _meta(tape, row, 1 + 2 * ndim)[1 + ndim:]
    return tuple(1 if s == 0 else size for s, size in zip(strides, x_shape))


# -- the linear kinds as recorded ops ---------------------------------------------------------
def _linear_op(name: str, source: Tensor, out_shape: tuple, meta: list, forward) -> Tensor:
    """Record linear op ``name`` reading ``source``; ``forward(src, out)`` fills the output."""
    value = np.zeros(out_shape, source.dtype.numpy)
    forward(source._value(), value)
    if not F._recording(source):
        return Tensor._wrap(value, source.dtype)
    tape = F._state.tape
    tape.before_record()
    src = F.node_of(tape, source)
    node, slot = F._new_output_node(tape, source.dtype, out_shape)
    slot[...] = value
    code = BY_NAME[name].code
    tape.record(code, node, src, -1, -1, tape.add_meta(meta))
    return F._output(tape, slot, None, source.dtype, out_shape, node, code)


def _place(g: Tensor, x_shape: tuple, region: list) -> Tensor:
    from ..kernels.sweep import strided_add

    meta = np.array(region, np.int64)

    def forward(src, out):
        strided_add(out.reshape(-1), 0, np.asarray(src, order="C").reshape(-1), 0, meta, 0,
                    True)

    return _linear_op("place", g, tuple(x_shape), region, forward)


def _restride(g: Tensor, region: list) -> Tensor:
    from ..kernels.sweep import strided_add

    ndim = region[0]
    shape = tuple(region[1:1 + ndim])
    meta = np.array(region, np.int64)

    def forward(src, out):
        strided_add(out.reshape(-1), 0, np.asarray(src, order="C").reshape(-1), 0, meta, 0,
                    False)

    return _linear_op("alias", g, shape, region, forward)


def _scatter(g: Tensor, x_shape: tuple, index: np.ndarray) -> Tensor:
    def forward(src, out):
        np.add.at(out.reshape(-1), index, src.reshape(-1))

    return _linear_op("index_add", g, tuple(x_shape), [index.size, *index.tolist()], forward)


def _take(g: Tensor, index: np.ndarray, x_shape: tuple) -> Tensor:
    def forward(src, out):
        out.reshape(-1)[...] = src.reshape(-1)[index]

    return _linear_op("index", g, tuple(x_shape), [index.size, *index.tolist()], forward)
