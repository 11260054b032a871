"""``torch.save`` / ``torch.load``: any picklable object, tensors in it saved as their data,
dtype and ``requires_grad`` only (never their recording on the tape, nor their gradient);
a ``Parameter`` comes back as a ``Parameter``. ``load`` defaults to ``weights_only=True``,
as torch 2.6+: only tensors, dtypes, containers and plain values are rebuilt, so that a
file cannot run code.

>>> import io
>>> import jitgrad as torch
>>> from jitgrad.serialization import load, save
>>> buffer = io.BytesIO()
>>> save({"w": torch.nn.Parameter(torch.ones(2))}, buffer)
>>> _ = buffer.seek(0)
>>> load(buffer)
{'w': Parameter containing:
tensor([1., 1.], requires_grad=True)}
"""
from __future__ import annotations

import codecs
import os
import pickle
from collections import OrderedDict
from contextlib import nullcontext
from typing import IO, Any

import numpy as np

from . import _dtype as dt
from .tensor import Tensor

__all__ = ["load", "save"]

FileLike = str | os.PathLike | IO[bytes]

# torch's default, so that files stay readable by the oldest picklers
DEFAULT_PROTOCOL = 2


def _rebuild_tensor(data: bytes, dtype_name: str, shape: tuple, requires_grad: bool) -> Tensor:
    """A new leaf tensor from what :func:`_reduce_tensor` saved."""
    d = dt._by_name(dtype_name)
    # a writeable copy: frombuffer views the (read-only) pickled bytes
    array = np.frombuffer(data, dtype=d.numpy.newbyteorder("<")).astype(d.numpy).reshape(shape)
    t = Tensor._wrap(array, d)
    return t.requires_grad_(True) if requires_grad else t


def _rebuild_parameter(data: bytes, dtype_name: str, shape: tuple,
                       requires_grad: bool) -> Tensor:
    """A ``Parameter`` from what :func:`_reduce_tensor` saved."""
    from .nn.parameter import Parameter

    return Parameter(_rebuild_tensor(data, dtype_name, shape, False), requires_grad)


def _reduce_tensor(t: Tensor) -> tuple:
    """``__reduce__`` of a tensor: its values (little-endian bytes), dtype name, shape and
    ``requires_grad``; a Parameter is rebuilt as one."""
    from .nn.parameter import Parameter

    array = np.ascontiguousarray(t.detach().numpy(), dtype=t.dtype.numpy.newbyteorder("<"))
    rebuild = _rebuild_parameter if isinstance(t, Parameter) else _rebuild_tensor
    return rebuild, (array.tobytes(), t.dtype.name, tuple(t.shape), t.requires_grad)


def _pickler_class(pickle_module: Any) -> type:
    class _TensorPickler(pickle_module.Pickler):
        # reducer_override sees subclasses too (Parameter), unlike a dispatch table, and
        # leaves pickle's (and copy.deepcopy's) behaviour elsewhere unchanged
        def reducer_override(self, obj):
            if isinstance(obj, Tensor):
                return _reduce_tensor(obj)
            return NotImplemented

    return _TensorPickler


# What a weights_only load may rebuild: tensors, dtypes and plain containers. Protocol 2
# pickles bytes through _codecs.encode.
_SAFE_GLOBALS = {
    ("jitgrad.serialization", "_rebuild_tensor"): _rebuild_tensor,
    ("jitgrad.serialization", "_rebuild_parameter"): _rebuild_parameter,
    ("jitgrad._dtype", "_by_name"): dt._by_name,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "slice"): slice,
    ("builtins", "bytearray"): bytearray,
    ("_codecs", "encode"): codecs.encode,
}


class _WeightsOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        found = _SAFE_GLOBALS.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(
                f"Weights only load failed. Unsupported global: GLOBAL {module}.{name} was not "
                f"an allowed global by default. Re-running `load` with `weights_only` set to "
                f"`False` will likely succeed, but it can result in arbitrary code execution. "
                f"Do it only if you got the file from a trusted source.")
        return found


def _opened(f: FileLike, mode: str):
    """A context giving a binary file: ``f`` opened if it is a path (and closed after),
    else ``f`` itself (left open: it is the caller's)."""
    return open(f, mode) if isinstance(f, (str, os.PathLike)) else nullcontext(f)


def save(obj: object, f: FileLike, pickle_module: Any = pickle,
         pickle_protocol: int = DEFAULT_PROTOCOL) -> None:
    """Pickle ``obj`` into ``f`` (a path or a binary file object), its tensors as data,
    dtype and ``requires_grad``."""
    with _opened(f, "wb") as file:
        _pickler_class(pickle_module)(file, protocol=pickle_protocol).dump(obj)


def _check_map_location(map_location) -> None:
    # everything lives in NumPy arrays on the CPU: only the CPU is a place to load to
    if map_location is None or str(map_location) == "cpu":
        return
    if isinstance(map_location, dict) and all(str(v) == "cpu" for v in map_location.values()):
        return
    raise RuntimeError(f"jitgrad tensors live on the CPU only: cannot load to {map_location!r}")


def load_any(*args, **kwargs) -> Any:
    """``jitgrad.load``: :func:`load`, except that a compiled tape's file (an ``.npz``
    archive written by ``CompiledTape.save``), or ``load(path, f=function)`` (a tape that
    may record again), is read by :func:`jitgrad.compile.load`."""
    path = args[0] if args else kwargs.get("f")
    if (len(args) == 1 and "f" in kwargs) or _is_compiled_tape(path):
        from .compile import load as load_tape

        return load_tape(*args, **kwargs)
    return load(*args, **kwargs)


def _is_compiled_tape(f) -> bool:
    if not isinstance(f, (str, os.PathLike)):
        return False
    path = os.fspath(f)
    if str(path).endswith(".npz"):
        return True
    try:
        with open(path, "rb") as file:
            return file.read(2) == b"PK"  # a zip archive: pickles start otherwise
    except OSError:
        return False


def load(f: FileLike, map_location: Any = None, pickle_module: Any = None, *,
         weights_only: bool | None = None, **pickle_load_args: Any) -> Any:
    """Read an object written by :func:`save` from ``f`` (a path or a binary file object).
    With ``weights_only`` (the default) only tensors, dtypes, containers and plain values
    are allowed, anything else raising ``pickle.UnpicklingError``; ``weights_only=False``
    unpickles anything (trusted files only). ``map_location`` may only name the CPU."""
    _check_map_location(map_location)
    if weights_only is None:
        weights_only = pickle_module is None
    if weights_only and pickle_module is not None:
        raise RuntimeError("Can not safely load weights when explicit pickle_module is "
                           "specified")
    unpickler = _WeightsOnlyUnpickler if weights_only else (pickle_module or pickle).Unpickler
    with _opened(f, "rb") as file:
        return unpickler(file, **pickle_load_args).load()
