"""Lowering a :class:`~rnncomp.cell.Cell` to the one-step IR program.

The step program reads leaves (inputs and targets at ``"t"``, states at
``"t-1"``, parameters at ``None``) and defines the new states ``(h, "t")``,
the outputs, named definitions and the per-step cost ``("ℓ", "t")``.
Equations are lowered on demand, so ``h`` may read ``c.new`` whatever the
order of declaration; a cycle is an algebraic loop and is reported.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

from .dsl import Vec, MatVec, Slice, Concat, RowSum, LogSumExp, Structural, _display_expr
from .matrix_dsl import MATRIX_ATOMS, Outer, SMatVec
from .errors import CellError, ShapeError
from .exprwalk import distinct_subexpressions, replace
from .ir import Node, Program, internal, placeholder, verify, key_str
from .logistic import exp_products, logistic_form

LOSS = internal("ℓ")


class NodeRef(Vec):
    """Inside lowering: a symbol for an already lowered node."""


@dataclass
class Step:
    """A lowered cell: the one-step program and what its keys mean."""

    name: str
    prog: Program
    inputs: dict = field(default_factory=dict)    # name -> size
    targets: dict = field(default_factory=dict)   # name -> size
    states: dict = field(default_factory=dict)    # name -> size
    state_init: dict = field(default_factory=dict)  # state -> learnable param name or None
    params: dict = field(default_factory=dict)    # name -> shape (int or (m, n))
    outputs: dict = field(default_factory=dict)   # name -> size
    has_loss: bool = False
    matrix_states: dict = field(default_factory=dict)  # matrix state -> (m, n); its value is m·n units
    derived: dict = field(default_factory=dict)   # constant or derived weight -> shape (read like params)

    @property
    def loss_key(self):
        return (LOSS, "t")


def lower(cell) -> Step:
    return _Lowerer(cell).run()


class _Lowerer:
    def __init__(self, cell):
        self.cell = cell
        self.prog = Program(name=cell.name)
        self.memo: dict = {}
        self.splits: dict = {}  # split()'s results
        self.busy: list[str] = []
        self.counter = 0
        self.refs: dict = {}
        self.mshapes: dict = {}  # key -> (m, n) of a matrix value (flattened in the IR)

    def run(self) -> Step:
        cell, step = self.cell, Step(self.cell.name, self.prog)
        for d in cell.decls.values():
            if d.kind in ("input", "target"):
                self.prog.add((d.name, "t"), Node(d.kind, (), d.shape))
                (step.inputs if d.kind == "input" else step.targets)[d.name] = d.shape
            elif d.kind == "param":
                self.prog.add((d.name, None), Node("param", (), d.shape))
                step.params[d.name] = d.shape
            elif d.kind in ("const", "weight"):  # computed before the time loop (rnncomp.weights)
                self.prog.add((d.name, None), Node("param", (), d.shape))
                step.derived[d.name] = d.shape
            elif d.kind == "state":
                n = d.shape[0] * d.shape[1] if isinstance(d.shape, tuple) else d.shape
                self.prog.add((d.name, "t-1"), Node("state", (), n))
                step.states[d.name] = n
                if isinstance(d.shape, tuple):  # a matrix state, kept flattened row-major
                    step.matrix_states[d.name] = self.mshapes[(d.name, "t-1")] = self.mshapes[(d.name, "t")] = d.shape
                step.state_init[d.name] = f"{d.name}_0" if d.init == "learn" else None
        missing = [s for s in step.states if s not in cell.updates]
        if missing:
            raise CellError(f"cell {cell.name!r}: state {missing[0]!r} has no update "
                            f"(call cell.update({missing[0]}, ...))")
        for name in cell.updates:
            self.equation(name)
        for d in cell.decls.values():
            if d.kind in ("output", "define"):
                self.equation(d.name)
                if d.kind == "output":
                    step.outputs[d.name] = d.shape
        if cell.loss_expr is not None:
            where = f"cell {cell.name!r}, loss"
            k = self.lower(cell.loss_expr, where)
            self.prog.add((LOSS, "t"), Node("sum", (k,), 1))
            step.has_loss = True
        verify(self.prog)
        return step

    # ------------------------------------------------------------------ equations
    def equation(self, name: str):
        key = (name, "t")
        if key in self.prog.nodes:
            return key
        if name in self.busy:
            chain = " → ".join(self.busy[self.busy.index(name):] + [name])
            raise CellError(f"cell {self.cell.name!r}: algebraic loop (a value depends on itself "
                            f"within one step): {chain}; read a state's old value to break it")
        d = self.cell.decls[name]
        self.busy.append(name)
        if d.kind == "state":
            expr, where = self.cell.updates[name], f"cell {self.cell.name!r}, update of state {name!r}"
        else:
            expr, where = d.expr, f"cell {self.cell.name!r}, {d.kind} {name!r}"
        self.lower(expr, where, dest=key, size=d.shape[0] * d.shape[1] if isinstance(d.shape, tuple) else d.shape)
        self.busy.pop()
        return key

    def symbol(self, s: Vec):
        name = s.name
        if name.endswith(".new"):
            return self.equation(name[:-4])
        d = self.cell.decls[name]
        if d.kind in ("input", "target"):
            return (name, "t")
        if d.kind in ("param", "const", "weight"):  # leaves: a vector constant reads like a parameter
            return (name, None)
        if d.kind == "state":
            return (name, "t-1")
        return self.equation(name)

    # ------------------------------------------------------------------ expressions
    def lower(self, e, where: str, dest=None, size=None):
        if dest is None and e in self.memo:
            return self.memo[e]
        if isinstance(e, Vec):
            k = self.refs[e] if isinstance(e, NodeRef) else self.symbol(e)
            node = None if dest is None else Node("ew", (k,), size, {"expr": placeholder(0)})
        elif isinstance(e, Structural):
            k, node = None, self.structural(e, where)
        else:
            k, node = None, self.elementwise(e, where, size)
        if node is not None and dest is not None and size is not None and node.size != size:
            # a per-step scalar assigned to a vector: broadcast it
            inner = self.prog.add(self.prog.fresh(f"{dest[0]}·b", "t"), node)
            node = Node("ew", (inner,), size, {"expr": placeholder(0)})
        if node is not None:
            k = self.prog.add(dest or self.temp(node), node)
        if dest is None:
            self.memo[e] = k
        return k

    def temp(self, node):
        """A fresh key for a value the lowering generates: a product or a slice named after what
        it computes (:data:`NAMED_TEMPS`), anything else numbered (:data:`NUMBERED_TEMPS`)."""
        named = NAMED_TEMPS.get(node.op)
        if named is not None:
            base = named(node)
        else:
            self.counter += 1
            base = NUMBERED_TEMPS[node.op](node) + str(self.counter)
        return self.prog.fresh(base, "t")

    def per_sample(self, k):
        """Structural ops work on per-sample rows: a shared parameter vector read by one
        gets a per-sample copy node first (its gradient is then summed over the batch)."""
        node = self.prog.node(k)
        if node.op != "param":
            return k
        return self._copy(k, node)

    def _copy(self, k, node):
        key = ("rows", k)
        if key not in self.memo:
            self.memo[key] = self.prog.add(self.prog.fresh(f"{k[0]}·rows", "t"),
                                           Node("ew", (k,), node.size, {"expr": placeholder(0)}))
        return self.memo[key]

    def structural(self, e, where) -> Node:
        if isinstance(e, MatVec):
            v = self.per_sample(self.lower(e.args[1], where))
            terms = tuple((n.name, bool(int(tr)), c) for n, tr, c in e.args[0])
            name, tr, _ = terms[0]
            shape = self.cell.decls[name].shape
            return Node("matvec", (v,), shape[1] if tr else shape[0], {"terms": terms})
        if isinstance(e, Slice):
            v = self.per_sample(self.lower(e.args[0], where))
            lo, hi = int(e.args[1]), int(e.args[2])
            return Node("slice", (v,), hi - lo, {"lo": lo})
        if isinstance(e, Concat):
            ks = tuple(self.per_sample(self.lower(a, where)) for a in e.args)
            return Node("concat", ks, sum(self.prog.node(k).size for k in ks))
        if isinstance(e, MATRIX_ATOMS):
            return self.matrix_atom(e, where)
        op = "sum" if isinstance(e, RowSum) else "lse"
        return Node(op, (self.per_sample(self.lower(e.args[0], where)),), 1)

    def mshape(self, k):
        """(m, n) of a matrix value (a matrix state, an outer product, math over them), else None."""
        if k not in self.mshapes:
            node = self.prog.node(k)
            shapes = [self.mshape(a) for a in node.args] if node.op == "ew" else []
            self.mshapes[k] = node.attrs.get("shape") if node.op in ("outer", "mbcast") else next(
                (s for s in shapes if s), None)
        return self.mshapes[k]

    def matrix_atom(self, e, where) -> Node:
        args = [self.per_sample(self.lower(a, where)) for a in e.args if not a.is_Integer]
        if isinstance(e, Outer):
            m, n = (self.prog.node(a).size for a in args)
            return Node("outer", tuple(args), m * n, {"shape": (m, n)})
        (m, n), axis = self.mshape(args[0]), int(e.args[-1])
        if isinstance(e, SMatVec):
            return Node("smatvec", tuple(args), n if axis else m, {"shape": (m, n), "transposed": bool(axis)})
        return Node("mreduce", tuple(args), m if axis == 1 else n, {"shape": (m, n), "axis": axis})

    def rows(self, keys):
        """Element-wise over a matrix: a vector operand of size m scales the rows (mbcast)."""
        shape = next((s for s in map(self.mshape, keys) if s), None)
        if shape is None:
            return keys
        m, n = shape
        out = []
        for k in keys:
            if self.prog.node(k).size == m and not self.mshape(k) and n != 1:
                if ("mbcast", k) not in self.memo:
                    self.memo[("mbcast", k)] = self.prog.add(self.prog.fresh(f"by_rows({k[0]})", "t"), Node(
                        "mbcast", (self.per_sample(k),), m * n, {"shape": shape, "axis": 1}))
                k = self.memo[("mbcast", k)]
            out.append(k)
        return out

    def split(self, e, where, top=False):
        """Give every inner function application, and every compound argument of one, a node
        of its own: the backward step then reuses σ(a) and a instead of recomputing them."""
        if isinstance(e, (Vec, Structural)) or not e.args or not isinstance(e, sp.Basic):
            return e
        done = self.splits.get((e, top))  # a shared sub-expression is split once, not once per path
        if done is None:
            done = self.splits[(e, top)] = self._split(e, where, top)
        return done

    def _split(self, e, where, top):
        is_call = isinstance(e, (sp.Function, sp.Max, sp.Min)) and not isinstance(e, sp.Piecewise)
        args = []
        for a in e.args:
            a = self.split(a, where)
            if is_call and isinstance(a, sp.Expr) and a.args and not isinstance(a, (Vec, Structural)):
                a = self.ref(a, where, "a")
            args.append(a)
        e = e.func(*args) if tuple(args) != e.args else e
        if is_call and not top:
            return self.ref(e, where, getattr(e.func, "__name__", "f"))
        return e

    def ref(self, e, where, base):
        """A symbol standing for the node that computes ``e`` (shared when ``e`` repeats)."""
        k = self.memo.get(e)
        if k is None:
            self.counter += 1
            k = self.prog.add(self.prog.fresh(f"{base}{self.counter}", "t"), self.elementwise(e, where, None, split=False))
            self.memo[e] = k
        sym = NodeRef(f"#{k[0]}")
        self.refs[sym] = k
        return sym

    def elementwise(self, e, where, size, split=True) -> Node:
        if split:  # a hand-written e/(1 + e) as σ first: exp(2u)/(1 + exp(u))**2 overflows; then
            # exp(a)·exp(b) as exp(a + b): exp(2u)·exp(-exp(u)) is inf·0 (rnncomp.logistic)
            e = self.split(exp_products(logistic_form(e)), where, top=True)
        keys, template = templated(e, lambda a: self.lower(a, where))
        keys = self.rows(keys)
        sizes = {k: self.prog.node(k).size for k in keys}
        big = sorted({n for n in sizes.values() if n != 1})
        if len(big) > 1:
            detail = ", ".join(f"{key_str(k)}: {n}" for k, n in sizes.items() if n != 1)
            raise ShapeError(f"{where}: element-wise operands of different sizes ({detail}) in "
                             f"{_display_expr(e)}")
        n = big[0] if big else 1
        if size is not None and n == 1:
            n = size
        return Node("ew", tuple(keys), n, {"expr": template})


def templated(e, key_of) -> tuple:
    """(keys, template): ``e`` with each vector or structural atom replaced by the placeholder of
    its node's key (``key_of(atom)``, which lowers it); atoms with one key share a placeholder."""
    atoms = [sub for sub in distinct_subexpressions(e, skip=(Vec, Structural)) if isinstance(sub, (Vec, Structural))]
    keys, repl = [], {}
    for a in atoms:
        k = key_of(a)
        if k not in keys:
            keys.append(k)
        repl[a] = placeholder(keys.index(k))
    return keys, replace(e, repl)


def _mat_label(terms) -> str:
    if len(terms) == 1:
        name, tr, c = terms[0]
        return ("" if c == 1 else "-" if c == -1 else f"{c}") + name + ("ᵀ" if tr else "")
    return "M"


# The names of the values the lowering generates, by op (``_Lowerer.temp``): a product or a slice
# is named after what it computes (``Uz·h``, ``x[0:2]``); anything else is numbered (``a3``).
NAMED_TEMPS = {
    "matvec": lambda node: f"{_mat_label(node.attrs['terms'])}·{node.args[0][0]}",
    "slice": lambda node: f"{node.args[0][0]}[{node.attrs['lo']}:{node.attrs['lo'] + node.size}]",
}
NUMBERED_TEMPS = {
    "ew": lambda node: "a",
    "concat": lambda node: "cat",
    "sum": lambda node: "Σ",
    "lse": lambda node: "lse",
    "outer": lambda node: "outer",
    "smatvec": lambda node: "Cv",
    "mreduce": lambda node: "rowsum" if node.attrs.get("axis") == 1 else "colsum",
}
