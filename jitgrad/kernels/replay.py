"""Replay of compiled tapes: forward values, reverse adjoints and guards, in Numba.

A compiled tape (:mod:`jitgrad.compile`) keeps the recorded tables of the core tape and,
for replaying them fast, a compact copy: one instruction row per entry,

    inst[e] = [head, out offset, in0 offset, in1 offset, in2 offset]   (arena offsets)
    cst[e]  = [c0, c1]

``head`` packs how to run it (:func:`head`): the tag, the op kind, the output dtype, which
inputs want an adjoint, the opcode, and for general entries a row of ``general``
(``[size, meta offset, extra0, extra1]``). Most entries of scalar programs are one-element
elementwise ops (``TAG_SCALAR``: the generated inline ``scalar_forward`` /
``scalar_adjoints``, no call, no loop) or one-element reads ``x[i]`` (``TAG_COPY``);
everything else runs the per-kind steps: the generated forward steps of ``_forward.py``
and, in reverse, the generated reverse steps of ``_reverse.py`` and the strided/indexed
transposes of :mod:`jitgrad.kernels.sweep` (the same steps ``backward()`` runs).

Guards and recomputed selections are *auxiliary ops* run by the forward replay just before
the entry at their position: comparisons (and their logical combinations) recomputed from
the new values, masks and detached copies written into constant nodes, argmax/argmin
recomputed into a gather's indices, and guards that compare a recomputed result with the
one seen while recording. A failed guard stops the replay and returns its number + 1.
"""
import numpy as np

from ..ops.registry import CAST, ELEMENTWISE, GATHER, MATMUL, PLACE, REDUCE, RESTRIDE, SCATTER
from ._forward import (
    forward_elementwise,
    forward_matmul,
    forward_reduce,
    scalar_adjoints,
    scalar_forward,
)
from ._reverse import reverse_elementwise, reverse_matmul, reverse_reduce
from .jit import inline_kernel, kernel
from .layout import (  # noqa: F401 - the heads' fields, used here and by compile.py as R.*
    E_IN0,
    E_OUT,
    H_CODE_SHIFT,
    H_F32,
    H_KIND_SHIFT,
    H_ROW_SHIFT,
    H_TAG,
    H_W0,
    H_W1,
    H_W2,
    TAG_COPY,
    TAG_GENERAL,
    TAG_SCALAR,
)
from .sweep import indexed_add, strided_add

# -- instructions (their heads: layout.py) ---------------------------------------------------
G_SIZE = 0     # output size (input size for reductions)
G_META = 1     # meta offset, -1 if none
G_EXTRA0 = 2   # reduce: output size; place: how to start the output (below)
G_EXTRA1 = 3   # place: offset of the base values
G_WIDTH = 4

PLACE_ACCUMULATE = 0  # another entry of the same concatenation started the output
PLACE_ZERO = 1        # first part: start from zeros
PLACE_BASE = 2        # first part: start from the parts that were not recorded (constants)


def head(tag: int, kind: int, f32: bool, wants: tuple, code: int, row: int) -> int:
    """Pack an instruction head (see the module docstring)."""
    value = tag | (kind << H_KIND_SHIFT) | (code << H_CODE_SHIFT) | (row << H_ROW_SHIFT)
    if f32:
        value |= H_F32
    for k, want in enumerate(wants):
        if want:
            value |= H_W0 << k
    return value


# -- auxiliary ops ----------------------------------------------------------------------------
X_POS = 0          # run before this entry (= entry count: after the last)
X_OP = 1
X_DST_SPACE = 2    # where results go / operands come from: SPACE_* below
X_DST = 3
X_A_SPACE = 4
X_A = 5
X_B_SPACE = 6
X_B = 7
X_SIZE = 8         # elements of the result
X_BMETA = 9        # broadcast layout in ``auxmeta`` (-1: operands have the result's size)
X_EXPECT = 10      # offset in ``auxvals`` of the values seen while recording
X_GUARD = 11       # guard number, -1 when the result is not checked
X_WIDTH = 12

SPACE_F32 = 0      # the float32 value arena
SPACE_F64 = 1      # the float64 value arena
SPACE_AUX = 2      # auxvals: selection results, their constants, the expected values
SPACE_META = 3     # the meta buffer (gather indices)

A_GT, A_GE, A_LT, A_LE, A_EQ, A_NE = 0, 1, 2, 3, 4, 5
A_AND, A_OR = 6, 7
A_NOT, A_ISNAN, A_ISFINITE, A_SIGN = 8, 9, 10, 11
A_COPY = 12        # dst = a (a mask, a detached value)
A_CHECK = 13       # guard only: a == expected
A_ARGMAX, A_ARGMIN = 14, 15   # flat positions of the extreme of each fiber of a

A_BINARY = (A_GT, A_GE, A_LT, A_LE, A_EQ, A_NE, A_AND, A_OR)
A_NAMES = {A_GT: "gt", A_GE: "ge", A_LT: "lt", A_LE: "le", A_EQ: "eq", A_NE: "ne",
           A_AND: "logical_and", A_OR: "logical_or", A_NOT: "logical_not",
           A_ISNAN: "isnan", A_ISFINITE: "isfinite", A_SIGN: "sign", A_COPY: "copy",
           A_CHECK: "value", A_ARGMAX: "argmax", A_ARGMIN: "argmin"}


@inline_kernel
def _load(space, i, vals32, vals64, auxvals, meta):
    if space == SPACE_F64:
        return vals64[i]
    if space == SPACE_AUX:
        return auxvals[i]
    if space == SPACE_F32:
        return float(vals32[i])
    return float(meta[i])


@inline_kernel
def _store(space, i, value, vals32, vals64, auxvals, meta):
    if space == SPACE_F64:
        vals64[i] = value
    elif space == SPACE_AUX:
        auxvals[i] = value
    elif space == SPACE_F32:
        vals32[i] = value
    else:
        meta[i] = np.int64(value)


@inline_kernel
def _same(a, b):
    """Equal, counting NaN equal to NaN (a guard on a NaN value holds while it stays NaN)."""
    return a == b or (a != a and b != b)


@inline_kernel
def _apply(op, a, b):
    if op == A_GT:
        return 1.0 if a > b else 0.0
    if op == A_GE:
        return 1.0 if a >= b else 0.0
    if op == A_LT:
        return 1.0 if a < b else 0.0
    if op == A_LE:
        return 1.0 if a <= b else 0.0
    if op == A_EQ:
        return 1.0 if a == b else 0.0
    if op == A_NE:
        return 1.0 if a != b else 0.0
    if op == A_AND:
        return 1.0 if (a != 0.0 and b != 0.0) else 0.0
    if op == A_OR:
        return 1.0 if (a != 0.0 or b != 0.0) else 0.0
    if op == A_NOT:
        return 1.0 if a == 0.0 else 0.0
    if op == A_ISNAN:
        return 1.0 if a != a else 0.0
    if op == A_ISFINITE:
        return 1.0 if np.isfinite(a) else 0.0
    if op == A_SIGN:
        return 1.0 if a > 0 else (-1.0 if a < 0 else 0.0)  # 0 for nan, as torch.sign
    return a  # A_COPY


@kernel
def _extreme(auxmeta, bm, is_max, flat, out, vals32, vals64, auxvals, meta, space, base):
    """For each fiber j (``auxmeta[bm:] = [count, length, stride, start...]``) where its
    first largest (smallest) element is, NaN counting as the extreme (as np.argmax): the
    flat position in the array, or (``flat`` False) the index along the fiber."""
    count = auxmeta[bm]
    length = auxmeta[bm + 1]
    stride = auxmeta[bm + 2]
    for j in range(count):
        start = auxmeta[bm + 3 + j]
        best = start
        best_value = _load(space, base + start, vals32, vals64, auxvals, meta)
        for k in range(1, length):
            if best_value != best_value:
                break
            p = start + k * stride
            v = _load(space, base + p, vals32, vals64, auxvals, meta)
            if v != v or (v > best_value if is_max else v < best_value):
                best = p
                best_value = v
        out[j] = best if flat else (best - start) // stride


@kernel
def run_aux(a, aux, auxvals, auxmeta, meta, vals32, vals64):
    """Run auxiliary op ``a``; returns its guard number + 1 when the guard fails, else 0."""
    op = aux[a, X_OP]
    size = aux[a, X_SIZE]
    dst_space = aux[a, X_DST_SPACE]
    dst = aux[a, X_DST]
    a_space = aux[a, X_A_SPACE]
    oa = aux[a, X_A]
    guard = aux[a, X_GUARD]
    expect = aux[a, X_EXPECT]
    bm = aux[a, X_BMETA]
    if op == A_CHECK:
        for i in range(size):
            value = _load(a_space, oa + i, vals32, vals64, auxvals, meta)
            if not _same(value, auxvals[expect + i]):
                return guard + 1
        return 0
    if op == A_ARGMAX or op == A_ARGMIN:
        # X_B: 1 for flat positions (a gather's indices), 0 for indices along the dim
        found = np.empty(size, np.int64)
        _extreme(auxmeta, bm, op == A_ARGMAX, aux[a, X_B] == 1, found, vals32, vals64,
                 auxvals, meta, a_space, oa)
        if guard >= 0:
            for j in range(size):
                if found[j] != np.int64(auxvals[expect + j]):
                    return guard + 1
        if dst >= 0:
            for j in range(size):
                _store(dst_space, dst + j, float(found[j]), vals32, vals64, auxvals, meta)
        return 0
    b_space = aux[a, X_B_SPACE]
    ob = aux[a, X_B]
    if bm < 0:  # operands have the result's size
        for i in range(size):
            x = _load(a_space, oa + i, vals32, vals64, auxvals, meta)
            y = _load(b_space, ob + i, vals32, vals64, auxvals, meta) if ob >= 0 else 0.0
            _store(dst_space, dst + i, _apply(op, x, y), vals32, vals64, auxvals, meta)
    else:
        ndim = auxmeta[bm]
        shape = auxmeta[bm + 1:bm + 1 + ndim]
        sa = auxmeta[bm + 1 + ndim:bm + 1 + 2 * ndim]
        sb = auxmeta[bm + 1 + 2 * ndim:bm + 1 + 3 * ndim]
        index = np.zeros(ndim, np.int64)
        pa = pb = 0
        for i in range(size):
            x = _load(a_space, oa + pa, vals32, vals64, auxvals, meta)
            y = _load(b_space, ob + pb, vals32, vals64, auxvals, meta) if ob >= 0 else 0.0
            _store(dst_space, dst + i, _apply(op, x, y), vals32, vals64, auxvals, meta)
            d = ndim - 1
            while d >= 0:
                index[d] += 1
                pa += sa[d]
                pb += sb[d]
                if index[d] < shape[d]:
                    break
                pa -= sa[d] * shape[d]
                pb -= sb[d] * shape[d]
                index[d] = 0
                d -= 1
    if guard >= 0:
        for i in range(size):
            value = _load(dst_space, dst + i, vals32, vals64, auxvals, meta)
            if not _same(value, auxvals[expect + i]):
                return guard + 1
    return 0


# -- forward steps of the linear kinds and matrix products ---------------------------------
@kernel
def strided_copy(dst, dst_base, src, src_base, meta, mo):
    """dst[dst_base + i] = src[src_base + offset + i . strides] for every multi-index i of
    the region ``meta[mo:] = ndim, shape, strides, offset`` (a view, materialized)."""
    ndim = meta[mo]
    offset = meta[mo + 1 + 2 * ndim]
    count = 1
    for d in range(ndim):
        count *= meta[mo + 1 + d]
    index = np.zeros(ndim, np.int64)
    p = offset
    for i in range(count):
        dst[dst_base + i] = src[src_base + p]
        d = ndim - 1
        while d >= 0:
            index[d] += 1
            p += meta[mo + 1 + ndim + d]
            if index[d] < meta[mo + 1 + d]:
                break
            p -= meta[mo + 1 + ndim + d] * meta[mo + 1 + d]
            index[d] = 0
            d -= 1


@kernel
def gather_copy(dst, dst_base, src, src_base, meta, mo):
    """dst[dst_base + i] = src[src_base + index[i]], ``meta[mo:] = count, index``."""
    for i in range(meta[mo]):
        dst[dst_base + i] = src[src_base + meta[mo + 1 + i]]


@kernel
def _forward_general(kind, code, row, oy, o0, o1, o2, c0, c1, general, meta, vals):
    size = general[row, G_SIZE]
    mo = general[row, G_META]
    if kind == ELEMENTWISE:
        forward_elementwise(code, vals, o0, o1, o2, oy, size, c0, c1, meta, mo)
    elif kind == REDUCE:
        forward_reduce(code, vals, o0, oy, size, general[row, G_EXTRA0], c0, meta, mo)
    elif kind == RESTRIDE:
        strided_copy(vals, oy, vals, o0, meta, mo)
    elif kind == GATHER:
        gather_copy(vals, oy, vals, o0, meta, mo)
    elif kind == PLACE:
        start = general[row, G_EXTRA0]
        if start == PLACE_ZERO:
            vals[oy:oy + size] = 0.0
        elif start == PLACE_BASE:
            base = general[row, G_EXTRA1]
            vals[oy:oy + size] = vals[base:base + size]
        strided_add(vals, oy, vals, o0, meta, mo, True)
    elif kind == SCATTER:
        vals[oy:oy + size] = 0.0
        indexed_add(vals, oy, vals, o0, meta, mo, True)
    elif kind == MATMUL:
        forward_matmul(code, vals, o0, o1, o2, oy, meta, mo)


@kernel
def forward_replay(inst, cst, general, meta, vals32, vals64, aux, auxvals, auxmeta):
    """Recompute every entry in order, running each auxiliary op just before the entry at
    its position. Returns 0, or the number + 1 of the first guard that failed (the values
    after it are not computed)."""
    return forward_entries(inst, cst, general, meta, vals32, vals64, aux, auxvals, auxmeta,
                           0, inst.shape[0])


@kernel
def forward_entries(inst, cst, general, meta, vals32, vals64, aux, auxvals, auxmeta, start,
                    stop):
    """:func:`forward_replay` of the entries ``start:stop`` and the auxiliary ops at their
    positions (and after the last entry, when ``stop`` is the end)."""
    n_aux = aux.shape[0]
    a = 0
    while a < n_aux and aux[a, X_POS] < start:
        a += 1
    for e in range(start, stop):
        while a < n_aux and aux[a, X_POS] == e:
            status = run_aux(a, aux, auxvals, auxmeta, meta, vals32, vals64)
            if status:
                return status
            a += 1
        h = inst[e, 0]
        tag = h & H_TAG
        oy = inst[e, 1]
        o0 = inst[e, 2]
        o1 = inst[e, 3]
        o2 = inst[e, 4]
        if tag == TAG_SCALAR:
            code = (h >> H_CODE_SHIFT) & 0xFFFF
            if h & H_F32:
                x0 = float(vals32[o0])
                x1 = float(vals32[o1]) if o1 >= 0 else 0.0
                x2 = float(vals32[o2]) if o2 >= 0 else 0.0
                vals32[oy] = scalar_forward(code, x0, x1, x2, cst[e, 0], cst[e, 1])
            else:
                x0 = vals64[o0]
                x1 = vals64[o1] if o1 >= 0 else 0.0
                x2 = vals64[o2] if o2 >= 0 else 0.0
                vals64[oy] = scalar_forward(code, x0, x1, x2, cst[e, 0], cst[e, 1])
        elif tag == TAG_COPY:
            if h & H_F32:
                vals32[oy] = vals32[o0]
            else:
                vals64[oy] = vals64[o0]
        else:
            kind = (h >> H_KIND_SHIFT) & 15
            code = (h >> H_CODE_SHIFT) & 0xFFFF
            row = h >> H_ROW_SHIFT
            if kind == CAST:
                size = general[row, G_SIZE]
                if h & H_F32:
                    for i in range(size):
                        vals32[oy + i] = vals64[o0 + i]
                else:
                    for i in range(size):
                        vals64[oy + i] = vals32[o0 + i]
            elif h & H_F32:
                _forward_general(kind, code, row, oy, o0, o1, o2, cst[e, 0], cst[e, 1],
                                 general, meta, vals32)
            else:
                _forward_general(kind, code, row, oy, o0, o1, o2, cst[e, 0], cst[e, 1],
                                 general, meta, vals64)
    if stop < inst.shape[0]:
        return 0
    while a < n_aux:
        status = run_aux(a, aux, auxvals, auxmeta, meta, vals32, vals64)
        if status:
            return status
        a += 1
    return 0


# -- reverse ----------------------------------------------------------------------------------
@kernel
def _reverse_general(kind, code, row, oy, o0, o1, o2, w0, w1, w2, c0, c1, general, meta,
                     vals, adj):
    size = general[row, G_SIZE]
    mo = general[row, G_META]
    if kind == ELEMENTWISE:
        reverse_elementwise(code, vals, adj, o0, o1, o2, oy, o0, o1, o2, oy, size, w0, w1, w2,
                            c0, c1, meta, mo)
    elif kind == MATMUL:
        reverse_matmul(code, vals, adj, o0, o1, o2, oy, w0, w1, w2, meta, mo)
    elif not w0:
        return
    elif kind == REDUCE:
        reverse_reduce(code, vals, adj, o0, oy, size, c0, meta, mo, False)
    elif kind == RESTRIDE:
        strided_add(adj, o0, adj, oy, meta, mo, True)
    elif kind == PLACE:
        strided_add(adj, o0, adj, oy, meta, mo, False)
    elif kind == GATHER:
        indexed_add(adj, o0, adj, oy, meta, mo, True)
    elif kind == SCATTER:
        indexed_add(adj, o0, adj, oy, meta, mo, False)


@kernel
def reverse_replay(inst, cst, general, meta, vals32, vals64, adj32, adj64, order):
    """Accumulate adjoints through the entries listed (ascending) in ``order``, last to
    first. The caller zeroes the adjoint buffers and seeds the outputs."""
    reverse_entries(inst, cst, general, meta, vals32, vals64, adj32, adj64, order, 0,
                    order.shape[0])


@kernel
def reverse_entries(inst, cst, general, meta, vals32, vals64, adj32, adj64, order, low,
                    high):
    """:func:`reverse_replay` of the entries ``order[low:high]``."""
    for j in range(high - 1, low - 1, -1):
        e = order[j]
        h = inst[e, 0]
        tag = h & H_TAG
        oy = inst[e, 1]
        o0 = inst[e, 2]
        o1 = inst[e, 3]
        o2 = inst[e, 4]
        w0 = (h & H_W0) != 0
        w1 = (h & H_W1) != 0
        w2 = (h & H_W2) != 0
        if tag == TAG_SCALAR:
            code = (h >> H_CODE_SHIFT) & 0xFFFF
            if h & H_F32:
                x0 = float(vals32[o0])
                x1 = float(vals32[o1]) if o1 >= 0 else 0.0
                x2 = float(vals32[o2]) if o2 >= 0 else 0.0
                d0, d1, d2 = scalar_adjoints(code, float(adj32[oy]), x0, x1, x2,
                                             float(vals32[oy]), cst[e, 0], cst[e, 1],
                                             w0, w1, w2)
                if w0:
                    adj32[o0] += d0
                if w1:
                    adj32[o1] += d1
                if w2:
                    adj32[o2] += d2
            else:
                x0 = vals64[o0]
                x1 = vals64[o1] if o1 >= 0 else 0.0
                x2 = vals64[o2] if o2 >= 0 else 0.0
                d0, d1, d2 = scalar_adjoints(code, adj64[oy], x0, x1, x2, vals64[oy],
                                             cst[e, 0], cst[e, 1], w0, w1, w2)
                if w0:
                    adj64[o0] += d0
                if w1:
                    adj64[o1] += d1
                if w2:
                    adj64[o2] += d2
        elif tag == TAG_COPY:
            if w0:
                if h & H_F32:
                    adj32[o0] += adj32[oy]
                else:
                    adj64[o0] += adj64[oy]
        else:
            kind = (h >> H_KIND_SHIFT) & 15
            code = (h >> H_CODE_SHIFT) & 0xFFFF
            row = h >> H_ROW_SHIFT
            if kind == CAST:
                if w0:
                    size = general[row, G_SIZE]
                    if h & H_F32:  # float64 input, float32 output
                        for i in range(size):
                            adj64[o0 + i] += adj32[oy + i]
                    else:
                        for i in range(size):
                            adj32[o0 + i] += adj64[oy + i]
            elif h & H_F32:
                _reverse_general(kind, code, row, oy, o0, o1, o2, w0, w1, w2, cst[e, 0],
                                 cst[e, 1], general, meta, vals32, adj32)
            else:
                _reverse_general(kind, code, row, oy, o0, o1, o2, w0, w1, w2, cst[e, 0],
                                 cst[e, 1], general, meta, vals64, adj64)


# -- analysis of the tables -------------------------------------------------------------------
@kernel
def propagate_flags(entries, flags):
    """flags[out] |= flags[in] for every entry, in order: which nodes depend on the flagged
    ones (the inputs that are differentiated)."""
    for e in range(entries.shape[0]):
        out = entries[e, E_OUT]
        for k in range(E_IN0, E_IN0 + 3):
            node = entries[e, k]
            if node >= 0 and flags[node]:
                flags[out] = 1
                break


@kernel
def needed_entries(entries, grad, roots):
    """Ascending indices of the entries the adjoints of ``roots`` flow through (the nodes
    with ``grad`` set)."""
    reached = np.zeros(grad.shape[0], np.uint8)
    for r in roots:
        if grad[r]:
            reached[r] = 1
    keep = np.zeros(entries.shape[0], np.uint8)
    count = 0
    for e in range(entries.shape[0] - 1, -1, -1):
        if not reached[entries[e, E_OUT]]:
            continue
        keep[e] = 1
        count += 1
        for k in range(E_IN0, E_IN0 + 3):
            node = entries[e, k]
            if node >= 0 and grad[node]:
                reached[node] = 1
    order = np.empty(count, np.int64)
    j = 0
    for e in range(entries.shape[0]):
        if keep[e]:
            order[j] = e
            j += 1
    return order


# -- whole replays: batches, and entry points for the user's own Numba code --------------------
class GuardFailed(Exception):
    """Raised inside Numba by :func:`replay_value_and_grad` when a guard of the program no
    longer holds (the tape must be recorded again, from Python)."""


@kernel
def _write_inputs(x, inputs, vals32, vals64):
    """x holds the traced input leaves one after the other; ``inputs`` rows are
    ``[offset, size, float32?, gradient offset or -1]``."""
    position = 0
    for i in range(inputs.shape[0]):
        offset, size = inputs[i, 0], inputs[i, 1]
        if inputs[i, 2]:
            vals32[offset:offset + size] = x[position:position + size]
        else:  # as slices: a copy loop, without an index check per element
            vals64[offset:offset + size] = x[position:position + size]
        position += size


@kernel
def _value_and_grad(program, x, grad, want_grad):
    (inst, cst, general, meta, vals32, vals64, aux, auxvals, auxmeta, adj32, adj64, order,
     inputs, output) = program
    _write_inputs(x, inputs, vals32, vals64)
    status = forward_replay(inst, cst, general, meta, vals32, vals64, aux, auxvals, auxmeta)
    if status:
        return np.nan, status
    value = float(vals32[output[0]]) if output[1] else vals64[output[0]]
    if not want_grad:
        return value, 0
    adj32[:] = 0.0
    adj64[:] = 0.0
    if output[1]:
        adj32[output[0]] = 1.0
    else:
        adj64[output[0]] = 1.0
    reverse_replay(inst, cst, general, meta, vals32, vals64, adj32, adj64, order)
    read_gradient(inputs, adj32, adj64, grad)
    return value, 0


@kernel
def read_gradient(inputs, adj32, adj64, grad):
    """grad <- the adjoints of the differentiated inputs (``inputs`` as in
    :func:`_write_inputs`), one after the other."""
    for i in range(inputs.shape[0]):
        target = inputs[i, 3]
        if target < 0:
            continue
        offset, size = inputs[i, 0], inputs[i, 1]
        if inputs[i, 2]:
            grad[target:target + size] = adj32[offset:offset + size]
        else:
            grad[target:target + size] = adj64[offset:offset + size]


@kernel
def replay_value_and_grad(program, x, grad):
    """The value of a compiled tape's scalar output at ``x`` (every traced input leaf,
    flattened, one after the other), its gradient written into ``grad`` (the differentiated
    leaves, one after the other). ``program`` is ``CompiledTape.numba_program()``; callable
    from the user's Numba-compiled code. Raises :class:`GuardFailed` when a guard fails."""
    value, status = _value_and_grad(program, x, grad, True)
    if status:
        raise GuardFailed("a guard of the compiled tape failed: record it again from Python")
    return value


@kernel
def replay_value(program, x):
    """The value of a compiled tape's scalar output at ``x`` (see
    :func:`replay_value_and_grad`)."""
    value, status = _value_and_grad(program, x, x, False)
    if status:
        raise GuardFailed("a guard of the compiled tape failed: record it again from Python")
    return value


@kernel
def batch_value_and_grad(program, xs, values, grads, status):
    """``replay_value_and_grad`` for each row of ``xs`` (status per row: 0, or the failed
    guard + 1, and then nothing is written for that row)."""
    for b in range(xs.shape[0]):
        value, failed = _value_and_grad(program, xs[b], grads[b], True)
        status[b] = failed
        values[b] = value


@kernel
def fold_candidates(entries, static, allowed):
    """Entries (``allowed``) whose inputs are all ``static`` (constant): their outputs are
    static too. Returns a 0/1 flag per entry; updates ``static``."""
    found = np.zeros(entries.shape[0], np.uint8)
    for e in range(entries.shape[0]):
        if not allowed[e]:
            continue
        constant = True
        for k in range(E_IN0, E_IN0 + 3):
            node = entries[e, k]
            if node >= 0 and not static[node]:
                constant = False
                break
        if constant:
            found[e] = 1
            static[entries[e, E_OUT]] = 1
    return found


@kernel
def live_entries(entries, dropped, live, live_entry, bases):
    """Mark (backwards) the entries whose output is ``live`` and the nodes they read;
    ``bases[node]``: the base node of a concatenation (-1 if none). Returns whether
    anything new was marked."""
    changed = False
    for e in range(entries.shape[0] - 1, -1, -1):
        out = entries[e, E_OUT]
        if dropped[e] or live_entry[e] or not live[out]:
            continue
        live_entry[e] = 1
        changed = True
        for k in range(E_IN0, E_IN0 + 3):
            node = entries[e, k]
            if node >= 0:
                live[node] = 1
        if bases[out] >= 0:
            live[bases[out]] = 1
    return changed
