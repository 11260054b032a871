"""Compaction of a tape whose dead rows outnumber its live ones (``Tape.compact``).

A tape starts a new generation when no live tensor refers to an entry no backward freed.
A program that keeps one such tensor alive while it records on (a loss computed in grad
mode and never differentiated, held until the next one replaces it) never reaches that
point. ``live_subgraph`` finds the rows a later backward can still reach, those of the
entries behind the live tensors; the tape keeps only them, renumbered in order, and
``gather_slots`` packs their values into a fresh arena.
"""
import numpy as np

from .jit import kernel
from .layout import E_FREED, E_IN0, E_OUT, N_ENTRY


@kernel
def live_subgraph(entries, nodes, refs):
    """(node_map, entry_map): each node's and entry's row in the compacted tables, -1 for
    the rows no live tensor reaches. The roots are the live tensors on entries no backward
    freed; an entry is kept when its output is, and keeps its inputs. Numbering keeps the
    rows' order, so every entry still comes after the entries of its inputs."""
    n_nodes = nodes.shape[0]
    n_entries = entries.shape[0]
    keep = np.zeros(n_nodes, np.bool_)
    for node in range(n_nodes):
        if refs[node] > 0:
            entry = nodes[node, N_ENTRY]
            if entry >= 0 and entries[entry, E_FREED] == 0:
                keep[node] = True
    entry_map = np.full(n_entries, -1, np.int64)
    for entry in range(n_entries - 1, -1, -1):
        out = entries[entry, E_OUT]
        if out >= 0 and keep[out]:
            entry_map[entry] = 0
            for k in range(3):
                node = entries[entry, E_IN0 + k]
                if node >= 0:
                    keep[node] = True
    count = 0
    for entry in range(n_entries):
        if entry_map[entry] == 0:
            entry_map[entry] = count
            count += 1
    node_map = np.full(n_nodes, -1, np.int64)
    count = 0
    for node in range(n_nodes):
        if keep[node]:
            node_map[node] = count
            count += 1
    return node_map, entry_map


@kernel
def gather_slots(source, target, offsets, sizes, new_offsets):
    """Copy each slot ``source[offsets[i]:offsets[i] + sizes[i]]`` to ``new_offsets[i]`` of
    ``target``. ``target`` may be ``source`` when the slots come in order of offset and
    move down (each new offset at most the old one): every copy then reads before it
    overwrites."""
    for i in range(offsets.shape[0]):
        src = offsets[i]
        dst = new_offsets[i]
        for j in range(sizes[i]):
            target[dst + j] = source[src + j]
