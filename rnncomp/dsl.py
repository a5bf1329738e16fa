"""The cell DSL: declare inputs, states, parameters, updates, outputs and a loss.

Element-wise math is plain sympy over vector symbols; matrix products,
slices, concatenation and row reductions are *structural* sympy atoms
(unevaluated functions, :mod:`rnncomp.atoms`) that the lowering turns into first-class
IR nodes.  This module holds the symbols, the matrix expressions and the helpers
(``rc.vslice``, ``rc.concat`` ...); the checks a cell makes of each equation are in
:mod:`rnncomp.cell_check`.

    >>> import sympy as sp, rnncomp as rc
    >>> cell = rc.Cell("elman")
    >>> x = cell.input("x", 3)
    >>> h = cell.state("h", 4)
    >>> W, U, b = cell.param("W", (4, 4)), cell.param("U", (4, 3)), cell.param("b", 4)
    >>> cell.update(h, sp.tanh(W @ h + U @ x + b))
    >>> y = cell.output("y", cell.param("V", (2, 4)) @ h.new)
    >>> t = cell.target("t", 2)
    >>> cell.loss((y - t) ** 2 / 2)
    >>> print(cell)  # doctest: +NORMALIZE_WHITESPACE
    cell 'elman'
      inputs:  x[t] ∈ R^3
      states:  h ∈ R^4 (h[0] = 0)
      params:  W ∈ R^4×4, U ∈ R^4×3, b ∈ R^4, V ∈ R^2×4
      targets: t[t] ∈ R^2
      h[t] = tanh(b + U·x[t] + W·h[t-1])
      y[t] = V·h[t]
      ℓ[t] = Σ (-t[t] + y[t])**2/2
"""
from __future__ import annotations

import operator
import re

import sympy as sp

from .errors import CellError, ShapeError
from .atoms import Concat, LogSumExp, MatVec, RowSum, Slice, Structural, _mat_str
from .functions import supported_names

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")  # \Z: "$" would also match before a final newline


# ----------------------------------------------------------------------------- symbols
class Vec(sp.Symbol):
    """A per-step vector (or scalar) of a cell: element-wise math applies to it."""

    __iter__ = None  # not a sequence, whatever sympy probes for

    def __new__(cls, name: str):
        return sp.Symbol.__new__(cls, name, real=True)

    def __matmul__(self, other):
        raise CellError(f"{_display(self.name)} @ {other}: @ needs a matrix parameter on the left "
                        f"(cell.param(name, (m, n))), and {_display(self.name)} is a vector; for a dot "
                        "product use rc.vsum(a * b)")

    def __rmatmul__(self, other):
        from .weight_dsl import is_weight_expr, matvec
        if is_weight_expr(other):  # sp.exp(W) @ h
            return matvec(other, self)
        raise CellError(f"{other} @ {_display(self.name)}: the left operand of @ must be a matrix "
                        f"parameter of the cell (cell.param(name, (m, n))), not {type(other).__name__}")

    def __mod__(self, other):  # sympy's Mod would ask its gcd to iterate the vector (__iter__ = None)
        raise _no_mod(_display(self.name), other)

    def __rmod__(self, other):
        raise _no_mod(other, _display(self.name))

    __divmod__, __rdivmod__ = __mod__, __rmod__

    def __getnewargs_ex__(self):  # pickling: our __new__ fixes the assumptions itself
        return (self.name,), {}

    @property
    def T(self):
        raise ShapeError(f"{_display(self.name)}.T: {_display(self.name)} is a vector; only a matrix "
                         "(cell.param(name, (m, n)) or a weight expression) has a transpose (a column for "
                         "v vᵀ: cell.param(name, (n, 1)))")


def _no_mod(a, b) -> CellError:
    return CellError(f"{a} % {b}: function 'Mod' is not supported element-wise (no derivative); supported: "
                     f"{supported_names()}, and any expression built from them with + - * / **")


def _defer_to_matrices(op):
    """Vec's sympy operator, except that a matrix operand handles it (``g * W``: a weight)."""
    base = getattr(sp.Symbol, op)

    def method(self, other):
        from .weight_dsl import WeightExpr
        if isinstance(other, (MatExpr, WeightExpr)):
            return NotImplemented
        return base(self, other)
    method.__name__ = op
    return method


for _op in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__",
            "__truediv__", "__rtruediv__"):
    setattr(Vec, _op, _defer_to_matrices(_op))


class StateVec(Vec):
    """A recurrent state: on a right-hand side it is h[t-1]; ``h.new`` is h[t]."""

    @property
    def new(self) -> Vec:
        return Vec(self.name + ".new")


def _is_matrix_state(v) -> bool:
    from .matrix_dsl import _MatrixValue
    return isinstance(v, _MatrixValue)


def _display(name: str) -> str:
    return name[:-4] + "[t]" if name.endswith(".new") else name


# ----------------------------------------------------------------------------- matrices
class NoConditions:
    """Matrices (a :class:`MatExpr`, a derived weight) take no comparisons: ``W > 0`` is a
    CellError saying how to write the condition, not Python's TypeError."""

    def _condition(self, op, other):
        raise CellError(f"cell {self.cell.name!r}: a condition on the matrix {self} ({self} {op} {other}): Piecewise "
                        "conditions are of vectors; on a matrix write it with sp.Heaviside, sp.Max or sp.Min "
                        "(e.g. sp.Max(W, 0.1*W))")

    def __gt__(self, other):
        self._condition(">", other)

    def __lt__(self, other):
        self._condition("<", other)

    def __ge__(self, other):
        self._condition(">=", other)

    def __le__(self, other):
        self._condition("<=", other)


class MatExpr(NoConditions):
    """A linear combination of matrix parameters and their transposes.  Anything else made of
    matrices (``W * M``, ``sp.exp(W)``, ``W @ U``) is a :class:`~rnncomp.weight_dsl.WeightExpr`."""

    __array_ufunc__ = None  # numpy defers: mask * W reaches __rmul__

    def __init__(self, cell, terms: dict, shape: tuple):
        self.cell, self.terms, self.shape = cell, dict(terms), shape

    def _sympy_(self):
        """The sympy form inside weight expressions (``sp.exp(W)``): Σ c·W or c·Wᵀ atoms."""
        from .weight_dsl import WMat, WTranspose
        out = sp.S.Zero
        for (n, tr), c in sorted(self.terms.items()):
            m = WMat(sp.Symbol(n), *map(sp.Integer, self.cell.decls[n].shape))
            out += c * (WTranspose(m) if tr else m)
        return out

    def _weight(self):
        from .weight_dsl import WeightExpr
        return WeightExpr(self._sympy_(), self.cell)

    @property
    def T(self) -> "MatExpr":
        return MatExpr(self.cell, {(n, not tr): c for (n, tr), c in self.terms.items()},
                       (self.shape[1], self.shape[0]))

    def _combine(self, other, sign):
        from .weight_dsl import WeightExpr, is_weight_expr
        if _is_matrix_state(other):  # S + L: refused by the equation that reads it, which names it
            return self._sympy_() + sign * other
        if isinstance(other, WeightExpr) or is_weight_expr(other) or \
                (isinstance(other, (int, float, sp.Number)) and not isinstance(other, bool)):
            return self._weight() + other * sign  # element-wise: a derived weight
        if not isinstance(other, MatExpr):
            raise ShapeError(f"cell {self.cell.name!r}: cannot combine the {_shape(self.shape)} matrix "
                             f"{self} with {other}: a matrix adds only to matrices of its shape "
                             "(W - W.T); multiply it by a vector with @")
        if other.shape != self.shape:
            raise ShapeError(f"cell {self.cell.name!r}: cannot add matrices of shapes "
                             f"{_shape(self.shape)} ({self}) and {_shape(other.shape)} ({other})")
        terms = dict(self.terms)
        for k, c in other.terms.items():
            terms[k] = terms.get(k, 0) + sign * c
        return MatExpr(self.cell, {k: c for k, c in terms.items() if c != 0}, self.shape)

    def __add__(self, other):
        return self._combine(other, 1)

    def __sub__(self, other):
        return self._combine(other, -1)

    def __radd__(self, other):
        return self._combine(other, 1)

    def __rsub__(self, other):  # other - self: only a number, a matrix state (or a weight) gets here
        negated = isinstance(other, (int, float, sp.Number)) or _is_matrix_state(other)
        return (-self)._combine(other, 1) if negated else self._combine(other, -1)

    def __neg__(self):
        return self * -1

    def __mul__(self, c):
        if isinstance(c, (int, float, sp.Number)) and not isinstance(c, bool):
            c = sp.sympify(c)
            return MatExpr(self.cell, {k: v * c for k, v in self.terms.items()}, self.shape)
        return self._weight() * c  # element-wise: a mask, a gain, another matrix

    def __rmul__(self, c):
        if isinstance(c, (int, float, sp.Number)) and not isinstance(c, bool):
            return self * c
        return self._weight().__rmul__(c)

    def __rmatmul__(self, a):  # sp.exp(U) @ W: sympy has no @, so it reaches here
        from .weight_dsl import WeightExpr, is_weight_expr
        if is_weight_expr(a):
            return WeightExpr(a, self.cell) @ self
        raise CellError(f"cell {self.cell.name!r}: {type(a).__name__} @ {self}: the left operand must be a matrix "
                        "of the cell (a parameter, cell.const(name, array), or an expression of them)")

    def __truediv__(self, c):
        return self._weight() / c

    def __rtruediv__(self, c):
        return self._weight().__rtruediv__(c)

    def __pow__(self, c):
        return self._weight() ** c

    def __rpow__(self, c):  # 2 ** W: element-wise, as sp.Pow(2, W)
        return sp.Pow(c, self)

    def __abs__(self):  # abs(W), as sp.Abs(W)
        return sp.Abs(self)

    def __floordiv__(self, c):  # W // 2, as for a vector: floor(W / 2)
        return sp.floor(self / c)

    def __rfloordiv__(self, c):
        return sp.floor(c / self)

    def __mod__(self, c):
        raise _no_mod(self, c)

    def __rmod__(self, c):
        raise _no_mod(c, self)

    def __matmul__(self, v):
        from .weight_dsl import WeightExpr, is_weight_expr
        if isinstance(v, (MatExpr, WeightExpr)) or is_weight_expr(v):  # is_weight_expr: sp.cos(t) * W
            return self._weight() @ v
        try:
            v = self.cell._check_expr(v, f"cell {self.cell.name!r}: the vector in {self} @ (...)")
        except CellError as exc:
            if "unknown symbol" not in str(exc):
                raise
            raise CellError(f"{exc}; {self} is a parameter of cell {self.cell.name!r}: is the vector of another "
                            "cell?") from None
        n = self.cell.size_of(v, f"{self} @ ({v})")
        if isinstance(n, tuple):
            raise ShapeError(f"cell {self.cell.name!r}: {self} @ ({_display_expr(v)}): the right operand is a "
                             f"{n[0]}×{n[1]} matrix; multiply a vector (W @ (C @ q))")
        if n != self.shape[1]:
            raise ShapeError(f"cell {self.cell.name!r}: {self} @ ({_display_expr(v)}): {self} is "
                             f"{_shape(self.shape)} but the vector has size {n}")
        terms = sp.Tuple(*[sp.Tuple(sp.Symbol(n_), sp.Integer(int(tr)), sp.sympify(c))
                           for (n_, tr), c in sorted(self.terms.items())])
        return MatVec(terms, v)

    def __repr__(self):
        return _mat_str([(sp.Symbol(n), int(tr), c) for (n, tr), c in sorted(self.terms.items())])


class MatParam(MatExpr):
    """A matrix parameter of a cell."""

    def __init__(self, cell, name: str, shape: tuple):
        super().__init__(cell, {(name, False): sp.Integer(1)}, shape)
        self.name = name


def _shape(s) -> str:
    return "×".join(map(str, s)) if isinstance(s, tuple) else str(s)


def _display_expr(e) -> str:
    return sp.sstr(e.xreplace({s: sp.Symbol(_display(s.name)) for s in e.free_symbols if isinstance(s, Vec)}))


# ----------------------------------------------------------------------------- helpers
def _operand(fn: str, v):
    """A vector operand of a structural helper, or a CellError naming the helper and what it got.
    (The bounds and sizes are checked where the expression is used, naming the cell.)"""
    if isinstance(v, MatExpr):
        raise ShapeError(f"{fn}: {v} is a {_shape(v.shape)} matrix, not a vector (multiply it by a "
                         "vector with @)")
    if isinstance(v, (list, tuple)):
        hint = " (pass the vectors as separate arguments: rc.concat(*vectors))" if fn == "rc.concat" else ""
        raise CellError(f"{fn}: expected a vector expression, got a {type(v).__name__}{hint}")
    try:
        return sp.sympify(v, strict=True)
    except (sp.SympifyError, TypeError):
        raise CellError(f"{fn}: expected a vector expression of a cell, got {type(v).__name__}") from None


def vslice(v, start: int, stop: int):
    """``v[start:stop]`` of a vector expression."""
    v = _operand("rc.vslice", v)
    bounds = []
    for b in (start, stop):
        try:
            if isinstance(b, bool):
                raise TypeError
            bounds.append(sp.Integer(operator.index(b)))
        except TypeError:
            raise CellError(f"rc.vslice({_display_expr(v)}, {start!r}, {stop!r}): the bounds must be "
                            f"integers, got {type(b).__name__} {b!r}") from None
    return Slice(v, *bounds)


def concat(*vs):
    """Stack vector expressions into one vector."""
    if not vs:
        raise CellError("rc.concat() needs at least one vector")
    return Concat(*[_operand("rc.concat", v) for v in vs])


def vsum(v):
    """Σ over units (a per-step scalar)."""
    return RowSum(_operand("rc.vsum", v))


def logsumexp(v):
    """Stable log Σ exp(v) over units."""
    return LogSumExp(_operand("rc.logsumexp", v))


def softmax(z):
    """exp(z − logsumexp(z)), element-wise in z."""
    return sp.exp(z - logsumexp(z))


def softmax_xent(logits, target):
    """Softmax cross-entropy −Σ t log softmax(z) = logsumexp(z)·Σt − Σ t z, stable."""
    return logsumexp(logits) * vsum(target) - vsum(target * logits)
