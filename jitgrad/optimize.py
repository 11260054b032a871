"""``scipy.optimize.minimize`` with derivatives from a compiled tape.

The objective, written with jitgrad ops, is compiled once (:func:`jitgrad.compile`); SciPy
then gets the value and gradient from one replay per call (``jac=True``), Hessian-vector
products by forward-over-reverse (``hessp``, for Newton-CG and the trust-region Krylov
methods) and the full Hessian where a method wants one. SciPy is an optional dependency:
it is imported when :func:`minimize` is called.
"""
from __future__ import annotations

import numpy as np

from .compile import compile as compile_tape

__all__ = ["minimize"]

# methods that use a Hessian-vector product / a full Hessian (scipy.optimize.minimize)
_HESSP = {"newton-cg", "trust-ncg", "trust-krylov", "trust-constr"}
_HESS = {"dogleg", "trust-exact"}


def minimize(f, x0, args: tuple = (), method: str | None = None, *, tape_options=None, **kw):
    """Minimize ``f(x, *args)`` (a jitgrad scalar) from ``x0`` with
    :func:`scipy.optimize.minimize`: ``jac`` comes from the compiled tape, ``hessp`` (or
    ``hess``) from forward-over-reverse where ``method`` uses it. ``args`` are passed to
    ``f`` as tape parameters (float arrays) or static values; ``tape_options`` go to
    :func:`jitgrad.compile`; the other keywords to SciPy. Returns SciPy's
    ``OptimizeResult`` with ``x`` shaped like ``x0`` and the tape as ``tape``.

    >>> import numpy as np, jitgrad
    >>> from jitgrad.optimize import minimize
    >>> def rosenbrock(x):
    ...     return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()
    >>> result = minimize(rosenbrock, np.zeros(5), method="trust-krylov")
    >>> bool(result.success), np.allclose(result.x, 1.0)
    (True, True)
    """
    try:
        from scipy import optimize
    except ImportError as error:  # pragma: no cover - scipy is a dependency of the kernels
        raise ImportError("jitgrad.optimize.minimize needs SciPy: pip install scipy") from error
    x0 = np.asarray(x0, dtype=np.float64)
    shape = x0.shape
    args = tuple(args)
    options = dict(tape_options or {})
    options.setdefault("parameters", tuple(range(1, 1 + len(args))))
    tape = compile_tape(f, x0, *args, **options)

    def value_and_grad(x, *extra):
        value, grad = tape.value_and_grad(x.reshape(shape), *extra)
        return float(value), np.asarray(grad, np.float64).reshape(-1)

    def hessp(x, p, *extra):
        return np.asarray(tape.hvp(x.reshape(shape), *extra, p.reshape(shape)),
                          np.float64).reshape(-1)

    def hess(x, *extra):
        size = x.size
        return np.asarray(tape.hessian(x.reshape(shape), *extra), np.float64).reshape(size,
                                                                                     size)

    name = (method or "").lower() if isinstance(method, str) else ""
    if name in _HESSP and "hess" not in kw and "hessp" not in kw:
        kw["hessp"] = hessp
    if name in _HESS and "hess" not in kw:
        kw["hess"] = hess
    result = optimize.minimize(value_and_grad, x0.reshape(-1), args=args, method=method,
                               jac=True, **kw)
    result.x = result.x.reshape(shape)
    result.tape = tape
    return result
