"""A program's nodes as sympy expressions, and a program as equations.

:data:`EXPRS` holds one rule per IR op (:data:`rnncomp.ops.OPS`), keyed like
``autodiff.RULES``: ``rule(node, args, key)`` is what the node computes, as a sympy
expression over the :class:`~rnncomp.ir.NodeSym` of its arguments; a leaf (and a name of
memory made by pass "stack") is its own symbol.  :func:`program_equations` lists a program
with its temporaries inlined; :mod:`rnncomp.printing` and :mod:`rnncomp.inspect` print them.

    >>> import rnncomp as rc
    >>> prog = rc.cells.elman(2, 3, 1).step.prog
    >>> eqs, _ = program_equations(prog, names={"h"})
    >>> print(eqs[0][0], "=", eqs[0][1])
    h[t] = tanh(b + U·h[t-1] + W·x[t])
"""
from __future__ import annotations

from collections import Counter

import sympy as sp

from .atoms import GROUPED, Concat, LogSumExp, MatVec, RowSum, Slice, Structural, operand
from .errors import IRError
from .ir import NodeSym, display, key_str, placeholder
from .matrix_dsl import MReduce, Outer as MOuter, SMatVec, _power
from .weight_dsl import WMatMul, WTranspose


class Pad(Structural):
    """Display atom: v placed at ``lo`` in a vector of zeros (the adjoint of a slice)."""

    nargs = 3

    def _sympystr(self, printer):
        return f"pad({printer._print(self.args[0])}, at={self.args[1]}, size={self.args[2]})"


class Outer(Structural):
    """Display atom: Σ_b a bᵀ (a parameter-gradient contribution).  Only ever scaled by a
    number (``2*δa[t]·x[t]ᵀ``), so it keeps a function's precedence: never grouped."""

    nargs = 2

    def _sympystr(self, printer):
        return f"{printer._print(self.args[0])}·{printer._print(self.args[1])}ᵀ"

    def _latex(self, printer, exp=None):
        return _power(f"{printer._print(self.args[0])}\\,{printer._print(self.args[1])}^{{\\top}}", exp)


class SumTo(Structural):
    """Display atom: the row sums (``Σ_cols``) or column sums (``Σ_rows``) of a weight array,
    grouped as :class:`~rnncomp.atoms.RowSum` is: ``v1*(Σ a*b)/n``, ``Σ (a + b)``."""

    nargs = 2
    precedence = GROUPED

    def _sympystr(self, printer):
        return f"{self.args[1]} {operand(printer, self.args[0])}"

    def _latex(self, printer, exp=None):
        axis = {"Σ_cols": "\\mathrm{cols}", "Σ_rows": "\\mathrm{rows}"}.get(str(self.args[1]))
        sigma = "\\Sigma" + (f"_{{{axis}}}" if axis else "")
        return _power(f"{sigma} {printer._print(self.args[0])}", exp)


class Bcast(Structural):
    """Display atom: a vector repeated along each row (``by_rows``, one value per row) or column."""

    nargs = 2

    def _sympystr(self, printer):
        return f"{'by_rows' if int(self.args[1]) == 1 else 'by_cols'}({printer._print(self.args[0])})"

    def _latex(self, printer, exp=None):
        name = "by\\_rows" if int(self.args[1]) == 1 else "by\\_cols"
        return _power(f"\\operatorname{{{name}}}\\left({printer._print(self.args[0])}\\right)", exp)


# ----------------------------------------------------------------------------- one rule per op
def _itself(node, args, key):
    """A leaf, or a name of memory (pass "stack"): the value is its own symbol."""
    return NodeSym(key)


def _template(node, args, key):
    return node.attrs["expr"].xreplace({placeholder(i): a for i, a in enumerate(args)})


def _matvec(node, args, key):
    terms = sp.Tuple(*[sp.Tuple(sp.Symbol(p), sp.Integer(int(tr)), sp.sympify(c))
                       for p, tr, c in node.attrs["terms"]])
    return MatVec(terms, args[0])


def _slice(node, args, key):
    lo = node.attrs["lo"]
    return Slice(args[0], sp.Integer(lo), sp.Integer(lo + node.size))


def _sumto(node, args, key):
    m, n = node.size
    return SumTo(args[0], sp.Symbol("Σ_cols" if n == 1 and m != 1 else "Σ_rows" if m == 1 and n != 1 else "Σ"))


EXPRS = {
    "input": _itself, "target": _itself, "param": _itself, "state": _itself, "seed": _itself,
    "view": _itself, "stackv": _itself,
    "ew": _template,
    "wew": _template,
    "matvec": _matvec,
    "slice": _slice,
    "pad": lambda node, args, key: Pad(args[0], sp.Integer(node.attrs["lo"]), sp.Integer(node.size)),
    "concat": lambda node, args, key: Concat(*args),
    "sum": lambda node, args, key: RowSum(args[0]),
    "lse": lambda node, args, key: LogSumExp(args[0]),
    "transpose": lambda node, args, key: WTranspose(args[0]),
    "matmul": lambda node, args, key: WMatMul(*args),
    "sumto": _sumto,
    "outer": lambda node, args, key: MOuter(*args),
    "smatvec": lambda node, args, key: SMatVec(args[0], args[1], sp.Integer(int(node.attrs["transposed"]))),
    "mbcast": lambda node, args, key: Bcast(args[0], sp.Integer(node.attrs["axis"])),
    "mreduce": lambda node, args, key: MReduce(args[0], sp.Integer(node.attrs["axis"])),
}


def node_expr(prog, key):
    """The right-hand side of ``key`` as a sympy expression over NodeSyms."""
    node = prog.node(key)
    rule = EXPRS.get(node.op)
    if rule is None:
        raise IRError(f"{prog.name}: {key_str(key)} has op {node.op!r}, which has no printing rule "
                      f"(rnncomp.equations.EXPRS; ops: {', '.join(sorted(EXPRS))})")
    e = rule(node, [NodeSym(a) for a in node.args], key)
    if node.op == "sum" and prog.node(node.args[0]).size == 1:  # Σ over one unit: ℓ of a loss rc.vsum(h)
        return e.args[0]
    return e


# ----------------------------------------------------------------------------- programs
def stored_values(prog) -> dict:
    """{NodeSym(key): what it computes} for the forward program's products and slices.

    Such a node is stored at step t under a generated key, ``(Uo·h, t)``, while it reads
    ``h[t-1]``: printed by its key it would read ``Uo·h[t]``, a product with the wrong time
    index; printed by its expression it reads ``Uo·h[t-1]``.  A parameter's per-sample copy
    (``b·rows``) prints as the parameter."""
    out = {}
    for k, n in prog.nodes.items():
        if n.op in ("matvec", "slice"):
            out[NodeSym(k)] = node_expr(prog, k).xreplace(out)
        elif n.op == "ew" and n.attrs["expr"] == placeholder(0) and prog.node(n.args[0]).op == "param":
            out[NodeSym(k)] = NodeSym(n.args[0])   # the per-sample copy of a parameter vector
    return out


def program_equations(prog, keep=(), names=()):
    """[(lhs, rhs)] for the non-leaf nodes, inlining temporaries used once.

    Kept (never inlined): keys in ``keep`` and nodes named in ``names`` or
    adjoints of those (user-named values and their adjoints).
    """
    uses = Counter(a for n in prog.nodes.values() for a in n.args)
    keep, names = set(keep), set(names)

    def named(key):
        return key in keep or display(key[0]).lstrip("δ⁺") in names

    inline = {k for k, n in prog.nodes.items() if not n.is_leaf and uses[k] <= 1 and not named(k)}
    exprs, eqs = {}, []
    for key, node in prog.nodes.items():
        if node.is_leaf:
            continue
        e = node_expr(prog, key)
        e = e.xreplace({NodeSym(a): exprs[a] for a in node.args if a in exprs})
        if key in inline:
            exprs[key] = e
        else:
            eqs.append((NodeSym(key), e))
    return eqs, exprs
