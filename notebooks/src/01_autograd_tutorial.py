# %% [markdown]
# # Autograd, the core syntax — with jitgrad standing in for PyTorch
#
# This notebook walks through the autograd tutorial that jitgrad is built to run unchanged
# (`seed/autograd-tutorial.md`, written in Chinese for PyTorch), section by section, in
# English. Every code cell is the tutorial's code; the only change is the import:
#
# ```python
# import jitgrad as torch
# ```
#
# jitgrad records each differentiable operation on a flat tape and runs the derivative
# sweeps as Numba-compiled kernels, but what you see here — values, `requires_grad`,
# `grad_fn` names, error messages — is what PyTorch shows.
#
# **Autograd** is a system that computes gradients automatically. In a neural network the
# **forward pass** computes the model's output and the loss; the **backward pass** computes
# the gradient of the loss with respect to every parameter; an optimizer then uses those
# gradients to update the parameters (gradient descent, for example). Autograd does the
# backward pass for you: you only write the forward computation, the library records a
# **dynamic computation graph** as it runs, and walks that graph backwards to get the
# gradients.
#
# Autograd revolves around three attributes of a tensor and one method: `requires_grad`,
# `.grad`, `.grad_fn`, and `backward()`.

# %%
import jitgrad as torch

_ = torch.manual_seed(0)  # the tutorial uses torch.randn; a seed makes the notebook repeatable

# %% [markdown]
# ## 1. The `requires_grad` attribute
#
# A boolean flag.
#
# - To have operations on a tensor tracked for automatic differentiation, set its
#   `requires_grad` to `True`.
# - The parameters a model learns — $w$ and $b$ of a linear regression, say — must have it
#   set.
# - A newly created tensor has `requires_grad=False` by default.
#
# **Set it when creating the tensor:**

# %%
# a tensor that requires gradients
x = torch.ones(2, 2, requires_grad=True)
print(x)
# tensor([[1., 1.],
#         [1., 1.]], requires_grad=True)

# %% [markdown]
# **Or change it later**, in place, with `requires_grad_()`:

# %%
a = torch.randn(2, 2)  # requires_grad=False by default
a.requires_grad_(True)  # in place
print(a.requires_grad)  # True

# %% [markdown]
# **Linear regression:** the input data needs no gradient; the weights do.

# %%
# x is the input data: no gradient needed
x = torch.tensor([2.0, 3.0])
print(f"x.requires_grad: {x.requires_grad}")  # False

# w are the model's weights: we need their gradient to optimize them
w = torch.tensor([0.5, 0.1], requires_grad=True)
print(f"w.requires_grad: {w.requires_grad}")  # True

b = torch.tensor(0.1, requires_grad=True)
print(f"b.requires_grad: {b.requires_grad}")  # True

# %% [markdown]
# Any tensor computed from a tensor with `requires_grad=True` automatically has
# `requires_grad=True` too, and its `grad_fn` points at the function that created it (for an
# addition, `AddBackward0`):

# %%
s = w + 1
print(s.requires_grad, s.grad_fn)

# %% [markdown]
# ## 2. The `backward()` method
#
# This is the button that starts the gradient computation. Once you have a **scalar**
# output — usually the loss — call its `.backward()` to compute the gradient of that scalar
# with respect to every input tensor that has `requires_grad=True`.
#
# When you call `loss.backward()`, autograd
#
# 1. starts from the `loss` node and walks backwards along the graph formed by the
#    `.grad_fn`s, and
# 2. applies the **chain rule** to compute the gradient of `loss` with respect to every leaf
#    of the graph (the tensors created with `requires_grad=True`).
#
# **Basic use (a scalar output):**

# %%
x = torch.ones(2, 2, requires_grad=True)
y = x + 2
z = y * y * 3
out = z.mean()  # out is a scalar

print(out)  # tensor(27., grad_fn=<MeanBackward0>)

# compute the gradients
out.backward()

# %% [markdown]
# **`backward()` on a non-scalar output.** If `backward()` is called on a tensor that is not
# a scalar, you must pass a `gradient` argument of the same shape: the gradient flowing in
# from upstream. The result is a vector-Jacobian product.

# %%
x = torch.randn(3, requires_grad=True)
y = x * 2
# y is not a scalar: y.backward() alone raises an error.
# Say we want the product of the vector v with the Jacobian of y with respect to x:
v = torch.tensor([0.1, 1.0, 0.001], dtype=torch.float)
y.backward(gradient=v)  # or y.backward(v)
print(x.grad)  # tensor([0.2000, 2.0000, 0.0020])

# %% [markdown]
# What "raises an error" means — PyTorch's error, word for word:

# %%
try:
    (x * 2).backward()
except RuntimeError as error:
    print(f"RuntimeError: {error}")

# %% [markdown]
# In typical neural-network training the loss is always a scalar, so you usually do not
# pass `gradient`.
#
# ## 3. The `.grad` attribute
#
# After `.backward()`, gradients are **accumulated** into the `.grad` attribute of the
# **leaf** tensors with `requires_grad=True` that took part in the computation.
#
# **Note:** gradients *add up*, they are not overwritten. That is why you usually zero the
# gradients before each backward pass.
#
# **Reading a gradient** (after the `out.backward()` of section 2 — we recompute it here,
# since `x` has been reassigned since):

# %%
x = torch.ones(2, 2, requires_grad=True)
out = ((x + 2) * (x + 2) * 3).mean()
out.backward()
print(x.grad)
# tensor([[4.5000, 4.5000],
#         [4.5000, 4.5000]])

# %% [markdown]
# **Keep in mind:**
#
# - Only leaves (tensors the user created with `requires_grad=True`, or model parameters
#   defined with `nn.Parameter`) get their `.grad` filled. Gradients of intermediate tensors
#   are freed after use to save memory: their `.grad` reads `None` (PyTorch adds a warning).
# - **Gradients accumulate:** calling `backward()` again adds the new gradient to the one
#   already in `.grad`. At the start of every optimization step, clear them with
#   `optimizer.zero_grad()` or by hand (`x.grad.zero_()`).

# %%
y = x + 2
print(y.is_leaf, y.grad)  # an intermediate tensor: no .grad

out = ((x + 2) * (x + 2) * 3).mean()
out.backward()  # a second backward: the gradient accumulates
print(x.grad)  # 4.5 + 4.5 = 9

x.grad.zero_()  # clear it by hand
print(x.grad)

# %% [markdown]
# ## 4. Stopping gradient tracking: `torch.no_grad()` and `.detach()`
#
# Sometimes we do not want operations tracked.
#
# **The `with torch.no_grad():` context manager.** Nothing computed inside the block is
# tracked, even when the inputs have `requires_grad=True`. This is very useful for
# evaluation and inference: it is faster and saves memory.

# %%
x = torch.ones(1, requires_grad=True)
print(x.requires_grad)  # True
with torch.no_grad():
    y = x * 2
print(y.requires_grad)  # False
# y.backward() would raise an error, since y has no grad_fn:
try:
    y.backward()
except RuntimeError as error:
    print(f"RuntimeError: {error}")

# %% [markdown]
# It also works as a decorator, `@torch.no_grad()`:

# %%
@torch.no_grad()
def predict(x):
    return x * 2


print(predict(x).requires_grad)  # False

# %% [markdown]
# **The `.detach()` method** returns a new tensor that shares the data of the original but
# takes no part in gradient computation: it is cut out of the current graph.

# %%
x = torch.ones(1, requires_grad=True)
y = x * 2
z = y.detach()  # z is no longer connected to x's graph

print(z.requires_grad)  # False
# to let z start a new history that can be differentiated:
# z.requires_grad_(True)

# y's gradient flows back to x; nothing flows through z
out = y * 3  # say this is the loss
out.backward()
print(x.grad)  # tensor([6.])

# if we compute from z instead
x.grad.zero_()
out_detached = z * 3
out_detached.requires_grad_(True)  # say we start a new computation here
print(out_detached.grad_fn)  # None: it is a new leaf
print(out_detached.is_leaf)

# %% [markdown]
# `.detach()` is commonly used
#
# 1. to use a tensor's value in a computation that must not affect gradients (converting it
#    to a NumPy array, or using it as a fixed value), and
# 2. to cut the gradient flow explicitly in some network architectures.

# %%
print(y.detach().numpy())  # y.numpy() itself raises: y requires grad
try:
    y.numpy()
except RuntimeError as error:
    print(f"RuntimeError: {error}")

# %% [markdown]
# ## 5. The `grad_fn` attribute
#
# A tensor created by operations on tensors with `requires_grad=True` gets a `.grad_fn`: a
# reference to the function object that created it (for the result of an addition,
# `<AddBackward0 object>`), which records the operation.
#
# Tensors created by the user — the graph's **leaves** — have `grad_fn = None`. Autograd
# walks back through the graph along these `grad_fn`s.
#
# (`w`, `b` and `x` are the linear-regression tensors of section 1.)

# %%
x = torch.tensor([2.0, 3.0])
w = torch.tensor([0.5, 0.1], requires_grad=True)
b = torch.tensor(0.1, requires_grad=True)

# w and b are leaves: created by hand
print(f"w.grad_fn: {w.grad_fn}")  # None
print(f"b.grad_fn: {b.grad_fn}")  # None

# y is created by operations on w, x and b
y = torch.dot(w, x) + b
print(f"y.requires_grad: {y.requires_grad}")  # True (because w and b require gradients)
print(f"y.grad_fn: {y.grad_fn}")  # <AddBackward0 object at ...>

# %% [markdown]
# `y`'s `grad_fn` is `AddBackward0` because an addition produced it last. Follow
# `.next_functions` to walk back through the whole graph — down to the `AccumulateGrad`
# nodes, which deposit gradients into the leaves' `.grad`:

# %%
def show_graph(fn, depth=0):
    """Print the backward graph below grad_fn ``fn``, one node per line."""
    name = type(fn).__name__
    leaf = f"  -> leaf of shape {tuple(fn.variable.shape)}" if hasattr(fn, "variable") else ""
    print("    " * depth + name + leaf)
    for next_fn, _ in fn.next_functions:
        if next_fn is not None:
            show_graph(next_fn, depth + 1)


show_graph(y.grad_fn)

# %% [markdown]
# ## 6. More about `backward()`
#
# **`retain_graph=True`.** By default the graph is freed after `.backward()` to save memory.
# If you need to call `backward()` more than once on the same graph (or part of it) — for
# instance to get the gradients of several losses with respect to the same parameters, or
# the gradient of a gradient — pass `retain_graph=True` to every call but the last.

# %%
x = torch.tensor([2.0], requires_grad=True)
y1 = x * 2
y2 = x * 3

# say y1 and y2 are both parts of some loss
y1.backward(retain_graph=True)  # keep the graph
print(x.grad)  # tensor([2.])

y2.backward()  # the last one: retain_graph can be left out (False is the default)
print(x.grad)  # tensor([5.]) (2.0 + 3.0: gradients accumulate)

# %% [markdown]
# Overusing `retain_graph=True` increases memory use. Going through a freed graph a second
# time is an error, PyTorch's:

# %%
y = (x * x).sum()
y.backward()
try:
    y.backward()
except RuntimeError as error:
    print(f"RuntimeError: {str(error)[:160]}...")

# %% [markdown]
# **`create_graph=True`.** Builds a graph of the derivative computation itself, which makes
# higher-order derivatives (the gradient of a gradient) possible.

# %%
x = torch.tensor([2.0], requires_grad=True)
y = x ** 3
grad_x = torch.autograd.grad(y, x, create_graph=True)  # first derivative, with its graph
print(grad_x)  # (tensor([12.], grad_fn=<MulBackward0>),)

# grad_x[0] is dy/dx; now compute the second derivative d(dy/dx)/dx
grad_grad_x = torch.autograd.grad(grad_x[0], x)
print(grad_grad_x)  # (tensor([12.]),) (for y = x^3, y'' = 6x, which is 12 at x = 2)

# %% [markdown]
# Note: `torch.autograd.grad()` is a lower-level function that returns gradients directly,
# instead of accumulating them into `.grad` the way `.backward()` does. With
# `create_graph=True` at every step, each derivative is itself on the tape and can be
# differentiated again, to any order:

# %%
y = x ** 3
(first,) = torch.autograd.grad(y, x, create_graph=True)
(second,) = torch.autograd.grad(first, x, create_graph=True)
(third,) = torch.autograd.grad(second, x)
print(first, second, third)  # 3x^2 = 12, 6x = 12, 6

# %% [markdown]
# ## 7. A complete example: linear regression
#
# Let us put every concept together. Take the model $y_{pred} = w x + b$; the goal is the
# gradient of the loss with respect to $w$ and $b$.

# %%
import jitgrad as torch


def pr(val):
    print(val)


# 1. input data and the parameters to learn (leaves)
x = torch.tensor(3.0)
w = torch.tensor(4.0, requires_grad=True)
b = torch.tensor(5.0, requires_grad=True)
y_true = torch.tensor(18.0)  # the target value
# 2. forward pass
y_pred = w * x + b
pr(f"y_pred:{y_pred}")
pr(f"y_pred.grad_fn:{y_pred.grad_fn}")
pr(f"y_pred.requires_grad:{y_pred.requires_grad}")
# 3. the loss: a scalar
loss = (y_pred - y_true) ** 2
pr(f"loss:{loss}")
pr(f"loss.grad_fn:{loss.grad_fn}")
# 4. backward pass: compute the gradients automatically
pr(f"w.grad:{w.grad}")
pr(f"b.grad:{b.grad}")
loss.backward()
# 5. look at the gradients
pr(f"w.grad:{w.grad}")
pr(f"b.grad:{b.grad}")

# %% [markdown]
# The tutorial's printed output, from PyTorch, for comparison (the addresses differ from run
# to run):
#
# ```
# y_pred:17.0
# y_pred.grad_fn:<AddBackward0 object at 0x0000017A339E7E80>
# y_pred.requires_grad:True
# loss:1.0
# loss.grad_fn:<PowBackward0 object at 0x0000017A339E7E80>
# w.grad:None
# b.grad:None
# w.grad:-6.0
# b.grad:-2.0
# ```
#
# By hand: $\partial L/\partial w = 2(y_{pred} - y)\,x = 2 \cdot (-1) \cdot 3 = -6$ and
# $\partial L/\partial b = 2(y_{pred} - y) = -2$.
#
# ## 8. Things to watch out for
#
# ### 8.1 Accumulating and zeroing gradients
#
# In a typical training loop gradients accumulate; if you do not clear them, the gradients
# are wrong.

# %%
optimizer = torch.optim.SGD([w, b], lr=0.01)

# inside the training loop
for i in range(2):
    # 1. zero the gradients
    optimizer.zero_grad()
    # or by hand:
    # if w.grad is not None:
    #     w.grad.zero_()
    # if b.grad is not None:
    #     b.grad.zero_()

    # 2. forward pass
    y_pred = w * x + b
    loss = (y_pred - y_true) ** 2

    # 3. backward pass
    loss.backward()

    print(f"Epoch {i+1}: w.grad={w.grad}, b.grad={b.grad}")

    # 4. update the parameters (left out here, to watch the gradients)
    # optimizer.step()

# %% [markdown]
# Both iterations show the same gradients, because they are zeroed each time. Without
# `optimizer.zero_grad()` the second iteration's gradient would be twice the first:

# %%
optimizer.zero_grad()
for i in range(2):
    y_pred = w * x + b
    loss = (y_pred - y_true) ** 2
    loss.backward()
    print(f"Epoch {i+1}: w.grad={w.grad}, b.grad={b.grad}")

# %% [markdown]
# And with `optimizer.step()` put back, the loop is a real training loop: gradient descent
# drives the loss to zero.

# %%
for step in range(1, 201):
    optimizer.zero_grad()
    loss = (w * x + b - y_true) ** 2
    loss.backward()
    optimizer.step()
    if step in (1, 10, 50, 200):
        print(f"step {step:3d}: loss = {loss.item():.6f}, w = {w.item():.4f}, b = {b.item():.4f}")

# %% [markdown]
# ## Summary
#
# The autograd workflow in six steps:
#
# 1. **Set up**: give the parameter tensors to optimize `requires_grad=True`.
# 2. **Forward pass**: compute; the library records a dynamic graph of every operation.
# 3. **Loss**: end with a scalar loss value.
# 4. **Backward pass**: call `.backward()` on the loss; the graph is walked and the gradients
#    are computed automatically.
# 5. **Read the gradients** from the parameters' `.grad`.
# 6. **Zero the gradients** before the next iteration, with `optimizer.zero_grad()`.
#
# ### The same code on PyTorch
#
# Where PyTorch is installed, the complete example of section 7 gives the same numbers on
# both libraries:

# %%
import importlib.util

import jitgrad


def section_7(lib):
    x = lib.tensor(3.0)
    w = lib.tensor(4.0, requires_grad=True)
    b = lib.tensor(5.0, requires_grad=True)
    loss = (w * x + b - lib.tensor(18.0)) ** 2
    loss.backward()
    return loss.item(), w.grad.item(), b.grad.item(), type(loss.grad_fn).__name__


print("jitgrad:", section_7(jitgrad))
if importlib.util.find_spec("torch") is not None:
    import torch as real_torch

    print("torch:  ", section_7(real_torch))
    assert section_7(jitgrad) == section_7(real_torch)
