"""Side-by-side timings of jitgrad and its installed peers, printed as a markdown table.

    python benchmarks/compare.py [--quick] [--json out.json]

Each workload (see workloads.py) runs in its own worker process, with every installed
library loaded side by side in that process: warm-up runs first (Numba compilation, JAX
tracing and first-call allocations are not timed), then interleaved samples (lib A, lib B,
lib A, ... in rotating order, so drift and noise hit every lib alike); the reported time is
the median sample. One worker per workload keeps a crash in one library (a segfault, a
corrupted tape) from taking the whole table down: the row reports the error instead.

The ratio column is ``torch time / jitgrad time`` (above 1: jitgrad is faster), checked
against the goal of each workload. Two startup numbers are measured in fresh processes:
``import jitgrad`` minus ``import numba`` (goal <= 0.2 s), and the wall time of a fresh
process computing the tutorial's first gradient with a warm Numba cache (goal < 1 s).
"""
from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import workloads as W  # noqa: E402

# per mode: samples per lib (interleaved), warm-up runs, target seconds per sample,
# and fresh-process repeats for the startup numbers
MODES = {
    "default": {"samples": 7, "warmup": 3, "target": 0.05, "startup": 4},
    "quick": {"samples": 3, "warmup": 2, "target": 0.01, "startup": 2},
}
SLOW_SAMPLES = {"default": 5, "quick": 2}  # W2: each sample is a full 40k-op chain
WORKER_TIMEOUT = 600


def skip_reason(case: str, libname: str, all_peers: bool = False) -> str | None:
    """Why ``libname`` sits out ``case`` (None: it runs)."""
    if libname == "jax" and case.startswith("W2") and not all_peers:
        return "skipped: eager JAX takes ~10 s per 40k-op chain (use --all-peers)"
    return None


# -- timing inside one worker -------------------------------------------------------------------
def _sample(runner: W.Runner, number: int) -> float:
    """Seconds per run(), averaged over ``number`` runs (setup excluded)."""
    gc.collect()
    clock = time.perf_counter
    if runner.setup is None:
        run = runner.run
        t0 = clock()
        for _ in range(number):
            run()
        return (clock() - t0) / number
    total = 0.0
    for _ in range(number):
        runner.setup()
        t0 = clock()
        runner.run()
        total += clock() - t0
    return total / number


def _error(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}"[:300]


def _failure(exc: BaseException) -> dict:
    """An error record: message, traceback, and the workloads.py line that raised."""
    rec = {"error": _error(exc), "traceback": traceback.format_exc()}
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if os.path.basename(f.filename) == "workloads.py"]
    if frames:
        f = frames[-1]
        rec["where"] = f"workloads.py:{f.lineno} in {f.name}: {f.line}"
    return rec


def measure_case(case: str, libs: list[str], mode: str, all_peers: bool = False) -> dict:
    """Time ``case`` on every lib of ``libs`` in this process; one dict per lib."""
    cfg = MODES[mode]
    samples_n = SLOW_SAMPLES[mode] if case.startswith("W2") else cfg["samples"]
    out: dict[str, dict] = {}
    runners: dict[str, W.Runner] = {}
    numbers: dict[str, int] = {}
    for libname in libs:
        reason = skip_reason(case, libname, all_peers)
        if reason:
            out[libname] = {"skipped": reason}
            continue
        phase = "setup of the workload"
        try:
            runner = W.make_runner(case, libname)
            # warm-up: the same number of runs for every lib, so result() is comparable
            t_warm = float("inf")
            for i in range(cfg["warmup"]):
                phase = f"warm-up run {i + 1}"
                if runner.setup is not None:
                    runner.setup()
                t0 = time.perf_counter()
                runner.run()
                t_warm = min(t_warm, time.perf_counter() - t0)
            result = runner.result()
        except Exception as exc:  # noqa: BLE001 - report it as the row's error
            out[libname] = _failure(exc)
            out[libname]["phase"] = phase
            continue
        runners[libname] = runner
        if runner.setup is not None:  # each run needs its own (untimed, maybe slow) setup
            numbers[libname] = runner.number
        else:  # enough runs for a sample of about cfg["target"] seconds
            numbers[libname] = max(1, min(runner.number * 10,
                                          round(cfg["target"] / max(t_warm, 1e-7))))
        out[libname] = {"samples": [], "number": numbers[libname], "result": result}
    order = list(runners)
    for i in range(samples_n):
        k = i % len(order) if order else 0
        for libname in order[k:] + order[:k]:  # rotate who goes first
            if "error" in out[libname]:
                continue
            try:
                out[libname]["samples"].append(_sample(runners[libname], numbers[libname]))
            except Exception as exc:  # noqa: BLE001
                out[libname] = _failure(exc)
                out[libname]["phase"] = f"timed sample {i + 1}"
    for libname in order:
        rec = out[libname]
        if "error" not in rec and rec["samples"]:
            rec["median"] = statistics.median(rec["samples"])
            rec["min"] = min(rec["samples"])
    return out


def _spawn_worker(cases: list[str], libs: list[str], opts: dict) -> tuple[dict, str | None]:
    """Run ``measure_case`` for ``cases`` in a fresh worker process: the results it wrote
    (a dict per finished case) and, if it didn't exit cleanly, why."""
    env = dict(os.environ)
    if opts["blas_threads"]:
        env["OPENBLAS_NUM_THREADS"] = str(opts["blas_threads"])  # before NumPy loads OpenBLAS
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "out.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", ",".join(cases),
               "--worker-out", path, "--libs", ",".join(libs),
               "--torch-threads", str(opts["torch_threads"] or 0),
               "--blas-threads", str(opts["blas_threads"] or 0)]
        if opts["mode"] == "quick":
            cmd.append("--quick")
        if opts["all_peers"]:
            cmd.append("--all-peers")
        failure = None
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                                  timeout=WORKER_TIMEOUT)
            if proc.returncode != 0:
                why = (f"worker process died (signal {-proc.returncode})"
                       if proc.returncode < 0 else f"worker process exited with {proc.returncode}")
                tail = (proc.stderr.strip().splitlines() or [""])[-1][:200]
                failure = f"{why}: {tail}" if tail else why
        except subprocess.TimeoutExpired:
            failure = f"worker timed out after {WORKER_TIMEOUT} s"
        done = {}
        if os.path.exists(path):
            with open(path) as f:
                done = json.load(f)
    return done, failure


def run_workers(cases: list[str], libs: list[str], mode: str, all_peers: bool,
                torch_threads, blas_threads) -> dict:
    """``measure_case`` for every case, in fresh worker processes.

    One worker runs the cases in order and writes its results after each. It stops after a
    case where jitgrad failed (its tape may be corrupt); a fresh worker takes the remaining
    cases. If a worker dies (segfault, abort, timeout), the case it was on is rerun with
    one worker per lib, so only the lib that crashes gets the error."""
    opts = {"mode": mode, "all_peers": all_peers, "torch_threads": torch_threads,
            "blas_threads": blas_threads}
    results: dict[str, dict] = {}
    todo = list(cases)
    while todo:
        t0 = time.perf_counter()
        done, failure = _spawn_worker(todo, libs, opts)
        for case in list(todo):
            if case not in done:
                break
            results[case] = done[case]
            todo.remove(case)
            print(f"  measured {case} ({time.perf_counter() - t0:.1f} s since the worker "
                  "started)", file=sys.stderr, flush=True)
        if failure is None or not todo:
            continue  # finished, or stopped early after a jitgrad error: go on
        case = todo.pop(0)  # the case the worker was on when it died
        print(f"  {case}: {failure}; rerunning it one lib per worker", file=sys.stderr,
              flush=True)
        results[case] = {}
        for lib in libs:
            if len(libs) == 1:
                one, why = {}, failure
            else:
                one, why = _spawn_worker([case], [lib], opts)
            rec = one.get(case, {}).get(lib)
            results[case][lib] = rec if rec is not None else {"error": why or "no result"}
    return {case: results[case] for case in cases if case in results}


def _worker_main(args) -> None:
    _set_threads(args.torch_threads)
    if args.blas_threads:
        W.limit_blas_threads(args.blas_threads)
    libs = args.libs.split(",")
    mode = "quick" if args.quick else "default"
    out: dict[str, dict] = {}
    for case in args.worker.split(","):
        out[case] = measure_case(case, libs, mode, args.all_peers)
        tmp = args.worker_out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(out, f)
        os.replace(tmp, args.worker_out)
        if "error" in out[case].get("jitgrad", {}):
            return  # jitgrad's state may be corrupt now: the parent starts a fresh worker


def _set_threads(n) -> None:
    if n:
        try:
            import torch

            torch.set_num_threads(int(n))
        except ImportError:
            pass


# -- startup numbers -------------------------------------------------------------------------
def _child(source: str) -> dict:
    """Run a fresh ``python -c source``; its printed JSON plus ``wall`` (spawn to exit)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True,
                          timeout=300)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError((proc.stderr.strip().splitlines() or ["?"])[-1])
    lines = proc.stdout.strip().splitlines()
    info = json.loads(lines[-1]) if lines else {}
    info["wall"] = wall
    return info


def measure_startup(libs: list[str], repeats: int) -> dict:
    """Medians over ``repeats`` interleaved fresh processes of: the wall time of ``python -c
    pass``, the in-process time of ``import numba``, and the tutorial's first gradient per
    lib: wall time of the fresh process, and inside it the time of the import, forward and
    backward. One untimed first-gradient run of jitgrad comes first, so Numba's on-disk
    cache is warm (it recompiles after a kernel edit)."""
    probes = {"python -c pass": "pass", "import numba": W.import_time_source("numba")}
    for lib in ("jitgrad", "torch"):
        if lib in libs:
            probes[f"first gradient {lib}"] = W.first_gradient_source(lib)
    out: dict[str, dict] = {name: {"samples": []} for name in probes}
    if "first gradient jitgrad" in probes:
        try:
            _child(probes["first gradient jitgrad"])
        except Exception as exc:  # noqa: BLE001
            out["first gradient jitgrad"] = {"error": _error(exc)}
    for _ in range(repeats):
        for name, src in probes.items():
            if "error" in out[name]:
                continue
            try:
                out[name]["samples"].append(_child(src))
            except Exception as exc:  # noqa: BLE001
                out[name] = {"error": _error(exc)}
    for rec in out.values():
        samples = rec.get("samples")
        if samples:
            rec["median"] = {key: statistics.median(s[key] for s in samples)
                             for key in samples[0] if isinstance(samples[0][key], float)}
            for key in samples[0]:
                if isinstance(samples[0][key], bool):
                    rec[key] = any(s[key] for s in samples)
    return out


# -- the table -----------------------------------------------------------------------------------
def fmt_time(seconds: float) -> str:
    if seconds >= 1.0:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


def fmt_cell(case: str, rec: dict | None) -> str:
    if rec is None:
        return "—"
    if "skipped" in rec:
        return "skipped"
    if "error" in rec:
        return "ERROR: " + rec["error"].replace("|", "\\|")
    if "median" not in rec:
        return "—"
    cell = fmt_time(rec["median"])
    op = W.per_op(case, rec["median"])
    if op is not None:
        cell += f" ({op * 1e9:.0f} ns/op)"
    return cell


def ratio(peer: dict | None, base: dict | None) -> float | None:
    if not peer or not base or "median" not in peer or "median" not in base:
        return None
    return peer["median"] / base["median"]


def results_agree(recs: dict) -> str | None:
    """A note when the libs' results after the same warm-up disagree."""
    vals = {lib: r["result"] for lib, r in recs.items()
            if isinstance(r, dict) and isinstance(r.get("result"), float)
            and r["result"] == r["result"]}  # not NaN
    if "jitgrad" not in vals or len(vals) < 2:
        return None
    ref = vals["jitgrad"]
    bad = [f"{lib}={v:.6g}" for lib, v in vals.items()
           if lib != "jitgrad" and abs(v - ref) > 1e-3 * max(1.0, abs(v))]
    return f"result mismatch: jitgrad={ref:.6g} vs " + ", ".join(bad) if bad else None


def build_table(results: dict, startup: dict | None, libs: list[str]) -> tuple[str, list[str]]:
    extra = [lib for lib in libs if lib not in ("jitgrad", "torch")]
    head = ["workload", "jitgrad", "torch", "torch/jitgrad", "goal"] + [
        f"{lib} ({lib}/jitgrad)" for lib in extra]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    notes: list[str] = []
    for case, recs in results.items():
        r = ratio(recs.get("torch"), recs.get("jitgrad"))
        goal = W.GOALS[case]
        status = "n/a" if r is None else ("PASS" if r >= goal else "FAIL")
        cells = [f"{case}: {W.DESCRIPTIONS[case]}", fmt_cell(case, recs.get("jitgrad")),
                 fmt_cell(case, recs.get("torch")), "—" if r is None else f"{r:.2f}x",
                 f">= {goal:g}x {status}"]
        for lib in extra:
            c = fmt_cell(case, recs.get(lib))
            rr = ratio(recs.get(lib), recs.get("jitgrad"))
            cells.append(c + ("" if rr is None else f" ({rr:.2f}x)"))
        lines.append("| " + " | ".join(cells) + " |")
        note = results_agree(recs)
        if note:
            notes.append(f"{case}: {note}")
    if startup is not None:
        def med(name, key):
            return ((startup.get(name) or {}).get("median") or {}).get(key)

        def err(name):
            return (startup.get(name) or {}).get("error")

        nb, jg = med("import numba", "time"), med("first gradient jitgrad", "import")
        tc = med("first gradient torch", "import")
        if jg is not None and nb is not None:
            added = jg - nb
            jcell = f"{added:+.3f} s ({jg:.3f} − {nb:.3f})"
            status = "PASS" if added <= 0.2 else "FAIL"
        else:
            jcell = "ERROR: " + (err("first gradient jitgrad") or err("import numba") or "?")
            status = "n/a"
        tcell = "—" if tc is None else f"import torch: {tc:.3f} s"
        lines.append(f"| startup: import jitgrad − import numba | {jcell} | {tcell} | — | "
                     f"<= 0.2 s {status} |" + " — |" * len(extra))
        if jg is not None and not (startup.get("first gradient jitgrad") or {}).get("numba_loaded"):
            notes.append("`import jitgrad` does not import numba (it is imported on first "
                         "use), so the import row's difference can be negative; the numba "
                         "import is paid inside the first-gradient row instead")
        fj, ft = med("first gradient jitgrad", "wall"), med("first gradient torch", "wall")
        if fj is not None:
            jcell, status = f"{fj:.3f} s", ("PASS" if fj < 1.0 else "FAIL")
        else:
            jcell, status = "ERROR: " + (err("first gradient jitgrad") or "?"), "n/a"
        tcell = "—" if ft is None else f"{ft:.3f} s"
        rcell = "—" if (fj is None or ft is None) else f"{ft / fj:.2f}x"
        lines.append(f"| startup: fresh process, first gradient (wall) | {jcell} | {tcell} | "
                     f"{rcell} | < 1 s {status} |" + " — |" * len(extra))
        py = med("python -c pass", "wall")
        for lib in ("jitgrad", "torch"):
            parts = [med(f"first gradient {lib}", k) for k in ("import", "forward", "backward")]
            if None not in parts:
                notes.append(f"first gradient, {lib}, inside the process: import "
                             f"{parts[0]:.3f} s, forward {parts[1]:.3f} s, backward "
                             f"{parts[2]:.3f} s" + ("" if py is None else
                                                    f" (bare `python -c pass`: {py:.3f} s)"))
    return "\n".join(lines), notes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer samples (about 30 s)")
    p.add_argument("--json", metavar="PATH", help="also write raw timings to PATH")
    p.add_argument("--libs", help="comma-separated subset of " + ",".join(W.ALL_LIBS))
    p.add_argument("--cases", help="comma-separated subset of " + ",".join(W.CASES))
    p.add_argument("--no-startup", action="store_true", help="skip the startup numbers")
    p.add_argument("--all-peers", action="store_true",
                   help="also run the very slow peer cases (eager JAX on W2)")
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch.set_num_threads(N) in the workers (default 1, like jitgrad's "
                   "single-threaded kernels: on a small, busy machine torch's OpenMP pool "
                   "swings from 0.3 ms to 100 ms per W4 step; 0 keeps torch's default)")
    p.add_argument("--blas-threads", type=int, default=1,
                   help="OPENBLAS_NUM_THREADS for the workers (default 1: OpenBLAS threads, "
                   "used by NumPy/jitgrad, and torch's OpenMP threads otherwise spin against "
                   "each other in one process; 0 leaves the environment alone)")
    p.add_argument("--inprocess", action="store_true",
                   help="run every workload in this process (no crash isolation)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker_main(args)
        return 0

    mode = "quick" if args.quick else "default"
    t_start = time.perf_counter()
    libs = W.available_libs(try_import=False) if not args.libs else args.libs.split(",")
    missing = [lib for lib in W.ALL_LIBS if lib not in libs]
    cases = W.CASES if not args.cases else tuple(args.cases.split(","))
    threads = (f"torch threads: {args.torch_threads or 'torch default'}, "
               f"OpenBLAS threads: {args.blas_threads or 'OpenBLAS default'}")
    versions = []
    for lib in libs:
        try:
            versions.append(f"{lib} {importlib.metadata.version(lib)}")
        except Exception:  # noqa: BLE001
            versions.append(lib)
    print(f"# jitgrad vs peers ({mode} mode)\n")
    print(f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs; "
          f"{threads}; " + ", ".join(versions)
          + (f"; not installed: {', '.join(missing)}" if missing else "") + "\n", flush=True)

    if args.inprocess:
        _set_threads(args.torch_threads)
        if args.blas_threads:
            W.limit_blas_threads(args.blas_threads)
        results = {case: measure_case(case, libs, mode, args.all_peers) for case in cases}
    else:
        results = run_workers(list(cases), libs, mode, args.all_peers, args.torch_threads,
                              args.blas_threads)
    startup = None
    if not args.no_startup:
        t0 = time.perf_counter()
        startup = measure_startup(libs, MODES[mode]["startup"])
        print(f"  measured startup in {time.perf_counter() - t0:.1f} s", file=sys.stderr,
              flush=True)

    table, notes = build_table(results, startup, libs)
    print(table)
    print()
    print("Times are medians of interleaved samples; ratio = torch time / jitgrad time "
          "(> 1: jitgrad is faster). W2 cells also give time per recorded op (40,000 ops).")
    for note in notes:
        print(f"- {note}")
    errors = [(case, lib, rec) for case, recs in results.items() for lib, rec in recs.items()
              if isinstance(rec, dict) and "error" in rec]
    for case, lib, rec in errors:
        where = ", ".join(rec[k] for k in ("phase", "where") if rec.get(k))
        where = f" ({where})" if where else ""
        print(f"- {case} on {lib} failed: {rec['error']}{where}")
    print(f"\n(total {time.perf_counter() - t_start:.0f} s)")

    if args.json:
        payload = {"mode": mode, "libs": libs, "python": platform.python_version(),
                   "cpus": os.cpu_count(), "results": results, "startup": startup,
                   "goals": W.GOALS, "table": table}
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
