"""``nn.Parameter``: a leaf tensor that a Module registers as one of its parameters."""
from __future__ import annotations

from ..functions import empty
from ..tensor import Tensor, _init, _storage_of


class Parameter(Tensor):
    """A tensor that is a module parameter: assigned as a Module attribute it is registered
    (``parameters()``, ``state_dict()``). It shares memory with the tensor it wraps and
    requires grad unless told otherwise.

    >>> import jitgrad as torch
    >>> p = torch.nn.Parameter(torch.ones(2))
    >>> p
    Parameter containing:
    tensor([1., 1.], requires_grad=True)
    >>> isinstance(p, torch.Tensor), p.is_leaf
    (True, True)
    """

    __slots__ = ()

    def __new__(cls, data: Tensor | None = None, requires_grad: bool = True) -> Parameter:
        # checked before the object exists: Tensor.__del__ reads slots set by _init
        if data is None:
            data = empty(0)
        if not isinstance(data, Tensor):
            raise TypeError(f"Parameter(): data must be a Tensor, not {type(data).__name__}")
        self = object.__new__(cls)
        _init(self, data._value(), None, data.dtype, data.shape)
        self._storage = _storage_of(data)  # one version counter, as for data.detach()
        if requires_grad:
            self.requires_grad_(True)
        return self

    def __init__(self, data: Tensor | None = None, requires_grad: bool = True) -> None:
        pass  # everything is done in __new__

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()

    __str__ = __repr__
