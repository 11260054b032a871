"""grad_fn names of composites (several recorded entries standing for one torch op) are
torch's: the last entry takes the composite's name (``functions.named``)."""
from __future__ import annotations

import numpy as np
import pytest

import jitgrad

torch = pytest.importorskip("torch")


class _Square:
    """The same custom Function for either library."""

    @staticmethod
    def make(lib):
        class Square(lib.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                ctx.save_for_backward(x)
                return x * x

            @staticmethod
            def backward(ctx, g):
                (x,) = ctx.saved_tensors
                return 2 * x * g

        return Square


def _cases(lib, x, t):
    F = lib.nn.functional
    s = lib.sigmoid(x)
    target = (x > 0).to(x.dtype).detach()

    def assign():
        y = x * 2
        y[0] = 1.0
        return y

    return {
        "log_softmax": F.log_softmax(x, 1),
        "log_softmax dtype": F.log_softmax(x, 1, dtype=lib.float64),
        "softmax": lib.softmax(x, 1),
        "cross_entropy": F.cross_entropy(x, t),
        "cross_entropy none": F.cross_entropy(x, t, reduction="none"),
        "cross_entropy sum, weight": F.cross_entropy(x, t, weight=lib.ones(3), reduction="sum"),
        "cross_entropy ignore_index": F.cross_entropy(x, t, ignore_index=0),
        "nll_loss": F.nll_loss(F.log_softmax(x, 1), t),
        "nll_loss none": F.nll_loss(F.log_softmax(x, 1), t, reduction="none"),
        "mse_loss": F.mse_loss(x, target),
        "mse_loss none": F.mse_loss(x, target, reduction="none"),
        "binary_cross_entropy": F.binary_cross_entropy(s, target),
        "binary_cross_entropy_with_logits": F.binary_cross_entropy_with_logits(x, target),
        "assignment": assign(),
        "custom Function": _Square.make(lib).apply(x),
        "a plain op after them": F.log_softmax(x, 1) * 2.0,
    }


def test_composites_show_torch_names():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(4, 3)).astype(np.float32)
    index = np.array([0, 2, 1, 0])
    ours = _cases(jitgrad, jitgrad.tensor(data, requires_grad=True), jitgrad.tensor(index))
    theirs = _cases(torch, torch.tensor(data, requires_grad=True), torch.tensor(index))
    for name in theirs:
        expected = type(theirs[name].grad_fn).__name__
        assert type(ours[name].grad_fn).__name__ == expected, name
        assert repr(ours[name]).endswith(f"grad_fn=<{expected}>)"), name
        assert [type(f).__name__ if f is not None else None
                for f, _ in ours[name].grad_fn.next_functions][:1] != [], name


def test_names_follow_the_tape(monkeypatch):
    from jitgrad.tape import Tape, _state, current_tape

    monkeypatch.setattr(_state, "tape", Tape())
    x = jitgrad.ones(1, 50_000, requires_grad=True)  # large: a backward restarts the tape
    y = jitgrad.log_softmax(x, 1)  # entries: logsumexp, then the named subtraction
    z = y * 1.0
    assert type(z.grad_fn.next_functions[0][0]).__name__ == "LogSoftmaxBackward0"
    del z
    y.sum().backward()
    w = x * 3.0  # the first op of a new generation
    w = w - 1.0  # the same entry number as log_softmax's subtraction was
    assert current_tape().generation == 1
    assert type(w.grad_fn).__name__ == "SubBackward0"
