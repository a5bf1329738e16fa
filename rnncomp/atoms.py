"""Structural sympy atoms: the non-element-wise operations inside a cell's expressions.

A matrix product, a slice, a concatenation and the row reductions are unevaluated sympy
functions (:class:`Structural`), kept whole by sympy and turned into IR nodes of their own by
:mod:`rnncomp.lower`; each prints itself as text and LaTeX.  The DSL (:mod:`rnncomp.dsl`)
builds them; they import nothing of the compiler.

    >>> import sympy as sp
    >>> v = sp.Symbol("v")
    >>> print(Slice(v, 0, 2), RowSum(v), Concat(v, v))
    v[0:2] Σ v [v; v]
"""
from __future__ import annotations

import sympy as sp
from sympy.printing.precedence import PRECEDENCE

#: The precedence of a product of matrices (``W·h``) or of a prefix Σ in text.  It is the
#: precedence of ``+``: sympy's printer then groups such a value where it is a factor, a divisor
#: or a base, ``r*(U·h)``, ``x/(W·h)``, ``(U·x)**2``, a negated product's too (``x - (W·h)/2``:
#: a product with a minus sign prints at the level of ``+``), and leaves it bare as a term,
#: ``b + U·h``, or an argument, ``tanh(W·h)``.  ``-(U·h)`` is grouped as well (sympy's rule for
#: a function below ``*``).  Without it ``U·x**2`` read as U·x², ``x/W·h`` as (x/W)·h.
GROUPED = PRECEDENCE["Add"]


class Structural(sp.Function):
    """Base of the non-element-wise operations inside a sympy expression."""

    is_real = True

    @classmethod
    def eval(cls, *args):
        return None


class MatVec(Structural):
    """``M @ v`` where M is a linear combination of (possibly transposed) matrix parameters.

    args: (terms, v) with terms a Tuple of (Symbol(param), Integer(transposed), coef).
    Printed grouped where it is a factor, a divisor or a base (:data:`GROUPED`).
    """

    nargs = 2
    precedence = GROUPED

    def _sympystr(self, printer):
        return f"{_mat_str(self.args[0])}·{_paren(printer, self.args[1])}"

    def _latex(self, printer, exp=None):
        return _powered(r"%s\,%s" % (_mat_str(self.args[0], latex=True), _paren(printer, self.args[1], latex=True)),
                        printer, exp)

    def _pretty(self, printer):
        return printer._print(sp.Symbol(f"{_mat_str(self.args[0])}·({sp.sstr(self.args[1])})"))


class Slice(Structural):
    """``v[lo:hi]``."""

    nargs = 3

    def _sympystr(self, printer):
        return f"{_paren(printer, self.args[0])}[{self.args[1]}:{self.args[2]}]"


class Concat(Structural):
    """``[a; b; ...]``, vectors stacked."""

    def _sympystr(self, printer):
        return "[" + "; ".join(printer._print(a) for a in self.args) + "]"


class RowSum(Structural):
    """Σ over the units of a vector (a size-1 result).  Printed grouped where it is a factor or
    a base (:data:`GROUPED`), ``(Σ v)**2`` and ``(Σ v)/4`` (not ``Σ v**2``, which reads as
    Σ v²), and a sum it reduces in parentheses, ``Σ (a + b)``."""

    nargs = 1
    precedence = GROUPED

    def _sympystr(self, printer):
        return "Σ " + operand(printer, self.args[0])

    def _latex(self, printer, exp=None):
        return _powered(r"\sum %s" % _paren(printer, self.args[0], latex=True), printer, exp)


class LogSumExp(Structural):
    """log Σ exp(v), computed stably (a size-1 result)."""

    nargs = 1

    def _sympystr(self, printer):
        return f"logsumexp({printer._print(self.args[0])})"


def operand(printer, e) -> str:
    """The text of ``e`` after a prefix Σ: a sum (or a negated value) in parentheses, a
    product or another Σ bare (``Σ W·h``, ``Σ Σ v``: the Σ takes all of it)."""
    grouped = isinstance(e, Structural) and getattr(e, "precedence", None) == GROUPED
    return printer.parenthesize(e, PRECEDENCE["Add"], strict=grouped)


def _powered(tex: str, printer, exp) -> str:
    """LaTeX of a structural atom raised to ``exp`` (sympy passes ``exp`` to a function's
    ``_latex`` when it is the base of a power)."""
    return tex if exp is None else r"\left(%s\right)^{%s}" % (tex, exp)


def _paren(printer, e, latex=False):
    s = sp.latex(e) if latex else printer._print(e)
    if e.is_Symbol or e.is_Function:
        return s
    return rf"\left({s}\right)" if latex else f"({s})"


def _mat_str(terms, latex=False) -> str:
    out = []
    for name, tr, coef in terms:
        if latex:
            from .latex import ident_latex, name_latex
            m = (name_latex if "%" in name.name else ident_latex)(name.name) + (r"^{\top}" if int(tr) else "")
        else:
            m = name.name.replace("%", "") + ("ᵀ" if int(tr) else "")  # "%": a generated name's mark
        if coef == 1:
            piece = m
        elif coef == -1:
            piece = "-" + m
        else:
            piece = f"{sp.latex(coef) if latex else coef}{m}"
        out.append(piece)
    s = " + ".join(out).replace("+ -", "- ")
    return s if len(out) == 1 else f"({s})"
