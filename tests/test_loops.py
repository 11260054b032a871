"""Loops of scalar programs on compiled tapes (jitgrad/kernels/loops.py): found on the tape,
replayed by generated Numba code, equal to the interpreter's results to the last bit, and to
eager autograd."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import jitgrad as torch
from jitgrad.bench import w7_rosenbrock_loop
from jitgrad.kernels import generated, loops
from jitgrad.kernels.layout import H_CODE_SHIFT, TAG_GENERAL


def rosenbrock(x):
    return w7_rosenbrock_loop(torch, x)


def chain(x0, a):
    x = x0
    for _ in range(300):
        x = torch.sin(x) * a + x * 0.5
    return x


def weighted(x):
    """Constants that change from one iteration to the next (read per iteration)."""
    total = x[0] * 0.0
    for i in range(x.shape[0]):
        total = total + (x[i] - 0.01 * i) ** 2 * (i + 1.0)
    return total


def kept_values(x):
    """Values of the loop read after it (written to the arena by the generated code)."""
    ys, y = [], x[0]
    for i in range(1, x.shape[0]):
        y = torch.tanh(y * 0.9 + x[i])
        ys.append(y)
    return torch.stack(ys[::7]).sum() + ys[-1] * 2.0 + ys[len(ys) // 2].exp()


def two_loops(x):
    """Two loops of different bodies: the plan runs them from Python, one call each."""
    total = x[0] * 0.0
    for i in range(x.shape[0]):
        total = total + x[i] * x[i]
    for i in range(x.shape[0] - 1):
        total = total * 0.99 + torch.cos(x[i + 1] - x[i])
    return total


def two_back(x):
    """Reads a value from two iterations back: generated code for a body of two iterations."""
    a, b = x[0], x[1]
    for i in range(2, x.shape[0]):
        a, b = b, a * 0.5 + torch.sin(b) * x[i]
    return b


def with_parameter(x, w):
    total = x[0] * 0.0
    for i in range(x.shape[0]):
        total = total + torch.exp(-(x[i] * w) ** 2)
    return total


def branching(x):
    """Python control flow on traced values: guards inside the loop."""
    total = x[0] * 0.0
    for i in range(x.shape[0]):
        if x[i].item() > 0:
            total = total + x[i] * x[i]
        else:
            total = total - x[i]
    return total


def inputs(n: int, dtype=np.float64, count: int = 4, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1.5, 1.5, n).astype(dtype) for _ in range(count)]


def without_loops(f, *args, method="value_and_grad", extra=()):
    """The same replay by the interpreter alone (``extra``: arguments of the method after
    the inputs, as vjp's cotangent)."""
    previous = os.environ.get("JITGRAD_LOOPS")
    os.environ["JITGRAD_LOOPS"] = "0"
    try:
        tape = torch.compile(f, *args)
        getattr(tape, method)(*args, *extra)
        return getattr(tape, method)(*args, *extra)
    finally:
        if previous is None:
            del os.environ["JITGRAD_LOOPS"]
        else:
            os.environ["JITGRAD_LOOPS"] = previous


def warmed(f, *example):
    """A compiled tape whose generated code is ready (it compiles on the second replay)."""
    tape = torch.compile(f, *example)
    for _ in range(3):
        tape.value_and_grad(*example)
    return tape


def plan_of(tape):
    return tape._variants[1][0].program.loop_plan()


def assert_same(a, b):
    """Equal to the last bit (a zero may differ in sign), NaN where NaN; tuples item by
    item."""
    if isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
        return
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def eager_value_and_grad(f, *arrays):
    leaves = [torch.tensor(a, requires_grad=True) for a in arrays]
    out = f(*leaves)
    out.backward()
    return out.item(), [leaf.grad.numpy() for leaf in leaves]


# -- the generated code gives the interpreter's results ----------------------------------------
@pytest.mark.parametrize("f", [rosenbrock, weighted, kept_values])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_generated_loops_equal_the_interpreter_bit_for_bit(f, dtype):
    xs = inputs(200, dtype)
    tape = warmed(f, xs[0])
    plan = plan_of(tape)
    assert plan is not None and plan.runs
    for x in xs[1:]:
        value, grad = tape.value_and_grad(x)
        assert value.dtype == dtype and grad.dtype == dtype
        ref_value, ref_grad = without_loops(f, x)
        if dtype == np.float64:
            assert_same(value, ref_value)
            assert_same(grad, ref_grad)
        else:  # rounded to float32 after every op as the arena is; the last bit may differ
            np.testing.assert_allclose(value, ref_value, rtol=1e-6)
            np.testing.assert_allclose(grad, ref_grad, rtol=1e-6,
                                       atol=1e-6 * np.abs(ref_grad).max())
        eager_value, (eager_grad,) = eager_value_and_grad(f, x)
        tolerance = 1e-4 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(value, eager_value, rtol=tolerance)
        np.testing.assert_allclose(grad, eager_grad, rtol=tolerance, atol=tolerance)


def test_the_chain_of_0d_inputs_runs_generated_code():
    x0, a = np.array(0.4), np.array(0.8)
    tape = warmed(chain, x0, a)
    assert plan_of(tape).runs[0].count > 100
    for k in range(3):
        args = (np.array(0.3 + 0.1 * k), np.array(0.9 - 0.05 * k))
        value, grads = tape.value_and_grad(*args)
        ref_value, ref_grads = without_loops(chain, *args)
        assert_same(value, ref_value)
        assert_same(grads, ref_grads)
        assert np.ndim(value) == 0 and all(g.shape == () for g in grads)


def test_finite_differences_agree_with_the_generated_gradient():
    x = inputs(60)[1]
    tape = warmed(rosenbrock, x)
    _, grad = tape.value_and_grad(x)
    eps = 1e-6
    for i in (0, 7, 31, 59):
        step = np.zeros_like(x)
        step[i] = eps
        numeric = (tape(x + step) - tape(x - step)) / (2 * eps)
        np.testing.assert_allclose(grad[i], numeric, rtol=1e-6, atol=1e-6)


def test_two_loop_bodies_run_from_python_segment_by_segment():
    xs = inputs(200)
    tape = warmed(two_loops, xs[0])
    plan = plan_of(tape)
    assert len({run.body for run in plan.runs}) == 2 and plan.driver is None
    for x in xs[1:]:
        assert_same(tape.value_and_grad(x), without_loops(two_loops, x))
        assert_same(tape(x), without_loops(two_loops, x, method="__call__"))
        assert_same(tape.vjp(x, np.array(2.5)), without_loops(two_loops, x, method="vjp",
                                                              extra=(np.array(2.5),)))


def three_back(x):
    a, b, c = x[0], x[1], x[2]
    for i in range(3, x.shape[0]):
        a, b, c = b, c, a * 0.3 + b * x[i] - torch.cos(c)
    return c


def test_values_from_two_and_three_iterations_back_take_a_longer_body():
    for f in (two_back, three_back):
        xs = inputs(150)
        tape = warmed(f, xs[0])
        plan = plan_of(tape)
        (run,) = plan.runs
        single = 5 if f is two_back else 6  # entries one iteration of the loop records
        assert run.period % single == 0
        if f is three_back:  # (two_back's first op reads the value: one back, rotated)
            assert run.period > single
        for x in xs[1:]:
            assert_same(tape.value_and_grad(x), without_loops(f, x))


def test_a_value_from_two_iterations_back():
    xs = inputs(100)
    tape = warmed(two_back, xs[0])
    for x in xs[1:]:
        assert_same(tape.value_and_grad(x), without_loops(two_back, x))
        eager_value, (eager_grad,) = eager_value_and_grad(two_back, x)
        np.testing.assert_allclose(tape.grad(x), eager_grad, rtol=1e-12, atol=1e-14)


def test_a_parameter_read_in_every_iteration():
    xs = inputs(100)
    w = np.array(1.3)
    tape = torch.compile(with_parameter, xs[0], w, parameters=[1])
    for _ in range(3):
        tape.value_and_grad(xs[0], w)
    assert plan_of(tape).runs
    for k, x in enumerate(xs[1:]):
        w = np.array(0.7 + 0.2 * k)
        value, grad = tape.value_and_grad(x, w)
        leaves = [torch.tensor(x, requires_grad=True), torch.tensor(w)]
        out = with_parameter(*leaves)
        out.backward()
        np.testing.assert_allclose(value, out.item(), rtol=1e-12)
        np.testing.assert_allclose(grad, leaves[0].grad.numpy(), rtol=1e-12, atol=1e-15)


def test_both_inputs_differentiated_accumulate_a_loop_invariant_adjoint():
    xs = inputs(100)
    w = np.array(1.3)
    tape = warmed(with_parameter, xs[0], w)
    for x in xs[1:]:
        value, (gx, gw) = tape.value_and_grad(x, w)
        ref_value, (rx, rw) = without_loops(with_parameter, x, w)
        assert_same(value, ref_value)
        assert_same(gx, rx)
        assert_same(gw, rw)


def test_guards_inside_a_loop_keep_it_with_the_interpreter_and_record_again():
    x = np.linspace(0.1, 1.0, 80)
    tape = warmed(branching, x)
    flipped = x.copy()
    flipped[::3] *= -1.0
    value, grad = tape.value_and_grad(flipped)
    expected = np.where(flipped > 0, 2 * flipped, -1.0)
    np.testing.assert_allclose(grad, expected)
    assert tape.recordings == 2
    np.testing.assert_allclose(value, np.where(flipped > 0, flipped ** 2, -flipped).sum())


def test_nan_inputs_propagate():
    x = inputs(50)[0]
    tape = warmed(rosenbrock, x)
    x[10] = np.nan
    value, grad = tape.value_and_grad(x)
    assert np.isnan(value)
    assert np.isnan(grad[9:12]).all() and np.isfinite(grad[:8]).all()


def test_forward_mode_after_a_generated_replay_sees_every_value():
    """The generated code leaves the loop's values unwritten; jvp and hvp recompute them."""
    xs = inputs(60)
    tape = warmed(rosenbrock, xs[0])
    v = inputs(60, seed=1)[0]
    for x in xs[1:]:
        tape.value_and_grad(x)
        ref_tape = torch.compile(rosenbrock, x)
        np.testing.assert_allclose(tape.jvp(x, v)[1], ref_tape.jvp(x, v)[1], rtol=1e-12)
        tape.value_and_grad(x)
        np.testing.assert_allclose(tape.hvp(x, v), ref_tape.hvp(x, v), rtol=1e-12)


def test_batch_replay_of_a_program_with_loops():
    xs = np.stack(inputs(40, count=3))
    tape = warmed(rosenbrock, xs[0])
    values, grads = tape.value_and_grad(xs)
    for b in range(3):
        value, grad = without_loops(rosenbrock, xs[b])
        np.testing.assert_allclose(values[b], value, rtol=1e-14)
        np.testing.assert_allclose(grads[b], grad, rtol=1e-14)


def backwards(x):
    """A loop walking its input from the end (the reads step by -1)."""
    total = x[0] * 0.0
    for i in range(x.shape[0] - 1, 0, -1):
        total = total * 0.5 + x[i] * torch.exp(x[i - 1])
    return total


def two_outputs(x):
    ys, y = [], x[0]
    for i in range(1, x.shape[0]):
        y = y * 0.8 + torch.sin(x[i])
        ys.append(y)
    return y, torch.stack(ys[-5:])


def test_a_loop_stepping_backwards():
    xs = inputs(150)
    tape = warmed(backwards, xs[0])
    assert plan_of(tape).runs[0].offsets[:, 3].min() < 0
    for x in xs[1:]:
        assert_same(tape.value_and_grad(x), without_loops(backwards, x))


def test_vjp_of_several_outputs_through_a_loop():
    xs = inputs(200)
    tape = torch.compile(two_outputs, xs[0])
    u = (np.array(1.5), np.arange(5.0))
    for _ in range(3):
        tape.vjp(xs[0], u)
    assert tape._variants[1][0].plan is not None  # the Python-run plan served the vjp
    for x in xs[1:]:
        assert_same(tape.vjp(x, u), without_loops(two_outputs, x, method="vjp", extra=(u,)))
        outputs = tape(x)
        reference = without_loops(two_outputs, x, method="__call__")
        assert_same(outputs[0], reference[0])
        assert_same(outputs[1], reference[1])


def test_a_saved_and_loaded_tape_replays_its_loops(tmp_path):
    xs = inputs(100)
    tape = warmed(rosenbrock, xs[0])
    tape.save(tmp_path / "tape.npz")
    loaded = torch.load(tmp_path / "tape.npz")
    for _ in range(3):
        loaded.value_and_grad(xs[1])
    assert plan_of(loaded).runs
    assert_same(loaded.value_and_grad(xs[2]), tape.value_and_grad(xs[2]))


# every elementwise op of the registry in loop bodies (not the selections: their recomputed
# masks are auxiliary ops, which keep a loop with the interpreter)
_SELECTIONS = {"relu", "abs", "clamp", "maximum", "minimum", "where"}


def _elementwise_specs(arity: int) -> list:
    from op_specs import SPECS

    from jitgrad.ops.registry import BY_NAME, ELEMENTWISE

    return [spec for spec in SPECS if spec.op in BY_NAME and
            BY_NAME[spec.op].kind == ELEMENTWISE and spec.op not in _SELECTIONS and
            len(spec.shapes) == arity]


def _unary_ops(x, half):
    # half of the unary ops each: a body of all of them would pass MAX_PERIOD (64 entries)
    specs = _elementwise_specs(1)
    specs = specs[:len(specs) // 2] if half == 0 else specs[len(specs) // 2:]
    total = x[0] * 0.0
    for i in range(x.shape[0]):
        for spec in specs:
            total = total + spec.fn(torch, x[i])
    return total


def first_unary_ops(x):
    return _unary_ops(x, 0)


def other_unary_ops(x):
    return _unary_ops(x, 1)


def every_binary_op(x, y):
    total = x[0] * 0.0
    for i in range(x.shape[0]):
        for spec in _elementwise_specs(2):
            total = total + spec.fn(torch, x[i], y[i])
    return total


def test_every_elementwise_op_in_a_generated_loop_body():
    assert len(_elementwise_specs(1)) > 15 and len(_elementwise_specs(2)) >= 4
    rng = np.random.default_rng(3)
    x, y = (rng.uniform(0.5, 0.95, 40) for _ in range(2))  # inside every op's domain
    for f, args in ((first_unary_ops, (x,)), (other_unary_ops, (x,)),
                    (every_binary_op, (x, y))):
        tape = warmed(f, *args)
        plan = plan_of(tape)
        assert plan is not None, f.__name__
        assert plan.runs[0].count >= 30
        moved = tuple(a[::-1].copy() for a in args)
        assert_same(tape.value_and_grad(*moved), without_loops(f, *moved))
        eager_value, eager_grads = eager_value_and_grad(f, *moved)
        value, grads = tape.value_and_grad(*moved)
        np.testing.assert_allclose(value, eager_value, rtol=1e-12)
        for g, e in zip(grads if isinstance(grads, tuple) else (grads,), eager_grads):
            np.testing.assert_allclose(g, e, rtol=1e-12)


# -- finding runs ---------------------------------------------------------------------------------
def _periodic(prefix: int, period: int, count: int, tail: int) -> np.ndarray:
    """Instruction rows: ``prefix`` odd entries, a loop, ``tail`` odd entries."""
    rows = []
    for e in range(prefix):
        rows.append([1000 + e, e, -1, -1, -1])
    for it in range(count):
        for j in range(period):
            rows.append([(j + 3) << H_CODE_SHIFT, 100 + it * period + j, it, 50, -1])
    for e in range(tail):
        rows.append([2000 + e, 90000 + e, 0, -1, -1])
    return np.array(rows, np.int64)


def test_find_runs_finds_the_period_and_the_iterations():
    inst = _periodic(prefix=5, period=6, count=200, tail=4)
    assert loops.find_runs(inst, np.zeros(0, np.int64)) == [(5, 6, 200)]


def test_find_runs_stops_at_an_auxiliary_op():
    inst = _periodic(prefix=2, period=4, count=300, tail=0)
    runs = loops.find_runs(inst, np.array([2 + 4 * 150 + 1]))
    assert runs[0] == (2, 4, 150)
    assert all(start > 2 + 4 * 150 for start, _, _ in runs[1:])


def test_find_runs_ignores_short_loops_and_general_entries():
    assert loops.find_runs(_periodic(0, 4, 20, 0), np.zeros(0, np.int64)) == []
    inst = _periodic(0, 4, 300, 0)
    inst[:, 0] |= TAG_GENERAL
    assert loops.find_runs(inst, np.zeros(0, np.int64)) == []


# -- the generated modules ------------------------------------------------------------------------
def test_generated_modules_go_to_the_configured_cache_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("JITGRAD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(generated, "_LOADED", {})
    x = inputs(60)[0]
    warmed(rosenbrock, x)
    written = list((tmp_path / "cache").glob("loop_*.py"))
    assert len(written) == 1
    assert "def forward" in written[0].read_text() and "def reverse" in written[0].read_text()


def test_an_unwritable_cache_directory_falls_back_to_a_temporary_one(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("JITGRAD_CACHE_DIR", str(blocker / "cache"))
    monkeypatch.setattr(generated, "_LOADED", {})
    x = inputs(60)[1]
    tape = warmed(rosenbrock, x)
    assert plan_of(tape).runs[0].kernels is not None
    assert_same(tape.value_and_grad(x), without_loops(rosenbrock, x))


@pytest.mark.parametrize("broken", ["forward", "reverse", "value_and_grad"])
def test_generated_code_that_fails_to_compile_leaves_the_interpreter(broken, tmp_path,
                                                                     monkeypatch):
    """A generator bug shows as a warning, never as a Numba traceback or a wrong number."""
    monkeypatch.setenv("JITGRAD_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(generated, "_LOADED", {})
    original = loops.source

    def broken_source(body):
        text = original(body)
        start = text.index(f"def {broken}(")
        end = text.index(":\n", start) + 2
        return text[:end] + "    undefined_name_here()\n" + text[end:]

    monkeypatch.setattr(loops, "source", broken_source)
    xs = inputs(60)
    tape = torch.compile(rosenbrock, xs[0])
    with pytest.warns(RuntimeWarning, match="failed to compile"):
        for x in xs[1:]:
            assert_same(tape.value_and_grad(x), without_loops(rosenbrock, x))
    assert plan_of(tape).failed
    assert_same(tape.value_and_grad(xs[0]), without_loops(rosenbrock, xs[0]))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_one_call_driver_equals_the_interpreter(dtype):
    xs = inputs(150, dtype)
    tape = warmed(rosenbrock, xs[0])
    assert plan_of(tape).light
    assert tape._variants[1][0].generated  # the one-call path ran
    for x in xs[1:]:
        value, grad = tape.value_and_grad(x)
        ref_value, ref_grad = without_loops(rosenbrock, x)
        if dtype == np.float64:
            assert_same(value, ref_value)
            assert_same(grad, ref_grad)
        else:
            np.testing.assert_allclose(grad, ref_grad, rtol=1e-6,
                                       atol=1e-6 * np.abs(ref_grad).max())


def array_around(x):
    total = (x * x).sum() * 0.0  # an array op before the loop
    for i in range(x.shape[0]):
        total = total + torch.sin(x[i]) * x[i]
    return total


def test_array_ops_around_a_loop_run_the_segments_from_python():
    xs = inputs(150)
    tape = warmed(array_around, xs[0])
    plan = plan_of(tape)
    assert plan.runs and not plan.light and plan.driver is None
    for x in xs[1:]:
        assert_same(tape.value_and_grad(x), without_loops(array_around, x))


def test_jitgrad_loops_0_turns_the_generated_code_off(monkeypatch):
    monkeypatch.setenv("JITGRAD_LOOPS", "0")
    x = inputs(60)[0]
    tape = warmed(rosenbrock, x)
    assert plan_of(tape) is None and not tape._variants[1][0].generated


_PLAIN = """
import numpy as np, jitgrad as torch
from jitgrad.bench import w7_rosenbrock_loop
x = np.linspace(-1.0, 1.2, 70)
tape = torch.compile(lambda x: w7_rosenbrock_loop(torch, x), x)
for _ in range(3):
    value, grad = tape.value_and_grad(x)
assert tape._variants[1][0].generated
print(repr([float(value), *grad.tolist()]))
"""


def test_generated_code_runs_as_plain_python(tmp_path):
    """NUMBA_DISABLE_JIT=1 runs the generated code as Python (tracebacks, coverage)."""
    env = dict(os.environ, JITGRAD_CACHE_DIR=str(tmp_path))
    jitted = subprocess.run([sys.executable, "-c", _PLAIN], capture_output=True, text=True,
                            env=env)
    assert jitted.returncode == 0, jitted.stderr
    plain = subprocess.run([sys.executable, "-c", _PLAIN], capture_output=True, text=True,
                           env=dict(env, NUMBA_DISABLE_JIT="1"))
    assert plain.returncode == 0, plain.stderr
    assert eval(plain.stdout) == eval(jitted.stdout)
