"""The ``DataLoader``: batches of a dataset, stacked into tensors."""
from __future__ import annotations

import collections.abc
import numbers
from collections.abc import Callable, Iterator

import numpy as np

from ... import _dtype as dt
from ... import functions as T
from ...tensor import Tensor
from .dataset import Dataset, TensorDataset
from .sampler import BatchSampler, RandomSampler, Sampler, SequentialSampler


def default_collate(batch):
    """Stack a list of samples into a batch, torch's way: tensors (and NumPy arrays) are
    stacked along a new first dim, numbers become a tensor, and tuples, lists and dicts are
    collated field by field (tuples and lists give lists).

    >>> import jitgrad as torch
    >>> from jitgrad.utils.data import default_collate
    >>> default_collate([(torch.tensor([1.0]), 0), (torch.tensor([2.0]), 1)])
    [tensor([[1.],
            [2.]]), tensor([0, 1])]
    """
    elem = batch[0]
    if isinstance(elem, Tensor):
        return T.stack(batch)
    if isinstance(elem, np.ndarray):
        return T.stack([T.as_tensor(np.ascontiguousarray(a)) for a in batch])
    if isinstance(elem, bool):
        return T.tensor(batch, dtype=dt.bool_)
    if isinstance(elem, numbers.Integral):
        return T.tensor(batch, dtype=dt.int64)
    if isinstance(elem, numbers.Real):
        return T.tensor(batch, dtype=dt.float64)
    if isinstance(elem, (str, bytes)):
        return batch
    if isinstance(elem, collections.abc.Mapping):
        return {key: default_collate([sample[key] for sample in batch]) for key in elem}
    if isinstance(elem, tuple) and hasattr(elem, "_fields"):  # a namedtuple
        return type(elem)(*(default_collate(field) for field in zip(*batch, strict=True)))
    if isinstance(elem, collections.abc.Sequence):
        if any(len(sample) != len(elem) for sample in batch):
            raise RuntimeError("each element in list of batch should be of equal size")
        return [default_collate(field) for field in zip(*batch, strict=True)]
    raise TypeError(f"default_collate: batch must contain tensors, numpy arrays, numbers, "
                    f"dicts or lists; found {type(elem)}")


class DataLoader:
    """Iterate over ``dataset`` in batches of ``batch_size`` samples, collated into tensors;
    ``shuffle`` draws a new order every pass from ``generator`` (or jitgrad's default
    generator, so ``manual_seed`` makes it reproducible); ``drop_last`` drops a last
    incomplete batch. Loading happens in the calling process (``num_workers`` is accepted
    for compatibility). A ``TensorDataset`` is batched by indexing its tensors once per
    batch, not sample by sample.

    >>> import jitgrad as torch
    >>> from jitgrad.utils.data import DataLoader, TensorDataset
    >>> data = TensorDataset(torch.arange(6).reshape(3, 2), torch.tensor([0, 1, 2]))
    >>> loader = DataLoader(data, batch_size=2, shuffle=True,
    ...                     generator=torch.Generator().manual_seed(0))
    >>> [labels.tolist() for _, labels in loader]
    [[2, 0], [1]]
    >>> len(DataLoader(data, batch_size=2, drop_last=True))
    1
    """

    def __init__(self, dataset: Dataset, batch_size: int | None = 1, shuffle: bool | None = None,
                 sampler: Sampler | None = None, batch_sampler: Sampler | None = None,
                 num_workers: int = 0, collate_fn: Callable | None = None,
                 pin_memory: bool = False, drop_last: bool = False, *,
                 generator=None) -> None:
        if num_workers < 0:
            raise ValueError("num_workers option should be non-negative; use num_workers=0 to "
                             "disable multiprocessing.")
        if sampler is not None and shuffle:
            raise ValueError("sampler option is mutually exclusive with shuffle")
        if batch_sampler is not None:
            if batch_size != 1 or shuffle or sampler is not None or drop_last:
                raise ValueError("batch_sampler option is mutually exclusive with batch_size, "
                                 "shuffle, sampler, and drop_last")
            batch_size = None
            drop_last = False
        elif batch_size is None and drop_last:
            raise ValueError("batch_size=None option disables auto-batching and is mutually "
                             "exclusive with drop_last")
        if sampler is None:
            sampler = (RandomSampler(dataset, generator=generator) if shuffle
                       else SequentialSampler(dataset))
        if batch_size is not None and batch_sampler is None:
            batch_sampler = BatchSampler(sampler, batch_size, drop_last)
        self.dataset = dataset
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.sampler = sampler
        self.batch_sampler = batch_sampler
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.generator = generator
        self._auto_collation = batch_sampler is not None
        self.collate_fn = collate_fn if collate_fn is not None else (
            default_collate if self._auto_collation else _default_convert)
        self._by_slices = (collate_fn is None and isinstance(dataset, TensorDataset)
                           and type(batch_sampler) is BatchSampler
                           and hasattr(batch_sampler.sampler, "index_array"))

    def __iter__(self) -> Iterator:
        if self._by_slices:
            return self._tensor_batches()
        if self._auto_collation:
            return (self.collate_fn([self.dataset[i] for i in batch])
                    for batch in self.batch_sampler)
        return (self.collate_fn(self.dataset[i]) for i in self.sampler)

    def _tensor_batches(self) -> Iterator[list[Tensor]]:
        """Batches of a TensorDataset: each tensor indexed once per batch (the same values
        ``default_collate`` would stack, without a Python step per sample)."""
        order = self.batch_sampler.sampler.index_array()
        size = self.batch_size
        stop = len(order) - len(order) % size if self.drop_last else len(order)
        tensors = self.dataset.tensors
        for start in range(0, stop, size):
            index = order[start:start + size]
            yield [t[index] if t.requires_grad else Tensor._wrap(t._value()[index], t.dtype)
                   for t in tensors]

    def __len__(self) -> int:
        if self.batch_sampler is not None:
            return len(self.batch_sampler)
        return len(self.sampler)


def _default_convert(sample):
    """Without batching (``batch_size=None``) samples pass through; NumPy arrays become
    tensors."""
    if isinstance(sample, np.ndarray):
        return T.as_tensor(np.ascontiguousarray(sample))
    return sample
