"""``nn.functional``: activations, ``linear``, dropout and the losses, composed from
jitgrad's ops (so they are differentiable, to any order, with no rules of their own).

>>> import jitgrad as torch
>>> import jitgrad.nn.functional as F
>>> logits = torch.tensor([[2.0, 0.0, -1.0]], requires_grad=True)
>>> loss = F.cross_entropy(logits, torch.tensor([0]))
>>> loss
tensor(0.1698, grad_fn=<NllLossBackward0>)
>>> loss.backward()
>>> logits.grad
tensor([[-0.1562,  0.1142,  0.0420]])
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

from .. import _dtype as dt
from .. import functions as T
from ..autograd.grad_mode import no_grad
from ..recording import broadcast_shape
from ..tensor import Tensor

__all__ = [
    "batch_norm", "binary_cross_entropy", "binary_cross_entropy_with_logits", "celu",
    "cosine_similarity", "cross_entropy", "dropout", "embedding", "gelu", "hardsigmoid",
    "hardswish", "hardtanh", "huber_loss", "kl_div", "l1_loss", "layer_norm", "linear",
    "log_softmax", "mse_loss", "nll_loss", "normalize", "one_hot", "pad", "pairwise_distance",
    "relu", "relu6", "selu", "sigmoid", "smooth_l1_loss", "softmax", "softsign", "tanh",
    "tanhshrink",
]


# -- activations --------------------------------------------------------------------------------
def relu(input: Tensor, inplace: bool = False) -> Tensor:
    """``max(x, 0)``; its derivative at 0 is 0, as torch's."""
    if inplace:
        return T.inplace(input, lambda: T.relu(input))
    return T.relu(input)


def tanh(input: Tensor) -> Tensor:
    return T.tanh(input)


def sigmoid(input: Tensor) -> Tensor:
    return T.sigmoid(input)


def _softplus(z: Tensor) -> Tensor:
    """``log(1 + exp(z))`` without overflow: ``z + log1p(exp(-z))`` for z > 0, else
    ``log1p(exp(z))``. Each branch reads z through a where that gives the other branch 0,
    so neither overflows (an inf there would make its masked gradient 0 * inf = nan), and
    at z = 0 the smooth branch gives both derivatives (sigmoid(0), sigmoid'(0))."""
    positive = z > 0
    above = T.where(positive, z, 0.0)
    below = T.where(positive, 0.0, z)
    return T.where(positive, above + T.log1p(T.exp(-above)), T.log1p(T.exp(below)))


def softplus(input: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """``log(1 + exp(beta x)) / beta``, and ``x`` itself where ``beta x > threshold``."""
    z = input * beta if beta != 1.0 else input
    smooth = _softplus(z) / beta if beta != 1.0 else _softplus(z)
    return T.named(T.where(z > threshold, input, smooth), "SoftplusBackward0")


def logsigmoid(input: Tensor) -> Tensor:
    """``log(sigmoid(x)) = -softplus(-x)``, without overflow."""
    return T.named(-_softplus(-input), "LogSigmoidBackward0")


def silu(input: Tensor, inplace: bool = False) -> Tensor:
    """``x * sigmoid(x)`` (swish)."""
    if inplace:
        return T.inplace(input, lambda: silu(input))
    return T.named(input * T.sigmoid(input), "SiluBackward0")


def leaky_relu(input: Tensor, negative_slope: float = 0.01, inplace: bool = False) -> Tensor:
    """``x`` where ``x > 0``, else ``negative_slope * x`` (the slope's side at 0, as torch)."""
    if inplace:
        return T.inplace(input, lambda: leaky_relu(input, negative_slope))
    return T.named(T.where(input > 0, input, input * negative_slope), "LeakyReluBackward0")


def elu(input: Tensor, alpha: float = 1.0, inplace: bool = False) -> Tensor:
    """``x`` where ``x > 0``, else ``alpha * (exp(x) - 1)``."""
    if inplace:
        return T.inplace(input, lambda: elu(input, alpha))
    return T.named(_elu(input, alpha), "EluBackward0")


def _elu(input: Tensor, alpha: float, scale: float = 1.0, input_scale: float = 1.0,
         flat_at_zero: bool = False) -> Tensor:
    """torch's ELU family: ``scale * x`` where ``x > 0``, else
    ``scale * alpha * (exp(input_scale * x) - 1)``. At 0 the first derivative is the
    negative side's; with ``flat_at_zero`` the second is 0 there, as torch's."""
    # expm1 of x where x <= 0, of 0 elsewhere: the branch not taken never overflows
    below = T.where(input > 0, 0.0, input)
    negative = T.expm1(below * input_scale if input_scale != 1.0 else below) * (alpha * scale)
    if flat_at_zero:  # the tangent line at 0: the negative side's slope, no curvature
        negative = T.where(input == 0, input * (alpha * scale * input_scale), negative)
    return T.where(input > 0, input * scale if scale != 1.0 else input, negative)


def hardtanh(input: Tensor, min_val: float = -1.0, max_val: float = 1.0,
             inplace: bool = False) -> Tensor:
    """``x`` clamped to ``[min_val, max_val]``; the gradient is 1 strictly inside only."""
    if min_val > max_val:
        raise ValueError("min_val cannot be greater than max_val")
    if inplace:
        return T.inplace(input, lambda: hardtanh(input, min_val, max_val))
    # nested wheres, not clamp: clamp passes the gradient at the bounds, torch's does not
    inside = T.where(input >= max_val, max_val, input)
    return T.named(T.where(input <= min_val, min_val, inside), "HardtanhBackward0")


def relu6(input: Tensor, inplace: bool = False) -> Tensor:
    """``min(max(x, 0), 6)`` (torch's ``hardtanh(x, 0, 6)``)."""
    return hardtanh(input, 0.0, 6.0, inplace)


def hardsigmoid(input: Tensor, inplace: bool = False) -> Tensor:
    """``x / 6 + 1 / 2`` clamped to ``[0, 1]``; the gradient is 1/6 strictly inside."""
    if inplace:
        return T.inplace(input, lambda: hardsigmoid(input))
    inside = T.where(input >= 3.0, 1.0, input / 6.0 + 0.5)
    return T.named(T.where(input <= -3.0, 0.0, inside), "HardsigmoidBackward0")


def hardswish(input: Tensor, inplace: bool = False) -> Tensor:
    """``x * hardsigmoid(x)``; at -3 and 3 the outer sides' derivatives (0 and 1), as
    torch's."""
    if inplace:
        return T.inplace(input, lambda: hardswish(input))
    inside = T.where(input < 3.0, input * (input + 3.0) / 6.0, input)
    return T.named(T.where(input <= -3.0, 0.0, inside), "HardswishBackward0")


_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def selu(input: Tensor, inplace: bool = False) -> Tensor:
    """``scale * elu(x, alpha)`` with the self-normalizing constants."""
    if inplace:
        return T.inplace(input, lambda: selu(input))
    return T.named(_elu(input, _SELU_ALPHA, _SELU_SCALE, flat_at_zero=True),
                   "EluBackward0")


def celu(input: Tensor, alpha: float = 1.0, inplace: bool = False) -> Tensor:
    """``max(0, x) + min(0, alpha * (exp(x / alpha) - 1))``."""
    if alpha == 0:
        raise RuntimeError("ZeroDivisionError: alpha cannot be 0 for CELU")
    if inplace:
        return T.inplace(input, lambda: celu(input, alpha))
    return T.named(_elu(input, alpha, 1.0, 1.0 / alpha, flat_at_zero=True),
                   "CeluBackward0")


def softsign(input: Tensor) -> Tensor:
    """``x / (1 + |x|)``."""
    return input / (T.abs(input) + 1.0)


def tanhshrink(input: Tensor) -> Tensor:
    """``x - tanh(x)``."""
    return input - T.tanh(input)


def gelu(input: Tensor, approximate: str = "none") -> Tensor:
    """``x * Phi(x)``, ``Phi`` the standard normal distribution function: torch's exact
    form ``x / 2 * (1 + erf(x / sqrt(2)))``, or with ``approximate='tanh'``
    ``x / 2 * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3)))``."""
    if approximate not in ("none", "tanh"):
        raise RuntimeError("approximate argument must be either none or tanh.")
    if approximate == "none":
        return T.named(input * 0.5 * (T.erf(input * math.sqrt(0.5)) + 1.0), "GeluBackward0")
    inner = (input + input * input * input * 0.044715) * math.sqrt(2.0 / math.pi)
    return T.named(input * 0.5 * (T.tanh(inner) + 1.0), "GeluBackward0")


def _softmax_dim(name: str, ndim: int, dim: int | None) -> int:
    if dim is not None:
        return dim
    warnings.warn(f"Implicit dimension choice for {name} has been deprecated. Change the call "
                  f"to include dim=X as an argument.", stacklevel=3)
    return 0 if ndim in (0, 1, 3) else 1


def softmax(input: Tensor, dim: int | None = None, dtype=None) -> Tensor:
    """``exp(x) / sum(exp(x))`` along ``dim``, computed without overflow."""
    return T.softmax(input, _softmax_dim("softmax", input.ndim, dim), dtype)


def log_softmax(input: Tensor, dim: int | None = None, dtype=None) -> Tensor:
    """``x - logsumexp(x)`` along ``dim``."""
    return T.log_softmax(input, _softmax_dim("log_softmax", input.ndim, dim), dtype)


# -- layers -------------------------------------------------------------------------------------
def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``input @ weight.T + bias``; ``weight`` is ``(out_features, in_features)``."""
    # one recorded product: the weight read in place, the bias row added
    return T.linear(input, weight, bias)


def dropout(input: Tensor, p: float = 0.5, training: bool = True,
            inplace: bool = False) -> Tensor:
    """Zero each element with probability ``p`` and scale the others by ``1 / (1 - p)``
    (identity unless ``training``). The mask comes from jitgrad's default generator."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return input
    if p == 1.0:
        mask = np.zeros(tuple(input.shape), input.dtype.numpy)
    else:
        keep = T.rand(*input.shape, dtype=input.dtype).numpy() >= p
        mask = np.multiply(keep, 1.0 / (1.0 - p), dtype=input.dtype.numpy)
    mask = T.from_numpy(mask)
    return input.mul_(mask) if inplace else input * mask


def embedding(input: Tensor, weight: Tensor, padding_idx: int | None = None) -> Tensor:
    """Rows of ``weight`` picked by the integer tensor ``input`` (shape ``input.shape +
    (embedding_dim,)``). The row ``padding_idx`` gets no gradient."""
    if input.dtype is not dt.int64:
        raise RuntimeError(f"Expected tensor for argument #1 'indices' to have one of the "
                           f"following scalar types: Long, Int; but got {input.dtype} instead")
    index = input.numpy()
    rows = weight.shape[0]
    if index.size and (index.min() < 0 or index.max() >= rows):  # no wrap-around, as torch
        raise IndexError("index out of range in self")
    out = weight[index]
    if padding_idx is not None and out.requires_grad:
        pad = T.from_numpy(np.ascontiguousarray((index == padding_idx)[..., None]))
        out = T.where(pad, out.detach(), out)
    return out


def one_hot(tensor: Tensor, num_classes: int = -1) -> Tensor:
    """``(..., num_classes)`` int64 tensor with a 1 at each index."""
    index = tensor.numpy()
    if num_classes < 0:
        num_classes = int(index.max()) + 1 if index.size else 0
    if index.size and (index.min() < 0 or index.max() >= num_classes):
        raise RuntimeError("Class values must be smaller than num_classes.")
    return T.from_numpy(np.ascontiguousarray(
        (index[..., None] == np.arange(num_classes)).astype(np.int64)))


def _vector_norm(input: Tensor, p: float, dim: int, keepdim: bool) -> Tensor:
    """The ``p``-norm along ``dim`` for ``p > 0`` (``inf``: the largest magnitude)."""
    if p == 2:
        return T.norm(input, 2, dim, keepdim)
    if not p > 0:
        raise NotImplementedError(f"jitgrad supports p-norms with p > 0 only, got p={p}")
    magnitude = T.abs(input)
    if p == 1:
        return T.sum(magnitude, dim, keepdim)
    if p == math.inf:
        return T.amax(magnitude, dim, keepdim)
    return T.sum(magnitude ** p, dim, keepdim) ** (1.0 / p)


def normalize(input: Tensor, p: float = 2.0, dim: int = 1, eps: float = 1e-12) -> Tensor:
    """``x / max(||x||_p, eps)`` along ``dim`` (``p > 0``)."""
    return input / T.clamp(_vector_norm(input, p, dim, True), min=eps)


def cosine_similarity(x1: Tensor, x2: Tensor, dim: int = 1, eps: float = 1e-8) -> Tensor:
    """``sum(x1 / ||x1|| * x2 / ||x2||)`` along ``dim``, each norm at least ``eps``."""
    shape = broadcast_shape("cosine_similarity", tuple(x1.shape), tuple(x2.shape))
    x1 = x1 if tuple(x1.shape) == shape else T.broadcast_to(x1, shape)
    x2 = x2 if tuple(x2.shape) == shape else T.broadcast_to(x2, shape)

    def unit(x: Tensor) -> Tensor:
        # torch clamps the norm in place under no_grad: the value is clamped, the graph is
        # the norm's
        norm = T.norm(x, 2, dim, True)
        fixed = norm.detach()
        return x / (norm + (T.clamp(fixed, min=eps) - fixed))

    return (unit(x1) * unit(x2)).sum(dim)


def pairwise_distance(x1: Tensor, x2: Tensor, p: float = 2.0, eps: float = 1e-6,
                      keepdim: bool = False) -> Tensor:
    """``||x1 - x2 + eps||_p`` along the last dim."""
    dim = max(x1.ndim, x2.ndim) - 1
    return T.named(_vector_norm(x1 - x2 + eps, p, dim, keepdim), "NormBackward1")


def pad(input: Tensor, pad: Sequence[int], mode: str = "constant",
        value: float | None = None) -> Tensor:
    """Pad the last ``len(pad) // 2`` dims, ``pad = (last_before, last_after,
    second_last_before, ...)``, with ``value`` (0); negative amounts crop. Only
    ``mode='constant'``."""
    if mode != "constant":
        if mode in ("reflect", "replicate", "circular"):
            raise NotImplementedError(f"pad: jitgrad supports mode='constant' only, got "
                                      f"mode='{mode}'")
        raise NotImplementedError(f"Unrecognised padding mode {mode}")
    if len(pad) % 2:
        raise RuntimeError("Padding length must be divisible by 2")
    if len(pad) // 2 > input.ndim:
        raise RuntimeError(f"Padding length should be less than or equal to two times the "
                           f"input dimension but got padding length {len(pad)} and input of "
                           f"dimension {input.ndim}")
    fill = 0.0 if value is None else value
    out = input
    for k in range(len(pad) // 2):
        d = input.ndim - 1 - k
        before, after = int(pad[2 * k]), int(pad[2 * k + 1])
        size = out.shape[d]
        start, stop = max(-before, 0), size - max(-after, 0)
        if size + before + after < 0 or stop < start:
            raise RuntimeError(f"The input size {size}, plus negative padding {before} and "
                               f"{after} resulted in a negative output size, which is invalid. "
                               f"Check dimension {d} of your input.")
        if start or stop != size:
            out = out[(slice(None),) * d + (slice(start, stop),)]
        parts = [out]
        for amount, at in ((before, 0), (after, len(parts) + 1)):
            if amount > 0:
                block = (*out.shape[:d], amount, *out.shape[d + 1:])
                parts.insert(at, T.full(block, fill, dtype=out.dtype))
        if len(parts) > 1:
            out = T.cat(parts, d)
    if out is input:  # nothing to pad: still a new tensor, as torch's
        out = T.clone(input)
    return T.named(out, "ConstantPadNdBackward0")


def _standardized(input: Tensor, dims: tuple, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(x - mean) / sqrt(var + eps)`` over ``dims`` (the biased variance), with the mean
    and variance (kept dims)."""
    mean = T.mean(input, dims, keepdim=True)
    centered = input - mean
    var = T.mean(centered * centered, dims, keepdim=True)
    return centered / T.sqrt(var + eps), mean, var


def layer_norm(input: Tensor, normalized_shape: Sequence[int],
               weight: Tensor | None = None, bias: Tensor | None = None,
               eps: float = 1e-5) -> Tensor:
    """Standardize over the last ``len(normalized_shape)`` dims, then ``* weight + bias``
    (elementwise, shaped ``normalized_shape``)."""
    if isinstance(normalized_shape, int):  # the module takes one, the function does not
        raise TypeError("layer_norm(): argument 'normalized_shape' (position 2) must be tuple "
                        "of ints, not int")
    shape = tuple(int(n) for n in normalized_shape)
    if not shape:
        raise RuntimeError("Expected normalized_shape to be at least 1-dimensional, i.e., "
                           "containing at least one element, but got normalized_shape = []")
    k = len(shape)
    if input.ndim < k or tuple(input.shape[input.ndim - k:]) != shape:
        raise RuntimeError(f"Given normalized_shape={list(shape)}, expected input with shape "
                           f"[*, {', '.join(map(str, shape))}], but got input of size"
                           f"{list(input.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != shape:
            raise RuntimeError(f"Expected {name} to be of same shape as normalized_shape, but "
                               f"got {name} of shape {list(t.shape)} and normalized_shape = "
                               f"{list(shape)}")
    out = _standardized(input, tuple(range(input.ndim - k, input.ndim)), eps)[0]
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return T.named(out, "NativeLayerNormBackward0")


def batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
               weight: Tensor | None = None, bias: Tensor | None = None,
               training: bool = False, momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Standardize each channel (dim 1) over the other dims, then ``* weight + bias``.
    In training the batch's statistics are used (biased variance) and the running ones,
    if given, move towards them by ``momentum`` (unbiased variance), unrecorded; otherwise
    the running statistics are used."""
    if input.ndim < 2:
        raise ValueError(f"expected at least 2D input (got {input.ndim}D input)")
    channels = input.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        if t is not None and t.numel() != channels:
            raise RuntimeError(f"{name} should contain {channels} elements not {t.numel()}")
    count = input.numel() // max(channels, 1)
    if training and count == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input "
                         f"size {input.shape}")
    dims = (0, *range(2, input.ndim))
    column = (1, channels) + (1,) * (input.ndim - 2)
    if training:
        out, mean, var = _standardized(input, dims, eps)
        if running_mean is not None and running_var is not None:
            with no_grad():
                unbiased = var.detach() * (count / max(count - 1, 1))
                running_mean.copy_(running_mean * (1.0 - momentum)
                                   + T.reshape(mean.detach(), channels) * momentum)
                running_var.copy_(running_var * (1.0 - momentum)
                                  + T.reshape(unbiased, channels) * momentum)
    else:
        if running_mean is None or running_var is None:
            raise RuntimeError("batch_norm: running_mean and running_var are needed when not "
                               "training")
        out = ((input - T.reshape(running_mean, *column))
               / T.sqrt(T.reshape(running_var, *column) + eps))
    if weight is not None:
        out = out * T.reshape(weight, *column)
    if bias is not None:
        out = out + T.reshape(bias, *column)
    return T.named(out, "NativeBatchNormBackward0")


# -- losses -----------------------------------------------------------------------------------
def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _legacy_reduction(size_average, reduce, reduction: str) -> str:
    """torch's deprecated ``size_average``/``reduce`` pair, mapped to ``reduction``."""
    if size_average is None and reduce is None:
        return reduction
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    result = "none" if not reduce else "mean" if size_average else "sum"
    warnings.warn(f"size_average and reduce args will be deprecated, please use "
                  f"reduction='{result}' instead.", stacklevel=3)
    return result


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{reduction} is not a valid value for reduction")


def _warn_broadcast(input: Tensor, target: Tensor) -> None:
    if target.shape != input.shape:
        warnings.warn(
            f"Using a target size ({target.shape}) that is different to the input size "
            f"({input.shape}). This will likely lead to incorrect results due to "
            f"broadcasting. Please ensure they have the same size.", stacklevel=3)


def mse_loss(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Mean (``reduction``) of ``(input - target) ** 2``."""
    _check_reduction(reduction)
    _warn_broadcast(input, target)
    return T.named(_reduce((input - target) ** 2, reduction), "MseLossBackward0")


def l1_loss(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Mean (``reduction``) of ``|input - target|``."""
    _check_reduction(reduction)
    _warn_broadcast(input, target)
    return _reduce(T.abs(input - target), reduction)


def smooth_l1_loss(input: Tensor, target: Tensor, size_average=None, reduce=None,
                   reduction: str = "mean", beta: float = 1.0) -> Tensor:
    """``0.5 d^2 / beta`` where ``|d| < beta``, else ``|d| - beta / 2`` (``d = input -
    target``); ``beta = 0`` is the L1 loss."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    _check_reduction(reduction)
    _warn_broadcast(input, target)
    if beta < 0:
        raise RuntimeError("smooth_l1_loss does not support negative values for beta.")
    diff = input - target
    magnitude = T.abs(diff)
    if beta == 0.0:
        return _reduce(magnitude, reduction)
    # the square only strictly inside, as torch: at |d| = beta the curvature is 0
    loss = T.where(magnitude < beta, diff * diff * (0.5 / beta), magnitude - 0.5 * beta)
    return T.named(_reduce(loss, reduction), "SmoothL1LossBackward0")


def huber_loss(input: Tensor, target: Tensor, reduction: str = "mean", delta: float = 1.0,
               weight: Tensor | None = None) -> Tensor:
    """``0.5 d^2`` where ``|d| < delta``, else ``delta (|d| - delta / 2)``, optionally
    weighted elementwise before the reduction."""
    _check_reduction(reduction)
    _warn_broadcast(input, target)
    if delta <= 0:
        raise RuntimeError("huber_loss does not support non-positive values for delta.")
    diff = input - target
    magnitude = T.abs(diff)
    loss = T.where(magnitude < delta, diff * diff * 0.5, (magnitude - 0.5 * delta) * delta)
    if weight is None:
        return T.named(_reduce(loss, reduction), "HuberLossBackward0")
    if weight.shape != input.shape:
        raise ValueError("Weights and input must have the same size.")
    return _reduce(T.named(loss, "HuberLossBackward0") * weight, reduction)


def kl_div(input: Tensor, target: Tensor, size_average=None, reduce=None,
           reduction: str = "mean", log_target: bool = False) -> Tensor:
    """``target * (log(target) - input)`` (``input`` log-probabilities; ``target``
    probabilities, or log-probabilities if ``log_target``), 0 where ``target`` is 0.
    ``reduction='batchmean'`` divides the sum by the batch size (the KL divergence)."""
    if size_average is not None or reduce is not None:
        reduction = _legacy_reduction(size_average, reduce, reduction)
    elif reduction == "mean":
        warnings.warn("reduction: 'mean' divides the total loss by both the batch size and the "
                      "support size.'batchmean' divides only by the batch size, and aligns "
                      "with the KL div math definition.'mean' will be changed to behave the "
                      "same as 'batchmean' in the next major release.", stacklevel=2)
    if reduction != "batchmean":
        _check_reduction(reduction)
    if log_target:
        loss = T.exp(target) * (target - input)
    else:
        # xlogy(t, t): 0 at t = 0 (log read at 1 there, so its gradient is finite too)
        safe = T.where(target == 0, 1.0, target)
        loss = target * T.log(safe) - target * input
    if reduction == "batchmean":
        total = loss.sum()
        return total / float(input.shape[0]) if input.ndim else total
    return _reduce(loss, reduction)


def _class_rows(input: Tensor, target: Tensor, op: str):
    """``input`` as rows ``(M, C)`` of class scores and ``target`` as ``M`` indices, for
    inputs ``(C,)``, ``(N, C)`` or ``(N, C, d1, ...)``; also the shape of an unreduced
    loss."""
    if input.ndim == 0:
        raise ValueError(f"{op}: input must have at least one dimension (the classes)")
    if target.dtype is not dt.int64:
        raise RuntimeError(f"expected target dtype to be Long or Byte, but got "
                           f"{target.dtype.name.capitalize()}")
    if input.ndim == 1:
        if target.ndim != 0:
            raise RuntimeError(f"{op}: an unbatched input of shape {list(input.shape)} needs "
                               f"a 0-d target, got shape {list(target.shape)}")
        return T.unsqueeze(input, 0), target.numpy().reshape(1), ()
    if target.ndim == 0 or target.shape[0] != input.shape[0]:
        size = target.shape[0] if target.ndim else 0
        raise ValueError(f"Expected input batch_size ({input.shape[0]}) to match target "
                         f"batch_size ({size}).")
    expected = (input.shape[0], *input.shape[2:])
    if tuple(target.shape) != expected:
        raise RuntimeError(f"Expected target size {list(expected)}, got {list(target.shape)}")
    rows = input
    if input.ndim > 2:  # classes last, then one row per position
        rows = T.permute(input, 0, *range(2, input.ndim), 1)
        rows = T.reshape(rows, -1, input.shape[1])
    return rows, target.numpy().reshape(-1), tuple(target.shape)


def _checked_weight(weight: Tensor | None, classes: int):
    if weight is None:
        return None
    if weight.ndim != 1 or weight.shape[0] != classes:
        raise RuntimeError("weight tensor should be defined either for all or no classes")
    return weight.detach().numpy()


def _every_target_valid(index: np.ndarray, classes: int, ignore_index: int) -> bool:
    """All targets are classes and none is ``ignore_index`` (two reductions; the exact
    masks are only computed when this fails)."""
    if not index.size:
        return False
    low, high = np.minimum.reduce(index), np.maximum.reduce(index)
    return 0 <= low and high < classes and not low <= ignore_index <= high


def _picked(rows: Tensor, index: np.ndarray, ignore_index: int, weight, reduction: str,
            shape: tuple) -> Tensor:
    """The negative log-likelihood ``-w[t] * rows[i, t]`` of each row, reduced as torch's
    ``nll_loss``: ``mean`` divides by the total weight of the rows not ignored."""
    classes = rows.shape[1]
    dtype = rows.dtype.numpy
    every_row = _every_target_valid(index, classes, ignore_index)
    keep = None if every_row else index != ignore_index
    if not every_row:
        bad = keep & ((index < 0) | (index >= classes))
        if bad.any():
            raise IndexError(f"Target {index[bad][0]} is out of bounds.")
        every_row = bool(keep.all())
    if reduction != "none" and not every_row:  # only the rows kept take part
        kept = np.flatnonzero(keep)
        loss = -rows[kept, index[kept]]
        w = None if weight is None else weight[index[kept]].astype(dtype)
    else:
        safe = index if every_row else np.where(keep, index, 0)
        loss = -rows[np.arange(index.size), safe]
        w = None if weight is None else weight[safe].astype(dtype)
        if not every_row:
            w = keep.astype(dtype) if w is None else w * keep
    if w is not None:
        loss = loss * T.from_numpy(np.ascontiguousarray(w))
    if reduction == "none":
        if not every_row:  # 0 where ignored, even where the row holds -inf
            loss = T.where(T.from_numpy(keep), loss, 0.0)
        return T.reshape(loss, *shape) if shape != tuple(loss.shape) else loss
    if reduction == "sum":
        return loss.sum()
    if w is None:  # every row kept, or the kept ones only (nan when none is, as torch)
        return loss.mean() if every_row else loss.sum() / float(loss.shape[0])
    return loss.sum() / float(w.sum())


def nll_loss(input: Tensor, target: Tensor, weight: Tensor | None = None,
             ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """Negative log-likelihood of class indices ``target`` given log-probabilities
    ``input`` (``(N, C)``, ``(C,)`` or ``(N, C, d1, ...)``), optionally class-weighted."""
    _check_reduction(reduction)
    rows, index, shape = _class_rows(input, target, "nll_loss")
    weight = _checked_weight(weight, rows.shape[1])
    return T.named(_picked(rows, index, ignore_index, weight, reduction, shape),
                   "NllLossBackward0")


def cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None,
                  ignore_index: int = -100, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy of the logits ``input`` (classes along dim 1) with class indices
    ``target`` (int64), or with class probabilities (a float target shaped like
    ``input``): ``nll_loss(log_softmax(input, 1), target)``, with torch's weighting,
    ``ignore_index`` and ``label_smoothing``."""
    _check_reduction(reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise RuntimeError(f"label_smoothing must be between 0.0 and 1.0. Got: "
                           f"{label_smoothing}")
    if (weight is None and label_smoothing == 0.0 and input.ndim == 2 and target.ndim == 1
            and target.dtype is dt.int64 and target.shape[0] == input.shape[0]):
        index = target.numpy()
        if _every_target_valid(index, input.shape[1], ignore_index):
            # the common case in fewer recorded ops: -log_softmax(x)[i, t] = lse(x_i) - x[i, t]
            # x[i, t_i] as one gather at flat positions (indexing would rebuild them)
            flat = np.arange(0, index.size * input.shape[1], input.shape[1]) + index
            picked = T._gather("index", input, flat, (index.size,), None)
            return T.named(_reduce(T.logsumexp(input, 1) - picked, reduction),
                           "NllLossBackward0")
    class_dim = 0 if input.ndim == 1 else 1
    logp = T.log_softmax(input, class_dim)
    if target.dtype.is_floating_point and target.shape == input.shape:
        return _soft_cross_entropy(logp, target, weight, reduction, label_smoothing,
                                   class_dim)
    rows, index, shape = _class_rows(logp, target, "cross_entropy")
    classes = rows.shape[1]
    w = _checked_weight(weight, classes)
    loss = _picked(rows, index, ignore_index, w, reduction, shape)
    if label_smoothing == 0.0:
        return T.named(loss, "NllLossBackward0")
    # torch's smoothing term: the (weighted) mean of -log p over the classes
    scaled = rows if w is None else rows * T.from_numpy(np.ascontiguousarray(
        w.astype(rows.dtype.numpy)))
    smooth = -scaled.sum(1)
    keep = index != ignore_index
    if not keep.all():
        smooth = T.where(T.from_numpy(keep), smooth, 0.0)
    if reduction == "mean":
        total = float(keep.sum()) if w is None else float(w[index[keep]].sum())
        smooth = smooth.sum() / total
    elif reduction == "sum":
        smooth = smooth.sum()
    elif shape != tuple(smooth.shape):
        smooth = T.reshape(smooth, *shape)
    return loss * (1.0 - label_smoothing) + smooth * (label_smoothing / classes)


def _soft_cross_entropy(logp: Tensor, target: Tensor, weight, reduction: str,
                        label_smoothing: float, class_dim: int) -> Tensor:
    classes = logp.shape[class_dim]
    if label_smoothing > 0.0:
        target = target * (1.0 - label_smoothing) + label_smoothing / classes
    product = logp * target
    if weight is not None:
        w = _checked_weight(weight, classes).astype(logp.dtype.numpy)
        w = w.reshape((classes,) + (1,) * (logp.ndim - class_dim - 1))
        product = product * T.from_numpy(np.ascontiguousarray(w))
    loss = -product.sum(class_dim)
    if reduction == "mean":
        return loss.sum() / float(max(logp.numel() // max(classes, 1), 1))
    return _reduce(loss, reduction)


def _log_clamped(x: Tensor, zeros: np.ndarray) -> Tensor:
    """``max(log(x), -100)`` as torch's BCE; where ``x`` is exactly 0 the log is taken of
    1 instead and 100 subtracted, so that the gradient there is finite, not 0 * inf."""
    if not zeros.any():
        return T.clamp(T.log(x), min=-100.0)
    mask = T.from_numpy(zeros.astype(x.dtype.numpy))
    return T.clamp(T.log(x + mask), min=-100.0) - mask * 100.0


def binary_cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None,
                         reduction: str = "mean") -> Tensor:
    """``-(t log(x) + (1 - t) log(1 - x))`` for probabilities ``input``, logs clamped at
    -100 as torch's."""
    _check_reduction(reduction)
    if target.shape != input.shape:
        raise ValueError(f"Using a target size ({target.shape}) that is different to the "
                         f"input size ({input.shape}) is deprecated. Please ensure they have "
                         f"the same size.")
    x = input.detach().numpy()
    if ((x < 0) | (x > 1)).any():
        raise RuntimeError("all elements of input should be between 0 and 1")
    loss = -(target * _log_clamped(input, x == 0)
             + (1.0 - target) * _log_clamped(1.0 - input, x == 1))
    if weight is not None:
        loss = loss * weight
    return T.named(_reduce(loss, reduction), "BinaryCrossEntropyBackward0")


def binary_cross_entropy_with_logits(input: Tensor, target: Tensor,
                                     weight: Tensor | None = None, reduction: str = "mean",
                                     pos_weight: Tensor | None = None) -> Tensor:
    """BCE of ``sigmoid(input)``, computed stably from the logits as torch does:
    ``(1 - t) x + (1 + (pos_weight - 1) t) softplus(-x)``."""
    _check_reduction(reduction)
    if target.shape != input.shape:
        raise ValueError(f"Target size ({target.shape}) must be the same as input size "
                         f"({input.shape})")
    softplus = _softplus(-input)  # exact to second order at 0 (see _softplus)
    if pos_weight is None:
        loss = (1.0 - target) * input + softplus
    else:
        loss = (1.0 - target) * input + ((pos_weight - 1.0) * target + 1.0) * softplus
    if weight is not None:
        loss = loss * weight
    return T.named(_reduce(loss, reduction), "BinaryCrossEntropyWithLogitsBackward0")
