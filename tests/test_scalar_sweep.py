"""The sweep's step for a one-element elementwise output (``reverse_scalar``, generated next
to the array steps): the array step's values to the last bit, and at 0-d every spec's
gradient against the differentiable rule and torch."""
from __future__ import annotations

import numpy as np
import pytest
from op_specs import SPECS, inputs_for

import jitgrad
from jitgrad.kernels import _reverse
from jitgrad.ops.registry import ELEMENTWISE, OPS

ELEMENTWISE_OPS = [op for op in OPS if op.kind == ELEMENTWISE]
ELEMENTWISE_SPECS = [s for s in SPECS if any(op.name == s.op for op in ELEMENTWISE_OPS)]
SPECIALS = [np.nan, 0.0, -0.0, np.inf, -np.inf, 1.0, -1.0, 0.5]


def _cases(rng, arity):
    """Operand values: random in (-2, 2), special values, and ties between operands."""
    rows = [rng.uniform(-2, 2, size=arity) for _ in range(12)]
    rows += [np.full(arity, v) for v in SPECIALS]
    rows += [rng.choice(SPECIALS, size=arity) for _ in range(12)]
    return rows


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: d.__name__)
@pytest.mark.parametrize("op", ELEMENTWISE_OPS, ids=lambda op: op.name)
def test_scalar_step_equals_the_array_step_bit_for_bit(op, dtype):
    rng = np.random.default_rng(op.code)
    arity = len(op.inputs)
    meta = np.zeros(1, np.int64)  # meta[0] == 0: operands with the output's shape
    # operands at 0..arity-1 (or all at 0: one node read twice, as x * x), output at 4
    layouts = [list(range(arity))] + ([[0] * arity] if arity > 1 else [])
    compared = 0
    for offsets in layouts:
        offsets = offsets + [0] * (3 - arity)
        for values in _cases(rng, arity):
            vals = np.zeros(6, dtype)
            for k in range(arity):
                vals[offsets[k]] = values[k]
            vals[4] = rng.uniform(-2, 2)  # the output's value (read as y)
            for writes in [(2, 1, 1), (1, 1, 1), (2, 0, 2), (0, 2, 1)]:
                w = [writes[k] if k < arity else 0 for k in range(3)]
                if len(set(offsets[:arity])) == 1 and arity > 1:
                    w = [w[0], min(w[1], 1), min(w[2], 1)]  # one node: written first once
                adj = rng.uniform(-2, 2, size=6).astype(dtype)
                adj[4] = rng.choice([rng.uniform(-2, 2), np.inf, 0.0])  # the incoming g
                c0, c1 = -0.5, 1.25
                array_adj, scalar_adj = adj.copy(), adj.copy()
                o0, o1, o2 = offsets
                _reverse.reverse_elementwise(op.code, vals, array_adj, o0, o1, o2, 4, o0, o1,
                                             o2, 4, 1, *w, c0, c1, meta, 0)
                _reverse.reverse_scalar(op.code, vals, scalar_adj, o0, o1, o2, 4, *w, c0, c1)
                np.testing.assert_array_equal(scalar_adj.view(np.uint8),
                                              array_adj.view(np.uint8),
                                              err_msg=f"{op.name} {values} {w}")
                compared += 1
    assert compared >= 4 * len(_cases(rng, arity))


def _zero_d(spec, dtype=jitgrad.float64, seed=3):
    """The spec's operands as 0-d leaves: the first element of its usual inputs."""
    arrays = inputs_for(spec, seed=seed)
    return [jitgrad.tensor(float(a.reshape(-1)[0]), dtype=dtype, requires_grad=True)
            for a in arrays]


@pytest.mark.parametrize("spec", ELEMENTWISE_SPECS, ids=lambda s: s.id)
def test_zero_d_sweep_matches_the_differentiable_rule(spec):
    xs = _zero_d(spec)
    out = spec.fn(jitgrad, *xs) * 1.5
    out.backward()
    rule = jitgrad.autograd.grad(spec.fn(jitgrad, *xs) * 1.5, xs, create_graph=True,
                                 allow_unused=True)
    for x, r in zip(xs, rule):
        want = 0.0 if r is None else r.item()
        got = 0.0 if x.grad is None else x.grad.item()
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-14, err_msg=spec.id)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("spec", [s for s in ELEMENTWISE_SPECS if s.torch], ids=lambda s: s.id)
def test_zero_d_gradients_match_torch(spec, dtype):
    torch = pytest.importorskip("torch")
    xs = _zero_d(spec, getattr(jitgrad, dtype))
    ts = [torch.tensor(x.item(), dtype=getattr(torch, dtype), requires_grad=True) for x in xs]
    for lib, leaves in ((jitgrad, xs), (torch, ts)):
        (spec.fn(lib, *leaves) * 1.5).backward()
    tol = {"rtol": 1e-6, "atol": 1e-6} if dtype == "float32" else {"rtol": 1e-12, "atol": 1e-14}
    for x, t in zip(xs, ts):
        if t.grad is None:
            assert x.grad is None or x.grad.item() == 0.0
            continue
        assert x.grad.dtype is getattr(jitgrad, dtype)
        np.testing.assert_allclose(x.grad.item(), t.grad.item(), **tol, err_msg=spec.id)


def test_a_long_zero_d_chain_matches_torch():
    """W2's chain: every entry takes the scalar step, leaves written first and accumulated."""
    torch = pytest.importorskip("torch")
    grads = []
    for lib in (jitgrad, torch):
        x0 = lib.tensor(0.5, dtype=lib.float64, requires_grad=True)
        a = lib.tensor(0.9, dtype=lib.float64, requires_grad=True)
        x = x0
        for _ in range(2000):
            x = lib.sin(x) * a + x * 0.5
        (x * x).backward()
        grads.append([x0.grad.item(), a.grad.item()])
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-12)
