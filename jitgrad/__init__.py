"""jitgrad: PyTorch-compatible automatic differentiation for NumPy data, on a flat tape
swept by Numba kernels.

>>> import jitgrad as torch
>>> x = torch.tensor(2.0, requires_grad=True)
>>> y = x ** 3
>>> y.backward()
>>> x.grad
tensor(12.)
"""
from . import _dtype
from .tensor import Size, Tensor  # noqa: F401  (first: it installs the operators)
from ._dtype import (
    bool_ as bool,  # noqa: A004 - torch.bool
    dtype,
    float32,
    float64,
    get_default_dtype,
    int64,
    set_default_dtype,
)
from .functions import (  # noqa: F401
    Generator, abs, acos, add, allclose, amax, amin, arange, arccos, arcsin, arctan, arctan2,
    argmax, argmin, as_tensor, asin, atan, atan2, bmm, erf,
    broadcast_to, cat, clone, concat, concatenate, cos, default_generator, div,
    divide, dot, empty, empty_like, eq, equal, exp, expand, expm1, eye, flatten, from_numpy,
    full, full_like, ge, gt, isfinite, isnan, le, linspace, log, log1p, log_softmax,
    logical_and, logical_not, logical_or, logsumexp, lt, manual_seed, matmul, max, maximum,
    mean, min, minimum, mm, mul, multiply, mv, ne, neg, negative, norm, ones, ones_like,
    permute, pow, prod, rand, rand_like, randint, randn, randn_like, randperm, reciprocal, relu,
    reshape, sigmoid, sign, sin, softmax, sqrt, squeeze, stack, std, sub, subtract, sum,
    swapaxes, t, tan, tanh, tensor, transpose, true_divide, unsqueeze, var, view, where, zeros,
    zeros_like,
)
from .functions import (  # noqa: E402,F401
    ceil, fix, floor, fmod, frac, hypot, remainder, round, trunc,  # noqa: A004
)
from .functions import all_ as all, any_ as any  # noqa: E402,F401,A004 - torch's names
from .composite import (  # noqa: E402,F401
    argsort, chunk, clamp, clamp_max, clamp_min, cosh, cumprod, cumsum, diag, diff, dist, flip,
    gather, index_select, isclose, lerp, log2, log10, logaddexp, logspace, masked_fill, narrow,
    normal, outer, repeat, roll, rsqrt, sinh, sort, split, square, std_mean, topk, trace, tril,
    triu, unbind, var_mean,
)
from ._einsum import einsum  # noqa: E402,F401

clip = clamp

float = float32  # noqa: A001 - torch.float
double = float64
long = int64
int = int64  # noqa: A001

from . import autograd, optim  # noqa: E402
from . import nn, utils  # noqa: E402
from . import func  # noqa: E402
from . import special  # noqa: E402
from .autograd.grad_mode import enable_grad, inference_mode, no_grad, set_grad_enabled  # noqa: E402,F401
from .compile import BranchChanged, CompiledTape, compile  # noqa: E402,F401,A004
from .serialization import load_any as load, save  # noqa: E402,F401  (compiled tapes too)
from . import optimize  # noqa: E402,F401  (jitgrad.optimize.minimize; SciPy loads on use)

is_grad_enabled = autograd.grad_mode.is_grad_enabled
__version__ = "0.1.0"
del _dtype
