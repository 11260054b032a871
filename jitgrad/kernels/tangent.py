"""The tangent sweep: forward mode over the tape, one Numba call, no Python per entry.

Tangent buffers are laid out like the value arenas (same offsets) with one row per direction:
``tan64[j, offset:offset + size]`` is the tangent of a float64 node in direction ``j``. Each
entry's step adds its contribution into its output's tangent: the generated steps of
``_tangent.py`` for elementwise ops, reductions and matrix products, and the op's own linear
map for the linear kinds (the same strided/indexed helpers the reverse sweep uses as their
transposes). The buffers may hold garbage (they are reused from sweep to sweep): a node's
tangent is zeroed when the sweep first writes it.

``reuse`` (one int per entry, or empty) names a node already holding a unary op's partial
derivative, e.g. ``cos(x)`` for ``sin(x)`` when the tape also computed ``cos(x)`` (as the
reverse sweep recorded with ``create_graph`` does): node ``q >> 1``, negated when ``q & 1``.
The step then multiplies by that value instead of evaluating the transcendental again.

``active`` (one byte per node) says which tangents may be non-zero: ``ACTIVE`` is propagated
from inputs to outputs, so entries that no seed reaches cost nothing; a ``SEED`` node keeps
the tangent it was given and the entries writing it are skipped (a dual made from a value
computed on the tape). The sweep stops at a custom Function's entry (kind ``PYTHON``) and
returns its index: the caller runs the Function's ``jvp`` and resumes after it.
"""
import numpy as np

from ..ops.registry import (
    CAST,
    ELEMENTWISE,
    GATHER,
    MATMUL,
    PLACE,
    PYTHON,
    REDUCE,
    RESTRIDE,
    SCATTER,
)
from ._tangent import tangent_elementwise, tangent_matmul, tangent_reduce
from .jit import kernel
from .layout import (
    DTYPE_F32,
    DTYPE_F64,
    E_C0,
    E_C1,
    E_IN0,
    E_IN1,
    E_IN2,
    E_META,
    E_OP,
    E_OUT,
    N_DTYPE,
    N_ENTRY,
    N_OFFSET,
    N_SIZE,
)
from .sweep import (
    BLOCK,
    FUSE_MIN,
    MAX_RUN,
    indexed_add,
    last_readers,
    operands_fit,
    scratch_start,
    strided_add,
)

INACTIVE = 0
ACTIVE = 1
SEED = 2


@kernel
def _tangent_entry(e, kind, code, entries, consts, nodes, meta, vals, tan, a0, a1, a2, fresh):
    out = entries[e, E_OUT]
    in0 = entries[e, E_IN0]
    in1 = entries[e, E_IN1]
    in2 = entries[e, E_IN2]
    mo = entries[e, E_META]
    oy = nodes[out, N_OFFSET]
    o0 = nodes[in0, N_OFFSET] if in0 >= 0 else 0
    o1 = nodes[in1, N_OFFSET] if in1 >= 0 else 0
    o2 = nodes[in2, N_OFFSET] if in2 >= 0 else 0
    if kind == ELEMENTWISE:
        tangent_elementwise(code, vals, tan, o0, o1, o2, oy, o0, o1, o2, oy, nodes[out, N_SIZE],
                            a0, a1, a2, consts[e, E_C0], consts[e, E_C1], meta, mo, fresh)
        return
    if fresh:  # the first write: clear what an earlier sweep left
        tan[:, oy:oy + nodes[out, N_SIZE]] = 0.0
    if kind == REDUCE:
        tangent_reduce(code, vals, tan, o0, oy, nodes[in0, N_SIZE], consts[e, E_C0], meta, mo)
    elif kind == MATMUL:
        tangent_matmul(code, vals, tan, o0, o1, o2, oy, a0, a1, a2, meta, mo)
    else:
        # linear kinds: the tangent goes through the op's own map
        for r in range(tan.shape[0]):
            row = tan[r]
            if kind == RESTRIDE:    # y = strided read of x
                strided_add(row, oy, row, o0, meta, mo, False)
            elif kind == PLACE:     # y[strided region] += x
                strided_add(row, oy, row, o0, meta, mo, True)
            elif kind == GATHER:    # y[i] = x[index[i]]
                indexed_add(row, oy, row, o0, meta, mo, False)
            elif kind == SCATTER:   # y[index[i]] += x[i]
                indexed_add(row, oy, row, o0, meta, mo, True)


@kernel
def _scaled_by_node(vals, tan, oq, ox, oy, n, sign, fresh):
    """ty += sign * vals[q] * tx: a unary step whose partial is the value of node q."""
    if fresh:
        tan[:, oy:oy + n] = 0.0
    if tan.shape[0] == 1:
        ty = tan[0, oy:oy + n]  # separate views: the loop vectorizes
        tx = tan[0, ox:ox + n]
        q = vals[oq:oq + n]
        for i in range(n):
            ty[i] += sign * q[i] * tx[i]
        return
    for i in range(n):
        p = sign * vals[oq + i]
        for r in range(tan.shape[0]):
            tan[r, oy + i] += p * tan[r, ox + i]


@kernel
def _tangent_step(e, entries, consts, nodes, meta, vals32, vals64, tan32, tan64, kinds, active,
                  reuse):
    """Push tangents through entry ``e``. Returns True at a custom Function's entry (the
    caller hands it to Python), False otherwise."""
    out = entries[e, E_OUT]
    if active[out] == SEED:
        return False
    code = entries[e, E_OP]
    kind = kinds[code]
    if kind == PYTHON:
        return True
    in0 = entries[e, E_IN0]
    in1 = entries[e, E_IN1]
    in2 = entries[e, E_IN2]
    a0 = in0 >= 0 and active[in0] != INACTIVE
    a1 = in1 >= 0 and active[in1] != INACTIVE
    a2 = in2 >= 0 and active[in2] != INACTIVE
    if not (a0 or a1 or a2):
        return False
    fresh = active[out] == INACTIVE  # its first write: the slot holds garbage
    active[out] = ACTIVE
    if kind == CAST:
        o_in = nodes[in0, N_OFFSET]
        o_out = nodes[out, N_OFFSET]
        size = nodes[out, N_SIZE]
        if fresh:
            if nodes[out, N_DTYPE] == DTYPE_F32:
                tan32[:, o_out:o_out + size] = 0.0
            else:
                tan64[:, o_out:o_out + size] = 0.0
        for r in range(tan64.shape[0]):
            if nodes[in0, N_DTYPE] == DTYPE_F32:
                for i in range(size):
                    tan64[r, o_out + i] += tan32[r, o_in + i]
            else:
                for i in range(size):
                    tan32[r, o_out + i] += tan64[r, o_in + i]
    elif e < reuse.shape[0] and reuse[e] >= 0:
        oq = nodes[reuse[e] >> 1, N_OFFSET]
        sign = -1.0 if reuse[e] & 1 else 1.0
        o_in = nodes[in0, N_OFFSET]
        o_out = nodes[out, N_OFFSET]
        if nodes[out, N_DTYPE] == DTYPE_F32:
            _scaled_by_node(vals32, tan32, oq, o_in, o_out, nodes[out, N_SIZE], sign, fresh)
        else:
            _scaled_by_node(vals64, tan64, oq, o_in, o_out, nodes[out, N_SIZE], sign, fresh)
    elif nodes[out, N_DTYPE] == DTYPE_F32:
        _tangent_entry(e, kind, code, entries, consts, nodes, meta, vals32, tan32,
                       a0, a1, a2, fresh)
    else:
        _tangent_entry(e, kind, code, entries, consts, nodes, meta, vals64, tan64,
                       a0, a1, a2, fresh)
    return False


@kernel
def tangent_sweep(entries, consts, nodes, meta, vals32, vals64, tan32, tan64, start, stop,
                  kinds, active, reuse):
    """Push tangents through entries ``[start, stop)``, first to last. Returns ``stop``, or
    the index of the first custom-Function entry met (nothing after it was touched)."""
    for e in range(start, stop):
        if _tangent_step(e, entries, consts, nodes, meta, vals32, vals64, tan32, tan64, kinds,
                         active, reuse):
            return e
    return stop


# -- blocked runs ---------------------------------------------------------------------------
# A run of elementwise entries over arrays of one size makes one memory pass per entry, each
# reading and writing whole tangents: at 1e6 elements every pass goes to main memory. The
# fused sweep walks such a run block by block instead (every entry over elements [s, s +
# BLOCK), then the next block), so a block's tangents stay in cache from one entry to the
# next, and the tangents nobody reads after the run (not the caller's, not read by a later
# entry) live in per-entry scratch columns that are reused by every block: they never reach
# main memory at all. Block size, run length and the smallest output swept this way are the
# reverse sweep's (kernels/sweep.py).


@kernel
def _has_python(entries, kinds, start, stop):
    """Whether entries ``[start, stop)`` hold a custom Function's (whose inputs are not all
    in the entry rows)."""
    for e in range(start, stop):
        if kinds[entries[e, E_OP]] == PYTHON:
            return True
    return False


@kernel
def _fusable(e, entries, nodes, meta, kinds, active, reuse, size, dtype):
    """Entry ``e`` can join a blocked run over ``size`` elements of ``dtype``: elementwise,
    every operand of the output's shape, no seed, no partial taken from another node."""
    out = entries[e, E_OUT]
    if kinds[entries[e, E_OP]] != ELEMENTWISE or active[out] == SEED:
        return False
    if (e < reuse.shape[0] and reuse[e] >= 0) or nodes[out, N_DTYPE] != dtype:
        return False
    return nodes[out, N_SIZE] == size and operands_fit(e, entries, nodes, meta, size)


@kernel
def _blocked_run(first, stop, entries, consts, nodes, meta, vals, tan, active, keep, last,
                 scratch):
    """Entries ``[first, stop)`` (see ``_fusable``) block by block. Column offsets of the
    tangents: ``base + s`` in block ``s`` for a node kept in the buffer, the fixed ``base`` of
    its scratch slot for one that is not."""
    m = stop - first
    n = nodes[entries[first, E_OUT], N_SIZE]
    runs = np.zeros(m, np.bool_)
    flags = np.zeros((m, 4), np.bool_)     # operand 0-2 active, output fresh
    offsets = np.zeros((m, 4), np.int64)  # values of operands 0-2 and output
    bases = np.zeros((m, 4), np.int64)    # tangents of the same
    moves = np.ones((m, 4), np.int64)     # 1: the tangent's offset moves with the block
    in_scratch = np.zeros(m, np.bool_)
    for j in range(m):
        e = first + j
        out = entries[e, E_OUT]
        any_active = False
        for f in range(3):
            node = entries[e, E_IN0 + f]
            if node < 0:
                continue
            offsets[j, f] = bases[j, f] = nodes[node, N_OFFSET]
            flags[j, f] = active[node] != INACTIVE
            any_active = any_active or flags[j, f]
            q = nodes[node, N_ENTRY] - first
            if 0 <= q < j and in_scratch[q]:  # written by an earlier entry of the run
                bases[j, f] = scratch + q * BLOCK
                moves[j, f] = 0
        offsets[j, 3] = bases[j, 3] = nodes[out, N_OFFSET]
        if not any_active:
            continue
        runs[j] = True
        flags[j, 3] = active[out] == INACTIVE
        active[out] = ACTIVE
        if scratch >= 0 and keep[out] == 0 and last[out] < stop:
            in_scratch[j] = True
            bases[j, 3] = scratch + j * BLOCK
            moves[j, 3] = 0
            flags[j, 3] = True  # every block writes its slot first
    for s in range(0, n, BLOCK):
        count = min(BLOCK, n - s)
        for j in range(m):
            if not runs[j]:
                continue
            e = first + j
            tangent_elementwise(
                entries[e, E_OP], vals, tan,
                offsets[j, 0] + s, offsets[j, 1] + s, offsets[j, 2] + s, offsets[j, 3] + s,
                bases[j, 0] + moves[j, 0] * s, bases[j, 1] + moves[j, 1] * s,
                bases[j, 2] + moves[j, 2] * s, bases[j, 3] + moves[j, 3] * s,
                count, flags[j, 0], flags[j, 1], flags[j, 2], consts[e, E_C0], consts[e, E_C1],
                meta, entries[e, E_META], flags[j, 3])


@kernel
def tangent_sweep_fused(entries, consts, nodes, meta, vals32, vals64, tan32, tan64, start,
                        stop, kinds, active, reuse, keep):
    """``tangent_sweep`` for a caller that reads only the tangents of the nodes marked in
    ``keep`` afterwards: runs of large elementwise entries go block by block (see above),
    their other tangents in the scratch columns after the nodes' (when the buffers have
    them: ``SWEEP_SCRATCH`` columns each)."""
    last = np.empty(0, np.int64)  # made when a run first needs it
    scratch32 = scratch64 = -2
    e = start
    while e < stop:
        out = entries[e, E_OUT]
        size = nodes[out, N_SIZE]
        dtype = nodes[out, N_DTYPE]
        end = e
        if size >= FUSE_MIN:
            while (end < stop and end - e < MAX_RUN
                   and _fusable(end, entries, nodes, meta, kinds, active, reuse, size, dtype)):
                end += 1
        if end - e >= 2:
            if last.shape[0] == 0:
                last = last_readers(entries, start, stop, nodes.shape[0])
                scratch32 = scratch_start(nodes, tan32.shape[1], DTYPE_F32)
                scratch64 = scratch_start(nodes, tan64.shape[1], DTYPE_F64)
                if _has_python(entries, kinds, start, stop):
                    scratch32 = scratch64 = -1  # its jvp reads tangents the rows do not name
            if dtype == DTYPE_F32:
                _blocked_run(e, end, entries, consts, nodes, meta, vals32, tan32, active, keep,
                             last, scratch32)
            else:
                _blocked_run(e, end, entries, consts, nodes, meta, vals64, tan64, active, keep,
                             last, scratch64)
            e = end
            continue
        if _tangent_step(e, entries, consts, nodes, meta, vals32, vals64, tan32, tan64, kinds,
                         active, reuse):
            return e
        e += 1
    return stop
