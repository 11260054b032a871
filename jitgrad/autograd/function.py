"""Python callbacks in the sweeps: custom ``autograd.Function``s and tensor hooks.

A custom Function is recorded as a small group of entries of kind ``PYTHON`` around a *hub*
node (it may have any number of inputs and outputs, while an entry has at most three
inputs): one ``function_input`` entry per input that requires grad, all writing the hub,
then one ``function_output`` entry per output, each reading the hub. The Numba sweeps stop
at these entries and Python runs the Function's ``backward`` (reverse sweep) or ``jvp``
(tangent sweep), then the kernels resume: the common path, without Functions or hooks,
never leaves Numba.

Hooks registered with ``Tensor.register_hook`` also split the reverse sweep: a non-leaf's
hooks run when its gradient is complete (just before the entry that produced it), a leaf's
at the end of the sweep, before the gradient is handed out.

>>> import jitgrad as torch
>>> class Cube(torch.autograd.Function):
...     @staticmethod
...     def forward(ctx, x):
...         ctx.save_for_backward(x)
...         return x ** 3
...     @staticmethod
...     def backward(ctx, grad):
...         (x,) = ctx.saved_tensors
...         return grad * 3 * x ** 2
>>> x = torch.tensor([2.0], requires_grad=True)
>>> Cube.apply(x).sum().backward()
>>> x.grad
tensor([12.])
"""
from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from .. import functions as F
from .._dtype import float32, float64
from ..kernels.layout import E_C0, E_C1, E_IN0, E_OP, E_OUT, N_ENTRY
from ..ops.registry import PYTHON, OpDef, register
from ..recording import node_of
from ..tape import _state, is_grad_enabled
from ..tensor import Tensor
from .anomaly_mode import _anomaly, is_anomaly_check_nan_enabled
from .grad_mode import enable_grad, no_grad, set_grad_enabled

__all__ = ["Function", "FunctionCtx", "once_differentiable"]

# the entries a Function is recorded as (kind PYTHON: the sweeps call back into Python)
FUNCTION_INPUT = register(OpDef("function_input", "FunctionInputBackward", PYTHON)).code
FUNCTION_OUTPUT = register(OpDef("function_output", "CustomFunctionBackward", PYTHON)).code


# -- per-tape state: recorded Functions and hooks of the current generation ----------------------
class _Callbacks:
    """What the sweeps of one tape generation must call back: recorded Functions (by hub
    node) and non-leaf hooks (by node)."""

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.functions: dict[int, _Recorded] = {}
        self.hooks: dict[int, dict[int, Any]] = {}


def _callbacks(tape, create: bool = False) -> _Callbacks | None:
    state = tape.python_callbacks
    if state is None or state.generation != tape.generation:
        if not create:
            return None
        state = tape.python_callbacks = _Callbacks(tape.generation)
    return state


# leaf hooks by id(leaf): (weak reference to the leaf, {handle id: hook}). Not a
# WeakKeyDictionary: its lookups compare keys with ==, which is elementwise for Tensors.
_leaf_hooks: dict[int, tuple] = {}


def _hooks_of_leaf(leaf: Tensor) -> dict | None:
    found = _leaf_hooks.get(id(leaf))
    if found is None or found[0]() is not leaf:
        return None
    return found[1]


def _add_leaf(leaf: Tensor) -> dict:
    hooks = _hooks_of_leaf(leaf)
    if hooks is None:
        key = id(leaf)
        hooks = {}
        _leaf_hooks[key] = (weakref.ref(leaf, lambda _, key=key: _leaf_hooks.pop(key, None)),
                            hooks)
    return hooks


def hooked_leaf_on(tape) -> bool:
    """Whether a leaf with hooks has a node on ``tape``'s current generation (a hooked leaf
    of another thread's tape, or of an ended generation, cannot be reached by its sweeps)."""
    for ref, hooks in list(_leaf_hooks.values()):
        leaf = ref()
        if (leaf is not None and hooks and leaf._tape is tape and leaf._node >= 0
                and tape.adopt(leaf)):
            return True
    return False


def reaches_python(tape, reached) -> bool:
    """Whether a sweep that marked the nodes ``reached`` met something Python must run: a
    recorded Function, a tensor hook or a hooked leaf (anomaly detection is the caller's)."""
    state = _callbacks(tape)
    if state is not None:
        if any(reached[node] for node in state.hooks):
            return True
        if any(node >= 0 and reached[node] for recorded in state.functions.values()
               for node in recorded.outputs):
            return True
    if not _leaf_hooks:
        return False
    return any(reached[node] and _hooks_of_leaf(leaf) for node, leaf in tape.leaves.items())


def needs_python(tape) -> bool:
    """Whether a reverse sweep on ``tape`` must stop for Python (Functions, hooks, anomaly
    detection): the engine's test before its one-kernel fast path."""
    if _anomaly.enabled or (_leaf_hooks and hooked_leaf_on(tape)):
        return True
    state = tape.python_callbacks
    return (state is not None and state.generation == tape.generation
            and bool(state.functions or state.hooks))


class _Recorded:
    """One application of a Function on the tape."""

    __slots__ = ("cls", "ctx", "hub", "inputs", "input_shapes", "input_dtypes", "outputs",
                 "first", "last", "n_args")

    def __init__(self, cls, ctx, hub: int, inputs: list, input_shapes: list,
                 input_dtypes: list, n_args: int):
        self.cls = cls
        self.ctx = ctx
        self.hub = hub
        self.inputs = inputs            # per forward argument: its node, -1 if not recorded
        self.input_shapes = input_shapes
        self.input_dtypes = input_dtypes
        self.outputs: list[int] = []    # per forward output: its node, -1 if not recorded
        self.n_args = n_args
        self.first = self.last = -1     # the entries [first, last] of this application


# -- autograd.Function ---------------------------------------------------------------------------
class FunctionCtx:
    """The ``ctx`` of a custom Function: what ``forward`` hands to ``backward``/``jvp``."""

    def __init__(self) -> None:
        self._saved: tuple | None = ()
        self._freed = False
        self.needs_input_grad: tuple = ()
        self.materialize_grads = True
        self._non_differentiable: set[int] = set()

    def save_for_backward(self, *tensors) -> None:
        """Keep tensors (or None) for ``backward``; read them back as ``saved_tensors``."""
        for t in tensors:
            if t is not None and not isinstance(t, Tensor):
                raise TypeError(f"save_for_backward can only save variables, but argument "
                                f"{len(self._saved or ())} is of type {type(t).__name__}")
        # kept as they are: a backward run with create_graph differentiates through them
        self._saved = tuple(tensors)

    save_for_forward = save_for_backward

    @property
    def saved_tensors(self) -> tuple:
        """The saved tensors: plain values, or (in a backward with ``create_graph``) tensors
        standing for their place in the graph, so the backward is differentiated too."""
        if self._freed:
            raise RuntimeError(
                "Trying to backward through the graph a second time (or directly access saved "
                "tensors after they have already been freed). Saved intermediate values of the "
                "graph are freed when you call .backward() or autograd.grad(). Specify "
                "retain_graph=True if you need to backward through the graph a second time.")
        return tuple(t.unpack() if isinstance(t, _Saved) else t for t in self._saved)

    def mark_non_differentiable(self, *tensors) -> None:
        """Outputs that get no gradient (indices, masks): they do not require grad."""
        self._non_differentiable.update(id(t) for t in tensors)

    def set_materialize_grads(self, value: bool) -> None:
        """With False, ``backward`` receives None (not zeros) for outputs without a grad."""
        self.materialize_grads = bool(value)

    def mark_dirty(self, *tensors) -> None:
        raise NotImplementedError("in-place custom Functions (mark_dirty) are not supported: "
                                  "return a new tensor from forward")


class Function:
    """Base class of custom differentiable ops, as ``torch.autograd.Function``.

    Subclasses define static ``forward(ctx, *args)`` and ``backward(ctx, *grad_outputs)``
    (one gradient, or None, per argument of forward), optionally ``jvp(ctx, *tangents)`` for
    forward mode, and are called through ``apply``. ``forward`` may instead take only the
    inputs when ``setup_context(ctx, inputs, output)`` is defined.

    >>> import jitgrad as torch
    >>> class Exp(torch.autograd.Function):
    ...     @staticmethod
    ...     def forward(ctx, x):
    ...         y = x.exp()
    ...         ctx.save_for_backward(y)
    ...         return y
    ...     @staticmethod
    ...     def backward(ctx, grad):
    ...         (y,) = ctx.saved_tensors
    ...         return grad * y
    ...     @staticmethod
    ...     def jvp(ctx, tangent):
    ...         (y,) = ctx.saved_tensors
    ...         return tangent * y
    >>> x = torch.tensor([0.0, 1.0], requires_grad=True)
    >>> torch.autograd.grad(Exp.apply(x).sum(), x)
    (tensor([1.0000, 2.7183]),)
    """

    def __init__(self, *args, **kwargs) -> None:
        raise RuntimeError("custom Functions are not instantiated: call the static method "
                           "apply, e.g. MyFunction.apply(x)")

    @staticmethod
    def forward(ctx, *args, **kwargs):
        raise NotImplementedError("You must implement the forward function for custom "
                                  "autograd.Function.")

    @staticmethod
    def setup_context(ctx, inputs, output):
        """Optional: save what backward needs, when forward takes only the inputs."""

    @staticmethod
    def backward(ctx, *grad_outputs):
        raise NotImplementedError("You must implement either the backward or vjp method for "
                                  "your custom autograd.Function to use it with backward mode "
                                  "AD.")

    vjp = backward

    @staticmethod
    def jvp(ctx, *grad_inputs):
        raise NotImplementedError("You must implement the jvp function for custom "
                                  "autograd.Function to use it with forward mode AD.")

    @classmethod
    def apply(cls, *args, **kwargs):
        """Run ``forward`` (not recorded) and record the call as one node of the graph."""
        ctx = FunctionCtx()
        ctx.needs_input_grad = tuple(isinstance(a, Tensor) and a._requires_grad for a in args)
        separate = cls.setup_context is not Function.setup_context
        with no_grad():
            if separate:
                outputs = cls.forward(*args, **kwargs)
                cls.setup_context(ctx, args, outputs)
            else:
                outputs = cls.forward(ctx, *args, **kwargs)
        single = not isinstance(outputs, tuple)
        flat = [outputs] if single else list(outputs)
        record = is_grad_enabled() and any(
            isinstance(a, Tensor) and a._requires_grad and a.dtype.is_floating_point
            for a in args)
        if not record:
            return outputs
        flat = _record(cls, ctx, args, flat)
        return flat[0] if single else tuple(flat)


def once_differentiable(function):
    """Decorator for ``backward``: run it with grad mode off (its result is not
    differentiated again)."""

    def wrapper(ctx, *args):
        with no_grad():
            return function(ctx, *args)

    wrapper.__name__ = getattr(function, "__name__", "backward")
    wrapper.__doc__ = function.__doc__
    return wrapper


def _record(cls, ctx, args: tuple, outputs: list) -> list:
    tape = _state.tape
    tape.before_record()  # may start a new generation: before any node id is taken
    hub, _ = F._new_output_node(tape, float64, (0,))
    tape.release(hub, tape.generation)  # no tensor holds the hub: it must not pin the tape
    inputs, shapes, dtypes = [], [], []
    first = tape.n_entries
    for a in args:
        if isinstance(a, Tensor) and a._requires_grad and a.dtype.is_floating_point:
            node = node_of(tape, a)
            tape.record(FUNCTION_INPUT, hub, node, -1, -1, -1)
            inputs.append(node)
        else:
            inputs.append(-1)
        shapes.append(tuple(a.shape) if isinstance(a, Tensor) else None)
        dtypes.append(a.dtype if isinstance(a, Tensor) else None)
    recorded = _Recorded(cls, ctx, hub, inputs, shapes, dtypes, len(args))
    result = []
    for j, out in enumerate(outputs):
        if (not isinstance(out, Tensor) or id(out) in ctx._non_differentiable
                or not out.dtype.is_floating_point):
            if isinstance(out, Tensor) and id(out) in ctx._non_differentiable:
                out = out.detach()
            recorded.outputs.append(-1)
            result.append(out)
            continue
        shape = tuple(out.shape)
        node, slot = F._new_output_node(tape, out.dtype, shape)
        slot[...] = out._value()
        entry = tape.record(FUNCTION_OUTPUT, node, hub, -1, -1, tape.add_meta([hub, j]))
        tape.names[entry] = _grad_fn_name(recorded)  # torch's <cls>Backward
        recorded.outputs.append(node)
        value = F._output(tape, slot, None, out.dtype, shape, node, FUNCTION_OUTPUT)
        if not shape:
            value._data, value._item = None, slot.item()
        result.append(value)
    recorded.first, recorded.last = first, tape.n_entries - 1
    # a saved output of forward stands for the recorded output, as in torch: a backward
    # with create_graph then differentiates through it
    replaced = {id(o): r for o, r in zip(outputs, result) if r is not o}
    if ctx._saved:
        ctx._saved = tuple(_Saved.pack(tape, replaced.get(id(t), t)) for t in ctx._saved)
    _callbacks(tape, create=True).functions[hub] = recorded
    return result


class _Saved:
    """A saved tensor that does not keep its graph alive (as torch's SavedVariable): its
    value, and the node it stands for while the tape's generation lasts."""

    __slots__ = ("value", "tape", "generation", "node")

    @staticmethod
    def pack(tape, t):
        if not isinstance(t, Tensor) or not t._requires_grad:
            return t
        saved = _Saved()
        saved.value = t.detach()
        saved.tape = tape
        saved.generation = t._gen
        saved.node = t._node if t._tape is tape else -1
        return saved

    def unpack(self) -> Tensor:
        tape = self.tape
        if (is_grad_enabled() and self.node >= 0 and tape.generation == self.generation
                and self.node < tape.n_nodes):
            from .rules import _node_tensor

            return _node_tensor(tape, self.node)
        return self.value


def _recorded_at(tape, entry: int) -> _Recorded:
    fields = tape.entry_fields(entry)
    hub = fields[E_OUT] if fields[E_OP] == FUNCTION_INPUT else fields[E_IN0]
    return _callbacks(tape).functions[hub]


def _grad_fn_name(recorded: _Recorded) -> str:
    return f"{recorded.cls.__name__}Backward"


def _call_backward(recorded: _Recorded, grads: list) -> list:
    """Run the Function's backward; check and normalize its result to one entry per
    forward argument (None where no gradient flows)."""
    ctx, cls = recorded.ctx, recorded.cls
    backward = cls.backward if cls.backward is not Function.backward else cls.vjp
    result = backward(ctx, *grads)
    if not isinstance(result, tuple):
        result = (result,)
    name = _grad_fn_name(recorded)
    if len(result) != recorded.n_args:
        # torch accepts extra trailing Nones
        if len(result) > recorded.n_args and all(r is None for r in result[recorded.n_args:]):
            result = result[:recorded.n_args]
        else:
            raise RuntimeError(
                f"function {name} returned an incorrect number of gradients (expected "
                f"{recorded.n_args}, got {len(result)}): backward must return one gradient "
                f"(or None) per argument of forward")
    checked = []
    for i, (g, node) in enumerate(zip(result, recorded.inputs)):
        if g is None or node < 0:
            checked.append(None)
            continue
        if not isinstance(g, Tensor):
            raise TypeError(f"function {name} returned a gradient of type "
                            f"{type(g).__name__} at index {i}; expected a Tensor or None")
        shape = recorded.input_shapes[i]
        if tuple(g.shape) != shape:
            try:
                broadcast = tuple(np.broadcast_shapes(shape, tuple(g.shape)))
            except ValueError:
                broadcast = None
            if broadcast != tuple(g.shape):
                raise RuntimeError(
                    f"Function {name} returned an invalid gradient at index {i} - got "
                    f"{list(g.shape)} but expected shape compatible with {list(shape)}")
            from .rules import sum_to

            g = sum_to(g, shape)
        if g.dtype is not recorded.input_dtypes[i]:
            g = g.to(recorded.input_dtypes[i])
        checked.append(g)
    if is_anomaly_check_nan_enabled():
        for i, g in enumerate(checked):
            if g is not None and np.isnan(np.asarray(g.detach()._value())).any():
                shapes = [list(s) for s in recorded.input_shapes if s is not None]
                _raise_nan(_state.tape, recorded.last, name, i,
                           f"{cls.__name__}.apply (inputs of shapes {shapes})")
    return checked


def _free(tape, recorded: _Recorded) -> None:
    for e in range(recorded.first, recorded.last + 1):
        tape.free_entry(e)
    recorded.ctx._freed = True
    recorded.ctx._saved = None


# -- the reverse sweep with Python stops ---------------------------------------------------------
def _array_tensor(array: np.ndarray, shape: tuple, code: int) -> Tensor:
    d = float32 if code == 0 else float64
    value = np.array(array, copy=True).reshape(shape)
    return Tensor._wrap(value, d) if shape else F._scalar_tensor(value.item(), d)


def _slot(tape, adj, ready, node: int) -> np.ndarray:
    """The node's adjoint slot, zeroed on first use (the buffers are reused)."""
    offset, size, code = tape.node_location(node)
    slot = adj[code][offset:offset + size]
    if not ready[node]:
        ready[node] = 1
        slot[...] = 0.0
    return slot


def reverse_sweep(tape, tables, adj, roots, seeds, reached, ready, kinds, saves, retain,
                  leaves):
    """The engine's reverse sweep, split at Python callbacks: the same result as the
    one-kernel ``reverse_sweep`` of ``kernels.sweep`` (status, entry, pending, n_leaves)."""
    from ..kernels.sweep import accumulate, mark_reached

    entries, consts, nodes, versions, refs, meta = tables
    n_entries = tape.n_entries
    for r in roots:
        if nodes[r, N_ENTRY] == -2:
            return 1, -1, 0, 0
    status, lowest, n_leaves = mark_reached(entries, nodes, versions, roots, n_entries, reached,
                                            saves, leaves)
    if status != 0:
        return status, lowest, 0, 0
    state = _callbacks(tape)
    stops = _stops(tape, state, reached, lowest, n_entries)
    top = n_entries
    anomaly = is_anomaly_check_nan_enabled()

    def run_down_to(bottom: int) -> int:
        return accumulate(entries, consts, nodes, refs, meta, tape.arenas[0], tape.arenas[1],
                          adj[0], adj[1], bottom, top, reached, ready, kinds, saves,
                          retain)

    for entry, what in stops:
        if isinstance(what, _Recorded):
            run_down_to(what.last + 1)
            _numeric_backward(tape, what, adj, ready, reached, retain)
            top = what.first
        else:
            run_down_to(entry + 1)
            _run_hooks(tape, what, adj, ready, entry)
            top = entry + 1
            if not retain:  # the graph holding the tensor is freed: so are its hooks
                state.hooks.pop(what, None)
    pending = run_down_to(lowest)
    for node in leaves[:n_leaves]:
        leaf = tape.leaves.get(int(node))
        if leaf is not None and _hooks_of_leaf(leaf):
            _run_leaf_hooks(tape, leaf, int(node), adj, ready)
    if anomaly:
        _check_nan(tape, adj, ready, reached, roots, seeds)
    return 0, -1, pending, n_leaves


def _stops(tape, state, reached, lowest: int, n_entries: int) -> list:
    """(entry, what) from the top down: recorded Functions (at their last entry) and
    hooked non-leaves (at the last entry writing them)."""
    stops = []
    if state is None:
        return stops
    ends = {}  # entry of a Function's output -> the Function's last entry
    for recorded in state.functions.values():
        if recorded.last >= lowest and recorded.last < n_entries and reached[recorded.hub]:
            stops.append((recorded.last, 1, recorded))
            for e in range(recorded.first, recorded.last + 1):
                ends[e] = recorded.last
    for node, hooks in state.hooks.items():
        if hooks and node < reached.shape[0] and reached[node]:
            entry = tape.node_entry(node)
            if entry >= lowest:
                # a Function's output: its hooks run before the Function's backward
                stops.append((ends.get(entry, entry), 0, node))
    stops.sort(key=lambda item: (-item[0], item[1]))
    return [(entry, what) for entry, _, what in stops]


def _numeric_backward(tape, recorded: _Recorded, adj, ready, reached, retain) -> None:
    grads = []
    for node in recorded.outputs:
        if node < 0:
            grads.append(None)
            continue
        offset, size, code = tape.node_location(node)
        if reached[node] and ready[node]:
            grads.append(_array_tensor(adj[code][offset:offset + size], tape.shapes[node], code))
        elif recorded.ctx.materialize_grads:
            grads.append(_array_tensor(np.zeros(size), tape.shapes[node], code))
        else:
            grads.append(None)
    with no_grad():
        result = _call_backward(recorded, grads)
    for node, g in zip(recorded.inputs, result):
        if g is not None and node >= 0 and reached[node]:
            slot = _slot(tape, adj, ready, node)
            slot += np.asarray(g._value()).reshape(-1)
    if not retain:
        _free(tape, recorded)


def _run_hooks(tape, node: int, adj, ready, entry: int) -> None:
    hooks = _callbacks(tape).hooks.get(node)
    if not hooks:
        return
    slot = _slot(tape, adj, ready, node)
    offset, size, code = tape.node_location(node)
    grad = _array_tensor(slot, tape.shapes[node], code)
    for hook in list(hooks.values()):
        result = hook(grad)
        if result is not None:
            grad = _checked_hook_result(result, grad)
    slot[...] = np.asarray(grad._value()).reshape(-1)


def _run_leaf_hooks(tape, leaf: Tensor, node: int, adj, ready) -> None:
    slot = _slot(tape, adj, ready, node)
    grad = _array_tensor(slot, tape.shapes[node], tape.node_dtype(node))
    for hook in list(_hooks_of_leaf(leaf).values()):
        result = hook(grad)
        if result is not None:
            grad = _checked_hook_result(result, grad)
    slot[...] = np.asarray(grad._value()).reshape(-1)


def _checked_hook_result(result, grad: Tensor) -> Tensor:
    if not isinstance(result, Tensor):
        raise TypeError(f"a tensor hook must return a Tensor or None, got "
                        f"{type(result).__name__}")
    if tuple(result.shape) != tuple(grad.shape):
        raise RuntimeError(f"hook 'hook' has changed the size of value: the gradient has shape "
                           f"{list(grad.shape)} but the hook returned {list(result.shape)}")
    return result if result.dtype is grad.dtype else result.to(grad.dtype)


# -- the differentiable (create_graph) sweep with Python stops ----------------------------------
def differentiable_sweep(tape, reached, roots, seeds, outputs) -> dict:
    """``rules.differentiable_sweep`` with custom Functions and hooks."""
    from .rules import _vjp

    adjoints: dict[int, Tensor] = {}
    for root, seed, output in zip(roots, seeds, outputs):
        g = seed if seed is not None else F.ones_like(output)
        root = int(root)
        adjoints[root] = g if root not in adjoints else adjoints[root] + g
    state = _callbacks(tape)
    hooked = {}
    if state is not None:
        for node, hooks in state.hooks.items():
            if hooks and node < reached.shape[0] and reached[node]:
                hooked[tape.node_entry(node)] = node
    top = tape.n_entries  # the entries recorded from here on compute the adjoints
    e = top - 1
    while e >= 0:
        row = tape.entry_fields(e)
        out = row[E_OUT]
        if e in hooked and hooked[e] in adjoints:
            node = hooked[e]
            adjoints[node] = _apply_hooks(state.hooks[node].values(), adjoints[node])
        if row[E_OP] in (FUNCTION_INPUT, FUNCTION_OUTPUT):
            recorded = _recorded_at(tape, e)
            e = recorded.first - 1
            if reached[recorded.hub]:
                _symbolic_backward(recorded, adjoints)
            continue
        e -= 1
        if not reached[out] or out not in adjoints:
            continue
        from ..ops.registry import OPS

        op = OPS[row[E_OP]]
        inputs = [row[E_IN0 + k] for k in range(op.arity)]
        for k, contribution in _vjp(tape, op, row, inputs, out, adjoints[out], row[E_C0],
                                    row[E_C1]):
            node = inputs[k]
            adjoints[node] = contribution if node not in adjoints else \
                adjoints[node] + contribution
    for node, leaf in list(tape.leaves.items()):
        hooks = _hooks_of_leaf(leaf)
        if node in adjoints and hooks:
            adjoints[node] = _apply_hooks(hooks.values(), adjoints[node])
    if is_anomaly_check_nan_enabled():
        for g in adjoints.values():
            if np.isnan(np.asarray(g.detach()._value())).any():
                _diagnose_nan(tape, reached, roots, seeds, top)
                break
    return adjoints


def _apply_hooks(hooks, grad: Tensor) -> Tensor:
    for hook in list(hooks):
        result = hook(grad)
        if result is not None:
            grad = _checked_hook_result(result, grad)
    return grad


def _symbolic_backward(recorded: _Recorded, adjoints: dict) -> None:
    grads = []
    for node in recorded.outputs:
        if node < 0:
            grads.append(None)
        elif node in adjoints:
            grads.append(adjoints[node])
        elif recorded.ctx.materialize_grads:
            tape = _state.tape
            d = float32 if tape.node_dtype(node) == 0 else float64
            grads.append(F.zeros(*tape.shapes[node], dtype=d))
        else:
            grads.append(None)
    with enable_grad():
        result = _call_backward(recorded, grads)
    for node, g in zip(recorded.inputs, result):
        if g is not None and node >= 0:
            adjoints[node] = g if node not in adjoints else adjoints[node] + g


# -- tangents through custom Functions -----------------------------------------------------------
def _jvp_result(recorded: _Recorded, tangents: list) -> list:
    cls = recorded.cls
    if cls.jvp is Function.jvp:
        raise RuntimeError(
            f"{cls.__name__} does not implement jvp: define a static jvp(ctx, *tangents) "
            f"returning one tangent per output of forward to use it with forward-mode AD "
            f"(jvp, jacfwd, hessian, forward_ad)")
    result = cls.jvp(recorded.ctx, *tangents)
    if not isinstance(result, tuple):
        result = (result,)
    if len(result) != len(recorded.outputs):
        raise RuntimeError(
            f"function {cls.__name__}.jvp returned an incorrect number of tangents (expected "
            f"{len(recorded.outputs)}, got {len(result)}): one per output of forward")
    return list(result)


def numeric_jvp(tape, entry: int, tangents, active) -> int:
    """The tangent sweep met a Function at ``entry``: run its ``jvp`` for every direction.
    Returns the entry after the Function's entries."""
    from ..kernels.tangent import ACTIVE, INACTIVE, SEED

    recorded = _recorded_at(tape, entry)
    after = recorded.last + 1
    if not any(node >= 0 and active[node] != INACTIVE for node in recorded.inputs):
        return after
    for r in range(tangents[0].shape[0]):
        inputs = []
        for node, shape, d in zip(recorded.inputs, recorded.input_shapes,
                                  recorded.input_dtypes):
            if shape is None:
                inputs.append(None)
            elif node >= 0 and active[node] != INACTIVE:
                offset, size, code = tape.node_location(node)
                inputs.append(_array_tensor(tangents[code][r, offset:offset + size], shape,
                                            code))
            else:
                inputs.append(F.zeros(*shape, dtype=d))
        with no_grad():
            outs = _jvp_result(recorded, inputs)
        for node, t in zip(recorded.outputs, outs):
            if node < 0 or t is None or active[node] == SEED:
                continue
            offset, size, code = tape.node_location(node)
            if active[node] == INACTIVE:  # first write: the buffers are reused
                tangents[code][:, offset:offset + size] = 0.0
                active[node] = ACTIVE
            tangents[code][r, offset:offset + size] += np.asarray(t._value()).reshape(-1)
    return after


def symbolic_jvp(tape, entry: int, known: dict, seeds: set) -> int:
    """The differentiable tangent evaluation met a Function at ``entry``."""
    recorded = _recorded_at(tape, entry)
    after = recorded.last + 1
    if not any(node >= 0 and node in known for node in recorded.inputs):
        return after
    inputs = []
    for node, shape, d in zip(recorded.inputs, recorded.input_shapes, recorded.input_dtypes):
        if shape is None:
            inputs.append(None)
        elif node >= 0 and known.get(node) is not None:
            inputs.append(known[node])
        else:
            inputs.append(F.zeros(*shape, dtype=d))
    with enable_grad():
        outs = _jvp_result(recorded, inputs)
    for node, t in zip(recorded.outputs, outs):
        if node >= 0 and t is not None and node not in seeds:
            known[node] = t if node not in known else known[node] + t
    return after


# -- hooks ---------------------------------------------------------------------------------------
class RemovableHandle:
    """Returned by ``register_hook``: ``remove()`` unregisters the hook."""

    _next_id = 0

    def __init__(self, hooks: dict, forget) -> None:
        self._hooks = hooks
        self._forget = forget  # drops the emptied dict: backward takes the fast path again
        self.id = RemovableHandle._next_id
        RemovableHandle._next_id += 1

    def remove(self) -> None:
        self._hooks.pop(self.id, None)
        if not self._hooks:
            self._forget()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def register_hook(tensor: Tensor, hook) -> RemovableHandle:
    """``Tensor.register_hook``: ``hook(grad)`` runs when the tensor's gradient has been
    computed and may return a replacement gradient (or None to keep it).

    >>> import jitgrad as torch
    >>> x = torch.tensor([1.0, 2.0], requires_grad=True)
    >>> y = x * 3
    >>> handle = y.register_hook(lambda g: g * 10)
    >>> y.sum().backward()
    >>> x.grad
    tensor([30., 30.])
    """
    if not callable(hook):
        raise TypeError(f"register_hook expects a callable, got {type(hook).__name__}")
    if not tensor._requires_grad:
        raise RuntimeError("cannot register a hook on a tensor that doesn't require gradient")
    if tensor._op < 0:
        hooks = _add_leaf(tensor)
        key = id(tensor)

        def forget() -> None:
            found = _leaf_hooks.get(key)
            if found is not None and found[1] is hooks:
                del _leaf_hooks[key]
    else:
        tape = tensor._tape
        if tape is None or tensor._node < 0 or not tape.adopt(tensor):
            raise RuntimeError("cannot register a hook on a tensor whose graph was already "
                               "freed by a backward")
        table = _callbacks(tape, create=True).hooks
        hooks = table.setdefault(tensor._node, {})
        node = tensor._node

        def forget() -> None:
            if table.get(node) is hooks:
                del table[node]
    handle = RemovableHandle(hooks, forget)
    hooks[handle.id] = hook
    return handle


# -- anomaly detection ---------------------------------------------------------------------------
def _check_nan(tape, adj, ready, reached, roots, seeds) -> None:
    """After a sweep in anomaly mode: if a gradient holds NaN, find the entry whose
    backward produced it and raise."""
    nodes_ready = np.flatnonzero(ready[:tape.n_nodes])
    for node in nodes_ready:
        offset, size, code = tape.node_location(int(node))
        if np.isnan(adj[code][offset:offset + size]).any():
            _diagnose_nan(tape, reached, roots, seeds, tape.n_entries)
            return


def _diagnose_nan(tape, reached, roots, seeds, top: int) -> None:
    """Replay the backward entry by entry (NumPy, no recording) to name the first entry whose
    backward turns NaN-free gradients into NaN."""
    from ..ops.registry import OPS
    from .rules import _vjp

    adjoints = {}
    for i, root in enumerate(roots):
        root = int(root)
        seed = seeds[i] if seeds is not None else None
        if seed is None:
            d = float32 if tape.node_dtype(root) == 0 else float64
            seed = F.ones(*tape.shapes[root], dtype=d)
        adjoints[root] = seed.detach()
    with set_grad_enabled(False):
        e = top - 1
        while e >= 0:
            row = tape.entry_fields(e)
            out = row[E_OUT]
            if row[E_OP] in (FUNCTION_INPUT, FUNCTION_OUTPUT):
                recorded = _recorded_at(tape, e)
                e = recorded.first - 1
                if reached[recorded.hub] and not recorded.ctx._freed:
                    _symbolic_backward(recorded, adjoints)  # raises on NaN
                continue
            e -= 1
            if not reached[out] or out not in adjoints:
                continue
            g = adjoints[out]
            if np.isnan(np.asarray(g._value())).any():
                continue
            op = OPS[row[E_OP]]
            inputs = [row[E_IN0 + k] for k in range(op.arity)]
            for k, contribution in _vjp(tape, op, row, inputs, out, g, row[E_C0], row[E_C1]):
                if np.isnan(np.asarray(contribution._value())).any():
                    _raise_nan(tape, e + 1, op.grad_fn, k)
                node = inputs[k]
                adjoints[node] = contribution if node not in adjoints else \
                    adjoints[node] + contribution


def _raise_nan(tape, entry: int, grad_fn: str, index: int, created_by: str = "") -> None:
    from ..ops.registry import OPS
    from .anomaly_mode import forward_trace

    fields = tape.entry_fields(entry)
    if not created_by:
        op = OPS[fields[E_OP]]
        shapes = [list(tape.shapes[fields[E_IN0 + k]]) for k in range(3)
                  if fields[E_IN0 + k] >= 0]
        created_by = (f"the forward op '{op.name}' (tape entry {entry}, inputs of shapes "
                      f"{shapes}, output of shape {list(tape.shapes[fields[E_OUT]])})")
    message = (f"Function '{grad_fn}' returned nan values in its {index}th output. It was "
               f"created by {created_by}.")
    trace = forward_trace(tape, entry)
    if trace:
        message += "\nTraceback of the forward call that created it:\n" + trace
    raise RuntimeError(message)
