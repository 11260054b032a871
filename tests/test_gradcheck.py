"""``gradcheck``/``gradgradcheck`` (reverse, forward, finite differences) and anomaly mode."""
from __future__ import annotations

import numpy as np
import pytest
from test_function import Cube

import jitgrad
from jitgrad.autograd import Function, GradcheckError, gradcheck, gradgradcheck


def _leaf(values):
    return jitgrad.tensor(values, dtype=jitgrad.float64, requires_grad=True)


GoodCube = Cube  # the correct Function, shared with test_function.py


class WrongBackward(GoodCube):
    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 2 * x ** 2


class WrongJvp(GoodCube):
    @staticmethod
    def jvp(ctx, tangent):
        return tangent


class NoJvp(GoodCube):
    jvp = Function.jvp


def test_gradcheck_passes_on_ops():
    a, b = _leaf([[0.5, 1.5], [0.3, -0.7]]), _leaf([1.2, 0.4])
    assert gradcheck(lambda a, b: (jitgrad.tanh(a @ b) * b).logsumexp(0), (a, b))
    assert gradcheck(lambda a: (a.sin(), a.exp().sum(1)), (a,))
    assert gradcheck(GoodCube.apply, (b,))


def test_gradgradcheck_passes():
    a = _leaf([0.5, 1.5, -0.3])
    assert gradgradcheck(lambda a: jitgrad.sin(a) * a ** 2, (a,))
    assert gradgradcheck(GoodCube.apply, (a,))


def test_a_wrong_backward_is_reported_at_its_first_mismatch():
    x = _leaf([0.5, 2.0])
    with pytest.raises(GradcheckError) as info:
        gradcheck(WrongBackward.apply, (x,))
    message = str(info.value)
    assert "Jacobian mismatch for output 0 with respect to input 0 (reverse mode)" in message
    assert "d output[0] / d input[0]" in message and "numerical 0.75" in message
    assert not gradcheck(WrongBackward.apply, (x,), raise_exception=False)


def test_a_wrong_jvp_is_reported():
    x = _leaf([0.5, 2.0])
    with pytest.raises(GradcheckError, match="forward mode"):
        gradcheck(WrongJvp.apply, (x,))
    assert gradcheck(WrongJvp.apply, (x,), check_forward_ad=False)
    # a Function without jvp is checked in reverse mode only, unless forward is asked for
    assert gradcheck(NoJvp.apply, (x,))
    with pytest.raises(RuntimeError, match="does not implement jvp"):
        gradcheck(NoJvp.apply, (x,), check_forward_ad=True)


def test_gradcheck_needs_an_input_that_requires_grad():
    with pytest.raises(ValueError, match="requires_grad=True"):
        gradcheck(jitgrad.sin, (jitgrad.ones(2, dtype=jitgrad.float64),))


def test_gradcheck_warns_on_single_precision():
    x = jitgrad.tensor([0.5], requires_grad=True)
    with pytest.warns(UserWarning, match="not a double precision"):
        gradcheck(lambda x: x * 2, (x,), atol=1e-2, rtol=1e-2)


# -- anomaly detection ----------------------------------------------------------------------------
def test_anomaly_mode_names_the_op_that_produced_nan():
    x = _leaf([0.0, 1.0])
    with jitgrad.autograd.detect_anomaly():
        y = jitgrad.sqrt(x) * 0.0 + x
        with pytest.raises(RuntimeError) as info:
            y.sum().backward()
    message = str(info.value)
    assert message.startswith("Function 'SqrtBackward0' returned nan values in its 0th output")
    assert "forward op 'sqrt'" in message
    assert "y = jitgrad.sqrt(x) * 0.0 + x" in message  # the forward call's line


def test_anomaly_mode_in_create_graph_and_custom_functions():
    class NanBackward(GoodCube):
        @staticmethod
        def backward(ctx, grad):
            return grad * float("nan")

    x = _leaf([1.0])
    jitgrad.autograd.set_detect_anomaly(True)
    try:
        with pytest.raises(RuntimeError, match="'NanBackwardBackward' returned nan"):
            NanBackward.apply(x).sum().backward()
        with pytest.raises(RuntimeError, match="'LogBackward0' returned nan"):
            jitgrad.autograd.grad((jitgrad.log(x - 1.0) * 0.0).sum(), x, create_graph=True)
    finally:
        jitgrad.autograd.set_detect_anomaly(False)
    assert not jitgrad.autograd.anomaly_mode.is_anomaly_enabled()


def test_without_anomaly_mode_nan_passes_silently():
    x = _leaf([0.0])
    (jitgrad.sqrt(x) * 0.0).sum().backward()
    assert np.isnan(x.grad.numpy()).all()


def test_anomaly_mode_accepts_finite_gradients():
    x = _leaf([0.5, 2.0])
    with jitgrad.autograd.detect_anomaly():
        (jitgrad.sqrt(x) * x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 1.5 * np.sqrt([0.5, 2.0]))
