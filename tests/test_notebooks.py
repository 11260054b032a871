"""Every notebook in ``notebooks/`` runs without error (executed by nbclient in a fresh
``python3`` kernel of this interpreter, in the short version that ``JITGRAD_NOTEBOOK_QUICK=1``
selects), matches its source in ``notebooks/src/``, and is committed with its outputs."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

for _module in ("nbclient", "nbformat", "ipykernel", "matplotlib"):
    pytest.importorskip(_module, reason=f"{_module} (the `test` extra) runs the notebooks")

import nbformat  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
EXPECTED = ["01_autograd_tutorial", "02_digits_mlp", "03_forward_vs_reverse", "04_benchmarks"]


def _load_build():
    spec = importlib.util.spec_from_file_location("notebooks_build", NOTEBOOKS / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build()


@pytest.fixture(scope="module")
def kernel(tmp_path_factory) -> str:
    """The name of a kernel that runs this interpreter: ``python3`` (jupyter_client starts
    a ``python`` kernel spec with ``sys.executable``), registered first if nothing
    provides it."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        prefix = tmp_path_factory.mktemp("kernel")
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--prefix", str(prefix),
                        "--name", "python3"], check=True, capture_output=True)
        os.environ["JUPYTER_PATH"] = os.pathsep.join(
            [str(prefix / "share" / "jupyter")]
            + [p for p in [os.environ.get("JUPYTER_PATH")] if p])
    return "python3"


def test_every_notebook_is_there():
    assert [p.stem for p in PATHS] == EXPECTED
    assert sorted(p.stem for p in build.sources([])) == EXPECTED


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_notebook_matches_its_source_and_has_outputs(path):
    assert build.out_of_date(NOTEBOOKS / "src" / f"{path.stem}.py") == [], \
        "rebuild it: python notebooks/build.py " + path.stem[:2]
    nb = nbformat.read(path, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(cell.execution_count is not None for cell in code), "not executed"
    errors = [out for cell in code for out in cell.outputs if out.output_type == "error"]
    assert not errors, errors[0].get("evalue")
    # plots are stored as PNGs, so they show on a code host
    images = [out for cell in code for out in cell.outputs if "image/png" in out.get("data", {})]
    if path.stem != "01_autograd_tutorial":
        assert images, "no plot in the committed outputs"


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_notebook_runs(path, kernel, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("JITGRAD_NOTEBOOK_QUICK", "1")  # the kernel inherits it: short runs
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:  # run the source, not the stored outputs
        if cell.cell_type == "code":
            cell.outputs = []
    client = NotebookClient(nb, timeout=300, kernel_name=kernel, record_timing=False,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on error
    errors = [out for cell in nb.cells if cell.cell_type == "code"
              for out in cell.outputs if out.output_type == "error"]
    assert not errors
