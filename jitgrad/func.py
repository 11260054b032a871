"""Functional transforms, in the style of ``torch.func`` and JAX: ``grad``,
``value_and_grad`` (and torch's ``grad_and_value``), ``vjp``, ``jvp``, ``jacrev``, ``jacfwd``,
``hessian``, ``hvp`` and ``linearize``.

They take functions of Tensors (arguments and results may be tuples, lists or dicts of
Tensors). Given NumPy arrays they return NumPy arrays. They compose: ``grad(grad(f))``,
``jacfwd(jacrev(f))``, ``jvp`` of ``grad``...

How they run: the function is recorded once on the tape; reverse transforms are one reverse
sweep per cotangent (Numba), forward transforms one tangent sweep (Numba) for up to a chunk of
directions at once. ``hvp`` is forward-over-reverse in one Numba call over the recording
(a tangent sweep, then a reverse sweep carrying each adjoint's tangent, its steps generated
in ``kernels/_hvp.py``), never a dense Hessian; ``hessian`` is ``jacfwd(jacrev)``. Inside
another transform (or when the arguments, or
tensors the function closes over, require grad) every transform records its result, so the
outer transform can differentiate it again.

>>> import numpy as np
>>> import jitgrad as torch
>>> from jitgrad.func import grad, jvp
>>> grad(lambda x: (x ** 3).sum())(np.array([1.0, 2.0]))
array([ 3., 12.])
>>> grad(grad(lambda x: torch.sin(x)))(torch.tensor(0.5))
tensor(-0.4794)
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from . import functions as F
from .autograd import engine, second_order
from .autograd import forward_ad as fwd
from .autograd.grad_mode import enable_grad
from .kernels.layout import E_IN0, N_ENTRY, N_GRAD
from .recording import node_of
from .tape import _state
from .tensor import Tensor

__all__ = ["grad", "grad_and_value", "hessian", "hvp", "jacfwd", "jacrev", "jvp",
           "linearize", "value_and_grad", "vjp"]

_FLOAT_ARRAYS = {np.dtype(np.float32): F._F32, np.dtype(np.float64): F._F64}
_CHUNK_BYTES = 1 << 26   # tangent buffers of one jacfwd chunk stay under this
_MAX_CHUNK = 64          # directions per tangent sweep


# -- trees of Tensors -----------------------------------------------------------------------
def _flatten(tree) -> tuple[list, Any]:
    """Leaves (Tensors, arrays, numbers) of a tuple/list/dict tree, and its structure."""
    if isinstance(tree, (tuple, list)):
        leaves, specs = [], []
        for item in tree:
            item_leaves, spec = _flatten(item)
            leaves += item_leaves
            specs.append((len(item_leaves), spec))
        return leaves, (type(tree), specs)
    if isinstance(tree, dict):
        leaves, spec = _flatten(list(tree.values()))
        return leaves, (dict, list(tree.keys()), spec)
    return [tree], None


def _unflatten(leaves: list, spec):
    if spec is None:
        return leaves[0]
    if spec[0] is dict:
        return dict(zip(spec[1], _unflatten(leaves, spec[2])))
    kind, specs = spec
    items, start = [], 0
    for count, item_spec in specs:
        items.append(_unflatten(leaves[start:start + count], item_spec))
        start += count
    return kind(items) if kind in (tuple, list) else kind(*items)


def _is_numeric(value) -> bool:
    return isinstance(value, (np.ndarray, np.generic, float, int)) and not isinstance(value, bool)


def _as_tensor(value, what: str) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if _is_numeric(value):
        array = np.asarray(value)
        if array.dtype.kind != "f":
            array = array.astype(np.float64)
        return F.as_tensor(np.array(array, order="C"))
    raise TypeError(f"{what}: expected a Tensor or a NumPy array, got {type(value).__name__}")


def _to_numpy(value):
    """A Tensor result as a NumPy array (0-d results as NumPy scalars)."""
    if isinstance(value, Tensor):
        array = np.array(value.detach()._value())
        return array[()] if array.ndim == 0 else array
    return value


def _output(tree, as_numpy: bool):
    if not as_numpy:
        return tree
    leaves, spec = _flatten(tree)
    return _unflatten([_to_numpy(leaf) for leaf in leaves], spec)


def _argnums(argnums, n_args: int, name: str) -> tuple[int, ...]:
    single = isinstance(argnums, int)
    nums = (argnums,) if single else tuple(argnums)
    if not nums:
        raise RuntimeError(f"{name}: argnums must be non-empty")
    for a in nums:
        if not isinstance(a, int):
            raise RuntimeError(f"{name}: argnums must be int or Tuple[int, ...], got {a!r}")
        if not -n_args <= a < n_args:
            raise RuntimeError(f"{name}: Got argnums={a}, but only {n_args} positional "
                               f"inputs were given")
    return tuple(a % n_args for a in nums)


# -- recording a call -------------------------------------------------------------------------
class _Call:
    """``func`` called on differentiable copies of the arguments ``argnums``, recorded.

    ``inputs`` are the copies (flat), ``output`` the result, ``connected`` whether the result
    must stay differentiable for an enclosing transform or the caller's own graph."""

    def __init__(self, func: Callable, args: tuple, argnums: tuple[int, ...], name: str,
                 has_aux: bool = False, duals=None, enclosed: bool | None = None):
        self.name = name
        self.tape = _state.tape
        args = list(args)
        self.as_numpy = False
        self.specs = []
        self.originals = []
        for a in argnums:
            leaves, spec = _flatten(args[a])
            if any(not isinstance(leaf, Tensor) for leaf in leaves):
                self.as_numpy = True
            leaves = [_as_tensor(leaf, name) for leaf in leaves]
            for leaf in leaves:
                if not leaf.dtype.is_floating_point:
                    raise RuntimeError(f"{name}: only floating point Tensors can be "
                                       f"differentiated, got an input of dtype {leaf.dtype}")
            self.specs.append((a, len(leaves), spec))
            self.originals += leaves
        if enclosed is None:
            enclosed = fwd.transform_depth() > 0 or fwd.current_level() is not None
        self.connected = (enclosed or any(t._requires_grad for t in self.originals)
                          or any(isinstance(x, Tensor) and x._requires_grad
                                 for i, x in enumerate(args) if i not in argnums))
        self._held = None  # the tape while this call keeps its entry numbers (start)
        try:
            if _state.tape.grad_enabled:  # (as enable_grad would, it is on again afterwards)
                try:
                    result = self._record(func, args, duals)
                finally:
                    _state.tape.grad_enabled = True
            else:
                with enable_grad():
                    result = self._record(func, args, duals)
            self.aux = None
            if has_aux:
                if not (isinstance(result, (tuple, list)) and len(result) == 2):
                    raise RuntimeError(f"{name}(f, ...)(*args): output of function f should be a "
                                       f"tuple: (output, aux) if has_aux is True")
                result, self.aux = result
            self.output = result
            self.outputs, self.output_spec = _flatten(result)
            for i, out in enumerate(self.outputs):
                if not isinstance(out, Tensor):
                    raise RuntimeError(f"{name}: expected f(*args) to return only Tensors, got "
                                       f"{type(out).__name__} at position {i}")
            if not self.connected and _closes_over_graph(self.tape, self.start, self.inputs):
                self.connected = True
        finally:
            if self._held is not None:  # a compaction may renumber from here on
                self._held.holds -= 1

    def _record(self, func: Callable, args: list, duals):
        """``func`` called on the differentiable copies, recorded (grad mode is on)."""
        # a pending restart of the tape happens now: not under the inputs' nodes
        self.tape = _state.tape
        self.tape.before_record()
        self.tape.holds += 1
        self._held = self.tape
        if duals is not None:
            self.inputs = duals(self.originals, self.connected)
        elif self.connected:
            self.inputs = [fwd.record_alias(t) for t in self.originals]
        else:
            self.inputs = [t.detach().requires_grad_(True) for t in self.originals]
        start = 0
        for a, count, spec in self.specs:
            args[a] = _unflatten(self.inputs[start:start + count], spec)
            start += count
        self.start = self.tape.n_entries
        with fwd.transform_scope():
            return func(*args)

    def group(self, flat: list):
        """``flat`` (one item per input) in the shape of the differentiated arguments: one
        argument's tree, or a tuple of them when argnums was a tuple."""
        groups, start = [], 0
        for _, count, spec in self.specs:
            groups.append(_unflatten(flat[start:start + count], spec))
            start += count
        return groups

    def finish(self) -> None:
        """The recording is no longer needed: let the tape start over at the next op."""
        if not self.connected:
            # as after a backward: a large tape restarts at the next op if nothing needs it
            self.tape.after_backward(1)

    def detached(self, t: Tensor) -> Tensor:
        return t if self.connected else t.detach()

    def aux_output(self):
        if self.aux is None:
            return None
        leaves, spec = _flatten(self.aux)
        leaves = [self.detached(x) if isinstance(x, Tensor) else x for x in leaves]
        return _output(_unflatten(leaves, spec), self.as_numpy)


def _closes_over_graph(tape, start: int, own: list) -> bool:
    """Whether entries recorded since ``start`` read a value that requires grad and is not
    one of ``own``: a tensor the function closes over that the caller may differentiate."""
    if tape.n_entries <= start:
        return False
    if tape.n_entries - start <= 16:  # a few entries: their rows, without NumPy views
        known = {_node(t, tape) for t in own}  # own, or the output of an entry since start
        known.add(-1)
        for e in range(start, tape.n_entries):
            _, out, in0, in1, in2 = tape.entry_fields(e)[:5]
            for node in (in0, in1, in2):
                if node not in known:
                    _, _, _, grad, entry = tape.node_fields(node)
                    if grad and entry < start:
                        return True
            known.add(out)
        return False
    entries, _, nodes, _, _, _ = tape.tables()
    try:
        inputs = entries[start:, E_IN0:E_IN0 + 3].reshape(-1)
        inputs = inputs[inputs >= 0]
        outside = (nodes[inputs, N_GRAD] != 0) & (nodes[inputs, N_ENTRY] < start)
        for t in own:
            outside &= inputs != _node(t, tape)
        return bool(outside.any())
    finally:
        del entries, nodes


def _zeros_like(t: Tensor) -> Tensor:
    return F.zeros(*t.shape, dtype=t.dtype)


def _reverse(call: _Call, outputs: list, cotangents: list | None, retain: bool) -> list:
    """d<outputs, cotangents>/d inputs, one Tensor per input (zeros where unused)."""
    pairs = [(o, c) for o, c in zip(outputs, cotangents or [None] * len(outputs))
             if o._requires_grad]
    if not pairs:
        return [_zeros_like(t) for t in call.inputs]
    connected = call.connected or fwd.transform_depth() > 0 or fwd.current_level() is not None
    grads = engine.grad([o for o, _ in pairs], call.inputs,
                        None if cotangents is None else [c for _, c in pairs],
                        retain_graph=True if retain or connected else None,
                        create_graph=connected, allow_unused=True)
    return [g if g is not None else _zeros_like(t) for g, t in zip(grads, call.inputs)]


def _check_scalar(out, name: str) -> Tensor:
    if not isinstance(out, Tensor):
        raise RuntimeError(f"{name}(f)(*args): Expected f(*args) to return a Tensor, got "
                           f"{type(out).__name__}")
    if out.ndim != 0:
        raise RuntimeError(
            f"{name}(f)(*args): Expected f(*args) to return a scalar Tensor, got tensor with "
            f"{out.ndim} dims (shape {list(out.shape)}). Maybe you wanted to use the vjp or "
            f"jacrev APIs instead?")
    if not out.dtype.is_floating_point:
        raise RuntimeError(f"{name}(f)(*args): Expected f(*args) to return a floating point "
                           f"Tensor, got {out.dtype}")
    return out


def _result(call: _Call, flat: list, single: bool):
    groups = call.group(flat)
    return groups[0] if single else tuple(groups)


# -- reverse mode -------------------------------------------------------------------------------
def grad_and_value(func: Callable, argnums=0, has_aux: bool = False) -> Callable:
    """``torch.func.grad_and_value``: a function returning ``(gradient, value)`` (with aux:
    ``(gradient, (value, aux))``).

    >>> import jitgrad as torch
    >>> from jitgrad.func import grad_and_value
    >>> grad_and_value(lambda x: (x * x).sum())(torch.tensor([1.0, 2.0]))
    (tensor([2., 4.]), tensor(5.))
    """

    def wrapper(*args, **kwargs):
        single = isinstance(argnums, int)
        nums = _argnums(argnums, len(args), "grad_and_value")
        call = _Call(lambda *a: func(*a, **kwargs), args, nums, "grad", has_aux)
        out = _check_scalar(call.output, "grad")
        flat = _reverse(call, [out], None, retain=False)
        if not call.connected:
            flat = [g.detach() for g in flat]
        value = _output(call.detached(out), call.as_numpy)
        gradient = _output(_result(call, flat, single), call.as_numpy)
        aux = call.aux_output()
        call.finish()
        return (gradient, (value, aux)) if has_aux else (gradient, value)

    return wrapper


def grad(func: Callable, argnums=0, has_aux: bool = False) -> Callable:
    """``torch.func.grad``: the gradient of a scalar function with respect to argument
    ``argnums`` (an int, or a tuple of ints for a tuple of gradients).

    >>> import jitgrad as torch
    >>> from jitgrad.func import grad
    >>> grad(lambda x, y: (x * y).sum(), argnums=(0, 1))(torch.tensor([2.0]), torch.tensor([3.0]))
    (tensor([3.]), tensor([2.]))
    """
    inner = grad_and_value(func, argnums, has_aux)

    def wrapper(*args, **kwargs):
        gradient, value = inner(*args, **kwargs)
        return (gradient, value[1]) if has_aux else gradient

    return wrapper


def value_and_grad(func: Callable, argnums=0, has_aux: bool = False) -> Callable:
    """JAX's ``value_and_grad``: a function returning ``(value, gradient)`` (with aux:
    ``((value, aux), gradient)``).

    >>> import numpy as np
    >>> from jitgrad.func import value_and_grad
    >>> value, gradient = value_and_grad(lambda x: (x ** 2).sum())(np.array([3.0]))
    >>> float(value), gradient
    (9.0, array([6.]))
    """
    inner = grad_and_value(func, argnums, has_aux)

    def wrapper(*args, **kwargs):
        gradient, value = inner(*args, **kwargs)
        return value, gradient

    return wrapper


def vjp(func: Callable, *primals, has_aux: bool = False):
    """``torch.func.vjp``: ``(output, vjp_fn)`` (with aux: ``(output, vjp_fn, aux)``);
    ``vjp_fn(cotangent)`` returns one gradient per primal, as a tuple.

    >>> import jitgrad as torch
    >>> from jitgrad.func import vjp
    >>> out, vjp_fn = vjp(torch.sin, torch.tensor([0.0, 1.0]))
    >>> vjp_fn(torch.tensor([1.0, 1.0]))
    (tensor([1.0000, 0.5403]),)
    """
    call = _Call(func, primals, tuple(range(len(primals))), "vjp", has_aux)
    outputs = call.outputs

    def vjp_fn(*cotangents):
        if len(cotangents) == 1 and call.output_spec is not None:
            cotangents = cotangents[0]
        flat, spec = _flatten(cotangents if call.output_spec is not None else cotangents[0]
                              if len(cotangents) == 1 else cotangents)
        if len(flat) != len(outputs):
            raise RuntimeError(f"vjp_fn: Expected {len(outputs)} cotangents (one per output "
                               f"of f), got {len(flat)}")
        tensors = []
        for i, (c, o) in enumerate(zip(flat, outputs)):
            c = _as_tensor(c, "vjp_fn")
            if tuple(c.shape) != tuple(o.shape):
                raise RuntimeError(f"vjp_fn: Mismatch in shape: cotangent {i} has shape "
                                   f"{list(c.shape)} and output {i} has shape {list(o.shape)}")
            tensors.append(c.to(o.dtype) if c.dtype is not o.dtype else c)
        gradients = _reverse(call, outputs, tensors, retain=True)
        if not (call.connected or fwd.transform_depth() > 0):
            gradients = [g.detach() for g in gradients]
        return tuple(_output(g, call.as_numpy) for g in call.group(gradients))

    output = _output(_unflatten([call.detached(o) for o in outputs], call.output_spec),
                     call.as_numpy)
    if has_aux:
        return output, vjp_fn, call.aux_output()
    return output, vjp_fn


def jacrev(func: Callable, argnums=0, *, has_aux: bool = False, chunk_size=None) -> Callable:
    """``torch.func.jacrev``: the Jacobian by reverse mode (one reverse sweep per output
    element). The result has shape ``output.shape + input.shape``.

    >>> import jitgrad as torch
    >>> from jitgrad.func import jacrev
    >>> jacrev(lambda x: x ** 2)(torch.tensor([1.0, 2.0]))
    tensor([[2., 0.],
            [0., 4.]])
    """
    del chunk_size  # one sweep per row: the sweeps are cheap

    def wrapper(*args, **kwargs):
        single = isinstance(argnums, int)
        nums = _argnums(argnums, len(args), "jacrev")
        call = _Call(lambda *a: func(*a, **kwargs), args, nums, "jacrev", has_aux)
        # one Jacobian per (output, input) pair: rows from one reverse sweep each
        per_output = []
        for out in call.outputs:
            rows = [[] for _ in call.inputs]
            size = out.numel()
            for i in range(size):
                seed = np.zeros(size, out.dtype.numpy)
                seed[i] = 1.0
                cotangent = Tensor._wrap(seed.reshape(out.shape), out.dtype)
                for k, g in enumerate(_reverse(call, [out], [cotangent], retain=True)):
                    rows[k].append(g)
            blocks = []
            for t, row in zip(call.inputs, rows):
                blocks.append(_stack_rows(row, tuple(out.shape), tuple(t.shape), t.dtype,
                                          call.connected))
            per_output.append(_result(call, blocks, single))
        jacobian = _unflatten(per_output, call.output_spec)
        result = _output(jacobian, call.as_numpy)
        aux = call.aux_output()
        call.finish()
        return (result, aux) if has_aux else result

    return wrapper


def _stack_rows(rows: list, out_shape: tuple, in_shape: tuple, dtype, connected: bool):
    shape = out_shape + in_shape
    if not rows:
        return F.zeros(*shape, dtype=dtype)
    if connected:
        return F.reshape(F.stack(rows), *shape)
    data = np.stack([np.asarray(r._value()).reshape(in_shape) for r in rows])
    return Tensor._wrap(np.ascontiguousarray(data.reshape(shape)), dtype)


# -- forward mode -------------------------------------------------------------------------------
def _check_primals_tangents(primals, tangents, name: str):
    if (type(primals) is tuple and type(tangents) is tuple and len(primals) == 1
            and len(tangents) == 1 and type(primals[0]) is Tensor
            and type(tangents[0]) is Tensor and primals[0]._shape == tangents[0]._shape
            and primals[0].dtype is tangents[0].dtype):
        return [tangents[0]]  # one Tensor each, alike: nothing to report
    if not isinstance(primals, (tuple, list)):
        raise RuntimeError(f"{name}(f, primals, tangents): Expected primals to be a tuple. "
                           f"E.g. it should be valid to call f(*primals).")
    if not isinstance(tangents, (tuple, list)):
        raise RuntimeError(f"{name}(f, primals, tangents): Expected tangents to be a tuple, "
                           f"got {type(tangents).__name__}")
    flat_p, spec_p = _flatten(tuple(primals))
    flat_t, spec_t = _flatten(tuple(tangents))
    if len(flat_p) != len(flat_t) or _structure(spec_p) != _structure(spec_t):
        raise RuntimeError(
            f"{name}(f, primals, tangents): Expected primals and tangents to have the same "
            f"python structure: got {len(flat_p)} primal(s) and {len(flat_t)} tangent(s)")
    flat_t = [_as_tensor(t, name) for t in flat_t]
    for i, (p, t) in enumerate(zip(flat_p, flat_t)):
        p_shape, p_dtype = _shape_and_dtype(p, name)
        if p_shape != tuple(t._shape):
            raise RuntimeError(
                f"{name}(f, primals, tangents): Expected primals and tangents to have the "
                f"same shape: primal {i} has shape {list(p_shape)} but its tangent has shape "
                f"{list(t.shape)}")
        if p_dtype is not t.dtype:
            raise RuntimeError(
                f"{name}(f, primals, tangents): Expected primals and tangents to have the "
                f"same dtype: primal {i} is {p_dtype} but its tangent is {t.dtype}")
    return flat_t


def _shape_and_dtype(value, what: str) -> tuple:
    """(shape, dtype) ``value`` has as a Tensor (as :func:`_as_tensor` would make it),
    without copying a float array."""
    if isinstance(value, Tensor):
        return tuple(value._shape), value.dtype
    if type(value) is np.ndarray and value.dtype in _FLOAT_ARRAYS:
        return value.shape, _FLOAT_ARRAYS[value.dtype]
    t = _as_tensor(value, what)
    return tuple(t._shape), t.dtype


def _structure(spec):
    """A spec with list and tuple counted as the same sequence."""
    if spec is None:
        return None
    if spec[0] is dict:
        return ("dict", tuple(spec[1]), _structure(spec[2]))
    return ("seq", tuple((count, _structure(s)) for count, s in spec[1]))


class _DualCall:
    """``func`` recorded at dual copies of its arguments, within its own dual level."""

    def __init__(self, func, primals, name: str, has_aux: bool):
        enclosed = fwd.transform_depth() > 0 or fwd.current_level() is not None
        # a pending restart of the tape happens now: once the level exists it holds the
        # tape (and an earlier call's recording would never be dropped)
        _state.tape.before_record()
        self.level_index = fwd.push_level(False)
        self.level = fwd.current_level()
        try:
            self.call = _Call(func, tuple(primals), tuple(range(len(primals))), name, has_aux,
                              duals=self._duals, enclosed=enclosed)
        except BaseException:
            fwd.exit_dual_level(level=self.level_index)
            raise
        if self.call.connected:
            self.level.differentiable = True

    def _duals(self, originals: list, connected: bool) -> list:
        """Dual copies of the inputs, seeded with zero tangents (each sweep sets its own):
        recorded aliases when enclosing transforms must see through them, else leaves."""
        tape = _state.tape
        # a pending restart happens now, before the duals take node ids (a restart at the
        # function's first op would orphan them)
        tape.before_record()
        duals = []
        for t in originals:
            if connected:
                dual = fwd.record_alias(t)
            else:
                dual = t.detach().requires_grad_(True)
                node_of(tape, dual)  # its value in the arena now: the node is the seed
            self.level.attach(tape)
            self.level.seeds[dual._node] = None
            self.level.seed_tensors.append(dual)
            duals.append(dual)
        return duals

    def close(self) -> None:
        fwd.exit_dual_level(level=self.level_index)

    def tangents(self, directions: list) -> list:
        """Output tangents (one Tensor per output) for one tangent per input."""
        call, level = self.call, self.level
        tape = call.tape
        level.check()
        stop = tape.n_entries
        if level.differentiable:
            known = {dual._node: t for dual, t in zip(call.inputs, directions)}
            with enable_grad():
                fwd.evaluate_tangents(tape, call.start, stop, known, set(level.seeds))
            found = [known.get(_node(o, tape)) for o in call.outputs]
            return [t if t is not None else _zeros_like(o) for t, o in zip(found, call.outputs)]
        seeds = [(dual._node, t) for dual, t in zip(call.inputs, directions)]
        return _tangent_sweep(tape, seeds, call.start, stop, call.outputs)

    def jacobian_columns(self) -> list:
        """For every (output, input) pair, d output / d input as ``output.shape + input.shape``
        by chunked tangent sweeps (k directions per sweep)."""
        call, level = self.call, self.level
        tape = call.tape
        level.check()
        sizes = [t.numel() for t in call.inputs]
        if level.differentiable:
            return self._jacobian_symbolic(sizes)
        total = sum(sizes)
        columns = [np.zeros((o.numel(), total), o.dtype.numpy) for o in call.outputs]
        stop = tape.n_entries
        per_direction = 4 * tape.used[0] + 8 * tape.used[1] + 1
        chunk = max(1, min(_MAX_CHUNK, total, _CHUNK_BYTES // per_direction))
        starts = np.cumsum([0] + sizes)
        out_nodes = [_node(o, tape) for o in call.outputs]
        for first in range(0, total, chunk):
            k = min(chunk, total - first)
            with fwd.borrowed_buffers(tape, k) as (buffers, active):
                for index, dual in enumerate(call.inputs):
                    offset, size, code = tape.node_location(dual._node)
                    active[dual._node] = fwd._SEED
                    slot = buffers[code][:, offset:offset + size]
                    slot[...] = 0.0
                    for r in range(k):
                        j = first + r - starts[index]
                        if 0 <= j < size:
                            slot[r, j] = 1.0
                fwd.run_tangent_sweep(tape, buffers, active, call.start, stop, out_nodes)
                for node, column in zip(out_nodes, columns):
                    if node >= 0 and node < active.shape[0] and active[node]:
                        offset, size, code = tape.node_location(node)
                        column[:, first:first + k] = buffers[code][:k, offset:offset + size].T
        blocks = []
        for o, column in zip(call.outputs, columns):
            row = []
            for index, t in enumerate(call.inputs):
                part = column[:, starts[index]:starts[index + 1]]
                shape = tuple(o.shape) + tuple(t.shape)
                row.append(Tensor._wrap(np.ascontiguousarray(part.reshape(shape)), o.dtype))
            blocks.append(row)
        return blocks

    def _jacobian_symbolic(self, sizes: list) -> list:
        call = self.call
        per_output = [[[] for _ in call.inputs] for _ in call.outputs]
        for index, (t, size) in enumerate(zip(call.inputs, sizes)):
            for j in range(size):
                basis = np.zeros(size, t.dtype.numpy)
                basis[j] = 1.0
                directions = [_zeros_like(u) for u in call.inputs]
                directions[index] = Tensor._wrap(basis.reshape(t.shape), t.dtype)
                for o_index, tangent in enumerate(self.tangents(directions)):
                    per_output[o_index][index].append(tangent)
        blocks = []
        for o, per_input in zip(call.outputs, per_output):
            row = []
            for t, columns in zip(call.inputs, per_input):
                # columns[j] = d o / d t_j: stack them last, then move to output-major order
                stacked = F.stack([F.reshape(c, -1) for c in columns], dim=1)
                row.append(F.reshape(stacked, *(tuple(o.shape) + tuple(t.shape))))
            blocks.append(row)
        return blocks


def _tangent_sweep(tape, seeds: list, start: int, stop: int, outputs: list) -> list:
    """One numeric tangent sweep over entries ``[start, stop)`` from ``seeds`` ((node,
    tangent) pairs): the tangents of ``outputs`` (zeros where none reaches them)."""
    with fwd.borrowed_buffers(tape, 1) as (buffers, active):
        for node, tangent in seeds:
            if node >= 0:
                fwd._write_seed(tape, buffers, active, node, tangent, 0)
        wanted = [_node(o, tape) for o in outputs]
        fwd.run_tangent_sweep(tape, buffers, active, start, stop, wanted)
        result = []
        for o in outputs:
            node = _node(o, tape)
            if node >= 0 and node < active.shape[0] and active[node]:
                result.append(fwd._read_tangent(tape, buffers, node, 0))
            else:
                result.append(_zeros_like(o))
        return result


def _node(t: Tensor, tape) -> int:
    if t._tape is tape and t._node >= 0 and t._requires_grad and tape.adopt(t):
        return t._node
    return -1


def jvp(func: Callable, primals, tangents, *, strict: bool = False, has_aux: bool = False):
    """``torch.func.jvp``: ``(func(*primals), J @ tangents)`` by one tangent sweep (with aux:
    ``(output, jvp_out, aux)``).

    >>> import jitgrad as torch
    >>> from jitgrad.func import jvp
    >>> jvp(torch.sin, (torch.tensor([0.0]),), (torch.tensor([2.0]),))
    (tensor([0.]), tensor([2.]))
    """
    del strict
    directions = _check_primals_tangents(primals, tangents, "jvp")
    dual = _DualCall(func, primals, "jvp", has_aux)
    try:
        call = dual.call
        directions = [d.to(t.dtype) if d.dtype is not t.dtype else d
                      for d, t in zip(directions, call.inputs)]
        if call.connected:
            dual.level.differentiable = True
        out_tangents = dual.tangents(directions)
        output = _unflatten([call.detached(o) for o in call.outputs], call.output_spec)
        jvp_out = _unflatten(out_tangents if call.connected else
                             [t.detach() for t in out_tangents], call.output_spec)
        result = (_output(output, call.as_numpy), _output(jvp_out, call.as_numpy))
        aux = call.aux_output()
    finally:
        dual.close()
    call.finish()
    return (*result, aux) if has_aux else result


def linearize(func: Callable, *primals):
    """``torch.func.linearize``: ``(output, jvp_fn)``; ``jvp_fn(*tangents)`` evaluates the
    Jacobian-vector product at ``primals`` by a tangent sweep over the one recording, without
    calling ``func`` again.

    >>> import jitgrad as torch
    >>> from jitgrad.func import linearize
    >>> out, jvp_fn = linearize(torch.exp, torch.tensor([0.0, 1.0]))
    >>> jvp_fn(torch.tensor([1.0, 1.0]))
    tensor([1.0000, 2.7183])
    """
    dual = _DualCall(func, primals, "linearize", False)
    dual.close()  # the recording stays; each call evaluates it in a level of its own
    call = dual.call

    def jvp_fn(*tangents):
        directions = _check_primals_tangents(primals, tangents, "linearize")
        directions = [d.to(t.dtype) if d.dtype is not t.dtype else d
                      for d, t in zip(directions, call.inputs)]
        out = dual.tangents(directions)
        if not (call.connected or fwd.transform_depth() > 0):
            out = [t.detach() for t in out]
        return _output(_unflatten(out, call.output_spec), call.as_numpy)

    output = _output(_unflatten([call.detached(o) for o in call.outputs], call.output_spec),
                     call.as_numpy)
    return output, jvp_fn


def jacfwd(func: Callable, argnums=0, has_aux: bool = False, *, randomness: str = "error"):
    """``torch.func.jacfwd``: the Jacobian by forward mode: one recording, then chunked
    tangent sweeps (up to 64 directions per sweep). Shape ``output.shape + input.shape``.

    >>> import jitgrad as torch
    >>> from jitgrad.func import jacfwd
    >>> jacfwd(lambda x: x.sum() * x)(torch.tensor([1.0, 2.0]))
    tensor([[4., 1.],
            [2., 5.]])
    """
    del randomness

    def wrapper(*args, **kwargs):
        single = isinstance(argnums, int)
        nums = _argnums(argnums, len(args), "jacfwd")
        dual = _DualCall(lambda *a: func(*(_merge(args, nums, a)), **kwargs),
                         [args[a] for a in nums], "jacfwd", has_aux)
        try:
            call = dual.call
            call.specs = [(nums[i], count, spec) for i, (_, count, spec) in
                          enumerate(call.specs)]
            blocks = dual.jacobian_columns()
            per_output = [_result(call, row, single) for row in blocks]
            result = _output(_unflatten(per_output, call.output_spec), call.as_numpy)
            aux = call.aux_output()
        finally:
            dual.close()
        call.finish()
        return (result, aux) if has_aux else result

    return wrapper


def _merge(args: tuple, nums: tuple, chosen: tuple) -> list:
    merged = list(args)
    for a, value in zip(nums, chosen):
        merged[a] = value
    return merged


def hessian(func: Callable, argnums=0) -> Callable:
    """``torch.func.hessian``: forward-over-reverse, ``jacfwd(jacrev(func))``, for a function
    returning a scalar.

    >>> import jitgrad as torch
    >>> from jitgrad.func import hessian
    >>> hessian(lambda x: (x ** 3).sum())(torch.tensor([1.0, 2.0]))
    tensor([[ 6.,  0.],
            [ 0., 12.]])
    """

    def scalar(*args, **kwargs):
        out = func(*args, **kwargs)
        if not isinstance(out, Tensor) or out.ndim != 0:
            shape = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise RuntimeError(
                f"hessian(f)(*args): Expected f(*args) to return a scalar Tensor, got "
                f"{shape}. For the second derivatives of a vector function use "
                f"jacfwd(jacrev(f)).")
        return out

    return jacfwd(jacrev(scalar, argnums), argnums)


def hvp(func: Callable, primals, tangents):
    """The Hessian-vector product of a scalar function: forward-over-reverse, as
    ``jvp(grad(func), primals, tangents)[1]`` but over one recording of ``func`` (the
    Hessian is never formed). A tangent sweep and a reverse sweep that carries each adjoint's
    tangent run in one Numba call (for an elementwise program reduced by sums or means, one
    loop generated for its shape, ``jitgrad/kernels/elementwise_hvp.py``); a recording that
    sweep does not take (custom Functions,
    hooks, values modified in place) has its gradient recorded instead and one tangent sweep
    run over that. Returns one Tensor per primal (a tuple when there are several).

    >>> import jitgrad as torch
    >>> from jitgrad.func import hvp
    >>> hvp(lambda x: (x ** 3).sum(), (torch.tensor([1.0, 2.0]),), (torch.tensor([1.0, 1.0]),))
    tensor([ 6., 12.])
    """
    directions = _check_primals_tangents(primals, tangents, "hvp")
    nums = tuple(range(len(primals)))
    connected = fwd.transform_depth() > 0 or fwd.current_level() is not None
    if connected:
        return jvp(grad(func, argnums=nums if len(nums) > 1 else 0), primals, tangents)[1]
    call = _Call(func, tuple(primals), nums, "hvp", enclosed=False)
    if call.connected:
        call.finish()
        return jvp(grad(func, argnums=nums if len(nums) > 1 else 0), primals, tangents)[1]
    out = _check_scalar(call.output, "hvp")
    tape = call.tape
    seeds = [(_node(t, tape), d if d.dtype is t.dtype else d.to(t.dtype))
             for t, d in zip(call.inputs, directions)]
    result = _second_order(call, out, seeds)
    if result is None:
        gradients = _reverse_recorded(call, out)
        result = _tangent_sweep(tape, seeds, call.start, tape.n_entries, gradients)
    call.finish()
    result = [_output(r, call.as_numpy) for r in call.group(result)]
    return result[0] if len(result) == 1 else tuple(result)


def _second_order(call: _Call, out: Tensor, seeds: list) -> list | None:
    """``H v`` by the second-order sweep, one Tensor per input; None where the recording
    needs the recorded-gradient path."""
    if not out._requires_grad:
        return [_zeros_like(t) for t in call.inputs]
    root = _node(out, call.tape)
    if root < 0:
        return None
    found = second_order.hessian_vector_product(call.tape, root, call.start, seeds)
    if found is None:
        return None
    return [_zeros_like(t) if value is None else
            Tensor._wrap(value, t.dtype) if value.ndim else F._scalar_tensor(value.item(), t.dtype)
            for value, t in zip(found, call.inputs)]


def _reverse_recorded(call: _Call, out: Tensor) -> list:
    """The gradient of ``out`` recorded on the tape (``create_graph=True``)."""
    if not out._requires_grad:
        return [_zeros_like(t) for t in call.inputs]
    grads = engine.grad(out, call.inputs, create_graph=True, allow_unused=True)
    return [g if g is not None else _zeros_like(t) for g, t in zip(grads, call.inputs)]

