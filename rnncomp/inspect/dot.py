"""Graphviz DOT text for a cell's graphs: one step, unfolded over k steps, and the gradient.

Pure text: nothing here needs Graphviz.  Three views (``kind``):

``"step"``      the one-step program; a dotted edge ``h[t] → h[t-1]`` marks the recurrence.
``"unfolded"``  k steps left to right (``rankdir=LR``), one cluster per step, the
                initial states in a cluster ``t = 0`` and every parameter drawn *once*
                with an edge to each step that reads it.
``"gradient"``  the forward step and the derived backward step side by side; backward
                nodes are red octagons reached by dashed edges, parameter gradients
                are notes ``∂L/∂W`` and the carried adjoints ``δ⁺h[t-1]`` leave the step.

The text is deterministic: node ids are ``n0, n1, ...`` in program order (never
``id()``), edges follow program order, so the same cell gives byte-identical DOT.

    >>> import rnncomp as rc
    >>> from rnncomp.inspect import to_dot
    >>> print(to_dot(rc.cells.elman(3, 4, 2), "unfolded", k=2).splitlines()[0])
    digraph "elman unfolded x2" {
"""
from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

from ..autodiff import backward_step, carry_key
from ..gradspec import Batch
from ..graph import unfold_program
from ..aliases import backward_aliases, forward_aliases
from ..ir import NodeSym, internal, key_str
from ..lower import LOSS
from ..equations import node_expr, stored_values
from ..checks import a_cell
from ..errors import ArgumentError

KINDS = ("step", "unfolded", "gradient")
MAX_LABEL = 44

# node styles by role: (shape, style, fill colour, border colour)
STYLES = {
    "input":  ("ellipse", "filled", "#dbeafe", "#1e3a8a"),
    "target": ("ellipse", "filled", "#dcfce7", "#14532d"),
    "state":  ("ellipse", "filled", "#fef3c7", "#78350f"),
    "param":  ("box", "filled,rounded", "#e5e7eb", "#111827"),
    "fwd":    ("box", "solid", "#ffffff", "#111827"),
    "loss":   ("doubleoctagon", "filled", "#f3e8ff", "#581c87"),
    "seed":   ("invhouse", "filled", "#fecaca", "#991b1b"),
    "bwd":    ("octagon", "filled", "#fee2e2", "#b91c1c"),
    "grad":   ("note", "filled", "#fecaca", "#991b1b"),
    "carry":  ("house", "filled", "#fecaca", "#991b1b"),
}
# edge styles by role: (style, colour)
EDGE_STYLES = {
    "fwd": ("solid", "#374151"),
    "param": ("solid", "#9ca3af"),
    "recurrent": ("dotted", "#78350f"),
    "bwd": ("dashed", "#b91c1c"),
}


@dataclass
class GNode:
    id: str
    key: tuple
    label: str
    role: str
    group: int


@dataclass
class GEdge:
    src: str
    dst: str
    role: str
    label: str = ""


@dataclass
class Graph:
    """A drawable graph: what :func:`dot_text` prints and the matplotlib fallback draws."""

    name: str
    kind: str
    rankdir: str
    groups: list = field(default_factory=list)   # [label], index = GNode.group
    nodes: list = field(default_factory=list)
    edges: list = field(default_factory=list)
    _ids: dict = field(default_factory=dict, repr=False)
    _seen: set = field(default_factory=set, repr=False)

    def add_node(self, key, label, role, group) -> str:
        nid = f"n{len(self.nodes)}"
        self._ids[key] = nid
        self.nodes.append(GNode(nid, key, label, role, group))
        return nid

    def add_edge(self, src_key, dst_key, role, label=""):
        s, d = self._ids[src_key], self._ids[dst_key]
        if (s, d) not in self._seen:  # one edge per pair, as in networkx (graph.to_networkx)
            self._seen.add((s, d))
            self.edges.append(GEdge(s, d, role, label))

    def node_of(self, key) -> GNode:
        return self.nodes[int(self._ids[key][1:])]


# ----------------------------------------------------------------------------- labels
def _shape(s) -> str:
    return "×".join(map(str, s)) if isinstance(s, tuple) else str(s)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_LABEL else text[:MAX_LABEL - 1] + "…"


def _renamer(alias):
    """A function that shows a key or an expression under the aliases of :mod:`rnncomp.aliases`."""
    def sym(k):
        return NodeSym((internal(alias[k]), k[1])) if k in alias else NodeSym(k)

    def expr(e):
        return e.xreplace({s: sym(s.key) for s in e.free_symbols if isinstance(s, NodeSym) and s.key in alias})
    return sym, expr


def _space(node, key, shapes=None) -> str:
    """``R^n``; ``R^m×n`` for a matrix state (``shapes``: the step's ``matrix_states``, or the
    carried adjoints' names; the IR keeps its value as m·n units)."""
    shape = (shapes or {}).get(key[0], node.size)
    return f"R^{_shape(shape if _units(shape) == node.size else node.size)}"


def _units(s) -> int:
    return s[0] * s[1] if isinstance(s, tuple) else s


def carried_shapes(step) -> dict:
    """The matrix states' shapes by state name and by the name of their adjoint δ⁺C."""
    return {**step.matrix_states, **{carry_key(s)[0]: m for s, m in step.matrix_states.items()}}


def node_label(prog, key, stored=None, alias=None, shapes=None) -> str:
    """``stored``: :func:`~rnncomp.equations.stored_values` of the forward program (default:
    of ``prog``), so a product reads by what it computes (Uz·h[t-1]), not by its key;
    ``alias``: {key: readable name} (:mod:`rnncomp.aliases`); ``shapes``: :func:`carried_shapes`."""
    node = prog.node(key)
    sym, rename = _renamer(alias or {})
    head = str(sym(key))
    if node.is_leaf:
        return f"{head}\n∈ {_space(node, key, shapes)}"
    rhs = sp.sstr(rename(node_expr(prog, key).xreplace(stored_values(prog) if stored is None else stored)))
    if node.op in ("matvec", "slice"):  # a generated name: its key would show the wrong time (Uz·h[t])
        return _short(rhs)
    return head if rhs == head else f"{head}\n= {_short(rhs)}"


def _role(node, key) -> str:
    if node.is_leaf:  # rnncomp.ops.LEAF: input, target, state, param, seed
        return node.op
    return "loss" if key[0] == LOSS else "fwd"


def _reads(node):
    """The keys a node reads: its arguments, then the parameters of a matvec."""
    out = list(node.args)
    if node.op == "matvec":
        out += [(p, None) for p, _, _ in node.attrs["terms"]]
    return out


def _edges(g: Graph, prog, keys, role_of):
    for key in keys:
        for a in _reads(prog.node(key)):
            g.add_edge(a, key, role_of(a, key))


# ----------------------------------------------------------------------------- the three views
def step_graph(cell) -> Graph:
    step = cell.step
    prog = step.prog
    g = Graph(f"{step.name} step", "step", "TB", [f"step t of {step.name!r}"])
    stored, alias = stored_values(prog), forward_aliases(cell)
    for key, node in prog.nodes.items():
        g.add_node(key, node_label(prog, key, stored, alias, step.matrix_states), _role(node, key), 0)
    _edges(g, prog, prog.nodes, lambda a, k: "param" if a[1] is None else "fwd")
    for s in step.states:
        g.add_edge((s, "t"), (s, "t-1"), "recurrent", "t+1")
    return g


def _wrapped(text: str, width: int = 40, lines: int = 4) -> str:
    import textwrap
    out = textwrap.wrap(" ".join(text.split()), width, break_long_words=False, break_on_hyphens=False)
    return "\n".join(out[:lines - 1] + [_short(" ".join(out[lines - 1:]))] if len(out) > lines else out)


def compact_step_graph(cell) -> Graph:
    """The step as its equations (``detail="compact"``): one node per value the user named
    (states, outputs, definitions, the loss) labelled with its whole expression, the
    element-wise chains and products inside it; parameters appear in the labels, not as
    nodes; inputs and previous states on the left, time flowing left to right."""
    from ..printing import _ordered
    step = cell.step
    prog = step.prog
    g = Graph(f"{step.name} step (compact)", "step", "LR", ["inputs, targets, states t-1", f"step t of {step.name!r}"])
    for key, node in prog.nodes.items():
        if node.op in ("input", "target", "state"):
            g.add_node(key, f"{key_str(key)}\n∈ {_space(node, key, step.matrix_states)}", _role(node, key), 0)
    for lhs, rhs in _ordered(cell):
        key = lhs.key
        g.add_node(key, f"{key_str(key)} =\n{_wrapped(sp.sstr(rhs))}", "loss" if key == step.loss_key else "fwd", 1)
        for s in sorted(rhs.free_symbols, key=str):
            if getattr(s, "key", None) in g._ids:
                g.add_edge(s.key, key, "fwd")
    for s in step.states:
        g.add_edge((s, "t"), (s, "t-1"), "recurrent", "t+1")
    return g


def unfolded_graph(cell, k: int = 3) -> Graph:
    step = cell.step
    prog = unfold_program(step, k)
    g = Graph(prog.name, "unfolded", "LR", ["parameters", "t = 0"] + [f"step {s}" for s in range(1, k + 1)])
    stored = stored_values(prog)
    alias = {(name, s): a for (name, _), a in forward_aliases(cell).items() for s in range(1, k + 1)}
    for key, node in prog.nodes.items():
        t = key[1]
        group = 0 if t is None else t + 1
        g.add_node(key, node_label(prog, key, stored, alias, step.matrix_states), _role(node, key), group)
    _edges(g, prog, prog.nodes, lambda a, kk: "param" if a[1] is None else "fwd")
    return g


def gradient_graph(cell) -> Graph:
    step = cell.step
    bwd = backward_step(step)
    fwd, bprog = step.prog, bwd.prog
    g = Graph(f"{step.name} gradient", "gradient", "TB",
              ["parameters", f"forward step t of {step.name!r}", "backward step t (BPTT)",
               "parameter gradients (Σ over t, batch)"])
    stored, fa = {**stored_values(fwd), **stored_values(bprog)}, forward_aliases(cell)  # Vᵀ·δy, not its key
    alias = {**fa, **backward_aliases(bwd, fa, set(cell.decls) | set(fa.values()))}
    name = lambda k: str(_renamer(alias)[0](k))  # noqa: E731
    for key, node in fwd.nodes.items():
        g.add_node(key, node_label(fwd, key, stored, alias, step.matrix_states), _role(node, key),
                   0 if node.op == "param" else 1)
    for key, node in bprog.nodes.items():
        g.add_node(key, node_label(bprog, key, stored, alias, carried_shapes(step)), "seed" if node.is_leaf else "bwd", 2)
    _edges(g, fwd, fwd.nodes, lambda a, k: "param" if a[1] is None else "fwd")
    _edges(g, bprog, bprog.nodes, lambda a, k: "bwd")
    for s, k in bwd.carry_out.items():
        if k is not None:
            ck = carry_key(s, "t-1")
            g.add_node(ck, f"δ⁺{s}[t-1]\ncarried to step t-1", "carry", 2)
            g.add_edge(k, ck, "bwd")
    for p, specs in bwd.grads.items():
        gk = (internal(f"∂L/∂{p}"), None)
        terms = []
        for spec in specs:
            if isinstance(spec, Batch):
                terms.append(name(spec.g))
            else:
                a, v = name(spec.g), name(spec.v)
                o = f"{v}·{a}ᵀ" if spec.tr else f"{a}·{v}ᵀ"
                terms.append(o if spec.c == 1 else f"{spec.c}·{o}")
        g.add_node(gk, f"∂L/∂{p}\n= Σ {_short(' + '.join(terms))}", "grad", 3)
        for spec in specs:
            for src in spec.reads:
                g.add_edge(src, gk, "bwd")
    return g


DETAILS = ("full", "compact")


def check_view(kind: str, detail: str = "full") -> None:
    """Refuse a view :func:`build` cannot draw, before any work (``rnncomp inspect`` checks its
    ``--dot``/``--detail`` with it)."""
    if detail not in DETAILS:
        raise ArgumentError(f"graph detail must be one of {', '.join(DETAILS)}, got {detail!r}")
    if kind not in KINDS:
        raise ArgumentError(f"graph kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if detail == "compact" and kind not in ("step", "gradient"):
        raise ArgumentError(f"detail='compact' is drawn for the step and gradient views, not {kind!r}")


def build(cell, kind: str = "step", k: int = 3, detail: str = "full") -> Graph:
    """The :class:`Graph` of one view (``kind`` in ``"step"``, ``"unfolded"``, ``"gradient"``);
    ``detail="compact"``: one node per named value or equation, see :func:`compact_step_graph`
    and :func:`~rnncomp.inspect.compact.compact_gradient_graph`."""
    check_view(kind, detail)
    if hasattr(cell, "layers"):  # rc.Stack, rc.Bidirectional: each cell in its layer's clusters
        from ..compose.draw import composed_graph
        return composed_graph(cell, kind, k, detail)
    if detail == "compact":
        if kind == "gradient":
            from .compact import compact_gradient_graph
            return compact_gradient_graph(cell)
        return compact_step_graph(cell)
    if kind == "step":
        return step_graph(cell)
    if kind == "unfolded":
        return unfolded_graph(cell, k)
    return gradient_graph(cell)


# ----------------------------------------------------------------------------- DOT text
def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def dot_text(g: Graph) -> str:
    """The DOT source of a :class:`Graph` (deterministic)."""
    out = [f"digraph {_q(g.name)} {{",
           f"  graph [rankdir={g.rankdir}, fontname=\"Helvetica\", fontsize=11, newrank=true, "
           "nodesep=0.25, ranksep=0.35];",
           '  node [fontname="Helvetica", fontsize=10, margin="0.08,0.04"];',
           '  edge [arrowsize=0.6];']
    by_group: dict = {}
    for n in g.nodes:
        by_group.setdefault(n.group, []).append(n)
    for gi, label in enumerate(g.groups):
        members = by_group.get(gi, [])
        if not members:
            continue
        out.append(f"  subgraph cluster_{gi} {{")
        out.append(f"    label={_q(label)}; style=\"rounded,dashed\"; color=\"#9ca3af\";")
        for n in members:
            shape, style, fill, col = STYLES[n.role]
            out.append(f"    {n.id} [label={_q(n.label)}, shape={shape}, style={_q(style)}, "
                       f"fillcolor={_q(fill)}, color={_q(col)}];")
        out.append("  }")
    for e in g.edges:
        style, col = EDGE_STYLES[e.role]
        extra = ", constraint=false" if e.role == "recurrent" else ""
        if e.label:
            extra += f", label={_q(e.label)}, fontsize=9"
        out.append(f"  {e.src} -> {e.dst} [style={style}, color={_q(col)}{extra}];")
    out.append("}")
    return "\n".join(out) + "\n"


def to_dot(cell, kind: str = "step", k: int = 3, detail: str = "full") -> str:
    """Graphviz DOT text of a cell's ``kind`` view (see the module docstring)."""
    a_cell("to_dot", cell)
    return dot_text(build(cell, kind, k, detail))
