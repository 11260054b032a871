"""torch functions written as compositions of the recorded ops: their derivatives, to any
order, and their forward-mode rules come from those ops; none has a rule of its own. Each
shows torch's ``grad_fn`` name (``functions.named``) where torch's is a single op.

>>> import jitgrad as torch
>>> x = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
>>> y = torch.gather(x, 1, torch.tensor([[1], [0]]))
>>> y
tensor([[2.],
        [3.]], grad_fn=<GatherBackward0>)
>>> y.sum().backward()
>>> x.grad
tensor([[0., 1.],
        [1., 0.]])
"""
from __future__ import annotations

import builtins
import math
from collections import namedtuple

import numpy as np

from . import _dtype as dt
from . import functions as F
from .functions import named
from .tensor import Tensor

__all__ = [
    "argsort", "chunk", "clamp_max", "clamp_min", "cosh", "cumprod", "cumsum", "diag", "diff",
    "dist", "flip",
    "gather", "index_select", "isclose", "lerp", "log2", "log10", "logaddexp", "logspace",
    "masked_fill", "narrow", "normal", "outer", "repeat", "roll", "rsqrt", "sinh", "sort",
    "split", "square", "std_mean", "topk", "trace", "tril", "triu", "unbind", "var_mean",
]

_SortResult = namedtuple("sort", ["values", "indices"])
_TopkResult = namedtuple("topk", ["values", "indices"])


# -- elementwise ---------------------------------------------------------------------------------
def square(input: Tensor) -> Tensor:
    """``input ** 2`` (grad_fn ``PowBackward0``, as torch's)."""
    return F.pow(input, 2)


def rsqrt(input: Tensor) -> Tensor:
    """``1 / sqrt(input)``."""
    return named(F.reciprocal(F.sqrt(input)), "RsqrtBackward0")


def sinh(input: Tensor) -> Tensor:
    """Hyperbolic sine, through ``expm1`` so that it keeps its digits near 0."""
    return named((F.expm1(input) - F.expm1(F.neg(input))) * 0.5, "SinhBackward0")


def cosh(input: Tensor) -> Tensor:
    """Hyperbolic cosine."""
    return named((F.exp(input) + F.exp(F.neg(input))) * 0.5, "CoshBackward0")


def log2(input: Tensor) -> Tensor:
    """Base-2 logarithm."""
    return named(F.log(input) * (1.0 / math.log(2.0)), "Log2Backward0")


def log10(input: Tensor) -> Tensor:
    """Base-10 logarithm."""
    return named(F.log(input) * (1.0 / math.log(10.0)), "Log10Backward0")


def _bound(value, like: Tensor) -> Tensor:
    return value if isinstance(value, Tensor) else F.tensor(value, dtype=like.dtype)


def clamp(input: Tensor, min=None, max=None) -> Tensor:  # noqa: A002 - torch's names
    """``clamp`` with tensor bounds as well as numbers: the gradient reaches ``input`` where
    ``min <= input <= max``, ``min`` where ``input < min`` and ``max`` where
    ``input > max``, as torch's."""
    if not isinstance(min, Tensor) and not isinstance(max, Tensor):
        return F.clamp(input, min, max)
    out = input
    if min is not None:
        low = _bound(min, input)
        out = F.where(F.lt(input, low), low, out)
    if max is not None:  # after min: where min > max, max wins, as in torch
        high = _bound(max, input)
        out = F.where(F.gt(out, high), high, out)
    return named(out, "ClampBackward0")  # torch's name with tensor bounds


def clamp_min(input: Tensor, min) -> Tensor:  # noqa: A002
    """``clamp(input, min=min)``."""
    suffix = "1" if isinstance(min, Tensor) else "0"
    return named(clamp(input, min=min), "ClampMinBackward" + suffix)


def clamp_max(input: Tensor, max) -> Tensor:  # noqa: A002
    """``clamp(input, max=max)``."""
    suffix = "1" if isinstance(max, Tensor) else "0"
    return named(clamp(input, max=max), "ClampMaxBackward" + suffix)


def masked_fill(input: Tensor, mask: Tensor, value) -> Tensor:
    """``value`` where ``mask`` holds, else ``input`` (the gradient reaches a tensor
    ``value`` from the masked places)."""
    if not isinstance(mask, Tensor) or mask.dtype is not dt.bool_:
        raise RuntimeError("masked_fill_ only supports boolean masks, but got mask with dtype "
                           f"{getattr(mask, 'dtype', type(mask).__name__)}")
    name = "MaskedFillBackward1" if isinstance(value, Tensor) else "MaskedFillBackward0"
    if isinstance(value, Tensor):
        if value.ndim:
            raise RuntimeError("masked_fill_ only supports a 0-dimensional value tensor, but "
                               f"got tensor with {value.ndim} dimension(s).")
        value = F.to_dtype(value, input.dtype)
    else:
        value = F.tensor(value, dtype=input.dtype)
    return named(F.where(mask, value, input), name)


def isclose(input: Tensor, other: Tensor, rtol: float = 1e-05, atol: float = 1e-08,
            equal_nan: bool = False) -> Tensor:
    """``|input - other| <= atol + rtol * |other|`` elementwise (equal infinities too), as
    a bool tensor; made of comparisons, so a compiled tape guards what depends on it."""
    a, b = input.detach(), other.detach() if isinstance(other, Tensor) else other
    close = F.logical_or(F.eq(a, b), F.le(F.abs(a - b), atol + rtol * F.abs(_bound(b, a))))
    if equal_nan:
        close = F.logical_or(close, F.logical_and(F.isnan(a), F.isnan(_bound(b, a))))
    return close


# -- selections of elements ----------------------------------------------------------------------
def _grid(t: Tensor) -> np.ndarray:
    """The flat position of each element of ``t``, in its shape."""
    return np.arange(t.numel(), dtype=np.int64).reshape(tuple(t.shape))


def _index_array(index, op: str) -> np.ndarray:
    if isinstance(index, Tensor):
        if index.dtype is not dt.int64:
            raise RuntimeError(f"{op}(): Expected dtype int64 for index")
        return np.asarray(index._value())
    return np.asarray(index, dtype=np.int64)


def _taken(name: str, t: Tensor, positions: np.ndarray) -> Tensor:
    """The elements of ``t`` at flat ``positions`` (in their shape), recorded as one
    gather named ``name``."""
    out = F._gather("index", t, np.ascontiguousarray(positions).reshape(-1),
                    positions.shape, None)
    return named(out, name)


def gather(input: Tensor, dim: int, index: Tensor) -> Tensor:
    """``out[i][j][k] = input[i][index[i][j][k]][k]`` for ``dim == 1``, and likewise."""
    d = F._canonical_dim(dim, builtins.max(input.ndim, 1), "gather")
    idx = _index_array(index, "gather")
    if idx.ndim != input.ndim:
        raise RuntimeError("Index tensor must have the same number of dimensions as input "
                           "tensor")
    for k in range(idx.ndim):
        if k != d and idx.shape[k] > input.shape[k]:
            raise RuntimeError(
                f"Size does not match at dimension {k} expected index {list(idx.shape)} to "
                f"be no larger than self {list(input.shape)} apart from dimension {d}")
    size = input.shape[d] if input.ndim else 1
    if idx.size and (idx.min() < -size or idx.max() >= size):
        bad = idx[(idx < -size) | (idx >= size)].flat[0]
        raise RuntimeError(f"index {bad} is out of bounds for dimension {d} with size {size}")
    if not input.ndim:
        return _taken("GatherBackward0", input, np.zeros((), np.int64))
    where = list(np.indices(idx.shape, sparse=True))
    where[d] = np.where(idx < 0, idx + size, idx)
    return _taken("GatherBackward0", input, _grid(input)[tuple(where)])


def index_select(input: Tensor, dim: int, index: Tensor) -> Tensor:
    """The slices ``index`` (1-d) of ``input`` along ``dim``."""
    d = F._canonical_dim(dim, builtins.max(input.ndim, 1), "index_select")
    idx = _index_array(index, "index_select")
    if idx.ndim > 1:
        raise IndexError("index_select(): Index is supposed to be a vector")
    size = input.shape[d] if input.ndim else 1
    if idx.size and (idx.min() < 0 or idx.max() >= size):
        raise IndexError(f"index out of range in self (dimension {d} has size {size})")
    if not input.ndim:
        return _taken("IndexSelectBackward0", input, np.zeros(idx.reshape(-1).shape, np.int64))
    return _taken("IndexSelectBackward0", input, np.take(_grid(input), idx.reshape(-1), d))


def flip(input: Tensor, dims) -> Tensor:
    """``input`` with the order of its elements reversed along ``dims``."""
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    axes = tuple(F._canonical_dim(d, builtins.max(input.ndim, 1), "flip") for d in dims)
    if len(set(axes)) != len(axes):
        raise RuntimeError("dims has duplicates, original flip dims size=" + str(len(dims)))
    return _taken("FlipBackward0", input, np.flip(_grid(input), axes) if input.ndim
                  else _grid(input))


def roll(input: Tensor, shifts, dims=None) -> Tensor:
    """``input`` with its elements moved ``shifts`` places along ``dims`` (wrapping around);
    without ``dims``, along the flattened tensor, shape kept."""
    shifts = (shifts,) if isinstance(shifts, int) else tuple(shifts)
    if dims is None:
        if len(shifts) != 1:
            raise RuntimeError(f"roll: shifts and dimensions must align. shifts: "
                               f"{len(shifts)}, dims: 0")
        grid = np.roll(_grid(input).reshape(-1), shifts[0]).reshape(_grid(input).shape)
        return _taken("RollBackward0", input, grid)
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    if len(shifts) != len(dims):
        raise RuntimeError(f"roll: shifts and dimensions must align. shifts: {len(shifts)}, "
                           f"dims: {len(dims)}")
    axes = tuple(F._canonical_dim(d, builtins.max(input.ndim, 1), "roll") for d in dims)
    grid = _grid(input)
    return _taken("RollBackward0", input, np.roll(grid, shifts, axes) if input.ndim else grid)


def diff(input: Tensor, n: int = 1, dim: int = -1, prepend=None, append=None) -> Tensor:
    """The ``n``-th forward difference along ``dim`` (``prepend``/``append`` joined first)."""
    if input.ndim == 0:
        raise RuntimeError("diff expects input to be at least one-dimensional")
    if n < 0:
        raise RuntimeError(f"order must be non-negative but got {n}")
    d = F._canonical_dim(dim, input.ndim, "diff")
    parts = [t for t in (prepend, input, append) if t is not None]
    x = F.cat(parts, d) if len(parts) > 1 else input
    for _ in range(n):
        size = x.shape[d]
        if size == 0:
            break
        x = narrow(x, d, 1, size - 1) - narrow(x, d, 0, size - 1)
    return x


def cumsum(input: Tensor, dim: int, *, dtype=None) -> Tensor:
    """Running sums along ``dim``. Float tensors: a scan of ``ceil(log2(n))`` rounds
    (``y += y shifted by 1, 2, 4, ...``; each output is a tree of partial sums, so it may
    differ from a left-to-right sum in the last bits), differentiable to any order; integer
    and bool tensors: int64 sums, not differentiable."""
    return _scan(input, dim, dtype, "cumsum", np.cumsum, F.zeros, F.add, "CumsumBackward0")


def cumprod(input: Tensor, dim: int, *, dtype=None) -> Tensor:
    """Running products along ``dim``: the scan of :func:`cumsum` with products (``y *= y
    shifted by 1, 2, 4, ...``, ones shifted in), so zeros need no division and the
    derivatives, to any order, are those of the products; integer and bool tensors: int64
    products, not differentiable."""
    return _scan(input, dim, dtype, "cumprod", np.cumprod, F.ones, F.mul, "CumprodBackward0")


def _scan(input: Tensor, dim: int, dtype, name: str, numpy_scan, fill, combine,
          grad_fn: str) -> Tensor:
    t = input if dtype is None else F.to_dtype(input, dtype)
    d = F._canonical_dim(dim, builtins.max(t.ndim, 1), name)
    if not t.dtype.is_floating_point:
        data = numpy_scan(t.numpy().reshape(t.shape or (1,)), axis=d, dtype=np.int64)
        return F.tensor(data.reshape(t.shape), dtype=dt.int64)
    n = t.shape[d] if t.ndim else 1
    if n <= 1:
        return named(F.clone(t), grad_fn)
    y = t
    step = 1
    while step < n:
        pad = fill(*(step if k == d else size for k, size in enumerate(t.shape)),
                   dtype=t.dtype)
        y = combine(y, F.cat([pad, narrow(y, d, 0, n - step)], d))
        step *= 2
    return named(y, grad_fn)


def lerp(input: Tensor, end: Tensor, weight) -> Tensor:
    """``input + weight * (end - input)``, computed as torch's: from ``end`` back where
    ``|weight| >= 0.5`` (exact at ``weight = 1``)."""
    difference = end - input
    if isinstance(weight, Tensor):
        low = input + weight * difference
        high = end - difference * (1.0 - weight)
        return named(F.where(F.abs(weight.detach()) < 0.5, low, high), "LerpBackward1")
    if builtins.abs(weight) < 0.5:
        return named(input + difference * weight, "LerpBackward0")
    return named(end - difference * (1.0 - weight), "LerpBackward0")


def logaddexp(input: Tensor, other: Tensor) -> Tensor:
    """``log(exp(input) + exp(other))`` without overflow: the larger plus
    ``log1p(exp(-|input - other|))``; equal infinities give themselves, as torch's."""
    peak = F.maximum(input, other)
    spread = F.abs(input - other)
    same = (input == other) & (F.isfinite(input).logical_not())
    out = peak + F.log1p(F.exp(-F.where(same, 0.0, spread)))
    return named(F.where(same, input, out), "LogaddexpBackward0")


def repeat(input: Tensor, *sizes) -> Tensor:
    """``input`` tiled ``sizes`` times along each dim (torch's ``Tensor.repeat``)."""
    sizes = tuple(sizes[0]) if len(sizes) == 1 and not isinstance(sizes[0], int) else sizes
    if len(sizes) < input.ndim:
        raise RuntimeError("Number of dimensions of repeat dims can not be smaller than number "
                           "of dimensions of tensor")
    grid = _grid(input).reshape((1,) * (len(sizes) - input.ndim) + tuple(input.shape))
    return _taken("RepeatBackward0", input, np.tile(grid, sizes))


def triu(input: Tensor, diagonal: int = 0) -> Tensor:
    """The upper triangle (from ``diagonal`` up) of the last two dims; zeros below."""
    return _triangle("triu", input, diagonal)


def tril(input: Tensor, diagonal: int = 0) -> Tensor:
    """The lower triangle (to ``diagonal``) of the last two dims; zeros above."""
    return _triangle("tril", input, diagonal)


def _triangle(name: str, input: Tensor, diagonal: int) -> Tensor:
    if input.ndim < 2:
        raise RuntimeError(f"{name}: input tensor must have at least 2 dimensions")
    rows, cols = input.shape[-2], input.shape[-1]
    keep = getattr(np, name)(np.ones((rows, cols), bool), diagonal)
    mask = Tensor._wrap(np.broadcast_to(keep, tuple(input.shape)).copy(), dt.bool_)
    zero = F.tensor(0, dtype=input.dtype)
    return named(F.where(mask, input, zero), name.capitalize() + "Backward0")


def diag(input: Tensor, diagonal: int = 0) -> Tensor:
    """A 1-d input's square matrix with it on ``diagonal``; a 2-d input's ``diagonal``."""
    k = diagonal
    if input.ndim == 1:
        n = input.shape[0]
        size = n + abs(k)
        rows = np.arange(n) + builtins.max(-k, 0)
        positions = rows * size + rows + k
        from .autograd.rules import _scatter

        return named(_scatter(input, (size, size), positions), "DiagEmbedBackward0")
    if input.ndim != 2:
        raise RuntimeError("diag(): Supports 1D or 2D tensors. Got " + f"{input.ndim}D")
    rows, cols = input.shape
    start_row, start_col = builtins.max(-k, 0), builtins.max(k, 0)
    length = builtins.max(0, builtins.min(rows - start_row, cols - start_col))
    steps = np.arange(length)
    return _taken("DiagonalBackward0_copy", input,  # torch's name for a 2-d diag
                  (start_row + steps) * cols + start_col + steps)


def _trace(input: Tensor) -> Tensor:
    if input.ndim != 2:
        raise RuntimeError(f"trace: expected a matrix, but got tensor with dim {input.ndim}")
    return named(F.sum(diag(input)), "TraceBackward0")


def trace(f, *args, **kwargs):
    """``trace(matrix)``: the sum of its diagonal (torch's ``trace``); ``trace(f, *example
    inputs)``: :func:`jitgrad.compile` (the name of its recording step)."""
    if isinstance(f, Tensor):
        return _trace(f)
    from .compile import compile as record

    return record(f, *args, **kwargs)


def outer(input: Tensor, vec2: Tensor) -> Tensor:
    """``input[i] * vec2[j]`` (grad_fn ``MulBackward0``, as torch's)."""
    if input.ndim != 1 or vec2.ndim != 1:
        raise RuntimeError("outer: expected 1-D tensors, but got "
                           f"{input.ndim}-D and {vec2.ndim}-D")
    return F.mul(F.reshape(input, (-1, 1)), F.reshape(vec2, (1, -1)))


# -- sorting: the permutation is read off the values (a compiled tape guards them) --------------
def _order(input: Tensor, dim: int, descending: bool) -> np.ndarray:
    values = input.detach().numpy()  # the values leave the graph: a compiled replay checks
    if descending:  # stable for ties, as the ascending sort, by sorting the negation
        return np.argsort(-values if values.dtype != np.bool_ else ~values, axis=dim,
                          kind="stable")
    return np.argsort(values, axis=dim, kind="stable")


def _take_along(name: str, input: Tensor, order: np.ndarray, dim: int) -> Tensor:
    return _taken(name, input, np.take_along_axis(_grid(input), order, dim))


def sort(input: Tensor, dim: int = -1, descending: bool = False, stable: bool = False):
    """``(values, indices)`` sorted along ``dim`` (ties keep their order)."""
    if not input.ndim:
        return _SortResult(F.clone(input), F.zeros((), dtype=dt.int64))
    d = F._canonical_dim(dim, input.ndim, "sort")
    order = _order(input, d, descending)
    return _SortResult(_take_along("SortBackward0", input, order, d),
                       Tensor._wrap(order.astype(np.int64), dt.int64))


def argsort(input: Tensor, dim: int = -1, descending: bool = False,
            stable: bool = False) -> Tensor:
    """The indices that sort ``input`` along ``dim``."""
    return sort(input, dim, descending, stable).indices


def topk(input: Tensor, k: int, dim: int = -1, largest: bool = True, sorted: bool = True):  # noqa: A002
    """``(values, indices)`` of the ``k`` largest (or smallest) along ``dim``."""
    d = F._canonical_dim(dim, builtins.max(input.ndim, 1), "topk")
    size = input.shape[d] if input.ndim else 1
    if not 0 <= k <= size:
        raise RuntimeError("selected index k out of range")
    if not input.ndim:
        return _TopkResult(F.clone(input), F.zeros((), dtype=dt.int64))
    order = np.take(_order(input, d, largest), np.arange(k), axis=d)
    return _TopkResult(_take_along("TopkBackward0", input, order, d),
                       Tensor._wrap(order.astype(np.int64), dt.int64))


# -- views along a dim ---------------------------------------------------------------------------
def narrow(input: Tensor, dim: int, start: int, length: int) -> Tensor:
    """The view of ``length`` elements from ``start`` along ``dim``."""
    d = F._canonical_dim(dim, input.ndim, "narrow")
    size = input.shape[d]
    if start < 0:
        start += size
    if not 0 <= start <= size or length < 0 or start + length > size:
        raise RuntimeError(f"start ({start}) + length ({length}) exceeds dimension size "
                           f"({size}).")
    return F.getitem(input, (slice(None),) * d + (slice(start, start + length),))


def split(tensor: Tensor, split_size_or_sections, dim: int = 0) -> tuple:
    """Views of ``tensor`` along ``dim``: pieces of ``split_size_or_sections`` elements (the
    last may be shorter), or of the listed sizes."""
    d = F._canonical_dim(dim, tensor.ndim, "split")
    size = tensor.shape[d]
    if isinstance(split_size_or_sections, int):
        step = split_size_or_sections
        if step <= 0 and size:
            raise RuntimeError(f"split_size can only be 0 if dimension size is 0, but got "
                               f"dimension size of {size}")
        sections = [builtins.min(step, size - s) for s in range(0, size, step)] if size else [0]
    else:
        sections = list(split_size_or_sections)
        if builtins.sum(sections) != size:
            raise RuntimeError(f"split_with_sizes expects split_sizes to sum exactly to {size} "
                               f"(input tensor's size at dimension {d}), but got "
                               f"split_sizes={sections}")
    pieces, start = [], 0
    for length in sections:
        pieces.append(narrow(tensor, d, start, length))
        start += length
    return tuple(pieces)


def chunk(input: Tensor, chunks: int, dim: int = 0) -> tuple:
    """``split`` into pieces of ``ceil(size / chunks)`` elements along ``dim``."""
    if chunks <= 0:
        raise RuntimeError("chunk expects `chunks` to be greater than 0, got: " + str(chunks))
    size = input.shape[F._canonical_dim(dim, input.ndim, "chunk")]
    return split(input, builtins.max(1, -(-size // chunks)), dim)


def unbind(input: Tensor, dim: int = 0) -> tuple:
    """The views ``input.select(dim, i)`` for every ``i``."""
    d = F._canonical_dim(dim, input.ndim, "unbind")
    return tuple(F.getitem(input, (slice(None),) * d + (i,)) for i in range(input.shape[d]))


# -- reductions and creation ---------------------------------------------------------------------
def std_mean(input: Tensor, dim=None, unbiased=None, keepdim: bool = False, *,
             correction=None) -> tuple:
    """``(std, mean)`` along ``dim``."""
    return (F.std(input, dim, unbiased, keepdim, correction=correction),
            F.mean(input, dim, keepdim) if dim is not None else F.mean(input))


def var_mean(input: Tensor, dim=None, unbiased=None, keepdim: bool = False, *,
             correction=None) -> tuple:
    """``(var, mean)`` along ``dim``."""
    return (F.var(input, dim, unbiased, keepdim, correction=correction),
            F.mean(input, dim, keepdim) if dim is not None else F.mean(input))


def dist(input: Tensor, other: Tensor, p: float = 2) -> Tensor:
    """The ``p``-norm of ``input - other`` (``p`` = 0 counts the nonzero differences)."""
    difference = input - other
    if p == 2:
        out = F.norm(difference)
    elif p == math.inf:
        out = F.amax(F.abs(difference))
    elif p == -math.inf:
        out = F.amin(F.abs(difference))
    elif p == 0:
        return F.sum(F.ne(difference, 0), dtype=difference.dtype)
    else:
        out = F.pow(F.sum(F.pow(F.abs(difference), p)), 1.0 / p)
    return named(out, "DistBackward0")


def logspace(start: float, end: float, steps: int, base: float = 10.0, *, dtype=None,
             requires_grad: bool = False) -> Tensor:
    """``base ** linspace(start, end, steps)``."""
    d = dt.get_default_dtype() if dtype is None else dt.to_dtype(dtype)
    values = np.power(base, np.linspace(start, end, steps)).astype(d.numpy)
    return F.tensor(values, dtype=d, requires_grad=requires_grad)


def normal(mean, std=1.0, size=None, *, generator=None, dtype=None) -> Tensor:
    """Samples of ``N(mean, std**2)``: numbers with ``size``, or tensors elementwise."""
    if isinstance(mean, Tensor) or isinstance(std, Tensor):
        like = mean if isinstance(mean, Tensor) else std
        shape = np.broadcast_shapes(tuple(np.shape(mean.detach().numpy() if isinstance(
            mean, Tensor) else mean)), tuple(np.shape(std.detach().numpy() if isinstance(
                std, Tensor) else std)))
        noise = F.randn(*shape, dtype=like.dtype, generator=generator)
        return (noise * std + mean).detach()
    if size is None:
        raise TypeError("normal() missing the size argument for float mean and std")
    return F.randn(*F._shape_arg(size), dtype=dtype, generator=generator) * std + mean


def _install_methods() -> None:
    """The Tensor methods of the functions above (and in-place forms of unary ops)."""
    methods = {
        "square": square, "rsqrt": rsqrt, "sinh": sinh, "cosh": cosh, "log2": log2,
        "log10": log10, "masked_fill": masked_fill, "gather": gather,
        "index_select": index_select, "flip": flip, "repeat": repeat, "triu": triu,
        "tril": tril, "diag": diag, "trace": _trace, "outer": outer, "sort": sort,
        "argsort": argsort, "topk": topk, "narrow": narrow, "split": split, "chunk": chunk,
        "unbind": unbind, "clamp_min": clamp_min, "clamp_max": clamp_max, "clamp": clamp,
        "clip": clamp, "isclose": isclose, "dist": dist, "roll": roll, "diff": diff,
        "lerp": lerp, "logaddexp": logaddexp, "cumsum": cumsum, "cumprod": cumprod,
    }
    for name, function in methods.items():
        setattr(Tensor, name, function)

    def inplace(compute):
        return lambda self, *args, **kwargs: F.inplace(
            self, lambda: compute(self, *args, **kwargs))

    for name, compute in {
        "exp_": F.exp, "log_": F.log, "sqrt_": F.sqrt, "sin_": F.sin, "cos_": F.cos,
        "tan_": F.tan, "tanh_": F.tanh, "sigmoid_": F.sigmoid, "abs_": F.abs, "neg_": F.neg,
        "relu_": F.relu, "reciprocal_": F.reciprocal, "log1p_": F.log1p, "expm1_": F.expm1,
        "square_": square, "rsqrt_": rsqrt, "masked_fill_": masked_fill, "clamp_": clamp,
        "clamp_min_": clamp_min, "clamp_max_": clamp_max, "clip_": clamp, "triu_": triu,
        "tril_": tril, "erf_": F.erf, "atan_": F.atan, "asin_": F.asin, "acos_": F.acos,
        "arctan_": F.atan, "arcsin_": F.asin, "arccos_": F.acos, "atan2_": F.atan2,
        "arctan2_": F.atan2, "lerp_": lerp, "cumsum_": cumsum, "cumprod_": cumprod,
        "sign_": F.sign, "floor_": F.floor, "ceil_": F.ceil, "round_": F.round,
        "trunc_": F.trunc, "fix_": F.trunc, "frac_": F.frac, "fmod_": F.fmod,
        "remainder_": F.remainder, "hypot_": F.hypot,
    }.items():
        setattr(Tensor, name, inplace(compute))

    def new(fill):
        def method(self, *size, dtype=None, requires_grad: bool = False):
            d = self.dtype if dtype is None else dtype
            return fill(F._shape_arg(size), d, requires_grad)
        return method

    Tensor.new_zeros = new(lambda s, d, r: F.zeros(*s, dtype=d, requires_grad=r))
    Tensor.new_ones = new(lambda s, d, r: F.ones(*s, dtype=d, requires_grad=r))
    Tensor.new_empty = new(lambda s, d, r: F.empty(*s, dtype=d, requires_grad=r))
    Tensor.new_full = lambda self, size, fill_value, *, dtype=None, requires_grad=False: \
        F.full(size, fill_value, dtype=self.dtype if dtype is None else dtype,
               requires_grad=requires_grad)
    Tensor.new_tensor = lambda self, data, *, dtype=None, requires_grad=False: F.tensor(
        data.detach().numpy() if isinstance(data, Tensor) else data,
        dtype=self.dtype if dtype is None else dtype, requires_grad=requires_grad)


_install_methods()
