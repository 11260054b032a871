"""Hessian-vector products by one second-order sweep (``jitgrad/kernels/second_order.py``).

``func.hvp`` records the function once and asks :func:`hessian_vector_product` for ``H v``
over that recording: a tangent sweep and a reverse sweep carrying adjoints and their
tangents, in one Numba call. An elementwise program reduced by sums or means (combined by
one-element ops) runs generated code instead (``jitgrad/kernels/elementwise_hvp.py``: one
loop, registers for every intermediate, the same results to the last bit) once its shape
has been seen twice. Where the recording holds something that sweep does not take (a
custom Function, a hook, an op without a second-order step, a value modified in place) the
answer is None and the caller records the gradient with ``create_graph=True`` instead.
"""
from __future__ import annotations

import numpy as np

from . import forward_ad as fwd
from .anomaly_mode import is_anomaly_enabled
from .engine import _op_tables as engine_tables
from .function import needs_python, reaches_python

_second = None


def _op_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per opcode: kind and the reverse sweep's mask (the engine's tables), and the
    second-order table (ops registered after it was generated have no second-order step)."""
    global _second
    kinds, masks = engine_tables()
    if _second is None or _second.shape[0] != kinds.shape[0]:
        from ..kernels._hvp import SECOND_ORDER

        _second = np.zeros(kinds.shape[0], np.int64)
        known = min(kinds.shape[0], SECOND_ORDER.shape[0])
        _second[:known] = SECOND_ORDER[:known]
    return kinds, masks, _second


def _scratch(tape) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Buffers for the adjoints' tangents and for kept partials, as large as the adjoint
    buffers and kept with the tape like them (fresh memory on every call would cost page
    faults)."""
    adj = tape.adjoint_buffers()
    kept = tape.second_order_scratch
    if kept is None or any(k.shape[0] < a.shape[0] for k, a in zip(kept[0], adj)):
        kept = tuple([np.empty(a.shape[0], a.dtype) for a in adj] for _ in range(2))
        tape.second_order_scratch = kept
    return kept


_sweep = None
_fused = None


def _elementwise():
    """``kernels.elementwise_hvp``, imported on first use (not with jitgrad)."""
    global _fused
    if _fused is None:
        from ..kernels import elementwise_hvp

        _fused = elementwise_hvp
    return _fused



def _kernel():
    global _sweep
    if _sweep is None:  # Numba loads on first use, not at import
        from ..kernels.second_order import second_order_sweep

        _sweep = second_order_sweep
    return _sweep


def hessian_vector_product(tape, root: int, start: int, seeds: list) -> list | None:
    """``H v`` for the scalar node ``root`` recorded from entry ``start`` on, with respect
    to the seed nodes: ``seeds`` is (node, direction Tensor) per input (node -1: the input
    was not used). Returns per input an ndarray of its shape, or None where the root does
    not depend on it; None instead of the list where the recording needs the recorded
    (``create_graph``) path."""
    if is_anomaly_enabled():  # its checks run in the recorded path
        return None
    kinds, sweep_masks, second = _op_tables()
    if not needs_python(tape):  # an elementwise program: its generated loop, if compiled
        fused = _elementwise().hessian_vector_product(tape, root, start, seeds, second)
        if fused is not None:
            return fused
    n_nodes = tape.n_nodes
    flags = np.zeros((3, n_nodes), np.uint8)
    reached, ready, needed = flags[0], flags[1], flags[2]
    adj = tape.adjoint_buffers()
    adj_tan, part = _scratch(tape)
    with fwd.borrowed_buffers(tape, 1) as (tangents, active):
        for node, direction in seeds:
            if node >= 0:
                fwd._write_seed(tape, tangents, active, node, direction, 0)
        status = _kernel()(
            tape.entries, tape.nodes, tape.versions, tape.meta, tape.arenas[0],
            tape.arenas[1], tangents[0], tangents[1], adj[0], adj[1], adj_tan[0], adj_tan[1],
            part[0], part[1], root, start, kinds, sweep_masks, second, active, reached, ready,
            needed)
    if status != 0 or reaches_python(tape, reached):  # Functions and hooks run in Python
        return None
    result = []
    for node, _ in seeds:
        if node < 0 or not ready[node]:
            result.append(None)
            continue
        offset, size, code = tape.node_location(node)
        result.append(tape.copy_out(adj_tan[code][offset:offset + size], tape.shapes[node]))
    return result
