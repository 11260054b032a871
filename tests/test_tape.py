"""The flat tape: one entry per op, lifetimes that follow liveness, generated kernels that
match the registry, kernels that also run as plain Python."""
from __future__ import annotations

import os
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest

import jitgrad as torch
from jitgrad.tape import current_tape

ROOT = Path(__file__).resolve().parents[1]


def test_each_recorded_op_adds_one_entry():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2
    tape = current_tape()
    before = tape.n_entries
    z = torch.sin(y)
    assert tape.n_entries == before + 1
    w = z + y
    assert tape.n_entries == before + 2
    with torch.no_grad():
        w * 3
    assert tape.n_entries == before + 2
    del w


_CONSTANT_MEMORY = """
import jitgrad as torch
from jitgrad.tape import current_tape
x = torch.tensor(3.0)
w = torch.tensor(4.0, requires_grad=True)
b = torch.tensor(5.0, requires_grad=True)
optimizer = torch.optim.SGD([w, b], lr=0.001)
tape = current_tape()
sizes = []
for step in range(STEPS):
    optimizer.zero_grad()
    loss = (w * x + b - 18.0) ** 2  # the previous step's loss is still alive here
    loss.backward()
    optimizer.step()
    if step % (STEPS // 4) == STEPS // 4 - 1:
        sizes.append((tape.n_entries, tape.arenas[0].shape[0], tape.arenas[1].shape[0]))
print(sizes)
"""


@pytest.mark.parametrize("steps", [20000])
def test_training_loop_runs_in_constant_memory(steps):
    # a fresh process: a tensor that another test keeps alive on a pending entry would
    # (rightly) keep this thread's tape from restarting
    code = _CONSTANT_MEMORY.replace("STEPS", str(steps))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    sizes = eval(out)
    # bounded by the restart threshold, and no buffer grew after the first sample
    assert max(s[0] for s in sizes) <= 4200
    assert len({s[1:] for s in sizes}) == 1


def test_array_training_loop_reuses_arenas():
    torch.manual_seed(0)
    weight = torch.randn(8, 4, requires_grad=True)
    data = torch.randn(16, 8)
    tape = current_tape()

    def buffers():
        return [*tape.arenas, *(a for s in tape.pools.arenas for a in s)]

    for step in range(3000):
        loss = torch.tanh(data @ weight).pow(2).mean()
        loss.backward()
        with torch.no_grad():
            weight -= 0.1 * weight.grad
        weight.grad = None
        if step == 1500:
            # weak references: ids of freed arrays are reused, and a strong reference
            # would itself keep a spare from being reused
            warm = [weakref.ref(a) for a in buffers()]
    # generations swap between spare arenas: no fresh buffers
    assert all(any(a is ref() for ref in warm) for a in buffers())


def test_forgotten_no_grad_inference_does_not_grow():
    w = torch.tensor(2.0, requires_grad=True)
    tape = current_tape()
    for _ in range(100000):
        _ = torch.sin(w) * 2.0  # results die at once
    assert tape.n_entries < 40000


def test_kept_result_does_not_pin_old_steps():
    w = torch.tensor(1.0, requires_grad=True)
    kept = []
    for _ in range(3000):
        loss = (w * 3.0) ** 2
        loss.backward()
        kept.append(loss)  # alive, but its graph is freed
    assert current_tape().n_entries <= 4200
    assert kept[0].item() == 9.0
    assert kept[-1].grad_fn is not None  # grad_fn still names the op


def test_pending_graph_survives_other_work():
    a = torch.tensor(2.0, requires_grad=True)
    pending = a * a
    for _ in range(3):
        b = torch.tensor(1.0, requires_grad=True)
        (b * 5).backward()
    pending.backward()
    assert a.grad.item() == 4.0


def test_old_tensor_data_survives_new_generations():
    x = torch.ones(1000, requires_grad=True)
    kept = (x * 3).sum()
    kept.backward()
    values = x * 7  # new generation
    values.sum().backward()
    assert kept.item() == 3000.0
    assert float(values.detach()[0]) == 7.0


def test_version_counter():
    x = torch.ones(3)
    assert x._version == 0
    x.add_(1)
    x.mul_(2)
    assert x._version == 2
    y = x.detach()
    y.zero_()
    assert x._version == 3 and x.sum().item() == 0.0


def test_generated_kernels_match_the_registry():
    result = subprocess.run([sys.executable, "-m", "jitgrad.kernels.generate", "--check"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_compiles_nothing():
    code = "import sys, jitgrad; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


_FREEZE_PROBE = """
import gc, sys, weakref
import jitgrad as torch
gc.disable()  # only jitgrad's own collection may free the cycle below

class Cycle:
    pass

garbage = Cycle()
garbage.me = garbage  # cyclic garbage made before numba is loaded
dead = weakref.ref(garbage)
del garbage
x = torch.ones(2, requires_grad=True)
(x * 3).sum().backward()  # loads numba
print(gc.get_freeze_count() > 0, dead() is None, x.grad.tolist())
"""


@pytest.mark.parametrize("setting, frozen", [("1", "True"), ("0", "False")])
def test_loading_numba_freezes_its_objects_and_no_garbage(setting, frozen):
    """numba's objects leave the cyclic collector's generations once it is loaded (exit
    and full collections stop traversing them); garbage made before is collected first,
    never frozen; JITGRAD_GC_FREEZE=0 turns it off."""
    env = dict(os.environ, JITGRAD_GC_FREEZE=setting)
    out = subprocess.run([sys.executable, "-c", _FREEZE_PROBE], capture_output=True,
                         text=True, check=True, env=env)
    is_frozen, collected, *grad = out.stdout.split()
    assert is_frozen == frozen and grad == ["[3.0,", "3.0]"], out.stdout
    if setting == "1":
        assert collected == "True", "garbage made before numba was loaded got frozen"

def test_every_kernel_is_cached_and_compiled_one_way():
    """Kernels are made with jitgrad.kernels.jit (cache=True, NumPy error model), never
    with parallel=True or object mode."""
    offenders = []
    for path in (ROOT / "jitgrad").rglob("*.py"):
        text = path.read_text()
        if path.name == "jit.py":
            continue
        if path.name == "bench.py":  # the source of the startup probe of Numba alone
            text = text.replace('"@numba.njit(cache=True)\\n"', "")
        for bad in ("@njit", "@jit(", "@numba.njit", "parallel=True", "forceobj"):
            if bad in text:
                offenders.append(f"{path.relative_to(ROOT)}: {bad}")
    assert not offenders, offenders


_PYTHON_KERNELS = """
import numpy as np, jitgrad as torch
torch.manual_seed(0)
a = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
b = torch.randn(4, dtype=torch.float64, requires_grad=True)
y = (torch.sin(a) * b + a[1:, ::2].sum() + (a @ b).max() + torch.cat([a, a], 0).norm()
     + torch.logsumexp(a, 1).mean() + a.T[0].prod()).sum()
y.backward()
print(repr(np.concatenate([a.grad.numpy().ravel(), b.grad.numpy()]).tolist()))
"""


def test_kernels_run_as_plain_python():
    """NUMBA_DISABLE_JIT=1 runs the same kernel code as Python (tracebacks, coverage)."""
    jitted = subprocess.run([sys.executable, "-c", _PYTHON_KERNELS], capture_output=True,
                            text=True, check=True).stdout
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    plain = subprocess.run([sys.executable, "-c", _PYTHON_KERNELS], capture_output=True,
                           text=True, env=env)
    assert plain.returncode == 0, plain.stderr
    np.testing.assert_allclose(eval(plain.stdout), eval(jitted), rtol=1e-12)


@pytest.mark.parametrize("n", [1, 7])
def test_threads_have_their_own_tape(n):
    import threading

    results = []

    def work(k):
        x = torch.tensor(float(k), requires_grad=True)
        (x * x).backward()
        results.append((k, x.grad.item()))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [(k, 2.0 * k) for k in range(n)]


def test_a_stale_view_of_the_tables_does_not_break_recording():
    x = torch.tensor(1.0, requires_grad=True)
    (x * 2).backward()
    stale = current_tape().tables()  # e.g. kept alive by a traceback
    y = torch.ones(3, requires_grad=True)
    z = (y * x).sum() * 2.0
    z.backward()
    assert y.grad.tolist() == [2.0, 2.0, 2.0]
    del stale


@pytest.mark.parametrize("pinned", ["both", "entries", "nodes"])
def test_a_stale_view_before_a_scalar_op_keeps_every_row(pinned):
    # the 0-d path appends its rows inline: a buffer that cannot grow sends it to fresh
    # copies cut back to the rows before this op, whichever buffer was pinned
    x = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    a = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    y = torch.sin(x) * a
    tape = current_tape()
    entries, nodes = np.frombuffer(tape.entries, np.int64), np.frombuffer(tape.nodes, np.int64)
    stale = {"both": (entries, nodes), "entries": (entries,), "nodes": (nodes,)}[pinned]
    del entries, nodes
    before = tape.n_entries
    z = y * 2.0 + x
    assert tape.n_entries == before + 2
    w = torch.exp(z) + torch.ones(3, dtype=torch.float64)  # an array op after
    w.sum().backward()
    expected = 3 * np.exp(np.sin(0.5) * 0.9 * 2 + 0.5)
    assert x.grad.item() == pytest.approx(expected * (np.cos(0.5) * 0.9 * 2 + 1), rel=1e-14)
    assert a.grad.item() == pytest.approx(expected * np.sin(0.5) * 2, rel=1e-14)
    del stale


def test_large_gradients_reuse_dropped_memory_and_never_kept_memory():
    x = torch.tensor(np.linspace(-1.0, 1.0, 1 << 17), requires_grad=True)
    (x * x).sum().backward()
    kept = x.grad
    kept_copy = kept.numpy().copy()
    x.grad = None
    (x * 3.0).sum().backward()  # `kept` is alive: its memory must not be reused
    np.testing.assert_array_equal(kept.numpy(), kept_copy)
    np.testing.assert_array_equal(x.grad.numpy(), 3.0)
    first = x.grad.numpy()
    pointer = first.__array_interface__["data"][0]
    del first
    x.grad = None  # dropped: the next gradient may take its memory
    (x * 5.0).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), 5.0)
    assert x.grad.numpy().__array_interface__["data"][0] == pointer


_ATTRIBUTE_LOADS = """
import dis, io, sys
import jitgrad as torch
from jitgrad.tape import Tape, current_tape


class Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g


tape = current_tape()
w = torch.tensor(0.5, requires_grad=True)
for _ in range(2):
    torch.sin(w) * 2.0                                  # dies at once
    kept = w * 3.0                                      # pending, never differentiated
    tape.next_check = tape.n_entries                    # the next op checks liveness
    kept = kept * 3.0                                   # and compacts the tape
assert tape.generation == 2 and tape.n_entries == 2
x = torch.linspace(-1.0, 1.0, 2048, dtype=torch.float64, requires_grad=True)
(torch.sin(x) * x).sum().backward()                      # the one-kernel backward
(g,) = torch.autograd.grad((x ** 3).sum(), x, create_graph=True)
g.sum().backward()                                      # create_graph, double backward
torch.func.hvp(lambda v: (torch.sin(v) * v ** 2).sum(), (x.detach(),), (x.detach(),))
Square.apply(x).sum().backward()                        # a Function
h = x.register_hook(lambda grad: grad * 2)
(x * 3.0).sum().backward()                              # a hook
h.remove()
y = torch.tensor(0.5, requires_grad=True)
(torch.sin(y) * y).backward()                           # 0-d


def probe(tape):
    return tape.n_entries


tape = current_tape()
for _ in range(100):
    probe(tape)
text = io.StringIO()
dis.dis(probe, adaptive=True, file=text)
loads = [line.split()[1] for line in text.getvalue().splitlines() if "n_entries" in line]
print(loads[0])
print(sorted(set(vars(tape)) ^ set(vars(Tape()))))
"""


def test_the_tape_keeps_fast_attribute_loads():
    # every op reads and writes a dozen attributes of the tape: they must stay the
    # interpreter's specialized loads (attributes set outside Tape.__init__, or a lookup
    # in the instance's __dict__, turn each into a dictionary lookup: 10% of W3's time)
    import dis

    if not hasattr(dis, "_specialized_instructions") or sys.implementation.name != "cpython":
        pytest.skip("an interpreter without specialized attribute loads")
    run = subprocess.run([sys.executable, "-c", _ATTRIBUTE_LOADS], capture_output=True,
                         text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr
    load, extra = run.stdout.split("\n")[:2]
    assert load == "LOAD_ATTR_INSTANCE_VALUE"
    assert extra == "[]"  # no attribute set on the tape from outside


def test_kernel_caches_are_dropped_when_the_sources_change(tmp_path):
    # Numba's cache of a sweep does not notice a change in the generated steps it inlines
    # from another module: the package's cache files go when the sources' digest changes
    from jitgrad.kernels import generated, jit

    cache = tmp_path / "kernels" / "__pycache__"
    other = tmp_path / "optim" / "__pycache__"
    cache.mkdir(parents=True)
    other.mkdir(parents=True)
    files = [cache / "sweep.sweep_tape-1.py311.nbi", cache / "sweep.sweep_tape-1.py311.1.nbc",
             other / "_kernels.step-3.py311.nbi"]
    for path in files:
        path.write_bytes(b"old")
    (cache / "sweep.cpython-311.pyc").write_bytes(b"bytecode")
    (cache / jit._STAMP).write_text("digest of other sources")
    assert jit.drop_stale_caches(tmp_path)
    assert not any(path.exists() for path in files)
    assert (cache / "sweep.cpython-311.pyc").exists()  # Python's own cache stays
    assert (cache / jit._STAMP).read_text() == generated._salt()
    files[0].write_bytes(b"new")
    assert not jit.drop_stale_caches(tmp_path)  # the same sources: kept
    assert files[0].exists()
    # the package's own stamp was written when numba was loaded
    stamp = Path(jit.__file__).parent / "__pycache__" / jit._STAMP
    assert stamp.read_text() == generated._salt()
