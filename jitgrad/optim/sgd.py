"""Stochastic gradient descent."""
from __future__ import annotations

from ..autograd.grad_mode import no_grad
from .optimizer import Optimizer


class SGD(Optimizer):
    """``p -= lr * p.grad`` for every parameter with a gradient.

    >>> import jitgrad as torch
    >>> w = torch.tensor(1.0, requires_grad=True)
    >>> opt = torch.optim.SGD([w], lr=0.1)
    >>> (w * w).backward(); opt.step(); w
    tensor(0.8000, requires_grad=True)
    """

    def __init__(self, params, lr: float = 1e-3) -> None:
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        super().__init__(params, {"lr": lr})

    @no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            from ..autograd.grad_mode import enable_grad

            with enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr = group["lr"]
            for p in group["params"]:
                if p._grad is None:
                    continue
                p.sub_(p._grad * lr)
        return loss
