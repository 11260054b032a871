"""The optimizer base class: parameter groups, per-parameter state, ``zero_grad``,
``state_dict``, and the machinery that hands a whole group to one Numba kernel."""
from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Callable

import numpy as np

from .. import _dtype as dt
from ..autograd.grad_mode import enable_grad
from ..tensor import Tensor, _bump_version
from ..utils._typename import typename

# Up to this many elements in a group, calling the per-parameter update for each parameter
# beats building the group kernel's address table (a few scalar parameters, as in the
# tutorial's linear regression).
SMALL_GROUP = 16


class Optimizer:
    """Base class of the optimizers: ``param_groups`` (each a dict of a ``"params"`` list
    and the hyperparameters, defaults filled in), ``state`` (per parameter), ``zero_grad``
    and ``state_dict``/``load_state_dict`` in torch's format.

    >>> import jitgrad as torch
    >>> w = torch.zeros(2, requires_grad=True)
    >>> b = torch.zeros(1, requires_grad=True)
    >>> opt = torch.optim.SGD([{"params": [w]}, {"params": [b], "lr": 0.5}], lr=0.1)
    >>> [group["lr"] for group in opt.param_groups]
    [0.1, 0.5]
    """

    # names of the per-parameter state tensors shaped like the parameter (subclasses)
    _state_buffers: tuple[str, ...] = ()

    def __init__(self, params, defaults: dict) -> None:
        if isinstance(params, Tensor):
            raise TypeError(
                f"params argument given to the optimizer should be an iterable of Tensors or "
                f"dicts, but got {typename(params)}")
        self.defaults = dict(defaults)
        self.state: defaultdict = defaultdict(dict)
        self.param_groups: list[dict] = []
        self._addresses: dict[int, tuple[np.ndarray, int]] = {}
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def add_param_group(self, param_group: dict) -> None:
        """Add a group of parameters with its own hyperparameters (defaults fill the rest).
        Nothing is changed when the group is refused."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group)}")
        group = dict(param_group)
        params = group["params"]
        if isinstance(params, Tensor):
            params = [params]
        elif isinstance(params, set):
            raise TypeError(
                "optimizer parameters need to be organized in ordered collections, but the "
                "ordering of tensors in sets will change between runs. Please use a list "
                "instead.")
        else:
            params = list(params)
        names = [p[0] for p in params if isinstance(p, tuple)]
        params = [p[1] if isinstance(p, tuple) else p for p in params]
        if names:
            if len(names) != len(params):
                raise ValueError("all optimizer params should be with/without names. Some "
                                 "param names are missing")
            group["param_names"] = names
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(
                    f"optimizer can only optimize Tensors, but one of the params is "
                    f"{typename(p)}")
            if not (p.is_leaf or p.retains_grad):
                raise ValueError("can't optimize a non-leaf Tensor")
            if not p.dtype.is_floating_point:
                raise ValueError(
                    f"optimizer can only optimize floating point Tensors, got {p.dtype}")
        if len({id(p) for p in params}) != len(params):
            # torch only warns; a fused step would update such a parameter twice
            raise ValueError("optimizer contains a parameter group with duplicate parameters")
        for group_ in self.param_groups:
            if ("param_names" in group) != ("param_names" in group_):
                kind = "with names" if "param_names" in group else "without names"
                raise ValueError(
                    f"all optimizer param groups should be with/without names. cannot add "
                    f"param group {kind} to the optimizer")
        existing = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in existing for p in params):
            raise ValueError("some parameters appear in more than one parameter group")
        group["params"] = params
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        self._check_group(group)
        self.param_groups.append(group)

    def _check_group(self, group: dict) -> None:
        """Refuse bad hyperparameters of a group (a negative learning rate; subclasses may
        check more)."""
        if group.get("lr", 0.0) < 0.0:
            raise ValueError(f"Invalid learning rate: {group['lr']}")

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients of all parameters: to None (the default, as torch 2.x) or to
        zeros."""
        for group in self.param_groups:
            for p in group["params"]:
                grad = p._grad
                if grad is None:
                    continue
                if set_to_none:
                    p._grad = None
                else:
                    if grad.grad_fn is not None:
                        grad.detach_()
                    else:
                        grad.requires_grad_(False)
                    grad.zero_()

    def step(self, closure: Callable | None = None):
        raise NotImplementedError

    def _evaluate(self, closure: Callable | None):
        if closure is None:
            return None
        with enable_grad():
            return closure()

    # -- state_dict ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """``{"state": {index: {...}}, "param_groups": [{..., "params": [index, ...]}]}``:
        parameters are referred to by their position across the groups, as in torch. The
        state tensors are the optimizer's own (not copies)."""
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            for p in group["params"]:
                index.setdefault(id(p), len(index))
            packed["params"] = [index[id(p)] for p in group["params"]]
            groups.append(packed)
        state = {index[id(p)]: value for p, value in self.state.items() if id(p) in index}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load state and hyperparameters saved by :meth:`state_dict` (copies them). The
        whole dict is checked before anything changes."""
        saved_groups = copy.deepcopy(state_dict["param_groups"])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        for group, saved in zip(self.param_groups, saved_groups, strict=True):
            if len(group["params"]) != len(saved["params"]):
                raise ValueError("loaded state dict contains a parameter group that doesn't "
                                 "match the size of optimizer's group")
        by_index = {}
        for group, saved in zip(self.param_groups, saved_groups, strict=True):
            by_index.update(zip(saved["params"], group["params"], strict=True))
        state = defaultdict(dict)
        for key, value in state_dict["state"].items():
            if key not in by_index:
                state[key] = copy.deepcopy(value)
                continue
            p = by_index[key]
            state[p] = {name: self._loaded_state_value(p, key, name, v)
                        for name, v in value.items()}
        new_groups = []
        for group, saved in zip(self.param_groups, saved_groups, strict=True):
            saved["params"] = group["params"]
            if "param_names" in group and "param_names" not in saved:
                saved["param_names"] = group["param_names"]
            new_groups.append(saved)
        for group in new_groups:
            self._check_group(group)
        self.state = state
        self.param_groups = new_groups

    def _loaded_state_value(self, p: Tensor, index: int, name: str, value):
        if not isinstance(value, Tensor):
            return copy.deepcopy(value)
        array = np.array(value._value(), order="C")  # a copy, as torch's deepcopy
        if name in self._state_buffers:
            if array.shape != tuple(p.shape):
                raise ValueError(
                    f"loaded state '{name}' of parameter {index} has shape {list(array.shape)}"
                    f" but the parameter has shape {list(p.shape)}")
            array = array.astype(p.dtype.numpy, copy=False)
        return Tensor._wrap(array, dt.from_numpy_dtype(array.dtype))

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for key in sorted(k for k in group if k != "params"):
                lines.append(f"    {key}: {group[key]}")
        lines.append(")")
        return "\n".join(lines)

    # -- the fused step, for subclasses ------------------------------------------------------
    def _with_grads(self, group: dict) -> list[tuple[Tensor, np.ndarray, np.ndarray]]:
        """``(parameter, its data, its gradient's data)`` for the parameters of ``group``
        that have a gradient, checked so that the kernel can update them in place."""
        found = []
        for p in group["params"]:
            grad = p._grad
            if grad is None:
                continue
            data = p._value()
            g = grad._value()
            if g.shape != data.shape:
                raise RuntimeError(
                    f"the gradient of a parameter has shape {list(g.shape)} but the parameter "
                    f"has shape {list(data.shape)}")
            if not (data.flags.c_contiguous and data.flags.writeable):
                raise RuntimeError("optimizers update parameters in place: a parameter's data "
                                   "must be a writeable, C-contiguous array")
            if g.dtype != data.dtype or not g.flags.c_contiguous:
                g = np.ascontiguousarray(g, dtype=data.dtype)
            found.append((p, data, g))
        return found

    def _state_array(self, p: Tensor, name: str, data: np.ndarray) -> np.ndarray | None:
        """The array of state ``name`` of ``p`` for the kernel, or None when there is none
        yet; a state of another dtype than the parameter's (``model.double()`` after some
        steps) is converted, one of another shape refused."""
        value = self.state[p].get(name) if p in self.state else None
        if value is None:
            return None
        array = value._value()
        if array.shape != data.shape:
            raise RuntimeError(
                f"the optimizer's state '{name}' has shape {list(array.shape)} but its "
                f"parameter has shape {list(data.shape)}")
        if array.dtype != data.dtype or not (array.flags.c_contiguous and
                                             array.flags.writeable):
            array = np.array(array, dtype=data.dtype, order="C")
            self.state[p][name] = Tensor._wrap(array, dt.from_numpy_dtype(array.dtype))
        return array

    def _new_state(self, p: Tensor, name: str, data: np.ndarray) -> np.ndarray:
        """A zero state buffer shaped like ``data``, stored as ``state[p][name]``."""
        array = np.zeros(data.shape, data.dtype)
        self.state[p][name] = Tensor._wrap(array, dt.from_numpy_dtype(array.dtype))
        return array

    def _address(self, array: np.ndarray) -> int:
        """The data address of a long-lived array (a parameter's, a state buffer's)."""
        cached = self._addresses.get(id(array))
        if cached is not None and cached[0] is array:
            return cached[1]
        if len(self._addresses) > 8 * sum(len(g["params"]) for g in self.param_groups) + 64:
            self._addresses.clear()  # arrays replaced since (p.data = ...): forget them
        address = array.__array_interface__["data"][0]
        self._addresses[id(array)] = (array, address)
        return address


_kernels_module = None


def kernels():
    """The optimizers' Numba kernels (``_kernels``), imported on first use: numba is not
    imported with jitgrad, and an import statement per step costs microseconds."""
    global _kernels_module
    if _kernels_module is None:
        from . import _kernels

        _kernels_module = _kernels
    return _kernels_module


def run_fused(items: list, group_kernel: Callable, update: Callable, hyper: tuple,
              address: Callable) -> None:
    """Update parameters in place: one call of ``group_kernel`` per dtype in ``items``, or
    for a tiny group one call of the per-parameter ``update`` per parameter (cheaper than
    building the address table for a few scalars). Versions are bumped after.

    ``items``: ``(parameter, buffers, extra)`` per parameter, where ``buffers`` are its
    C-contiguous arrays in the kernel's row order (data, gradient, state...) and ``extra``
    its per-parameter kernel argument; ``hyper``: the scalar hyperparameters;
    ``address``: the (caching) address lookup for the long-lived buffers."""
    _kernels = kernels()
    total = 0
    for _, buffers, _ in items:
        total += buffers[0].size
    if total <= SMALL_GROUP or _kernels.numba.config.DISABLE_JIT:
        for _, buffers, extra in items:
            update(*[b.reshape(-1) for b in buffers], extra, *hyper)
    else:
        by_dtype: dict = {}
        for item in items:
            by_dtype.setdefault(item[1][0].dtype, []).append(item)
        for dtype, members in by_dtype.items():
            # gradients are new arrays every step: their addresses are not cached
            table = [[b.__array_interface__["data"][0] if row == 1 else address(b)
                      for row, b in enumerate(buffers)] for _, buffers, _ in members]
            addresses = np.array(table, dtype=np.int64).T.copy()
            sizes = np.array([buffers[0].size for _, buffers, _ in members], dtype=np.int64)
            extra = np.array([e for _, _, e in members])
            group_kernel(addresses, sizes, extra, _kernels.LIKE[dtype], *hyper)
    for p, _, _ in items:
        _bump_version(p)
