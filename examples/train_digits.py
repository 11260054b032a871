"""Train a 64-128-10 MLP on scikit-learn's bundled digits (8x8 images, no download) with
jitgrad's torch-style API, and print the test accuracy.

    python examples/train_digits.py [--epochs 20] [--batch-size 64] [--lr 0.1] [--seed 0]

Needs the optional extras scikit-learn (the data) and tqdm (progress bars):
``pip install jitgrad[examples]``. With ``jitgrad`` replaced by ``torch`` in the three
imports, the same script runs on PyTorch.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import jitgrad as torch
from jitgrad import nn
from jitgrad.utils.data import DataLoader, TensorDataset


def load(seed: int):
    """Train and test tensors: pixels scaled to [0, 1] as float32, labels as int64."""
    images, labels = load_digits(return_X_y=True)
    images = (images / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.2, random_state=seed, stratify=labels)
    return (torch.tensor(x_train), torch.tensor(y_train), torch.tensor(x_test),
            torch.tensor(y_test))


def accuracy(model: nn.Module, images, labels) -> float:
    model.eval()
    with torch.no_grad():
        predicted = model(images).argmax(1)
    model.train()
    return (predicted == labels).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.perf_counter()
    torch.manual_seed(args.seed)
    x_train, y_train, x_test, y_test = load(args.seed)
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=args.batch_size,
                        shuffle=True)
    model = nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 10))
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    print(model)

    for epoch in range(1, args.epochs + 1):
        total, count = 0.0, 0
        bar = tqdm(loader, desc=f"epoch {epoch:2d}/{args.epochs}", leave=False, unit="batch")
        for images, labels in bar:
            optimizer.zero_grad()
            loss = loss_fn(model(images), labels)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(labels)
            count += len(labels)
            bar.set_postfix(loss=f"{total / count:.4f}")
        tqdm.write(f"epoch {epoch:2d}: train loss {total / count:.4f}, "
                   f"test accuracy {accuracy(model, x_test, y_test):.4f}")

    elapsed = time.perf_counter() - start
    print(f"final test accuracy: {accuracy(model, x_test, y_test):.4f} "
          f"({len(y_test)} images, {elapsed:.1f} s)")


if __name__ == "__main__":
    main()
