"""``backward`` and ``autograd.grad``: seed the roots, run one reverse sweep, hand out the
adjoints.

Without ``create_graph`` the sweep is the Numba kernel pair of :mod:`jitgrad.kernels.sweep`
(no Python per entry). With ``create_graph=True`` the same entries are walked in Python and
each one's derivative is applied as recorded jitgrad ops (:mod:`jitgrad.autograd.rules`),
so the gradient is itself on the tape and can be differentiated again.
"""
from __future__ import annotations

from array import array

import numpy as np

from .._dtype import float32
from ..kernels.layout import E_OUT, ERR_FREED, N_ENTRY
from ..ops.registry import OPS
from ..recording import FREED_GRAPH, node_of
from ..tape import _state
from ..tensor import Size, Tensor, _bump_version, _init
from .anomaly_mode import is_anomaly_enabled
from .function import needs_python, reaches_python

_FREED_MESSAGE = (
    "Trying to backward through the graph a second time (or directly access saved tensors "
    "after they have already been freed). Saved intermediate values of the graph are freed "
    "when you call .backward() or autograd.grad(). Specify retain_graph=True if you need to "
    "backward through the graph a second time or if you need to access saved tensors after "
    "calling backward.")

_tables = None  # op tables for the kernels, built on first use

_SCALAR = Size(())  # the shape of every 0-d gradient


def _op_tables():
    global _tables
    if _tables is None or _tables[0].shape[0] != len(OPS):
        kinds = np.array([op.kind for op in OPS], np.int64)
        saves = np.array([op.sweep_mask() for op in OPS], np.int64)
        _tables = (kinds, saves)
    return _tables


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, Tensor):
        return [value]
    return list(value)


def _seed(output: Tensor, gradient, index: int):
    """The adjoint seed of one root: ones for a scalar, else the given gradient."""
    if gradient is None:
        if output.numel() != 1:
            raise RuntimeError("grad can be implicitly created only for scalar outputs")
        return None
    if not isinstance(gradient, Tensor):
        gradient = Tensor._wrap(np.asarray(gradient, dtype=output.dtype.numpy), output.dtype)
    if gradient.shape != output.shape:
        raise RuntimeError(
            f"Mismatch in shape: grad_output[{index}] has a shape of {gradient.shape} and "
            f"output[{index}] has a shape of {output.shape}.")
    return gradient


def _root_node(tape, output: Tensor, index: int) -> int:
    if not output._requires_grad:
        raise RuntimeError(
            f"element {index} of tensors does not require grad and does not have a grad_fn")
    if output._op >= 0 and (output._tape is not tape or not tape.adopt(output)):
        raise RuntimeError(_FREED_MESSAGE)
    return node_of(tape, output)


_kernels = None


def _sweep_kernels():
    global _kernels
    if _kernels is None:
        from ..kernels.sweep import mark_reached, sweep_tape

        _kernels = (mark_reached, sweep_tape)
    return _kernels


def run(outputs, grad_outputs, retain_graph, create_graph, targets=None):
    """Reverse sweep from ``outputs``. Returns {node: adjoint} for the nodes in ``targets``
    (all reached leaves and retained tensors when ``targets`` is None), as ndarrays, or
    as Tensors when ``create_graph``."""
    tape = _state.tape
    outputs = _as_list(outputs)
    grads = _as_list(grad_outputs) or [None] * len(outputs)
    if len(grads) != len(outputs):
        raise RuntimeError(
            f"grad_outputs has {len(grads)} tensors but outputs has {len(outputs)}: pass one "
            f"gradient (or None) per output")
    seeds = [_seed(o, g, i) for i, (o, g) in enumerate(zip(outputs, grads))]
    roots = np.array([_root_node(tape, o, i) for i, o in enumerate(outputs)], np.int64)
    if retain_graph is None:
        retain_graph = create_graph
    mark_reached, sweep_tape = _sweep_kernels()
    kinds, saves = _op_tables()
    reached = np.zeros(tape.n_nodes, np.uint8)
    python_sweep = create_graph or needs_python(tape)
    entries = consts = nodes = versions = refs = meta = None
    if python_sweep:  # the Numba fast path views the tables itself
        entries, consts, nodes, versions, refs, meta = tape.tables()
        if not create_graph and not is_anomaly_enabled():
            # Functions or hooks somewhere in this generation: only those this sweep
            # reaches need the sweep that stops for Python
            probe = np.zeros(tape.n_nodes, np.uint8)
            status, _, _ = mark_reached(entries, nodes, versions, roots, tape.n_entries,
                                        probe, saves, np.empty(tape.n_nodes, np.int64))
            if status == 0 and not reaches_python(tape, probe):
                python_sweep = False
                entries = consts = nodes = versions = refs = meta = None
    try:
        if create_graph:
            status, entry, _ = mark_reached(entries, nodes, versions, roots, tape.n_entries,
                                            reached, saves, np.empty(tape.n_nodes, np.int64))
            if status == 0 and nodes[roots, N_ENTRY].min() == FREED_GRAPH:
                status = ERR_FREED
            if status != 0:
                _raise_sweep_error(tape, status, entry)
            entries = consts = nodes = versions = refs = meta = None
            if needs_python(tape):  # custom Functions, hooks, anomaly detection
                from .function import differentiable_sweep

                adjoints = differentiable_sweep(tape, reached, roots, seeds, outputs)
            else:
                from .rules import differentiable_sweep

                adjoints = differentiable_sweep(tape, reached, roots, seeds, outputs,
                                                lowest=max(entry, 0))
            if not retain_graph:
                _free_reached(tape, reached)
            return _collect(tape, reached, adjoints, targets, as_tensors=True)
        adj = tape.adjoint_buffers()
        ready = np.zeros(tape.n_nodes, np.uint8)
        for root, seed in zip(roots, seeds):
            offset, size, dtype_code = tape.node_location(root)
            target = adj[dtype_code]
            if not ready[root]:
                ready[root] = 1
                target[offset:offset + size] = 0.0
            if seed is None:
                target[offset] += 1.0
            else:
                target[offset:offset + size] += seed._value().reshape(-1)
        leaves = np.empty(tape.n_nodes, np.int64)
        if python_sweep:  # the sweep stops for custom Functions, hooks, anomaly checks
            from .function import reverse_sweep as python_reverse_sweep

            status, entry, pending, n_leaves = python_reverse_sweep(
                tape, (entries, consts, nodes, versions, refs, meta), adj, roots, seeds,
                reached, ready, kinds, saves, bool(retain_graph), leaves)
        else:
            status, entry, pending, n_leaves = sweep_tape(
                *tape.sweep_tables(saves), adj[0], adj[1], roots, reached, ready, kinds, saves,
                bool(retain_graph), leaves, tape.restartable())
    finally:
        entries = consts = nodes = versions = refs = meta = None
    if status != 0:
        _raise_sweep_error(tape, status, entry)
    if not retain_graph:
        tape.after_backward(pending)
    if targets is None:
        targets = leaves[:n_leaves].tolist() + [n for n in tape.retained if reached[n]]
    return _collect(tape, reached, adj, targets, as_tensors=False)


def _free_reached(tape, reached) -> None:
    for e in range(tape.n_entries):
        if reached[tape.entry_field(e, E_OUT)]:
            tape.free_entry(e)
    tape.maybe_restart = True


def _raise_sweep_error(tape, status: int, entry: int):
    if status == ERR_FREED:
        raise RuntimeError(_FREED_MESSAGE)
    op = OPS[tape.entry_op(entry)]
    raise RuntimeError(
        f"one of the variables needed for gradient computation has been modified by an "
        f"inplace operation: an input saved by {op.grad_fn} ({op.name}) changed after it was "
        f"recorded. Hint: replace the in-place op (x += ..., x.add_(...)) with its "
        f"out-of-place form (x = x + ...), or clone() the value before modifying it.")


def _collect(tape, reached, adjoints, targets, as_tensors: bool) -> dict:
    """{node: adjoint} for the requested nodes that the sweep reached: Tensors for
    ``create_graph``, else ndarrays (Python floats for 0-d values)."""
    wanted = targets if targets is not None else [*tape.leaves, *tape.retained]
    result = {}
    n_nodes = reached.shape[0]
    for node in wanted:
        if node < 0 or node >= n_nodes or not reached[node]:
            continue
        if as_tensors:
            if node in adjoints:
                result[node] = adjoints[node]
            continue
        result[node] = tape.adjoint_of(adjoints, node)
    return result


def backward(tensor: Tensor, gradient=None, retain_graph=None, create_graph: bool = False,
             inputs=None) -> None:
    if (gradient is None and not retain_graph and not create_graph and inputs is None
            and _backward_scalar(tensor)):
        return
    backward_many([tensor], [gradient] if gradient is not None else None, retain_graph,
                  create_graph, inputs)


def _backward_scalar(output: Tensor) -> bool:
    """``output.backward()`` for a one-element output recorded on the current generation,
    with nothing on the tape that needs Python during the sweep: the general path's work
    without its generality (the per-call cost of a small training step). False when the
    general path must run; errors are the general path's."""
    tape = _state.tape
    if (output._tape is not tape or output._op < 0 or output._node < 0
            or not (output._gen == tape.generation or tape.adopt(output))
            or needs_python(tape)):
        return False
    node = output._node
    offset, size, code = tape.node_location(node)
    if size != 1:
        return False
    sweep_tape = (_kernels or _sweep_kernels())[1]
    kinds, saves = _op_tables()
    n_nodes = tape.n_nodes
    flags = np.zeros(2 * n_nodes, np.uint8)
    reached, ready = flags[:n_nodes], flags[n_nodes:]
    ready[node] = 1  # the root, seeded with 1 below
    leaves = np.empty(n_nodes + 1, np.int64)
    leaves[n_nodes] = node
    adj = tape.adjoint_buffers()
    adj[code][offset] = 1.0
    status, entry, pending, n_leaves = sweep_tape(
        *tape.sweep_tables(saves), adj[0], adj[1], leaves[n_nodes:], reached, ready, kinds, saves,
        False, leaves, tape.restartable())
    if status != 0:
        _raise_sweep_error(tape, status, entry)
    tape.after_backward(pending)
    sinks = tape.leaves
    for leaf in leaves[:n_leaves].tolist():
        owner = sinks.get(leaf)
        if owner is None:
            continue
        if owner._grad is None:  # the usual case, inline: a new gradient
            grad = object.__new__(Tensor)  # (the arena holds it in the leaf's dtype)
            value = tape.adjoint_of(adj, leaf)
            if type(value) is float:
                _init(grad, None, value, owner.dtype, _SCALAR)
            else:
                _init(grad, value, None, owner.dtype, tape.shapes[leaf])
            owner._grad = grad
        else:
            _accumulate_grad(owner, tape.adjoint_of(adj, leaf), False)
    for retained, owner in list(tape.retained.items()):
        if reached[retained]:
            _accumulate_grad(owner, tape.adjoint_of(adj, retained), False)
    return True


def backward_many(tensors, grad_tensors=None, retain_graph=None, create_graph: bool = False,
                  inputs=None) -> None:
    """``torch.autograd.backward``: accumulate gradients into ``.grad`` of the leaves (or of
    ``inputs`` only) and of tensors that called ``retain_grad()``."""
    tape = _state.tape
    tape.holds += 1  # node ids are kept below: no compaction renumbers them meanwhile
    try:
        input_list = _as_list(inputs)
        if input_list:
            targets = [node_of(tape, t) for t in input_list]
            sinks = dict(zip(targets, input_list))
        else:
            targets = None
            # a leaf may own several nodes in one generation (registered again after an
            # in-place write): each one's adjoint is added to its .grad
            sinks = {**tape.retained, **tape.leaves}
        adjoints = run(tensors, grad_tensors, retain_graph, create_graph, targets)
        for node, adjoint in adjoints.items():
            owner = sinks.get(node)
            if owner is not None:
                _accumulate_grad(owner, adjoint, create_graph)
    finally:
        tape.holds -= 1


def _accumulate_grad(owner: Tensor, adjoint, create_graph: bool) -> None:
    if isinstance(adjoint, Tensor):
        if adjoint.dtype is not owner.dtype:
            adjoint = adjoint.to(owner.dtype)
        owner._grad = adjoint if owner._grad is None else owner._grad + adjoint
        return
    current = owner._grad
    if current is None:
        owner._grad = _gradient_tensor(adjoint, owner.dtype)
    elif current._requires_grad:
        owner._grad = current + _gradient_tensor(adjoint, owner.dtype)
    elif current._data is None:
        grad = _gradient_tensor(current._item + adjoint, owner.dtype)
        current._item = grad._item
    else:
        data = current._value()
        data += adjoint
        _bump_version(current)


_round32 = array("f", [0.0])


def _gradient_tensor(value, d) -> Tensor:
    """A fresh gradient tensor: a 0-d scalar kept as a Python float, else an array."""
    t = object.__new__(Tensor)
    if isinstance(value, float):
        if d is float32:
            _round32[0] = value
            value = _round32[0]
        _init(t, None, value, d, _SCALAR)
    else:
        value = value.astype(d.numpy, copy=False)
        _init(t, value, None, d, value.shape)
    return t


def grad(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph: bool = False,
         allow_unused: bool | None = None, materialize_grads: bool = False):
    """``torch.autograd.grad``: the gradients of ``outputs`` w.r.t. ``inputs``, returned as a
    tuple; ``.grad`` is left untouched.

    >>> import jitgrad as torch
    >>> x = torch.tensor([2.0], requires_grad=True)
    >>> torch.autograd.grad(x ** 3, x)
    (tensor([12.]),)
    """
    tape = _state.tape
    single = isinstance(inputs, Tensor)
    input_list = _as_list(inputs)
    for i, t in enumerate(input_list):
        if not isinstance(t, Tensor):
            raise TypeError(f"grad(): inputs[{i}] must be a Tensor, got {type(t).__name__}")
        if not t._requires_grad:
            raise RuntimeError(f"One of the differentiated Tensors (input {i}) does not "
                               f"require grad")
    tape.holds += 1  # node ids are kept below: no compaction renumbers them meanwhile
    try:
        targets = [node_of(tape, t) for t in input_list]
        adjoints = run(outputs, grad_outputs, retain_graph, create_graph, targets)
    finally:
        tape.holds -= 1
    result = []
    for i, (t, node) in enumerate(zip(input_list, targets)):
        adjoint = adjoints.get(node)
        if adjoint is None:
            if materialize_grads:
                result.append(Tensor._wrap(np.zeros(t.shape, t.dtype.numpy), t.dtype))
                continue
            if not allow_unused:
                raise RuntimeError(
                    f"One of the differentiated Tensors (input {i}, shape {list(t.shape)}) "
                    f"appears to not have been used in the graph. Set allow_unused=True if "
                    f"this is the desired behavior.")
            result.append(None)
        elif isinstance(adjoint, Tensor):
            result.append(adjoint if adjoint.dtype is t.dtype else adjoint.to(t.dtype))
        else:
            result.append(_gradient_tensor(adjoint, t.dtype))
    del single
    return tuple(result)

