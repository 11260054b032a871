"""RMSprop."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .. import _dtype as dt
from ..autograd.grad_mode import no_grad
from ..tensor import Tensor
from .optimizer import Optimizer, kernels, run_fused


class RMSprop(Optimizer):
    """RMSprop, torch's ``optim.RMSprop`` (same options, same arithmetic): a moving average
    of the squared gradient ``v = alpha v + (1 - alpha) g^2`` divides the step,
    ``p -= lr g / (sqrt(v) + eps)``; ``centered`` subtracts the squared moving average of
    the gradient from ``v`` first, ``momentum`` accumulates the divided steps. All the
    parameters of a group are updated by one Numba kernel call.

    >>> import jitgrad as torch
    >>> w = torch.tensor([1.0, -2.0], requires_grad=True)
    >>> opt = torch.optim.RMSprop([w], lr=0.01)
    >>> (w * w).sum().backward()
    >>> opt.step()
    >>> w
    tensor([ 0.9000, -1.9000], requires_grad=True)
    """

    _state_buffers = ("square_avg", "momentum_buffer", "grad_avg")

    def __init__(self, params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False,
                 capturable: bool = False, foreach=None, maximize: bool = False,
                 differentiable: bool = False) -> None:
        for value, what in ((lr, "learning rate"), (eps, "epsilon value"),
                            (momentum, "momentum value"), (weight_decay, "weight_decay value"),
                            (alpha, "alpha value")):
            if not 0.0 <= value:
                raise ValueError(f"Invalid {what}: {value}")
        if differentiable:
            raise NotImplementedError("RMSprop(differentiable=True) is not supported")
        defaults = {"lr": lr, "momentum": momentum, "alpha": alpha, "eps": eps,
                    "centered": centered, "weight_decay": weight_decay,
                    "capturable": capturable, "foreach": foreach, "maximize": maximize,
                    "differentiable": differentiable}
        super().__init__(params, defaults)

    @no_grad()
    def step(self, closure: Callable | None = None):
        """One update of every parameter that has a gradient; returns ``closure()`` (run
        with grad enabled first) when given. Everything is checked before any change."""
        _kernels = kernels()

        loss = self._evaluate(closure)
        plans = []
        for group in self.param_groups:
            momentum = float(group["momentum"])
            centered = bool(group["centered"])
            hyper = (float(group["lr"]), float(group["alpha"]), float(group["eps"]),
                     float(group["weight_decay"]), momentum, centered, bool(group["maximize"]))
            found = self._with_grads(group)
            names = ["square_avg", "grad_avg" if centered else None,
                     "momentum_buffer" if momentum > 0.0 else None]
            states = [[None if name is None else self._state_array(p, name, data)
                       for name in names] for p, data, _ in found]
            plans.append((found, states, names, hyper))
        for found, states, names, hyper in plans:
            if not found:
                continue
            items = []
            for (p, data, grad), arrays in zip(found, states, strict=True):
                if p not in self.state or "step" not in self.state[p]:
                    self.state[p]["step"] = Tensor._wrap(np.array(0.0, np.float32), dt.float32)
                buffers = [data, grad]
                for name, array in zip(names, arrays, strict=True):
                    if name is None:  # not read: any valid address will do
                        array = data
                    elif array is None:
                        array = self._new_state(p, name, data)
                    buffers.append(array)
                items.append((p, buffers, 0.0))
            run_fused(items, _kernels.rmsprop_group, _kernels.rmsprop_update, hyper,
                      self._address)
            for p, _, _ in items:
                step = float(self.state[p]["step"]) + 1.0
                self.state[p]["step"] = Tensor._wrap(np.array(step, np.float32), dt.float32)
        return loss
