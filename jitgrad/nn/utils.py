"""``torch.nn.utils``' training helpers: gradient clipping (by total norm or by value) and
the flattening of parameters into one vector and back.

>>> import jitgrad as torch
>>> import jitgrad.nn.utils
>>> w = torch.nn.Parameter(torch.zeros(2))
>>> w.grad = torch.tensor([3.0, 4.0])
>>> torch.nn.utils.clip_grad_norm_(w, max_norm=1.0)
tensor(5.)
>>> w.grad
tensor([0.6000, 0.8000])
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from .. import _dtype as dt
from ..autograd.grad_mode import no_grad
from ..functions import cat, tensor
from ..tensor import Tensor
from ..utils._typename import typename

__all__ = ["clip_grad_norm_", "clip_grad_value_", "clip_grads_with_norm_", "get_total_norm",
           "parameters_to_vector", "vector_to_parameters"]


def _as_list(tensors: Tensor | Iterable[Tensor]) -> list[Tensor]:
    # a single tensor is iterable (over its rows): it must not be taken apart
    return [tensors] if isinstance(tensors, Tensor) else list(tensors)


def _vector_norm(values: np.ndarray, norm_type: float) -> float:
    """The ``norm_type``-norm of ``values`` seen as one flat vector (``linalg.vector_norm``),
    accumulated in float64 so that the result is the correctly rounded one."""
    flat = np.abs(np.asarray(values, dtype=np.float64).reshape(-1))
    if norm_type == math.inf:
        return float(flat.max()) if flat.size else 0.0
    if norm_type == -math.inf:
        return float(flat.min()) if flat.size else math.inf
    if norm_type == 0:
        return float(np.count_nonzero(flat))
    if norm_type == 1:
        return float(flat.sum())
    if norm_type == 2:
        return float(np.sqrt(np.dot(flat, flat)))
    return float(np.sum(flat ** norm_type) ** (1.0 / norm_type))


def get_total_norm(tensors: Tensor | Iterable[Tensor], norm_type: float = 2.0,
                   error_if_nonfinite: bool = False, foreach: bool | None = None) -> Tensor:
    """The ``norm_type``-norm of the norms of ``tensors`` (as if they were concatenated into
    one vector), a 0-d tensor of their promoted dtype; ``tensor(0.)`` for no tensors.
    ``foreach`` only selects an implementation in torch: the result is the same."""
    del foreach  # one implementation here; accepted for torch's signature
    tensors = [t for t in _as_list(tensors) if t is not None]
    norm_type = float(norm_type)
    if not tensors:
        return tensor(0.0)
    dtype = dt.from_numpy_dtype(np.result_type(*[t.dtype.numpy for t in tensors]))
    norms = [_vector_norm(t.detach().numpy(), norm_type) for t in tensors]
    # each norm is rounded to its dtype before the outer norm, as torch stacks them
    norms = [np.asarray(n, dtype=t.dtype.numpy) for n, t in zip(norms, tensors, strict=True)]
    total = tensor(_vector_norm(np.array(norms, dtype=np.float64), norm_type), dtype=dtype)
    if error_if_nonfinite and not math.isfinite(total.item()):
        raise RuntimeError(
            f"The total norm of order {norm_type} for gradients from `parameters` is "
            f"non-finite, so it cannot be clipped. To disable this error and scale the "
            f"gradients by the non-finite norm anyway, set `error_if_nonfinite=False`")
    return total


def clip_grads_with_norm_(parameters: Tensor | Iterable[Tensor], max_norm: float,
                          total_norm: Tensor, foreach: bool | None = None) -> None:
    """Scale the gradients of ``parameters`` in place by ``max_norm / (total_norm + 1e-6)``
    clamped to at most 1, given their total norm (see :func:`get_total_norm`)."""
    del foreach  # one implementation here; accepted for torch's signature
    grads = [p.grad for p in _as_list(parameters) if p.grad is not None]
    if not grads:
        return
    with no_grad():
        coef = (float(max_norm) / (total_norm + 1e-6)).clamp(max=1.0)
        for g in grads:
            # torch multiplies even by a coefficient of 1: the versions move all the same
            g.mul_(coef)


def clip_grad_norm_(parameters: Tensor | Iterable[Tensor], max_norm: float,
                    norm_type: float = 2.0, error_if_nonfinite: bool = False,
                    foreach: bool | None = None) -> Tensor:
    """Clip the gradients of ``parameters`` in place so that their total ``norm_type``-norm
    is at most ``max_norm`` (about: the coefficient is ``max_norm / (norm + 1e-6)``);
    parameters without a gradient are skipped. Returns the total norm before clipping. A
    non-finite norm raises ``RuntimeError`` when ``error_if_nonfinite``."""
    parameters = _as_list(parameters)  # a generator must be read once only
    grads = [p.grad for p in parameters if p.grad is not None]
    total = get_total_norm(grads, norm_type, error_if_nonfinite, foreach)
    clip_grads_with_norm_(parameters, max_norm, total, foreach)
    return total


def clip_grad_value_(parameters: Tensor | Iterable[Tensor], clip_value: float,
                     foreach: bool | None = None) -> None:
    """Clamp the gradients of ``parameters`` in place into ``[-clip_value, clip_value]``;
    parameters without a gradient are skipped."""
    del foreach  # one implementation here; accepted for torch's signature
    clip_value = float(clip_value)
    with no_grad():
        for p in _as_list(parameters):
            if p.grad is not None:
                p.grad.clamp_(min=-clip_value, max=clip_value)


def parameters_to_vector(parameters: Iterable[Tensor]) -> Tensor:
    """The parameters flattened and concatenated into one vector (recorded: gradients flow
    back to the parameters)."""
    return cat([p.reshape(-1) for p in parameters])


def vector_to_parameters(vec: Tensor, parameters: Iterable[Tensor]) -> None:
    """Copy consecutive slices of ``vec`` into the parameters' data, in order (the inverse of
    :func:`parameters_to_vector`)."""
    if not isinstance(vec, Tensor):
        raise TypeError(f"expected torch.Tensor, but got: {typename(vec)}")
    start = 0
    for p in parameters:
        n = p.numel()
        p.data = vec[start:start + n].view_as(p).data
        start += n
