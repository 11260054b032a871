"""Random programs of the public ops, run on jitgrad and on torch: values, gradients and
double-backward Hessian-vector products must agree, and a compiled replay must give the
eager gradient. Each op is chosen so that both libraries define it at the drawn inputs
(clamped logs and square roots, positive bases); ties and zeros still occur (relu, amax,
maximum of an input with itself), where the two must agree on the choices too. In-place
ops and assignments run on recorded tensors."""
from __future__ import annotations

import numpy as np
import pytest

import jitgrad

torch = pytest.importorskip("torch")

SHAPES = [(), (4,), (3, 1), (1, 4), (3, 4), (2, 3, 4)]

UNARY = [
    lambda L, t: L.sin(t),
    lambda L, t: L.exp(L.clamp(t, -3.0, 3.0)),
    lambda L, t: L.tanh(t),
    lambda L, t: L.sigmoid(t),
    lambda L, t: L.relu(t),
    lambda L, t: L.abs(t),
    lambda L, t: L.log(L.abs(t) + 1.0),
    lambda L, t: L.sqrt(t * t + 0.1),
    lambda L, t: L.sqrt(L.relu(t)) * 0.5,  # sqrt'(0) = inf, masked by relu
    lambda L, t: (t * t + 1.0) ** 0.5,
    lambda L, t: 1.0 / (t * t + 1.0),
    lambda L, t: 1.5 - t * 2.0,
    lambda L, t: L.clamp(t, min=-0.5),
]


def _reduce(L, rng, t):
    if t.dim() == 0:
        return t * 1.0
    d = int(rng.integers(0, t.dim()))
    keep = bool(rng.integers(0, 2))
    choices = [
        lambda: t.sum(d, keepdim=keep),
        lambda: t.mean(d, keepdim=keep),
        lambda: L.amax(t, d, keepdim=keep),
        lambda: t.max(),
        lambda: L.logsumexp(t, d, keepdim=keep),
        lambda: L.softmax(t, d),
        lambda: L.log_softmax(t, d),
        lambda: t.max(d, keepdim=keep).values,
        lambda: (t * t + 0.5).prod(d, keepdim=keep),
        lambda: (t * t + 0.1).norm(dim=d, keepdim=keep),
    ]
    return choices[int(rng.integers(0, len(choices)))]()


def _reshape(L, rng, t):
    if t.dim() == 0:
        return t.reshape(1).expand(3)
    choices = [
        lambda: t.transpose(0, -1),
        lambda: t.reshape(-1),
        lambda: t.unsqueeze(0),
        lambda: t[..., ::2],
        lambda: t[-1],
        lambda: t[[0, t.shape[0] - 1, 0]],
        lambda: L.cat([t, t * 2.0], 0),
        lambda: L.stack([t, t + 1.0], -1),
        lambda: t.permute(*reversed(range(t.dim()))),
    ]
    return choices[int(rng.integers(0, len(choices)))]()


def _binary(L, rng, a, b):
    try:
        np.broadcast_shapes(tuple(a.shape), tuple(b.shape))
    except ValueError:
        return None
    choices = [
        lambda: a + b,
        lambda: a * b,
        lambda: a / (b * b + 1.0),
        lambda: L.maximum(a, b),
        lambda: L.minimum(a, a),  # every element a tie
        lambda: L.where(a > b, a * b, a - b),
        lambda: (a * a + 1.0) ** L.tanh(b),
    ]
    return choices[int(rng.integers(0, len(choices)))]()


def _in_place(L, rng, a, b):
    try:
        if np.broadcast_shapes(tuple(a.shape), tuple(b.shape)) != tuple(a.shape):
            return None
    except ValueError:
        return None
    u = a * 1.0

    def assign():  # t[key] = value (torch's CopySlices); the value broadcasts
        value = b.sum() * 0.3
        if u.dim() == 0:
            u[...] = value
            return
        # (no repeated position: torch leaves the value written there undefined)
        rows = [0, -1] if u.shape[0] > 1 else [0]
        key = [slice(1, None), (Ellipsis, 0), rows, u > 0.5][int(rng.integers(0, 4))]
        if isinstance(key, list):
            key = L.tensor(key)
        u[key] = value

    def view_of(t):
        if t.dim() == 0:
            return t.view(1)
        return [lambda: t[1:], lambda: t[..., :1], lambda: t.transpose(0, -1),
                lambda: t.reshape(-1)][int(rng.integers(0, 4))]()

    def through_view():  # the write reaches u (torch's CopySlices)
        view_of(u).mul_(b.sum() * 0.5 + 1.0)
        return u

    def into_base():  # a view taken before the write sees it
        view = view_of(u)
        u.add_(b * 0.5)
        return view

    return [lambda: u.mul_(b), lambda: u.add_(b * 0.5), lambda: u.div_(b * b + 1.0),
            lambda: assign() or u, through_view, into_base][int(rng.integers(0, 6))]()


def program(L, seed: int, leaves: list):
    """The same random program for either library: the draws do not depend on it."""
    rng = np.random.default_rng(seed)
    pool = list(leaves)
    for _ in range(int(rng.integers(3, 10))):
        kind = int(rng.integers(0, 10))
        t = pool[int(rng.integers(0, len(pool)))]
        other = pool[int(rng.integers(0, len(pool)))]
        if kind < 4:
            out = UNARY[int(rng.integers(0, len(UNARY)))](L, t)
        elif kind < 6:
            out = _reduce(L, rng, t)
        elif kind < 7:
            out = _reshape(L, rng, t)
        elif kind < 9:
            out = _binary(L, rng, t, other)
        else:
            out = _in_place(L, rng, t, other)
        if out is not None:
            pool.append(out)
    total = leaves[0].sum() * 0.0
    for t in pool[len(leaves):]:
        total = total + (t * t).sum() * 0.1 + t.sum()
    return total


def _inputs(seed: int) -> list:
    rng = np.random.default_rng(seed + 1_000_000)
    return [rng.uniform(-2, 2, SHAPES[int(rng.integers(0, len(SHAPES)))])
            for _ in range(int(rng.integers(1, 4)))]


def _gradients(L, seed: int, arrays: list, second: bool):
    leaves = [L.tensor(a, dtype=L.float64, requires_grad=True) for a in arrays]
    out = program(L, seed, leaves)
    grads = L.autograd.grad(out, leaves, create_graph=second, allow_unused=True)
    if second:  # the Hessian times a fixed direction, by double backward
        directions = [L.tensor(np.linspace(-1.0, 1.0, a.size).reshape(a.shape),
                               dtype=L.float64) for a in arrays]
        inner = sum((g * v).sum() for g, v in zip(grads, directions) if g is not None)
        if not isinstance(inner, L.Tensor) or not inner.requires_grad:  # a linear program
            return out.item(), [None] * len(leaves)
        grads = L.autograd.grad(inner, leaves, allow_unused=True)
    return out.item(), [None if g is None else g.detach().numpy() for g in grads]


def _close(ours, theirs) -> bool:
    if ours is None or theirs is None:  # no gradient flowed: the other must be all zeros
        other = theirs if ours is None else ours
        return other is None or not np.any(other)
    return np.allclose(ours, theirs, rtol=1e-7, atol=1e-9, equal_nan=True)


@pytest.mark.parametrize("seed", range(120))
def test_random_programs_match_torch(seed):
    arrays = _inputs(seed)
    for second in (False, True):
        value, expected = _gradients(torch, seed, arrays, second)
        ours_value, ours = _gradients(jitgrad, seed, arrays, second)
        assert np.isclose(ours_value, value, rtol=1e-10, equal_nan=True)
        for k, (a, b) in enumerate(zip(ours, expected)):
            assert _close(a, b), f"seed {seed}, second order {second}, input {k}"
    tape = jitgrad.compile(lambda *ts: program(jitgrad, seed, list(ts)),
                           *[np.full(a.shape, 0.37) for a in arrays])
    value, grads = tape.value_and_grad(*arrays)
    grads = grads if isinstance(grads, tuple) else (grads,)
    eager_value, eager = _gradients(jitgrad, seed, arrays, False)
    assert np.isclose(value, eager_value, rtol=1e-12, equal_nan=True)
    for a, b in zip(grads, eager):
        assert _close(a, b)
