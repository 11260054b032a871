"""Numba kernels of the optimizers: one call updates every parameter of a group.

The parameters of a group have different shapes, so no single array holds them. A kernel
receives instead a table of data addresses (one row per kind of buffer: parameter,
gradient, state...), one column per parameter, and their sizes; it views each buffer as a
1-D array of the group's dtype (``like`` says which) and runs the per-parameter update on
it. Building such a table costs well under a microsecond per buffer, where a Numba typed
list of the same arrays costs several microseconds per element to build, and copying the
parameters into one flat buffer and back costs a copy of the model per step.

The per-element SGD step (``_sgd_element``) and ``adam_update`` are the only place where the
optimizers' arithmetic is written. They follow torch's CPU code operation by operation,
fused multiply-adds included: ``add(x, alpha=a)``, ``lerp`` and ``addcmul`` round once in
torch's kernels (``addcmul`` as ``fma(value * t1, t2, self)``), ``addcdiv`` does not and
multiplies by the scalar before dividing. Trajectories then agree with torch's to the last
bit or nearly. For tiny groups the optimizer calls the per-parameter update directly, once
per parameter: for a handful of scalars that is cheaper than building the address table.
SGD's one-element parameters whose gradients are floats skip the arrays too
(``sgd_scalar``).

Addresses are only valid while the arrays are alive: the caller keeps them referenced for
the duration of the call.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from ..kernels.jit import kernel  # isort: skip  (numba is loaded there, first)
import numba  # isort: skip
from numba import types  # isort: skip
from numba.extending import intrinsic  # isort: skip


@intrinsic
def _pointer(typingctx, address, like):
    """The integer ``address`` as a pointer to elements of ``like``'s dtype."""
    pointer_type = types.CPointer(like.dtype)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(pointer_type))

    return pointer_type(address, like), codegen


@intrinsic
def _compiled_fma(typingctx, a, b, c):
    if not all(isinstance(t, types.Float) for t in (a, b, c)):
        return None

    def codegen(context, builder, signature, args):
        f64 = types.float64
        a, b, c = (context.cast(builder, value, kind, f64)
                   for value, kind in zip(args, signature.args, strict=True))
        return builder.fma(a, b, c)

    return types.float64(a, b, c), codegen


def _python_fma(a: float, b: float, c: float) -> float:
    """``a * b + c`` rounded once, in Python (Python 3.11 has no math.fma)."""
    if not (math.isfinite(a) and math.isfinite(b) and math.isfinite(c)):
        return a * b + c
    return float(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c)))


# a * b + c with a single rounding, as torch's vectorized fmadd
fma = _python_fma if numba.config.DISABLE_JIT else _compiled_fma


@kernel
def _view(address, size, like):
    return numba.carray(_pointer(address, like), size)


@kernel
def _sgd_element(p, g, buf, first, lr, momentum, dampening, weight_decay, nesterov, maximize):
    """One SGD step of one element: its new value and momentum buffer (when ``momentum``;
    ``first``: the buffer is new and starts as the gradient, as in torch)."""
    if maximize:
        g = -g
    if weight_decay != 0.0:
        g = fma(p, weight_decay, g)
    if momentum != 0.0:
        if first:
            buf = g
        else:
            buf = fma(g, 1.0 - dampening, buf * momentum)
        if nesterov:
            g = fma(buf, momentum, g)
        else:
            g = buf
    return fma(g, -lr, p), buf


@kernel
def sgd_update(param, grad, momentum_buffer, first, lr, momentum, dampening, weight_decay,
               nesterov, maximize):
    """One SGD step of one parameter (1-D views). The momentum buffer is only read and
    written with ``momentum``."""
    for j in range(param.size):
        p, buf = _sgd_element(param[j], grad[j], momentum_buffer[j], first, lr, momentum,
                              dampening, weight_decay, nesterov, maximize)
        if momentum != 0.0:
            momentum_buffer[j] = buf
        param[j] = p


@kernel
def sgd_scalar(p, g, lr, maximize, single):
    """Plain SGD (no momentum, no weight decay) of a one-element parameter, from and to
    Python floats: the value to store (``_sgd_element``'s arithmetic, without the arrays).
    ``single``: the parameter is float32 (the gradient is read as one)."""
    if single:
        g = np.float64(np.float32(g))
    return _sgd_element(p, g, 0.0, False, lr, 0.0, 0.0, 0.0, False, maximize)[0]


@kernel
def sgd_group(addresses, sizes, first, like, lr, momentum, dampening, weight_decay,
              nesterov, maximize):
    """``sgd_update`` for every parameter of a group; ``addresses`` rows: parameter,
    gradient, momentum buffer (any valid address when momentum is 0: it is not read)."""
    for i in range(sizes.shape[0]):
        n = sizes[i]
        sgd_update(_view(addresses[0, i], n, like), _view(addresses[1, i], n, like),
                   _view(addresses[2, i], n, like), first[i], lr, momentum, dampening,
                   weight_decay, nesterov, maximize)


@kernel
def adam_update(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, beta1, beta2,
                eps, weight_decay, amsgrad, maximize, decoupled):
    """One Adam (``decoupled``: AdamW) step of one parameter (1-D views); ``step`` is the
    count after this step. ``max_exp_avg_sq`` is read only with ``amsgrad``."""
    bias_correction1 = 1.0 - beta1 ** step
    bias_correction2 = 1.0 - beta2 ** step
    step_size = lr / bias_correction1
    bias_correction2_sqrt = math.sqrt(bias_correction2)
    weight = 1.0 - beta1
    decay = 1.0 - lr * weight_decay
    for j in range(param.size):
        g = -grad[j] if maximize else grad[j]
        p = param[j]
        if weight_decay != 0.0:
            if decoupled:
                p = p * decay
            else:
                g = fma(p, weight_decay, g)
        m = exp_avg[j]
        # torch's lerp, branch included: the two forms round differently
        if weight < 0.5:
            m = fma(weight, g - m, m)
        else:
            m = fma(weight - 1.0, g - m, g)
        exp_avg[j] = m
        v = fma((1.0 - beta2) * g, g, exp_avg_sq[j] * beta2)
        exp_avg_sq[j] = v
        if amsgrad:
            v = max(max_exp_avg_sq[j], v)
            max_exp_avg_sq[j] = v
        denom = math.sqrt(v) / bias_correction2_sqrt + eps
        param[j] = p + (-step_size) * m / denom


@kernel
def adam_group(addresses, sizes, steps, like, lr, beta1, beta2, eps, weight_decay, amsgrad,
               maximize, decoupled):
    """``adam_update`` for every parameter of a group; ``addresses`` rows: parameter,
    gradient, exp_avg, exp_avg_sq, max_exp_avg_sq (any valid address without amsgrad)."""
    for i in range(sizes.shape[0]):
        n = sizes[i]
        adam_update(_view(addresses[0, i], n, like), _view(addresses[1, i], n, like),
                    _view(addresses[2, i], n, like), _view(addresses[3, i], n, like),
                    _view(addresses[4, i], n, like), steps[i], lr, beta1, beta2, eps,
                    weight_decay, amsgrad, maximize, decoupled)


@kernel
def rmsprop_update(param, grad, square_avg, grad_avg, momentum_buffer, unused, lr, alpha,
                   eps, weight_decay, momentum, centered, maximize):
    """One RMSprop step of one parameter (1-D views); ``grad_avg`` is read only when
    ``centered``, ``momentum_buffer`` only with momentum."""
    weight = 1.0 - alpha
    for j in range(param.size):
        g = -grad[j] if maximize else grad[j]
        p = param[j]
        if weight_decay != 0.0:
            g = fma(p, weight_decay, g)
        v = fma(weight * g, g, square_avg[j] * alpha)  # mul_(alpha), then addcmul_
        square_avg[j] = v
        if centered:
            m = grad_avg[j]
            if weight < 0.5:  # torch's lerp_(g, 1 - alpha)
                m = fma(weight, g - m, m)
            else:
                m = fma(weight - 1.0, g - m, g)
            grad_avg[j] = m
            avg = math.sqrt(fma(-m, m, v)) + eps  # addcmul(m, m, value=-1)
        else:
            avg = math.sqrt(v) + eps
        if momentum > 0.0:
            b = momentum_buffer[j] * momentum + g / avg  # mul_, then addcdiv_
            momentum_buffer[j] = b
            param[j] = fma(b, -lr, p)
        else:
            param[j] = p + (-lr * g) / avg  # addcdiv_(g, avg, value=-lr)


@kernel
def rmsprop_group(addresses, sizes, unused, like, lr, alpha, eps, weight_decay, momentum,
                  centered, maximize):
    """``rmsprop_update`` for every parameter of a group; ``addresses`` rows: parameter,
    gradient, square_avg, grad_avg, momentum_buffer (any valid address where not read)."""
    for i in range(sizes.shape[0]):
        n = sizes[i]
        rmsprop_update(_view(addresses[0, i], n, like), _view(addresses[1, i], n, like),
                       _view(addresses[2, i], n, like), _view(addresses[3, i], n, like),
                       _view(addresses[4, i], n, like), unused[i], lr, alpha, eps,
                       weight_decay, momentum, centered, maximize)


@kernel
def adagrad_update(param, grad, state_sum, clr, eps, weight_decay, maximize):
    """One Adagrad step of one parameter (1-D views) at learning rate ``clr`` (the decayed
    rate of its step)."""
    for j in range(param.size):
        g = -grad[j] if maximize else grad[j]
        p = param[j]
        if weight_decay != 0.0:
            g = fma(p, weight_decay, g)
        s = fma(g, g, state_sum[j])  # addcmul_(g, g, value=1)
        state_sum[j] = s
        param[j] = p + (-clr * g) / (math.sqrt(s) + eps)  # addcdiv_(g, std, value=-clr)


@kernel
def adagrad_group(addresses, sizes, clrs, like, eps, weight_decay, maximize):
    """``adagrad_update`` for every parameter of a group; ``addresses`` rows: parameter,
    gradient, sum."""
    for i in range(sizes.shape[0]):
        n = sizes[i]
        adagrad_update(_view(addresses[0, i], n, like), _view(addresses[1, i], n, like),
                       _view(addresses[2, i], n, like), clrs[i], eps, weight_decay, maximize)


# the dtypes the kernels are compiled for, each with the zero-size array that selects it
LIKE = {np.dtype(np.float32): np.empty(0, np.float32),
        np.dtype(np.float64): np.empty(0, np.float64)}
