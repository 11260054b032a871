"""Build the notebooks from their sources and execute them, so that the committed ``.ipynb``
files show their outputs (and read well on a code host).

    python notebooks/build.py            # every notebook
    python notebooks/build.py 02 04      # those whose name contains 02 or 04
    python notebooks/build.py --check    # only check that each .ipynb matches its source

A notebook's source is ``notebooks/src/<name>.py`` in the "percent" format (as jupytext
writes it): ``# %%`` starts a code cell, ``# %% [markdown]`` a markdown cell whose lines are
comments; in a code cell, an IPython magic is written as a comment (``# %matplotlib
inline``) so that the source stays a Python file.

Each notebook is executed by nbclient in a ``python3`` kernel run by the Python that runs
this script (jupyter_client starts ``python`` kernels with ``sys.executable``), in the
``notebooks/`` folder. Needs the ``test`` extra (nbclient, nbformat, ipykernel, matplotlib).
Cells run with ``JITGRAD_NOTEBOOK_QUICK`` unset (the full version); the test suite sets it.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "src"
KERNEL = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
TIMEOUT = 900  # seconds per cell
MAGIC = re.compile(r"# %(?!%)[A-Za-z]")  # "# %matplotlib inline" in a code cell


def parse(source: str) -> list[tuple[str, str]]:
    """``[(kind, text), ...]`` for the cells of a percent-format script."""
    cells: list[tuple[str, list[str]]] = []
    for line in source.splitlines():
        if line.startswith("# %%"):
            cells.append(("markdown" if "[markdown]" in line else "code", []))
        elif cells:
            cells[-1][1].append(line)
        elif line.strip():
            raise ValueError(f"text before the first '# %%' marker: {line!r}")
    out = []
    for kind, lines in cells:
        if kind == "markdown":
            lines = [ln[2:] if ln.startswith("# ") else ln.lstrip("#") for ln in lines]
        else:
            lines = [ln[2:] if MAGIC.match(ln) else ln for ln in lines]
        text = "\n".join(lines).strip("\n")
        if text:
            out.append((kind, text))
    return out


def notebook(source_path: Path):
    """The (unexecuted) notebook of a source file."""
    import nbformat

    cells = []
    for kind, text in parse(source_path.read_text()):
        if kind == "markdown":
            cells.append(nbformat.v4.new_markdown_cell(text))
        else:
            cells.append(nbformat.v4.new_code_cell(text))
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = dict(KERNEL)
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def execute(nb, cwd: Path = HERE, timeout: int = TIMEOUT):
    """Run every cell of ``nb`` in a fresh ``python3`` kernel (raises on a cell's error)."""
    from nbclient import NotebookClient

    client = NotebookClient(nb, timeout=timeout, kernel_name=KERNEL["name"],
                            resources={"metadata": {"path": str(cwd)}}, record_timing=False)
    client.execute()
    return nb


def _strip_ids(nb) -> None:
    # stable ids keep the diff of a rebuilt notebook down to the outputs that changed
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i}"


def build(source_path: Path) -> Path:
    import nbformat

    os.environ.pop("JITGRAD_NOTEBOOK_QUICK", None)  # the committed outputs are the full runs
    target = HERE / (source_path.stem + ".ipynb")
    nb = notebook(source_path)
    _strip_ids(nb)
    start = time.perf_counter()
    execute(nb)
    nb.metadata["language_info"] = {"name": "python"}  # drop the exact version the kernel adds
    nbformat.write(nb, target)
    print(f"{target.relative_to(HERE.parent)}: executed in {time.perf_counter() - start:.1f} s")
    return target


def out_of_date(source_path: Path) -> list[str]:
    """What differs between the cells of ``source_path`` and its committed notebook."""
    import nbformat

    target = HERE / (source_path.stem + ".ipynb")
    if not target.exists():
        return [f"{target.name} does not exist"]
    committed = nbformat.read(target, as_version=4)
    expected = parse(source_path.read_text())
    have = [(cell.cell_type, cell.source) for cell in committed.cells]
    if have == expected:
        return []
    for i, (a, b) in enumerate(zip(have, expected)):
        if a != b:
            return [f"{target.name}: cell {i} differs from {source_path.name}"]
    return [f"{target.name} has {len(have)} cells, {source_path.name} {len(expected)}"]


def sources(patterns: list[str]) -> list[Path]:
    found = sorted(SOURCES.glob("*.py"))
    if patterns:
        found = [p for p in found if any(pat in p.stem for pat in patterns)]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="build the notebooks whose name contains these")
    parser.add_argument("--check", action="store_true",
                        help="only check that the notebooks match their sources")
    args = parser.parse_args(argv)
    chosen = sources(args.names)
    if not chosen:
        parser.error("no notebook source matches")
    if args.check:
        problems = [p for src in chosen for p in out_of_date(src)]
        for problem in problems:
            print(problem)
        return 1 if problems else 0
    for src in chosen:
        build(src)
    return 0


if __name__ == "__main__":
    sys.exit(main())
