"""One program at one step as native code: each node's code, looked up in :data:`NODE_CODE`
by its op (the table reads like ``autodiff.RULES``; an op without code is a
:class:`~rnncomp.errors.CompileError` naming it).

A name of memory (``view``, ``stackv``: pass "stack") has no code: it lives in its whole.
Element-wise nodes (``OPS[op].elementwise``) are not emitted one by one: pass "fuse" gathers a
run of them of one size into one loop over batch × units (:meth:`.native_emit.Gen.ew`), in
which a value consumed only inside its own loop is never stored.  Any other node ends the run.
Addresses come from :meth:`.native_emit.Gen.ptr` (the layout: :mod:`rnncomp.passes.layout`).
"""
from __future__ import annotations

from ..errors import CompileError
from ..ir import LEAF_OPS
from ..ops import OPS
from ..passes.layout import MEMORY_OPS
from .native_emit import units_of
from .native_profile import ew_bytes, section


class Site:
    """What the code of a node reads besides the node: the generator ``g`` (its layout
    ``g.L``) and the program (the online executor, :mod:`.native_tangent`, emits its
    structural nodes through :data:`NODE_CODE` with one of these)."""

    def __init__(self, g, prog):
        self.g, self.prog = g, prog

    def ld(self, key):
        """Row stride of a value (its own size unless it lives in a stacked slot)."""
        return self.g.L.ld(key, self.prog.node(key).size)


class ProgramCode(Site):
    """Emits ``prog`` at step ``t`` for ``model`` (a ``NativeModel``) with the generator ``g``."""

    def __init__(self, model, g, prog, t):
        super().__init__(g, prog)
        self.model, self.t = model, t
        self.run: list = []
        self.uses: dict = {}
        for key, node in prog.nodes.items():
            for a in node.args:
                self.uses.setdefault(a, set()).add(key)
        self.readers = model._readers()

    def emit(self, skip=(), only=None):
        g, t = self.g, self.t
        for key, node in self.prog.nodes.items():
            if (node.op in LEAF_OPS or node.op in MEMORY_OPS or key in skip
                    or (only is not None and key not in only)):
                continue
            code = NODE_CODE.get(node.op)
            if code is None:
                raise CompileError(f"native backend: no code for op {node.op!r}")
            out, args = g.ptr(key, t), [g.ptr(a, t) for a in node.args]
            if not OPS[node.op].elementwise:
                self.flush()
            code(self, key, node, out, args)
        self.flush()

    def flush(self):
        """The run of element-wise nodes so far, as one loop; a value consumed only later in
        its own fused loop lives in a register: no store."""
        run, g, model = self.run, self.g, self.model
        if not run:
            return
        mine = {item[0] for item in run}
        nostore = {k for k in mine if k not in self.readers and self.uses.get(k, set()) <= mine}
        moved = ew_bytes(run, mine, nostore, model.dtype.itemsize) if g.profile is not None else 0
        with section(g, "element-wise", moved):
            g.ew(run, nostore if model.fuse else set())
        self.run = []


def _elementwise(pc, key, node, out, args):
    prog = pc.prog
    units = [(units_of(prog.node(a)), prog.node(a).op == "param", pc.ld(a)) for a in node.args]
    if pc.run and (not pc.model.fuse or pc.run[0][1].size != node.size):
        pc.flush()
    pc.run.append((key, node, out, args, units, node.args))


def _matvec(pc, key, node, out, args):
    g, prog, model, t = pc.g, pc.prog, pc.model, pc.t
    terms = node.attrs["terms"]
    v = node.args[0]
    n_in = prog.node(v).size
    part = "hoisted products" if g.B is not g.B_step else "step products"
    with section(g, part, 2.0 * node.size * n_in * len(terms)):
        if all(c == 1 for _, _, c in terms):
            g.matvec(node, out, args[0], n_in, [g.ptr((p, None), t) for p, _, _ in terms],
                     [model.shapes[p] for p, _, _ in terms], pc.ld(v), pc.ld(key))
            return
        # c·(v @ op(P)): one product per term into scratch, scaled and added
        tmp = g.ptr(model._scratch_key, t)
        for i, (p, tr, c) in enumerate(terms):
            one = type(node)(node.op, node.args, node.size, {"terms": ((p, tr, 1),)})
            g.matvec(one, tmp, args[0], n_in, [g.ptr((p, None), t)], [model.shapes[p]], pc.ld(v))
            g.scaled_rows(out, tmp, node.size, pc.ld(key), c, accumulate=i > 0)


def _rows(pc, key, node, out, args):  # slice, pad
    a = node.args[0]
    pc.g.rows(out, node.size, args[0], pc.prog.node(a).size, node.attrs["lo"], node.op, pc.ld(key), pc.ld(a))


def _concat(pc, key, node, out, args):
    lo = 0
    for a, p in zip(node.args, args):
        n = pc.prog.node(a).size
        pc.g.rows(out, node.size, p, n, lo, "part", pc.ld(key), pc.ld(a))
        lo += n


def _reduce(pc, key, node, out, args):  # sum, lse
    a = node.args[0]
    pc.g.reduce(out, args[0], pc.prog.node(a).size, node.op == "lse", pc.ld(key), pc.ld(a))


def _matrix(pc, key, node, out, args):  # matrix states: vector code
    moved = pc.g.dtype.itemsize * (node.size + sum(pc.prog.node(a).size for a in node.args))
    with section(pc.g, "matrix ops", moved):
        pc.g.matrix(node, out, args, pc.ld(key), [pc.ld(a) for a in node.args])


NODE_CODE = {
    "ew": _elementwise,
    "matvec": _matvec,
    "slice": _rows, "pad": _rows,
    "concat": _concat,
    "sum": _reduce, "lse": _reduce,
    "outer": _matrix, "smatvec": _matrix, "mbcast": _matrix, "mreduce": _matrix,
}
