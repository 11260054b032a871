"""jitgrad.optim: SGD, Adam, AdamW, RMSprop, Adagrad trajectories against torch's for every
option combination, the one-kernel-per-group step, state_dict, and bad input."""
import copy
import gc
import itertools
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import jitgrad
from jitgrad import optim
from jitgrad.optim import _kernels
from jitgrad.optim import optimizer as optimizer_module
from jitgrad.tape import current_tape

# more than optimizer.SMALL_GROUP elements: the Numba kernel; a few scalars: the Python path
BIG_SHAPES = [(5, 3), (7,), (), (2, 2, 2)]
TINY_SHAPES = [(), (2,)]


def _sgd_options():
    for momentum, dampening, weight_decay, nesterov, maximize in itertools.product(
            [0.0, 0.9], [0.0, 0.3], [0.0, 0.1], [False, True], [False, True]):
        if nesterov and (momentum == 0.0 or dampening != 0.0):
            continue
        yield {"lr": 0.05, "momentum": momentum, "dampening": dampening,
               "weight_decay": weight_decay, "nesterov": nesterov, "maximize": maximize}


def _adam_options():
    for amsgrad, weight_decay, maximize, betas in itertools.product(
            [False, True], [0.0, 0.1], [False, True], [(0.9, 0.999), (0.4, 0.8)]):
        yield {"lr": 0.02, "betas": betas, "eps": 1e-6, "weight_decay": weight_decay,
               "amsgrad": amsgrad, "maximize": maximize}


def _rmsprop_options():
    for momentum, centered, weight_decay, maximize, alpha in itertools.product(
            [0.0, 0.9], [False, True], [0.0, 0.1], [False, True], [0.99, 0.3]):
        yield {"lr": 0.01, "alpha": alpha, "eps": 1e-6, "weight_decay": weight_decay,
               "momentum": momentum, "centered": centered, "maximize": maximize}


def _adagrad_options():
    for lr_decay, weight_decay, initial, maximize in itertools.product(
            [0.0, 0.05], [0.0, 0.1], [0.0, 0.3], [False, True]):
        yield {"lr": 0.1, "lr_decay": lr_decay, "weight_decay": weight_decay,
               "initial_accumulator_value": initial, "maximize": maximize}


CASES = ([("SGD", o) for o in _sgd_options()] + [("Adam", o) for o in _adam_options()]
         + [("AdamW", o) for o in _adam_options()]
         + [("RMSprop", o) for o in _rmsprop_options()]
         + [("Adagrad", o) for o in _adagrad_options()])


def _case_id(case):
    name, options = case
    return name + "-" + "-".join(f"{k}={v}" for k, v in options.items() if k != "lr")


def _gradient(k: int, value: np.ndarray) -> np.ndarray:
    """A nonlinear gradient field, the same for both libraries: the trajectories then
    differ only by the optimizers' arithmetic."""
    return (1.0 + 0.5 * k) * (value - 0.3 * k) + 0.3 * np.sin(3.0 * value)


def _trajectory(lib, name, options, shapes, steps=100, dtype=np.float64, every_other=2):
    rng = np.random.default_rng(42)
    start = [rng.standard_normal(s).astype(dtype) for s in shapes]
    params = [lib.tensor(a.copy(), requires_grad=True) for a in start]
    opt = getattr(lib.optim, name)(params, **options)
    # maximizing follows the gradient: flip it so that both directions converge (diverging
    # trajectories would amplify rounding differences exponentially)
    sign = -1.0 if options.get("maximize") else 1.0
    for step in range(steps):
        opt.zero_grad()
        for k, p in enumerate(params):
            if k == every_other and step % 3 == 1:
                continue  # no gradient this step: skipped, its state (step count) lags
            p.grad = lib.tensor(np.asarray(sign * _gradient(k, p.detach().numpy()), dtype))
        opt.step()
    return [p.detach().numpy().copy() for p in params]


@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("shapes", [BIG_SHAPES, TINY_SHAPES], ids=["kernel", "python"])
def test_trajectory_equals_torch(case, shapes):
    torch = pytest.importorskip("torch")
    name, options = case
    ours = _trajectory(jitgrad, name, options, shapes)
    theirs = _trajectory(torch, name, options, shapes)
    for a, b in zip(ours, theirs, strict=True):
        assert np.isfinite(a).all()
        # the kernels round as torch's CPU kernels (FMAs included): most trajectories agree
        # to the bit; a vectorized kernel's tail can round one element differently
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"])
def test_float32_trajectory_close_to_torch(name):
    torch = pytest.importorskip("torch")
    options = {"lr": 0.02, "momentum": 0.9} if name == "SGD" else {"lr": 0.02}
    ours = _trajectory(jitgrad, name, options, BIG_SHAPES, steps=50, dtype=np.float32)
    theirs = _trajectory(torch, name, options, BIG_SHAPES, steps=50, dtype=np.float32)
    for a, b in zip(ours, theirs, strict=True):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_mlp_training_equals_torch():
    """End to end: nn.Linear, cross_entropy, backward and SGD(momentum) in both."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 8))
    y = rng.integers(0, 4, 32)
    theirs = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(),
                                 torch.nn.Linear(16, 4)).double()
    ours = jitgrad.nn.Sequential(jitgrad.nn.Linear(8, 16), jitgrad.nn.Tanh(),
                                 jitgrad.nn.Linear(16, 4)).double()
    ours.load_state_dict({k: jitgrad.tensor(v.detach().numpy())
                          for k, v in theirs.state_dict().items()})
    runs = []
    for lib, model in ((jitgrad, ours), (torch, theirs)):
        opt = lib.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        for _ in range(20):
            opt.zero_grad()
            loss = lib.nn.functional.cross_entropy(model(lib.tensor(x)), lib.tensor(y))
            loss.backward()
            opt.step()
        runs.append([p.detach().numpy() for p in model.parameters()])
    for a, b in zip(*runs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


# -- the step itself ------------------------------------------------------------------------------
class _Counting:
    def __init__(self, function):
        self.function = function
        self.calls = 0

    def __call__(self, *args):
        self.calls += 1
        return self.function(*args)


@pytest.mark.parametrize("name, kernel", [("SGD", "sgd_group"), ("Adam", "adam_group"),
                                          ("AdamW", "adam_group"),
                                          ("RMSprop", "rmsprop_group"),
                                          ("Adagrad", "adagrad_group")])
def test_one_kernel_call_per_group(monkeypatch, name, kernel):
    if _kernels.numba.config.DISABLE_JIT:
        pytest.skip("with the JIT disabled the Python path runs instead of the kernel")
    counting = _Counting(getattr(_kernels, kernel))
    monkeypatch.setattr(_kernels, kernel, counting)
    first = [jitgrad.zeros(30, 4, requires_grad=True), jitgrad.zeros(4, requires_grad=True)]
    second = [jitgrad.zeros(50, requires_grad=True)]
    extra = {"momentum": 0.9} if name == "SGD" else {}
    opt = getattr(optim, name)([{"params": first}, {"params": second, "lr": 0.5}], lr=0.1,
                               **extra)
    for p in first + second:
        p.grad = jitgrad.ones(*p.shape)
    opt.step()
    opt.step()
    assert counting.calls == 4  # two groups, two steps
    # a group of mixed dtypes: one call per dtype
    mixed = [jitgrad.zeros(20, requires_grad=True),
             jitgrad.zeros(20, dtype=jitgrad.float64, requires_grad=True)]
    opt = getattr(optim, name)(mixed, lr=0.1)
    for p in mixed:
        p.grad = jitgrad.ones(20, dtype=p.dtype)
    counting.calls = 0
    opt.step()
    assert counting.calls == 2
    assert mixed[0].dtype is jitgrad.float32 and mixed[1].dtype is jitgrad.float64


def test_python_path_equals_kernel_path(monkeypatch):
    if _kernels.numba.config.DISABLE_JIT:
        pytest.skip("both paths are Python with the JIT disabled")
    for name, options in CASES[::7]:
        kernel = _trajectory(jitgrad, name, options, BIG_SHAPES, steps=20)
        monkeypatch.setattr(optimizer_module, "SMALL_GROUP", 10**9)
        python = _trajectory(jitgrad, name, options, BIG_SHAPES, steps=20)
        monkeypatch.undo()
        for a, b in zip(kernel, python, strict=True):
            np.testing.assert_array_equal(a, b)


def _without_jit(imports: str, expression: str):
    """The JSON value of ``expression`` (on ``imports`` from this file) computed in a fresh
    process with NUMBA_DISABLE_JIT=1."""
    script = ("import json, numpy as np, sys; sys.path.insert(0, sys.argv[1]);"
              f"from test_optim import {imports}; import jitgrad;"
              f"print(json.dumps({expression}))")
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    result = subprocess.run([sys.executable, "-c", script, os.path.dirname(__file__)],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_kernels_without_jit_match():
    """The kernels' logic runs as plain Python under NUMBA_DISABLE_JIT=1 (tracebacks, coverage)
    and gives the same parameters."""
    ours = _without_jit(
        "_trajectory, BIG_SHAPES",
        "np.concatenate([a.ravel() for a in _trajectory(jitgrad, 'Adam', {'lr': 0.05, "
        "'amsgrad': True, 'weight_decay': 0.1}, BIG_SHAPES, steps=10)]).tolist()")
    expected = _trajectory(jitgrad, "Adam", {"lr": 0.05, "amsgrad": True, "weight_decay": 0.1},
                           BIG_SHAPES, steps=10)
    np.testing.assert_allclose(ours, np.concatenate([a.ravel() for a in expected]), rtol=1e-12)


def test_parameters_without_gradient_are_left_alone():
    a = jitgrad.ones(20, requires_grad=True)
    b = jitgrad.ones(20, requires_grad=True)
    opt = optim.Adam([a, b], lr=0.1)
    a.grad = jitgrad.ones(20)
    opt.step()
    assert b.tolist() == [1.0] * 20 and b not in opt.state
    assert a.tolist() != [1.0] * 20 and opt.state[a]["step"].item() == 1.0


def test_step_modifies_in_place_and_bumps_the_version():
    w = jitgrad.tensor([1.0, 2.0], requires_grad=True)
    data = w.detach()
    opt = optim.SGD([w], lr=0.1)
    (w * w).sum().backward()
    pending = (w * w).sum()  # saved w before the step
    opt.step()
    np.testing.assert_allclose(data.numpy(), [0.8, 1.6])  # same memory
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        pending.backward()
    # a graph recorded after the step sees the new values
    opt.zero_grad()
    (w * w).sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), [1.6, 3.2], rtol=1e-6)


def test_closure_is_evaluated_with_grad():
    w = jitgrad.tensor([1.0], requires_grad=True)
    opt = optim.SGD([w], lr=0.5)

    def closure():
        opt.zero_grad()
        loss = (w * w).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == 1.0
    assert w.tolist() == [0.0]


def test_zero_grad():
    w = jitgrad.ones(3, requires_grad=True)
    opt = optim.SGD([w], lr=0.1)
    (w * 2).sum().backward()
    opt.zero_grad(set_to_none=False)
    assert w.grad.tolist() == [0.0, 0.0, 0.0]
    opt.zero_grad()
    assert w.grad is None


def test_param_groups_and_repr():
    a, b = jitgrad.ones(2, requires_grad=True), jitgrad.ones(2, requires_grad=True)
    opt = optim.SGD([{"params": [a]}, {"params": b, "lr": 1.0}], lr=0.1, momentum=0.5)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 1.0]
    assert opt.param_groups[1]["momentum"] == 0.5
    c = jitgrad.ones(2, requires_grad=True)
    opt.add_param_group({"params": [c], "momentum": 0.0})
    assert len(opt.param_groups) == 3 and opt.param_groups[2]["lr"] == 0.1
    text = repr(opt)
    assert text.startswith("SGD (\nParameter Group 0\n    dampening: 0.0\n")
    assert "Parameter Group 2" in text
    for p in (a, b, c):
        p.grad = jitgrad.ones(2)
    opt.step()
    np.testing.assert_allclose(a.detach().numpy(), [0.9, 0.9], rtol=1e-7)
    assert b.tolist() == [0.0, 0.0]


# -- state_dict ------------------------------------------------------------------------------------
def _run(opt, params, steps, start_step=0):
    for _step in range(start_step, start_step + steps):
        opt.zero_grad()
        for k, p in enumerate(params):
            p.grad = jitgrad.tensor(np.asarray(_gradient(k, p.detach().numpy())))
        opt.step()


@pytest.mark.parametrize("name, options", [("SGD", {"lr": 0.05, "momentum": 0.9}),
                                           ("Adam", {"lr": 0.05, "amsgrad": True}),
                                           ("AdamW", {"lr": 0.05}),
                                           ("RMSprop", {"lr": 0.05, "momentum": 0.5,
                                                        "centered": True}),
                                           ("Adagrad", {"lr": 0.05, "lr_decay": 0.1})])
def test_state_dict_resume_is_exact(name, options):
    params = [jitgrad.tensor(np.linspace(-1, 1, 30), requires_grad=True),
              jitgrad.tensor(0.5, dtype=jitgrad.float64, requires_grad=True)]
    opt = getattr(optim, name)(params, **options)
    _run(opt, params, 10)
    saved = copy.deepcopy(opt.state_dict())
    saved_params = [p.detach().clone() for p in params]
    _run(opt, params, 10)
    resumed = [jitgrad.tensor(p.numpy(), requires_grad=True) for p in saved_params]
    opt2 = getattr(optim, name)(resumed, lr=123.0)
    opt2.load_state_dict(saved)
    assert opt2.param_groups[0]["lr"] == options["lr"]
    _run(opt2, resumed, 10)
    for a, b in zip(params, resumed, strict=True):
        np.testing.assert_array_equal(a.detach().numpy(), b.detach().numpy())
    # loading copies: the saved dict is not tied to the optimizer that loaded it
    key = next(iter(saved["state"][0]))
    if key != "step":
        assert not np.shares_memory(saved["state"][0][key].numpy(),
                                    opt2.state[resumed[0]][key].numpy())


@pytest.mark.parametrize("name, options", [("SGD", {"lr": 0.05, "momentum": 0.9,
                                                    "nesterov": True}),
                                           ("Adam", {"lr": 0.05, "amsgrad": True}),
                                           ("AdamW", {"lr": 0.05, "weight_decay": 0.1}),
                                           ("RMSprop", {"lr": 0.01, "momentum": 0.9,
                                                        "centered": True}),
                                           ("Adagrad", {"lr": 0.1, "lr_decay": 0.01,
                                                        "initial_accumulator_value": 0.1})])
def test_state_dict_format_and_loading_torchs(name, options):
    torch = pytest.importorskip("torch")
    start = [np.linspace(-1, 1, 30), np.array(0.5)]
    theirs = [torch.tensor(a, requires_grad=True) for a in start]
    topt = getattr(torch.optim, name)(theirs, **options)
    for _ in range(10):
        for k, p in enumerate(theirs):
            p.grad = torch.tensor(_gradient(k, p.detach().numpy()))
        topt.step()
    state = topt.state_dict()
    converted = {
        "state": {i: {k: jitgrad.tensor(v.numpy()) if isinstance(v, torch.Tensor) else v
                      for k, v in s.items()} for i, s in state["state"].items()},
        "param_groups": state["param_groups"],
    }
    ours = [jitgrad.tensor(p.detach().numpy(), requires_grad=True) for p in theirs]
    opt = getattr(optim, name)(ours, lr=1.0)
    opt.load_state_dict(converted)
    for _ in range(10):
        for k, (p, q) in enumerate(zip(ours, theirs, strict=True)):
            q.grad = torch.tensor(_gradient(k, q.detach().numpy()))
            p.grad = jitgrad.tensor(np.asarray(_gradient(k, p.detach().numpy())))
        topt.step()
        opt.step()
    for p, q in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-10,
                                   atol=1e-12)
    # our state_dict has torch's layout and keys
    mine = opt.state_dict()
    torch_state = topt.state_dict()
    assert mine["param_groups"][0]["params"] == [0, 1]
    assert set(mine["state"]) == set(torch_state["state"])
    for i in mine["state"]:
        assert set(mine["state"][i]) == set(torch_state["state"][i])
        for key, value in mine["state"][i].items():
            np.testing.assert_allclose(value.numpy(), torch_state["state"][i][key].numpy(),
                                       rtol=1e-10, atol=1e-12)
    extra_torch_keys = {"foreach", "differentiable", "fused", "capturable"}
    assert set(mine["param_groups"][0]) == set(torch_state["param_groups"][0]) - \
        extra_torch_keys | (set(mine["param_groups"][0]) & extra_torch_keys)


def test_load_state_dict_errors_change_nothing():
    a = jitgrad.ones(4, requires_grad=True)
    opt = optim.Adam([a], lr=0.1)
    a.grad = jitgrad.ones(4)
    opt.step()
    good = copy.deepcopy(opt.state_dict())
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match="different number of parameter groups"):
        opt.load_state_dict({"state": {}, "param_groups": []})
    with pytest.raises(ValueError, match="doesn't match the size of optimizer's group"):
        opt.load_state_dict({"state": {}, "param_groups": [dict(good["param_groups"][0],
                                                                params=[0, 1])]})
    broken = copy.deepcopy(good)
    broken["state"][0]["exp_avg"] = jitgrad.zeros(5)
    broken["param_groups"][0]["lr"] = 7.0
    with pytest.raises(ValueError, match=r"'exp_avg' of parameter 0 has shape \[5\]"):
        opt.load_state_dict(broken)
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    assert jitgrad.equal(after["state"][0]["exp_avg"], before["state"][0]["exp_avg"])


# -- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"])
def test_bad_parameters(name):
    cls = getattr(optim, name)
    w = jitgrad.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match="^optimizer got an empty parameter list$"):
        cls([], lr=0.1)
    with pytest.raises(ValueError, match="^can't optimize a non-leaf Tensor$"):
        cls([w * 2], lr=0.1)
    with pytest.raises(ValueError, match="duplicate parameters"):
        cls([w, w], lr=0.1)
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter "
                                         "group"):
        cls([{"params": [w]}, {"params": [w]}], lr=0.1)
    with pytest.raises(ValueError, match=r"^Invalid learning rate: -1$"):
        cls([w], lr=-1)
    with pytest.raises(TypeError, match="iterable of Tensors or dicts"):
        cls(w, lr=0.1)
    with pytest.raises(TypeError, match="ordered collections"):
        cls([{"params": {w}}], lr=0.1)
    with pytest.raises(TypeError, match="optimizer can only optimize Tensors"):
        cls([w, 3.0], lr=0.1)


def test_bad_hyperparameters_as_torch():
    torch = pytest.importorskip("torch")
    w = jitgrad.ones(2, requires_grad=True)
    tw = torch.ones(2, requires_grad=True)
    cases = [("SGD", {"lr": 0.1, "momentum": -1}), ("SGD", {"lr": 0.1, "weight_decay": -1}),
             ("SGD", {"lr": 0.1, "nesterov": True}),
             ("SGD", {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "nesterov": True}),
             ("Adam", {"eps": -1.0}), ("Adam", {"betas": (1.0, 0.9)}),
             ("Adam", {"betas": (0.9, -0.1)}), ("AdamW", {"weight_decay": -0.5}),
             ("RMSprop", {"alpha": -0.1}), ("RMSprop", {"momentum": -1.0}),
             ("RMSprop", {"eps": -1e-8}), ("Adagrad", {"lr_decay": -0.1}),
             ("Adagrad", {"initial_accumulator_value": -1.0}), ("Adagrad", {"eps": -1.0})]
    for name, options in cases:
        with pytest.raises(ValueError) as theirs:
            getattr(torch.optim, name)([tw], **options)
        with pytest.raises(ValueError) as ours:
            getattr(optim, name)([w], **options)
        assert str(ours.value) == str(theirs.value)


def test_refused_group_changes_nothing():
    a, b = jitgrad.ones(2, requires_grad=True), jitgrad.ones(2, requires_grad=True)
    opt = optim.SGD([a], lr=0.1)
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [b, a]})
    with pytest.raises(ValueError, match="Invalid learning rate"):
        opt.add_param_group({"params": [b], "lr": -0.5})
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["params"] == [a]


def test_failed_step_updates_nothing():
    good = jitgrad.ones(20, requires_grad=True)
    broken = jitgrad.ones(2, requires_grad=True)
    opt = optim.SGD([{"params": [good]}, {"params": [broken]}], lr=0.1, momentum=0.9)
    good.grad = jitgrad.ones(20)
    broken.grad = jitgrad.ones(2)
    broken.data = jitgrad.ones(3)  # the gradient no longer fits the parameter
    with pytest.raises(RuntimeError, match="gradient of a parameter has shape"):
        opt.step()
    assert good.tolist() == [1.0] * 20
    assert len(opt.state) == 0


def test_adagrad_state_exists_before_the_first_step_as_torchs():
    torch = pytest.importorskip("torch")
    ours = optim.Adagrad([jitgrad.ones(3, requires_grad=True)], initial_accumulator_value=0.5)
    theirs = torch.optim.Adagrad([torch.ones(3, requires_grad=True)],
                                 initial_accumulator_value=0.5)
    mine, torch_state = ours.state_dict()["state"], theirs.state_dict()["state"]
    assert set(mine) == set(torch_state) == {0}
    assert set(mine[0]) == set(torch_state[0]) == {"step", "sum"}
    np.testing.assert_array_equal(mine[0]["sum"].numpy(), torch_state[0]["sum"].numpy())
    assert mine[0]["step"].dtype == jitgrad.float32 and mine[0]["step"].item() == 0.0
    # a group added later gets its state on its first step
    late = jitgrad.ones(2, requires_grad=True)
    ours.add_param_group({"params": [late], "lr": 0.5})
    late.grad = jitgrad.ones(2)
    ours.step()
    np.testing.assert_allclose(late.detach().numpy(), 1 - 0.5 / np.sqrt(1.5), rtol=1e-6)
    assert ours.state[late]["step"].item() == 1.0


def _scalar_training(lib, options, dtype, shapes=((), (), ()), steps=60):
    """Parameters of one element trained on a nonlinear loss whose gradients come from
    ``backward`` (one-element gradients held as floats: SGD's scalar path)."""
    rng = np.random.default_rng(7)
    params = [lib.tensor(rng.standard_normal(s).astype(dtype), requires_grad=True)
              for s in shapes]
    opt = lib.optim.SGD(params, **options)
    sign = -1.0 if options.get("maximize") else 1.0
    for _ in range(steps):
        opt.zero_grad()
        loss = 0.0
        for k, p in enumerate(params):
            loss = loss + (((1.0 + 0.5 * k) * p - 0.3 * k) ** 2 + 0.3 * lib.sin(3.0 * p)).sum()
        (sign * loss).backward()
        opt.step()
    return [p.detach().numpy().copy() for p in params]


SCALAR_OPTIONS = [{"lr": 0.05}, {"lr": 0.05, "maximize": True}, {"lr": 0.013}]


@pytest.mark.parametrize("options", SCALAR_OPTIONS, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scalar_path_equals_array_path_and_torch(monkeypatch, options, dtype):
    calls = []
    scalar = _kernels.sgd_scalar
    monkeypatch.setattr(_kernels, "sgd_scalar", lambda *a: calls.append(a) or scalar(*a))
    fast = _scalar_training(jitgrad, options, dtype)
    assert len(calls) == 3 * 60  # every parameter, every step
    monkeypatch.setattr(optim.SGD, "_scalar_plan", lambda self: None)
    general = _scalar_training(jitgrad, options, dtype)
    for a, b in zip(fast, general, strict=True):
        assert a.dtype == dtype
        np.testing.assert_array_equal(a, b)
    torch = pytest.importorskip("torch")
    for a, b in zip(fast, _scalar_training(torch, options, dtype), strict=True):
        if dtype == np.float64:
            np.testing.assert_array_equal(a, b)
        else:  # torch steps float32 with a float32 learning rate
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_scalar_path_from_the_first_step_for_leaves_made_from_floats(monkeypatch):
    """The tutorial's parameters (``tensor(4.0, requires_grad=True)``) hold a float until
    their array is first needed: the scalar path makes it, from the first step on."""
    calls = []
    scalar = _kernels.sgd_scalar
    monkeypatch.setattr(_kernels, "sgd_scalar", lambda *a: calls.append(a) or scalar(*a))
    torch = pytest.importorskip("torch")
    results = []
    for lib in (jitgrad, torch):
        x, y = lib.tensor(3.0), lib.tensor(18.0)
        w, b = lib.tensor(4.0, requires_grad=True), lib.tensor(5.0, requires_grad=True)
        opt = lib.optim.SGD([w, b], lr=0.01)
        for step in range(5):
            opt.zero_grad()
            ((w * x + b - y) ** 2).backward()
            opt.step()
            if lib is jitgrad:
                assert len(calls) == 2 * (step + 1)
        results.append([w.item(), b.item()])
    assert results[0] == results[1]


@pytest.mark.parametrize("options", [{"lr": 0.1, "momentum": 0.9},
                                     {"lr": 0.1, "weight_decay": 0.01}], ids=str)
def test_scalar_path_leaves_momentum_and_decay_to_the_kernels(monkeypatch, options):
    monkeypatch.setattr(_kernels, "sgd_scalar", None)  # called: a TypeError
    ours = _scalar_training(jitgrad, options, np.float64, steps=10)
    torch = pytest.importorskip("torch")
    for a, b in zip(ours, _scalar_training(torch, options, np.float64, steps=10), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-13)


def test_scalar_path_takes_nothing_it_cannot_handle(monkeypatch):
    monkeypatch.setattr(_kernels, "sgd_scalar", None)
    w = jitgrad.tensor(1.0, requires_grad=True)
    v = jitgrad.tensor([1.0, 2.0], requires_grad=True)
    opt = optim.SGD([w, v], lr=0.5)
    (w * v).sum().backward()  # v's gradient is an array: the general path for both
    opt.step()
    assert w.item() == -0.5 and v.tolist() == [0.5, 1.5]
    opt = optim.SGD([w], lr=0.5)
    w.grad = jitgrad.tensor(np.float64(2.0))  # a gradient held as an array
    opt.step()
    assert w.item() == -1.5
    w.grad = jitgrad.tensor(2.0, dtype=jitgrad.float64)  # another dtype than w's
    opt.step()
    assert w.item() == -2.5


def test_scalar_step_is_in_place_with_versions_and_views():
    torch = pytest.importorskip("torch")
    for lib in (jitgrad, torch):
        base = lib.tensor([1.0, 2.0, 3.0])
        w = base[1]
        w.requires_grad_()
        opt = lib.optim.SGD([w], lr=0.25)
        (w * w).backward()
        pending = w * w  # saved w before the step
        opt.step()
        assert base.tolist() == [1.0, 1.0, 3.0] and w.item() == 1.0
        # written outside the graph, as under no_grad: the base records nothing
        assert not base.requires_grad and base.grad_fn is None and w.is_leaf
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            pending.backward()
        opt.zero_grad()
        (w * w).backward()
        assert w.grad.item() == 2.0


def test_scalar_step_of_a_view_leaves_nothing_pending():
    """Once the tensors of a step on a view die, no recorded entry is kept alive (a leaf
    the tape holds for its ``.grad`` keeps its base: had the base's write been recorded,
    it would pin the tape's generation). On a thread of its own: a fresh tape."""
    pending = []

    def train():
        base = jitgrad.tensor([1.0, 2.0, 3.0])
        w = base[1]
        w.requires_grad_()
        opt = optim.SGD([w], lr=0.25)
        (w * w).backward()
        opt.step()

    def scenario():
        train()
        gc.collect()
        pending.append(current_tape()._count_pending_alive())

    worker = threading.Thread(target=scenario)
    worker.start()
    worker.join()
    assert pending == [0]


def test_scalar_path_without_jit_matches():
    """``sgd_scalar`` runs as plain Python under NUMBA_DISABLE_JIT=1 (its fma exact through
    fractions) and gives the compiled kernel's parameters to the last bit."""
    ours = _without_jit("_scalar_training", "[float(a) for a in _scalar_training(jitgrad, "
                        "{'lr': 0.05, 'maximize': True}, np.float64, steps=20)]")
    expected = _scalar_training(jitgrad, {"lr": 0.05, "maximize": True}, np.float64, steps=20)
    assert ours == [float(a) for a in expected]
