"""Loops of scalar programs: found on a compiled tape, replayed by Numba code generated for
their body.

A Python loop over scalars records the same few entries again and again: entry ``e + P``
runs the op of entry ``e`` on the next element, its offsets one stride further. The
interpreter of :mod:`jitgrad.kernels.replay` runs such a tape at ~8 ns per entry, writing
every value and clearing and reading every adjoint. Here a *run* (``count`` iterations of a
``period``-entry body, found by :func:`find_runs`) becomes one generated function per
direction, in which the body's values and adjoints live in registers:

* an operand is the output of an earlier entry of the same iteration (``reg``), of an entry
  of the previous iteration (``carry``: the loop-carried values, read from the node before
  the run in the first iteration), or a value outside the run at an offset advancing by a
  constant per iteration (``mem``: ``x[i]``, a loop-invariant parameter);
* only values read from outside the body (``ext``) and the carried values the reverse
  function reads back are written to the arena, plus every value of the last iteration;
  only the adjoints of the first are cleared and read back;
* the reverse function walks the iterations backwards, recomputes each iteration's values
  from its inputs (a carried copy of ``x[i]`` is read from ``x`` again), and sends each
  adjoint contribution where the interpreter would, in the same order, so the gradients are
  the interpreter's to the last bit (float64; the sign of a zero aside).

Where the entries around the loops are one-element ops too, the generated module's
``value_and_grad`` replays the whole program in one call (:attr:`Plan.driver`); otherwise
the runs and the interpreter's kernels are called in turn from Python.

The body's code comes from the registry's declarations (the same forward and partial
expressions as ``scalar_forward``/``scalar_adjoints``); what differs between two loops of
the same shape (offsets, strides, constants) is passed as arrays, so one generated module
serves every recording of that shape. Generated modules are written to a cache directory
(``JITGRAD_CACHE_DIR``, else ``~/.cache/jitgrad``) and their kernels cached there by Numba.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass

import numpy as np

from ..ops.registry import OPS, selects
from .generated import generated_name, load_generated
from .layout import (
    E_IN0,
    E_OUT,
    H_CODE_SHIFT,
    H_F32,
    H_TAG,
    H_W0,
    TAG_COPY,
    TAG_GENERAL,
    TAG_SCALAR,
)

MIN_ITERATIONS = 8     # shorter loops stay with the interpreter
MIN_ENTRIES = 512      # below this a generated call saves less than it costs (~2 us)
MAX_PERIOD = 64        # longest body looked for


# -- finding runs -----------------------------------------------------------------------------
def _streaks(ok: np.ndarray) -> np.ndarray:
    """streak[e]: how many consecutive entries from e are ``ok`` (0 where ok[e] is False)."""
    m = len(ok)
    breaks = np.append(np.flatnonzero(~ok), m)
    at = np.arange(m)
    return breaks[np.searchsorted(breaks, at)] - at


def find_runs(inst: np.ndarray, blocked: np.ndarray) -> list:
    """``(start, period, count)`` of the loops of one-element entries on ``inst``: entries
    whose heads repeat with the period and whose offsets advance by a constant per
    iteration. None contains a ``blocked`` position (an auxiliary op runs there). Greedy from
    the front; for each start the period covering most entries, the shortest on ties."""
    n = len(inst)
    if n < MIN_ENTRIES:
        return []
    heads = inst[:, 0]
    simple = (heads & H_TAG) != TAG_GENERAL
    cover = np.zeros(n, np.int64)
    period = np.zeros(n, np.int64)
    for p in range(1, min(MAX_PERIOD, n // 3) + 1):
        m = n - 2 * p
        same = heads[:n - p] == heads[p:]
        ok = simple[:m] & same[:m] & same[p:p + m]
        if np.count_nonzero(ok) < MIN_ENTRIES:
            continue
        step = inst[p:, 1:] - inst[:n - p, 1:]
        ok &= (step[:m] == step[p:p + m]).all(axis=1)
        streak = _streaks(ok)
        covered = np.where(streak > 0, (streak + 2 * p) // p * p, 0)
        better = covered > cover[:m] + p  # a multiple of a shorter period covers ~the same
        cover[:m][better] = covered[better]
        period[:m][better] = p
    blocked = np.sort(blocked)
    runs = []
    candidates = np.flatnonzero(cover >= MIN_ENTRIES)
    i = 0
    while i < len(candidates):
        start = int(candidates[i])
        p = int(period[start])
        count = int(cover[start]) // p
        k = np.searchsorted(blocked, start)
        if k < len(blocked) and blocked[k] < start + count * p:
            count = int(blocked[k] - start) // p
        if count >= MIN_ITERATIONS and count * p >= MIN_ENTRIES:
            runs.append((start, p, count))
            i = int(np.searchsorted(candidates, start + count * p))
        else:
            i += 1
    return runs


# -- the body of a run ------------------------------------------------------------------------
@dataclass(frozen=True)
class Position:
    """One entry of the body. ``operands[k]``: None, ("reg", j), ("carry", j) or ("mem",);
    ``uniform[c]``: constant c is the same in every iteration (else read per iteration)."""

    tag: int
    code: int
    wants: tuple
    operands: tuple
    uniform: tuple
    baked: tuple    # a uniform constant written into the code (exponent-like), else None
    store: bool     # its value is written every iteration (read outside, or by the reverse)
    ext: bool       # read outside the body: its adjoint is cleared and read from memory

    @property
    def copies_mem(self) -> bool:
        """A copy of a value outside the run (``x[i]``)."""
        return self.tag == TAG_COPY and self.operands[0][0] == "mem"


@dataclass(frozen=True)
class Body:
    f32: bool
    positions: tuple

    def carried(self) -> list:
        """Positions whose value an operand reads in the next iteration."""
        return sorted({op[1] for pos in self.positions for op in pos.operands
                       if op is not None and op[0] == "carry"})


@dataclass
class Run:
    start: int
    period: int
    count: int
    body: Body
    offsets: np.ndarray    # (period, 8): out offset, out step, (operand offset, step) x 3
    constants: np.ndarray  # (period, 2): the uniform constants
    in_reverse: bool       # its entries are in the reverse sweep (else none of them is)
    kernels: object = None

    @property
    def stop(self) -> int:
        return self.start + self.period * self.count


def _names(expression: str) -> set:
    return {node.id for node in ast.walk(ast.parse(expression, mode="eval"))
            if isinstance(node, ast.Name)}


def _uses_constants(op) -> tuple:
    names = set()
    for expression in (op.forward, *[p for p in op.partials if p is not None]):
        names |= _names(expression)
    return ("c0" in names, "c1" in names)


def _remembered(heads: np.ndarray, operands: list) -> set:
    """Carried positions whose values the reverse function reads back from the arena: those
    the partials need (directly or to recompute a needed value), except copies of values
    outside the run (``x[i]``), which it reads where they came from."""
    p = len(operands)
    needed = [False] * p
    operand_needed = [[False] * 3 for _ in range(p)]
    for j in range(p - 1, -1, -1):
        h = int(heads[j])
        tag = h & H_TAG
        if tag == TAG_SCALAR:
            op = OPS[(h >> H_CODE_SHIFT) & 0xFFFF]
            for k, partial in enumerate(op.partials):
                if partial is None or not h & (H_W0 << k):
                    continue
                names = _names(partial)
                needed[j] = needed[j] or "y" in names
                for i, name in enumerate(op.inputs):
                    operand_needed[j][i] = operand_needed[j][i] or name in names
        for k, operand in enumerate(operands[j]):
            if operand is None or not (needed[j] or operand_needed[j][k]):
                continue
            operand_needed[j][k] = True
            if operand[0] == "reg":
                needed[operand[1]] = True
    remembered = set()
    for j in range(p):
        for k, operand in enumerate(operands[j]):
            if operand is not None and operand[0] == "carry" and operand_needed[j][k]:
                source = operand[1]
                copy = int(heads[source]) & H_TAG == TAG_COPY
                if not (copy and operands[source][0][0] == "mem"):
                    remembered.add(source)
    return remembered


def _baked(value: float) -> float | None:
    """Constants written into the generated code: small integers and halves, the exponents
    of powers (``x ** 2`` becomes a product, its derivative's branches fold), few enough
    that loops differing in them rarely need new code. Others are passed at run time."""
    value = float(value)
    return value if abs(value) <= 4.0 and (2.0 * value).is_integer() else None


def describe(run: tuple, inst: np.ndarray, cst: np.ndarray, entries: np.ndarray,
             reads: np.ndarray, external: np.ndarray, order: np.ndarray) -> Run | None:
    """The body of ``run = (start, period, count)`` and its offsets, or None where it
    cannot be replayed by a generated body (a value of the body read other than as the
    output of this or the previous iteration, mixed precisions, a body partly in the
    reverse sweep)."""
    start, p, count = run
    index = start + np.arange(count)[:, None] * p + np.arange(p)[None, :]
    rows = inst[index]                              # (count, p, 5)
    heads = rows[0, :, 0]
    f32 = (heads & H_F32) != 0
    if f32.any() and not f32.all():
        return None
    outs = entries[index, E_OUT]                    # (count, p) nodes
    ins = entries[index, E_IN0:E_IN0 + 3]           # (count, p, 3)
    needed = np.searchsorted(order, run[0] + p * count) - np.searchsorted(order, run[0])
    if needed not in (0, p * count):
        return None
    own = np.sort(outs.reshape(-1))
    if len(np.unique(own)) != own.size:
        return None
    internal = np.zeros(p, np.int64)
    operands = []
    for j in range(p):
        kinds = []
        for k in range(3):
            node = ins[:, j, k]
            if rows[0, j, 2 + k] < 0:
                kinds.append(None)
                continue
            kind = None
            for src in range(j):
                if (node == outs[:, src]).all():
                    kind = ("reg", src)
                    break
            if kind is None:
                for src in range(p):
                    if (node[1:] == outs[:-1, src]).all():
                        kind = ("carry", src)
                        break
                if kind is not None:
                    first = node[0]
                    position = np.searchsorted(own, first)
                    if position < own.size and own[position] == first:
                        return None
            if kind is None:
                position = np.searchsorted(own, node)
                hit = own[np.minimum(position, own.size - 1)] == node
                if hit.any():
                    return None  # a value of the body read from further back
                kind = ("mem",)
            else:
                internal[kind[1]] += 1
            kinds.append(kind)
        operands.append(tuple(kinds))
    inner = outs[:-1]   # every iteration but the last: the readers of its values are known
    ext = ((reads[inner] != internal[None, :]) | (external[inner] != 0)).any(axis=0)
    remembered = _remembered(heads, operands)
    constants = cst[index]                          # (count, p, 2)
    uniform = (constants == constants[0][None]).all(axis=0)
    positions = []
    for j in range(p):
        h = int(heads[j])
        tag = h & H_TAG
        code = (h >> H_CODE_SHIFT) & 0xFFFF
        used = _uses_constants(OPS[code]) if tag == TAG_SCALAR else (False, False)
        positions.append(Position(
            tag=tag, code=code if tag == TAG_SCALAR else -1,
            wants=tuple(bool(h & (H_W0 << k)) for k in range(3)), operands=operands[j],
            uniform=tuple(bool(uniform[j, c]) or not used[c] for c in range(2)),
            baked=tuple(_baked(constants[0, j, c]) if used[c] and uniform[j, c] else None
                        for c in range(2)),
            store=bool(ext[j]) or j in remembered, ext=bool(ext[j])))
    offsets = np.zeros((p, 8), np.int64)
    offsets[:, 0] = rows[0, :, 1]
    offsets[:, 1] = rows[1, :, 1] - rows[0, :, 1]
    offsets[:, 2::2] = rows[0, :, 2:5]
    offsets[:, 3::2] = rows[1, :, 2:5] - rows[0, :, 2:5]
    return Run(start, p, count, Body(bool(f32[0]), tuple(positions)), offsets,
               np.ascontiguousarray(constants[0]), needed > 0)


# -- a replay plan: interpreted segments and runs ---------------------------------------------
@dataclass
class Plan:
    """How a compiled tape replays with its loops: ``segments`` in entry order, each
    ``(start, stop, run)`` (run None: the interpreter, the last one ending at the end, so
    that the auxiliary ops after the last entry run), ``bounds`` the positions of each
    segment's entries in the reverse ``order``, and the adjoint ranges cleared before a
    reverse sweep (the run's own adjoints are cleared by its forward function)."""

    roots: tuple
    runs: list
    segments: list
    bounds: list
    order: np.ndarray
    zero32: list
    zero64: list
    uses: int = 0
    failed: bool = False
    light: bool = False
    _arrays: tuple | None = None

    def fail(self, error: Exception) -> None:
        """The generated code did not compile: the interpreter replays the program from now
        on (a bug of the generator; the results stay right)."""
        import warnings

        self.failed = True
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        warnings.warn(f"jitgrad: the generated code of a loop failed to compile "
                      f"({type(error).__name__}: {first}); the interpreter replays it",
                      RuntimeWarning, stacklevel=4)

    def ready(self) -> bool:
        """Whether every run's kernels are loaded: at once when generated before (on disk),
        else from the second use (a tape replayed once does not wait for a compilation)."""
        if self.failed:
            return False
        self.uses += 1
        for run in self.runs:
            if run.kernels is None:
                run.kernels = kernels(run.body, compile_now=self.uses > 1)
                if run.kernels is None:
                    return False
        return True

    @property
    def driver(self):
        """The generated ``value_and_grad`` running the whole plan in one call (None: the
        segments are run from Python): where every run has the same body and every other
        entry is a one-element op of its precision, with no auxiliary op (``light``)."""
        if self.failed or not self.light or any(run.kernels is None for run in self.runs) or \
                any(run.body != self.runs[0].body for run in self.runs):
            return None
        return self.runs[0].kernels.value_and_grad

    @property
    def arrays(self) -> tuple:
        """The plan as the driver reads it."""
        if self._arrays is None:
            index = {id(run): r for r, run in enumerate(self.runs)}
            segments = np.array([[start, stop, -1 if run is None else index[id(run)]]
                                 for start, stop, run in self.segments], np.int64)
            runs = np.array([[run.start, run.count, int(run.in_reverse)] for run in self.runs],
                            np.int64)
            self._arrays = (segments, np.array(self.bounds, np.int64), runs,
                            np.stack([run.offsets for run in self.runs]),
                            np.stack([run.constants for run in self.runs]),
                            np.array(self.zero32, np.int64).reshape(-1, 2),
                            np.array(self.zero64, np.int64).reshape(-1, 2))
        return self._arrays


def _ranges(keep: np.ndarray) -> list:
    """(start, stop) of the stretches where ``keep`` is True."""
    edges = np.diff(np.concatenate(([0], keep.view(np.int8), [0])))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def plan(roots: tuple, inst: np.ndarray, cst: np.ndarray, aux_positions: np.ndarray,
         entries: np.ndarray, external: np.ndarray, order: np.ndarray, size32: int,
         size64: int) -> Plan | None:
    """The replay plan of a lowered program (None: no loop worth generating code for).
    ``external[node]``: something other than the entries reads the node (an output, a
    guard, ...)."""
    found = find_runs(inst, aux_positions)
    if not found:
        return None
    ins = entries[:, E_IN0:E_IN0 + 3]
    reads = np.bincount(ins[ins >= 0], minlength=len(external))
    runs = []
    for start, period, count in found:
        # a value read two (k) iterations back is carried from the previous iteration of a
        # body two (k) iterations long: try those before leaving the loop to the interpreter
        for times in range(1, 5):
            if times > 1 and (period * times > 2 * MAX_PERIOD or
                              count // times < MIN_ITERATIONS):
                break
            run = describe((start, period * times, count // times), inst, cst, entries,
                           reads, external, order)
            if run is not None:
                runs.append(run)
                break
    if not runs:
        return None
    segments, bounds = [], []
    keep32, keep64 = np.ones(size32, bool), np.ones(size64, bool)
    at = 0
    for run in runs + [None]:
        stop = run.start if run is not None else len(inst)
        segments.append((at, stop, None))
        if run is not None:
            segments.append((run.start, run.stop, run))
            at = run.stop
            outs = (run.offsets[None, :, 0]
                    + np.arange(run.count)[:, None] * run.offsets[None, :, 1])
            (keep32 if run.body.f32 else keep64)[outs.reshape(-1)] = False
    for start, stop, _ in segments:
        bounds.append((int(np.searchsorted(order, start)), int(np.searchsorted(order, stop))))
    outside = np.ones(len(inst), bool)
    for run in runs:
        outside[run.start:run.stop] = False
    heads = inst[outside, 0]
    f32 = runs[0].body.f32
    light = (len(aux_positions) == 0 and bool(((heads & H_TAG) != TAG_GENERAL).all())
             and bool((((heads & H_F32) != 0) == f32).all()))
    return Plan(roots, runs, segments, bounds, order, _ranges(keep32), _ranges(keep64),
                light=light)


# -- generating the body's code ---------------------------------------------------------------
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


def _at(offset: str) -> str:
    """An arena index: unsigned, so that Numba leaves out the wraparound of negative indices
    (two integer operations per access, a third of the loop's instructions)."""
    return f"np.uintp({offset})"


class _Writer:
    def __init__(self, body: Body) -> None:
        self.body = body
        self.lines: list[str] = []

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    def load(self, array: str, at: str) -> str:
        return f"float({array}[{_at(at)}])" if self.body.f32 else f"{array}[{_at(at)}]"

    def rounded(self, expression: str) -> str:
        """A value as the arena holds it (float32 programs round every result)."""
        return f"float(np.float32({expression}))" if self.body.f32 else expression

    def prologue(self) -> None:
        """Offsets, steps and uniform constants into locals."""
        for j, pos in enumerate(self.body.positions):
            self.emit(1, f"oy{j} = offs[{j}, 0]")
            self.emit(1, f"dy{j} = offs[{j}, 1]")
            for k, op in enumerate(pos.operands):
                if op is not None and op[0] != "reg":
                    self.emit(1, f"b{j}_{k} = offs[{j}, {2 + 2 * k}]")
                    self.emit(1, f"s{j}_{k} = offs[{j}, {3 + 2 * k}]")
            for c in range(2):
                if pos.baked[c] is not None:
                    self.emit(1, f"k{j}_{c} = {pos.baked[c]!r}")
                elif pos.uniform[c]:
                    self.emit(1, f"k{j}_{c} = consts[{j}, {c}]")
        self.emit(1, "last = count - 1")

    def per_iteration_constants(self, indent: int) -> None:
        p = len(self.body.positions)
        for j, pos in enumerate(self.body.positions):
            for c in range(2):
                if not pos.uniform[c]:
                    self.emit(indent, f"k{j}_{c} = cst[start + it * {p} + {j}, {c}]")

    def values(self, indent: int, carried_in_registers: bool, first: bool = False) -> None:
        """The iteration's values v0, v1, ... (operands x{j}_{k}). Outside the forward
        function a carried value is read back: from where a copied value came from, else
        from the arena (the forward stored it; in the first iteration, the node before)."""
        positions = self.body.positions
        for j, pos in enumerate(positions):
            for k, op in enumerate(pos.operands):
                if op is None:
                    continue
                if op[0] == "reg":
                    source = f"v{op[1]}"
                elif op[0] == "carry" and carried_in_registers:
                    source = f"c{op[1]}"
                elif op[0] == "carry" and not first and positions[op[1]].copies_mem:
                    src = op[1]  # a copy of a value outside the run (see _remembered)
                    source = self.load("vals", f"b{src}_0 + (it - 1) * s{src}_0")
                else:
                    source = self.load("vals", f"b{j}_{k} + it * s{j}_{k}")
                self.emit(indent, f"x{j}_{k} = {source}")
            if pos.tag == TAG_COPY:
                self.emit(indent, f"v{j} = x{j}_0")
                continue
            op = OPS[pos.code]
            from .generate_forward import _forward_expression, _scalar

            names = {name: f"x{j}_{k}" for k, name in enumerate(op.inputs)}
            names.update(c0=f"k{j}_0", c1=f"k{j}_1")
            expression = _rename(_scalar(_forward_expression(op)), names)
            self.emit(indent, f"v{j} = {self.rounded(f'float({expression})')}")


def _forward_source(body: Body) -> list:
    w = _Writer(body)
    w.emit(0, "@kernel")
    w.emit(0, "def forward(vals, adj, cst, start, count, offs, consts):")
    w.prologue()
    for j in range(len(body.positions)):
        w.emit(1, f"v{j} = 0.0")
    for j in body.carried():
        w.emit(1, f"c{j} = {w.load('vals', f'oy{j} - dy{j}')}")
    w.emit(1, "for it in range(count):")
    w.per_iteration_constants(2)
    w.values(2, carried_in_registers=True)
    for j, pos in enumerate(body.positions):
        if pos.store:
            w.emit(2, f"vals[{_at(f'oy{j} + it * dy{j}')}] = v{j}")
        if pos.ext:
            w.emit(2, f"adj[{_at(f'oy{j} + it * dy{j}')}] = 0.0")
    for j in body.carried():
        w.emit(2, f"c{j} = v{j}")
    for j in range(len(body.positions)):  # the last iteration's values leave the loop
        w.emit(1, f"vals[oy{j} + last * dy{j}] = v{j}")
        w.emit(1, f"adj[oy{j} + last * dy{j}] = 0.0")
    return w.lines


def _reverse_source(body: Body) -> list:
    w = _Writer(body)
    carried = body.carried()
    w.emit(0, "@kernel")
    w.emit(0, "def reverse(vals, adj, cst, start, count, offs, consts):")
    w.prologue()
    for j in carried:  # the last iteration's carried values are read after the run only
        w.emit(1, f"ca{j} = {w.load('adj', f'oy{j} + last * dy{j}')}")
    # The first and last iterations read adjoints from memory; peeled, so that in the others
    # an adjoint starts as the constant -0.0 (``-0.0 + d`` is ``d``: no add, and no chain of
    # adds through the iterations; +0.0 would differ from the arena's 0.0 + d only in the
    # sign of a zero).
    w.emit(1, "it = last")
    _reverse_iteration(w, 1, last=True, first=False)
    w.emit(1, "for r in range(1, last):")
    w.emit(2, "it = last - r")
    _reverse_iteration(w, 2, last=False, first=False)
    w.emit(1, "it = 0")
    _reverse_iteration(w, 1, last=False, first=True)
    for j in carried:
        w.emit(1, f"adj[oy{j} - dy{j}] = ca{j}")
    return w.lines


def _reverse_iteration(w: _Writer, indent: int, last: bool, first: bool) -> None:
    """One iteration backwards: its adjoints' starts, its values again, and the adjoint
    contributions of its entries, last to first."""
    from .generate_forward import _scalar

    body = w.body
    carried = body.carried()
    w.per_iteration_constants(indent)
    for j, pos in enumerate(body.positions):
        if j in carried:
            w.emit(indent, f"a{j} = ca{j}")
        elif pos.ext or last:
            w.emit(indent, f"a{j} = {w.load('adj', f'oy{j} + it * dy{j}')}")
        else:
            w.emit(indent, f"a{j} = -0.0")
    for j in carried:  # contributions to the previous iteration's value (before the run: it 0)
        if body.positions[j].ext or first:
            w.emit(indent, f"ca{j} = {w.load('adj', f'oy{j} + (it - 1) * dy{j}')}")
        else:
            w.emit(indent, f"ca{j} = -0.0")
    w.values(indent, carried_in_registers=False, first=first)
    for j in range(len(body.positions) - 1, -1, -1):
        pos = body.positions[j]
        if not any(pos.wants):
            continue
        if pos.tag == TAG_COPY:
            partials = ["1.0"]
            names = {}
        else:
            op = OPS[pos.code]
            partials = op.partials
            names = {name: f"x{j}_{k}" for k, name in enumerate(op.inputs)}
            names.update(y=f"v{j}", c0=f"k{j}_0", c1=f"k{j}_1")
        for k, partial in enumerate(partials):
            if partial is None or not pos.wants[k]:
                continue
            if pos.tag == TAG_COPY:
                w.emit(indent, f"d = a{j}")
            else:
                local = _rename(_scalar(partial), names)
                if selects(partial):  # a mask: exactly 0 where it is (registry.adjoint_product)
                    w.emit(indent, f"d = where(({local}) == 0.0, 0.0, a{j} * ({local}))")
                else:
                    w.emit(indent, f"d = a{j} * ({local})")
            op = pos.operands[k]
            if op[0] == "mem":
                w.emit(indent, f"adj[{_at(f'b{j}_{k} + it * s{j}_{k}')}] += d")
            else:
                target = f"a{op[1]}" if op[0] == "reg" else f"ca{op[1]}"
                w.emit(indent, f"{target} = {w.rounded(f'{target} + d')}")


_HEADER = '''"""Generated by jitgrad.kernels.loops for one loop body; do not edit."""
# fmt: off
import numpy as np  # noqa: F401

from jitgrad.kernels._forward import raise_to, scalar_adjoints, scalar_forward  # noqa: F401
from jitgrad.kernels.expressions import *  # noqa: F401, F403
from jitgrad.kernels.jit import kernel
from jitgrad.kernels.layout import H_CODE_SHIFT, H_TAG, H_W0, H_W1, H_W2, TAG_SCALAR

'''

# One call for a whole value and gradient, for plans whose every other entry is a one-element
# op of the body's precision and that have no auxiliary ops (``Plan.driver``): those run through
# the interpreter's scalar dispatchers, here, rather than through the interpreter's kernels
# (Numba compiles a called kernel again inside a new caller: ~15 s for those). ``program`` are
# the arguments of ``replay._value_and_grad``, ``plan`` is ``Plan.arrays``.
_DRIVER = '''

@kernel
def _scalar_entries(inst, cst, vals, start, stop):
    for e in range(start, stop):
        h = inst[e, 0]
        oy, o0, o1, o2 = inst[e, 1], inst[e, 2], inst[e, 3], inst[e, 4]
        if h & H_TAG == TAG_SCALAR:
            x0 = float(vals[o0])
            x1 = float(vals[o1]) if o1 >= 0 else 0.0
            x2 = float(vals[o2]) if o2 >= 0 else 0.0
            vals[oy] = scalar_forward((h >> H_CODE_SHIFT) & 0xFFFF, x0, x1, x2, cst[e, 0],
                                      cst[e, 1])
        else:
            vals[oy] = vals[o0]


@kernel
def _scalar_adjoints(inst, cst, vals, adj, order, low, high):
    for j in range(high - 1, low - 1, -1):
        e = order[j]
        h = inst[e, 0]
        oy, o0, o1, o2 = inst[e, 1], inst[e, 2], inst[e, 3], inst[e, 4]
        w0, w1, w2 = (h & H_W0) != 0, (h & H_W1) != 0, (h & H_W2) != 0
        if h & H_TAG == TAG_SCALAR:
            x0 = float(vals[o0])
            x1 = float(vals[o1]) if o1 >= 0 else 0.0
            x2 = float(vals[o2]) if o2 >= 0 else 0.0
            d0, d1, d2 = scalar_adjoints((h >> H_CODE_SHIFT) & 0xFFFF, float(adj[oy]), x0,
                                         x1, x2, float(vals[oy]), cst[e, 0], cst[e, 1], w0,
                                         w1, w2)
            if w0:
                adj[o0] += d0
            if w1:
                adj[o1] += d1
            if w2:
                adj[o2] += d2
        elif w0:
            adj[o0] += adj[oy]


@kernel
def value_and_grad(program, x, grad, plan):
    """The value of the program at ``x`` and, written into ``grad``, its gradient (as
    ``replay._value_and_grad``)."""
    (inst, cst, general, meta, vals32, vals64, aux, auxvals, auxmeta, adj32, adj64, order,
     inputs, output) = program
    segments, bounds, runs, offsets, constants, zero32, zero64 = plan
    position = 0
    for i in range(inputs.shape[0]):
        offset, size = inputs[i, 0], inputs[i, 1]
        VALS[offset:offset + size] = x[position:position + size]
        position += size
    for s in range(segments.shape[0]):
        r = segments[s, 2]
        if r < 0:
            _scalar_entries(inst, cst, VALS, segments[s, 0], segments[s, 1])
        else:
            forward(VALS, ADJ, cst, runs[r, 0], runs[r, 1], offsets[r], constants[r])
    value = float(VALS[output[0]])
    for z in range(ZEROS.shape[0]):
        ADJ[ZEROS[z, 0]:ZEROS[z, 1]] = 0.0
    ADJ[output[0]] = 1.0
    for s in range(segments.shape[0] - 1, -1, -1):
        r = segments[s, 2]
        if r < 0:
            _scalar_adjoints(inst, cst, VALS, ADJ, order, bounds[s, 0], bounds[s, 1])
        elif runs[r, 2]:
            reverse(VALS, ADJ, cst, runs[r, 0], runs[r, 1], offsets[r], constants[r])
    for i in range(inputs.shape[0]):
        target = inputs[i, 3]
        if target >= 0:
            offset, size = inputs[i, 0], inputs[i, 1]
            grad[target:target + size] = ADJ[offset:offset + size]
    return value, 0
'''


def source(body: Body) -> str:
    bits = "32" if body.f32 else "64"
    driver = _DRIVER.replace("VALS", f"vals{bits}").replace("ADJ", f"adj{bits}").replace(
        "ZEROS", f"zero{bits}")
    return _HEADER + "\n".join(_forward_source(body)) + "\n\n\n" + \
        "\n".join(_reverse_source(body)) + "\n" + driver


# -- loading the generated kernels -----------------------------------------------------------
def module_path(body: Body) -> tuple:
    text = source(body)
    return generated_name("loop", text), text


def kernels(body: Body, compile_now: bool = True):
    """The generated module of ``body`` (its ``forward`` and ``reverse``); None when it was
    never written and ``compile_now`` is False."""
    name, text = module_path(body)
    return load_generated(name, text, compile_now)
