"""jitgrad.utils.data: datasets, samplers, DataLoader batching, shuffling, drop_last."""
import numpy as np
import pytest

import jitgrad
from jitgrad.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    SequentialSampler,
    Subset,
    TensorDataset,
    default_collate,
    random_split,
)


def _dataset(n=10):
    features = jitgrad.arange(n * 2, dtype=jitgrad.float32).reshape(n, 2)
    labels = jitgrad.arange(n)
    return TensorDataset(features, labels)


def _labels(loader):
    return [labels.tolist() for _, labels in loader]


class _Squares(Dataset):
    """A map-style dataset that is not a TensorDataset: samples come one by one."""

    def __init__(self, n):
        self.n = n

    def __getitem__(self, index):
        return {"x": jitgrad.tensor([float(index), float(index) ** 2]), "y": index}

    def __len__(self):
        return self.n


def test_tensor_dataset():
    data = _dataset(4)
    assert len(data) == 4
    features, label = data[2]
    assert features.tolist() == [4.0, 5.0] and label.item() == 2
    with pytest.raises(AssertionError, match="Size mismatch between tensors"):
        TensorDataset(jitgrad.zeros(3), jitgrad.zeros(4))


def test_batches_in_order_with_a_short_last_batch():
    loader = DataLoader(_dataset(10), batch_size=4)
    batches = list(loader)
    assert len(loader) == 3 and len(batches) == 3
    assert _labels(loader) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    features, labels = batches[0]
    assert isinstance(batches[0], list)  # as torch's default_collate for tuples
    assert features.shape == (4, 2) and features.dtype is jitgrad.float32
    assert labels.dtype is jitgrad.int64
    assert features.tolist() == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0]]


def test_drop_last():
    loader = DataLoader(_dataset(10), batch_size=4, drop_last=True)
    assert len(loader) == 2
    assert _labels(loader) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert len(DataLoader(_dataset(8), batch_size=4, drop_last=True)) == 2


def test_shuffle_is_a_permutation_and_reproducible():
    loader = DataLoader(_dataset(10), batch_size=3, shuffle=True,
                        generator=jitgrad.Generator().manual_seed(7))
    first = _labels(loader)
    second = _labels(loader)
    assert [len(b) for b in first] == [3, 3, 3, 1]
    assert sorted(sum(first, [])) == list(range(10))
    assert first != second  # a new order every pass
    again = DataLoader(_dataset(10), batch_size=3, shuffle=True,
                       generator=jitgrad.Generator().manual_seed(7))
    assert _labels(again) == first and _labels(again) == second
    # without a generator: the default one, seeded by manual_seed
    jitgrad.manual_seed(3)
    a = _labels(DataLoader(_dataset(10), batch_size=3, shuffle=True))
    jitgrad.manual_seed(3)
    b = _labels(DataLoader(_dataset(10), batch_size=3, shuffle=True))
    assert a == b and a != [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]


def test_shuffled_batches_pair_features_with_their_labels():
    loader = DataLoader(_dataset(9), batch_size=4, shuffle=True, drop_last=True)
    batches = list(loader)
    assert len(batches) == 2
    for features, labels in batches:
        np.testing.assert_array_equal(features.numpy()[:, 0], 2 * labels.numpy())


def test_fast_path_equals_collating_sample_by_sample():
    data = _dataset(11)
    fast = DataLoader(data, batch_size=4, shuffle=True,
                      generator=jitgrad.Generator().manual_seed(1))
    slow = DataLoader(data, batch_size=4, shuffle=True, collate_fn=default_collate,
                      generator=jitgrad.Generator().manual_seed(1))
    for (fx, fy), (sx, sy) in zip(fast, slow, strict=True):
        assert jitgrad.equal(fx, sx) and jitgrad.equal(fy, sy)


def test_generic_dataset_and_collate():
    loader = DataLoader(_Squares(5), batch_size=2)
    batches = list(loader)
    assert len(batches) == 3
    assert batches[0]["x"].tolist() == [[0.0, 0.0], [1.0, 1.0]]
    assert batches[2]["y"].tolist() == [4] and batches[2]["y"].dtype is jitgrad.int64
    single = list(DataLoader(_Squares(2), batch_size=None))
    assert single[1]["y"] == 1 and single[1]["x"].tolist() == [1.0, 1.0]


def test_default_collate_matches_torch():
    pytest.importorskip("torch")
    from torch.utils.data import default_collate as torch_collate

    samples = [(1.5, 2, True, "a", [1, 2]), (2.5, 3, False, "b", [3, 4])]
    ours = default_collate(samples)
    theirs = torch_collate(samples)
    assert type(ours) is type(theirs)
    assert ours[0].tolist() == theirs[0].tolist() and ours[0].dtype is jitgrad.float64
    assert ours[1].tolist() == theirs[1].tolist() and ours[1].dtype is jitgrad.int64
    assert ours[2].tolist() == theirs[2].tolist() and ours[2].dtype is jitgrad.bool
    assert ours[3] == theirs[3]
    assert [t.tolist() for t in ours[4]] == [t.tolist() for t in theirs[4]]
    arrays = [np.ones((2, 2), np.float32), np.zeros((2, 2), np.float32)]
    assert default_collate(arrays).shape == (2, 2, 2)
    with pytest.raises(RuntimeError, match="equal size"):
        default_collate([[1, 2], [3]])


def test_samplers():
    assert list(SequentialSampler(range(3))) == [0, 1, 2]
    sampler = RandomSampler(range(5), generator=jitgrad.Generator().manual_seed(0))
    assert sorted(sampler) == [0, 1, 2, 3, 4] and len(sampler) == 5
    drawn = list(RandomSampler(range(3), replacement=True, num_samples=20,
                               generator=jitgrad.Generator().manual_seed(0)))
    assert len(drawn) == 20 and set(drawn) <= {0, 1, 2}
    more = list(RandomSampler(range(3), num_samples=7))
    assert len(more) == 7 and sorted(more[:3]) == [0, 1, 2]
    batches = BatchSampler(SequentialSampler(range(5)), 2, drop_last=False)
    assert list(batches) == [[0, 1], [2, 3], [4]] and len(batches) == 3
    with pytest.raises(ValueError, match="positive integer"):
        BatchSampler(SequentialSampler(range(5)), 0, False)
    loader = DataLoader(_dataset(5), batch_sampler=BatchSampler(range(5), 2, True))
    assert _labels(loader) == [[0, 1], [2, 3]]
    loader = DataLoader(_dataset(4), sampler=[3, 1, 2, 0], batch_size=3)
    assert _labels(loader) == [[3, 1, 2], [0]]


def test_bad_arguments():
    data = _dataset(4)
    with pytest.raises(ValueError, match="mutually exclusive with shuffle"):
        DataLoader(data, sampler=SequentialSampler(data), shuffle=True)
    with pytest.raises(ValueError, match="batch_sampler option is mutually exclusive"):
        DataLoader(data, batch_size=2, batch_sampler=BatchSampler(range(4), 2, False))
    with pytest.raises(ValueError, match="mutually exclusive with drop_last"):
        DataLoader(data, batch_size=None, drop_last=True)
    with pytest.raises(ValueError, match="positive integer value, but got batch_size=0"):
        DataLoader(data, batch_size=0)
    with pytest.raises(ValueError, match="num_workers"):
        DataLoader(data, num_workers=-1)
    with pytest.raises(NotImplementedError):
        Dataset()[0]


def test_random_split_and_subset():
    parts = random_split(range(10), [3, 7], generator=jitgrad.Generator().manual_seed(0))
    assert [len(p) for p in parts] == [3, 7]
    assert sorted(list(parts[0]) + list(parts[1])) == list(range(10))
    fractions = random_split(range(10), [0.5, 0.25, 0.25])
    assert [len(p) for p in fractions] == [6, 2, 2]  # as torch: remainder round-robin
    with pytest.raises(ValueError, match="Sum of input lengths"):
        random_split(range(10), [3, 3])
    subset = Subset(_dataset(6), [5, 0])
    assert len(subset) == 2 and subset[0][1].item() == 5
    assert _labels(DataLoader(subset, batch_size=2)) == [[5, 0]]
