"""Hessian-vector products of elementwise programs: one generated Numba loop, in registers.

A scalar function built from elementwise ops over arrays of one size, reduced by whole sums
or means and combined by one-element ops (``sum(sin(x) * x ** 2)``, ``data.mean() + lam *
(x ** 2).sum()``) is, element by element, a small straight-line program. The second-order
sweep (``second_order.py``) runs it entry by entry: a memory pass for each entry's tangent,
another for each input's adjoint and its tangent, about eight for the first example. Here
one loop over the elements does it all: per element, the values' tangents forward, then
the adjoints and their tangents backward, held in registers; only the values (read from
the recording) and the direction come from memory, and only ``H v`` goes back. The
one-element steps that combine the reductions run once, before the loop (their adjoints
are the reductions'); they must not read a reduction's tangent, which is a sum over all
elements (``a.sum() * b.sum()`` and ``log(a.sum())`` are left to the sweep).

The code is generated per program *shape* (the ops, how they are wired, which inputs carry
a direction and which need a gradient, the constants that fold: small integers and halves)
from the same declarations and derived expressions as the interpreter's steps
(``_tangent.py``, ``_hvp.py``), in their order of operations, so float64 results equal the
second-order sweep's to the last bit (tests compare them with ``assert_array_equal``).
Offsets and other constants are arguments: one generated function serves every recording
of its shape. It is written and compiled on the second call of a shape (the interpreter
takes the first), into the cache directory of generated code (``generated.cache_dir``).

What takes the interpreter instead: float32, broadcasting, operands of another size, an
op without a second-order step, values modified in place since they were read, reductions
other than whole sums and means, an input requiring grad that is not differentiated (a
tensor the function closes over), arrays under ``MIN_SIZE`` elements, and
``JITGRAD_FUSE=0``.
"""
from __future__ import annotations

import os
from functools import cache, lru_cache

import numpy as np

from ..ops.registry import ELEMENTWISE, OPS, REDUCE, selects
from .layout import DTYPE_F64, E_WIDTH, HAS_SECOND_ORDER, N_WIDTH
from .loops import _baked, _names, _rename

MIN_SIZE = 1024  # smaller arrays: the sweep's passes cost little, a compile would not pay

_F64 = DTYPE_F64


ENABLED = os.environ.get("JITGRAD_FUSE", "1") != "0"  # read once, at import


class _Declined(Exception):
    """The program is not one the generated code takes."""


def _analyse(tape, root: int, last: int, start: int, seeds: list, second: np.ndarray):
    """The shape and arguments of the program recorded from ``start`` up to ``root``, or
    None when it is not one this module takes. ``seeds``: (node, direction) per input.

    The shape (what the generated code depends on) is ``(values, entries)``. ``values``: per
    value, ``(entry, seed, grad, scalar)``: the index of the entry producing it (-1 for an
    input of the program), the index of the direction it is seeded with (-1: none), whether
    it needs a gradient, whether it is one element (else ``n``). ``entries``: per entry,
    ``(kind, opcode, operand value indices, constants)``; kind ``"e"`` an elementwise op over
    ``n`` elements, ``"r"`` a whole sum or mean of one (to one element), ``"s"`` an
    elementwise op of one-element values (what combines the reductions); a constant is its
    value where it is baked into the code, else None (read from ``consts``, in entry order;
    a reduction's element count is always read)."""
    try:
        return _examine(tape, root, last, start, seeds, second)
    except _Declined:
        return None


def _examine(tape, root, last, start, seeds, second):
    versions = tape.versions
    meta = tape.meta
    node_fields = tape.node_fields
    seed_of = {node: s for s, (node, _) in enumerate(seeds) if node >= 0}
    index: dict = {}  # node -> value index
    values, offsets, entries, consts, reductions = [], [], [], [], []
    n = 0

    def value(node: int, version: int, scalar: bool) -> int:
        if node < 0:
            return -1  # an operand the recording left out: its step must not read it
        if versions[node] != version:
            raise _Declined
        found = index.get(node)
        if found is None:
            offset, size, dtype, grad, _ = node_fields(node)
            if dtype != _F64 or size != (1 if scalar else n) or (grad and node not in seed_of):
                raise _Declined
            found = index[node] = len(values)
            values.append((-1, seed_of.get(node, -1), grad != 0, scalar))
            offsets.append(offset)
        elif values[found][3] != scalar:
            raise _Declined
        return found

    for e in range(start, last + 1):
        code, out, i0, i1, i2, mo, v0, v1, v2, freed, c0, c1 = tape.entry_fields(e)
        offset, size, dtype, grad, _ = node_fields(out)
        if freed or versions[out] != 0 or dtype != _F64:
            raise _Declined
        if _constant_reduction(code):
            if i0 < 0 or mo < 0 or meta[mo] != 0 or size != 1:  # (a whole reduction's meta)
                raise _Declined
            if not n:
                n = node_fields(i0)[1]
            kind, operands = "r", (value(i0, v0, False),)
            reductions.append(mo)
            consts.append(c0)  # its element count
            constants = ()
        else:
            info = _elementwise(code, second)
            if info is None or mo > 0:  # (0 and -1: operands of the output's shape)
                raise _Declined
            arity, reads0, reads1 = info
            scalar = size == 1
            if not scalar and not n:
                n = size
            kind = "s" if scalar else "e"
            operands = tuple(value(node, version, scalar)
                             for node, version in ((i0, v0), (i1, v1), (i2, v2))[:arity])
            if not scalar and size != n:
                raise _Declined
            b0 = _baked(c0) if reads0 else 0.0
            b1 = _baked(c1) if reads1 else 0.0
            if b0 is None:
                consts.append(c0)
            if b1 is None:
                consts.append(c1)
            constants = (b0, b1)
        index[out] = len(values)
        values.append((len(entries), -1, grad != 0, size == 1))
        offsets.append(offset)
        entries.append((kind, code, operands, constants))
    if n < MIN_SIZE or not values[index[root]][3]:
        raise _Declined
    shape = (tuple(values), tuple(entries))
    source(shape)  # raises _Declined where the code would need what it does not compute
    nodes = [*index, root]
    return (shape, np.array(offsets, np.int64), np.array(consts, np.float64), n,
            min(nodes), max(nodes), tuple(reductions))


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
        found, lo, hi, node_rows, versions, reductions = known
        if (tape.nodes[lo * _NODE_ROW:(hi + 1) * _NODE_ROW] == node_rows
                and tape.versions[lo:hi + 1] == versions
                and all(tape.meta[mo] == 0 for mo in reductions)):
            return found
    examined = _analyse(tape, root, last, start, seeds, second)
    if examined is None:
        return None
    shape, offsets, consts, n, lo, hi, reductions = examined
    found = (_plan(shape), offsets, consts, n)
    if hi - lo < 256:  # (elementwise entries read the shared meta 0: their rows say it all)
        if len(_MEMO) > 256:
            _MEMO.clear()
        _MEMO[key] = (found, lo, hi, bytes(tape.nodes[lo * _NODE_ROW:(hi + 1) * _NODE_ROW]),
                      tape.versions[lo:hi + 1], reductions)
    return found


_ELEMENTWISE: dict = {}


def _elementwise(code: int, second: np.ndarray):
    """(arity, reads c0, reads c1) of an elementwise op with a second-order step, else None."""
    found = _ELEMENTWISE.get(code, False)
    if found is False:
        op = OPS[code]
        found = None
        if op.kind == ELEMENTWISE and second[code] & HAS_SECOND_ORDER and not _reads(op, "n"):
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

    return _names(op.partials[0]) <= {"n"} and partial_tangents(op)[0] == "0.0"


@cache
def _reads(op, name: str) -> bool:
    """Whether the op's partials read the constant ``name`` (its tangent's and its
    second-order step's expressions come from them)."""
    return any(p is not None and name in _names(p) for p in op.partials)


# -- the generated code ------------------------------------------------------------------------
_HEADER = '''"""Generated by jitgrad.kernels.elementwise_hvp for one program shape; do not edit."""
# fmt: off
import numpy as np  # noqa: F401

from jitgrad.kernels.expressions import *  # noqa: F401, F403
from jitgrad.kernels.jit import kernel

'''


_UNKNOWN = "UNKNOWN"  # a tangent the generated code does not compute (see source)


@lru_cache(maxsize=256)
def source(shape: tuple) -> tuple[str, tuple, tuple]:
    """The module's text, the directions its function reads (by seed index, in order) and
    the inputs it writes ``H v`` for (the others are not reached from the root).

    One pass over the elements: the one-element values (what the reductions are combined
    by) and their adjoints are worked out first, before the loop; that needs no tangent of
    a reduction (the elements' tangents are known only inside the loop), so a program whose
    combining steps read one (``a.sum() * b.sum()``, not ``a.sum() + 2 * b.sum()``) raises
    ``_Declined``."""
    from .generate_hvp import keeps_partial, output_tangent, partial_tangents

    values, entries = shape
    seeds = sorted({seed for _, seed, _, _ in values if seed >= 0})
    out_of = {entry: v for v, (entry, _, _, _) in enumerate(values) if entry >= 0}
    before: list = []  # one-element code, before the loop
    body: list = []    # the loop's
    tangent = {}  # value -> its tangent's name, "0.0" (no direction reaches it), or _UNKNOWN
    for v, (entry, seed, _, scalar) in enumerate(values):
        lines, at = (before, "0") if scalar else (body, "i")
        lines.append(f"v{v} = vals[offsets[{v}]]" if scalar else f"v{v} = a{v}[i]")
        if entry < 0:
            if seed >= 0:
                lines.append(f"t{v} = d{seed}[{at}]")
                tangent[v] = f"t{v}"
            else:
                tangent[v] = "0.0"
    kept = {}
    scope = {}
    runtime = 0  # next runtime constant

    def constant(value):
        nonlocal runtime
        if value is not None:
            return value
        runtime += 1
        return f"k{runtime - 1}"

    # forward: each value's tangent, as the tangent sweep computes it
    for j, (kind, code, operands, constants) in enumerate(entries):
        op = OPS[code]
        out = out_of[j]
        if kind == "r":
            # a reduction's tangent is a sum over the elements: not known before the loop
            scope[j] = (out, {"n": constant(None)})
            tangent[out] = "0.0" if tangent[operands[0]] == "0.0" else _UNKNOWN
            continue
        lines = before if kind == "s" else body
        names = {name: f"v{v}" if v >= 0 else _UNKNOWN
                 for name, v in zip(op.inputs, operands)}
        names.update(c0=constant(constants[0]), c1=constant(constants[1]), y=f"v{out}")
        scope[j] = (out, names)
        active = [v >= 0 and tangent[v] != "0.0" for v in operands]
        unknown = any(v >= 0 and tangent[v] == _UNKNOWN for v in operands)
        if keeps_partial(op):
            kept[j] = f"p{j}"
            lines.append(f"p{j} = {_rename(op.partials[0], names)}")
            if active[0] and not unknown:
                lines.append(f"t{out} = p{j} * {tangent[operands[0]]}")
        elif any(active) and not unknown:
            lines.append(f"t{out} = 0.0")
            for k, partial in enumerate(op.partials):
                if partial is not None and active[k]:
                    lines.append(f"t{out} += ({_rename(partial, names)}) * "
                                 f"{tangent[operands[k]]}")
        tangent[out] = ("0.0" if not any(active) else _UNKNOWN if unknown else f"t{out}")
    # reverse: entries last to first, each as its second-order step does it; the root's
    # adjoint is 1, its tangent 0
    root = out_of[len(entries) - 1]
    before += [f"g{root} = 1.0", f"h{root} = 0.0"]
    adjoint = {root: (f"g{root}", f"h{root}")}  # value -> (adjoint, its tangent)
    for j in range(len(entries) - 1, -1, -1):
        kind, code, operands, _ = entries[j]
        out, names = scope[j]
        if out not in adjoint:
            continue  # the root does not reach it
        lines = before if kind == "s" else body
        op = OPS[code]
        g, h = adjoint[out]
        fresh = set()
        for k, v in enumerate(operands):
            if v >= 0 and values[v][2] and v not in adjoint:
                adjoint[v] = (f"g{v}", f"h{v}")
                if op.partials[k] is not None:
                    fresh.add(k)  # its first write assigns
                else:
                    lines += [f"g{v} = 0.0", f"h{v} = 0.0"]
        derived = partial_tangents(op)
        moving = dict(names, **{f"d{name}": tangent[v] if v >= 0 else _UNKNOWN
                                for name, v in zip(op.inputs, operands)})
        for k, partial in enumerate(op.partials):
            v = operands[k]
            if partial is None or v < 0 or not values[v][2]:
                continue
            step = [f"p = {kept[j] if j in kept else _rename(partial, names)}"]
            term = derived[k]
            if "dy" in _names(term):
                dy = f"p * d{op.inputs[0]}" if j in kept else output_tangent(op)
                step.append(f"dy = {_rename(dy, moving)}")
            store = "=" if k in fresh else "+="
            fresh.discard(k)
            gv, hv = adjoint[v]
            second = f"{h} * p" if term == "0.0" else (
                f"{h} * p + {g} * ({_rename(term, dict(moving, dy='dy'))})")
            if selects(partial):  # a mask: exactly 0 where p is (ops.registry.adjoint_product)
                step.append(f"{gv} {store} where(p == 0.0, 0.0, {g} * p)")
                step.append(f"{hv} {store} where(p == 0.0, 0.0, {second})")
            else:
                step.append(f"{gv} {store} {g} * p")
                step.append(f"{hv} {store} {second}")
            lines += step
    if any(_UNKNOWN in line for line in (*before, *body)):
        raise _Declined  # a step reads what is not computed (or not recorded)
    reached = []
    for s in seeds:
        v = next(v for v, (entry, seed, _, _) in enumerate(values) if seed == s)
        if v in adjoint:
            lines, at = (before, "0") if values[v][3] else (body, "i")
            lines.append(f"r{s}[{at}] = {adjoint[v][1]}")
            reached.append(s)
    arguments = ", ".join(["vals", "offsets", "consts", "n", *[f"d{s}" for s in seeds],
                           *[f"r{s}" for s in reached]])
    lines = ["", "@kernel", f"def hvp({arguments}):"]
    for v, (_, _, _, scalar) in enumerate(values):
        if not scalar:
            lines.append(f"    a{v} = vals[offsets[{v}]:offsets[{v}] + n]")
    lines += [f"    k{c} = consts[{c}]" for c in range(runtime)]
    lines += [f"    {line}" for line in before]
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
        scalar = {seed: one for _, seed, _, one in shape[0] if seed >= 0}
        self.one_element = tuple(scalar[s] for s in self.reached)  # else n elements
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
    results = [np.empty(1 if one else n) for one in plan.one_element]
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
    from .generated import generated_name, load_generated

    plan.seen += 1
    try:
        module = load_generated(generated_name("hvp", plan.text), plan.text,
                                compile_now=plan.seen >= 2)
    except Exception as error:  # a module that does not import: a bug of the generator
        _fail(plan, error)
        return None
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
