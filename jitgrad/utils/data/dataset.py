"""Datasets: the ``Dataset`` protocol, ``TensorDataset``, ``Subset`` and ``random_split``."""
from __future__ import annotations

import math
from collections.abc import Sequence

from ...functions import randperm
from ...tensor import Tensor


class Dataset:
    """A map-style dataset: ``dataset[i]`` is sample ``i``; ``len(dataset)`` their number."""

    def __getitem__(self, index):
        raise NotImplementedError("Subclasses of Dataset should implement __getitem__.")


class TensorDataset(Dataset):
    """Samples are the rows of tensors sharing their first dimension: ``dataset[i]`` is
    ``(t[i] for t in tensors)``.

    >>> import jitgrad as torch
    >>> data = torch.utils.data.TensorDataset(torch.zeros(3, 2), torch.tensor([7, 8, 9]))
    >>> len(data), data[1]
    (3, (tensor([0., 0.]), tensor(8)))
    """

    def __init__(self, *tensors: Tensor) -> None:
        for t in tensors:
            if not isinstance(t, Tensor):
                raise TypeError(f"TensorDataset takes tensors, got {type(t).__name__}")
        if any(t.ndim == 0 or t.shape[0] != tensors[0].shape[0] for t in tensors):
            # torch asserts this: the same error type
            raise AssertionError("Size mismatch between tensors")
        self.tensors = tensors

    def __getitem__(self, index):
        return tuple(t[index] for t in self.tensors)

    def __len__(self) -> int:
        return self.tensors[0].shape[0] if self.tensors else 0


class Subset(Dataset):
    """The samples of ``dataset`` at ``indices``."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = indices

    def __getitem__(self, index):
        if isinstance(index, list):
            return self.dataset[[self.indices[i] for i in index]]
        return self.dataset[self.indices[index]]

    def __len__(self) -> int:
        return len(self.indices)


def random_split(dataset: Dataset, lengths: Sequence, generator=None) -> list[Subset]:
    """Split ``dataset`` into random non-overlapping subsets of the given lengths (or
    fractions summing to 1, the remainder spread one by one from the first subset).

    >>> import jitgrad as torch
    >>> train, test = torch.utils.data.random_split(range(10), [0.8, 0.2])
    >>> len(train), len(test)
    (8, 2)
    """
    n = len(dataset)
    lengths = list(lengths)
    if math.isclose(sum(lengths), 1) and sum(lengths) <= 1:
        for i, fraction in enumerate(lengths):
            if not 0 <= fraction <= 1:
                raise ValueError(f"Fraction at index {i} is not between 0 and 1")
        counts = [int(math.floor(n * fraction)) for fraction in lengths]
        for i in range(n - sum(counts)):
            counts[i % len(counts)] += 1
        lengths = counts
    if sum(lengths) != n:
        raise ValueError("Sum of input lengths does not equal the length of the input "
                         "dataset!")
    order = randperm(n, generator=generator).tolist()
    subsets, start = [], 0
    for length in lengths:
        subsets.append(Subset(dataset, order[start:start + length]))
        start += length
    return subsets
