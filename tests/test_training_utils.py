"""Training utilities: ``nn.utils`` (gradient clipping, parameters as a vector),
``optim.lr_scheduler``, ``save``/``load`` and ``autograd.functional``, against explicit
values and against torch as an oracle."""
from __future__ import annotations

import copy
import io
import math
import pickle
import warnings

import numpy as np
import pytest

import jitgrad as torch
import jitgrad.autograd.functional as F
import jitgrad.nn.utils as U
from jitgrad.optim import lr_scheduler as S
from jitgrad.serialization import load, save

try:
    import torch as real_torch
    import torch.autograd.functional as RF
except ImportError:  # pragma: no cover - the oracle is optional
    real_torch = RF = None

needs_torch = pytest.mark.skipif(real_torch is None, reason="torch (the oracle) not installed")


def _same_error(run_ours, run_theirs) -> None:
    """Both raise, the same exception type with the same message."""
    with pytest.raises(Exception) as ours:  # noqa: PT011 - compared below
        run_ours()
    with pytest.raises(Exception) as theirs:  # noqa: PT011
        run_theirs()
    assert type(ours.value).__name__ == type(theirs.value).__name__
    assert str(ours.value) == str(theirs.value)


def _close(ours, theirs, rtol: float = 1e-6) -> None:
    """Same nesting, shapes, dtypes, requires_grad and (nearly) values."""
    if isinstance(theirs, (tuple, list)):
        assert type(ours) is type(theirs) and len(ours) == len(theirs)
        for a, b in zip(ours, theirs, strict=True):
            _close(a, b, rtol)
        return
    assert tuple(ours.shape) == tuple(theirs.shape)
    assert str(ours.dtype) == str(theirs.dtype)
    assert ours.requires_grad == theirs.requires_grad
    np.testing.assert_allclose(ours.detach().numpy(), theirs.detach().numpy(), rtol=rtol,
                               atol=1e-12)


def _params_with_grads(lib, grads: list, none_too: bool = True) -> list:
    """Parameters whose grads are ``grads`` (float32, but the last float64), and one
    without a grad."""
    params = []
    for i, g in enumerate(grads):
        d = lib.float64 if i == len(grads) - 1 else lib.float32
        p = lib.nn.Parameter(lib.zeros(np.shape(g), dtype=d))
        p.grad = lib.tensor(g, dtype=d)
        params.append(p)
    if none_too:
        params.insert(1, lib.nn.Parameter(lib.ones(2)))
    return params


# -- nn.utils ----------------------------------------------------------------------------------
def test_clip_grad_norm_explicit_values_and_versions():
    w = torch.nn.Parameter(torch.zeros(2))
    w.grad = torch.tensor([3.0, 4.0])
    version = w.grad._version
    total = U.clip_grad_norm_(w, max_norm=1.0)
    assert total.ndim == 0 and total.item() == 5.0
    np.testing.assert_allclose(w.grad.numpy(), [0.6, 0.8], rtol=1e-6)
    assert w.grad._version == version + 1  # written in place, through mul_
    # under the limit the grads are unchanged (coefficient clamped to 1)
    assert U.clip_grad_norm_([w], max_norm=10.0).item() == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_allclose(w.grad.numpy(), [0.6, 0.8], rtol=1e-6)
    w.grad = torch.tensor([-7.0, 2.0])
    assert U.clip_grad_norm_((p for p in [w]), 3.5, norm_type="inf").item() == 7.0
    np.testing.assert_allclose(w.grad.numpy(), [-3.5, 1.0], rtol=1e-6)
    no_grad = torch.nn.Parameter(torch.ones(2))
    assert U.clip_grad_norm_([no_grad], 1.0).tolist() == 0.0  # tensor(0.), nothing to clip
    assert no_grad.grad is None


@needs_torch
@pytest.mark.parametrize("norm_type", [2.0, 1, math.inf, 3.0, 0.5, 0])
@pytest.mark.parametrize("max_norm", [0.1, 100.0])
def test_clip_grad_norm_matches_torch(norm_type, max_norm):
    grads = [[[0.5, -1.5], [2.0, 0.25]], [3.0, -0.75, 0.1], [1.0, -2.0]]
    ours, theirs = _params_with_grads(torch, grads), _params_with_grads(real_torch, grads)
    _close(U.clip_grad_norm_(ours, max_norm, norm_type),
           real_torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type))
    for p, q in zip(ours, theirs, strict=True):
        assert (p.grad is None) == (q.grad is None)
        if p.grad is not None:
            _close(p.grad, q.grad)
    _close(U.get_total_norm([p.grad for p in ours if p.grad is not None], norm_type),
           real_torch.nn.utils.get_total_norm([q.grad for q in theirs if q.grad is not None],
                                              norm_type))


@needs_torch
def test_clip_grad_norm_nonfinite():
    for lib, clip in ((torch, U.clip_grad_norm_),
                      (real_torch, real_torch.nn.utils.clip_grad_norm_)):
        (p,) = _params_with_grads(lib, [[1.0, float("nan")]], none_too=False)
        with pytest.raises(RuntimeError, match="is non-finite, so it cannot be clipped"):
            clip(p, 1.0, error_if_nonfinite=True)
    _same_error(lambda: U.clip_grad_norm_(_params_with_grads(torch, [[math.inf]], False), 1.0,
                                          error_if_nonfinite=True),
                lambda: real_torch.nn.utils.clip_grad_norm_(
                    _params_with_grads(real_torch, [[math.inf]], False), 1.0,
                    error_if_nonfinite=True))
    # without the check the grads are scaled by the non-finite coefficient, as torch does
    ours = _params_with_grads(torch, [[1.0, math.inf]], False)
    theirs = _params_with_grads(real_torch, [[1.0, math.inf]], False)
    _close(U.clip_grad_norm_(ours, 1.0), real_torch.nn.utils.clip_grad_norm_(theirs, 1.0))
    _close(ours[0].grad, theirs[0].grad)


@needs_torch
def test_clip_grads_with_norm_and_clip_grad_value_match_torch():
    grads = [[0.5, -1.5, 2.0], [3.0, -0.75]]
    ours, theirs = _params_with_grads(torch, grads), _params_with_grads(real_torch, grads)
    U.clip_grads_with_norm_(ours, 1.0, torch.tensor(4.0))
    real_torch.nn.utils.clip_grads_with_norm_(theirs, 1.0, real_torch.tensor(4.0))
    for p, q in zip(ours, theirs, strict=True):
        if q.grad is not None:
            _close(p.grad, q.grad)
    version = ours[0].grad._version
    assert U.clip_grad_value_(ours, 0.3) is None
    real_torch.nn.utils.clip_grad_value_(theirs, 0.3)
    assert ours[0].grad._version == version + 1
    for p, q in zip(ours, theirs, strict=True):
        if q.grad is not None:
            _close(p.grad, q.grad)


def test_clip_grad_value_explicit():
    w = torch.nn.Parameter(torch.zeros(3))
    w.grad = torch.tensor([-2.0, 0.5, 3.0])
    U.clip_grad_value_(w, 1)
    assert w.grad.tolist() == [-1.0, 0.5, 1.0]


@needs_torch
def test_parameters_to_vector_and_back():
    shapes = [(2, 3), (4,), ()]
    ours = [torch.nn.Parameter(torch.arange(float(np.prod(s))).reshape(s) + i)
            for i, s in enumerate(shapes)]
    theirs = [real_torch.nn.Parameter(real_torch.arange(float(np.prod(s))).reshape(s) + i)
              for i, s in enumerate(shapes)]
    vec = U.parameters_to_vector(ours)
    _close(vec, real_torch.nn.utils.parameters_to_vector(theirs))
    (vec * torch.arange(11.0)).sum().backward()  # recorded: the gradient reaches each one
    assert ours[0].grad.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert ours[2].grad.item() == 10.0
    U.vector_to_parameters(torch.arange(11.0) * 2, ours)
    real_torch.nn.utils.vector_to_parameters(real_torch.arange(11.0) * 2, theirs)
    for p, q in zip(ours, theirs, strict=True):
        assert type(p) is torch.nn.Parameter
        _close(p, q)
    _same_error(lambda: U.vector_to_parameters([1.0], ours),
                lambda: real_torch.nn.utils.vector_to_parameters([1.0], theirs))


# -- optim.lr_scheduler ------------------------------------------------------------------------
SCHEDULERS = {
    "step": lambda lib, opt: lib.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5),
    "multistep": lambda lib, opt: lib.optim.lr_scheduler.MultiStepLR(opt, [2, 5, 5, 9], 0.3),
    "exponential": lambda lib, opt: lib.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9),
    "lambda": lambda lib, opt: lib.optim.lr_scheduler.LambdaLR(
        opt, [lambda e: 1 / (e + 1), lambda e: 0.95 ** e]),
    "cosine": lambda lib, opt: lib.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=7,
                                                                        eta_min=0.01),
}


def _optimizer(lib, lr: float = 1.0):
    w = lib.nn.Parameter(lib.ones(2))
    b = lib.nn.Parameter(lib.ones(1))
    return lib.optim.SGD([{"params": [w]}, {"params": [b], "lr": 0.3}], lr=lr)


def _train(lib, make, steps: int = 25):
    """The lrs and first parameter after each epoch of a toy training with a scheduler."""
    opt = _optimizer(lib)
    sched = make(lib, opt)
    lrs, weights = [sched.get_last_lr()], []
    for _ in range(steps):
        for group in opt.param_groups:
            for p in group["params"]:
                p.grad = lib.ones_like(p)
        opt.step()
        sched.step()
        lrs.append(sched.get_last_lr())
        weights.append(opt.param_groups[0]["params"][0].tolist())
    return lrs, weights, sched, opt


def test_step_lr_explicit_and_initial_lr():
    lrs, weights, sched, opt = _train(torch, SCHEDULERS["step"], steps=7)
    assert [lr[0] for lr in lrs] == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]
    assert weights[3] == [1 - 1 - 1 - 1 - 0.5] * 2  # the step uses the scheduled lr
    assert [g["initial_lr"] for g in opt.param_groups] == [1.0, 0.3] == sched.base_lrs
    assert sched.last_epoch == 7 and sched.get_last_lr() == [0.25, 0.075]
    assert issubclass(S._LRScheduler, S.LRScheduler)


def test_cosine_explicit_values():
    lrs, _, _, _ = _train(torch, lambda lib, o: lib.optim.lr_scheduler.CosineAnnealingLR(o, 4),
                          steps=8)
    expected = [(1 + math.cos(math.pi * t / 4)) / 2 for t in range(9)]
    np.testing.assert_allclose([lr[0] for lr in lrs], expected, atol=1e-15)


@needs_torch
@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_schedulers_match_torch_exactly(name):
    ours_lrs, ours_w, ours, _ = _train(torch, SCHEDULERS[name])
    theirs_lrs, theirs_w, theirs, _ = _train(real_torch, SCHEDULERS[name])
    assert ours_lrs == theirs_lrs  # bit for bit: the same formulas in the same order
    np.testing.assert_allclose(ours_w, theirs_w, rtol=1e-6)
    assert ours.state_dict() == theirs.state_dict()
    # a scheduler resumed from the state dict goes on as the original
    resumed_opt = _optimizer(torch)
    for group, lr in zip(resumed_opt.param_groups, ours.get_last_lr(), strict=True):
        group["lr"] = lr
    resumed = SCHEDULERS[name](torch, resumed_opt)
    resumed.load_state_dict(ours.state_dict())
    for _ in range(5):
        ours.step()
        resumed.step()
        theirs.step()
        assert resumed.get_last_lr() == ours.get_last_lr() == theirs.get_last_lr()


@needs_torch
@pytest.mark.parametrize("name", ["step", "multistep", "exponential", "cosine"])
def test_step_with_epoch_uses_the_closed_form(name):
    results = []
    for lib in (torch, real_torch):
        opt = _optimizer(lib)
        sched = SCHEDULERS[name](lib, opt)
        opt.step()  # before the scheduler's step, or torch warns
        with pytest.warns(UserWarning, match="epoch parameter in `scheduler.step"):
            for epoch in (4, 9, 2):
                sched.step(epoch)
        results.append(sched.get_last_lr())
    assert results[0] == results[1]


@needs_torch
def test_scheduler_errors_and_warnings():
    def resume(lib):
        return lib.optim.lr_scheduler.StepLR(_optimizer(lib), 2, last_epoch=3)

    _same_error(lambda: resume(torch), lambda: resume(real_torch))

    def lambdas(lib):
        return lib.optim.lr_scheduler.LambdaLR(_optimizer(lib), [lambda e: 1.0])

    _same_error(lambda: lambdas(torch), lambda: lambdas(real_torch))
    sched = S.ExponentialLR(_optimizer(torch), 0.5)
    with pytest.warns(UserWarning, match="please use `get_last_lr"):
        sched.get_lr()
    # resuming works once the groups have their initial_lr
    opt = _optimizer(torch, lr=0.8)
    S.StepLR(opt, 2)
    assert S.StepLR(opt, 2, last_epoch=3).base_lrs == [0.8, 0.3]


def test_lambda_lr_saves_callable_objects_only():
    class Warmup:
        def __init__(self) -> None:
            self.length = 4

        def __call__(self, epoch: int) -> float:
            return min(1.0, (epoch + 1) / self.length)

    sched = S.LambdaLR(_optimizer(torch), [Warmup(), lambda e: 1.0])
    state = sched.state_dict()
    assert state["lr_lambdas"] == [{"length": 4}, None]
    other = S.LambdaLR(_optimizer(torch), [Warmup(), lambda e: 1.0])
    other.lr_lambdas[0].length = 99
    other.load_state_dict(state)
    assert other.lr_lambdas[0].length == 4
    other.step()
    assert other.get_last_lr() == [0.5, 0.3]


PLATEAU_METRICS = [5, 4, 4, 4, 4, 3, 3, 3, 3, 3, 3, 2.9999, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1]


@needs_torch
@pytest.mark.parametrize("kwargs", [
    {"patience": 2},
    {"patience": 1, "cooldown": 2, "min_lr": [0.05, 0.2], "factor": 0.5},
    {"mode": "max", "threshold_mode": "abs", "threshold": 0.5, "patience": 0},
    {"patience": 0, "eps": 0.1},
])
def test_reduce_lr_on_plateau_matches_torch(kwargs):
    runs = []
    for lib in (torch, real_torch):
        opt = _optimizer(lib)
        sched = lib.optim.lr_scheduler.ReduceLROnPlateau(opt, **kwargs)
        lrs = []
        for metric in PLATEAU_METRICS:
            opt.step()
            sched.step(lib.tensor(metric) if metric == 1 else metric)
            lrs.append(sched.get_last_lr())
        runs.append((lrs, sched.state_dict()))
    assert runs[0] == runs[1]


def test_reduce_lr_on_plateau_explicit_and_state_dict():
    opt = _optimizer(torch)
    sched = S.ReduceLROnPlateau(opt, patience=1, factor=0.5)
    for metric in (1.0, 1.0, 1.0, 0.5, 0.5, 0.5):
        sched.step(metric)
    assert sched.get_last_lr() == [0.25, 0.075]
    assert "initial_lr" not in opt.param_groups[0]  # as torch: no base-class construction
    other = S.ReduceLROnPlateau(_optimizer(torch), mode="max")
    other.load_state_dict(sched.state_dict())
    assert other.mode == "min" and other.is_better(0.4, 0.5) and other.best == 0.5


@needs_torch
@pytest.mark.parametrize("kwargs", [{"factor": 1.0}, {"mode": "up"}, {"threshold_mode": "x"},
                                    {"min_lr": [0.1]}])
def test_reduce_lr_on_plateau_errors_match_torch(kwargs):
    _same_error(
        lambda: S.ReduceLROnPlateau(_optimizer(torch), **kwargs),
        lambda: real_torch.optim.lr_scheduler.ReduceLROnPlateau(_optimizer(real_torch),
                                                                **kwargs))


def test_reduce_lr_on_plateau_refuses_a_non_optimizer():
    with pytest.raises(TypeError, match="list is not an Optimizer"):
        S.ReduceLROnPlateau([])
    with pytest.raises(TypeError, match="list is not an Optimizer"):
        S.StepLR([], 2)


# -- save / load -------------------------------------------------------------------------------
def _round_trip(obj, **load_args):
    buffer = io.BytesIO()
    save(obj, buffer)
    buffer.seek(0)
    return load(buffer, **load_args)


def test_tensors_round_trip_as_data_dtype_and_requires_grad(tmp_path):
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y = x * 3  # recorded: saved without its graph
    y.sum().backward()
    p = torch.nn.Parameter(torch.tensor([[1.5, -2.0]], dtype=torch.float64))
    frozen = torch.nn.Parameter(torch.ones(1), requires_grad=False)
    obj = {"x": x, "y": [y, y], "p": p, "frozen": frozen, "i": torch.arange(3),
           "b": torch.tensor([True, False]), "s": torch.tensor(2.5), "dtype": torch.float64,
           "t": (1, "a", None, 2.5)}
    save(obj, tmp_path / "obj.pt")
    back = load(tmp_path / "obj.pt")
    assert back["x"].tolist() == [1.0, 2.0] and back["x"].requires_grad
    assert back["x"].grad is None and back["x"].is_leaf
    assert back["y"][0] is back["y"][1] and back["y"][0].is_leaf and back["y"][0].requires_grad
    assert back["y"][0].tolist() == [3.0, 6.0]
    assert type(back["p"]) is torch.nn.Parameter and back["p"].dtype is torch.float64
    assert back["p"].tolist() == [[1.5, -2.0]] and back["p"].requires_grad
    assert type(back["frozen"]) is torch.nn.Parameter and not back["frozen"].requires_grad
    assert back["i"].dtype is torch.int64 and back["i"].tolist() == [0, 1, 2]
    assert back["b"].tolist() == [True, False] and back["s"].shape == ()
    assert back["dtype"] is torch.float64 and back["t"] == (1, "a", None, 2.5)
    back["x"].data.add_(1)  # writeable, its own memory
    assert x.tolist() == [1.0, 2.0]
    buffer = io.BytesIO()
    save(y, buffer)
    assert len(buffer.getvalue()) < 300  # data, not the tape


def test_model_and_optimizer_state_dicts_round_trip():
    torch.manual_seed(0)
    data, target = torch.randn(8, 3), torch.randn(8, 1)

    def make():
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
        return model, torch.optim.Adam(model.parameters(), lr=0.05)

    def train(model, opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.MSELoss()(model(data), target).backward()
            opt.step()

    model, opt = make()
    train(model, opt, 3)
    checkpoint = _round_trip({"model": model.state_dict(), "opt": opt.state_dict()})
    model2, opt2 = make()
    model2.load_state_dict(checkpoint["model"])
    opt2.load_state_dict(checkpoint["opt"])
    assert opt2.state_dict()["param_groups"] == opt.state_dict()["param_groups"]
    train(model, opt, 2)
    train(model2, opt2, 2)
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        np.testing.assert_array_equal(p.detach().numpy(), q.detach().numpy())


def test_weights_only_refuses_code_and_whole_modules():
    model = torch.nn.Linear(2, 1)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        _round_trip(model)
    back = _round_trip(model, weights_only=False)
    assert type(back) is torch.nn.Linear and type(back.weight) is torch.nn.Parameter
    np.testing.assert_array_equal(back.weight.detach().numpy(), model.weight.detach().numpy())
    with pytest.raises(pickle.UnpicklingError, match="print was not an allowed global"):
        load(io.BytesIO(pickle.dumps(print, protocol=2)))
    with pytest.raises(RuntimeError, match="explicit pickle_module"):
        load(io.BytesIO(), pickle_module=pickle, weights_only=True)
    assert _round_trip(torch.ones(1), map_location="cpu").tolist() == [1.0]
    with pytest.raises(RuntimeError, match="CPU only"):
        _round_trip(torch.ones(1), map_location="cuda")


def test_save_leaves_deepcopy_alone():
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.ones(2)
    _round_trip(p)
    assert copy.deepcopy(p).grad.tolist() == [1.0, 1.0]  # deepcopy still keeps the grad


@needs_torch
def test_save_load_structure_matches_torch():
    results = []
    for lib, save_, load_ in ((torch, save, load), (real_torch, real_torch.save,
                                                    real_torch.load)):
        x = lib.tensor([1.0, 2.0], requires_grad=True)
        buffer = io.BytesIO()
        save_({"p": lib.nn.Parameter(lib.ones(2)), "y": x * 2, "x": x}, buffer)
        buffer.seek(0)
        back = load_(buffer)
        results.append({k: (type(v).__name__, v.requires_grad, v.is_leaf, v.tolist())
                        for k, v in back.items()})
    assert results[0] == results[1]


# -- autograd.functional -----------------------------------------------------------------------
def _f_scalar(x):
    return (x ** 3 * x.sin()).sum()


def _f_pair(x, y):
    return x.exp() * y.sum(), (x * y[:2]).tanh()


def _f_scalar2(x, y):
    return (x ** 2).sum() * (y ** 3).sum() + (x[0] * y[1]).sin()


XA = np.array([0.3, -1.2, 0.7])
YA = np.array([0.5, 1.5, -0.4, 2.0])


def _t(lib, a):
    return lib.tensor(a, dtype=lib.float64)


def test_functional_explicit_values():
    x = torch.tensor([1.0, 2.0])
    assert F.jacobian(lambda t: t ** 2, x).tolist() == [[2.0, 0.0], [0.0, 4.0]]
    assert F.hessian(lambda t: (t ** 3).sum(), x).tolist() == [[6.0, 0.0], [0.0, 12.0]]
    out, vjp = F.vjp(lambda t: t ** 2, x, torch.tensor([1.0, 1.0]))
    assert out.tolist() == [1.0, 4.0] and vjp.tolist() == [2.0, 4.0]
    _, jvp = F.jvp(lambda t: t ** 2, x, torch.tensor([1.0, 0.0]))
    assert jvp.tolist() == [2.0, 0.0]
    for fn in (F.hvp, F.vhp):
        value, product = fn(lambda t: (t ** 3).sum(), x, torch.tensor([1.0, 1.0]))
        assert value.item() == 9.0 and product.tolist() == [6.0, 12.0]
    # a tuple of inputs gives a tuple (of tuples for the Jacobian of a tuple of outputs)
    jac = F.jacobian(lambda a, b: (a * b, a + b), (x, torch.tensor([3.0, 4.0])))
    assert [[j.tolist() for j in row] for row in jac] == [
        [[[3.0, 0.0], [0.0, 4.0]], [[1.0, 0.0], [0.0, 2.0]]],
        [[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]]]
    assert not jac[0][0].requires_grad


@needs_torch
@pytest.mark.parametrize("create_graph", [False, True])
def test_functional_matches_torch(create_graph):
    def both(name, fn_args, *extra):
        ours = getattr(F, name)(fn_args[0], *fn_args[1](torch), *extra,
                                create_graph=create_graph)
        theirs = getattr(RF, name)(fn_args[2], *fn_args[1](real_torch), *extra,
                                   create_graph=create_graph)
        _close(ours, theirs, rtol=1e-12)

    one = (lambda lib: (_t(lib, XA),))
    pair = (lambda lib: ((_t(lib, XA[:2]), _t(lib, YA)),))
    both("jacobian", (_f_scalar, one, _f_scalar))
    both("jacobian", (lambda x: x.exp(), one, lambda x: x.exp()))
    both("jacobian", (_f_pair, pair, _f_pair))
    both("hessian", (_f_scalar, one, _f_scalar))
    both("hessian", (_f_scalar2, lambda lib: ((_t(lib, XA), _t(lib, YA)),), _f_scalar2))
    both("vjp", (_f_scalar, one, _f_scalar))
    both("vjp", (_f_pair, lambda lib: ((_t(lib, XA[:2]), _t(lib, YA)),
                                       (_t(lib, XA[:2]), _t(lib, XA[1:]))), _f_pair))
    both("jvp", (_f_pair, lambda lib: ((_t(lib, XA[:2]), _t(lib, YA)),
                                       (_t(lib, XA[:2]), _t(lib, YA))), _f_pair))
    both("jvp", (lambda x: x.exp(), lambda lib: (_t(lib, XA), _t(lib, YA[:3])),
                 lambda x: x.exp()))
    for name in ("hvp", "vhp"):
        both(name, (_f_scalar, lambda lib: (_t(lib, XA), _t(lib, YA[1:])), _f_scalar))
        both(name, (_f_scalar2, lambda lib: ((_t(lib, XA), _t(lib, YA)),
                                             (_t(lib, YA[:3]), _t(lib, YA))), _f_scalar2))


@needs_torch
def test_functional_create_graph_differentiates_through():
    x, xr = _t(torch, XA).requires_grad_(), _t(real_torch, XA).requires_grad_()
    ours = torch.autograd.grad(F.hessian(_f_scalar, x, create_graph=True).sum(), x)[0]
    theirs = real_torch.autograd.grad(RF.hessian(_f_scalar, xr, create_graph=True).sum(), xr)[0]
    _close(ours, theirs, rtol=1e-12)
    # without create_graph the caller's tensor is left out of the results' graph
    assert not F.vjp(_f_scalar, x)[1].requires_grad


@needs_torch
@pytest.mark.filterwarnings("ignore::UserWarning")  # torch's vmap performance notes
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's own torch.jit.script use
def test_functional_vectorize_and_forward_mode_give_the_same_values():
    def nesting(value):
        if isinstance(value, (list, tuple)):
            return type(value).__name__, [nesting(v) for v in value]
        return "tensor"

    for kwargs in ({"vectorize": True}, {"vectorize": True, "strategy": "forward-mode"}):
        for fn in (_f_pair, lambda x, y: x * y[1:3]):
            ours = F.jacobian(fn, (_t(torch, XA[:2]), _t(torch, YA)), **kwargs)
            theirs = RF.jacobian(fn, (_t(real_torch, XA[:2]), _t(real_torch, YA)), **kwargs)
            assert nesting(ours) == nesting(theirs)  # forward mode: lists, as torch's
            _close(ours, theirs, rtol=1e-12)
        _close(F.jacobian(lambda x: (x.exp(), x * 2), _t(torch, XA), **kwargs),
               RF.jacobian(lambda x: (x.exp(), x * 2), _t(real_torch, XA), **kwargs),
               rtol=1e-12)
    _close(F.hessian(_f_scalar, _t(torch, XA), vectorize=True),
           RF.hessian(_f_scalar, _t(real_torch, XA), vectorize=True), rtol=1e-12)
    ours = F.hessian(_f_scalar2, (_t(torch, XA), _t(torch, YA)), vectorize=True,
                     outer_jacobian_strategy="forward-mode")
    theirs = RF.hessian(_f_scalar2, (_t(real_torch, XA), _t(real_torch, YA)), vectorize=True,
                        outer_jacobian_strategy="forward-mode")
    assert nesting(ours) == nesting(theirs)
    # torch leaves these attached to a graph (requires_grad): only the values are compared
    for our_row, their_row in zip(ours, theirs, strict=True):
        for a, b in zip(our_row, their_row, strict=True):
            np.testing.assert_allclose(a.numpy(), b.detach().numpy(), rtol=1e-12)


def _constant_second(x, y):
    return x * 2 + 0 * y.sum().detach()


@needs_torch
@pytest.mark.parametrize("call", [
    lambda m, lib: m.vjp(lambda x: x * 2, _t(lib, XA)),
    lambda m, lib: m.jvp(lambda x: x * 2, _t(lib, XA)),
    lambda m, lib: m.vjp(lambda x: x * 2, [1.0]),
    lambda m, lib: m.vjp(lambda x: x * 2, (_t(lib, XA), 3)),
    lambda m, lib: m.vjp(lambda x: x * 2, _t(lib, XA), _t(lib, YA)),
    lambda m, lib: m.vjp(lambda x: (x, x), _t(lib, XA), (_t(lib, XA),)),
    lambda m, lib: m.jvp(lambda x: x * 2, _t(lib, XA), (_t(lib, XA), _t(lib, XA))),
    lambda m, lib: m.jacobian(_constant_second, (_t(lib, XA), _t(lib, XA)), strict=True),
    lambda m, lib: m.vjp(_constant_second, (_t(lib, XA), _t(lib, XA)), _t(lib, XA),
                         strict=True),
    lambda m, lib: m.vjp(lambda x: _t(lib, XA), _t(lib, XA), _t(lib, XA), strict=True),
    lambda m, lib: m.jacobian(lambda x: x, _t(lib, XA), strategy="sideways"),
    lambda m, lib: m.jacobian(lambda x: x, _t(lib, XA), strategy="forward-mode"),
    lambda m, lib: m.jacobian(lambda x: x, _t(lib, XA), strategy="forward-mode",
                              vectorize=True, create_graph=True),
    lambda m, lib: m.jacobian(lambda x: x, _t(lib, XA), strict=True, vectorize=True),
    lambda m, lib: m.hessian(lambda x: x * 2, _t(lib, XA)),
    lambda m, lib: m.hessian(lambda x: (x, x), _t(lib, XA)),
    lambda m, lib: m.hessian(lambda x: (x * 2).sum(), _t(lib, XA), strict=True),
    lambda m, lib: m.hvp(lambda x: x * 2, _t(lib, XA), _t(lib, XA)),
    lambda m, lib: m.vhp(lambda x: (x * 2).sum(), _t(lib, XA), _t(lib, XA), strict=True),
])
def test_functional_errors_match_torch(call):
    _same_error(lambda: call(F, torch), lambda: call(RF, real_torch))


def test_functional_non_strict_fills_in_zeros():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jac = F.jacobian(_constant_second, (torch.ones(2), torch.ones(3)))
    assert jac[1].tolist() == [[0.0] * 3] * 2 and jac[0].tolist() == [[2.0, 0.0], [0.0, 2.0]]
    _, product = F.hvp(lambda x, y: (x ** 2).sum(), (torch.ones(2), torch.ones(3)),
                       (torch.ones(2), torch.ones(3)))
    assert product[0].tolist() == [2.0, 2.0] and product[1].tolist() == [0.0] * 3


def test_jitgrad_load_reads_saved_objects_and_compiled_tapes(tmp_path):
    model = torch.nn.Linear(3, 2)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    state = torch.load(tmp_path / "model.pt")
    assert torch.equal(state["weight"], model.weight.detach())
    tape = torch.compile(lambda x: (x * x).sum(), np.ones(3))
    tape.save(tmp_path / "tape.npz")
    for loaded in (torch.load(tmp_path / "tape.npz"),
                   torch.load(tmp_path / "tape.npz", f=lambda x: (x * x).sum())):
        np.testing.assert_allclose(loaded.grad(np.arange(3.0)), [0.0, 2.0, 4.0])
