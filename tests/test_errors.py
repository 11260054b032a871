"""Bad input: torch's exception types, messages that name the problem, and a tape that
stays usable afterwards."""
from __future__ import annotations

import numpy as np
import pytest

import jitgrad as torch


def _still_usable():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 4.0])


def test_non_scalar_backward_without_gradient():
    x = torch.randn(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="grad can be implicitly created only for scalar"):
        (x * 2).backward()
    _still_usable()


def test_second_backward_through_freed_graph():
    x = torch.tensor([2.0], requires_grad=True)
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        y.backward()
    _still_usable()


def test_freed_graph_detected_after_other_work():
    x = torch.tensor([2.0], requires_grad=True)
    y = x * x
    z = y.sum()
    z.backward()
    _still_usable()  # starts a new generation of the tape
    with pytest.raises(RuntimeError, match="second time"):
        (y * 2).sum().backward()


def test_backward_of_tensor_without_grad():
    x = torch.ones(2)
    with pytest.raises(RuntimeError, match="does not require grad"):
        x.sum().backward()
    with torch.no_grad():
        y = torch.ones(1, requires_grad=True) * 2
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward()


def test_requires_grad_on_integer_tensor():
    with pytest.raises(RuntimeError, match="floating point"):
        torch.tensor([1, 2], requires_grad=True)
    with pytest.raises(RuntimeError, match="floating point"):
        torch.arange(3).requires_grad_()


def test_broadcast_mismatch_names_both_shapes():
    a = torch.ones(2, 3, requires_grad=True)
    b = torch.ones(4)
    with pytest.raises(RuntimeError, match=r"\[2, 3\].*\[4\]"):
        a + b
    _still_usable()


def test_matmul_mismatch_names_both_shapes():
    with pytest.raises(RuntimeError, match=r"2x3 and 4x5"):
        torch.ones(2, 3) @ torch.ones(4, 5)
    with pytest.raises(RuntimeError, match=r"\[2, 2, 3\].*\[2, 4, 5\]"):
        torch.ones(2, 2, 3) @ torch.ones(2, 4, 5)
    with pytest.raises(RuntimeError, match="1D tensors expected"):
        torch.dot(torch.ones(2, 2), torch.ones(2))


def test_value_needed_by_backward_modified_in_place():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2
    z = y * y  # saves y
    y.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        z.sum().backward()
    _still_usable()


def test_leaf_modified_under_no_grad_after_use():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    y = (w * w).sum()
    with torch.no_grad():
        w.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


def test_in_place_on_leaf_requiring_grad():
    w = torch.ones(2, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        w.add_(1)
    with torch.no_grad():
        w.add_(1)
    np.testing.assert_allclose(w.detach().numpy(), [2.0, 2.0])


def test_gradient_of_wrong_shape():
    x = torch.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="Mismatch in shape"):
        (x * 2).backward(torch.ones(2))
    _still_usable()


def test_autograd_grad_unused_input():
    x = torch.tensor(1.0, requires_grad=True)
    z = torch.tensor(1.0, requires_grad=True)
    with pytest.raises(RuntimeError, match="allow_unused=True"):
        torch.autograd.grad(x * 2, [x, z])
    _still_usable()


def test_bad_argument_types():
    with pytest.raises(TypeError):
        torch.exp([1.0, 2.0])
    with pytest.raises(TypeError):
        torch.tensor([1.0]) + "a"
    with pytest.raises(IndexError, match="out of range"):
        torch.ones(2, 3).sum(dim=2)
    with pytest.raises(IndexError):
        torch.ones(2, 3)[5]
    with pytest.raises(RuntimeError, match="invalid for input of size"):
        torch.ones(2, 3).reshape(4, 2)


def test_nan_and_inf_propagate_without_warnings():
    with np.errstate(all="raise"):
        x = torch.tensor([0.0, -1.0, 1.0], requires_grad=True)
        y = torch.log(x)
        assert np.isinf(y.detach().numpy()[0]) and np.isnan(y.detach().numpy()[1])
        s = torch.tensor(0.0, requires_grad=True)
        assert torch.log(s).item() == -np.inf
        y.sum().backward()
        assert np.isinf(x.grad.numpy()[0])


def test_small_numerical_contracts():
    assert repr(torch.relu(torch.tensor([-1.0, 2.0]))) == "tensor([0., 2.])"
    assert torch.tensor(np.float64(0.1)).dtype is torch.float64
    assert torch.tensor(0.1).dtype is torch.float32
    with np.errstate(all="raise"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert np.isnan(torch.zeros(0).mean().item())
