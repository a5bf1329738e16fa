"""Cell graphs as networkx ``DiGraph``s, and unfolding over k steps.

Nodes are IR keys ``(name, time)`` carrying ``op``, ``size`` and the IR ``node``.
In the one-step graph a recurrent edge ``(h, "t-1") → (h, "t")`` is marked
``recurrent=True``.  ``unfold(cell, k)`` has one node per parameter (time
``None``) with edges to every step that uses it, initial states at time 0 and
steps 1..k; its node order is topological and deterministic.

    >>> import rnncomp as rc
    >>> g = rc.unfold(rc.cells.elman(3, 4, 2), 3)
    >>> g.out_degree(("W", None))
    3
"""
from __future__ import annotations

import networkx as nx

from .checks import one_cell
from .errors import ArgumentError
from .ir import Node, Program, verify


def to_networkx(prog: Program) -> nx.DiGraph:
    g = nx.DiGraph(name=prog.name)
    for key, node in prog.nodes.items():
        g.add_node(key, op=node.op, size=node.size, node=node)
    for key, node in prog.nodes.items():
        for a in node.args:
            g.add_edge(a, key)
        if node.op == "matvec":
            for p, _, _ in node.attrs["terms"]:
                g.add_edge((p, None), key)
    g.graph["program"] = prog
    return g


def step_graph(cell) -> nx.DiGraph:
    step = cell.step
    g = to_networkx(step.prog)
    for s in step.states:
        g.add_edge((s, "t-1"), (s, "t"), recurrent=True)
    return g


def _shift(key, s):
    name, t = key
    if t == "t":
        return (name, s)
    if t == "t-1":
        return (name, s - 1)
    return key


MAX_UNFOLDED = 2_000_000  # nodes of an unfolded program (unfold(lstm, 20000) is 500,000 nodes, 0.7 GB)


def unfold_program(step, k: int) -> Program:
    """The step program repeated for s = 1..k; state leaves only at time 0."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"unfold: k must be a positive integer, got {k!r}")
    prog = Program(name=f"{step.name} unfolded x{k}")
    for key, node in step.prog.nodes.items():
        if node.op == "param":
            prog.add(key, node)
    for s, n in step.states.items():
        prog.add((s, 0), Node("state", (), n))
    body = [(key, node) for key, node in step.prog.nodes.items() if node.op not in ("param", "state")]
    if k * len(body) > MAX_UNFOLDED:  # k = 10**9 ran until the kernel killed the process for memory
        raise ArgumentError(f"unfold: {k:,} steps of cell {step.name!r} would be {k * len(body):,} nodes, over "
                            f"{MAX_UNFOLDED:,} (about a kilobyte each as a networkx graph): unfold a few steps "
                            "to look at; a compiled model runs any number")
    for s in range(1, k + 1):
        for key, node in body:
            prog.add(_shift(key, s), Node(node.op, tuple(_shift(a, s) for a in node.args),
                                          node.size, node.attrs))
    return prog


def unfold(cell, k: int) -> nx.DiGraph:
    """The cell unfolded over ``k`` steps, as a ``networkx.DiGraph`` (see module docstring)."""
    one_cell("rc.unfold", cell)  # None or a Stack failed with "... has no attribute 'step'" / "'prog'"
    prog = unfold_program(cell.step, k)
    verify(prog)
    return to_networkx(prog)
