"""``torch.special``: the special functions jitgrad has, each an op or a composition of
ops (so differentiable to any order and replayed by compiled tapes).

>>> import jitgrad as torch
>>> torch.special.xlogy(torch.tensor([0.0, 2.0]), torch.tensor([0.0, 3.0]))
tensor([0.0000, 2.1972])
"""
from __future__ import annotations

from . import _dtype as dt
from . import composite as C
from . import functions as F
from .functions import named
from .tensor import Tensor

__all__ = ["erf", "exp2", "expit", "expm1", "log1p", "log_softmax", "logit", "logsumexp",
           "softmax", "xlogy"]

erf = F.erf
expit = F.sigmoid
expm1 = F.expm1
log1p = F.log1p
logsumexp = F.logsumexp
log_softmax = F.log_softmax
softmax = F.softmax


def exp2(input: Tensor) -> Tensor:
    """``2 ** input``."""
    return named(F.pow(2.0, input), "Exp2Backward0")


def logit(input: Tensor, eps: float | None = None) -> Tensor:
    """``log(p / (1 - p))``; with ``eps``, of ``p`` clamped to ``[eps, 1 - eps]`` (the
    gradient is 0 outside, as torch's)."""
    p = input if eps is None else C.clamp(input, eps, 1.0 - eps)
    return named(F.log(p / (1.0 - p)), "LogitBackward0")


def xlogy(input, other) -> Tensor:
    """``input * log(other)``, 0 where ``input`` is 0 (``other`` not nan). The derivatives
    are torch's, ``log(other)`` (0 where ``input`` is 0 and ``other <= 0``) and
    ``input / other``, except at ``input = 0, other <= 0``, where the latter is 0 (torch:
    ``0 / other``, nan at 0)."""
    if not isinstance(input, Tensor):
        input = F.tensor(float(input), dtype=_float_of(other))
    if not isinstance(other, Tensor):
        other = F.tensor(float(other), dtype=_float_of(input))
    masked = (input == 0) & (other <= 0)
    log_other = F.where(masked, 0.0, F.log(F.where(masked, 1.0, other)))
    # + 0.0: a zero input gives +0, as torch's, where the product would be -0 for log < 0
    return named(input * log_other + 0.0, "XlogyBackward0")


def _float_of(t: Tensor):
    return t.dtype if t.dtype.is_floating_point else dt.get_default_dtype()
