"""The op registry: every primitive is declared once, here and in the family modules.

A declaration (:class:`OpDef`) names the op, the torch ``grad_fn`` it shows, its kind and,
for the kinds that have them, its derivative: one expression per differentiable input in a
tiny expression language (Python syntax; names ``x``/``a``/``b``/``cond`` for inputs, ``y``
for the output, ``g`` for the incoming adjoint, ``c0``/``c1`` for float attributes, ``n``
for a reduction's element count, ``k`` for a reduction's count: the sum over the reduced
elements of the op's ``count`` expression, e.g. the number of ties at the maximum). The same
string is

* turned into Numba source for the reverse sweep (``jitgrad/kernels/generate.py``),
* evaluated with jitgrad Tensors for ``create_graph=True`` (``jitgrad/autograd/rules.py``),

so an op's derivative math is written in exactly one place. Linear ops (views, gathers,
concatenation) carry no expression: their adjoint is their transpose, another linear kind
executed by the same Numba helpers (``restride`` <-> ``place``, ``gather`` <-> ``scatter``).
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field

# kinds of primitive; the Numba sweep dispatches on the kind, then on the op
ELEMENTWISE = 0   # y = f(inputs) per element, with broadcasting
REDUCE = 1        # y = reduce(x) over some dims; derivative = broadcast(g) * partial
RESTRIDE = 2      # y = strided view of x, materialized (slices, transposes, expand, reshape)
PLACE = 3         # y[strided region] += x (concatenation; transpose of RESTRIDE)
GATHER = 4        # y[i] = x[index[i]] (advanced indexing, max along a dim)
SCATTER = 5       # y[index[i]] += x[i] (transpose of GATHER)
MATMUL = 6        # batched matrix product
CAST = 7          # dtype conversion between float32 and float64
PYTHON = 8        # a custom autograd.Function: the sweeps stop and call back into Python

KIND_NAMES = {ELEMENTWISE: "elementwise", REDUCE: "reduce", RESTRIDE: "restride",
              PLACE: "place", GATHER: "gather", SCATTER: "scatter", MATMUL: "matmul",
              CAST: "cast", PYTHON: "python"}

# functions allowed in derivative expressions; each has a Numba and a Tensor meaning
EXPRESSION_FUNCTIONS = ("exp", "log", "log1p", "expm1", "sqrt", "sin", "cos", "tanh", "sign",
                        "positive", "erf", "atan", "asin", "acos", "atan2", "floor",
                        "ceil", "rint", "trunc", "fmod", "remainder", "hypot",
                        "floor_divide",
                        "in_range", "where", "power", "matmul", "mT")
EXPRESSION_NAMES = ("x", "a", "b", "cond", "y", "g", "c0", "c1", "n", "k")


@dataclass(eq=False)
class OpDef:
    """One primitive op. ``partials[k]`` is d(output)/d(input k) for elementwise and
    reduce kinds, the vector-Jacobian product for matmul, ``None`` for an input that is
    not differentiable."""

    name: str
    grad_fn: str
    kind: int
    inputs: tuple[str, ...] = ("x",)
    partials: tuple[str | None, ...] = ()
    forward: str | None = None        # scalar forward expression (elementwise only)
    code: int = -1                    # opcode, assigned at registration
    saves: frozenset = field(default_factory=frozenset)  # names whose values the rule reads
    # matmul kind: the second operand is stored as (cols, inner), y = a @ mT(b) (a linear
    # layer's weight, read in place instead of copied out transposed); its partials are
    # written for that layout
    transposed_b: bool = False
    # reduce kind: an expression of ``x`` and ``y`` whose sum over the elements reduced into
    # an output is that output's ``k`` in the partial (recomputed by every kernel from the
    # values, so a compiled replay sees the new ties)
    count: str | None = None

    @property
    def b_dims(self) -> str:
        """The matmul kind's second operand's matrix dims, as the kernels name them."""
        return "cols, inner" if self.transposed_b else "inner, cols"

    @property
    def arity(self) -> int:
        return len(self.inputs)

    def saves_mask(self) -> int:
        """Bit k set: input k's value is read by the derivative; bit 3: the output's."""
        mask = 0
        for k, name in enumerate(self.inputs):
            if name in self.saves:
                mask |= 1 << k
        if "y" in self.saves:
            mask |= 1 << 3
        return mask

    def sweep_mask(self) -> int:
        """``saves_mask`` plus, at bit 4 + k, whether a reverse step that sees operands of
        the output's shape writes every element of input k's adjoint exactly once (so the
        sweep may let it assign on its first write instead of clearing first)."""
        mask = self.saves_mask()
        if self.kind == ELEMENTWISE:
            for k, partial in enumerate(self.partials):
                if partial is not None:
                    mask |= 1 << (4 + k)
        elif self.kind in (REDUCE, CAST):
            mask |= 1 << 4
        return mask


OPS: list[OpDef] = []
BY_NAME: dict[str, OpDef] = {}


def _names_in(expression: str) -> set[str]:
    tree = ast.parse(expression, mode="eval")
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if node.id not in EXPRESSION_NAMES and node.id not in EXPRESSION_FUNCTIONS:
                raise ValueError(f"unknown name {node.id!r} in derivative {expression!r}")
            found.add(node.id)
    return found


def selects(partial: str) -> bool:
    """Whether a partial is a selection: ``in_range()``, ``positive()``, the where op's
    condition, or a ``where()`` whose every branch is a number (relu's, maximum's); its
    adjoint product is masked (:func:`adjoint_product`). A ``where()`` choosing between
    expressions (pow's) is a product, as torch's.

    >>> selects("where(y <= 0.0, 0.0, 1.0)"), selects("where(c0 == 0.0, 0.0, c0 * x)")
    (True, False)
    """
    if partial in ("cond", "1.0 - cond"):
        return True
    node = ast.parse(partial, mode="eval").body
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        return False
    if node.func.id in ("in_range", "positive"):
        return True

    def numbers(branch) -> bool:
        if isinstance(branch, ast.Constant):
            return isinstance(branch.value, float)
        return (isinstance(branch, ast.Call) and isinstance(branch.func, ast.Name)
                and branch.func.id == "where" and all(numbers(b) for b in branch.args[1:]))

    return numbers(node)


def adjoint_product(g: str, partial: str) -> str:
    """``g * partial`` as the reverse steps compute it. A selection gives exactly 0 where it
    is 0, even where ``g`` is inf or nan (``sqrt(relu(x))`` at x <= 0: the inf derivative of
    sqrt(0) does not reach x), as torch's threshold, where and clamp backwards mask.

    >>> adjoint_product("g", "y")
    'g * (y)'
    >>> adjoint_product("g", "in_range(x, c0, c1)")
    'where((in_range(x, c0, c1)) == 0.0, 0.0, g * (in_range(x, c0, c1)))'
    """
    if selects(partial):
        return f"where(({partial}) == 0.0, 0.0, {g} * ({partial}))"
    return f"{g} * ({partial})"


def register(op: OpDef) -> OpDef:
    if op.name in BY_NAME:
        raise ValueError(f"op {op.name!r} registered twice")
    saves = set()
    for partial in (*op.partials, op.count):
        if partial is not None:
            saves |= _names_in(partial)
    if op.forward is not None:
        _names_in(op.forward)
    op.saves = frozenset(saves & (set(op.inputs) | {"y"}))
    op.code = len(OPS)
    OPS.append(op)
    BY_NAME[op.name] = op
    return op


def elementwise(name: str, grad_fn: str, inputs: tuple[str, ...], partials, forward: str):
    if isinstance(partials, str):
        partials = (partials,)
    return register(OpDef(name, grad_fn, ELEMENTWISE, tuple(inputs), tuple(partials), forward))


def reduction(name: str, grad_fn: str, partial: str, count: str | None = None):
    if ("k" in _names_in(partial)) != (count is not None):
        raise ValueError(f"reduction {name!r}: a partial reads k exactly when a count is given")
    return register(OpDef(name, grad_fn, REDUCE, ("x",), (partial,), count=count))


def linear(name: str, grad_fn: str, kind: int, inputs=("x",)):
    return register(OpDef(name, grad_fn, kind, tuple(inputs), (None,) * len(inputs)))
