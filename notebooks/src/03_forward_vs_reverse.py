# %% [markdown]
# # Forward mode vs reverse mode: JVPs, VJPs, Jacobians, Hessian-vector products
#
# Take a function $f: \mathbb{R}^n \to \mathbb{R}^m$ with Jacobian $J = \partial f / \partial x$
# ($m \times n$). Automatic differentiation never builds $J$ unless asked; it computes
# products with it:
#
# | mode | computes | one sweep gives | cheap when |
# |---|---|---|---|
# | **forward** (`jvp`) | $J v$ (Jacobian-vector product) | one column direction | few inputs $n$ |
# | **reverse** (`vjp`, `backward`) | $u^\top J$ (vector-Jacobian product) | one row direction | few outputs $m$ |
#
# jitgrad runs both over the same flat tape: a **reverse sweep** accumulates adjoints from
# the outputs back (what `backward()` does), a **tangent sweep** pushes dual numbers
# (value, tangent) forward. Both are Numba kernels. This notebook uses `jitgrad.func`
# (the API of `torch.func`) and `jitgrad.autograd.forward_ad` (that of
# `torch.autograd.forward_ad`).

# %%
import os
import time

import matplotlib.pyplot as plt
import numpy as np

import jitgrad as torch
import jitgrad.autograd.forward_ad as fwAD
from jitgrad import func

rng = np.random.default_rng(0)
# the test suite sets JITGRAD_NOTEBOOK_QUICK=1 to run a short version of this notebook
QUICK = os.environ.get("JITGRAD_NOTEBOOK_QUICK") == "1"


def best_time(fn, repeat=5):
    """The best of ``repeat`` wall times of ``fn()``, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)

# %% [markdown]
# ## 1. A Jacobian-vector product, three ways
#
# $f(x) = \sin(x)\,x^2$ elementwise, so $J = \mathrm{diag}(\cos(x)\,x^2 + 2x\sin(x))$ and
# $J v$ is that diagonal times $v$.

# %%
def f(x):
    return torch.sin(x) * x ** 2


x = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
v = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)

# (a) jitgrad.func.jvp, as torch.func.jvp: returns (f(x), J v)
value, jv = func.jvp(f, (x,), (v,))
print("func.jvp:        ", jv)

# (b) dual numbers, as torch.autograd.forward_ad
def jvp_by_dual_numbers(f, x, v):
    with fwAD.dual_level():
        dual = fwAD.make_dual(x, v)  # x carrying the tangent v
        return fwAD.unpack_dual(f(dual)).tangent


print("forward_ad:      ", jvp_by_dual_numbers(f, x, v))

# (c) the formula, and central finite differences
exact = (torch.cos(x) * x ** 2 + 2 * x * torch.sin(x)) * v
eps = 1e-6
fd = (f(x + eps * v) - f(x - eps * v)) / (2 * eps)
print("formula:         ", exact)
print("finite difference:", fd)

# %% [markdown]
# ## 2. A vector-Jacobian product, two ways, and the identity that ties them
#
# `func.vjp` returns $f(x)$ and a function $u \mapsto u^\top J$; `backward(gradient=u)`
# computes the same product into `x.grad`. For any $u$ and $v$,
# $\langle u, J v\rangle = \langle J^\top u, v\rangle$: forward and reverse mode must agree.

# %%
u = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)

value, pullback = func.vjp(f, x)
(uj,) = pullback(u)
del pullback  # it keeps f's recorded graph alive (as in PyTorch), to be called again
print("func.vjp:          ", uj)

x_leaf = x.detach().requires_grad_(True)
f(x_leaf).backward(gradient=u)
print("backward(gradient):", x_leaf.grad)

print(f"<u, J v> = {torch.dot(u, jv).item():.12f}")
print(f"<J^T u, v> = {torch.dot(uj, v).item():.12f}")

# %% [markdown]
# ## 3. Jacobians: `jacrev` builds rows, `jacfwd` builds columns
#
# `jacrev` runs one reverse sweep per output ($m$ sweeps), `jacfwd` one tangent sweep per
# input ($n$ sweeps, in chunks of directions carried together). Which one is cheaper
# depends on the shape: a *wide* function (many inputs, few outputs — a loss, say) wants
# reverse mode, a *tall* one wants forward mode. Here $f(x) = \tanh(A x)$ with $A$ of shape
# $4 \times 2000$ and then $2000 \times 4$.

# %%
timings = {}
for m, n in ((4, 2000), (2000, 4)):
    A = torch.tensor(rng.standard_normal((m, n)) / np.sqrt(n))
    g = lambda x, A=A: torch.tanh(A @ x)  # noqa: E731
    x_mn = torch.tensor(rng.standard_normal(n))
    J_rev = func.jacrev(g)(x_mn)
    J_fwd = func.jacfwd(g)(x_mn)
    # the exact Jacobian: diag(1 - tanh(Ax)^2) A
    J_exact = (1 - torch.tanh(A @ x_mn) ** 2).reshape(m, 1) * A
    assert torch.allclose(J_rev, J_exact) and torch.allclose(J_fwd, J_exact)
    timings[f"{m}x{n}"] = {
        "jacrev": best_time(lambda: func.jacrev(g)(x_mn)),  # noqa: B023
        "jacfwd": best_time(lambda: func.jacfwd(g)(x_mn)),  # noqa: B023
    }
    print(f"J of shape {m} x {n}: jacrev {timings[f'{m}x{n}']['jacrev'] * 1e3:7.2f} ms, "
          f"jacfwd {timings[f'{m}x{n}']['jacfwd'] * 1e3:7.2f} ms (both equal the exact J)")

# %%
fig, ax = plt.subplots(figsize=(7, 3.2))
shapes = list(timings)
positions = np.arange(len(shapes))
for i, method in enumerate(("jacrev", "jacfwd")):
    ax.bar(positions + (i - 0.5) * 0.35, [timings[s][method] * 1e3 for s in shapes], 0.35,
           label=f"{method} ({'reverse' if method == 'jacrev' else 'forward'} mode)")
ax.set_xticks(positions, [f"wide: {shapes[0]}", f"tall: {shapes[1]}"])
ax.set_yscale("log")
ax.set_ylabel("time (ms, log scale)")
ax.set_title("Jacobian of tanh(A x): rows by reverse mode, columns by forward mode")
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 4. Hessians and Hessian-vector products
#
# For a scalar $h(x)$ the Hessian $H$ is $n \times n$: forming it costs $n$ sweeps and $n^2$
# memory. Many methods (Newton-CG, trust regions, curvature estimates) only need $H v$,
# which costs about as much as a gradient:
#
# - **forward-over-reverse** (`func.hvp`): record the gradient with `create_graph=True`,
#   then run one tangent sweep over that recording in the direction $v$. The Hessian is
#   never formed.
# - **reverse-over-reverse** (double backward): the gradient of $\langle \nabla h(x),
#   v\rangle$, with `autograd.grad(..., create_graph=True)` — what one writes in eager
#   PyTorch.
#
# $h(x) = \sum_i \sin(x_i)\,x_i^2$ has a diagonal Hessian, $\sin(x)(2 - x^2) + 4x\cos(x)$, which
# makes the results easy to check.

# %%
def h(x):
    return (torch.sin(x) * x ** 2).sum()


n = 5
x5 = torch.tensor(rng.standard_normal(n))
v5 = torch.tensor(rng.standard_normal(n))

H = func.hessian(h)(x5)
hv_forward_over_reverse = func.hvp(h, (x5,), (v5,))



def hvp_double_backward(h, x, v):
    """H(x) v as the gradient of <grad h(x), v>, in eager autograd."""
    x = x.detach().requires_grad_(True)
    (gradient,) = torch.autograd.grad(h(x), x, create_graph=True)
    (hv,) = torch.autograd.grad(gradient, x, grad_outputs=v)
    return hv


hv_double_backward = hvp_double_backward(h, x5, v5)

diagonal = torch.sin(x5) * (2 - x5 ** 2) + 4 * x5 * torch.cos(x5)
print("Hessian diagonal (func.hessian):", torch.tensor(np.diag(H.numpy())))
print("the formula:                    ", diagonal)
print("H @ v:                          ", H @ v5)
print("func.hvp (forward-over-reverse):", hv_forward_over_reverse)
print("double backward:                ", hv_double_backward)

# %% [markdown]
# How the cost grows with $n$: the HVP stays linear, the full Hessian grows with $n^2$ (and
# so does its memory: $8n^2$ bytes).

# %%
sizes = [10, 100] if QUICK else [10, 30, 100, 300, 1000]
hvp_times, hessian_times = [], []
for n in sizes:
    xn = torch.tensor(rng.standard_normal(n))
    vn = torch.tensor(rng.standard_normal(n))
    hvp_times.append(best_time(lambda: func.hvp(h, (xn,), (vn,)), repeat=3))  # noqa: B023
    hessian_times.append(best_time(lambda: func.hessian(h)(xn),  # noqa: B023
                                   repeat=3 if n <= 300 else 1))
    print(f"n = {n:5d}: hvp {hvp_times[-1] * 1e3:8.2f} ms, "
          f"hessian {hessian_times[-1] * 1e3:8.2f} ms")

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.loglog(sizes, hvp_times, "o-", label="func.hvp (one H v)")
ax.loglog(sizes, hessian_times, "s-", label="func.hessian (all of H)")
ax.set_xlabel("n")
ax.set_ylabel("time (s)")
ax.set_title("Hessian-vector product vs full Hessian")
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 5. Using HVPs: Newton-CG on the Rosenbrock function
#
# SciPy's Newton-CG minimizer asks for the gradient and for Hessian-vector products
# (`hessp`): exactly `func.grad` and `func.hvp`. Given NumPy arrays, `jitgrad.func`
# returns NumPy arrays, so they plug in directly. SciPy ships the Rosenbrock function with
# hand-written derivatives (`rosen_der`, `rosen_hess_prod`): automatic differentiation
# should take the same path to the minimum.

# %%
from scipy.optimize import minimize, rosen, rosen_der, rosen_hess_prod


def rosenbrock(x):
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


x0 = np.ones(10 if QUICK else 100)
x0[::2] = -1.2  # the classic start (-1.2, 1, -1.2, 1, ...)
options = {"xtol": 1e-10}
start = time.perf_counter()
result = minimize(lambda x: float(rosenbrock(torch.tensor(x))), x0, method="Newton-CG",
                  jac=func.grad(rosenbrock),
                  hessp=lambda x, p: func.hvp(rosenbrock, (x,), (p,)), options=options)
elapsed = time.perf_counter() - start
reference = minimize(rosen, x0, method="Newton-CG", jac=rosen_der, hessp=rosen_hess_prod,
                     options=options)
print(f"n = {len(x0)}, jitgrad: {result.message} after {result.nit} iterations "
      f"({result.njev} gradients, {result.nhev} Hessian-vector products, {elapsed:.1f} s)")
print(f"  f(x*) = {result.fun:.2e}, max |x* - 1| = {np.abs(result.x - 1).max():.2e}")
print(f"SciPy's hand-written derivatives: {reference.nit} iterations, "
      f"f(x*) = {reference.fun:.2e}")

# %% [markdown]
# ## 6. The same products on a compiled tape
#
# `jitgrad.compile` records a function once; its tape then replays value, gradient, JVP and
# HVP for new NumPy inputs entirely in Numba, with no Python per operation.

# %%
x_np, v_np = x5.numpy(), v5.numpy()
if not callable(getattr(torch, "compile", None)):
    print("jitgrad.compile is not part of this build")
else:
    tape = torch.compile(h, np.ones(5))
    print("tape.jvp:", tape.jvp(x_np, v_np))
    print("tape.hvp:", tape.hvp(x_np, v_np))
    print("eager:   ", func.hvp(h, (x_np,), (v_np,)))
