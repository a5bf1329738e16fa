"""Rendering a cell's graph to SVG or PNG.

Route, in order:

1. Graphviz: if the ``dot`` program is on ``PATH``, the DOT text of :mod:`.dot` is
   piped through ``dot -Tsvg`` / ``dot -Tpng``.
2. matplotlib (installed with rnncomp): a deterministic layered drawing of
   the same :class:`~rnncomp.inspect.dot.Graph`: columns left to right are the
   groups (parameters, then time steps), and within a group the longest-path depth;
   rows are the order of the nodes within a column.  SVG output carries no date
   and a fixed hash salt, so it is byte-identical from run to run.
3. Otherwise :class:`RenderError` says what to install.
"""
from __future__ import annotations

import pathlib
import shutil
import subprocess

from ..errors import ArgumentError, RnncompError
from .dot import EDGE_STYLES, STYLES, Graph, build, dot_text

FORMATS = ("svg", "png")
ENGINES = ("auto", "dot", "matplotlib")
COLUMN, STAGGER = 4.0, 0.9   # layout units: between groups, and the depth shift inside one
# matplotlib box styles standing in for the DOT shapes (backward nodes: saw-toothed)
BOXES = {"input": "round,pad=0.3", "target": "round,pad=0.3", "state": "round,pad=0.3",
         "param": "round4,pad=0.3", "fwd": "square,pad=0.3", "loss": "square,pad=0.4",
         "seed": "sawtooth,pad=0.3", "bwd": "sawtooth,pad=0.3", "grad": "sawtooth,pad=0.3",
         "carry": "sawtooth,pad=0.3"}


class RenderError(RnncompError, RuntimeError):
    """No renderer is available (or the one asked for failed)."""


def have_dot() -> bool:
    return shutil.which("dot") is not None


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def available_engine() -> str | None:
    """``"dot"``, ``"matplotlib"`` or ``None``: what :func:`render` would use."""
    return "dot" if have_dot() else "matplotlib" if have_matplotlib() else None


def render(cell_or_graph, path, kind: str = "step", k: int = 3, fmt: str | None = None,
           engine: str = "auto", detail: str = "full") -> str:
    """Draw a view of a cell (or a prepared :class:`Graph`) to ``path``; returns the engine used."""
    path = pathlib.Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt not in FORMATS:
        raise ArgumentError(f"render: format must be one of {', '.join(FORMATS)}, got {fmt!r} (from {path})")
    if engine not in ENGINES:
        raise ArgumentError(f"render: engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    g = cell_or_graph if isinstance(cell_or_graph, Graph) else build(cell_or_graph, kind, k, detail)
    if engine == "auto":
        engine = available_engine() or ""
    if engine == "dot":
        exe = shutil.which("dot")
        if exe is None:
            raise RenderError("render: Graphviz's `dot` is not on PATH (install graphviz)")
        r = subprocess.run([exe, f"-T{fmt}", "-o", str(path)], input=dot_text(g).encode(),
                           capture_output=True, check=False)
        if r.returncode != 0:
            raise RenderError(f"render: dot failed ({r.returncode}): {r.stderr.decode(errors='replace')}")
        return "dot"
    if engine == "matplotlib":
        if not have_matplotlib():
            raise RenderError("render: matplotlib is not installed (pip install 'rnncomp[plot]')")
        draw_matplotlib(g, path, fmt)
        return "matplotlib"
    raise RenderError("render: no renderer available; install Graphviz (the `dot` program, e.g. "
                      "`apt install graphviz`) or matplotlib (`pip install 'rnncomp[plot]'`), "
                      "or write the DOT text with rnncomp.inspect.to_dot / `rnncomp inspect --dot`")


class Picture:
    """A graph that shows itself in a notebook: SVG drawn by Graphviz's ``dot`` or, without it,
    by matplotlib; with neither, the notebook shows an HTML note saying what to install and
    the DOT text.  At a prompt: a one-line summary (``.dot`` holds the DOT text).

        >>> import rnncomp as rc
        >>> p = picture(rc.cells.gru(3, 4, 2))
        >>> p
        <gru gradient (compact): 34 nodes, 40 edges; .dot for the DOT text, .save(path) to draw it>
    """

    def __init__(self, graph: Graph, engine: str | None = "auto"):
        """``engine``: as :func:`render`'s, or None to show the DOT text only."""
        self.graph, self.engine = graph, engine
        self.dot = dot_text(graph)

    def _engine(self):
        return available_engine() if self.engine == "auto" else self.engine

    def save(self, path) -> str:
        return render(self.graph, path, engine=self._engine() or "auto")

    def svg(self) -> str | None:
        """The SVG text, or None when there is no renderer."""
        import tempfile
        if self._engine() is None:
            return None
        with tempfile.TemporaryDirectory() as d:
            path = pathlib.Path(d) / "graph.svg"
            self.save(path)
            return path.read_text()

    def _repr_svg_(self):
        return self.svg()

    def _repr_html_(self):   # only without a renderer: a notebook prefers HTML to SVG
        if self._engine() is not None:
            return None
        import html
        return ("<p>No renderer for this graph: install Graphviz (<code>apt install graphviz</code>) "
                "or matplotlib. Its DOT text:</p><pre>" + html.escape(self.dot) + "</pre>")

    def __repr__(self) -> str:
        return (f"<{self.graph.name}: {len(self.graph.nodes)} nodes, {len(self.graph.edges)} edges; "
                ".dot for the DOT text, .save(path) to draw it>")


def picture(cell, kind: str = "gradient", k: int = 3, detail: str = "compact", engine: str | None = "auto") -> Picture:
    """A view of a cell for a notebook (default: the compact gradient graph)."""
    return Picture(build(cell, kind, k, detail), engine)


# ----------------------------------------------------------------------------- layered layout
def layout(g: Graph) -> dict:
    """``{node id: (x, y)}``: one column per group (parameters, time steps ...), rows in program
    order within it; a node is shifted right by its longest-path depth modulo 3 inside the
    group, so that edges skipping rows stay visible."""
    preds: dict = {}
    for e in g.edges:
        if e.role != "recurrent":
            preds.setdefault(e.dst, []).append(e.src)
    group_of = {n.id: n.group for n in g.nodes}
    depth: dict = {}
    rows: dict = {}
    pos = {}
    for n in g.nodes:  # program order is topological
        ps = [p for p in preds.get(n.id, []) if group_of[p] == n.group and p in depth]
        depth[n.id] = 1 + max((depth[p] for p in ps), default=-1)
        row = rows.get(n.group, 0)
        rows[n.group] = row + 1
        pos[n.id] = (n.group * COLUMN + STAGGER * (depth[n.id] % 3), -row)
    used = sorted(set(group_of.values()))
    squeeze = {gi: i for i, gi in enumerate(used)}  # empty groups take no room
    return {nid: ((squeeze[group_of[nid]] * COLUMN) + (x - group_of[nid] * COLUMN), y)
            for nid, (x, y) in pos.items()}


def draw_matplotlib(g: Graph, path, fmt: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    import matplotlib as mpl

    pos = layout(g)
    xs = [p[0] for p in pos.values()] or [0]
    ys = [p[1] for p in pos.values()] or [0]
    w, h = max(xs) - min(xs) + 1, max(ys) - min(ys) + 1
    # room for the longest label line and the tallest label (the compact view's equations)
    chars = max((len(line) for n in g.nodes for line in n.label.split("\n")), default=10)
    lines = max((n.label.count("\n") + 1 for n in g.nodes), default=1)
    with mpl.rc_context({"svg.hashsalt": "rnncomp", "svg.fonttype": "path", "path.simplify": False}):
        fig = Figure(figsize=(max(4.0, w * max(0.75, 0.025 * chars)), max(2.5, h * max(0.55, 0.17 * lines))),
                     dpi=130)
        FigureCanvasAgg(fig)
        ax = fig.add_axes((0, 0, 1, 1))
        ax.set_xlim(min(xs) - 1.5, max(xs) + 2.5)
        ax.set_ylim(min(ys) - 0.7, max(ys) + 1.0)
        ax.axis("off")
        for e in g.edges:
            style, col = EDGE_STYLES[e.role]
            ls = {"solid": "-", "dashed": "--", "dotted": ":"}[style]
            conn = "arc3,rad=0.25" if e.role == "recurrent" else "arc3,rad=0.0"
            ax.annotate("", xy=pos[e.dst], xytext=pos[e.src], zorder=1,
                        arrowprops=dict(arrowstyle="-|>", color=col, linestyle=ls, lw=0.8,
                                        shrinkA=14, shrinkB=14, connectionstyle=conn))
        for n in g.nodes:
            shape, style, fill, col = STYLES[n.role]
            box = BOXES[n.role]
            ax.text(*pos[n.id], n.label, ha="center", va="center", fontsize=6, zorder=2,
                    bbox=dict(boxstyle=box, fc=fill, ec=col, lw=0.8))
        for gi, label in enumerate(g.groups):
            cx = [pos[n.id][0] for n in g.nodes if n.group == gi]
            if cx:
                ax.text(sum(cx) / len(cx), max(ys) + 0.75, label, ha="center", va="center", fontsize=7,
                        color="#4b5563")
        kw = {"metadata": {"Date": None}} if fmt == "svg" else {"metadata": {"Software": None}}
        fig.savefig(str(path), format=fmt, **kw)
