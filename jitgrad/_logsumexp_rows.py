"""The kernel of :mod:`jitgrad._logsumexp` (imported on its first use: numba loads here).

It lives outside ``kernels/`` on purpose: the sources there salt the generated sweeps'
caches, and no generated sweep calls this kernel (its own cache is keyed by this file).
"""
from __future__ import annotations

import numpy as np

from .kernels.jit import kernel


@kernel
def logsumexp_rows(x, out):
    """``out[o, i] = log(sum_k exp(x[o, k, i]))``, computed as ``log(sum(exp(x - peak))) +
    peak`` in float64 with ``peak`` the largest element of the row (0 when that is not
    finite: an infinite peak gives inf or nan through the sum, as the formula does); a nan
    anywhere in a row makes its result nan."""
    outer, n, inner = x.shape
    for o in range(outer):
        for i in range(inner):
            peak = -np.inf
            for k in range(n):
                v = float(x[o, k, i])
                if v > peak or v != v:
                    peak = v
            if not np.isfinite(peak):
                peak = 0.0
            acc = 0.0
            for k in range(n):
                acc += np.exp(float(x[o, k, i]) - peak)
            out[o, i] = np.log(acc) + peak
