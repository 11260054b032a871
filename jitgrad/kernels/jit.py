"""The one way kernels are compiled: Numba nopython, cached on disk, NumPy's error model
(float division by zero gives inf/nan as in NumPy and torch, instead of raising).

This module is also where numba is first imported (every module that uses numba imports
this one first), and the place that keeps numba's objects out of Python's cyclic garbage
collector: numba and its type system are a few hundred thousand container objects that
every full collection would traverse, and the interpreter's final collections at exit
took ~0.25 s here (a fresh process computing one gradient ran 1.05 s, 0.73 s with them
frozen). So the objects alive once numba is loaded move to the permanent generation
(``gc.freeze``), after a collection, so that no garbage of the caller's is frozen with them.
Set ``JITGRAD_GC_FREEZE=0`` to leave the collector alone.

Numba keys a function's on-disk cache by its own file only, while the sweeps inline the
generated steps of other modules (``sweep.py`` calls ``_reverse.py``'s): after an op's
declaration or a kernel changed, a sweep loaded from the cache would run the old steps.
So the kernels' caches in the package (``__pycache__/*.nbi``, ``*.nbc``) are dropped, once,
when the kernel and op sources differ from the ones they were written with (their digest
is kept next to them). Caches moved elsewhere with ``NUMBA_CACHE_DIR`` are not watched.
"""
import gc
import os
import sys
from pathlib import Path

from .generated import _salt

if "numba" not in sys.modules and os.environ.get("JITGRAD_GC_FREEZE", "1") != "0":
    gc.collect()
    import numba  # noqa: F401
    gc.freeze()

from numba import njit  # noqa: E402

_PACKAGE = Path(__file__).resolve().parents[1]
_STAMP = "jitgrad-sources.sha256"


def drop_stale_caches(package: Path = _PACKAGE) -> bool:
    """Remove the package's Numba cache files when the kernel and op sources changed since
    they were written; True when it did. Errors (a read-only install) leave them alone."""
    stamp = package / "kernels" / "__pycache__" / _STAMP
    digest = _salt()
    try:
        if stamp.read_text() == digest:
            return False
    except OSError:
        pass
    try:
        for cache in package.glob("**/__pycache__"):
            for path in [*cache.glob("*.nbi"), *cache.glob("*.nbc")]:
                path.unlink(missing_ok=True)
        stamp.parent.mkdir(exist_ok=True)
        partial = stamp.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(digest)
        os.replace(partial, stamp)
    except OSError:
        return False
    return True


drop_stale_caches()

kernel = njit(cache=True, error_model="numpy")
inline_kernel = njit(cache=True, error_model="numpy", inline="always")
