"""``jitgrad.func``: the functional transforms, against ``torch.func`` where installed."""
from __future__ import annotations

import numpy as np
import pytest

import jitgrad
import jitgrad.autograd.forward_ad as fwAD
from jitgrad import func
from jitgrad.tape import current_tape

X0 = np.array([0.3, -1.2, 2.0, 0.7])
V0 = np.array([1.0, 0.5, -0.25, 2.0])


def f_scalar(lib, x):
    return (lib.sin(x) * x ** 2).sum()


def f_vector(lib, x, y):
    return lib.tanh(x) * lib.exp(-y ** 2) + (x * y).sum()


def f_matrix(lib, x):
    m = x.reshape(2, 2)
    return (m @ m.T).logsumexp(1) * x[:2]


def _t(lib, a):
    return lib.tensor(a, dtype=lib.float64)


def _np(value):
    if isinstance(value, (tuple, list)):
        return [_np(v) for v in value]
    return np.asarray(value.detach() if hasattr(value, "detach") else value)


def _close(ours, theirs, tol=1e-12):
    if isinstance(theirs, (tuple, list)):
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            _close(a, b, tol)
        return
    np.testing.assert_allclose(_np(ours), _np(theirs), rtol=tol, atol=tol)


# -- against torch.func ---------------------------------------------------------------------------
def test_grad_and_value_match_torch():
    torch = pytest.importorskip("torch")
    ours = func.grad(lambda x: f_scalar(jitgrad, x))(_t(jitgrad, X0))
    theirs = torch.func.grad(lambda x: f_scalar(torch, x))(_t(torch, X0))
    _close(ours, theirs)
    g, v = func.grad_and_value(lambda x: f_scalar(jitgrad, x))(_t(jitgrad, X0))
    tg, tv = torch.func.grad_and_value(lambda x: f_scalar(torch, x))(_t(torch, X0))
    _close([g, v], [tg, tv])
    v, g = func.value_and_grad(lambda x: f_scalar(jitgrad, x))(_t(jitgrad, X0))
    _close([g, v], [tg, tv])


def test_grad_argnums_and_aux_match_torch():
    torch = pytest.importorskip("torch")

    def make(lib):
        def f(x, y):
            out = f_vector(lib, x, y).sum()
            return out, {"out": out * 2}
        return f

    ours, aux = func.grad(make(jitgrad), argnums=(0, 1), has_aux=True)(_t(jitgrad, X0),
                                                                     _t(jitgrad, V0))
    theirs, taux = torch.func.grad(make(torch), argnums=(0, 1), has_aux=True)(
        _t(torch, X0), _t(torch, V0))
    _close(ours, theirs)
    _close(aux["out"], taux["out"])
    assert not aux["out"].requires_grad


def test_vjp_matches_torch_for_several_outputs():
    torch = pytest.importorskip("torch")

    def make(lib):
        return lambda x, y: (f_vector(lib, x, y), (x * y).sum())

    out, vjp_fn = func.vjp(make(jitgrad), _t(jitgrad, X0), _t(jitgrad, V0))
    tout, tvjp_fn = torch.func.vjp(make(torch), _t(torch, X0), _t(torch, V0))
    _close(out, tout)
    cot = (np.arange(4.0), np.array(1.5))
    _close(vjp_fn((_t(jitgrad, cot[0]), _t(jitgrad, cot[1]))),
           tvjp_fn((_t(torch, cot[0]), _t(torch, cot[1]))))
    # vjp_fn can be called again
    _close(vjp_fn((_t(jitgrad, cot[0]), _t(jitgrad, cot[1]))),
           tvjp_fn((_t(torch, cot[0]), _t(torch, cot[1]))))


def test_jvp_matches_torch():
    torch = pytest.importorskip("torch")
    ours = func.jvp(lambda x, y: f_vector(jitgrad, x, y), (_t(jitgrad, X0), _t(jitgrad, V0)),
                    (_t(jitgrad, V0), _t(jitgrad, X0)))
    theirs = torch.func.jvp(lambda x, y: f_vector(torch, x, y), (_t(torch, X0), _t(torch, V0)),
                            (_t(torch, V0), _t(torch, X0)))
    _close(ours, theirs)


@pytest.mark.parametrize("transform", ["jacrev", "jacfwd"])
def test_jacobians_match_torch(transform):
    torch = pytest.importorskip("torch")
    ours = getattr(func, transform)(lambda x, y: f_vector(jitgrad, x, y), argnums=(0, 1))(
        _t(jitgrad, X0), _t(jitgrad, V0))
    theirs = getattr(torch.func, transform)(lambda x, y: f_vector(torch, x, y), argnums=(0, 1))(
        _t(torch, X0), _t(torch, V0))
    _close(ours, theirs)
    ours = getattr(func, transform)(lambda x: f_matrix(jitgrad, x))(_t(jitgrad, X0))
    theirs = getattr(torch.func, transform)(lambda x: f_matrix(torch, x))(_t(torch, X0))
    assert tuple(ours.shape) == tuple(theirs.shape) == (2, 4)
    _close(ours, theirs)


def test_jacobian_of_a_tuple_output_and_a_matrix_input():
    torch = pytest.importorskip("torch")
    m = np.arange(6.0).reshape(2, 3) / 5

    def make(lib):
        return lambda a: (a.sum(0), lib.exp(a) @ lib.ones(3, 2, dtype=lib.float64))

    for transform in ("jacrev", "jacfwd"):
        ours = getattr(func, transform)(make(jitgrad))(_t(jitgrad, m))
        theirs = getattr(torch.func, transform)(make(torch))(_t(torch, m))
        assert isinstance(ours, tuple) and tuple(ours[1].shape) == (2, 2, 2, 3)
        _close(ours, theirs)


def test_hessian_and_hvp_match_torch():
    torch = pytest.importorskip("torch")
    ours = func.hessian(lambda x: f_scalar(jitgrad, x))(_t(jitgrad, X0))
    theirs = torch.func.hessian(lambda x: f_scalar(torch, x))(_t(torch, X0))
    _close(ours, theirs)
    hv = func.hvp(lambda x: f_scalar(jitgrad, x), (_t(jitgrad, X0),), (_t(jitgrad, V0),))
    thv = torch.func.jvp(torch.func.grad(lambda x: f_scalar(torch, x)), (_t(torch, X0),),
                         (_t(torch, V0),))[1]
    _close(hv, thv)


def test_hvp_of_several_primals():
    torch = pytest.importorskip("torch")

    def make(lib):
        return lambda x, y: (f_vector(lib, x, y) ** 2).sum()

    ours = func.hvp(make(jitgrad), (_t(jitgrad, X0), _t(jitgrad, V0)),
                    (_t(jitgrad, V0), _t(jitgrad, X0)))
    theirs = torch.func.jvp(torch.func.grad(make(torch), argnums=(0, 1)),
                            (_t(torch, X0), _t(torch, V0)), (_t(torch, V0), _t(torch, X0)))[1]
    _close(ours, theirs)


def test_linearize_matches_torch():
    torch = pytest.importorskip("torch")
    out, jvp_fn = func.linearize(lambda x: f_matrix(jitgrad, x), _t(jitgrad, X0))
    tout, tjvp_fn = torch.func.linearize(lambda x: f_matrix(torch, x), _t(torch, X0))
    _close(out, tout)
    for direction in (V0, X0):
        _close(jvp_fn(_t(jitgrad, direction)), tjvp_fn(_t(torch, direction)))


def test_compositions_match_torch():
    torch = pytest.importorskip("torch")

    def compose(lib, api):
        f = lambda x: f_scalar(lib, x)  # noqa: E731
        return {
            "jacfwd(jacrev)": api.jacfwd(api.jacrev(f)),
            "jacrev(jacrev)": api.jacrev(api.jacrev(f)),
            "jacrev(jacfwd)": api.jacrev(api.jacfwd(f)),
            "jacfwd(jacfwd)": api.jacfwd(api.jacfwd(f)),
            "grad(grad(sum))": lambda x: api.grad(lambda y: api.grad(f)(y).sum())(x),
            "grad of jvp": api.grad(lambda x: api.jvp(f, (x,), (x * 0 + 1,))[1]),
        }

    ours = compose(jitgrad, func)
    theirs = compose(torch, torch.func)
    for name in ours:
        _close(ours[name](_t(jitgrad, X0)), theirs[name](_t(torch, X0)), tol=1e-11)


def test_third_derivative_by_nesting():
    d = lambda f: func.grad(f)  # noqa: E731
    third = d(d(d(lambda x: jitgrad.sin(x) * x)))(jitgrad.tensor(0.4, dtype=jitgrad.float64))
    x = 0.4
    assert float(third) == pytest.approx(-3 * np.sin(x) - x * np.cos(x))


# -- NumPy in, NumPy out ------------------------------------------------------------------------
def test_numpy_arrays_in_give_numpy_arrays_out():
    g = func.grad(lambda x: (x ** 3).sum())(np.array([1.0, 2.0]))
    assert isinstance(g, np.ndarray) and g.tolist() == [3.0, 12.0]
    out, t = func.jvp(lambda x: x * x, (np.array([3.0]),), (np.array([1.0]),))
    assert isinstance(out, np.ndarray) and isinstance(t, np.ndarray) and t.tolist() == [6.0]
    h = func.hessian(lambda x: (x ** 3).sum())(np.array([1.0, 2.0]))
    assert isinstance(h, np.ndarray) and h.tolist() == [[6.0, 0.0], [0.0, 12.0]]
    hv = func.hvp(lambda x: (x ** 3).sum(), (np.array([1.0, 2.0]),), (np.ones(2),))
    assert isinstance(hv, np.ndarray) and hv.tolist() == [6.0, 12.0]
    assert isinstance(func.grad(lambda x: x * x)(3.0), np.floating)


def test_dict_arguments():
    params = {"w": jitgrad.tensor([1.0, 2.0]), "b": jitgrad.tensor(0.5)}
    g = func.grad(lambda p: ((p["w"] * 3).sum() + p["b"] ** 2))(params)
    assert set(g) == {"w", "b"}
    assert g["w"].tolist() == [3.0, 3.0] and g["b"].item() == 1.0


# -- semantics ------------------------------------------------------------------------------------
def test_unused_inputs_get_zero_gradients():
    g = func.grad(lambda x, y: (x * 2).sum(), argnums=(0, 1))(jitgrad.ones(2), jitgrad.ones(3))
    assert g[1].tolist() == [0.0, 0.0, 0.0]
    _, t = func.jvp(lambda x: jitgrad.ones(2), (jitgrad.ones(2),), (jitgrad.ones(2),))
    assert t.tolist() == [0.0, 0.0]


def test_perturbation_confusion_reverse_and_forward():
    two, one = jitgrad.tensor(2.0), jitgrad.tensor(1.0)
    reverse = func.grad(lambda x: x * func.grad(lambda y: x + y)(one))(two)
    assert float(reverse) == 1.0

    def derivative(f):
        return lambda x: func.jvp(f, (x,), (jitgrad.ones_like(x),))[1]

    forward = derivative(lambda x: x * derivative(lambda y: x + y)(one))(two)
    assert float(forward) == 1.0


def test_grad_through_a_closure_that_requires_grad():
    """The gradient w.r.t. x can itself be differentiated w.r.t. a captured parameter."""
    w = jitgrad.tensor([0.5, -1.0], dtype=jitgrad.float64, requires_grad=True)
    g = func.grad(lambda x: (w * x ** 2).sum())(jitgrad.tensor([1.0, 3.0],
                                                               dtype=jitgrad.float64))
    assert g.requires_grad  # 2 w x
    g.sum().backward()
    assert w.grad.tolist() == [2.0, 6.0]


@pytest.mark.parametrize("extra_ops", [0, 40])  # a few recorded entries, and many
def test_closure_detection_short_and_long_recordings(extra_ops):
    w = jitgrad.tensor([0.5, -1.0], dtype=jitgrad.float64, requires_grad=True)
    c = jitgrad.tensor([2.0, 3.0], dtype=jitgrad.float64)  # no grad: not a closure to follow

    def f(x, use_w):
        for _ in range(extra_ops):
            x = x * 1.0
        return ((w if use_w else c) * x ** 2).sum()

    x = jitgrad.tensor([1.0, 3.0], dtype=jitgrad.float64)
    assert func.grad(lambda x: f(x, True))(x).requires_grad
    assert not func.grad(lambda x: f(x, False))(x).requires_grad
    hv = func.hvp(lambda x: f(x, True), (x,), (jitgrad.ones_like(x),))
    assert hv.requires_grad and hv.tolist() == [1.0, -2.0]


def test_results_outside_transforms_are_detached():
    x = jitgrad.tensor([1.0, 2.0])
    assert not func.grad(lambda x: (x * x).sum())(x).requires_grad
    out, t = func.jvp(jitgrad.sin, (x,), (x,))
    assert not out.requires_grad and not t.requires_grad
    assert fwAD.current_level() is None and fwAD.transform_depth() == 0


def test_repeated_transforms_keep_the_tape_small():
    x = jitgrad.tensor(np.linspace(0, 1, 50_000), dtype=jitgrad.float64)
    for _ in range(20):
        func.jvp(lambda x: jitgrad.tanh(x) * jitgrad.exp(-x ** 2), (x,), (x,))
        func.hvp(lambda x: (jitgrad.sin(x) * x ** 2).sum(), (x,), (x,))
    assert current_tape().used[1] < 40 * x.numel()


# -- bad input ------------------------------------------------------------------------------------
def _still_works():
    assert fwAD.current_level() is None and fwAD.transform_depth() == 0
    assert func.grad(lambda x: (x * x).sum())(jitgrad.tensor([3.0])).tolist() == [6.0]
    assert func.jvp(lambda x: x * x, (jitgrad.tensor([3.0]),),
                    (jitgrad.tensor([1.0]),))[1].tolist() == [6.0]


def test_grad_of_a_non_scalar_function():
    with pytest.raises(RuntimeError, match="scalar Tensor, got tensor with 1 dims"):
        func.grad(lambda x: x * 2)(jitgrad.ones(3))
    _still_works()


def test_hessian_of_a_non_scalar_function():
    with pytest.raises(RuntimeError, match=r"hessian.*scalar Tensor, got \[3\]"):
        func.hessian(lambda x: x * 2)(jitgrad.ones(3))
    _still_works()


def test_jvp_with_mismatched_primals_and_tangents():
    x = jitgrad.ones(3)
    with pytest.raises(RuntimeError, match="same python structure"):
        func.jvp(jitgrad.sin, (x, x), (x,))
    with pytest.raises(RuntimeError, match="Expected primals to be a tuple"):
        func.jvp(jitgrad.sin, x, (x,))
    with pytest.raises(RuntimeError, match=r"same shape: primal 0 has shape \[3\]"):
        func.jvp(jitgrad.sin, (x,), (jitgrad.ones(2),))
    with pytest.raises(RuntimeError, match="same dtype"):
        func.jvp(jitgrad.sin, (x,), (jitgrad.ones(3, dtype=jitgrad.float64),))
    _still_works()


def test_errors_inside_the_function_leave_nothing_behind():
    def broken(x):
        raise ValueError("boom")

    for transform in (lambda: func.grad(broken)(jitgrad.ones(2)),
                      lambda: func.jvp(broken, (jitgrad.ones(2),), (jitgrad.ones(2),)),
                      lambda: func.jacfwd(broken)(jitgrad.ones(2)),
                      lambda: func.hessian(broken)(jitgrad.ones(2))):
        with pytest.raises(ValueError, match="boom"):
            transform()
    _still_works()


def test_bad_argnums_and_vjp_cotangents():
    with pytest.raises(RuntimeError, match="argnums"):
        func.grad(lambda x: x.sum(), argnums=2)(jitgrad.ones(2))
    _, vjp_fn = func.vjp(lambda x: x * 2, jitgrad.ones(2))
    with pytest.raises(RuntimeError, match="Mismatch in shape"):
        vjp_fn(jitgrad.ones(3))
    _still_works()


@pytest.mark.parametrize("transform", ["jvp", "hvp", "grad"])
def test_repeated_transforms_do_not_grow_the_tape(transform):
    # each call's recording is dropped once the call returns: a loop of calls on large
    # inputs keeps the arena bounded (it used to grow by the whole recording every call)
    x = np.random.default_rng(0).uniform(-1, 1, 40_000)
    v = np.ones_like(x)
    f = lambda t: (jitgrad.tanh(t) * jitgrad.exp(-t ** 2)).sum()
    calls = {"jvp": lambda: func.jvp(f, (x,), (v,)),
             "hvp": lambda: func.hvp(f, (x,), (v,)),
             "grad": lambda: func.grad(f)(x)}
    for _ in range(3):
        calls[transform]()
    used = sum(current_tape().used)
    for _ in range(10):
        calls[transform]()
    assert sum(current_tape().used) <= used


def test_large_results_kept_by_the_caller_are_never_reused():
    # big tangents and hvp results reuse dropped results' memory: kept ones must survive
    x = np.linspace(-1.0, 1.0, 1 << 17)
    f = lambda t: (jitgrad.sin(t) * t ** 2).sum()
    kept = [func.jvp(jitgrad.sin, (x,), (np.full_like(x, k),))[1] for k in range(1, 6)]
    kept += [func.hvp(f, (x,), (np.full_like(x, k),)) for k in range(1, 6)]
    for k, tangent in enumerate(kept[:5], start=1):
        np.testing.assert_allclose(tangent, k * np.cos(x), rtol=1e-15)
    hessian_diagonal = (2 - x ** 2) * np.sin(x) + 4 * x * np.cos(x)
    for k, hv in enumerate(kept[5:], start=1):
        np.testing.assert_allclose(hv, k * hessian_diagonal, rtol=1e-12, atol=1e-14)
