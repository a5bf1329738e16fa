"""Derived weights in the DSL: element-wise math, transposes, products and norms of parameters.

``W * M`` (a mask), ``sp.exp(W)``, ``g * V / rc.norm(V)`` (weight normalisation), ``W @ W``:
expressions of parameters that depend on no state.  They are sympy expressions over the
atoms below; a cell resolves ``weight @ vector`` into an ordinary product with a *derived
weight* (a declaration of kind ``"weight"``), which the compiler computes once per call
(:mod:`rnncomp.weights`).  Shapes broadcast as in NumPy, a vector parameter of size m standing
for an (m, 1) column (one value per row: per output unit), a scalar for (1, 1).

    >>> import sympy as sp, rnncomp as rc
    >>> cell = rc.Cell("masked")
    >>> W, M = cell.param("W", (3, 3)), cell.const("M", [[1, 0, 0], [1, 1, 0], [1, 1, 1]])
    >>> (W * M).shape, (W @ W.T).shape, rc.norm(W).shape
    ((3, 3), (3, 3), (3, 1))
"""
from __future__ import annotations

import operator

import sympy as sp

from .atoms import GROUPED
from .dsl import MatExpr, NoConditions, Structural, Vec, _display
from .errors import CellError, ShapeError
from .exprwalk import distinct_subexpressions
from .matrix_dsl import _MatrixValue


# ----------------------------------------------------------------------------- atoms
class WMat(Structural):
    """A matrix parameter or constant inside a weight expression: args (name, m, n)."""

    nargs = 3

    def _sympystr(self, printer):
        return self.args[0].name


class WTranspose(Structural):
    """Aᵀ of a weight expression."""

    nargs = 1

    def _sympystr(self, printer):
        return f"{_wrapped(printer, self.args[0])}ᵀ"


class WMatMul(Structural):
    """A·B, a product of two weight expressions; grouped where it is a factor, a divisor or a
    base (``M*(W·A)``, not ``M*W·A``: :data:`~rnncomp.atoms.GROUPED`)."""

    nargs = 2
    precedence = GROUPED

    def _sympystr(self, printer):
        return "·".join(_wrapped(printer, a) for a in self.args)


class WNorm(Structural):
    """‖A‖ over one axis (1: each row's norm, an (m, 1) column; 0: each column's, (1, n))."""

    nargs = 2

    def _sympystr(self, printer):
        return f"‖{printer._print(self.args[0])}‖{'ᵣ' if int(self.args[1]) == 1 else 'ᶜ'}"


class WMatVec(Structural):
    """``weight @ v`` before a cell resolves it into a product with a derived weight (grouped
    as :class:`~rnncomp.atoms.MatVec` is)."""

    nargs = 2
    precedence = GROUPED

    def _sympystr(self, printer):
        return f"({printer._print(self.args[0])})·{_wrapped(printer, self.args[1])}"


WEIGHT_ATOMS = (WMat, WTranspose, WMatMul, WNorm)


def _wrapped(printer, e) -> str:
    s = printer._print(e)
    return s if e.is_Symbol or isinstance(e, (WMat, WNorm, WTranspose)) else f"({s})"


def is_weight_expr(e) -> bool:
    """A sympy expression that contains a matrix atom (so it is a matrix, not a vector) outside
    a product with a vector: ``tanh(exp(A) @ x)`` reads matrices but is a vector."""
    return isinstance(e, sp.Basic) and any(isinstance(s, WEIGHT_ATOMS)
                                           for s in distinct_subexpressions(e, skip=WMatVec))


# ----------------------------------------------------------------------------- the user's object
def _w(x):
    """A sympy form of an operand of weight arithmetic."""
    if isinstance(x, WeightExpr):
        return x.expr
    if isinstance(x, MatExpr):
        return x._sympy_()
    if hasattr(x, "__array__") or isinstance(x, (list, tuple)):
        raise CellError("a constant array in a weight expression must be declared first: "
                        "M = cell.const('M', array), then W * M")
    try:
        return sp.sympify(x, strict=True)
    except (sp.SympifyError, TypeError):
        raise CellError(f"weight expression: cannot use a {type(x).__name__} ({x!r})") from None


class WeightExpr(NoConditions):
    """A matrix computed from parameters: element-wise math (``W * M``, ``exp``), ``.T``,
    ``@`` with another matrix, :func:`norm`.  ``weight @ vector`` is a product with it."""

    __array_ufunc__ = None  # numpy defers: mask * W reaches __rmul__

    def __init__(self, expr, cell=None):
        self.expr, self.cell = expr, cell
        self.shape = None if cell is None else weight_shape(cell, expr, f"cell {cell.name!r}: {self}")

    def _sympy_(self):
        return self.expr

    def _new(self, expr):
        return WeightExpr(expr, self.cell)

    def _op(self, op, o, reflected=False):
        """``self op o`` (``o op self``): a weight, or with a matrix state (``L * S``) the plain
        expression, which the equation reading it refuses by name (:func:`rnncomp.cell_check.check_expr`)."""
        if isinstance(o, _MatrixValue):
            return op(o, self.expr) if reflected else op(self.expr, o)
        o = _w(o)
        return self._new(op(o, self.expr) if reflected else op(self.expr, o))

    def __add__(self, o):
        return self._op(operator.add, o)

    def __radd__(self, o):
        return self._op(operator.add, o, True)

    def __sub__(self, o):
        return self._op(operator.sub, o)

    def __rsub__(self, o):
        return self._op(operator.sub, o, True)

    def __mul__(self, o):
        return self._op(operator.mul, o)

    def __rmul__(self, o):
        return self._op(operator.mul, o, True)

    def __truediv__(self, o):
        return self._op(operator.truediv, o)

    def __rtruediv__(self, o):
        return self._op(operator.truediv, o, True)

    def __pow__(self, o):
        return self._new(self.expr ** _w(o))

    def __neg__(self):
        return self._new(-self.expr)

    @property
    def T(self):
        return self._new(WTranspose(self.expr))

    def __matmul__(self, o):
        if isinstance(o, (WeightExpr, MatExpr)) or is_weight_expr(o):  # is_weight_expr: sp.cos(t) * W
            return self._new(WMatMul(self.expr, _w(o)))
        return matvec(self.expr, o)

    def __rmatmul__(self, o):
        return self._new(WMatMul(_w(o), self.expr))

    def __repr__(self):
        return sp.sstr(self.expr)


def matvec(wexpr, v):
    """``weight @ v``: resolved by the cell that reads it (cell.update/output/define)."""
    if isinstance(v, (MatExpr, WeightExpr)):
        raise CellError(f"({wexpr}) @ {v}: a product of two matrices is a weight expression; "
                        "build it from matrices (W @ U), not inside a vector product")
    try:
        v = sp.sympify(v, strict=True)
    except (sp.SympifyError, TypeError):
        raise CellError(f"({wexpr}) @ {v!r}: the right operand must be a vector expression") from None
    return WMatVec(wexpr, v)


def weight(expr) -> WeightExpr:
    """A matrix expression that sympy built (``sp.tanh(W)``) as a weight again, named as such
    (``sp.tanh(W).T @ sp.tanh(h)`` works as it is too)."""
    if not is_weight_expr(sp.sympify(_w(expr))):
        raise CellError(f"rc.weight({expr!r}): expected an expression of matrices (sp.exp(W), W * M)")
    return expr if isinstance(expr, WeightExpr) else WeightExpr(_w(expr), getattr(expr, "cell", None))


# sympy's scalar expressions have no @ and no .T: a weight that sympy built met anything but a bare
# vector with Python's TypeError (sp.exp(W) @ sp.tanh(h): 'exp' and 'tanh'), and sp.exp(W).T with an
# AttributeError.  sympy.Expr gets both, where sympy defines neither, acting only on expressions of a
# cell's matrices or vectors: for any other, @ returns NotImplemented and .T raises AttributeError, as
# before (what a matrix or a weight on the right handles, it still handles: NotImplemented).
def _expr_matmul(a, b):
    if isinstance(b, (MatExpr, WeightExpr)):
        return NotImplemented
    if is_weight_expr(a):
        return WeightExpr(a) @ b
    if any(isinstance(s, Vec) for s in getattr(a, "free_symbols", ())):
        raise CellError(f"({a}) @ ({b}): the left operand of @ is a vector expression; @ needs a matrix of the "
                        "cell on the left (a parameter, cell.const, or an expression of them such as sp.exp(W)); "
                        "for a dot product use rc.vsum(a * b)")
    return NotImplemented


def _expr_transpose(a):
    if is_weight_expr(a):
        return WeightExpr(a).T
    raise AttributeError(f"{type(a).__name__!r} object has no attribute 'T'")


if not hasattr(sp.Expr, "__matmul__") and not hasattr(sp.Expr, "T"):
    sp.Expr.__matmul__, sp.Expr.T = _expr_matmul, property(_expr_transpose)


def norm(w, axis: int = 1) -> WeightExpr:
    """The Euclidean norm of each row (``axis=1``, an (m, 1) column: weight normalisation
    ``g * V / rc.norm(V)`` with g of size m) or of each column (``axis=0``, a (1, n) row)."""
    if axis not in (0, 1) or isinstance(axis, bool):
        raise CellError(f"rc.norm: axis must be 0 (each column) or 1 (each row), got {axis!r}")
    if isinstance(w, _MatrixValue):
        n = _display(w.name)
        raise ShapeError(f"rc.norm({n}): {n} is a matrix state; rc.norm takes a matrix of parameters "
                         f"(computed once, before the time loop); the norms of a state's rows are "
                         f"sp.sqrt(rc.rowsum({w.name}**2))")
    if isinstance(w, Vec):
        raise ShapeError(f"rc.norm({_display(w.name)}): {_display(w.name)} is a vector; rc.norm "
                         "takes a matrix (for a vector's length use sp.sqrt(rc.vsum(v**2)))")
    cell = w.cell if isinstance(w, (MatExpr, WeightExpr)) else None
    return WeightExpr(WNorm(_w(w), sp.Integer(axis)), cell)


# ----------------------------------------------------------------------------- shapes
def weight_shape(cell, e, where: str) -> tuple:
    """The (m, n) shape of a weight expression, or a CellError naming what does not fit."""
    if isinstance(e, WMat):
        return (int(e.args[1]), int(e.args[2]))
    if isinstance(e, Vec):
        d = cell.decls.get(e.name)
        if d is None or d.kind not in ("param", "const"):
            kind = "undeclared" if d is None else f"{'an' if d.kind[0] in 'aeiou' else 'a'} {d.kind}"
            raise CellError(f"{where}: {_display(e.name)} is {kind}; a derived weight reads only "
                            "parameters and constants (it is computed once, before the time loop)")
        return (d.shape, 1)
    if isinstance(e, WTranspose):
        m, n = weight_shape(cell, e.args[0], where)
        return (n, m)
    if isinstance(e, WMatMul):
        a, b = (weight_shape(cell, x, where) for x in e.args)
        if a[1] != b[0]:
            raise ShapeError(f"{where}: matrix product of a {a[0]}×{a[1]} ({e.args[0]}) and a "
                             f"{b[0]}×{b[1]} ({e.args[1]}) matrix: inner sizes differ")
        return (a[0], b[1])
    if isinstance(e, WNorm):
        m, n = weight_shape(cell, e.args[0], where)
        return (m, 1) if int(e.args[1]) == 1 else (1, n)
    if isinstance(e, Structural):
        raise CellError(f"{where}: {type(e).__name__} ({e}) cannot be part of a weight expression")
    if e.is_number:
        return (1, 1)
    shapes = [weight_shape(cell, a, where) for a in e.args if isinstance(a, sp.Expr)]
    out = [1, 1]
    for s in shapes:
        for i in (0, 1):
            if s[i] != 1 and out[i] not in (1, s[i]):
                detail = ", ".join(f"{a}: {'×'.join(map(str, weight_shape(cell, a, where)))}"
                                   for a in e.args if isinstance(a, sp.Expr))
                raise ShapeError(f"{where}: element-wise operands of shapes that do not broadcast "
                                 f"({detail}) in {e}")
            out[i] = max(out[i], s[i])
    return tuple(out)


def weight_form(expr, where: str):
    """The sympy form of a matrix expression given to ``cell.weight``."""
    if isinstance(expr, (WeightExpr, MatExpr)):
        return _w(expr)
    if is_weight_expr(expr):
        return expr
    raise CellError(f"{where}: expected an expression of matrices (W * M, sp.exp(W), W @ U), got "
                    f"{type(expr).__name__} {expr!r}")


def internal_name(w, taken) -> str:
    """The generated name of an unnamed derived weight: its expression, printed, with the mark
    of a generated name (so it prints as ``(W*M)·h`` and never meets a user's name)."""
    s = sp.sstr(w)
    base = s if isinstance(w, (WMat, sp.Function)) and not isinstance(w, WMatMul) else f"({s})"
    name, i = base + _INTERNAL, 1
    while name in taken:
        i += 1
        name = f"{base}~{i}{_INTERNAL}"
    return name


_INTERNAL = "%"  # rnncomp.ir.INTERNAL (a declaration module imports nothing from the IR)
