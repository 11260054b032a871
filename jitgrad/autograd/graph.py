"""``grad_fn`` objects: thin views onto tape entries, made on demand.

``type(y.grad_fn).__name__`` is torch's name (``MulBackward0``), ``next_functions`` lists
the grad_fn of each input (``AccumulateGrad`` for leaves, ``None`` for inputs that do not
require grad), and ``AccumulateGrad.variable`` is the leaf.
"""
from __future__ import annotations

from ..kernels.layout import E_IN0, N_ENTRY
from ..ops.registry import OPS, PLACE


class Node:
    """Base of every grad_fn class."""

    __slots__ = ("_tape", "_entry", "_generation", "_tensor")

    def __init__(self, tape, entry: int, generation: int, tensor=None) -> None:
        self._tape = tape
        self._entry = entry
        self._generation = generation
        self._tensor = tensor

    def name(self) -> str:
        return type(self).__name__

    @property
    def next_functions(self) -> tuple:
        tape = self._tape
        if tape is not None and self._generation != tape.generation and self._entry >= 0:
            entry = tape.current_entry(self._entry, self._generation)  # after a compaction
            if entry >= 0:
                self._entry, self._generation = entry, tape.generation
        if tape is None or self._generation != tape.generation or self._entry < 0:
            return ()
        entries = [self._entry]
        out = tape.entry_out(self._entry)
        # concatenation records one entry per part, all writing the same output
        op = OPS[tape.entry_op(self._entry)]
        if op.kind == PLACE:
            e = self._entry - 1
            while e >= 0 and tape.entry_out(e) == out:
                entries.insert(0, e)
                e -= 1
        result = []
        for entry in entries:
            fields = tape.entry_fields(entry)
            for k in range(op.arity):
                result.append((_function_of_node(tape, fields[E_IN0 + k]), 0))
        if op.name.endswith("_scalar"):
            result.append((None, 0))  # torch lists the Python scalar operand too
        return tuple(result)

    @property
    def metadata(self) -> dict:
        return {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} object at {hex(id(self))}>"

    def __eq__(self, other) -> bool:
        return (type(self) is type(other) and self._tape is other._tape
                and self._entry == other._entry and self._generation == other._generation)

    def __hash__(self) -> int:
        return hash((id(self._tape), self._entry, self._generation))


class AccumulateGrad(Node):
    """The grad_fn slot of a leaf that requires grad; ``variable`` is the leaf."""

    __slots__ = ()

    @property
    def variable(self):
        return self._tensor

    @property
    def next_functions(self) -> tuple:
        return ()


_CLASSES: dict[str, type] = {}


def _class_for(name: str) -> type:
    cls = _CLASSES.get(name)
    if cls is None:
        cls = _CLASSES[name] = type(name, (Node,), {"__slots__": ()})
    return cls


def _name_of_entry(tape, entry: int) -> str:
    """The grad_fn name of an entry: its op's, or torch's name of the composite whose
    last entry it is (``functions.named``: CopySlices, LogSoftmaxBackward0, ...)."""
    name = tape.names.get(entry)
    return name if name is not None else OPS[tape.entry_op(entry)].grad_fn


def _function_of_node(tape, node: int):
    if node < 0 or not tape.node_requires_grad(node):
        return None
    entry = tape.node_entry(node)
    if entry >= 0:
        return _class_for(_name_of_entry(tape, entry))(tape, entry, tape.generation)
    leaf = tape.leaves.get(node)
    return AccumulateGrad(tape, -1, tape.generation, leaf) if leaf is not None else None


def node_for_tensor(t):
    """The grad_fn of non-leaf tensor ``t``."""
    tape = t._tape
    name = OPS[t._op].grad_fn
    if tape is not None and t._node >= 0 and tape.adopt(t):
        entry = tape.node_field(t._node, N_ENTRY)
        if entry >= 0:
            name = _name_of_entry(tape, entry)
        return _class_for(name)(tape, entry, t._gen)
    return _class_for(name)(None, -1, t._gen)

