"""Grad mode: thread-local, usable as context managers and as decorators (with or without
parentheses), as in torch."""
from __future__ import annotations

import functools

from ..tape import _set_grad_enabled, is_grad_enabled, thread_state

__all__ = ["enable_grad", "inference_mode", "is_grad_enabled", "no_grad", "set_grad_enabled"]


class _GradMode:
    mode: bool = True

    def __new__(cls, *args, **kwargs):
        # @no_grad without parentheses: called with the function itself
        if cls is not set_grad_enabled and len(args) == 1 and callable(args[0]) and not kwargs:
            return cls()(args[0])
        return super().__new__(cls)

    def __enter__(self):
        state = thread_state()
        self._previous = state.tape.grad_enabled
        state.tape.grad_enabled = self.mode
        return self

    def __exit__(self, *exc) -> None:
        thread_state().tape.grad_enabled = self._previous

    def __call__(self, function):
        mode = self.mode

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            state = thread_state()
            previous = state.tape.grad_enabled
            state.tape.grad_enabled = mode
            try:
                return function(*args, **kwargs)
            finally:
                state.tape.grad_enabled = previous

        return wrapper


class no_grad(_GradMode):  # noqa: N801 - torch's name
    """Nothing computed inside is recorded.

    >>> import jitgrad as torch
    >>> x = torch.ones(1, requires_grad=True)
    >>> with torch.no_grad():
    ...     (x * 2).requires_grad
    False
    """

    mode = False


class enable_grad(_GradMode):  # noqa: N801
    mode = True


class inference_mode(_GradMode):  # noqa: N801
    def __init__(self, mode: bool = True) -> None:
        self.mode = not mode


class set_grad_enabled(_GradMode):  # noqa: N801
    """Set grad mode; takes effect at once (as a function) or for a ``with`` block."""

    def __init__(self, mode: bool) -> None:
        self.mode = bool(mode)
        self._previous = is_grad_enabled()
        _set_grad_enabled(mode)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        _set_grad_enabled(self._previous)

    def __call__(self, function):
        # used as a decorator: the mode applies inside the function only
        _set_grad_enabled(self._previous)
        return super().__call__(function)
