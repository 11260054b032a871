"""Stochastic gradient descent, with momentum, dampening, weight decay, Nesterov."""
from __future__ import annotations

from collections.abc import Callable

from .._dtype import float32, float64
from ..autograd.grad_mode import no_grad
from ..tensor import _bump_version
from .optimizer import Optimizer, kernels, run_fused

_FLOATS = (float32, float64)


class SGD(Optimizer):
    """Stochastic gradient descent, torch's ``optim.SGD`` (same options, same arithmetic):
    with momentum ``buf = momentum * buf + (1 - dampening) * g`` (the first buffer is the
    gradient), then ``p -= lr * buf`` (``g + momentum * buf`` with Nesterov). All the
    parameters of a group are updated by one Numba kernel call; a few one-element
    parameters without momentum or weight decay (a linear regression's weight and bias) by
    one call each of a kernel on Python floats, the same arithmetic without the arrays.

    >>> import jitgrad as torch
    >>> w = torch.tensor(1.0, requires_grad=True)
    >>> opt = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    >>> for _ in range(2):
    ...     opt.zero_grad()
    ...     (w * w).backward()
    ...     opt.step()
    >>> w
    tensor(0.4600, requires_grad=True)
    """

    _state_buffers = ("momentum_buffer",)

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False,
                 *, maximize: bool = False) -> None:
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = {"lr": lr, "momentum": momentum, "dampening": dampening,
                    "weight_decay": weight_decay, "nesterov": nesterov, "maximize": maximize}
        super().__init__(params, defaults)

    def step(self, closure: Callable | None = None):
        """One update of every parameter that has a gradient; returns ``closure()`` (run
        with grad enabled first) when given. Everything is checked before any change."""
        if closure is None:
            plan = self._scalar_plan()
            if plan is not None:
                update = kernels().sgd_scalar
                with no_grad():  # a write carried to a view's base is not recorded
                    for p, data, grad, lr, maximize in plan:
                        data[()] = update(data.item(), grad, lr, maximize, p.dtype is float32)
                        _bump_version(p)
                return None
        return self._step(closure)

    def _scalar_plan(self) -> list | None:
        """When every parameter with a gradient holds one float element with a one-element
        gradient not yet materialized as an array, in groups without momentum or weight
        decay (the tutorial's linear regression): ``(parameter, its data, its gradient as a
        float, lr, maximize)`` for each, for ``sgd_scalar``; otherwise None, and the general
        path runs (arrays and their checks)."""
        plan = []
        for group in self.param_groups:
            if group["momentum"] != 0.0 or group["weight_decay"] != 0.0:
                return None
            lr, maximize = float(group["lr"]), bool(group["maximize"])
            for p in group["params"]:
                grad = p._grad
                if grad is None:
                    continue
                data = p._data if p._data is not None else p._value()  # (a float leaf's)
                if (grad._data is not None or data.size != 1
                        or grad._shape != p._shape or p.dtype not in _FLOATS
                        or grad.dtype is not p.dtype or not data.flags.writeable):
                    return None
                plan.append((p, data, float(grad._item), lr, maximize))
        return plan

    @no_grad()
    def _step(self, closure: Callable | None):
        _kernels = kernels()

        loss = self._evaluate(closure)
        plans = []
        for group in self.param_groups:
            momentum = float(group["momentum"])
            hyper = (float(group["lr"]), momentum, float(group["dampening"]),
                     float(group["weight_decay"]), bool(group["nesterov"]),
                     bool(group["maximize"]))
            found = self._with_grads(group)
            buffers = [self._state_array(p, "momentum_buffer", data) if momentum else None
                       for p, data, _ in found]
            plans.append((found, buffers, momentum, hyper))
        for found, buffers, momentum, hyper in plans:
            if not found:
                continue
            items = []
            for (p, data, grad), buf in zip(found, buffers, strict=True):
                first = momentum != 0.0 and buf is None
                if first:  # torch starts the buffer as the gradient
                    buf = self._new_state(p, "momentum_buffer", data)
                # without momentum the buffer row is never read: any valid address will do
                items.append((p, [data, grad, data if buf is None else buf], first))
            run_fused(items, _kernels.sgd_group, _kernels.sgd_update, hyper, self._address)
        return loss
