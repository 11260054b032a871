"""Custom ``autograd.Function``s: recorded as one node, the sweeps call back into Python."""
from __future__ import annotations

import numpy as np
import pytest

import jitgrad
import jitgrad.autograd.forward_ad as fwAD
from jitgrad import func
from jitgrad.autograd import Function


class Cube(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x ** 3

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 3 * x ** 2

    @staticmethod
    def jvp(ctx, tangent):
        (x,) = ctx.saved_tensors
        return tangent * 3 * x ** 2


class MulAdd(Function):
    """(a * b + c, a - b) with a Python scalar argument and a non-tensor output."""

    @staticmethod
    def forward(ctx, a, b, scale, c):
        ctx.save_for_backward(a, b)
        ctx.scale = scale
        return a * b * scale + c, a - b, "label"

    @staticmethod
    def backward(ctx, g_first, g_second, g_label):
        a, b = ctx.saved_tensors
        return (g_first * b * ctx.scale + g_second, g_first * a * ctx.scale - g_second, None,
                g_first)

    @staticmethod
    def jvp(ctx, ta, tb, tscale, tc):
        a, b = ctx.saved_tensors
        return (ta * b * ctx.scale + a * tb * ctx.scale + tc, ta - tb, None)


class ExpSavingOutput(Function):
    @staticmethod
    def forward(ctx, x):
        y = x.exp()
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * y


def _f64(values, requires_grad=True):
    return jitgrad.tensor(values, dtype=jitgrad.float64, requires_grad=requires_grad)


def test_backward_through_a_function():
    x = _f64([1.0, 2.0])
    y = (Cube.apply(x) * 2).sum()
    y.backward()
    assert x.grad.tolist() == [6.0, 24.0]


def test_several_inputs_outputs_and_non_tensors():
    a, b, c = _f64([1.0, 2.0]), _f64([3.0, -1.0]), _f64([0.5, 0.5])
    first, second, label = MulAdd.apply(a, b, 2.0, c)
    assert label == "label"
    (first.sum() + (second * second).sum()).backward()
    np.testing.assert_allclose(a.grad.numpy(), [3 * 2 + 2 * (1 - 3), -1 * 2 + 2 * (2 + 1)])
    np.testing.assert_allclose(b.grad.numpy(), [1 * 2 - 2 * (1 - 3), 2 * 2 - 2 * (2 + 1)])
    np.testing.assert_allclose(c.grad.numpy(), [1.0, 1.0])


def test_function_inside_a_larger_graph_and_scalars():
    x = _f64(0.5)
    y = jitgrad.sin(Cube.apply(jitgrad.exp(x))) * x
    (g,) = jitgrad.autograd.grad(y, x)
    e = np.exp(0.5)
    expected = np.cos(e ** 3) * 3 * e ** 3 * 0.5 + np.sin(e ** 3)
    assert float(g) == pytest.approx(expected)


def test_needs_input_grad_and_non_differentiable_outputs():
    seen = {}

    class ArgMaxAndValue(Function):
        @staticmethod
        def forward(ctx, x, y):
            seen["needs"] = ctx.needs_input_grad
            index = x.argmax()
            value = x.max() + y.sum()
            ctx.mark_non_differentiable(index)
            ctx.index = int(index)
            ctx.shape = x.shape
            return value, index

        @staticmethod
        def backward(ctx, g_value, g_index):
            grad = np.zeros(ctx.shape)
            grad[ctx.index] = float(g_value)
            return jitgrad.tensor(grad), None

    x = _f64([1.0, 5.0, 2.0])
    value, index = ArgMaxAndValue.apply(x, jitgrad.ones(2, dtype=jitgrad.float64))
    assert seen["needs"] == (True, False)
    assert value.requires_grad and not index.requires_grad
    value.backward()
    assert x.grad.tolist() == [0.0, 1.0, 0.0]


def test_create_graph_through_a_function_gives_second_derivatives():
    x = _f64([1.0, 2.0])
    (g,) = jitgrad.autograd.grad(Cube.apply(x).sum(), x, create_graph=True)
    assert g.tolist() == [3.0, 12.0]
    (h,) = jitgrad.autograd.grad(g.sum(), x)
    assert h.tolist() == [6.0, 12.0]
    # a saved output stands for the recorded output
    x = _f64([0.0, 1.0])
    (g,) = jitgrad.autograd.grad(ExpSavingOutput.apply(x).sum(), x, create_graph=True)
    (h,) = jitgrad.autograd.grad(g.sum(), x)
    np.testing.assert_allclose(h.numpy(), np.exp([0.0, 1.0]))


def test_forward_mode_through_a_function():
    with fwAD.dual_level():
        x = fwAD.make_dual(jitgrad.tensor([1.0, 2.0]), jitgrad.tensor([1.0, 1.0]))
        assert fwAD.unpack_dual(Cube.apply(x) + x).tangent.tolist() == [4.0, 13.0]
    out, t = func.jvp(lambda a, b, c: MulAdd.apply(a, b, 2.0, c)[0],
                      (_f64([1.0], False), _f64([3.0], False), _f64([0.5], False)),
                      (_f64([1.0], False), _f64([0.0], False), _f64([1.0], False)))
    assert t.tolist() == [3 * 2 + 1]
    jac = func.jacfwd(lambda x: jitgrad.sin(Cube.apply(x)))(_f64([1.0, 2.0], False))
    np.testing.assert_allclose(np.diag(jac.numpy()), np.cos([1.0, 8.0]) * [3.0, 12.0])


def test_hessian_through_a_function():
    h = func.hessian(lambda x: Cube.apply(x).sum())(_f64([1.0, 2.0], False))
    assert h.tolist() == [[6.0, 0.0], [0.0, 12.0]]
    hv = func.hvp(lambda x: Cube.apply(x).sum(), (_f64([1.0, 2.0], False),),
                  (_f64([1.0, 1.0], False),))
    assert hv.tolist() == [6.0, 12.0]


def test_setup_context_style_and_vjp_alias():
    class Square(Function):
        @staticmethod
        def forward(x):
            return x * x

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0])

        @staticmethod
        def vjp(ctx, grad):
            (x,) = ctx.saved_tensors
            return 2 * x * grad

    x = _f64([3.0])
    Square.apply(x).sum().backward()
    assert x.grad.tolist() == [6.0]


def test_no_recording_without_grad():
    x = _f64([1.0])
    with jitgrad.no_grad():
        y = Cube.apply(x)
    assert not y.requires_grad
    assert not Cube.apply(_f64([1.0], False)).requires_grad


def test_saved_tensors_are_freed_after_backward():
    captured = {}

    class Keep(Cube):
        @staticmethod
        def forward(ctx, x):
            captured["ctx"] = ctx
            return Cube.forward(ctx, x)

    x = _f64([1.0])
    y = Keep.apply(x).sum()
    y.backward(retain_graph=True)
    y.backward()
    assert x.grad.tolist() == [6.0]
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        captured["ctx"].saved_tensors  # noqa: B018


# -- bad input ------------------------------------------------------------------------------------
class WrongCount(Cube):
    @staticmethod
    def backward(ctx, grad):
        return grad, grad


class WrongShape(Cube):
    @staticmethod
    def backward(ctx, grad):
        return jitgrad.ones(5, dtype=jitgrad.float64)


def test_wrong_number_of_gradients():
    x = _f64([1.0, 2.0])
    with pytest.raises(RuntimeError, match=r"returned an incorrect number of gradients "
                                           r"\(expected 1, got 2\)"):
        WrongCount.apply(x).sum().backward()
    # nothing left broken
    Cube.apply(x).sum().backward()
    assert x.grad.tolist() == [3.0, 12.0]


def test_wrong_gradient_shape():
    x = _f64([1.0, 2.0])
    with pytest.raises(RuntimeError, match=r"WrongShapeBackward returned an invalid gradient "
                                           r"at index 0 - got \[5\] but expected shape "
                                           r"compatible with \[2\]"):
        WrongShape.apply(x).sum().backward()
    with pytest.raises(RuntimeError, match="incorrect number"):
        jitgrad.autograd.grad(WrongCount.apply(x).sum(), x, create_graph=True)
    Cube.apply(x).sum().backward()
    assert x.grad.tolist() == [3.0, 12.0]


def test_missing_jvp_and_direct_instantiation():
    class NoJvp(Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, grad):
            return grad * 2

    with pytest.raises(RuntimeError, match="does not implement jvp"):
        func.jvp(NoJvp.apply, (jitgrad.ones(2),), (jitgrad.ones(2),))
    with pytest.raises(RuntimeError, match="call the static method apply"):
        NoJvp()
    assert fwAD.current_level() is None


def test_a_function_elsewhere_in_the_generation_keeps_the_one_kernel_sweep(monkeypatch):
    from jitgrad.autograd import function

    calls = []
    original = function.reverse_sweep

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(function, "reverse_sweep", spy)
    x = jitgrad.tensor([1.0, 2.0], requires_grad=True)
    pending = Cube.apply(x)  # a custom Function on the tape, not part of the next graph
    y = jitgrad.tensor([0.5, -1.5], requires_grad=True)
    (jitgrad.sin(y) * y).sum().backward()
    assert calls == []  # the sweep reached no Function: one Numba call
    np.testing.assert_allclose(y.grad.numpy(), np.cos([0.5, -1.5]) * [0.5, -1.5]
                               + np.sin([0.5, -1.5]), rtol=1e-6)
    pending.sum().backward()  # this one reaches the Function: Python runs its backward
    assert calls == [1]
    np.testing.assert_allclose(x.grad.numpy(), [3.0, 12.0])
