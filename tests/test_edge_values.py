"""Every op of the spec table against torch at the inputs where derivatives are chosen
rather than computed: zeros, -0.0, ties, infinities, nans, values whose exp overflows.
The differences are exactly the known limits listed in the README; a new difference or a
fixed one fails here."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from op_specs import SPECS

import jitgrad

torch = pytest.importorskip("torch")

_KINDS = {
    "zeros": lambda rng, shape: np.where(rng.random(shape) < 0.4, 0.0, rng.uniform(-2, 2, shape)),
    "ties": lambda rng, shape: rng.choice([-1.0, 0.5, 2.0], size=shape),
    "negzero": lambda rng, shape: np.where(rng.random(shape) < 0.5, -0.0,
                                           rng.uniform(-2, 2, shape)),
    "big": lambda rng, shape: rng.uniform(-800, 800, shape),
    "inf": lambda rng, shape: np.where(rng.random(shape) < 0.2, np.inf,
                                       rng.uniform(-2, 2, shape)),
    "nan": lambda rng, shape: np.where(rng.random(shape) < 0.2, np.nan,
                                       rng.uniform(-2, 2, shape)),
}

KNOWN: set = set()  # README, "Known limits": none at these inputs


def _run(lib, spec, arrays, weights):
    leaves = [lib.tensor(a.copy(), dtype=lib.float64, requires_grad=True) for a in arrays]
    out = spec.fn(lib, *leaves)
    (out * lib.tensor(weights, dtype=lib.float64)).sum().backward()
    return [out.detach().numpy()] + [t.grad.numpy() if t.grad is not None else None
                                     for t in leaves]


def _same(a, b) -> bool:
    if a is None or b is None:  # torch leaves .grad None where nothing flowed: zeros here
        other = b if a is None else a
        return other is None or not np.any(other)
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a.shape == b.shape and np.array_equal(np.isnan(a), np.isnan(b))
            and np.allclose(a, b, rtol=1e-9, atol=1e-12, equal_nan=True))


def test_differences_from_torch_at_edge_values_are_the_known_ones():
    rng = np.random.default_rng(0)
    differences = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for spec in SPECS:
            if not spec.torch:
                continue
            for kind, make in _KINDS.items():
                arrays = [make(rng, shape) for shape in spec.shapes]
                try:
                    expected = _run(torch, spec, arrays, np.ones(()))
                except RuntimeError:
                    continue  # torch refuses these inputs too
                weights = rng.uniform(0.5, 1.5, np.shape(expected[0]))
                expected = _run(torch, spec, arrays, weights)
                ours = _run(jitgrad, spec, arrays, weights)
                if not all(_same(a, b) for a, b in zip(ours, expected)):
                    differences.add((spec.op, kind))
    assert differences == KNOWN
