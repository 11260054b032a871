"""``einsum``, written with the recorded ops: diagonals are integer-array reads, labels
that one operand alone carries are summed first, and the operands are contracted left to
right, each pair as one (batched) ``matmul`` of permuted, reshaped operands, as torch does
without opt_einsum. Its derivatives, to any order, come from those ops.

>>> import jitgrad as torch
>>> a = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
>>> torch.einsum("ij,jk->ik", a, a)
tensor([[ 7., 10.],
        [15., 22.]], grad_fn=<ViewBackward0>)
>>> torch.einsum("ii", a)
tensor(5., grad_fn=<SumBackward1>)
"""
from __future__ import annotations

import math

from . import functions as F
from .tensor import Tensor

_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _parse_term(equation: str, start: int, end: int, operand: int | None) -> tuple:
    """The subscripts of ``equation[start:end]``: (letters with ``None`` where the ellipsis
    stands, whether there is one)."""
    labels = []
    ellipsis = False
    k = start
    where = "the output" if operand is None else f"operand {operand}"
    while k < end:
        c = equation[k]
        if c == ".":
            if ellipsis:
                raise RuntimeError(f"einsum(): found '.' for {where} for which an ellipsis "
                                   "was already found")
            if equation[k:k + 3] != "..." or k + 3 > end:
                raise RuntimeError(f"einsum(): found '.' for {where} that is not part of "
                                   "any ellipsis")
            labels.append(None)
            ellipsis = True
            k += 3
            continue
        if c not in _LETTERS:
            raise RuntimeError(f"einsum(): invalid subscript given at index {k} in the "
                               "equation string, subscripts must be in [a-zA-Z]")
        labels.append(c)
        k += 1
    return labels, ellipsis


def _parse(equation: str, operands: tuple) -> tuple:
    """Each operand's labels (letters, and integers for the dimensions an ellipsis covers,
    right-aligned so they broadcast), the output's labels and every label's size."""
    arrow = equation.find("->")
    lhs_end = len(equation) if arrow < 0 else arrow
    bounds = []
    start = 0
    for k in range(lhs_end + 1):
        if k == lhs_end or equation[k] == ",":
            bounds.append((start, k))
            start = k + 1
    if len(bounds) > len(operands):
        raise RuntimeError("einsum(): fewer operands were provided than specified in the "
                           "equation")
    if len(bounds) < len(operands):
        raise RuntimeError("einsum(): more operands were provided than specified in the "
                           "equation")
    terms = []
    n_ellipsis = 0
    for i, ((lo, hi), t) in enumerate(zip(bounds, operands)):
        letters, ellipsis = _parse_term(equation, lo, hi, i)
        n_letters = len(letters) - ellipsis
        if ellipsis:
            if n_letters > t.ndim:
                raise RuntimeError(
                    f"einsum(): the number of subscripts in the equation ({n_letters}) is "
                    f"more than the number of dimensions ({t.ndim}) for operand {i}")
            n_ellipsis = max(n_ellipsis, t.ndim - n_letters)
        elif n_letters != t.ndim:
            raise RuntimeError(
                f"einsum(): the number of subscripts in the equation ({n_letters}) does not "
                f"match the number of dimensions ({t.ndim}) for operand {i} and no ellipsis "
                "was given")
        terms.append(letters)
    labels = []
    sizes: dict = {}
    for i, (letters, t) in enumerate(zip(terms, operands)):
        covered = t.ndim - (len(letters) - (None in letters))
        expanded = []
        for c in letters:
            if c is None:
                expanded.extend(range(n_ellipsis - covered, n_ellipsis))
            else:
                expanded.append(c)
        own: dict = {}
        for label, size in zip(expanded, t.shape):
            if label in own:
                if own[label] != size:
                    raise RuntimeError(
                        f"einsum(): subscript {label} is repeated for operand {i} but the "
                        f"sizes don't match, {size} != {own[label]}")
                continue
            own[label] = size
            seen = sizes.get(label)
            if seen is None or seen == 1:
                sizes[label] = size
            elif size != 1 and size != seen:
                if isinstance(label, int):
                    raise RuntimeError(
                        f"einsum(): dimension {label - n_ellipsis + covered} covered by "
                        f"ellipsis in operand {i} has size {size} which does not broadcast "
                        f"with previously seen ellipsis with size {seen} for the respective "
                        "dimension")
                raise RuntimeError(f"einsum(): subscript {label} has size {size} for operand "
                                   f"{i} which does not broadcast with previously seen size "
                                   f"{seen}")
        labels.append(expanded)
    if arrow < 0:
        counts: dict = {}
        for expanded in labels:
            for label in expanded:
                if isinstance(label, str):
                    counts[label] = counts.get(label, 0) + 1
        output = list(range(n_ellipsis)) + sorted(c for c, n in counts.items() if n == 1)
    else:
        letters, _ = _parse_term(equation, arrow + 2, len(equation), None)
        output = []
        for c in letters:
            if c is None:
                output.extend(range(n_ellipsis))
                continue
            if c in output:
                raise RuntimeError(f"einsum(): output subscript {c} appears more than once "
                                   "in the output")
            if c not in sizes:
                raise RuntimeError(f"einsum(): output subscript {c} does not appear in the "
                                   "equation for any input operand")
            output.append(c)
    return labels, output, sizes


def _diagonals(t: Tensor, labels: list) -> tuple:
    """``t`` with each repeated label read once (its diagonal, moved last)."""
    while len(set(labels)) < len(labels):
        label = next(c for k, c in enumerate(labels) if c in labels[:k])
        p = labels.index(label)
        q = labels.index(label, p + 1)
        rest = [k for k in range(len(labels)) if k not in (p, q)]
        index = F.arange(t.shape[p])
        t = F.permute(t, *rest, p, q)[(Ellipsis, index, index)]
        labels = [labels[k] for k in rest] + [label]
    return t, labels


def _sum_out(t: Tensor, labels: list, keep) -> tuple:
    """``t`` summed over the labels not in ``keep``."""
    dims = tuple(k for k, label in enumerate(labels) if label not in keep)
    if not dims:
        return t, labels
    return F.sum(t, dim=dims), [label for label in labels if label in keep]


def _contract(a: Tensor, la: list, b: Tensor, lb: list, later: set, sizes: dict) -> tuple:
    """``a`` and ``b`` multiplied, summed over the labels they share that ``later`` (the
    labels of the operands after them and of the output) does not need: one matmul."""
    batch = [label for label in la if label in lb and label in later]
    summed = [label for label in la if label in lb and label not in later]
    a_only = [label for label in la if label not in lb]
    b_only = [label for label in lb if label not in la]
    a = F.permute(a, *[la.index(label) for label in batch + a_only + summed])
    b = F.permute(b, *[lb.index(label) for label in batch + summed + b_only])
    a_batch = [a.shape[k] for k in range(len(batch))]
    b_batch = [b.shape[k] for k in range(len(batch))]
    a_rest = list(a.shape[len(batch):len(batch) + len(a_only)])
    b_rest = list(b.shape[len(batch) + len(summed):])
    inner = [sizes[label] for label in summed]
    if summed and (list(a.shape[len(batch) + len(a_only):]) != inner
                   or list(b.shape[len(batch):len(batch) + len(summed)]) != inner):
        # a size-1 dimension that the other operand's size broadcasts
        a = F.expand(a, *a_batch, *a_rest, *inner)
        b = F.expand(b, *b_batch, *inner, *b_rest)
    k = math.prod(inner)
    a = F.reshape(a, *a_batch, math.prod(a_rest), k)
    b = F.reshape(b, *b_batch, k, math.prod(b_rest))
    product = F.matmul(a, b)
    product = F.reshape(product, *product.shape[:len(batch)], *a_rest, *b_rest)
    return product, batch + a_only + b_only


def einsum(equation: str, *operands) -> Tensor:
    """torch's ``einsum``: ``einsum("ij,jk->ik", a, b)`` or ``einsum("ij,jk", [a, b])``;
    letters, ``...``, repeated letters (diagonals), implicit outputs (the letters that occur
    once, sorted) and size-1 dimensions that broadcast."""
    if not isinstance(equation, str):
        raise TypeError(f"einsum(): argument 'equation' must be str, not "
                        f"{type(equation).__name__}")
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    for i, t in enumerate(operands):
        if not isinstance(t, Tensor):
            raise TypeError(f"einsum(): operand {i} must be a Tensor, not "
                            f"{type(t).__name__}")
    if not operands:
        raise RuntimeError("einsum(): must provide at least one operand")
    dtypes = {t.dtype for t in operands}
    if len(dtypes) > 1:
        raise RuntimeError("einsum(): expected all operands to have the same dtype, got "
                           + ", ".join(str(t.dtype) for t in operands)
                           + "; convert them with .to(dtype)")
    labels, output, sizes = _parse(equation.replace(" ", ""), operands)
    keep = set(output)
    tensors = []
    for i, (t, la) in enumerate(zip(operands, labels)):
        t, la = _diagonals(t, la)
        others = set(output)
        for j, lb in enumerate(labels):
            if j != i:
                others.update(lb)
        tensors.append(_sum_out(t, la, others))
    result, lr = tensors[0]
    for j in range(1, len(tensors)):
        later = set(keep)
        for _, lb in tensors[j + 1:]:
            later.update(lb)
        result, lr = _sum_out(result, lr, later | set(tensors[j][1]))
        b, lb = tensors[j]
        result, lr = _contract(result, lr, b, lb, later, sizes)
    result, lr = _sum_out(result, lr, keep)
    if lr != output:
        result = F.permute(result, *[lr.index(label) for label in output])
    shape = [sizes[label] for label in output]
    if list(result.shape) != shape:
        result = F.expand(result, *shape)
    if result is operands[0]:
        result = F.permute(result, *range(result.ndim))  # a new tensor, as torch's view
    return result
