"""``func.hvp`` of elementwise programs by generated code (jitgrad/kernels/elementwise_hvp.py):
bit for bit the second-order sweep's results, against torch and finite differences; the
programs it leaves to the sweep, the lookup of a recording seen before, a failed compile."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from op_specs import SPECS

import jitgrad as torch
from jitgrad import func
from jitgrad.kernels import elementwise_hvp
from jitgrad.ops.registry import BY_NAME, ELEMENTWISE

N = 2048  # above elementwise_hvp.MIN_SIZE


class _Spy:
    """Counts the generated code's answers (None: the second-order sweep took the call)."""

    def __init__(self, monkeypatch):
        self.generated = self.declined = 0
        original = elementwise_hvp.hessian_vector_product

        def spy(*args, **kwargs):
            result = original(*args, **kwargs)
            if result is None:
                self.declined += 1
            else:
                self.generated += 1
            return result

        monkeypatch.setattr(elementwise_hvp, "hessian_vector_product", spy)


def _as_list(value) -> list:
    return [np.asarray(v) for v in value] if isinstance(value, tuple) else [np.asarray(value)]


def sweep_hvp(monkeypatch, f, primals, tangents) -> list:
    """The second-order sweep's answer (the generated code switched off)."""
    with monkeypatch.context() as m:
        m.setattr(elementwise_hvp, "ENABLED", False)
        return _as_list(func.hvp(f, primals, tangents))


def generated_hvp(monkeypatch, f, primals, tangents) -> list:
    """The generated code's answer: the first call is the sweep's, the second writes and
    compiles the code, the third runs it (and must)."""
    for _ in range(2):
        func.hvp(f, primals, tangents)
    with monkeypatch.context() as m:
        spy = _Spy(m)
        result = _as_list(func.hvp(f, primals, tangents))
    assert spy.generated == 1, "the generated code did not take the call"
    return result


def assert_same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
        assert x.shape == y.shape and x.dtype == y.dtype


def _arrays(count: int, low: float, high: float, seed: int = 0, n: int = N) -> list:
    rng = np.random.default_rng(seed)
    return [rng.uniform(low, high, n) for _ in range(count)]


def w5(x):
    return (torch.sin(x) * x ** 2).sum()


def test_the_w5_function_equals_the_sweep_bit_for_bit(monkeypatch):
    x, v = _arrays(2, -2.0, 2.0)
    expected = sweep_hvp(monkeypatch, w5, (x,), (v,))
    assert_same(generated_hvp(monkeypatch, w5, (x,), (v,)), expected)
    closed = (2 * np.sin(x) + 4 * x * np.cos(x) - x ** 2 * np.sin(x)) * v
    np.testing.assert_allclose(expected[0], closed, rtol=1e-12, atol=1e-12)


def _elementwise_specs(arity: int) -> list:
    return [s for s in SPECS if s.op in BY_NAME and BY_NAME[s.op].kind == ELEMENTWISE
            and len(s.shapes) == arity and s.op != "where"]


def every_unary_op(x):
    total = x * 0.0
    for spec in _elementwise_specs(1):
        total = total + spec.fn(torch, x) * x
    return total.sum()


def every_binary_op(x, y):
    total = x * y
    for spec in _elementwise_specs(2):
        total = total + spec.fn(torch, x, y) * total
    return total.mean()


@pytest.mark.parametrize("f, arity", [(every_unary_op, 1), (every_binary_op, 2)])
def test_every_elementwise_op_equals_the_sweep_bit_for_bit(f, arity, monkeypatch):
    assert len(_elementwise_specs(1)) > 20 and len(_elementwise_specs(2)) >= 7
    # inside every op's domain, clear of relu's, abs's and clamp's kinks; x != y
    primals = tuple(_arrays(arity, 0.5, 0.85, seed=1))
    if arity == 2:
        primals = (primals[0], primals[1] + 0.4)
    tangents = tuple(_arrays(arity, -1.0, 1.0, seed=2))
    expected = sweep_hvp(monkeypatch, f, primals, tangents)
    assert_same(generated_hvp(monkeypatch, f, primals, tangents), expected)
    # and the sweep is right: finite differences of the gradient
    step = 1e-6
    nums = tuple(range(arity)) if arity > 1 else 0
    grad = func.grad(f, argnums=nums)
    plus = _as_list(grad(*[p + step * t for p, t in zip(primals, tangents)]))
    minus = _as_list(grad(*[p - step * t for p, t in zip(primals, tangents)]))
    for e, a, b in zip(expected, plus, minus):
        np.testing.assert_allclose(e, (a - b) / (2 * step), rtol=1e-5, atol=1e-7)


def _random_program(seed: int):
    """A program of random elementwise ops of the registry over two inputs, two reductions
    of random intermediates and a linear combination of them."""
    rng = np.random.default_rng(seed)
    unary, binary = _elementwise_specs(1), _elementwise_specs(2)
    plan = []
    for _ in range(8):
        if rng.random() < 0.5:
            plan.append(("u", unary[rng.integers(len(unary))], int(rng.integers(100))))
        else:
            plan.append(("b", binary[rng.integers(len(binary))], int(rng.integers(100)),
                         int(rng.integers(100))))
    picks = rng.integers(100, size=2)
    weight = float(rng.choice([0.5, 2.0, 1.7, -3.1]))

    def f(x, y):
        values = [x, y]
        for step in plan:
            if step[0] == "u":
                values.append(step[1].fn(torch, values[step[2] % len(values)]))
            else:
                values.append(step[1].fn(torch, values[step[2] % len(values)],
                                         values[step[3] % len(values)]))
        first = values[picks[0] % len(values)].sum()
        second = (values[-1] * values[picks[1] % len(values)]).mean()
        return first * weight + second - 1.0

    return f


@pytest.mark.parametrize("seed", range(8))
def test_random_programs_equal_the_sweep_bit_for_bit(seed, monkeypatch):
    f = _random_program(seed)
    primals = (_arrays(1, 0.5, 0.85, seed=20 + seed)[0], _arrays(1, 0.9, 1.25, seed=30)[0])
    tangents = tuple(_arrays(2, -1.0, 1.0, seed=40 + seed))
    with np.errstate(all="ignore"):
        expected = sweep_hvp(monkeypatch, f, primals, tangents)
        assert_same(generated_hvp(monkeypatch, f, primals, tangents), expected)


def test_against_torch(monkeypatch):
    real = pytest.importorskip("torch")

    def f(lib, x, y):
        return (lib.tanh(x * y) + lib.exp(-x ** 2) / (1.0 + y * y) + (x - y) ** 3).sum()

    x, y, u, w = _arrays(4, -1.0, 1.0, seed=5)
    ours = generated_hvp(monkeypatch, lambda a, b: f(torch, a, b), (x, y), (u, w))
    grad = real.func.grad(lambda a, b: f(real, a, b), argnums=(0, 1))
    _, theirs = real.func.jvp(grad, tuple(real.tensor(a) for a in (x, y)),
                              tuple(real.tensor(a) for a in (u, w)))
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-12, atol=1e-12)


def test_inputs_the_root_does_not_reach_and_tensor_inputs(monkeypatch):
    x, y, u, w = _arrays(4, -1.0, 1.0, seed=6)

    def f(a, b):
        return (torch.cos(a) * a).sum()

    expected = sweep_hvp(monkeypatch, f, (x, y), (u, w))
    got = generated_hvp(monkeypatch, f, (x, y), (u, w))
    assert_same(got, expected)
    np.testing.assert_array_equal(got[1], np.zeros(N))
    # Tensors in, Tensors out
    out = func.hvp(f, (torch.tensor(x), torch.tensor(y)), (torch.tensor(u), torch.tensor(w)))
    assert isinstance(out[0], torch.Tensor) and out[0].dtype == torch.float64
    np.testing.assert_array_equal(out[0].numpy(), expected[0])


def test_one_node_as_both_operands_a_2d_input_and_constants_that_change(monkeypatch):
    x, v = (a.reshape(32, 64) for a in _arrays(2, -1.5, 1.5, seed=7))
    for c in (2.0, 3.0, 0.7, 1.3):  # baked into the code, or read at run time
        def f(a, c=c):
            return (a * a * torch.sin(a) + a ** c * 1.7 + torch.exp(a * c)).sum()

        expected = sweep_hvp(monkeypatch, f, (np.abs(x) + 0.1,), (v,))
        got = generated_hvp(monkeypatch, f, (np.abs(x) + 0.1,), (v,))
        assert got[0].shape == (32, 64)
        assert_same(got, expected)


def test_a_recording_seen_before_with_other_values_and_directions(monkeypatch):
    x, v, x2, v2 = _arrays(4, -2.0, 2.0, seed=8)
    generated_hvp(monkeypatch, w5, (x,), (v,))
    with monkeypatch.context() as m:
        spy = _Spy(m)
        got = _as_list(func.hvp(w5, (x2,), (v2,)))
    assert spy.generated == 1
    assert_same(got, sweep_hvp(monkeypatch, w5, (x2,), (v2,)))


def test_nan_and_inf_inputs_equal_the_sweep(monkeypatch):
    x, v = _arrays(2, -2.0, 2.0, seed=9)
    x[:5] = [np.nan, np.inf, -np.inf, 0.0, -0.0]
    v[5] = np.nan

    def f(a):
        return (torch.sin(a) * torch.exp(-a * a) + torch.sqrt(a * a + 1.0)).sum()

    with np.errstate(all="ignore"):
        expected = sweep_hvp(monkeypatch, f, (x,), (v,))
        assert_same(generated_hvp(monkeypatch, f, (x,), (v,)), expected)


def _declines(monkeypatch, f, primals, tangents) -> list:
    for _ in range(2):
        func.hvp(f, primals, tangents)
    with monkeypatch.context() as m:
        spy = _Spy(m)
        result = _as_list(func.hvp(f, primals, tangents))
    assert spy.generated == 0
    return result


def test_programs_left_to_the_sweep_are_still_right(monkeypatch):
    x, v = _arrays(2, -1.0, 1.0, seed=10)
    scale = torch.tensor(1.5, dtype=torch.float64)
    cases = [
        lambda a: (a * scale).sum(),                              # a broadcast 0-d operand
        lambda a: (a[1:] * a[:-1]).sum(),                         # views
        lambda a: (a.reshape(32, 64) * a.reshape(32, 64)).sum(dim=0).sum(),  # along a dim
        lambda a: (a @ a) * 1.0,                                  # a matrix product
    ]
    for f in cases:
        expected = sweep_hvp(monkeypatch, f, (x,), (v,))
        assert_same(_declines(monkeypatch, f, (x,), (v,)), expected)
    # float32
    x32, v32 = x.astype(np.float32), v.astype(np.float32)
    expected = sweep_hvp(monkeypatch, w5, (x32,), (v32,))
    assert_same(_declines(monkeypatch, w5, (x32,), (v32,)), expected)
    # small arrays
    small = (x[:100],), (v[:100],)
    assert_same(_declines(monkeypatch, w5, *small), sweep_hvp(monkeypatch, w5, *small))


def test_a_condition_operand_and_a_reduction_to_one_value_along_a_dim(monkeypatch):
    x, v = _arrays(2, -1.0, 1.0, seed=15)

    def f(a):
        return torch.where(a > 0, a * a * a, torch.sin(a)).sum(dim=0)

    expected = sweep_hvp(monkeypatch, f, (x,), (v,))
    np.testing.assert_allclose(expected[0], np.where(x > 0, 6 * x, -np.sin(x)) * v, rtol=1e-12)
    assert_same(generated_hvp(monkeypatch, f, (x,), (v,)), expected)


def test_several_reductions_combined_by_one_element_ops(monkeypatch):
    x, v = _arrays(2, -1.5, 1.5, seed=16)
    lam = torch.tensor(0.3, dtype=torch.float64)  # a constant 0-d tensor

    def f(a):
        data = (torch.sin(a) * a).sum()
        reg = (a ** 2).mean()
        return data + torch.exp(lam) * reg * 0.5 - 3.0 + lam

    expected = sweep_hvp(monkeypatch, f, (x,), (v,))
    closed = (2 * np.cos(x) - x * np.sin(x) + np.exp(0.3) / N) * v
    np.testing.assert_allclose(expected[0], closed, rtol=1e-12, atol=1e-14)
    assert_same(generated_hvp(monkeypatch, f, (x,), (v,)), expected)


def test_a_one_element_input_and_an_array_input(monkeypatch):
    x, v = _arrays(2, -1.5, 1.5, seed=17)
    s, w = np.float64(0.7), np.float64(-1.3)

    def f(a, b):
        return (torch.cos(a) * a).sum() + b ** 3 * 2.0

    expected = sweep_hvp(monkeypatch, f, (x, s), (v, w))
    np.testing.assert_allclose(expected[1], 12.0 * 0.7 * -1.3, rtol=1e-14)
    got = generated_hvp(monkeypatch, f, (x, s), (v, w))
    assert_same(got, expected)
    assert got[1].shape == ()


def test_combining_steps_that_read_a_reduction_s_tangent_are_left_to_the_sweep(monkeypatch):
    x, v = _arrays(2, 0.2, 1.5, seed=18)
    cases = [
        lambda a: (a * a).sum() * torch.sin(a).sum(),    # a product of two reductions
        lambda a: torch.log((a * a).sum()),              # a function of one
        lambda a: (a * a).mean() ** 2,
    ]
    for f in cases:
        expected = sweep_hvp(monkeypatch, f, (x,), (v,))
        assert_same(_declines(monkeypatch, f, (x,), (v,)), expected)
    s, w = np.float64(0.7), np.float64(-1.3)

    def g(a, b):  # the one-element input's part reads the reduction's tangent
        return (a * a).sum() * b

    expected = sweep_hvp(monkeypatch, g, (x, s), (v, w))
    assert_same(_declines(monkeypatch, g, (x, s), (v, w)), expected)
    np.testing.assert_allclose(expected[1], 2.0 * np.dot(x, v), rtol=1e-12)


def test_a_closed_over_tensor_that_requires_grad_is_left_to_the_sweep(monkeypatch):
    x, v, w = _arrays(3, -1.0, 1.0, seed=11)
    weight = torch.tensor(w, requires_grad=True)

    def f(a):
        return (torch.sin(a) * weight).sum()

    out = func.hvp(f, (torch.tensor(x),), (torch.tensor(v),))
    np.testing.assert_allclose(out.detach().numpy(), -np.sin(x) * w * v, rtol=1e-12)


def test_a_value_modified_in_place_is_left_to_the_sweep(monkeypatch):
    x, v = _arrays(2, -1.0, 1.0, seed=12)

    def f(a):
        b = a * 2.0
        c = torch.exp(b)
        b.add_(1.0)  # exp's backward reads its output, not b: allowed
        return c.sum()

    expected = sweep_hvp(monkeypatch, f, (x,), (v,))
    np.testing.assert_allclose(expected[0], 4.0 * np.exp(2.0 * x) * v, rtol=1e-12)
    assert_same(_declines(monkeypatch, f, (x,), (v,)), expected)


def test_switched_off_by_the_environment_switch(monkeypatch):
    x, v = _arrays(2, -1.0, 1.0, seed=13)
    monkeypatch.setattr(elementwise_hvp, "ENABLED", False)
    assert_same(_declines(monkeypatch, w5, (x,), (v,)), sweep_hvp(monkeypatch, w5, (x,), (v,)))


def test_a_generated_function_that_fails_to_compile_warns_and_leaves_the_sweep(monkeypatch):
    from numba.core.errors import TypingError

    x, v = _arrays(2, -3.0, 3.0, seed=14)

    def f(a):
        return (torch.cos(a) * a * a * a).sum()

    expected = sweep_hvp(monkeypatch, f, (x,), (v,))
    generated_hvp(monkeypatch, f, (x,), (v,))
    cos, mul, total = BY_NAME["cos"].code, BY_NAME["mul"].code, BY_NAME["sum"].code
    plan = next(p for p in elementwise_hvp._PLANS.values() if callable(p.function)
                and [e[1] for e in p.shape[1]] == [cos, mul, mul, mul, total])

    def broken(*args):
        raise TypingError("a bug of the generator")

    monkeypatch.setattr(plan, "function", broken)
    with pytest.warns(RuntimeWarning, match="failed to compile"):
        assert_same(_as_list(func.hvp(f, (x,), (v,))), expected)
    assert plan.function is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_same(_declines(monkeypatch, f, (x,), (v,)), expected)


def test_a_generated_module_that_does_not_import_warns_and_leaves_the_sweep(monkeypatch):
    x, v = _arrays(2, -3.0, 3.0, seed=19)

    def f(a):
        return (torch.tanh(a) * a * a * a * a).sum()

    expected = sweep_hvp(monkeypatch, f, (x,), (v,))

    def broken(name, text, compile_now=True):
        raise SyntaxError("a bug of the generator")

    from jitgrad.kernels import generated

    monkeypatch.setattr(generated, "load_generated", broken)
    monkeypatch.setattr(elementwise_hvp, "_PLANS", {})  # (none loaded before)
    monkeypatch.setattr(elementwise_hvp, "_MEMO", {})
    with pytest.warns(RuntimeWarning, match="failed to compile"):
        assert_same(_as_list(func.hvp(f, (x,), (v,))), expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_same(_declines(monkeypatch, f, (x,), (v,)), expected)
