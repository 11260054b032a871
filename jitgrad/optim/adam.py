"""Adam and AdamW."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .. import _dtype as dt
from ..autograd.grad_mode import no_grad
from ..tensor import Tensor
from .optimizer import Optimizer, kernels, run_fused


class Adam(Optimizer):
    """Adam, torch's ``optim.Adam`` (same options, same arithmetic): moving averages of the
    gradient and of its square, bias-corrected; ``weight_decay`` adds ``wd * p`` to the
    gradient (L2), or with ``decoupled_weight_decay=True`` (AdamW) shrinks ``p`` by
    ``lr * wd`` first; ``amsgrad`` normalizes by the running maximum of the squares. All the
    parameters of a group are updated by one Numba kernel call.

    >>> import jitgrad as torch
    >>> w = torch.tensor([1.0, -2.0], requires_grad=True)
    >>> opt = torch.optim.Adam([w], lr=0.1)
    >>> (w * w).sum().backward()
    >>> opt.step()
    >>> w
    tensor([ 0.9000, -1.9000], requires_grad=True)
    >>> opt.state[w]["step"]
    tensor(1.)
    """

    _state_buffers = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False, *,
                 maximize: bool = False, decoupled_weight_decay: bool = False) -> None:
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if eps < 0.0:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay,
                    "amsgrad": amsgrad, "maximize": maximize,
                    "decoupled_weight_decay": decoupled_weight_decay}
        super().__init__(params, defaults)

    @no_grad()
    def step(self, closure: Callable | None = None):
        """One update of every parameter that has a gradient; returns ``closure()`` (run
        with grad enabled first) when given. Everything is checked before any change."""
        _kernels = kernels()

        loss = self._evaluate(closure)
        plans = []
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            amsgrad = bool(group["amsgrad"])
            hyper = (float(group["lr"]), float(beta1), float(beta2), float(group["eps"]),
                     float(group["weight_decay"]), amsgrad, bool(group["maximize"]),
                     bool(group["decoupled_weight_decay"]))
            found = self._with_grads(group)
            names = self._state_buffers if amsgrad else self._state_buffers[:2]
            states = [[self._state_array(p, name, data) for name in names]
                      for p, data, _ in found]
            steps = [float(self.state[p]["step"]) + 1.0 if p in self.state and
                     "step" in self.state[p] else 1.0 for p, _, _ in found]
            plans.append((found, states, steps, names, hyper))
        for found, states, steps, names, hyper in plans:
            if not found:
                continue
            items = []
            for (p, data, grad), arrays, step in zip(found, states, steps, strict=True):
                arrays = [self._new_state(p, name, data) if array is None else array
                          for name, array in zip(names, arrays, strict=True)]
                if len(arrays) == 2:  # no amsgrad: the maximum's row is never read
                    arrays.append(data)
                items.append((p, [data, grad, *arrays], step))
            run_fused(items, _kernels.adam_group, _kernels.adam_update, hyper, self._address)
            for (p, _, _), step in zip(found, steps, strict=True):
                # a float32 count, as torch's
                self.state[p]["step"] = Tensor._wrap(np.array(step, np.float32), dt.float32)
        return loss


class AdamW(Adam):
    """Adam with decoupled weight decay (``p *= 1 - lr * weight_decay`` before the update),
    torch's ``optim.AdamW``; ``weight_decay`` defaults to 0.01.

    >>> import jitgrad as torch
    >>> w = torch.tensor([1.0], requires_grad=True)
    >>> opt = torch.optim.AdamW([w], lr=0.1, weight_decay=0.5)
    >>> (w * 0).sum().backward()
    >>> opt.step()
    >>> w
    tensor([0.9500], requires_grad=True)
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 maximize: bool = False) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         decoupled_weight_decay=True)

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
