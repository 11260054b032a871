"""``python -m jitgrad``: a short guided tour — the tutorial's linear regression, trained
with SGD, with the values PyTorch prints.

``python -m jitgrad bench [--quick] [--json PATH] [--plot PATH]``: the benchmark table,
jitgrad next to the installed peers (``python -m jitgrad bench --help``)."""
from __future__ import annotations

import sys
import time


def tour() -> None:
    import jitgrad as torch

    print("jitgrad: PyTorch-style autograd on a flat tape swept by Numba kernels\n")
    x = torch.tensor(3.0)
    w = torch.tensor(4.0, requires_grad=True)
    b = torch.tensor(5.0, requires_grad=True)
    y_true = torch.tensor(18.0)

    y_pred = w * x + b
    print(f"y_pred = w * x + b       -> {y_pred!r}")
    loss = (y_pred - y_true) ** 2
    print(f"loss = (y_pred - y)**2   -> {loss!r}")
    start = time.perf_counter()
    loss.backward()
    first = time.perf_counter() - start
    print(f"loss.backward()          -> w.grad = {w.grad!r}, b.grad = {b.grad!r}"
          f"   ({first * 1e3:.1f} ms, including loading the kernels)")

    print("\ntraining with optim.SGD(lr=0.01), zero_grad() each step:")
    optimizer = torch.optim.SGD([w, b], lr=0.01)
    start = time.perf_counter()
    steps = 200
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        loss = (w * x + b - y_true) ** 2
        loss.backward()
        optimizer.step()
        if step in (1, 10, 50, 200):
            print(f"  step {step:3d}: loss = {loss.item():.6f}  w = {w.item():.4f}  "
                  f"b = {b.item():.4f}")
    elapsed = time.perf_counter() - start
    print(f"  {steps} steps in {elapsed * 1e3:.1f} ms ({elapsed / steps * 1e6:.1f} us per step)")

    print("\nhigher order: d/dx x**3 at x = 2, and its derivative")
    x2 = torch.tensor([2.0], requires_grad=True)
    (g,) = torch.autograd.grad(x2 ** 3, x2, create_graph=True)
    (gg,) = torch.autograd.grad(g, x2)
    print(f"  {g!r}  {gg!r}")


def main(argv: list[str]) -> int:
    if argv and argv[0] == "bench":
        from .bench import main as bench_main

        return bench_main(argv[1:])
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    tour()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
