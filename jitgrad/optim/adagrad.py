"""Adagrad."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .. import _dtype as dt
from ..autograd.grad_mode import no_grad
from ..tensor import Tensor
from .optimizer import Optimizer, kernels, run_fused


class Adagrad(Optimizer):
    """Adagrad, torch's ``optim.Adagrad`` (same options, same arithmetic): the sum of the
    squared gradients so far divides the step, ``p -= clr g / (sqrt(sum) + eps)`` with
    ``clr = lr / (1 + (step - 1) lr_decay)``. The state (``step``, ``sum`` starting at
    ``initial_accumulator_value``) is made for every parameter at construction, as torch's.
    All the parameters of a group are updated by one Numba kernel call.

    >>> import jitgrad as torch
    >>> w = torch.tensor([1.0, -2.0], requires_grad=True)
    >>> opt = torch.optim.Adagrad([w], lr=0.5)
    >>> (w * w).sum().backward()
    >>> opt.step()
    >>> w
    tensor([ 0.5000, -1.5000], requires_grad=True)
    """

    _state_buffers = ("sum",)

    def __init__(self, params, lr: float = 1e-2, lr_decay: float = 0.0,
                 weight_decay: float = 0.0, initial_accumulator_value: float = 0.0,
                 eps: float = 1e-10, foreach=None, *, maximize: bool = False,
                 differentiable: bool = False, fused=None) -> None:
        for value, what in ((lr, "learning rate"), (lr_decay, "lr_decay value"),
                            (weight_decay, "weight_decay value"),
                            (initial_accumulator_value, "initial_accumulator_value value"),
                            (eps, "epsilon value")):
            if not 0.0 <= value:
                raise ValueError(f"Invalid {what}: {value}")
        if differentiable:
            raise NotImplementedError("Adagrad(differentiable=True) is not supported")
        defaults = {"lr": lr, "lr_decay": lr_decay, "eps": eps, "weight_decay": weight_decay,
                    "initial_accumulator_value": initial_accumulator_value,
                    "foreach": foreach, "maximize": maximize, "differentiable": differentiable,
                    "fused": fused}
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                self._initial_state(p, group)

    def _initial_state(self, p: Tensor, group: dict) -> None:
        state = self.state[p]
        state["step"] = Tensor._wrap(np.array(0.0, np.float32), dt.float32)
        data = np.full(tuple(p.shape), group["initial_accumulator_value"], p.dtype.numpy)
        state["sum"] = Tensor._wrap(data, p.dtype)

    @no_grad()
    def step(self, closure: Callable | None = None):
        """One update of every parameter that has a gradient; returns ``closure()`` (run
        with grad enabled first) when given. Everything is checked before any change."""
        _kernels = kernels()

        loss = self._evaluate(closure)
        plans = []
        for group in self.param_groups:
            hyper = (float(group["eps"]), float(group["weight_decay"]),
                     bool(group["maximize"]))
            found = self._with_grads(group)
            sums = [self._state_array(p, "sum", data) for p, data, _ in found]
            steps = [float(self.state[p]["step"]) + 1.0 if "step" in self.state.get(p, {})
                     else 1.0 for p, _, _ in found]
            plans.append((group, found, sums, steps, hyper))
        for group, found, sums, steps, hyper in plans:
            if not found:
                continue
            lr, lr_decay = float(group["lr"]), float(group["lr_decay"])
            items = []
            for (p, data, grad), total, step in zip(found, sums, steps, strict=True):
                if total is None:  # a group added after construction
                    self._initial_state(p, group)
                    total = self._state_array(p, "sum", data)
                items.append((p, [data, grad, total], lr / (1.0 + (step - 1.0) * lr_decay)))
            run_fused(items, _kernels.adagrad_group, _kernels.adagrad_update, hyper,
                      self._address)
            for (p, _, _), step in zip(found, steps, strict=True):
                self.state[p]["step"] = Tensor._wrap(np.array(step, np.float32), dt.float32)
        return loss
