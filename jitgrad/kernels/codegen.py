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
