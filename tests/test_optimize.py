"""jitgrad.optimize.minimize: SciPy with the compiled tape's gradient and Hessian-vector
products reaches Rosenbrock's optimum with fewer function evaluations than finite
differences need."""
from __future__ import annotations

import numpy as np
import pytest

import jitgrad as torch
from jitgrad.optimize import minimize

scipy_optimize = pytest.importorskip("scipy.optimize")


def rosenbrock(x):
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


def start(n: int) -> np.ndarray:
    """SciPy's documented starting point, tiled to ``n`` dims."""
    return np.resize([1.3, 0.7, 0.8, 1.9, 1.2], n)


@pytest.mark.parametrize("n, method", [
    (2, "BFGS"), (2, "L-BFGS-B"), (2, "Newton-CG"), (2, "trust-krylov"),
    # (Newton-CG finds Rosenbrock's other, local, minimum near x0 = -1 in 100 dims)
    (100, "BFGS"), (100, "L-BFGS-B"), (100, "trust-krylov"),
])
def test_fewer_evaluations_than_finite_differences(n, method):
    result = minimize(rosenbrock, start(n), method=method)
    assert result.success, result.message
    np.testing.assert_allclose(result.x, np.ones(n), atol=1e-3)
    reference = scipy_optimize.minimize(scipy_optimize.rosen, start(n), method="L-BFGS-B")
    assert reference.success
    assert result.nfev < reference.nfev  # the finite-difference gradients cost n + 1 each


@pytest.mark.parametrize("method", ["L-BFGS-B", "trust-krylov"])
def test_ten_thousand_dims(method):
    n = 10_000
    result = minimize(rosenbrock, start(n), method=method)
    assert result.success, result.message
    np.testing.assert_allclose(result.x, np.ones(n), atol=1e-3)
    # each finite-difference gradient alone costs n + 1 evaluations
    assert result.nfev < n + 1


def test_hessian_methods_get_hvp_and_hessian_from_the_tape():
    result = minimize(rosenbrock, start(5), method="trust-exact")
    assert result.success and np.allclose(result.x, 1.0, atol=1e-6)
    assert result.nhev > 0 and result.tape.recordings == 2  # value/gradient, then hessian
    krylov = minimize(rosenbrock, start(5), method="trust-krylov")
    assert krylov.nhev > 0 and np.allclose(krylov.x, 1.0, atol=1e-6)


def test_arguments_are_parameters_of_the_tape_and_shapes_are_kept():
    def least_squares(w, features, targets):
        return ((features @ w.reshape(-1) - targets) ** 2).mean()

    rng = np.random.default_rng(0)
    features, truth = rng.standard_normal((50, 4)), rng.standard_normal(4)
    targets = features @ truth
    result = minimize(least_squares, np.zeros((2, 2)), args=(features, targets),
                      method="L-BFGS-B")
    assert result.x.shape == (2, 2)
    np.testing.assert_allclose(result.x.reshape(-1), truth, atol=1e-5)
    other = features @ (truth * 2)  # new data: the same tape, no recording
    again = minimize(least_squares, np.zeros((2, 2)), args=(features, other),
                     method="BFGS")
    np.testing.assert_allclose(again.x.reshape(-1), truth * 2, atol=1e-4)


def test_a_branch_in_the_objective_is_followed():
    def piecewise(x):
        if x.sum() > 0:
            return ((x - 2) ** 2).sum()
        return ((x - 5) ** 2).sum() + 100  # pulls the iterate over to the other branch

    result = minimize(piecewise, np.array([-3.0, -3.0]), method="BFGS")
    np.testing.assert_allclose(result.x, [2.0, 2.0], atol=1e-5)
    assert result.tape.recordings == 2  # the guard fired once, when the sum turned positive
    assert torch.compile(piecewise, np.ones(2)).grad(np.ones(2)).tolist() == [-2.0, -2.0]
