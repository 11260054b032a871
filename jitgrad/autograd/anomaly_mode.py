"""Anomaly detection, as ``torch.autograd.set_detect_anomaly`` / ``detect_anomaly``.

While enabled, the forward remembers where each op was called (a Python stack per tape
entry) and every backward checks its gradients for NaN: when one appears, the backward is
replayed entry by entry to find the op whose derivative produced it, and a RuntimeError
names that op (``Function 'SqrtBackward0' returned nan values in its 0th output``), the
forward op that created it and the line of user code that called it.

>>> import jitgrad as torch
>>> x = torch.tensor([0.0], requires_grad=True)
>>> with torch.autograd.detect_anomaly():
...     y = torch.sqrt(x) * 0.0
...     try:
...         y.sum().backward()
...     except RuntimeError as error:
...         print(str(error).split(". ")[0])
Function 'SqrtBackward0' returned nan values in its 0th output
"""
from __future__ import annotations

import threading
import traceback

from ..tape import _state

__all__ = ["detect_anomaly", "is_anomaly_check_nan_enabled", "is_anomaly_enabled",
           "set_detect_anomaly"]


class _AnomalyState(threading.local):
    def __init__(self) -> None:
        self.enabled = False
        self.check_nan = True


_anomaly = _AnomalyState()
_TRACE_DEPTH = 12


def is_anomaly_enabled() -> bool:
    return _anomaly.enabled


def is_anomaly_check_nan_enabled() -> bool:
    return _anomaly.enabled and _anomaly.check_nan


def _set(enabled: bool, check_nan: bool) -> None:
    _anomaly.enabled = bool(enabled)
    _anomaly.check_nan = bool(check_nan)
    tape = _state.tape
    if enabled:
        _trace_recordings(tape)
    else:
        _stop_tracing(tape)


# each appends one entry
_RECORDING_METHODS = ("record", "record_scalar", "record_scalar2", "record_output")


def _trace_recordings(tape) -> None:
    """Wrap this tape's recording methods so each new entry keeps the user's stack."""
    if "record" in tape.__dict__:
        return
    traces = tape.__dict__.setdefault("anomaly_traces", {})

    def traced(record):
        def wrapper(*args, **kwargs):
            result = record(*args, **kwargs)
            # every 0-d op written out at once: a logged one could be recorded inline,
            # without calling a method of the tape (see functions._finish_scalar)
            tape._end_run()
            stack = traceback.extract_stack(limit=_TRACE_DEPTH + 2)[:-2]
            traces[(tape.generation, tape.n_entries - 1)] = stack
            return result
        return wrapper

    tape._end_run()
    for name in _RECORDING_METHODS:
        setattr(tape, name, traced(getattr(tape, name)))


def _stop_tracing(tape) -> None:
    for name in _RECORDING_METHODS:
        tape.__dict__.pop(name, None)
    tape.__dict__.pop("anomaly_traces", None)


def forward_trace(tape, entry: int) -> str:
    """Where the op of ``entry`` was recorded (empty when anomaly mode was off then)."""
    stack = tape.__dict__.get("anomaly_traces", {}).get((tape.generation, entry))
    if not stack:
        return ""
    frames = [f for f in stack if "/jitgrad/" not in f.filename.replace("\\", "/")]
    return "".join(traceback.format_list(frames or stack))


class set_detect_anomaly:  # noqa: N801 - torch's name
    """Turn anomaly detection on or off: at once (as a function) or for a ``with`` block.

    >>> import jitgrad as torch
    >>> _ = torch.autograd.set_detect_anomaly(True)
    >>> torch.autograd.anomaly_mode.is_anomaly_enabled()
    True
    >>> _ = torch.autograd.set_detect_anomaly(False)
    """

    def __init__(self, mode: bool, check_nan: bool = True) -> None:
        self._previous = (_anomaly.enabled, _anomaly.check_nan)
        _set(mode, check_nan)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        _set(*self._previous)


class detect_anomaly:  # noqa: N801 - torch's name
    """Context manager (or decorator) enabling anomaly detection inside it."""

    def __init__(self, check_nan: bool = True) -> None:
        self.check_nan = check_nan

    def __enter__(self):
        self._previous = (_anomaly.enabled, _anomaly.check_nan)
        _set(True, self.check_nan)
        return self

    def __exit__(self, *exc) -> None:
        _set(*self._previous)

    def __call__(self, function):
        import functools

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            with detect_anomaly(self.check_nan):
                return function(*args, **kwargs)

        return wrapper
