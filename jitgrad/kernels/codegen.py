"""What the four kernel generators (``generate``, ``generate_tangent``, ``generate_hvp``,
``generate_forward``) share: the opcode dispatchers they emit and their command line."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def dispatcher(ops, name: str, signature: str, step: Callable, call: str | None = None) -> str:
    """Source of ``name(code, signature)``: calls ``step(op)(call)`` for the op whose code
    is ``code`` (``call`` defaults to the signature's names)."""
    lines = ["", "", "@kernel", f"def {name}(code, {signature}):"]
    for i, op in enumerate(ops):
        lines.append(f"    {'if' if i == 0 else 'elif'} code == {op.code}:  # {op.name}")
        lines.append(f"        {step(op)}({call or signature})")
    if not ops:
        lines.append("    pass")
    return "\n".join(lines)


def main(argv: list[str], target: Path, text: str, module: str) -> int:
    """Write ``text`` to ``target``, or with ``--check`` exit 1 if the file differs."""
    if "--check" in argv:
        current = target.read_text() if target.exists() else ""
        if current != text:
            print(f"{target} is stale: run python -m {module}")
            return 1
        return 0
    target.write_text(text)
    print(f"wrote {target}")
    return 0


def counted_reduction(header: list[str], count: str, body: list[str]) -> str:
    """Source of a reduction step whose partial reads ``k``, the sum of ``count`` over the
    elements reduced into each output. ``header`` is the decorator, signature and docstring
    (the signature has ``vals, ox, oy, nx, c0, meta, mo``); ``body`` runs per input element
    ``i`` (at ``ox + i``) with ``x``, its output's offset ``py`` (at ``oy + py``), ``y`` and
    ``k``. Two walks over the input: the first sums the counts, the second runs the body;
    these reductions (max, min) are not the hot ones, so one element at a time."""
    lines = [
        "", "", *header,
        "    n = c0  # elements reduced into each output",
        "    ndim = meta[mo]",
        "    if nx == 0:",
        "        return",
        "    ny = 1 if ndim == 0 else int(nx / n + 0.5)",
        "    shape = meta[mo + 1:mo + 1 + ndim]",
        "    strides = meta[mo + 1 + ndim:mo + 1 + 2 * ndim]  # 0 along reduced dims",
        "    counts = np.zeros(ny)",
        "    index = np.zeros(ndim, np.int64)",
        "    for walk in range(2):",
        "        index[:] = 0",
        "        py = 0",
        "        for i in range(nx):",
        "            x = float(vals[ox + i])",
        "            y = float(vals[oy + py])",
        "            if walk == 0:",
        f"                counts[py] += {count}",
        "            else:",
        "                k = counts[py]",
        *["                " + line for line in body],
        "            d = ndim - 1",
        "            while d >= 0:  # the next element: move the output's offset",
        "                index[d] += 1",
        "                py += strides[d]",
        "                if index[d] < shape[d]:",
        "                    break",
        "                py -= strides[d] * shape[d]",
        "                index[d] = 0",
        "                d -= 1",
    ]
    return "\n".join(lines)
