"""More of ``nn``: the extra activations, ``normalize``, ``pad``, the distance functions,
``layer_norm``/``batch_norm``, the Huber-type and KL losses, their modules, the parameter
containers, ``ModuleDict`` and the normal initializers; values, gradients (first and
second order) and errors against torch."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import jitgrad as torch

try:
    import torch as real_torch
except ImportError:  # pragma: no cover - the oracle is optional
    real_torch = None

needs_torch = pytest.mark.skipif(real_torch is None, reason="torch (the oracle) not installed")

DTYPES = ["float32", "float64"]
TOL = {"float32": 2e-5, "float64": 1e-10}


def _inputs(seed: int, shape=(3, 6), low=-4.0, high=7.0, special=(-3.0, -1.0, 0.0, 1.0, 3.0,
                                                                   6.0)) -> np.ndarray:
    """Random values with the kinks of the piecewise functions among them."""
    a = np.random.default_rng(seed).uniform(low, high, shape)
    flat = a.reshape(-1)
    flat[:len(special)] = special
    return a


def _leaves(lib, arrays, dtype):
    return [lib.tensor(a, dtype=getattr(lib, dtype), requires_grad=True) for a in arrays]


def _close(ours, theirs, dtype, tol: float | None = None) -> None:
    tol = TOL[dtype] if tol is None else max(tol, TOL[dtype])
    np.testing.assert_allclose(ours.detach().numpy(), theirs.detach().numpy(), rtol=tol,
                               atol=tol)


def _compare(fn, arrays, dtype, second: bool = True, grad_fn: bool = True,
             tol: float | None = None) -> None:
    """``fn(lib, *leaves)`` in jitgrad and torch: value, grad_fn name, the gradient of a
    weighted sum and (``second``) the gradient of that gradient's squared norm."""
    results = []
    for lib in (torch, real_torch):
        xs = _leaves(lib, arrays, dtype)
        y = fn(lib, *xs)
        w = np.random.default_rng(7).normal(size=tuple(y.shape))
        s = (y * lib.tensor(w, dtype=getattr(lib, dtype))).sum()
        grads = lib.autograd.grad(s, xs, create_graph=second)
        seconds = None
        if second:
            total = sum((g * g).sum() for g in grads)
            seconds = [lib.zeros_like(x) if h is None else h
                       for x, h in zip(xs, lib.autograd.grad(total, xs, allow_unused=True))]
        results.append((y, grads, seconds))
    (y, grads, seconds), (ty, tgrads, tseconds) = results
    _close(y, ty, dtype, tol)
    if grad_fn:
        assert type(y.grad_fn).__name__ == type(ty.grad_fn).__name__
    for g, tg in zip(grads, tgrads):
        _close(g, tg, dtype, tol)
    if second:
        for g, tg in zip(seconds, tseconds):
            _close(g, tg, dtype, tol)


def _probabilities(seed: int, shape=(4, 5)) -> np.ndarray:
    a = np.random.default_rng(seed).uniform(0.1, 1.0, shape)
    return a / a.sum(-1, keepdims=True)


# -- activations ---------------------------------------------------------------------------
# (function, smooth: whether a second-order check is meaningful)
ACTIVATIONS = {
    "hardtanh": (lambda lib, x: lib.nn.functional.hardtanh(x), False),
    "hardtanh_bounds": (lambda lib, x: lib.nn.functional.hardtanh(x, -3.0, 1.0), False),
    "relu6": (lambda lib, x: lib.nn.functional.relu6(x), False),
    "hardsigmoid": (lambda lib, x: lib.nn.functional.hardsigmoid(x), False),
    "hardswish": (lambda lib, x: lib.nn.functional.hardswish(x), True),
    "selu": (lambda lib, x: lib.nn.functional.selu(x), True),
    "celu": (lambda lib, x: lib.nn.functional.celu(x, 0.7), True),
    "celu_1": (lambda lib, x: lib.nn.functional.celu(x), True),
    "softsign": (lambda lib, x: lib.nn.functional.softsign(x), True),
    "tanhshrink": (lambda lib, x: lib.nn.functional.tanhshrink(x), True),
    "gelu_tanh": (lambda lib, x: lib.nn.functional.gelu(x, approximate="tanh"), True),
    "gelu": (lambda lib, x: lib.nn.functional.gelu(x), True),
}


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activations_match_torch(name, dtype):
    fn, smooth = ACTIVATIONS[name]
    # torch's own float64 kernels use a float32 1/6 (hardsigmoid, hardswish) and 1/alpha
    # (celu): agreement to float32 precision only
    loose = name in ("celu", "hardsigmoid", "hardswish") and dtype == "float64"
    _compare(fn, [_inputs(1)], dtype, second=smooth, tol=1e-7 if loose else None)


@needs_torch
@pytest.mark.parametrize("name", ["hardtanh", "relu6", "hardsigmoid", "hardswish", "selu",
                                  "celu"])
def test_inplace_activations_write_into_their_input(name):
    a = _inputs(2)
    ours = torch.tensor(a)
    out = getattr(torch.nn.functional, name)(ours, inplace=True)
    assert out is ours
    expected = getattr(real_torch.nn.functional, name)(real_torch.tensor(a))
    np.testing.assert_allclose(ours.numpy(), expected.numpy(), rtol=1e-12)


def test_gelu_is_x_times_the_normal_cdf():
    x = torch.tensor([-3.0, -0.5, 0.0, 0.25, 2.0], dtype=torch.float64, requires_grad=True)
    y = torch.nn.functional.gelu(x)
    cdf = [0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x.tolist()]
    pdf = [math.exp(-v * v / 2) / math.sqrt(2 * math.pi) for v in x.tolist()]
    np.testing.assert_allclose(y.detach().numpy(), [v * c for v, c in zip(x.tolist(), cdf)],
                               rtol=1e-15, atol=1e-17)
    assert y.grad_fn.name() == "GeluBackward0"
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [c + v * p for v, c, p in
                                                zip(x.tolist(), cdf, pdf)], rtol=1e-14)
    np.testing.assert_array_equal(torch.nn.GELU()(x).detach().numpy(), y.detach().numpy())
    with pytest.raises(RuntimeError, match="must be either none or tanh"):
        torch.nn.functional.gelu(x, approximate="exact")


# -- normalize, distances, pad -------------------------------------------------------------
SMOOTH_FUNCTIONS = {
    "normalize": (lambda lib, x: lib.nn.functional.normalize(x), 1),
    "normalize_p1_dim0": (lambda lib, x: lib.nn.functional.normalize(x, p=1.0, dim=0), 1),
    "normalize_p3": (lambda lib, x: lib.nn.functional.normalize(x, p=3.0, dim=-1), 1),
    "cosine_similarity": (lambda lib, a, b: lib.nn.functional.cosine_similarity(a, b), 2),
    "cosine_similarity_dim0": (
        lambda lib, a, b: lib.nn.functional.cosine_similarity(a, b[:1], dim=-1), 2),
    "pairwise_distance": (lambda lib, a, b: lib.nn.functional.pairwise_distance(a, b), 2),
    "pairwise_distance_p1": (  # piecewise linear: first order only
        lambda lib, a, b: lib.nn.functional.pairwise_distance(a, b, p=1.0, keepdim=True), 2),
    "pairwise_distance_p3": (
        lambda lib, a, b: lib.nn.functional.pairwise_distance(a, b, p=3.0), 2),
    "layer_norm": (lambda lib, x: lib.nn.functional.layer_norm(x, (6,)), 1),
    "layer_norm_affine": (
        lambda lib, x, w, b: lib.nn.functional.layer_norm(x, [6], w[0], b[1], eps=1e-3), 3),
    "layer_norm_2d": (lambda lib, x: lib.nn.functional.layer_norm(x, [3, 6]), 1),
}


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(SMOOTH_FUNCTIONS))
def test_smooth_functions_match_torch(name, dtype):
    fn, count = SMOOTH_FUNCTIONS[name]
    arrays = [np.random.default_rng(10 + k).normal(size=(3, 6)) for k in range(count)]
    _compare(fn, arrays, dtype, second=not name.endswith("_p1"))


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pad", [(1, 2), (0, 0), (-1, 2), (2, -3, 1, 0), (1, 1, -1, 2, 0, 1),
                                 (-2, -1)])
def test_constant_pad_matches_torch(pad, dtype):
    fn = lambda lib, x: lib.nn.functional.pad(x, pad, value=2.5)  # noqa: E731
    _compare(fn, [np.random.default_rng(3).normal(size=(2, 3, 4))], dtype, second=False)
    default = torch.nn.functional.pad(torch.ones(2, 3, 4), pad)
    expected = real_torch.nn.functional.pad(real_torch.ones(2, 3, 4), pad)
    np.testing.assert_array_equal(default.numpy(), expected.numpy())


# -- losses --------------------------------------------------------------------------------
LOSSES = {
    "smooth_l1": lambda lib, x, t, r: lib.nn.functional.smooth_l1_loss(x, t, reduction=r),
    "smooth_l1_beta": lambda lib, x, t, r: lib.nn.functional.smooth_l1_loss(
        x, t, reduction=r, beta=0.5),
    "huber": lambda lib, x, t, r: lib.nn.functional.huber_loss(x, t, reduction=r),
    "huber_delta": lambda lib, x, t, r: lib.nn.functional.huber_loss(x, t, r, delta=2.0),
    "huber_weight": lambda lib, x, t, r: lib.nn.functional.huber_loss(
        x, t, r, weight=t.detach() * t.detach()),
}


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_regression_losses_match_torch(name, reduction, dtype):
    x = np.random.default_rng(4).normal(size=(3, 5)) * 2
    target = np.random.default_rng(5).normal(size=(3, 5))
    x[0, :4] = target[0, :4] + np.array([1.0, -1.0, 0.5, 2.0])  # the kinks
    x[1, 0] = target[1, 0]
    fn = LOSSES[name]
    # the weighted Huber loss leaves torch's named op before the reduction
    _compare(lambda lib, a, b: fn(lib, a, b, reduction), [x, target], dtype,
             grad_fn=not (name == "huber_weight" and reduction != "none"))


@needs_torch
def test_smooth_l1_with_beta_zero_is_l1():
    x, t = np.random.default_rng(6).normal(size=(2, 2, 4))
    ours = torch.nn.functional.smooth_l1_loss(torch.tensor(x), torch.tensor(t), beta=0.0)
    theirs = real_torch.nn.functional.smooth_l1_loss(real_torch.tensor(x),
                                                     real_torch.tensor(t), beta=0.0)
    assert math.isclose(ours.item(), theirs.item(), rel_tol=1e-12)


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none", "mean"])
def test_kl_div_matches_torch(reduction, log_target, dtype):
    logp = np.log(_probabilities(8))
    target = _probabilities(9)
    target[0, 1] = 0.0  # xlogy: no contribution, no nan
    if log_target:
        target = np.log(_probabilities(9))

    def fn(lib, x, t):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return lib.nn.functional.kl_div(x, t, reduction=reduction, log_target=log_target)

    # the target's own gradient is nan at 0 in torch (0 / 0): only the input is checked
    results = []
    for lib in (torch, real_torch):
        x = lib.tensor(logp, dtype=getattr(lib, dtype), requires_grad=True)
        t = lib.tensor(target, dtype=getattr(lib, dtype))
        y = fn(lib, x, t)
        (g,) = lib.autograd.grad(y.sum(), [x])
        results.append((y, g))
    (y, g), (ty, tg) = results
    _close(y, ty, dtype)
    _close(g, tg, dtype)
    assert type(y.grad_fn).__name__ == type(ty.grad_fn).__name__
    if log_target:  # a second order in both arguments
        _compare(fn, [logp, target], dtype)


@needs_torch
def test_loss_warnings_are_torchs():
    x = torch.zeros(2, 3)
    with pytest.warns(UserWarning, match="'batchmean' divides only by the batch size"):
        torch.nn.functional.kl_div(x, x)
    with pytest.warns(UserWarning, match="please use reduction='sum' instead"):
        assert torch.nn.functional.kl_div(x, x, size_average=False).shape == ()
    with pytest.warns(UserWarning, match="please use reduction='none' instead"):
        out = torch.nn.SmoothL1Loss(reduce=False)(x, x)
    assert out.shape == (2, 3)
    with pytest.warns(UserWarning, match="different to the input size"):
        torch.nn.functional.huber_loss(x, torch.zeros(3))


# -- errors --------------------------------------------------------------------------------
ERRORS = [
    lambda lib: lib.nn.functional.celu(lib.ones(2), alpha=0.0),
    lambda lib: lib.nn.functional.hardtanh(lib.ones(2), 2.0, 1.0),
    lambda lib: lib.nn.Hardtanh(2.0, 1.0),
    lambda lib: lib.nn.functional.layer_norm(lib.ones(3, 4), 4),
    lambda lib: lib.nn.functional.pad(lib.ones(2, 3), (1,)),
    lambda lib: lib.nn.functional.pad(lib.ones(2, 3), (1, 1, 1, 1, 1, 1)),
    lambda lib: lib.nn.functional.pad(lib.ones(2, 3), (-3, -2)),
    lambda lib: lib.nn.functional.pad(lib.ones(2, 3), (1, 1), mode="reflective"),
    lambda lib: lib.nn.functional.smooth_l1_loss(lib.ones(2), lib.ones(2), beta=-1.0),
    lambda lib: lib.nn.functional.smooth_l1_loss(lib.ones(2), lib.ones(2), reduction="avg"),
    lambda lib: lib.nn.functional.huber_loss(lib.ones(2), lib.ones(2), delta=0.0),
    lambda lib: lib.nn.functional.huber_loss(lib.ones(2), lib.ones(2), weight=lib.ones(3)),
    lambda lib: lib.nn.functional.kl_div(lib.ones(2), lib.ones(2), reduction="avg"),
    lambda lib: lib.nn.functional.layer_norm(lib.ones(3, 4), (5,)),
    lambda lib: lib.nn.functional.layer_norm(lib.ones(3, 4), (4,), lib.ones(3)),
    lambda lib: lib.nn.LayerNorm(4)(lib.ones(3, 5)),
    lambda lib: lib.nn.functional.cosine_similarity(lib.ones(3, 4), lib.ones(3, 5)),
    lambda lib: lib.nn.BatchNorm1d(4)(lib.ones(1, 4)),
    lambda lib: lib.nn.BatchNorm1d(4)(lib.ones(2, 4, 3, 3)),
    lambda lib: lib.nn.BatchNorm1d(4)(lib.ones(4)),
    lambda lib: lib.nn.BatchNorm1d(3)(lib.ones(2, 4)),
    lambda lib: lib.nn.init.orthogonal_(lib.ones(3)),
    lambda lib: lib.nn.init.kaiming_normal_(lib.ones(3, 3), mode="fan"),
    lambda lib: lib.nn.init.xavier_normal_(lib.ones(3)),
]


@needs_torch
@pytest.mark.parametrize("case", range(len(ERRORS)))
def test_errors_are_torchs(case):
    with pytest.raises(Exception) as theirs:
        ERRORS[case](real_torch)
    with pytest.raises(theirs.type):
        ERRORS[case](torch)


# -- modules -------------------------------------------------------------------------------
REPRS = [
    "nn.Hardtanh()", "nn.Hardtanh(-2, 3, True)", "nn.Hardtanh(-2.5, 0.5)", "nn.ReLU6()",
    "nn.ReLU6(inplace=True)", "nn.GELU()", "nn.GELU('tanh')", "nn.SELU()", "nn.SELU(True)",
    "nn.CELU()", "nn.CELU(0.5, True)", "nn.Hardsigmoid()", "nn.Hardswish(True)",
    "nn.Softsign()", "nn.Tanhshrink()", "nn.SmoothL1Loss(beta=0.5)", "nn.HuberLoss()",
    "nn.KLDivLoss(reduction='batchmean')", "nn.CosineSimilarity(0)", "nn.PairwiseDistance()",
    "nn.LayerNorm(4)", "nn.LayerNorm([2, 3], eps=1e-3, elementwise_affine=False)",
    "nn.LayerNorm(4, bias=False)", "nn.BatchNorm1d(3)",
    "nn.BatchNorm1d(3, 0.001, None, False, False)", "nn.BatchNorm1d(3, bias=False)",
    "nn.ModuleDict({'act': nn.ReLU6(), 'norm': nn.LayerNorm(2)})", "nn.ModuleDict()",
    "nn.ParameterList([nn.Parameter(lib.ones(2)), lib.ones(2, 3, dtype=lib.float64)])",
    "nn.ParameterList()", "nn.ParameterDict({'a': lib.ones(4)})",
    "nn.ParameterDict({'a': lib.ones(4), 'b': nn.Parameter(lib.zeros(1, 2))})",
    "nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.GELU('tanh'))",
]


@needs_torch
@pytest.mark.parametrize("text", REPRS)
def test_module_reprs_are_torchs(text):
    ours = eval(text, {"nn": torch.nn, "lib": torch})
    theirs = eval(text, {"nn": real_torch.nn, "lib": real_torch})
    assert repr(ours) == repr(theirs)
    ours_names = [(n, tuple(p.shape)) for n, p in ours.named_parameters()]
    assert ours_names == [(n, tuple(p.shape)) for n, p in theirs.named_parameters()]
    assert list(ours.state_dict()) == list(theirs.state_dict())


MODULES = [
    ("nn.Hardtanh(-2.0, 2.0)", 1), ("nn.ReLU6()", 1), ("nn.GELU('tanh')", 1), ("nn.GELU()", 1),
    ("nn.SELU()", 1),
    ("nn.CELU(2.0)", 1), ("nn.Softsign()", 1), ("nn.Hardsigmoid()", 1), ("nn.Hardswish()", 1),
    ("nn.Tanhshrink()", 1), ("nn.SmoothL1Loss(beta=0.3)", 2), ("nn.HuberLoss('sum', 0.4)", 2),
    ("nn.CosineSimilarity(0)", 2), ("nn.PairwiseDistance(1.5, keepdim=True)", 2),
]


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("text, count", MODULES)
def test_modules_compute_their_functions(text, count, dtype):
    modules = {lib: eval(text, {"nn": lib.nn}) for lib in (torch, real_torch)}
    arrays = [_inputs(20 + k, shape=(4, 3)) for k in range(count)]
    loose = dtype == "float64" and ("Hard" in text or "CELU" in text)  # see above
    _compare(lambda lib, *xs: modules[lib](*xs), arrays, dtype, second=False,
             tol=1e-7 if loose else None)


@needs_torch
def test_kl_div_loss_module():
    logp, target = np.log(_probabilities(1)), _probabilities(2)
    ours = torch.nn.KLDivLoss(reduction="batchmean")(torch.tensor(logp), torch.tensor(target))
    theirs = real_torch.nn.KLDivLoss(reduction="batchmean")(real_torch.tensor(logp),
                                                            real_torch.tensor(target))
    assert math.isclose(ours.item(), theirs.item(), rel_tol=1e-12)


def _copy_parameters(ours, theirs, seed: int) -> None:
    """Give both modules the same random parameters."""
    rng = np.random.default_rng(seed)
    for (_, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
        values = rng.normal(size=tuple(p.shape))
        with torch.no_grad():
            p.copy_(torch.tensor(values, dtype=p.dtype))
        with real_torch.no_grad():
            q.copy_(real_torch.tensor(values, dtype=q.dtype))


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_module_matches_torch(dtype):
    modules = {lib: lib.nn.LayerNorm((2, 3), dtype=getattr(lib, dtype))
               for lib in (torch, real_torch)}
    assert modules[torch].weight.tolist() == [[1.0] * 3] * 2
    assert modules[torch].bias.tolist() == [[0.0] * 3] * 2
    _copy_parameters(modules[torch], modules[real_torch], 3)
    x = np.random.default_rng(4).normal(size=(5, 2, 3))
    _compare(lambda lib, x: modules[lib](x), [x], dtype)
    ours = [p.grad for p in modules[torch].parameters()]
    assert all(g is None for g in ours)  # autograd.grad leaves .grad alone
    out = {lib: modules[lib](lib.tensor(x, dtype=getattr(lib, dtype))) for lib in modules}
    for lib in modules:
        (out[lib] ** 2).sum().backward()
    for p, q in zip(modules[torch].parameters(), modules[real_torch].parameters()):
        _close(p.grad, q.grad, dtype)


BATCH_NORMS = [
    "nn.BatchNorm1d(3, dtype=dtype)",
    "nn.BatchNorm1d(3, momentum=None, dtype=dtype)",
    "nn.BatchNorm1d(3, eps=1e-3, momentum=0.3, affine=False, dtype=dtype)",
    "nn.BatchNorm1d(3, track_running_stats=False, dtype=dtype)",
    "nn.BatchNorm1d(3, bias=False, dtype=dtype)",
]


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5)])
@pytest.mark.parametrize("text", BATCH_NORMS)
def test_batch_norm_trains_and_evaluates_as_torch(text, shape, dtype):
    modules = {lib: eval(text, {"nn": lib.nn, "dtype": getattr(lib, dtype)})
               for lib in (torch, real_torch)}
    _copy_parameters(modules[torch], modules[real_torch], 5)
    rng = np.random.default_rng(6)
    for step in range(3):
        x = rng.normal(2.0, 3.0, size=shape)
        _compare(lambda lib, x: modules[lib](x), [x], dtype, second=step == 0)
        for (name, b), (_, tb) in zip(modules[torch].named_buffers(),
                                      modules[real_torch].named_buffers()):
            assert not b.requires_grad, name
            np.testing.assert_allclose(b.numpy(), tb.numpy(), rtol=TOL[dtype], atol=TOL[dtype])
    for module in modules.values():
        module.eval()
    x = rng.normal(size=shape)
    _compare(lambda lib, x: modules[lib](x), [x], dtype, second=False)
    assert [n for n, _ in modules[torch].named_buffers()] == \
        [n for n, _ in modules[real_torch].named_buffers()]


def test_batch_norm_eval_leaves_running_stats_alone():
    norm = torch.nn.BatchNorm1d(2)
    norm(torch.randn(4, 2))
    before = [b.clone() for b in norm.buffers()]
    norm.eval()(torch.randn(4, 2))
    assert all(torch.equal(a, b) for a, b in zip(before, norm.buffers()))
    assert norm.num_batches_tracked.item() == 1
    norm.reset_running_stats()
    assert norm.running_mean.tolist() == [0.0, 0.0] and norm.num_batches_tracked.item() == 0


# -- containers ----------------------------------------------------------------------------
def test_parameter_list_registers_and_indexes():
    params = torch.nn.ParameterList([torch.ones(2), torch.nn.Parameter(torch.zeros(3))])
    params.append(torch.ones(1))
    params += [torch.ones(4)]
    assert len(params) == 4 and all(isinstance(p, torch.nn.Parameter) for p in params)
    assert [n for n, _ in params.named_parameters()] == ["0", "1", "2", "3"]
    assert params[-1].shape == (4,) and len(params[1:3]) == 2
    params[0] = torch.full((2,), 5.0)
    assert params[0].tolist() == [5.0, 5.0] and params[0].requires_grad
    with pytest.raises(IndexError):
        params[4]
    model = torch.nn.Module()
    model.params = params
    assert [n for n, _ in model.named_parameters()] == ["params.0", "params.1", "params.2",
                                                        "params.3"]


def test_parameter_dict_registers_by_name():
    params = torch.nn.ParameterDict({"a": torch.ones(2)})
    params["b"] = torch.zeros(3)
    params.update([("c", torch.nn.Parameter(torch.ones(1)))])
    assert list(params) == ["a", "b", "c"] and "b" in params and len(params) == 3
    assert [n for n, _ in params.named_parameters()] == ["a", "b", "c"]
    assert params.get("z") is None and params.setdefault("d", torch.ones(1)).shape == (1,)
    assert params.pop("a").shape == (2,)
    del params["b"]
    assert list(params.keys()) == ["c", "d"] and [v.shape for v in params.values()] == [(1,)] * 2
    params.clear()
    assert len(params) == 0 and not list(params.parameters())


def test_module_dict_registers_by_name():
    layers = torch.nn.ModuleDict({"first": torch.nn.Linear(2, 3)})
    layers["second"] = torch.nn.ReLU6()
    layers.update([("third", torch.nn.Linear(3, 1))])
    assert list(layers) == ["first", "second", "third"] and "second" in layers
    assert [n for n, _ in layers.named_parameters()] == ["first.weight", "first.bias",
                                                         "third.weight", "third.bias"]
    x = torch.ones(4, 2)
    for name in ("first", "second", "third"):
        x = layers[name](x)
    assert x.shape == (4, 1)
    assert isinstance(layers.pop("second"), torch.nn.ReLU6) and len(layers) == 2
    del layers["third"]
    assert list(layers.keys()) == ["first"]
    layers.clear()
    assert len(layers) == 0


# -- init ----------------------------------------------------------------------------------
def test_normal_initializers_have_torchs_spread():
    torch.manual_seed(0)
    w = torch.empty(400, 300, dtype=torch.float64)
    cases = [
        (lambda: torch.nn.init.kaiming_normal_(w), math.sqrt(2.0 / 300)),
        (lambda: torch.nn.init.kaiming_normal_(w, a=0.2, mode="fan_out"),
         math.sqrt(2.0 / 1.04 / 400)),
        (lambda: torch.nn.init.kaiming_normal_(w, nonlinearity="relu"), math.sqrt(2.0 / 300)),
        (lambda: torch.nn.init.xavier_normal_(w, gain=2.0), 2.0 * math.sqrt(2.0 / 700)),
    ]
    for init, std in cases:
        assert init() is w
        values = w.numpy()
        assert abs(values.mean()) < 0.02 * std * 10 and abs(values.std() / std - 1) < 0.02


def test_trunc_normal_stays_in_its_bounds():
    torch.manual_seed(1)
    w = torch.nn.init.trunc_normal_(torch.empty(200, 100), mean=1.0, std=2.0, a=-1.0, b=2.0)
    values = w.numpy()
    assert values.min() >= -1.0 and values.max() <= 2.0
    # the mean of N(1, 4) truncated to [-1, 2]: mu + sigma (phi(alpha) - phi(beta)) / Z
    phi = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    alpha, beta = -1.0, 0.5
    expected = 1.0 + 2.0 * (phi(alpha) - phi(beta)) / (cdf(beta) - cdf(alpha))
    assert abs(values.mean() - expected) < 0.02
    default = torch.nn.init.trunc_normal_(torch.empty(1000)).numpy()
    assert default.min() >= -2.0 and default.max() <= 2.0


@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (4, 2, 3)])
def test_orthogonal_gives_orthonormal_rows_or_columns(shape):
    w = torch.nn.init.orthogonal_(torch.empty(*shape, dtype=torch.float64), gain=2.0)
    flat = w.numpy().reshape(shape[0], -1)
    small = min(flat.shape)
    gram = flat.T @ flat if flat.shape[0] >= flat.shape[1] else flat @ flat.T
    np.testing.assert_allclose(gram, 4.0 * np.eye(small), atol=1e-12)
