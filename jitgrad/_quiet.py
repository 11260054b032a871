"""``quietly(f, *args)``: call ``f`` with NumPy's floating-point warnings off, as torch's ops
compute without warning. ``with np.errstate(all="ignore")`` costs ~0.9 us per use in NumPy 2
(it builds its state object on every entry), a tenth of a small op; setting NumPy's error
state context variable to one state prepared at import costs ~0.1 us. NumPy versions
without that variable fall back to ``np.errstate``.

The hottest path (``functions._record_array_op``) sets the variable itself, without the
calls: ``token = ERROR_STATE.set(IGNORE)`` ... ``ERROR_STATE.reset(token)``; both names are
None on NumPy 1.x."""
from __future__ import annotations

import numpy as np

try:
    from numpy._core._ufunc_config import _extobj_contextvar as _ERROR_STATE
except ImportError:  # NumPy 1.x
    _ERROR_STATE = None

_IGNORE = None
if _ERROR_STATE is not None:
    with np.errstate(all="ignore"):
        _IGNORE = _ERROR_STATE.get()

    def quietly(f, *args):
        token = _ERROR_STATE.set(_IGNORE)
        try:
            return f(*args)
        finally:
            _ERROR_STATE.reset(token)
else:  # pragma: no cover - NumPy 1.x
    def quietly(f, *args):
        with np.errstate(all="ignore"):
            return f(*args)


ERROR_STATE = _ERROR_STATE
IGNORE = _IGNORE
