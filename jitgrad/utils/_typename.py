"""The type names torch prints in its error messages (``torch.FloatTensor``...)."""
from __future__ import annotations

from ..tensor import Tensor

_TENSOR_TYPES = {"float32": "torch.FloatTensor", "float64": "torch.DoubleTensor",
                 "int64": "torch.LongTensor", "bool": "torch.BoolTensor"}


def typename(value) -> str:
    """``torch.typename``: a tensor's legacy type name, else the qualified class name."""
    if isinstance(value, Tensor):
        return _TENSOR_TYPES[value.dtype.name]
    return type(value).__qualname__
