"""The reverse sweep: one Numba call walks the tape backwards, no Python per entry.

``mark_reached`` finds the entries between the roots and the leaves and checks them
(freed by an earlier backward? an input modified in place since it was saved?) before
anything is written, so an error leaves every buffer as it was. ``accumulate`` then runs
each entry's reverse step: the generated derivative steps of ``_reverse.py`` for the
elementwise, reduction and matmul kinds, and the strided/indexed transposes below for the
linear kinds.
"""
import numpy as np

from ..ops.registry import CAST, ELEMENTWISE, GATHER, MATMUL, PLACE, REDUCE, RESTRIDE, SCATTER
from ._reverse import reverse_elementwise, reverse_matmul, reverse_reduce, reverse_scalar
from .jit import kernel
from .layout import (
    DTYPE_F32,
    DTYPE_F64,
    E_C0,
    E_C1,
    E_FREED,
    E_IN0,
    E_IN1,
    E_IN2,
    E_META,
    E_OP,
    E_OUT,
    E_VER0,
    E_WIDTH,
    ERR_FREED,
    ERR_VERSION,
    N_DTYPE,
    N_ENTRY,
    N_GRAD,
    N_OFFSET,
    N_SIZE,
    N_WIDTH,
    OK,
    SWEEP_BLOCK,
    SWEEP_RUN,
    SWEEP_SCRATCH,
    WRITES_SHIFT,
)


@kernel
def view_block(meta, mo):
    """(offset, count) when the strided layout at ``meta[mo:]`` (ndim, shape, strides,
    offset) is one contiguous block of its source, else (-1, count)."""
    ndim = meta[mo]
    count = 1
    contiguous = True
    for d in range(ndim - 1, -1, -1):
        size = meta[mo + 1 + d]
        if size != 1 and meta[mo + 1 + ndim + d] != count:
            contiguous = False
        count *= size
    return (meta[mo + 1 + 2 * ndim] if contiguous else -1), count


@kernel
def strided_add(dst, dst_base, src, src_base, meta, mo, strided_is_dst):
    """For every multi-index i of ``shape``: dst[p] += src[q], where the strided side is
    addressed ``offset + i . strides`` and the other side is contiguous.

    meta[mo:] = ndim, shape[ndim], strides[ndim], offset. This one loop is the forward of
    a strided placement and the transpose (reverse step) of a strided view, and the other
    way round."""
    ndim = meta[mo]
    shape = meta[mo + 1:mo + 1 + ndim]
    strides = meta[mo + 1 + ndim:mo + 1 + 2 * ndim]
    offset = meta[mo + 1 + 2 * ndim]
    block, count = view_block(meta, mo)
    if block >= 0:  # the strided side is one block (a slice of rows, a reshape)
        if strided_is_dst:
            block = dst[dst_base + offset:dst_base + offset + count]
            source = src[src_base:src_base + count]
        else:
            block = dst[dst_base:dst_base + count]
            source = src[src_base + offset:src_base + offset + count]
        for i in range(count):
            block[i] += source[i]
        return
    index = np.zeros(ndim, np.int64)
    p = offset
    for i in range(count):
        if strided_is_dst:
            dst[dst_base + p] += src[src_base + i]
        else:
            dst[dst_base + i] += src[src_base + p]
        d = ndim - 1
        while d >= 0:
            index[d] += 1
            p += strides[d]
            if index[d] < shape[d]:
                break
            p -= strides[d] * shape[d]
            index[d] = 0
            d -= 1


@kernel
def indexed_add(dst, dst_base, src, src_base, meta, mo, indexed_is_dst):
    """dst[index[i]] += src[i] (a scatter-add) or dst[i] += src[index[i]] (a gather-add).

    meta[mo:] = count, index[count]."""
    count = meta[mo]
    for i in range(count):
        j = meta[mo + 1 + i]
        if indexed_is_dst:
            dst[dst_base + j] += src[src_base + i]
        else:
            dst[dst_base + i] += src[src_base + j]


@kernel
def mark_reached(entries, nodes, versions, roots, n_entries, reached, saves_mask, leaves):
    """Mark every node the roots' gradient flows to; check the entries on the way; list
    the reached leaves (nodes with no entry that require grad) in ``leaves``.
    Returns (status, entry, n_leaves): OK and the lowest entry of the graph (sweeps stop
    there), or ERR_FREED / ERR_VERSION and the entry at fault."""
    outstanding = 0  # reached nodes whose producing entry is still below the cursor
    top = -1
    n_leaves = 0
    for r in roots:
        if not reached[r]:
            reached[r] = 1
            if nodes[r, N_ENTRY] >= 0:
                outstanding += 1
                top = max(top, nodes[r, N_ENTRY])
            elif nodes[r, N_ENTRY] == -1 and nodes[r, N_GRAD]:
                leaves[n_leaves] = r
                n_leaves += 1
    lowest = n_entries
    for e in range(min(top, n_entries - 1), -1, -1):
        if outstanding == 0:
            break
        out = entries[e, E_OUT]
        if not reached[out]:
            continue
        lowest = e
        if entries[e, E_FREED]:
            return ERR_FREED, e, 0
        mask = saves_mask[entries[e, E_OP]]
        for k in range(3):
            node = entries[e, E_IN0 + k]
            if node < 0:
                continue
            if (mask >> k) & 1 and versions[node] != entries[e, E_VER0 + k]:
                return ERR_VERSION, e, 0
            if nodes[node, N_GRAD]:
                producer = nodes[node, N_ENTRY]
                if producer == -2:
                    return ERR_FREED, e, 0  # a value whose own graph a backward freed
                if not reached[node]:
                    reached[node] = 1
                    if producer >= 0:
                        outstanding += 1
                    else:
                        leaves[n_leaves] = node
                        n_leaves += 1
        if (mask >> 3) & 1 and versions[out] != 0:
            return ERR_VERSION, e, 0
        # the last entry writing this output (concatenation writes it from several)
        if e == 0 or entries[e - 1, E_OUT] != out:
            outstanding -= 1
    return OK, lowest, n_leaves


@kernel
def _reverse_entry(e, kind, code, entries, consts, nodes, meta, vals, adj, fresh):
    """Entry ``e``'s reverse step. Bit k of ``fresh``: input k's adjoint is written here
    for the first time and was not cleared: the step assigns instead of adding."""
    out = entries[e, E_OUT]
    in0 = entries[e, E_IN0]
    in1 = entries[e, E_IN1]
    in2 = entries[e, E_IN2]
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
        reverse_elementwise(code, vals, adj, o0, o1, o2, oy, o0, o1, o2, oy, nodes[out, N_SIZE],
                            w0, w1, w2, consts[e, E_C0], consts[e, E_C1], meta, mo)
    elif not w0 and not w1 and not w2:
        return
    elif kind == REDUCE:
        reverse_reduce(code, vals, adj, o0, oy, nodes[in0, N_SIZE], consts[e, E_C0], meta, mo,
                       fresh & 1 != 0)
    elif kind == MATMUL:
        reverse_matmul(code, vals, adj, o0, o1, o2, oy, w0, w1, w2, meta, mo)
    elif kind == RESTRIDE:
        if fresh & 1:  # one block, the rest of the input's adjoint cleared: copy it there
            block, count = view_block(meta, mo)
            adj[o0 + block:o0 + block + count] = adj[oy:oy + count]
        else:
            strided_add(adj, o0, adj, oy, meta, mo, True)
    elif kind == PLACE:
        strided_add(adj, o0, adj, oy, meta, mo, False)
    elif kind == GATHER:
        indexed_add(adj, o0, adj, oy, meta, mo, True)
    elif kind == SCATTER:
        indexed_add(adj, o0, adj, oy, meta, mo, False)


@kernel
def _reverse_scalar_entry(e, code, entries, consts, nodes, vals, adj, fresh):
    """``_reverse_entry`` of an elementwise entry with a one-element output (so one-element
    operands): ``reverse_scalar``, the array step's arithmetic on scalars. The array steps'
    views, loops and dispatch were most of a 0-d entry's time on W2 (~110 of ~140 ns)."""
    out = entries[e, E_OUT]
    in0 = entries[e, E_IN0]
    in1 = entries[e, E_IN1]
    in2 = entries[e, E_IN2]
    o0 = nodes[in0, N_OFFSET] if in0 >= 0 else 0
    o1 = nodes[in1, N_OFFSET] if in1 >= 0 else 0
    o2 = nodes[in2, N_OFFSET] if in2 >= 0 else 0
    w0 = (2 if fresh & 1 else 1) if in0 >= 0 and nodes[in0, N_GRAD] != 0 else 0
    w1 = (2 if fresh & 2 else 1) if in1 >= 0 and nodes[in1, N_GRAD] != 0 else 0
    w2 = (2 if fresh & 4 else 1) if in2 >= 0 and nodes[in2, N_GRAD] != 0 else 0
    reverse_scalar(code, vals, adj, o0, o1, o2, nodes[out, N_OFFSET], w0, w1, w2,
                   consts[e, E_C0], consts[e, E_C1])


# -- blocked runs ---------------------------------------------------------------------------
# A run of elementwise entries over arrays of one size (W3's Rosenbrock at 1e6: seven in a
# row) makes one memory pass per entry, each reading its output's adjoint and writing its
# inputs'. The sweep walks such a run block by block instead (every entry over elements [s,
# s + BLOCK), last to first, then the next block), so a block's adjoints stay in cache from
# one entry to the next; an adjoint that only entries of the run write and read (an
# intermediate no live tensor refers to) lives in a scratch slot after the arena's columns,
# reused by every block, and never reaches main memory.
BLOCK = SWEEP_BLOCK
MAX_RUN = SWEEP_RUN
FUSE_MIN = 8 * BLOCK  # smaller outputs are swept entry by entry


@kernel
def last_readers(entries, lowest, n_entries, n_nodes):
    """Per node, the last entry of ``[lowest, n_entries)`` reading it (-1: none)."""
    last = np.full(n_nodes, -1, np.int64)
    for e in range(lowest, n_entries):
        for field in (E_IN0, E_IN1, E_IN2):
            node = entries[e, field]
            if node >= 0:
                last[node] = e
    return last


@kernel
def scratch_start(nodes, columns, dtype):
    """The first scratch column of a buffer of ``columns`` adjoints or tangents (after every
    node of ``dtype``), or -1 when it has no room for the ``SWEEP_SCRATCH`` columns of the
    blocked runs' slots."""
    used = 0
    for node in range(nodes.shape[0]):
        if nodes[node, N_DTYPE] == dtype:
            used = max(used, nodes[node, N_OFFSET] + nodes[node, N_SIZE])
    start = columns - SWEEP_SCRATCH
    return start if start >= used else -1


@kernel
def _joins_run(e, entries, nodes, meta, kinds, reached, size, dtype):
    """Entry ``e`` can join a blocked run over ``size`` elements of ``dtype``: reached,
    elementwise with every operand of the output's shape, or a slice that is one
    contiguous block of its input (``x[1:]``)."""
    out = entries[e, E_OUT]
    kind = kinds[entries[e, E_OP]]
    if not reached[out] or nodes[out, N_SIZE] != size or nodes[out, N_DTYPE] != dtype:
        return False
    if kind == RESTRIDE:
        return view_block(meta, entries[e, E_META])[0] >= 0
    return kind == ELEMENTWISE and operands_fit(e, entries, nodes, meta, size)


@kernel
def operands_fit(e, entries, nodes, meta, size):
    """Every operand of elementwise entry ``e`` has ``size`` elements, unbroadcast: the
    entry can be run on any range of elements (the blocked runs of both sweeps)."""
    if entries[e, E_IN1] >= 0 and meta[entries[e, E_META]] != 0:
        return False  # broadcasting operands
    for field in (E_IN0, E_IN1, E_IN2):
        node = entries[e, field]
        if node >= 0 and nodes[node, N_SIZE] != size:
            return False
    return True


@kernel
def _blocked_reverse(low, high, entries, consts, nodes, refs, meta, kinds, vals, adj, ready,
                     saves_mask, last, scratch):
    """Entries ``[low, high]`` (see ``_joins_run``) block by block, last to first. Adjoint
    offsets: ``base + s`` in block ``s`` for a node kept in the buffer, the fixed ``base``
    of its scratch slot for one that is not. Each input's first write assigns or clears
    exactly as the entry-by-entry sweep would (decided once: every block repeats it)."""
    m = high - low + 1
    n = nodes[entries[high, E_OUT], N_SIZE]
    slices = np.full(m, -1, np.int64)     # a slice's start in its input, -1: elementwise
    for j in range(m):
        if entries[low + j, E_META] >= 0 and kinds[entries[low + j, E_OP]] == RESTRIDE:
            slices[j] = view_block(meta, entries[low + j, E_META])[0]
    offsets = np.zeros((m, 4), np.int64)  # values of operands 0-2 and output
    bases = np.zeros((m, 4), np.int64)    # their adjoints
    moves = np.ones((m, 4), np.int64)     # 1: the adjoint's offset moves with the block
    writes = np.zeros((m, 3), np.int64)   # 0: no gradient, 1: add, 2: assign (first write)
    in_scratch = np.zeros(m, np.bool_)    # entry j's output adjoint lives in slot j
    started = np.zeros(m, np.bool_)
    # scratch: an intermediate no live tensor refers to, read only inside the run, whose
    # first write (in the order the steps run) assigns: a slot needs no clearing
    for j in range(m - 1):
        out = entries[low + j, E_OUT]
        in_scratch[j] = scratch >= 0 and refs[out] == 0 and low + j < last[out] <= high
    for j in range(m - 1, -1, -1):
        code = entries[low + j, E_OP]
        for k in range(3):
            node = entries[low + j, E_IN0 + k]
            q = nodes[node, N_ENTRY] - low if node >= 0 else -1
            if 0 <= q < j and in_scratch[q] and not started[q]:
                started[q] = True
                if slices[j] < 0 and not (saves_mask[code] >> (WRITES_SHIFT + k)) & 1:
                    in_scratch[q] = False
    for j in range(m):
        out = entries[low + j, E_OUT]
        offsets[j, 3] = bases[j, 3] = nodes[out, N_OFFSET]
        if in_scratch[j]:
            bases[j, 3] = scratch + j * BLOCK
            moves[j, 3] = 0
    started[:] = False
    for j in range(m - 1, -1, -1):  # the order the steps run in, inputs 0-2 each
        code = entries[low + j, E_OP]
        for k in range(3):
            node = entries[low + j, E_IN0 + k]
            if node < 0:
                continue
            offsets[j, k] = bases[j, k] = nodes[node, N_OFFSET]
            if not nodes[node, N_GRAD]:
                continue
            if slices[j] >= 0:  # a slice: its input's adjoint is written from its start
                bases[j, k] += slices[j]
                # an input larger than the run's arrays is written in part by each block:
                # clear it whole first, then add (assigning would race the other slices)
                assigns = nodes[node, N_SIZE] == n
            else:
                assigns = (saves_mask[code] >> (WRITES_SHIFT + k)) & 1
            ready_before = ready[node]
            ready[node] = 1
            q = nodes[node, N_ENTRY] - low
            if 0 <= q < j and in_scratch[q]:
                bases[j, k] = scratch + q * BLOCK
                moves[j, k] = 0
                writes[j, k] = 1 if started[q] else 2
                started[q] = True
            elif ready_before:
                writes[j, k] = 1
            elif assigns:
                writes[j, k] = 2
            else:  # its first write adds: clear it first, as the entry-by-entry sweep does
                adj[nodes[node, N_OFFSET]:nodes[node, N_OFFSET] + nodes[node, N_SIZE]] = 0.0
                writes[j, k] = 1
    for s in range(0, n, BLOCK):
        count = min(BLOCK, n - s)
        for j in range(m - 1, -1, -1):
            if not (writes[j, 0] or writes[j, 1] or writes[j, 2]):
                continue
            e = low + j
            if slices[j] >= 0:  # x[block:block + n] += g
                source = adj[bases[j, 3] + moves[j, 3] * s:bases[j, 3] + moves[j, 3] * s + count]
                start = bases[j, 0] + moves[j, 0] * s
                target = adj[start:start + count]
                if writes[j, 0] == 2:
                    target[:] = source
                elif writes[j, 0] == 1:
                    for i in range(count):
                        target[i] += source[i]
                continue
            reverse_elementwise(
                entries[e, E_OP], vals, adj,
                offsets[j, 0] + s, offsets[j, 1] + s, offsets[j, 2] + s, offsets[j, 3] + s,
                bases[j, 0] + moves[j, 0] * s, bases[j, 1] + moves[j, 1] * s,
                bases[j, 2] + moves[j, 2] * s, bases[j, 3] + moves[j, 3] * s,
                count, writes[j, 0], writes[j, 1], writes[j, 2], consts[e, E_C0],
                consts[e, E_C1], meta, entries[e, E_META])


@kernel
def cast_back(nodes, src, out, buffer32, buffer64, fresh):
    """A dtype conversion's reverse step on one pair of buffers (adjoints, or their
    tangents): the output's values added into the input's, in the input's dtype (assigned
    when ``fresh``)."""
    o_in = nodes[src, N_OFFSET]
    o_out = nodes[out, N_OFFSET]
    size = nodes[out, N_SIZE]
    if nodes[src, N_DTYPE] == DTYPE_F32:
        _add_into(buffer32[o_in:o_in + size], buffer64[o_out:o_out + size], fresh)
    else:
        _add_into(buffer64[o_in:o_in + size], buffer32[o_out:o_out + size], fresh)


@kernel
def _add_into(target, source, fresh):
    """target += source, converted to target's dtype (target = source when ``fresh``)."""
    if fresh:
        target[:] = 0.0
    for i in range(target.shape[0]):
        target[i] += source[i]


@kernel
def accumulate(entries, consts, nodes, refs, meta, vals32, vals64, adj32, adj64, lowest,
               n_entries, reached, ready, kinds, saves_mask, retain, count=True):
    """Run the reverse step of every reached entry, last to first. Adjoints live at the
    same offsets as values, in buffers reused from one backward to the next: a node's
    adjoint is zeroed when it is first written (``ready``), so only the graph's nodes are
    touched. The caller seeds the roots. Runs of large elementwise entries go block by
    block (see above). Returns how many live tensors still refer to a pending entry (0:
    the next recording may restart the tape), or -1 without ``count`` (a small tape does
    not restart: the O(tape) count is skipped)."""
    last = np.empty(0, np.int64)  # made when a run first needs it
    scratch32 = scratch64 = -2
    e = n_entries
    while e > lowest:
        e -= 1
        out = entries[e, E_OUT]
        if not reached[out]:
            continue
        code = entries[e, E_OP]
        kind = kinds[code]
        mo = entries[e, E_META]
        size = nodes[out, N_SIZE]
        if (kind == ELEMENTWISE or kind == RESTRIDE) and size >= FUSE_MIN:
            dtype = nodes[out, N_DTYPE]
            low = e
            while (low > lowest and e - low + 1 < MAX_RUN
                   and _joins_run(low - 1, entries, nodes, meta, kinds, reached, size, dtype)):
                low -= 1
            if low < e and _joins_run(e, entries, nodes, meta, kinds, reached, size, dtype):
                if last.shape[0] == 0:
                    # readers anywhere on the tape: a caller sweeping one segment (custom
                    # Functions, hooks) may have run entries above it already
                    last = last_readers(entries, lowest, entries.shape[0], nodes.shape[0])
                    scratch32 = scratch_start(nodes, adj32.shape[0], DTYPE_F32)
                    scratch64 = scratch_start(nodes, adj64.shape[0], DTYPE_F64)
                if dtype == DTYPE_F32:
                    _blocked_reverse(low, e, entries, consts, nodes, refs, meta, kinds, vals32,
                                     adj32, ready, saves_mask, last, scratch32)
                else:
                    _blocked_reverse(low, e, entries, consts, nodes, refs, meta, kinds, vals64,
                                     adj64, ready, saves_mask, last, scratch64)
                if not retain:
                    for done_entry in range(low, e + 1):
                        entries[done_entry, E_FREED] = 1
                e = low
                continue
        # steps that write each element of an input's adjoint exactly once may assign on
        # the first write instead of clearing first (one pass less over the adjoint)
        whole = (kind == REDUCE or kind == CAST
                 or (kind == ELEMENTWISE and (mo < 0 or meta[mo] == 0)))
        fresh = 0
        for k in range(3):
            node = entries[e, E_IN0 + k]
            if node >= 0 and not ready[node] and nodes[node, N_GRAD]:
                ready[node] = 1
                if whole and (saves_mask[code] >> (WRITES_SHIFT + k)) & 1:
                    fresh |= 1 << k
                    continue
                start = nodes[node, N_OFFSET]
                size = nodes[node, N_SIZE]
                if kind == RESTRIDE:  # a slice: clear around it, copy into it
                    block, count = view_block(meta, mo)
                    if block >= 0:
                        fresh = 1
                        if nodes[node, N_DTYPE] == DTYPE_F32:
                            adj32[start:start + block] = 0.0
                            adj32[start + block + count:start + size] = 0.0
                        else:
                            adj64[start:start + block] = 0.0
                            adj64[start + block + count:start + size] = 0.0
                        continue
                # views, not offset indexing: LLVM vectorizes loops over a view only
                if nodes[node, N_DTYPE] == DTYPE_F32:
                    adj32[start:start + size] = 0.0
                else:
                    adj64[start:start + size] = 0.0
        if kind == CAST:
            src = entries[e, E_IN0]
            if src >= 0 and nodes[src, N_GRAD]:
                cast_back(nodes, src, out, adj32, adj64, fresh)
        elif kind == ELEMENTWISE and nodes[out, N_SIZE] == 1:
            if nodes[out, N_DTYPE] == DTYPE_F32:
                _reverse_scalar_entry(e, code, entries, consts, nodes, vals32, adj32, fresh)
            else:
                _reverse_scalar_entry(e, code, entries, consts, nodes, vals64, adj64, fresh)
        elif nodes[out, N_DTYPE] == DTYPE_F32:
            _reverse_entry(e, kind, code, entries, consts, nodes, meta, vals32, adj32, fresh)
        else:
            _reverse_entry(e, kind, code, entries, consts, nodes, meta, vals64, adj64, fresh)
        if not retain:
            entries[e, E_FREED] = 1
    if not count:
        return -1
    return count_pending_alive(entries, nodes, refs)


@kernel
def reverse_sweep(entries, consts, nodes, versions, refs, meta, vals32, vals64, adj32, adj64,
                  roots, n_entries, reached, ready, kinds, saves_mask, retain, leaves,
                  count=True):
    """Check, then accumulate: one kernel call per backward. Returns (status, entry,
    pending, n_leaves): the error and the entry at fault (nothing written); on success how
    many live tensors still refer to a pending entry and how many leaves were reached
    (listed in ``leaves``)."""
    for r in roots:
        if nodes[r, N_ENTRY] == -2:
            return ERR_FREED, -1, 0, 0
    status, entry, n_leaves = mark_reached(entries, nodes, versions, roots, n_entries,
                                           reached, saves_mask, leaves)
    if status != OK:
        return status, entry, 0, 0
    pending = accumulate(entries, consts, nodes, refs, meta, vals32, vals64, adj32, adj64,
                         entry, n_entries, reached, ready, kinds, saves_mask, retain,
                         count)
    return OK, -1, pending, n_leaves


@kernel
def _table(buffer, width):
    """A packed table (a bytearray of int64 rows) as a 2-D view, made inside the kernel:
    Numba takes the bytearray itself for less than NumPy's frombuffer costs in Python."""
    flat = np.frombuffer(buffer, np.int64)
    return flat.reshape((flat.shape[0] // width, width))


@kernel
def sweep_tape(entry_bytes, node_bytes, versions, refs, meta, vals32, vals64, adj32, adj64,
               roots, reached, ready, kinds, saves_mask, retain, leaves, count):
    """``reverse_sweep`` on the tape's own buffers (bytearrays, array.array)."""
    entries = _table(entry_bytes, E_WIDTH)
    consts = np.frombuffer(entry_bytes, np.float64).reshape(entries.shape)
    nodes = _table(node_bytes, N_WIDTH)
    return reverse_sweep(entries, consts, nodes, np.frombuffer(versions, np.int64),
                         np.frombuffer(refs, np.int64), np.frombuffer(meta, np.int64), vals32,
                         vals64, adj32, adj64, roots, entries.shape[0], reached, ready, kinds,
                         saves_mask, retain, leaves, count)


@kernel
def count_pending_alive_on_tape(entry_bytes, node_bytes, refs):
    return count_pending_alive(_table(entry_bytes, E_WIDTH), _table(node_bytes, N_WIDTH),
                               np.frombuffer(refs, np.int64))


@kernel
def count_pending_alive(entries, nodes, refs):
    """Live tensors referring to the output of an entry no backward has freed."""
    count = 0
    for node in range(nodes.shape[0]):
        if refs[node] > 0:
            entry = nodes[node, N_ENTRY]
            if entry >= 0 and entries[entry, E_FREED] == 0:
                count += 1
    return count
