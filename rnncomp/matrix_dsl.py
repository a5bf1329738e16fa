"""Matrix-valued states in the DSL: ``cell.state("C", (m, n))``, outer products, C @ v, row sums.

A matrix state is a recurrent (m, n) matrix per sample, declared and differentiated at matrix
level: ``C`` on a right-hand side is C[t-1], ``C.new`` is C[t]; ``rc.outer(a, b)`` is a bᵀ,
``C @ v`` and ``C.T @ u`` are per-sample products, ``rc.rowsum``/``rc.colsum`` reduce.
Element-wise math applies to matrices of one shape; a scalar broadcasts, and a vector of size m
scales the rows (one gate per row).  The IR keeps a matrix flattened row-major (m·n units) with
ops that know its shape (``outer``, ``smatvec``, ``mbcast``, ``mreduce``: every backend); so
do ``h0`` and the final states at call time: ``(B, m·n)``.

    >>> import sympy as sp, rnncomp as rc
    >>> cell = rc.Cell("fast")
    >>> k, v = cell.input("k", 3), cell.input("v", 2)
    >>> C = cell.state("C", (2, 3))
    >>> cell.update(C, C / 2 + rc.outer(v, k))
    >>> y = cell.output("y", C.new @ k)
    >>> cell.size_of(rc.outer(v, k), ""), cell.size_of(C.new @ k, "")
    ((2, 3), 2)
"""
from __future__ import annotations

import sympy as sp

from .atoms import GROUPED
from .dsl import Structural, StateVec, Vec, _display, _operand
from .errors import CellError, ShapeError


class Outer(Structural):
    """a bᵀ: (m,) and (n,) → (m, n); grouped where it is a factor or a base (``i*(v·kᵀ)``,
    :data:`~rnncomp.atoms.GROUPED`)."""

    nargs = 2
    precedence = GROUPED

    def _sympystr(self, printer):
        return f"{_p(printer, self.args[0])}·{_p(printer, self.args[1])}ᵀ"

    def _latex(self, printer, exp=None):
        return _power(f"{_tex(printer, self.args[0])}\\,{_tex(printer, self.args[1])}^{{\\top}}", exp)


class SMatVec(Structural):
    """A matrix value times a vector, per sample: args (X, v, transposed); grouped where it is
    a factor, a divisor or a base (``x*(C·q)``, :data:`~rnncomp.atoms.GROUPED`)."""

    nargs = 3
    precedence = GROUPED

    def _sympystr(self, printer):
        return f"{_p(printer, self.args[0])}{'ᵀ' if int(self.args[2]) else ''}·{_p(printer, self.args[1])}"

    def _latex(self, printer, exp=None):
        tr = "^{\\top}" if int(self.args[2]) else ""
        return _power(f"{_tex(printer, self.args[0])}{tr}\\,{_tex(printer, self.args[1])}", exp)


class MReduce(Structural):
    """Σ over each row (axis 1: (m, n) → m) or each column (axis 0: → n)."""

    nargs = 2

    def _sympystr(self, printer):
        return f"{'rowsum' if int(self.args[1]) == 1 else 'colsum'}({printer._print(self.args[0])})"

    def _latex(self, printer, exp=None):
        name = "rowsum" if int(self.args[1]) == 1 else "colsum"
        return _power(f"\\operatorname{{{name}}}\\left({printer._print(self.args[0])}\\right)", exp)


MATRIX_ATOMS = (Outer, SMatVec, MReduce)


def _p(printer, e):
    s = printer._print(e)
    return s if e.is_Symbol or isinstance(e, MReduce) else f"({s})"


def _tex(printer, e):
    """:func:`_p` for LaTeX: an operand in parentheses unless it is a name or a sum of rows."""
    s = printer._print(e)
    return s if e.is_Symbol or isinstance(e, MReduce) else f"\\left({s}\\right)"


def _power(tex: str, exp) -> str:
    return tex if exp is None else f"\\left({tex}\\right)^{{{exp}}}"


class _MatrixValue:
    """``@`` and ``.T`` of a matrix state (C or C.new)."""

    def __matmul__(self, v):
        return matvec(self, v)

    @property
    def T(self):
        return _Transposed(self)


class MatState(_MatrixValue, StateVec):
    """A matrix-valued state: C[t-1] on a right-hand side; ``C.new`` is C[t]."""

    @property
    def new(self):
        return MatStateNew(self.name + ".new")


class MatStateNew(_MatrixValue, Vec):
    """C[t] of a matrix state."""


class _Transposed:
    """``C.T``: read only as ``C.T @ u``; anything else is a ShapeError naming the state."""

    def __init__(self, x):
        self.x = x

    def __matmul__(self, v):
        return matvec(self.x, v, transpose=True)

    @property
    def T(self):
        return self.x  # (Cᵀ)ᵀ is C, so C.T.T @ v is C @ v

    def _refuse(self, *_):
        n = self.x.name  # as written: C or C.new
        raise ShapeError(f"{n}.T: the transpose of the matrix state {n} is read only as a product with a "
                         f"vector, {n}.T @ u (rc.matvec({n}, u, transpose=True)); element-wise math and "
                         f"sums apply to {n} itself")

    _sympy_ = __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _refuse
    __truediv__ = __rtruediv__ = __pow__ = __rpow__ = __neg__ = __rmatmul__ = _refuse


def matvec(X, v, transpose: bool = False):
    """``X @ v`` (``transpose``: ``Xᵀ @ v``) for a matrix-valued expression X, per sample."""
    return SMatVec(_operand("rc.matvec", X), _operand("rc.matvec", v), sp.Integer(int(bool(transpose))))


def outer(a, b):
    """The outer product a bᵀ of two vectors: an (m, n) matrix."""
    return Outer(_operand("rc.outer", a), _operand("rc.outer", b))


def rowsum(X):
    """Σ over each row of a matrix: a vector of size m."""
    return MReduce(_operand("rc.rowsum", X), sp.Integer(1))


def colsum(X):
    """Σ over each column of a matrix: a vector of size n."""
    return MReduce(_operand("rc.colsum", X), sp.Integer(0))


def atom_shape(size_of, e, where):
    """The shape of a matrix atom (``size_of``: the cell's, for its operands)."""
    def vector(a, what):
        n = size_of(a, where)
        if isinstance(n, tuple):
            raise ShapeError(f"{where}: {what}: {_show(a)} is a {n[0]}×{n[1]} matrix, not a vector")
        return n

    def matrix(a, what):
        s = size_of(a, where)
        if not isinstance(s, tuple):
            raise ShapeError(f"{where}: {what}: {_show(a)} is a vector of size {s}, not a matrix "
                             "(a matrix state: cell.state(name, (m, n)), or rc.outer(a, b))")
        return s

    if isinstance(e, Outer):
        return (vector(e.args[0], "rc.outer"), vector(e.args[1], "rc.outer"))
    if isinstance(e, SMatVec):
        X, v, tr = e.args
        m, n = matrix(X, "@")
        k = vector(v, "@")
        want, out = (m, n) if int(tr) else (n, m)
        if k != want:
            raise ShapeError(f"{where}: {_show(X)}{'ᵀ' if int(tr) else ''} @ ({_show(v)}): the matrix is "
                             f"{m}×{n}{' (transposed)' if int(tr) else ''} but the vector has size {k}")
        return out
    m, n = matrix(e.args[0], "rc.rowsum" if int(e.args[1]) == 1 else "rc.colsum")
    return m if int(e.args[1]) == 1 else n


def broadcast(sizes: dict, where, expr):
    """Element-wise shapes: one matrix shape (m, n) with scalars and size-m vectors (per row)."""
    mats = {s for s in sizes.values() if isinstance(s, tuple)}
    if len(mats) > 1:
        raise ShapeError(f"{where}: element-wise matrices of different shapes "
                         f"({', '.join(f'{_show(a)}: {s[0]}×{s[1]}' for a, s in sizes.items() if isinstance(s, tuple))}) "
                         f"in {_show(expr)}")
    (m, n), = mats
    bad = {a: s for a, s in sizes.items() if not isinstance(s, tuple) and s not in (1, m)}
    if bad:
        a, s = next(iter(bad.items()))
        raise ShapeError(f"{where}: {_show(a)} (size {s}) against a {m}×{n} matrix in {_show(expr)}: a vector "
                         f"scales the rows, so it must have size {m} (or 1)")
    return (m, n)


def check_matrix_shape(shape, where):
    if len(shape) != 2 or not all(isinstance(s, int) and s >= 1 for s in shape):
        raise CellError(f"{where}: a matrix state's shape must be (m, n) of positive integers, got {shape!r}")


def _show(e):
    return sp.sstr(e.xreplace({s: sp.Symbol(_display(s.name)) for s in e.free_symbols if isinstance(s, Vec)}))
