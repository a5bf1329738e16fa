"""Drawing a composition: each cell's graph in a cluster of its layer, wired bottom to top.

:func:`composed_graph` is what ``rnncomp.inspect.to_dot`` / ``render`` (and ``rnncomp inspect
--dot``) build for a composition: the chosen view (step, unfolded, gradient) of every cell,
each cell's clusters labelled with its layer, and a bold edge from the output a layer feeds
upward to the input of the layer above.  The two directions of a bidirectional layer are one
cell, drawn once.

    >>> import rnncomp as rc
    >>> from rnncomp.inspect import to_dot
    >>> text = to_dot(rc.Stack([rc.cells.elman(2, 3, 4), rc.cells.gru(4, 3, 1)]))
    >>> "layer l0: step t of 'elman'" in text, "layer l1: step t of 'gru'" in text
    (True, True)
"""
from __future__ import annotations

from .stack import Stack


def _cells(layer, path):
    """[(path, cell)] bottom to top, a bidirectional layer's cell once (path ``l0.fwd, bwd``)."""
    lp = f"{path}." if path else ""
    if isinstance(layer, Stack):
        return [pc for p, sub in zip(layer.prefixes, layer.layers) for pc in _cells(sub, lp + p)]
    if hasattr(layer, "cell"):  # bidirectional
        return _cells(layer.cell, f"{lp}fwd, bwd")
    return [(path, layer)]


def _wires(layer, path):
    """[(lower path, output, upper path, input)] of every stack inside."""
    lp = f"{path}." if path else ""
    out = []
    if isinstance(layer, Stack):
        for i, (o, x) in enumerate(layer.feeds):
            below = _cells(layer.layers[i], lp + layer.prefixes[i])[-1][0]
            above = _cells(layer.layers[i + 1], lp + layer.prefixes[i + 1])[0][0]
            out.append((below, o, above, x))
        for p, sub in zip(layer.prefixes, layer.layers):
            out += _wires(sub, lp + p)
    elif hasattr(layer, "cell"):
        out += _wires(layer.cell, f"{lp}fwd, bwd")
    return out


def composed_graph(comp, kind: str = "step", k: int = 3, detail: str = "full"):
    from ..inspect.dot import Graph, build
    g = Graph(f"{comp.name} {kind}", kind, "TB")
    for path, cell in _cells(comp, ""):
        sub = build(cell, kind, k, detail)
        g.rankdir = sub.rankdir
        base = len(g.groups)
        g.groups += [f"layer {path}: {label}" for label in sub.groups]
        ids = {}
        for n in sub.nodes:
            ids[n.id] = g.add_node((path,) + tuple(n.key), n.label, n.role, base + n.group)
        for e in sub.edges:
            g.add_edge(_key(g, ids[e.src]), _key(g, ids[e.dst]), e.role, e.label)
    for below, o, above, x in _wires(comp, ""):
        src = [n for n in g.nodes if n.key[0] == below and n.key[1:] and n.key[1] == o]
        dst = [n for n in g.nodes if n.key[0] == above and n.key[1:] and n.key[1] == x]
        for s, d in zip(src, dst):  # per step in the unfolded view, in step order
            g.add_edge(s.key, d.key, "fwd", "feeds")
    return g


def _key(g, nid: str):
    return g.nodes[int(nid[1:])].key
