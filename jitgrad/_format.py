"""Tensor printing that matches ``repr(torch.Tensor)`` character for character.

The layout follows torch's default print options (precision 4, threshold 1000, edgeitems 3,
linewidth 80, automatic scientific mode):

* one formatter is chosen for the whole tensor (or for its summarized part when it has more
  than ``THRESHOLD`` elements): integer dtypes print ``str(value)``; floating dtypes look at
  the nonzero finite values and pick *int mode* (all integral: ``3.``), *scientific mode*
  (max/min > 1000, max > 1e8 or min < 1e-4: ``1.0000e+08``) or *fixed mode* (``3.1416``);
* every element is right-aligned to the widest formatted nonzero finite value;
* rows are wrapped so a line holds at most ``LINEWIDTH`` columns, nested dimensions are
  separated by ``dim - 1`` newlines and indented under their opening bracket;
* large tensors show ``EDGEITEMS`` items at each end of every long dimension around ``...``;
* ``dtype=...``, ``size=...`` and caller-supplied items (``requires_grad=True``,
  ``grad_fn=<...>``) follow the data, moving to a new line when they would pass the line width.

Floating values are formatted from their exact value as a Python float (float32 values are
widened to double first), which is what torch does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from jitgrad._dtype import bool_, get_default_dtype, int64

PRECISION = 4
THRESHOLD = 1000
EDGEITEMS = 3
LINEWIDTH = 80
SCI_MODE: bool | None = None  # None: choose automatically from the values

_PREFIX = "tensor("


class _Formatter:
    """Formats single elements so that all elements of one tensor share a width and style."""

    def __init__(self, values: np.ndarray, floating: bool):
        self.floating = floating
        self.int_mode = True
        self.sci_mode = False
        self.width = 1

        flat = values.reshape(-1)
        if not floating:
            self.width = max([self.width] + [len(str(v)) for v in flat.tolist()])
            return

        nonzero_finite = flat[np.isfinite(flat) & (flat != 0)].astype(np.float64)
        if nonzero_finite.size == 0:
            return

        magnitudes = np.abs(nonzero_finite)
        smallest, largest = float(magnitudes.min()), float(magnitudes.max())
        self.int_mode = bool(np.all(nonzero_finite == np.ceil(nonzero_finite)))
        if SCI_MODE is None:
            self.sci_mode = largest / smallest > 1000.0 or largest > 1.0e8 or smallest < 1.0e-4
        else:
            self.sci_mode = SCI_MODE

        finite = nonzero_finite.tolist()
        if self.sci_mode:
            widths = [len(f"{v:.{PRECISION}e}") for v in finite]
        elif self.int_mode:
            # int mode appends '.' to finite values to mark the tensor as floating
            widths = [len(f"{v:.0f}") + 1 for v in finite]
        else:
            widths = [len(f"{v:.{PRECISION}f}") for v in finite]
        self.width = max(self.width, max(widths))

    def format(self, value: float | int | bool) -> str:
        if not self.floating:
            text = f"{value}"
        elif self.sci_mode:
            text = f"{value:{self.width}.{PRECISION}e}"
        elif self.int_mode:
            text = f"{value:.0f}"
            if math.isfinite(value):
                text += "."
        else:
            text = f"{value:.{PRECISION}f}"
        return text.rjust(self.width)


def _summarized(arr: np.ndarray) -> np.ndarray:
    """The elements that a summarized print shows: the edge items of every long dimension."""
    for axis, size in enumerate(arr.shape):
        if size > 2 * EDGEITEMS:
            keep = list(range(EDGEITEMS)) + list(range(size - EDGEITEMS, size))
            arr = arr.take(keep, axis=axis)
    return arr


def _vector_str(vec: np.ndarray, indent: int, summarize: bool, fmt: _Formatter) -> str:
    per_line = max(1, (LINEWIDTH - indent) // (fmt.width + 2))  # ", " follows each element
    if summarize and vec.shape[0] > 2 * EDGEITEMS:
        items = (
            [fmt.format(v) for v in vec[:EDGEITEMS].tolist()]
            + [" ..."]
            + [fmt.format(v) for v in vec[-EDGEITEMS:].tolist()]
        )
    else:
        items = [fmt.format(v) for v in vec.tolist()]
    lines = [", ".join(items[i : i + per_line]) for i in range(0, len(items), per_line)]
    return "[" + (",\n" + " " * (indent + 1)).join(lines) + "]"


def _nested_str(arr: np.ndarray, indent: int, summarize: bool, fmt: _Formatter) -> str:
    if arr.ndim == 0:
        return fmt.format(arr.item())
    if arr.ndim == 1:
        return _vector_str(arr, indent, summarize, fmt)

    size = arr.shape[0]
    if summarize and size > 2 * EDGEITEMS:
        rows = (
            [_nested_str(arr[i], indent + 1, summarize, fmt) for i in range(EDGEITEMS)]
            + ["..."]
            + [
                _nested_str(arr[i], indent + 1, summarize, fmt)
                for i in range(size - EDGEITEMS, size)
            ]
        )
    else:
        rows = [_nested_str(arr[i], indent + 1, summarize, fmt) for i in range(size)]
    separator = "," + "\n" * (arr.ndim - 1) + " " * (indent + 1)
    return "[" + separator.join(rows) + "]"


def _add_suffixes(text: str, suffixes: Sequence[str], indent: int) -> str:
    parts = [text]
    # torch measures the last line one column longer than it is; keep that for identical wraps
    last_line_len = len(text) - text.rfind("\n") + 1
    for suffix in suffixes:
        if last_line_len + len(suffix) + 2 > LINEWIDTH:
            parts.append(",\n" + " " * indent + suffix)
            last_line_len = indent + len(suffix)
        else:
            parts.append(", " + suffix)
            last_line_len += len(suffix) + 2
    parts.append(")")
    return "".join(parts)


def tensor_repr(data: np.ndarray, dtype, suffixes: Sequence[str] = ()) -> str:
    """Return what torch prints for repr(t)/str(t), e.g.
    'tensor([[1., 1.],\\n        [1., 1.]], requires_grad=True)'.

    data: the values (any shape, incl. 0-d and empty); dtype: a jitgrad dtype;
    suffixes: extra items like 'requires_grad=True' or 'grad_fn=<MulBackward0>' appended in
    order after the dtype item.
    """
    arr = np.asarray(data).astype(dtype.numpy, copy=False)
    default = get_default_dtype()
    items: list[str] = []
    if arr.size == 0:
        # like NumPy, only a shape other than (0,) is spelled out; with no values to show,
        # every dtype but the default float one is named (int64 and bool included)
        if arr.ndim != 1:
            items.append(f"size={tuple(arr.shape)}")
        if dtype is not default:
            items.append(f"dtype={dtype!r}")
        body = "[]"
    else:
        if dtype not in (default, int64, bool_):
            items.append(f"dtype={dtype!r}")
        summarize = arr.size > THRESHOLD
        fmt = _Formatter(_summarized(arr) if summarize else arr, dtype.is_floating_point)
        body = _nested_str(arr, len(_PREFIX), summarize, fmt)
    items.extend(suffixes)
    return _add_suffixes(_PREFIX + body, items, len(_PREFIX))
