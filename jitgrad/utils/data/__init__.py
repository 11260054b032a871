"""Datasets, samplers and the ``DataLoader``, with torch's names and semantics.

>>> import jitgrad as torch
>>> from jitgrad.utils.data import DataLoader, TensorDataset
>>> data = TensorDataset(torch.arange(5.0), torch.tensor([0, 1, 0, 1, 0]))
>>> [x.tolist() for x, _ in DataLoader(data, batch_size=2)]
[[0.0, 1.0], [2.0, 3.0], [4.0]]
"""
from .dataloader import DataLoader, default_collate
from .dataset import Dataset, Subset, TensorDataset, random_split
from .sampler import BatchSampler, RandomSampler, Sampler, SequentialSampler

__all__ = [
    "BatchSampler", "DataLoader", "Dataset", "RandomSampler", "Sampler", "SequentialSampler",
    "Subset", "TensorDataset", "default_collate", "random_split",
]
