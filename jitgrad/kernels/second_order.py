"""The second-order sweep: a Hessian-vector product in one Numba call, no Python per entry.

Forward over reverse on the recorded tape. A tangent sweep gives every value's tangent along
the direction ``v``; then one reverse sweep carries two buffers per node, laid out like the
value arenas: the adjoint ``g`` (as ``backward`` computes it) and its tangent ``dg`` along
``v``. Each entry's step (generated into ``_hvp.py`` for the elementwise, reduction and
matmul kinds; the op's own transpose, applied to both buffers, for the linear kinds) adds
``g * P`` into its inputs' adjoints and ``dg * P + g * dP`` into their tangents. The tangent
of the adjoint reaching an input is ``H v``.

Only the tangents some step reads are computed: a first pass over the reached entries marks
them (and, transitively, the tangents they are computed from); the others are marked
``SEED`` before the tangent sweep, which then leaves them alone. A marked tangent that no
seed reaches is cleared, so the steps read a zero instead of testing for it.

The sweep refuses (status ``UNSUPPORTED``, nothing the caller sees is written) a graph with
an op that has no second-order step or with a value modified in place since it was read:
the caller then takes the recorded (``create_graph``) path, whose rules or errors apply.
"""
import numpy as np

from ..ops.registry import CAST, ELEMENTWISE, GATHER, MATMUL, PLACE, REDUCE, RESTRIDE, SCATTER
from ._hvp import hvp_elementwise, hvp_matmul, hvp_reduce, keep_elementwise
from .jit import kernel
from .layout import (
    DTYPE_F32,
    E_C0,
    E_C1,
    E_IN0,
    E_META,
    E_OP,
    E_OUT,
    E_VER0,
    E_WIDTH,
    FLOWS_SHIFT,
    HAS_SECOND_ORDER,
    KEEPS_PARTIAL,
    N_DTYPE,
    N_GRAD,
    N_OFFSET,
    N_SIZE,
    N_WIDTH,
    OK,
    WRITES_SHIFT,
)
from .sweep import _table, cast_back, indexed_add, mark_reached, strided_add
from .tangent import ACTIVE, INACTIVE, SEED, tangent_sweep

UNSUPPORTED = 3  # after layout's OK, ERR_FREED, ERR_VERSION

_NO_REUSE = np.zeros(0, np.int64)


@kernel
def _mark_needed(entries, nodes, versions, lowest, n_entries, reached, second_order, needed):
    """Mark the tangents the reverse steps read, and those they are computed from. Returns
    OK, or UNSUPPORTED for an entry without a second-order step or one whose operands were
    modified in place since it was recorded."""
    for e in range(n_entries - 1, lowest - 1, -1):
        out = entries[e, E_OUT]
        if not reached[out]:
            continue
        mask = second_order[entries[e, E_OP]]
        if not mask & HAS_SECOND_ORDER or versions[out] != 0:
            return UNSUPPORTED
        for k in range(3):
            node = entries[e, E_IN0 + k]
            if node >= 0:
                if versions[node] != entries[e, E_VER0 + k]:
                    return UNSUPPORTED
                if (mask >> k) & 1:
                    needed[node] = 1
            elif (mask >> k) & 1:
                return UNSUPPORTED  # a tangent read of an input the recording left out
        if (mask >> 3) & 1:
            needed[out] = 1
        if needed[out]:  # then so are the tangents it is computed from
            for k in range(3):
                node = entries[e, E_IN0 + k]
                if node >= 0 and (mask >> (FLOWS_SHIFT + k)) & 1:
                    needed[node] = 1
    return OK


@kernel
def _second_order_entry(e, kind, code, entries, consts, nodes, meta, vals, tan, adj, adj_tan,
                        part, fresh, active):
    """Entry ``e``'s step. Bit k of ``fresh``: input k's buffers are written here for the
    first time and were not cleared: the step assigns instead of adding."""
    out = entries[e, E_OUT]
    in0 = entries[e, E_IN0]
    in1 = entries[e, E_IN0 + 1]
    in2 = entries[e, E_IN0 + 2]
    mo = entries[e, E_META]
    oy = nodes[out, N_OFFSET]
    o0 = nodes[in0, N_OFFSET] if in0 >= 0 else 0
    o1 = nodes[in1, N_OFFSET] if in1 >= 0 else 0
    o2 = nodes[in2, N_OFFSET] if in2 >= 0 else 0
    # 0: no gradient wanted, 1: accumulate, 2: assign (the first write)
    w0 = (2 if fresh & 1 else 1) if in0 >= 0 and nodes[in0, N_GRAD] != 0 else 0
    w1 = (2 if fresh & 2 else 1) if in1 >= 0 and nodes[in1, N_GRAD] != 0 else 0
    w2 = (2 if fresh & 4 else 1) if in2 >= 0 and nodes[in2, N_GRAD] != 0 else 0
    if kind == ELEMENTWISE:
        hvp_elementwise(code, vals, tan, adj, adj_tan, part, o0, o1, o2, oy,
                        nodes[out, N_SIZE], w0, w1, w2, consts[e, E_C0], consts[e, E_C1], meta,
                        mo)
    elif not w0 and not w1 and not w2:
        return
    elif kind == REDUCE:
        hvp_reduce(code, vals, tan, adj, adj_tan, o0, oy, nodes[in0, N_SIZE], consts[e, E_C0],
                   meta, mo, fresh & 1 != 0)
    elif kind == MATMUL:
        # an operand without a tangent contributes no term (its slot holds zeros anyway)
        t0 = active[in0] != INACTIVE
        t1 = active[in1] != INACTIVE
        hvp_matmul(code, vals, tan, adj, adj_tan, o0, o1, o2, oy, w0, w1, w2, t0, t1, meta,
                   mo)
    else:
        # linear kinds: dP = 0, both buffers go through the op's transpose
        for buffer in (adj, adj_tan):
            if kind == RESTRIDE:
                strided_add(buffer, o0, buffer, oy, meta, mo, True)
            elif kind == PLACE:
                strided_add(buffer, o0, buffer, oy, meta, mo, False)
            elif kind == GATHER:
                indexed_add(buffer, o0, buffer, oy, meta, mo, True)
            elif kind == SCATTER:
                indexed_add(buffer, o0, buffer, oy, meta, mo, False)


@kernel
def _clear(buffer32, buffer64, nodes, node):
    start = nodes[node, N_OFFSET]
    size = nodes[node, N_SIZE]
    if nodes[node, N_DTYPE] == DTYPE_F32:
        buffer32[start:start + size] = 0.0
    else:
        buffer64[start:start + size] = 0.0


@kernel
def second_order_sweep(entry_bytes, node_bytes, versions_buffer, meta_buffer, vals32, vals64,
                       tan32, tan64, adj32, adj64, adj_tan32, adj_tan64, part32, part64, root,
                       start, kinds, sweep_masks, second_order, active, reached, ready, needed):
    """Entries from ``start`` on, seeds set in ``tan``/``active`` (one tangent row): the
    adjoint of ``root`` (seeded with 1) and its tangent at every node ``ready`` marks.
    ``part``: scratch for the partials kept from tangent steps for reverse steps.
    Returns OK, or the status that sends the caller to the recorded path (nothing it reads
    was written then)."""
    entries = _table(entry_bytes, E_WIDTH)
    consts = np.frombuffer(entry_bytes, np.float64).reshape(entries.shape)
    nodes = _table(node_bytes, N_WIDTH)
    versions = np.frombuffer(versions_buffer, np.int64)
    meta = np.frombuffer(meta_buffer, np.int64)
    n_entries = entries.shape[0]
    roots = np.full(1, root, np.int64)
    status, lowest, _ = mark_reached(entries, nodes, versions, roots, n_entries, reached,
                                     sweep_masks, np.empty(nodes.shape[0], np.int64))
    if status != OK:
        return status
    if lowest < start:  # the graph reaches below the recording: not this sweep's to take
        return UNSUPPORTED
    status = _mark_needed(entries, nodes, versions, lowest, n_entries, reached, second_order,
                          needed)
    if status != OK:
        return status
    for node in range(nodes.shape[0]):
        if not needed[node] and active[node] == INACTIVE:
            active[node] = SEED  # the tangent sweep skips the entries writing it
    row32 = tan32[0]
    row64 = tan64[0]
    for e in range(start, n_entries):
        code = entries[e, E_OP]
        out = entries[e, E_OUT]
        if second_order[code] & KEEPS_PARTIAL:
            if reached[out]:  # its reverse step reads the partial: evaluate it here once
                in0 = entries[e, E_IN0]
                # (a needed output's operand is needed: its activity is its own)
                has_tangent = active[out] != SEED and active[in0] != INACTIVE
                if has_tangent:
                    active[out] = ACTIVE
                o0 = nodes[in0, N_OFFSET]
                oy = nodes[out, N_OFFSET]
                if nodes[out, N_DTYPE] == DTYPE_F32:
                    keep_elementwise(code, vals32, row32, part32, o0, oy, nodes[out, N_SIZE],
                                     has_tangent, consts[e, E_C0], consts[e, E_C1])
                else:
                    keep_elementwise(code, vals64, row64, part64, o0, oy, nodes[out, N_SIZE],
                                     has_tangent, consts[e, E_C0], consts[e, E_C1])
                continue
        if tangent_sweep(entries, consts, nodes, meta, vals32, vals64, tan32, tan64, e, e + 1,
                         kinds, active, _NO_REUSE) != e + 1:
            return UNSUPPORTED  # a custom Function's entry (the caller checks for them first)
    for node in range(nodes.shape[0]):
        if needed[node] and active[node] == INACTIVE:
            _clear(row32, row64, nodes, node)  # read by a step, reached by no seed
    # the reverse sweep, as kernels/sweep.py's accumulate, on two buffers
    offset = nodes[root, N_OFFSET]
    if nodes[root, N_DTYPE] == DTYPE_F32:
        adj32[offset] = 1.0
        adj_tan32[offset] = 0.0
    else:
        adj64[offset] = 1.0
        adj_tan64[offset] = 0.0
    ready[root] = 1
    for e in range(n_entries - 1, lowest - 1, -1):
        out = entries[e, E_OUT]
        if not reached[out]:
            continue
        code = entries[e, E_OP]
        kind = kinds[code]
        mo = entries[e, E_META]
        # steps that write each element of an input's buffers exactly once assign on the
        # first write instead of clearing first
        whole = (kind == REDUCE or kind == CAST
                 or (kind == ELEMENTWISE and (mo < 0 or meta[mo] == 0)))
        fresh = 0
        for k in range(3):
            node = entries[e, E_IN0 + k]
            if node >= 0 and not ready[node] and nodes[node, N_GRAD]:
                ready[node] = 1
                if whole and (sweep_masks[code] >> (WRITES_SHIFT + k)) & 1:
                    fresh |= 1 << k
                    continue
                _clear(adj32, adj64, nodes, node)
                _clear(adj_tan32, adj_tan64, nodes, node)
        if kind == CAST:
            src = entries[e, E_IN0]
            if src >= 0 and nodes[src, N_GRAD]:
                cast_back(nodes, src, out, adj32, adj64, fresh)
                cast_back(nodes, src, out, adj_tan32, adj_tan64, fresh)
        elif nodes[out, N_DTYPE] == DTYPE_F32:
            _second_order_entry(e, kind, code, entries, consts, nodes, meta, vals32, row32,
                                adj32, adj_tan32, part32, fresh, active)
        else:
            _second_order_entry(e, kind, code, entries, consts, nodes, meta, vals64, row64,
                                adj64, adj_tan64, part64, fresh, active)
    return OK
