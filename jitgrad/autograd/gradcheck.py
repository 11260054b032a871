"""``gradcheck`` and ``gradgradcheck``, with torch's signatures: the Jacobian by central
finite differences against the Jacobian by reverse mode (one backward per output element)
and by forward mode (one tangent sweep per input element). A mismatch raises
:class:`GradcheckError` (a RuntimeError) naming the first element that differs.

>>> import jitgrad as torch
>>> x = torch.tensor([0.5, 1.5], dtype=torch.float64, requires_grad=True)
>>> torch.autograd.gradcheck(lambda x: (x.sin() * x).sum(), (x,))
True
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .. import functions as F
from ..tensor import Tensor
from . import forward_ad as fwd
from .grad_mode import enable_grad, no_grad

__all__ = ["GradcheckError", "gradcheck", "gradgradcheck"]


class GradcheckError(RuntimeError):
    """A gradient check failed (torch.autograd.gradcheck.GradcheckError)."""


def _as_tuple(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _outputs(func: Callable, inputs: tuple) -> tuple:
    return tuple(o for o in _as_tuple(func(*inputs)) if isinstance(o, Tensor))


def _differentiable(inputs: tuple) -> list[int]:
    return [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]


def _numerical(func, inputs: tuple, wrt: list[int], eps: float) -> list:
    """jacobians[o][w]: (output o numel, input wrt[w] numel) by central differences."""
    with no_grad():
        base = _outputs(func, inputs)
        result = [[np.zeros((o.numel(), inputs[i].numel())) for i in wrt] for o in base]
        for w, i in enumerate(wrt):
            x = inputs[i]
            flat = x.detach()._value().reshape(-1).astype(np.float64)
            for j in range(flat.size):
                shifted = []
                for step in (eps, -eps):
                    values = flat.copy()
                    values[j] += step
                    probe = list(inputs)
                    probe[i] = Tensor._wrap(values.reshape(x.shape).astype(x.dtype.numpy),
                                            x.dtype).requires_grad_(True)
                    shifted.append(_outputs(func, tuple(probe)))
                for o, (plus, minus) in enumerate(zip(*shifted)):
                    difference = (np.asarray(plus._value(), np.float64)
                                  - np.asarray(minus._value(), np.float64))
                    result[o][w][:, j] = difference.reshape(-1) / (2 * eps)
    return result


def _reverse(func, inputs: tuple, wrt: list[int]) -> list:
    from .engine import grad

    with enable_grad():
        outputs = _outputs(func, inputs)
    result = [[np.zeros((o.numel(), inputs[i].numel())) for i in wrt] for o in outputs]
    targets = [inputs[i] for i in wrt]
    for o, out in enumerate(outputs):
        if not out.requires_grad:
            continue
        for r in range(out.numel()):
            seed = np.zeros(out.numel(), out.dtype.numpy)
            seed[r] = 1.0
            grads = grad(out, targets, Tensor._wrap(seed.reshape(out.shape), out.dtype),
                         retain_graph=True, allow_unused=True)
            for w, g in enumerate(grads):
                if g is not None:
                    result[o][w][r, :] = np.asarray(g._value(), np.float64).reshape(-1)
    return result


def _forward(func, inputs: tuple, wrt: list[int]) -> list:
    result = None
    for w, i in enumerate(wrt):
        x = inputs[i]
        for j in range(x.numel()):
            direction = np.zeros(x.numel(), x.dtype.numpy)
            direction[j] = 1.0
            with fwd.dual_level():
                probe = list(inputs)
                # a detached primal: the level sweeps numerically unless func needs more
                probe[i] = fwd.make_dual(x.detach(),
                                         Tensor._wrap(direction.reshape(x.shape), x.dtype))
                outputs = _outputs(func, tuple(probe))
                if result is None:
                    result = [[np.zeros((o.numel(), inputs[k].numel())) for k in wrt]
                              for o in outputs]
                for o, out in enumerate(outputs):
                    tangent = fwd.unpack_dual(out).tangent
                    if tangent is not None:
                        result[o][w][:, j] = np.asarray(tangent._value(),
                                                        np.float64).reshape(-1)
    return result or []


def _first_mismatch(expected: np.ndarray, got: np.ndarray, atol: float, rtol: float):
    bad = ~np.isclose(got, expected, rtol=rtol, atol=atol, equal_nan=False)
    if not bad.any():
        return None
    return tuple(int(k) for k in np.argwhere(bad)[0])


def _report(kind: str, o: int, i: int, numerical: np.ndarray, analytical: np.ndarray,
            where: tuple, atol: float, rtol: float) -> str:
    row, column = where
    return (
        f"Jacobian mismatch for output {o} with respect to input {i} ({kind}),\n"
        f"first mismatch at d output[{row}] / d input[{column}] (flat indices): "
        f"numerical {float(numerical[row, column]):.10g}, {kind} "
        f"{float(analytical[row, column]):.10g} (atol={atol}, rtol={rtol})\n"
        f"numerical:\n{np.array2string(numerical, precision=6)}\n"
        f"{kind}:\n{np.array2string(analytical, precision=6)}\n")


def gradcheck(func: Callable, inputs, *, eps: float = 1e-6, atol: float = 1e-5,
              rtol: float = 1e-3, raise_exception: bool = True, nondet_tol: float = 0.0,
              check_undefined_grad: bool = True, check_grad_dtypes: bool = False,
              check_batched_grad: bool = False, check_batched_forward_grad: bool = False,
              check_forward_ad: bool | None = None, check_backward_ad: bool = True,
              fast_mode: bool = False, masked: bool | None = None) -> bool:
    """Check the gradients of ``func`` at ``inputs`` (the Tensors with ``requires_grad``):
    reverse mode and forward mode against central finite differences.

    ``check_forward_ad`` defaults to checking forward mode too, skipped only for graphs with a
    custom Function that has no ``jvp`` (pass True to require it, False to skip it).

    >>> import jitgrad as torch
    >>> x = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    >>> torch.autograd.gradcheck(torch.exp, (x,))
    True
    """
    del nondet_tol, check_undefined_grad, check_batched_grad, check_batched_forward_grad
    del fast_mode, masked
    inputs = _as_tuple(inputs)
    wrt = _differentiable(inputs)
    if not wrt:
        raise ValueError("gradcheck expects at least one input tensor to require gradient, "
                         "but none of the them have requires_grad=True.")
    for i in wrt:
        if inputs[i].dtype is not F.dt.float64:
            import warnings

            warnings.warn(f"Input #{i} requires gradient and is not a double precision "
                          f"floating point; gradcheck is likely to fail (use float64)",
                          stacklevel=2)
    numerical = _numerical(func, inputs, wrt, eps)
    checks = []
    if check_backward_ad:
        checks.append(("reverse mode", _reverse(func, inputs, wrt)))
    if check_forward_ad is not False:
        try:
            checks.append(("forward mode", _forward(func, inputs, wrt)))
        except RuntimeError as error:
            if check_forward_ad or "does not implement jvp" not in str(error):
                raise
    for kind, analytical in checks:
        for o, per_input in enumerate(numerical):
            for w, expected in enumerate(per_input):
                got = analytical[o][w]
                if check_grad_dtypes and got.dtype != expected.dtype:
                    pass
                where = _first_mismatch(expected, got, atol, rtol)
                if where is not None:
                    if not raise_exception:
                        return False
                    raise GradcheckError(_report(kind, o, wrt[w], expected, got, where, atol,
                                                 rtol))
    return True


def gradgradcheck(func: Callable, inputs, grad_outputs=None, *, eps: float = 1e-6,
                  atol: float = 1e-5, rtol: float = 1e-3,
                  gen_non_contig_grad_outputs: bool = False, raise_exception: bool = True,
                  nondet_tol: float = 0.0, check_undefined_grad: bool = True,
                  check_grad_dtypes: bool = False, check_batched_grad: bool = False,
                  check_fwd_over_rev: bool | None = None, check_rev_over_rev: bool = True,
                  fast_mode: bool = False, masked: bool = False) -> bool:
    """Check second derivatives: ``gradcheck`` of ``(inputs, grad_outputs) ->
    autograd.grad(func(inputs), inputs, grad_outputs, create_graph=True)``, by reverse-over-
    reverse and forward-over-reverse against finite differences of the first derivative.

    >>> import jitgrad as torch
    >>> x = torch.tensor([0.5, 1.0], dtype=torch.float64, requires_grad=True)
    >>> torch.autograd.gradgradcheck(lambda x: x.sin() * x, (x,))
    True
    """
    del gen_non_contig_grad_outputs, nondet_tol, check_undefined_grad, check_batched_grad
    del fast_mode, masked
    from .engine import grad

    inputs = _as_tuple(inputs)
    wrt = _differentiable(inputs)
    with enable_grad():
        outputs = _outputs(func, inputs)
    if grad_outputs is None:
        rng = np.random.default_rng(0)
        grad_outputs = tuple(
            Tensor._wrap(rng.standard_normal(o.shape).astype(o.dtype.numpy), o.dtype)
            .requires_grad_(True) for o in outputs)
    grad_outputs = _as_tuple(grad_outputs)
    n_inputs = len(inputs)

    def first_derivative(*values):
        primal, cotangents = values[:n_inputs], values[n_inputs:]
        with enable_grad():
            outs = _outputs(func, primal)
            pairs = [(o, c) for o, c in zip(outs, cotangents) if o.requires_grad]
            grads = grad([o for o, _ in pairs], [primal[i] for i in wrt],
                         [c for _, c in pairs], create_graph=True, allow_unused=True)
        return tuple(g if g is not None else F.zeros_like(primal[i])
                     for g, i in zip(grads, wrt))

    return gradcheck(first_derivative, inputs + grad_outputs, eps=eps, atol=atol, rtol=rtol,
                     raise_exception=raise_exception, check_grad_dtypes=check_grad_dtypes,
                     check_forward_ad=check_fwd_over_rev, check_backward_ad=check_rev_over_rev)
