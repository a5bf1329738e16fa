"""The gradient graph at ``detail="compact"``: the equation listing as a picture.

One node per line of ``rc.explain(cell)``: the cell's equations, the backward step's
equations (element-wise chains already folded into one expression each), the forward
values they read (the ``where`` block) and the parameter gradients, each labelled
``name = expression`` with the readable names of :mod:`rnncomp.aliases`.  Nodes are
clustered by the gate or state they belong to (``pre(o)``, ``o``, ``δpre(o)``, ``∂L/∂Wo``
in the cluster of ``o``), and time flows left to right: inputs, previous states and the
carried adjoints on the left, then the clusters, the adjoints carried to step t-1 last.

    >>> import rnncomp as rc
    >>> g = compact_gradient_graph(rc.cells.lstm(3, 4, 2))
    >>> g.groups[:6]
    ['inputs, states t-1, seeds', 'gate f', 'gate i', 'gate g', 'gate o', 'state c']
"""
from __future__ import annotations

import re

import sympy as sp

from ..aliases import is_generated
from ..ir import NodeSym, display, internal, key_str
from .dot import Graph, _space, _wrapped, carried_shapes

_PRE = re.compile(r"pre\(([A-Za-z][A-Za-z0-9_]*)\)")
_CALL = re.compile(r"[^\W\d][\w′]*\(([A-Za-z][A-Za-z0-9_]*)\)")


def _owner(name: str, named: dict) -> str | None:
    """The gate or named value a (displayed) name belongs to: δpre(o) → o, tanh(c) → c."""
    base = name.removeprefix("δ⁺").removeprefix("δ")
    if base in named:
        return base
    m = _PRE.search(base) or _CALL.fullmatch(base)
    if m and m.group(1) in named:
        return m.group(1)
    m = re.match(r"\(?[A-Za-z]_?([A-Za-z0-9_]+)ᵀ?·", base)
    if m and m.group(1) in named:   # δ(Uo·h) → o: a product belongs to the gate of its matrix
        return m.group(1)
    return None


BACKWARD = ("bwd", "carry", "grad")


def _forward_lines(cell, e, shown) -> list:
    """The cell's equations over the values the picture shows (``c[t] = c[t-1]*f[t] + i[t]*g[t]``):
    a temporary that is not a node of its own is written out in place."""
    from ..equations import node_expr, stored_values
    from ..printing import _ordered
    prog = cell.step.prog
    stored = stored_values(prog)
    shown = set(shown)
    keep = {k for k, a in e._alias.items() if (internal(a), k[1]) in shown}   # by their keys, not aliases
    keep |= {k for k in prog.nodes if not is_generated(k)}

    def expand(x):
        return x.xreplace({s: expand(node_expr(prog, s.key).xreplace(stored)) for s in x.free_symbols
                           if isinstance(s, NodeSym) and s.key not in keep and s.key in prog.nodes})
    out = []
    for lhs, _ in _ordered(cell):
        rhs = node_expr(prog, lhs.key).xreplace(stored)
        out.append((lhs, e._renamed(expand(rhs))))
    return out


def compact_gradient_graph(cell) -> Graph:
    from ..printing import explain
    e = explain(cell)
    step = cell.step
    eqs, carried, grads, used = e._listing()
    fwd = _forward_lines(cell, e, [lhs.key for lhs, _ in used])
    kinds = {n: {"state": "state", "output": "output"}.get(d.kind, "value") for n, d in cell.decls.items()
             if d.kind in ("state", "define", "output")}
    for lhs, _ in used:   # gates the aliases named (LSTM o = sigmoid(pre(o)), softsign's pre(o))
        name = display(lhs.key[0])
        m = _PRE.fullmatch(name)
        name = m.group(1) if m else name
        if re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name) and name not in kinds:
            kinds[name] = "gate"
    params = {n for n, d in cell.decls.items() if d.kind == "param"}
    order: list = []
    for lhs, _ in used + fwd + eqs:
        o = _owner(display(lhs.key[0]), kinds)
        if o is not None and o not in order:
            order.append(o)
    groups = ["inputs, states t-1, seeds"] + [f"{kinds[o]} {o}" for o in order] + ["loss and other values",
                                                                                 "carried to step t-1"]
    other, carry_group = len(groups) - 2, len(groups) - 1
    def group_of(name):
        o = _owner(name, kinds)
        base = name.removeprefix("δ")
        if o is None and base in params and base[1:].lstrip("_") in kinds:   # δbo: the bias of gate o
            o = base[1:].lstrip("_")
        return 1 + order.index(o) if o in order else other
    g = Graph(f"{step.name} gradient (compact)", "gradient", "LR", groups)

    original = {(internal(a), k[1]): k for k, a in e._alias.items()}   # an aliased seed: w′ for w

    def leaf(key):
        if key in g._ids:
            return
        node = step.prog.nodes.get(original.get(key, key)) or e.bwd.prog.nodes.get(original.get(key, key))
        if node is None or not node.is_leaf or node.op == "param":
            return
        role = {"seed": "seed"}.get(node.op, node.op)
        g.add_node(key, f"{key_str(key)}\n∈ {_space(node, original.get(key, key), carried_shapes(step))}", role, 0)

    def add(lhs, rhs, role, group):
        g.add_node(lhs.key, f"{lhs} =\n{_wrapped(sp.sstr(rhs))}", role, group)

    for lhs, rhs in used:
        add(lhs, rhs, "fwd", group_of(display(lhs.key[0])))
    for lhs, rhs in fwd:
        add(lhs, rhs, "loss" if lhs.key == step.loss_key else "fwd", group_of(lhs.key[0]))
    for lhs, rhs in eqs:
        add(lhs, rhs, "bwd", group_of(display(lhs.key[0])))
    for s, k, rhs in carried:
        ck = (internal(f"δ⁺{s}"), "t-1")
        g.add_node(ck, f"δ⁺{s}[t-1] =\n{_wrapped(sp.sstr(rhs))}", "carry", carry_group)
    for p, ge in grads:
        syms = sorted((s for s in ge.free_symbols if isinstance(s, NodeSym)), key=str)
        gk = (internal(f"∂L/∂{p}"), None)
        syms.sort(key=lambda s: not display(s.key[0]).startswith("δ"))   # the adjoint's group first
        grp = next((group_of(display(s.key[0])) for s in syms if group_of(display(s.key[0])) != other), other)
        g.add_node(gk, f"∂L/∂{display(p)} = Σ\n{_wrapped(sp.sstr(ge))}", "grad", grp)
    lines = used + fwd + eqs + [(NodeSym((internal(f"δ⁺{s}"), "t-1")), r) for s, _, r in carried]
    lines += [(NodeSym((internal(f"∂L/∂{p}"), None)), ge) for p, ge in grads]
    for lhs, rhs in lines:
        for s in sorted((s for s in rhs.free_symbols if isinstance(s, NodeSym)), key=str):
            leaf(s.key)
            if s.key not in g._ids or s.key == lhs.key or lhs.key not in g._ids:
                continue
            src, dst = g.node_of(s.key).role, g.node_of(lhs.key).role
            if dst not in BACKWARD:
                g.add_edge(s.key, lhs.key, "fwd")
            elif src in BACKWARD + ("seed",):   # adjoints flow; the forward values they read are in the labels
                g.add_edge(s.key, lhs.key, "bwd")
    return g
