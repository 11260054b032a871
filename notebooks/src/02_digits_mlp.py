# %% [markdown]
# # Training an MLP on handwritten digits
#
# The tutorial's last section points at the training loop: `zero_grad()`, forward, loss,
# `backward()`, `step()`. Here is that loop at work on a real (small) problem, with
# jitgrad's torch-style API: `nn.Sequential`, `nn.Linear`, `nn.CrossEntropyLoss`,
# `optim.SGD` with momentum, `utils.data.DataLoader`. Replace `jitgrad` with `torch` in the
# imports and the same code runs on PyTorch (the last section does exactly that).
#
# The data is scikit-learn's bundled *digits* set: 1,797 images of 8×8 pixels, 10 classes,
# no download.

# %%
import os
import time

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import jitgrad as torch
from jitgrad import nn
from jitgrad.utils.data import DataLoader, TensorDataset

# the test suite sets JITGRAD_NOTEBOOK_QUICK=1 to run a short version of this notebook
QUICK = os.environ.get("JITGRAD_NOTEBOOK_QUICK") == "1"
EPOCHS = 2 if QUICK else 20

# %% [markdown]
# ## The data
#
# Pixels are scaled to [0, 1] (float32), labels are int64 class indices; 20% of the images,
# stratified by class, are held out for testing.

# %%
images, labels = load_digits(return_X_y=True)
images = (images / 16.0).astype(np.float32)
x_train, x_test, y_train, y_test = train_test_split(
    images, labels, test_size=0.2, random_state=0, stratify=labels)
x_train, x_test = torch.tensor(x_train), torch.tensor(x_test)
y_train, y_test = torch.tensor(y_train), torch.tensor(y_test)
print(f"train: {tuple(x_train.shape)} {x_train.dtype}, labels {tuple(y_train.shape)} "
      f"{y_train.dtype}")
print(f"test:  {tuple(x_test.shape)}")

fig, axes = plt.subplots(2, 10, figsize=(10, 2.4))
for ax, image, label in zip(axes.flat, x_train[:20].numpy(), y_train[:20].tolist()):
    ax.imshow(image.reshape(8, 8), cmap="gray_r")
    ax.set_title(label)
    ax.axis("off")
fig.suptitle("the first 20 training images and their labels")
plt.show()

# %% [markdown]
# ## The model, the loss, the optimizer
#
# A 64-128-10 multilayer perceptron with a tanh hidden layer. `nn.Linear` initializes its
# weights as PyTorch does (uniform in ±1/√fan_in); `jitgrad.manual_seed` makes the run
# repeatable. `CrossEntropyLoss` takes raw scores (logits) and class indices.

# %%
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 10))
loss_fn = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
loader = DataLoader(TensorDataset(x_train, y_train), batch_size=64, shuffle=True)

print(model)
print(f"{sum(p.numel() for p in model.parameters()):,} parameters")
for name, p in model.named_parameters():
    print(f"  {name:10s} {tuple(p.shape)}")

# %% [markdown]
# ## Training
#
# One epoch is one pass over the shuffled training set in batches of 64. After each epoch
# the model is evaluated on both sets under `no_grad()` (nothing recorded) and in `eval()`
# mode.

# %%
def evaluate(model, x, y):
    """(mean loss, accuracy) of ``model`` on ``x``, ``y``."""
    model.eval()
    with torch.no_grad():
        logits = model(x)
        loss = loss_fn(logits, y).item()
        accuracy = (logits.argmax(1) == y).float().mean().item()
    model.train()
    return loss, accuracy


history = {"train loss": [], "test loss": [], "train accuracy": [], "test accuracy": []}
start = time.perf_counter()
for epoch in range(1, EPOCHS + 1):
    for batch_images, batch_labels in loader:
        optimizer.zero_grad()
        loss = loss_fn(model(batch_images), batch_labels)
        loss.backward()
        optimizer.step()
    train_loss, train_accuracy = evaluate(model, x_train, y_train)
    test_loss, test_accuracy = evaluate(model, x_test, y_test)
    for key, value in zip(history, (train_loss, test_loss, train_accuracy, test_accuracy)):
        history[key].append(value)
    if epoch == 1 or epoch % 5 == 0 or epoch == EPOCHS:
        print(f"epoch {epoch:2d}: train loss {train_loss:.4f}, test loss {test_loss:.4f}, "
              f"test accuracy {test_accuracy:.4f}")
elapsed = time.perf_counter() - start
print(f"{EPOCHS} epochs in {elapsed:.1f} s ({elapsed / EPOCHS * 1e3:.0f} ms per epoch, "
      "evaluation included)")

# %% [markdown]
# ## Loss and accuracy curves

# %%
epochs = np.arange(1, EPOCHS + 1)
fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
ax_loss.plot(epochs, history["train loss"], "o-", label="train")
ax_loss.plot(epochs, history["test loss"], "s-", label="test")
ax_loss.set_yscale("log")
ax_loss.set_xlabel("epoch")
ax_loss.set_ylabel("cross-entropy loss (log scale)")
ax_loss.set_title("loss")
ax_loss.legend()
ax_acc.plot(epochs, history["train accuracy"], "o-", label="train")
ax_acc.plot(epochs, history["test accuracy"], "s-", label="test")
ax_acc.axhline(0.95, color="gray", ls="--", lw=0.8, label="95%")
ax_acc.set_xlabel("epoch")
ax_acc.set_ylabel("accuracy")
ax_acc.set_title("accuracy")
ax_acc.legend(loc="lower right")
for ax in (ax_loss, ax_acc):
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
fig.tight_layout()
plt.show()
print(f"final test accuracy: {history['test accuracy'][-1]:.4f}")

# %% [markdown]
# ## What the model gets wrong
#
# Predictions on the first 30 test images; the mistakes in red.

# %%
with torch.no_grad():
    predicted = model(x_test).argmax(1)
fig, axes = plt.subplots(3, 10, figsize=(10, 3.6))
for ax, image, label, guess in zip(axes.flat, x_test[:30].numpy(), y_test[:30].tolist(),
                                   predicted[:30].tolist()):
    ax.imshow(image.reshape(8, 8), cmap="gray_r")
    ax.set_title(f"{guess}" if guess == label else f"{guess} (is {label})",
                 color="black" if guess == label else "red", fontsize=9)
    ax.axis("off")
fig.suptitle("predicted label of test images")
plt.show()

confusion = np.zeros((10, 10), dtype=int)
np.add.at(confusion, (y_test.numpy(), predicted.numpy()), 1)
wrong = [(confusion[i, j], i, j) for i in range(10) for j in range(10)
         if i != j and confusion[i, j]]
print(f"{len(y_test) - np.trace(confusion)} of {len(y_test)} test images misclassified")
for count, true, guess in sorted(wrong, reverse=True)[:5]:
    print(f"  {count} x a {true} taken for a {guess}")

# %% [markdown]
# ## The same loop on PyTorch
#
# Where PyTorch is installed: the same model, started from jitgrad's initial weights
# (through `state_dict()`), trained for one epoch on the same batches by both libraries.
# The losses agree to float32 precision; the time per epoch shows the per-step overhead of
# each library on this small network.

# %%
import importlib.util

if importlib.util.find_spec("torch") is None:
    print("PyTorch is not installed here: nothing to compare")
else:
    import torch as real_torch

    real_torch.set_num_threads(1)  # jitgrad's kernels are single-threaded too

    def make(lib, init):
        net = lib.nn.Sequential(lib.nn.Linear(64, 128), lib.nn.Tanh(), lib.nn.Linear(128, 10))
        net.load_state_dict({k: lib.tensor(v) for k, v in init.items()})
        return net, lib.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)

    def one_epoch(lib, net, opt, batches):
        losses = []
        start = time.perf_counter()
        for x, y in batches:
            opt.zero_grad()
            loss = lib.nn.functional.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses, time.perf_counter() - start

    torch.manual_seed(1)
    init = {k: v.detach().numpy().copy()
            for k, v in nn.Sequential(nn.Linear(64, 128), nn.Tanh(),
                                      nn.Linear(128, 10)).state_dict().items()}
    order = np.random.default_rng(0).permutation(len(y_train))
    batch_ids = [order[i:i + 64] for i in range(0, len(order), 64)]
    results = {}
    for lib in (torch, real_torch):
        batches = [(lib.tensor(x_train.numpy()[ids]), lib.tensor(y_train.numpy()[ids]))
                   for ids in batch_ids]
        one_epoch(lib, *make(lib, init), batches)  # warm-up: first calls, caches
        results[lib.__name__] = one_epoch(lib, *make(lib, init), batches)
    for name, (losses, seconds) in results.items():
        print(f"{name:8s} one epoch ({len(losses)} steps): {seconds * 1e3:6.1f} ms, "
              f"first/last loss {losses[0]:.5f} / {losses[-1]:.5f}")
    gap = np.max(np.abs(np.subtract(results["jitgrad"][0], results["torch"][0])))
    print(f"largest loss difference over the epoch: {gap:.2e}")
