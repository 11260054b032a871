"""``python -m jitgrad bench``: the command runs, writes the JSON and the plot, and reports a
peer that is not installed (or doesn't import) as such instead of failing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import jitgrad
import jitgrad.func
from jitgrad import bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK_BUDGET_S = 150  # --quick takes ~20 s on a 2-core machine; CI machines are busier
HAS_TORCH = bench.lib_status("torch", try_import=False)["status"] == "ok"
HAS_MATPLOTLIB = bench.lib_status("matplotlib", try_import=False)["status"] == "ok"


def run_python(args: list[str], timeout: float, env: dict | None = None):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, env=dict(os.environ, **(env or {})))


def _compile_the_kernels() -> None:
    """Every kernel and generated module the workloads use on jitgrad, compiled and cached
    (cold, they take minutes here): the quick mode's runs of every workload, in this
    process, on jitgrad alone. In a thread of its own: its tape (one per thread) keeps what
    the workloads leave on it, not the tape of the tests that follow."""
    payloads = []
    worker = threading.Thread(target=lambda: payloads.append(bench.run(
        list(bench.CASES), ["jitgrad"], mode="quick", isolate=False, progress=False)))
    worker.start()
    worker.join()
    (payload,) = payloads
    for row in payload["rows"]:
        assert "error" not in row["results"].get("jitgrad", {}), row


def test_quick_json_and_plot(tmp_path):
    # the budget is for the command, not for compiling kernels no test has used yet
    _compile_the_kernels()
    out, png = tmp_path / "out.json", tmp_path / "out.png"
    args = ["-m", "jitgrad", "bench", "--quick", "--json", str(out), "--no-progress"]
    if HAS_MATPLOTLIB:
        args += ["--plot", str(png)]
    start = time.perf_counter()
    proc = run_python(args, timeout=QUICK_BUDGET_S)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads(out.read_text())

    assert payload["mode"] == "quick"
    assert [row["case"] for row in payload["rows"]] == list(bench.CASES)
    assert set(payload["peers"]) == set(bench.ALL_LIBS)
    assert payload["peers"]["jitgrad"]["status"] == "ok"
    libs = payload["libs"]
    for row in payload["rows"]:
        case = row["case"]
        assert row["goal"] == bench.GOALS[case]
        assert case in payload["table"] and case in proc.stdout
        if case in bench.CORE_CASES:
            assert row["available"], case
        if not row["available"]:  # a feature jitgrad lacks here: said so, not measured
            assert row["reason"] and row["results"] == {}
            continue
        assert set(row["results"]) == set(libs), case
        jitgrad_rec = row["results"]["jitgrad"]
        assert "error" not in jitgrad_rec, (case, jitgrad_rec.get("error"))
        assert jitgrad_rec["median"] > 0 and len(jitgrad_rec["samples"]) >= 2
        if "torch" in libs:
            torch_rec = row["results"]["torch"]
            assert "error" not in torch_rec, (case, torch_rec.get("error"))
            assert row["ratios"]["torch"] == pytest.approx(
                torch_rec["median"] / jitgrad_rec["median"])
    assert ("torch" in libs) == HAS_TORCH
    # the text: one aligned table (every line of it as wide as the first), then the peers
    table_lines = payload["table"].splitlines()
    assert len({len(line) for line in table_lines}) == 1
    assert "| library" in proc.stdout
    if HAS_MATPLOTLIB:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert elapsed < QUICK_BUDGET_S


BLOCKED_RUN = textwrap.dedent("""
    import sys
    sys.modules["torch"] = None  # what an uninstalled torch looks like to `import torch`
    from jitgrad.__main__ import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.parametrize("where", ["worker", "inprocess"])
def test_missing_and_broken_peers_are_reported(tmp_path, where):
    # torch: blocked as if not installed; jax: a package that raises when imported
    fake = tmp_path / "site"
    (fake / "jax").mkdir(parents=True)
    (fake / "jax" / "__init__.py").write_text("raise ImportError('this jax is broken')\n")
    out = tmp_path / "out.json"
    args = ["-c", BLOCKED_RUN, "bench", "--cases", "W1", "--quick", "--json", str(out),
            "--no-progress"] + (["--inprocess"] if where == "inprocess" else [])
    pythonpath = os.pathsep.join([str(fake)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    proc = run_python(args, timeout=120, env={"PYTHONPATH": pythonpath})
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads(out.read_text())

    assert payload["peers"]["torch"] == {"status": "not installed"}
    assert payload["peers"]["jax"]["status"] == "not importable"
    assert "this jax is broken" in payload["peers"]["jax"]["error"]
    assert "torch" not in payload["libs"] and "jax" not in payload["libs"]
    (row,) = payload["rows"]
    assert "median" in row["results"]["jitgrad"]
    assert "torch" not in row["results"] and "jax" not in row["results"]
    assert row["ratios"] == {}
    assert "not installed" in payload["table"]  # the torch column says why it is empty
    peers = proc.stdout[proc.stdout.index("| library"):]
    assert any(line.startswith("| torch") and "not installed" in line
               for line in peers.splitlines())
    assert any(line.startswith("| jax") and "not importable" in line
               for line in peers.splitlines())


def test_missing_feature_is_a_row_not_an_error(monkeypatch):
    monkeypatch.delattr(jitgrad.func, "hvp")
    assert "hvp" in bench.missing_feature("W5-1e4")
    payload = bench.run(["W5-1e4"], ["jitgrad"], mode="smoke", isolate=False, progress=False)
    (row,) = payload["rows"]
    assert row["available"] is False and "jitgrad.func.hvp" in row["reason"]
    assert "not available" in payload["table"]


def test_table_reports_errors_and_skips():
    payload = {
        "mode": "quick", "libs": ["jitgrad", "torch"], "startup": None,
        "peers": {"jitgrad": {"status": "ok", "version": "0"},
                  "torch": {"status": "ok", "version": "1"},
                  "jax": {"status": "not installed"}, "autograd": {"status": "not installed"}},
        "rows": [
            {"case": "W1", "description": "d1", "goal": 3.0, "available": True, "reason": None,
             "ops_per_run": None, "ratios": {"torch": 4.0},
             "results": {"jitgrad": {"median": 1e-5}, "torch": {"median": 4e-5}}},
            {"case": "W4", "description": "d4", "goal": 1.0, "available": True, "reason": None,
             "ops_per_run": None, "ratios": {},
             "results": {"jitgrad": {"error": "RuntimeError: boom", "phase": "warm-up"},
                         "torch": {"median": 4e-4}}},
        ],
    }
    table, notes = bench.build_table(payload)
    w1, w4 = table.splitlines()[2:4]
    assert "10.0 µs" in w1 and "40.0 µs" in w1 and "4.00x" in w1 and "PASS" in w1
    assert "ERROR" in w4 and "n/a" in w4
    assert any("W4 on jitgrad failed: RuntimeError: boom (warm-up)" in n for n in notes)
    assert "not installed" in bench.peers_table(payload)


def test_bad_arguments_are_usage_errors():
    proc = run_python(["-m", "jitgrad", "bench", "--cases", "W9", "--no-progress"], timeout=60)
    assert proc.returncode == 2
    assert "unknown case(s) W9" in proc.stderr


def test_plain_command_still_has_its_help():
    proc = run_python(["-m", "jitgrad", "--help"], timeout=60)
    assert proc.returncode == 0 and "bench" in proc.stdout
    proc = run_python(["-m", "jitgrad", "bench", "--help"], timeout=60)
    assert proc.returncode == 0 and "--quick" in proc.stdout and "--plot" in proc.stdout


def test_startup_probes_read_cached_bytecode(monkeypatch):
    """The startup probes run as in a default Python: without PYTHONDONTWRITEBYTECODE (so the
    untimed first run caches the bytecode the timed ones read), with a note saying so."""
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    assert "PYTHONDONTWRITEBYTECODE" not in bench._child_env()
    assert bench._child("import sys, json; print(json.dumps("
                        "{'flag': sys.flags.dont_write_bytecode}))")["flag"] == 0
    startup = bench.measure_startup(["jitgrad"], 1)
    first = startup["first gradient jitgrad"]
    assert "error" not in first and first["median"]["wall"] > first["median"]["import"] > 0
    floor = startup["numba first call"]["median"]["time"]
    assert 0 < floor < first["median"]["wall"]
    rows, notes = bench._startup_rows(startup, 5)
    assert any(note.startswith("Numba alone") and f"{floor:.3f} s" in note for note in notes)
    assert [row[0] for row in rows] == ["startup: import jitgrad − import numba",
                                        "startup: fresh process, first gradient (wall)"]
    assert any("PYTHONDONTWRITEBYTECODE" in note for note in notes)
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE")
    _, notes = bench._startup_rows(bench.measure_startup(["jitgrad"], 1), 5)
    assert not any("PYTHONDONTWRITEBYTECODE" in note for note in notes)
