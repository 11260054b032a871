"""Hessian-vector products of elementwise programs: one generated Numba loop, in registers.

A scalar function built from elementwise ops over arrays of one size and a reduction to one
value (``sum(sin(x) * x ** 2)``, a sum of per-element losses) is, element by element, a
small straight-line program. The second-order sweep (``second_order.py``) runs it entry by
entry: a memory pass for each entry's tangent, another for each input's adjoint and its
tangent, about eight for that example. Here one loop over the elements does it all: per
element, the values' tangents forward, then the adjoints and their tangents backward, held
in registers; only the values (read from the recording) and the direction come from memory,
and only ``H v`` goes back.

The code is generated per program *shape* (the ops, how they are wired, which inputs carry
a direction and which need a gradient, the constants that fold: small integers and halves)
from the same declarations and derived expressions as the interpreter's steps
(``_tangent.py``, ``_hvp.py``), in their order of operations, so float64 results equal the
second-order sweep's to the last bit (tests compare them with ``assert_array_equal``).
Offsets and other constants are arguments: one generated function serves every recording
of its shape. It is written and compiled on the second call of a shape (the interpreter
takes the first), into the cache directory of the generated loops (``loops.cache_dir``).

What takes the interpreter instead: float32, broadcasting, operands of another size, an
op without a second-order step, values modified in place since they were read, a
reduction other than a whole ``sum``/``mean`` at the root, an input requiring grad that is
not differentiated (a tensor the function closes over), arrays under ``MIN_SIZE``
elements, and ``JITGRAD_FUSE=0``.
"""
from __future__ import annotations

import ast
import os
from functools import cache, lru_cache

import numpy as np

from ..ops.registry import ELEMENTWISE, OPS, REDUCE
from .layout import DTYPE_F64, E_WIDTH, HAS_SECOND_ORDER, N_WIDTH

MIN_SIZE = 1024  # smaller arrays: the sweep's passes cost little, a compile would not pay

_F64 = DTYPE_F64


ENABLED = os.environ.get("JITGRAD_FUSE", "1") != "0"  # read once, at import


def _baked(value: float):
    value = float(value)
    return value if abs(value) <= 4.0 and (2.0 * value).is_integer() else None


def _analyse(tape, root: int, last: int, start: int, seeds: list, second: np.ndarray):
    """The shape and arguments of the program recorded from ``start`` up to ``root``, or
    None when it is not one this module takes. ``seeds``: (node, direction) per input.

    The shape (what the generated code depends on) is ``(values, entries, reduce)``.
    ``values``: per value, ``(entry, seed, grad)``: the index of the entry producing it (-1
    for an input of the program), the index of the direction it is seeded with (-1: none),
    whether it needs a gradient. ``entries``: per elementwise entry, ``(opcode, operand value
    indices, constants)``, a constant being its value where it is baked into the code, else
    None (read from ``consts``). ``reduce``: the root's opcode and its operand's value."""
    code, out, in0, _, _, mo, ver0, _, _, freed, count, _ = tape.entry_fields(last)
    versions = tape.versions
    meta = tape.meta
    if (not _constant_reduction(code) or in0 < 0 or freed or mo < 0 or meta[mo] != 0
            or versions[root] != 0 or versions[in0] != ver0):  # (a whole reduction's meta)
        return None
    n = tape.node_fields(in0)[1]
    if n < MIN_SIZE:
        return None
    seed_of = {node: s for s, (node, _) in enumerate(seeds) if node >= 0}
    index: dict = {}  # node -> value index
    values, offsets, entries, consts = [], [], [], []
    node_fields = tape.node_fields
    for e in range(start, last):
        code, out, i0, i1, i2, mo, v0, v1, v2, freed, c0, c1 = tape.entry_fields(e)
        info = _elementwise(code, second)
        if info is None or freed or mo > 0 or versions[out] != 0:
            return None
        arity, reads0, reads1 = info
        operands = []
        for node, version in ((i0, v0), (i1, v1), (i2, v2))[:arity]:
            if node < 0 or versions[node] != version:
                return None
            found = index.get(node)
            if found is None:
                offset, size, dtype, grad, _ = node_fields(node)
                if size != n or dtype != _F64 or (grad and node not in seed_of):
                    return None
                found = index[node] = len(values)
                values.append((-1, seed_of.get(node, -1), grad != 0))
                offsets.append(offset)
            operands.append(found)
        offset, size, dtype, grad, _ = node_fields(out)
        if size != n or dtype != _F64:
            return None
        index[out] = len(values)
        values.append((len(entries), -1, grad != 0))
        offsets.append(offset)
        b0 = _baked(c0) if reads0 else 0.0
        b1 = _baked(c1) if reads1 else 0.0
        if b0 is None:
            consts.append(c0)
        if b1 is None:
            consts.append(c1)
        entries.append((code, tuple(operands), (b0, b1)))
    reduced = index.get(in0)
    if reduced is None:
        return None
    consts.append(count)  # the reduction's element count
    shape = (tuple(values), tuple(entries), (tape.entry_fields(last)[0], reduced))
    nodes = [*index, root]
    return (shape, np.array(offsets, np.int64), np.array(consts, np.float64), n,
            min(nodes), max(nodes))


_ROW = E_WIDTH * 8       # bytes of an entry's row
_NODE_ROW = N_WIDTH * 8  # of a node's
_MEMO: dict = {}         # the rows of a recording -> what it was found to be


def analyse(tape, root: int, start: int, seeds: list, second: np.ndarray):
    """``(plan, offsets, consts, n)`` for the program recorded from ``start`` up to ``root``,
    or None when it is not one this module takes (see :func:`_analyse`). A recording whose
    rows, nodes and versions are those of an earlier one (a function called again) is
    looked up instead of examined."""
    if not ENABLED:
        return None
    _, _, dtype, _, last = tape.node_fields(root)
    if last < start or dtype != _F64:
        return None
    key = (bytes(tape.entries[start * _ROW:(last + 1) * _ROW]),
           tuple([node for node, _ in seeds]))
    known = _MEMO.get(key)
    if known is not None:
        found, lo, hi, node_rows, versions, mo = known
        if (tape.nodes[lo * _NODE_ROW:(hi + 1) * _NODE_ROW] == node_rows
                and tape.versions[lo:hi + 1] == versions and tape.meta[mo] == 0):
            return found
    examined = _analyse(tape, root, last, start, seeds, second)
    if examined is None:
        return None
    shape, offsets, consts, n, lo, hi = examined
    found = (_plan(shape), offsets, consts, n)
    if hi - lo < 256:  # (elementwise entries read the shared meta 0: their rows say it all)
        if len(_MEMO) > 256:
            _MEMO.clear()
        _MEMO[key] = (found, lo, hi, bytes(tape.nodes[lo * _NODE_ROW:(hi + 1) * _NODE_ROW]),
                      tape.versions[lo:hi + 1], tape.entry_fields(last)[5])
    return found


_ELEMENTWISE: dict = {}


def _elementwise(code: int, second: np.ndarray):
    """(arity, reads c0, reads c1) of an elementwise op with a second-order step, else None."""
    found = _ELEMENTWISE.get(code, False)
    if found is False:
        op = OPS[code]
        found = None
        if op.kind == ELEMENTWISE and second[code] & HAS_SECOND_ORDER:
            found = (op.arity, _reads(op, "c0"), _reads(op, "c1"))
        _ELEMENTWISE[code] = found
    return found


@cache
def _constant_reduction(code: int) -> bool:
    op = OPS[code]
    return op.kind == REDUCE and _constant_partial(op)


@cache
def _constant_partial(op) -> bool:
    """A reduction whose partial is a constant (sum, mean): its second-order step spreads
    the adjoint and adds nothing else."""
    from .generate_hvp import partial_tangents

    names = {n.id for n in ast.walk(ast.parse(op.partials[0], mode="eval"))
             if isinstance(n, ast.Name)}
    return names <= {"n"} and partial_tangents(op)[0] == "0.0"


@cache
def _reads(op, name: str) -> bool:
    """Whether the op's partials read the constant ``name`` (its tangent's and its
    second-order step's expressions come from them)."""
    return any(p is not None and name in {n.id for n in ast.walk(ast.parse(p, mode="eval"))
                                          if isinstance(n, ast.Name)} for p in op.partials)


# -- the generated code ------------------------------------------------------------------------
class _Rename(ast.NodeTransformer):
    """Names to the generated code's: a string is a variable, a float a constant."""

    def __init__(self, names: dict) -> None:
        self.names = names

    def visit_Name(self, node: ast.Name) -> ast.AST:  # noqa: N802 - ast's visitor name
        if node.id not in self.names:
            return node
        target = self.names[node.id]
        if isinstance(target, str):
            new = ast.Name(target, ast.Load())
        elif target < 0 or (target == 0.0 and np.signbit(target)):
            new = ast.UnaryOp(ast.USub(), ast.Constant(-target))
        else:
            new = ast.Constant(target)
        return ast.copy_location(new, node)


def _rename(expression: str, names: dict) -> str:
    tree = _Rename(names).visit(ast.parse(expression, mode="eval"))
    return ast.unparse(ast.fix_missing_locations(tree))


_HEADER = '''"""Generated by jitgrad.kernels.elementwise_hvp for one program shape; do not edit."""
# fmt: off
import numpy as np  # noqa: F401

from jitgrad.kernels.expressions import *  # noqa: F401, F403
from jitgrad.kernels.jit import kernel

'''


@lru_cache(maxsize=256)
def source(shape: tuple) -> tuple[str, tuple, tuple]:
    """The module's text, the directions its function reads (by seed index, in order) and
    the inputs it writes ``H v`` for (the others are not reached from the root)."""
    from .generate_hvp import keeps_partial, output_tangent, partial_tangents

    values, entries, (reduce_code, reduced) = shape
    seeds = sorted({seed for _, seed, _ in values if seed >= 0})
    body: list = []
    emit = body.append
    tangent = {}  # value index -> its tangent's name, or "0.0" (no direction reaches it)
    for v, (entry, seed, _) in enumerate(values):
        emit(f"v{v} = a{v}[i]")
        if entry < 0:
            if seed >= 0:
                emit(f"t{v} = d{seed}[i]")
                tangent[v] = f"t{v}"
            else:
                tangent[v] = "0.0"
    kept = {}
    runtime = 0  # next runtime constant

    def constant_names(constants) -> dict:
        nonlocal runtime
        names = {}
        for name, baked in zip(("c0", "c1"), constants):
            if baked is None:
                names[name] = f"k{runtime}"
                runtime += 1
            else:
                names[name] = baked
        return names

    # forward: each value's tangent, as the tangent sweep computes it
    scope = {}
    for j, (code, operands, constants) in enumerate(entries):
        op = OPS[code]
        out = next(v for v, (entry, _, _) in enumerate(values) if entry == j)
        names = {name: f"v{operands[k]}" for k, name in enumerate(op.inputs)}
        names.update(constant_names(constants), y=f"v{out}")
        scope[j] = (out, names)
        active = [tangent[v] != "0.0" for v in operands]
        if keeps_partial(op):
            kept[j] = f"p{j}"
            emit(f"p{j} = {_rename(op.partials[0], names)}")
            if active[0]:
                emit(f"t{out} = p{j} * {tangent[operands[0]]}")
        elif any(active):
            emit(f"t{out} = 0.0")
            for k, partial in enumerate(op.partials):
                if partial is not None and active[k]:
                    emit(f"t{out} += ({_rename(partial, names)}) * {tangent[operands[k]]}")
        tangent[out] = f"t{out}" if any(active) else "0.0"
    # the root's reduction: adjoint 1, adjoint tangent 0, spread by its constant partial
    adjoint = {}  # value index -> (adjoint name, its tangent's name)
    if values[reduced][2]:
        partial = _rename(OPS[reduce_code].partials[0], {"n": f"k{runtime}"})
        emit(f"p = {partial}")
        emit(f"g{reduced} = 1.0 * p")
        emit(f"h{reduced} = 0.0 * p")
        adjoint[reduced] = (f"g{reduced}", f"h{reduced}")
    # reverse: entries last to first, each as its second-order step does it
    for j in range(len(entries) - 1, -1, -1):
        code, operands, _ = entries[j]
        out, names = scope[j]
        if out not in adjoint:
            continue  # the root does not reach it
        op = OPS[code]
        g, h = adjoint[out]
        fresh = set()
        for k, v in enumerate(operands):
            if values[v][2] and v not in adjoint:
                adjoint[v] = (f"g{v}", f"h{v}")
                if op.partials[k] is not None:
                    fresh.add(k)  # its first write assigns
                else:
                    emit(f"g{v} = 0.0")
                    emit(f"h{v} = 0.0")
        derived = partial_tangents(op)
        moving = dict(names, **{f"d{name}": tangent[operands[k]]
                                for k, name in enumerate(op.inputs)})
        for k, partial in enumerate(op.partials):
            v = operands[k]
            if partial is None or not values[v][2]:
                continue
            emit(f"p = {kept[j] if j in kept else _rename(partial, names)}")
            term = derived[k]
            if "dy" in {n.id for n in ast.walk(ast.parse(term, mode='eval'))
                        if isinstance(n, ast.Name)}:
                dy = f"p * d{op.inputs[0]}" if j in kept else output_tangent(op)
                emit(f"dy = {_rename(dy, moving)}")
            store = "=" if k in fresh else "+="
            fresh.discard(k)
            gv, hv = adjoint[v]
            emit(f"{gv} {store} {g} * p")
            if term == "0.0":
                emit(f"{hv} {store} {h} * p")
            else:
                emit(f"{hv} {store} {h} * p + {g} * ({_rename(term, dict(moving, dy='dy'))})")
    reached = []
    for s in seeds:
        v = next(v for v, (entry, seed, _) in enumerate(values) if seed == s)
        if v in adjoint:
            emit(f"r{s}[i] = {adjoint[v][1]}")
            reached.append(s)
    arguments = ", ".join(["vals", "offsets", "consts", "n", *[f"d{s}" for s in seeds],
                           *[f"r{s}" for s in reached]])
    lines = ["", "@kernel", f"def hvp({arguments}):"]
    for v in range(len(values)):
        lines.append(f"    a{v} = vals[offsets[{v}]:offsets[{v}] + n]")
    for c in range(runtime + 1):
        lines.append(f"    k{c} = consts[{c}]")
    lines.append("    for i in range(n):")
    lines += [f"        {line}" for line in body]
    return _HEADER + "\n".join(lines) + "\n", tuple(seeds), tuple(reached)


# -- running it ----------------------------------------------------------------------------------
class _Plan:
    """A shape's generated function: written on the shape's second call (``seen``), None
    once it failed to compile."""

    def __init__(self, shape: tuple) -> None:
        self.shape = shape
        self.text, self.present, self.reached = source(shape)
        self.seen = 0
        self.function = False  # not loaded yet


_PLANS: dict = {}


def _plan(shape: tuple) -> _Plan:
    plan = _PLANS.get(shape)
    if plan is None:
        if len(_PLANS) > 1024:
            _PLANS.clear()
        plan = _PLANS[shape] = _Plan(shape)
    return plan


def hessian_vector_product(tape, root: int, start: int, seeds: list,
                           second: np.ndarray) -> list | None:
    """``H v`` per seed (an array of the input's shape, or None where the root does not
    depend on it), as ``autograd.second_order.hessian_vector_product``; None where this
    module does not take the program or its code is not compiled yet."""
    found = analyse(tape, root, start, seeds, second)
    if found is None:
        return None
    plan, offsets, consts, n = found
    function = plan.function
    if function is False:
        function = _load(plan)
    if function is None or function is False:
        return None
    arrays = [np.ascontiguousarray(seeds[s][1]._value(), np.float64).reshape(-1)
              for s in plan.present]
    results = [np.empty(n) for _ in plan.reached]
    arrays += results
    try:
        function(tape.arenas[1], offsets, consts, n, *arrays)
    except Exception as error:  # a bug of the generator: the interpreter takes over
        if not _is_numba_error(error):
            raise
        _fail(plan, error)
        return None
    out = [None] * len(seeds)
    shapes = tape.shapes
    for s, result in zip(plan.reached, results):
        out[s] = result.reshape(shapes[seeds[s][0]])
    return out


def _load(plan: _Plan):
    """The plan's compiled function; False while its shape was seen once (not written yet)."""
    from .loops import generated_name, load_generated

    plan.seen += 1
    module = load_generated(generated_name("hvp", plan.text), plan.text,
                            compile_now=plan.seen >= 2)
    if module is None:
        return False
    plan.function = module.hvp
    return plan.function


def _is_numba_error(error: Exception) -> bool:
    from numba.core.errors import NumbaError

    return isinstance(error, NumbaError)


def _fail(plan: _Plan, error: Exception) -> None:
    import warnings

    plan.function = None
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    warnings.warn(f"jitgrad: the generated Hessian-vector product failed to compile "
                  f"({type(error).__name__}: {first}); the second-order sweep runs it",
                  RuntimeWarning, stacklevel=4)
