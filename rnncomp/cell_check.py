"""What a cell checks of each expression as it is written: its symbols, its functions, and
its sizes and broadcasting.  :class:`~rnncomp.cell.Cell` calls these on every update, output,
definition and loss; they read the cell's declarations and import nothing of the compiler.

    >>> import sympy as sp, rnncomp as rc
    >>> cell = rc.Cell("c")
    >>> h, x = cell.state("h", 4), cell.input("x", 3)
    >>> size_of(cell, sp.tanh(cell.param("W", (4, 3)) @ x) + h, "doc")
    4
    >>> size_of(cell, h + x, "doc")
    Traceback (most recent call last):
    ...
    rnncomp.errors.ShapeError: doc: element-wise operands of different sizes (h: 4, x: 3) in h + x
"""
from __future__ import annotations

import numpy as np
import sympy as sp
from sympy.matrices.expressions import MatrixExpr as SympyMatrixExpr

from .dsl import MatExpr, MatVec, Slice, Concat, RowSum, LogSumExp, Structural, Vec, _display, _display_expr, _shape
from .errors import CellError, ShapeError
from .exprwalk import distinct_subexpressions, free_symbols
from .functions import SUPPORTED_FUNCTIONS, cfunction, supported_names
from .matrix_dsl import MATRIX_ATOMS, _MatrixValue, atom_shape, broadcast
from .weight_dsl import WMat, WMatVec, is_weight_expr


def check_expr(cell, expr, where):
    """``expr`` sympified and checked against ``cell``: declared symbols, supported functions,
    a vector (not a matrix, not a condition); ``weight @ v`` resolved to a derived weight."""
    if isinstance(expr, MatExpr):
        raise ShapeError(f"{where}: {expr} is a {_shape(expr.shape)} matrix, not a vector "
                         "(multiply it by a vector with @)")
    if isinstance(expr, (list, tuple, np.ndarray, sp.MatrixBase)):
        raise CellError(f"{where}: expected a sympy expression of the cell's vectors, got "
                        f"{type(expr).__name__} (use rc.concat to stack vectors)")
    try:
        expr = sp.sympify(expr, strict=True)
    except (sp.SympifyError, TypeError):
        raise CellError(f"{where}: expected a sympy expression, got {expr!r}") from None
    if isinstance(expr, (sp.logic.boolalg.BooleanFunction, sp.logic.boolalg.BooleanAtom,
                         sp.core.relational.Relational)):
        raise CellError(f"{where}: {expr} is a condition, not a number (use sp.Piecewise)")
    if not isinstance(expr, sp.Expr):
        raise CellError(f"{where}: expected a sympy expression, got {type(expr).__name__}")
    foreign = next((m for m in distinct_subexpressions(expr) if isinstance(m, SympyMatrixExpr)), None)
    if foreign is not None:
        names = sorted(str(a) for a in foreign.atoms(sp.MatrixSymbol)) or [str(foreign)]
        raise CellError(f"{where}: {', '.join(names)} is a sympy matrix ({type(foreign).__name__}), "
                        "not a parameter of the cell: declare matrices with cell.param(name, (m, n)) "
                        "and multiply them with @")
    expr = cell._resolve_weights(expr, where)
    if is_weight_expr(expr):
        _refuse_matrix_state_weights(cell, expr, where)
        raise ShapeError(f"{where}: {_display_expr(expr)} is a matrix (it reads a matrix "
                         "element-wise), not a vector; multiply it by a vector with @")
    check_functions(expr, where)
    loose = _outside_products(expr)
    for s in free_symbols(expr):
        if isinstance(s, Vec):
            base = s.name[:-4] if s.name.endswith(".new") else s.name
            d = cell.decls.get(base)
            if d is None:
                raise CellError(f"{where}: unknown symbol {base!r} (declared: "
                                f"{', '.join(cell.decls) or 'nothing'})")
            if s.name.endswith(".new") and d.kind != "state":
                raise CellError(f"{where}: {base}.new but {base!r} is not a state")
            if isinstance(d.shape, tuple) and d.kind != "state":
                raise ShapeError(f"{where}: matrix {base!r} used element-wise; use {base} @ v")
        elif s in loose:  # a matrix name is a symbol only inside a product's terms
            d = cell.decls.get(s.name)
            hint = (f" (a plain sympy Symbol named like {d.kind} {s.name!r}; use the object "
                    f"cell.{d.kind} returned)" if d else "")
            raise CellError(f"{where}: unknown symbol {s.name!r} in {_display_expr(expr)}{hint}: "
                            "use symbols returned by cell.input/state/param/output/define")
    for m in distinct_subexpressions(expr):
        if isinstance(m, MatVec) and not m.args[0]:
            raise CellError(f"{where}: the matrix of a product in {_display_expr(expr)} is zero "
                            "(its terms cancel, as in (W - W) @ h); write 0 instead")
        if isinstance(m, MatVec):
            for term in m.args[0]:
                d = cell.decls.get(term[0].name)
                if d is None or d.kind not in ("param", "weight", "const") or not isinstance(d.shape, tuple):
                    mats = [n for n, d_ in cell.decls.items() if d_.kind == "param" and isinstance(d_.shape, tuple)]
                    raise CellError(f"{where}: {term[0].name} @ (...) multiplies by {term[0].name!r}, which is not a "
                                    f"matrix parameter of cell {cell.name!r} (one of another cell?); its matrix "
                                    f"parameters: {', '.join(mats) or 'none'}")
    return expr


def _refuse_matrix_state_weights(cell, expr, where):
    """A matrix state read element-wise with a matrix of parameters (``S * L``, a learned decay):
    a CellError naming the equation, both and what is supported instead."""
    states = sorted({s.name for s in free_symbols(expr) if isinstance(s, _MatrixValue)})
    mats = sorted({str(a.args[0]) for a in distinct_subexpressions(expr, skip=WMatVec) if isinstance(a, WMat)})
    if not states or not mats:
        return
    s = _display(states[0])
    m, n = cell.decls[states[0].removesuffix(".new")].shape
    kinds = {"param": "matrix parameter", "const": "constant", "weight": "derived weight"}
    what = " and ".join(f"the {kinds.get(cell.decls[a].kind, cell.decls[a].kind)} {a} "
                        f"({_shape(cell.decls[a].shape)})" for a in mats)
    L = mats[0]
    raise CellError(f"{where}: {_display_expr(expr)} reads the matrix state {s} element-wise with {what}: not "
                    f"supported (a matrix of parameters enters the step only through a product with a vector, "
                    f"{L} @ v); supported: a scalar, or a vector of size {m} scaling the rows of {s} "
                    f"(g * {s}, g = cell.param('g', {m})); for a learned {m}×{n} decay declare {L} as a matrix "
                    f"state carried unchanged from a learned initial value: {L} = cell.state('{L}', ({m}, {n}), "
                    f"init='learn'), cell.update({L}, {L}), then {L} * {s} (trained as {L}_0)")


def size_of(cell, expr, where):
    """Units of a vector expression (1 for a per-step scalar), or the (m, n) shape of a
    matrix-valued one (a matrix state); checks broadcasting.  Each distinct sub-expression is
    sized once (``exprwalk``: a shared one would be sized once per path to it)."""
    memo = {}

    def size(e, where=where):
        if e not in memo:
            memo[e] = _size(cell, e, where, size)
        return memo[e]

    return size(expr)


def _size(cell, expr, where, size):
    """:func:`size_of` of one node, ``size`` sizing its operands."""
    if isinstance(expr, Vec):
        name = expr.name[:-4] if expr.name.endswith(".new") else expr.name
        return cell.decls[name].shape
    if isinstance(expr, MatVec):
        return _matvec_rows(cell, expr)
    if isinstance(expr, MATRIX_ATOMS):
        return atom_shape(size, expr, where)
    parts = expr.args[:1] if isinstance(expr, Slice) else expr.args if isinstance(expr, Concat) else ()
    if any(isinstance(size(a), tuple) for a in parts):
        raise ShapeError(f"{where}: {_display_expr(expr)}: slices and concatenations are of vectors, "
                         "not matrices")
    if isinstance(expr, Slice):
        n = size(expr.args[0])
        lo, hi = int(expr.args[1]), int(expr.args[2])
        if not 0 <= lo < hi <= n:
            raise ShapeError(f"{where}: slice [{lo}:{hi}] of {_display_expr(expr.args[0])} "
                             f"(size {n}) is out of range or empty")
        return hi - lo
    if isinstance(expr, Concat):
        return sum(size(a) for a in expr.args)
    if isinstance(expr, (RowSum, LogSumExp)):
        size(expr.args[0])
        return 1
    sizes = {}
    for a in expr.args:
        if isinstance(a, sp.Expr) and not (isinstance(a, sp.Symbol) and not isinstance(a, Vec)):
            sizes[a] = size(a)
        elif isinstance(a, sp.Basic) and not isinstance(a, sp.Symbol):  # Piecewise (expr, cond)
            for sub in _operands(a):
                sizes[sub] = size(sub)
    if any(isinstance(n, tuple) for n in sizes.values()):
        return broadcast(sizes, where, expr)
    big = {n for n in sizes.values() if n != 1}
    if len(big) > 1:
        detail = ", ".join(f"{_display_expr(a)}: {n}" for a, n in sizes.items() if n != 1)
        raise ShapeError(f"{where}: element-wise operands of different sizes ({detail}) "
                         f"in {_display_expr(expr)}")
    return big.pop() if big else 1


def _operands(b) -> list:
    """The numeric operands inside a Piecewise pair or a condition (x > 0, And(...), ...)."""
    out = []
    for sub in b.args:
        if isinstance(sub, sp.Expr):
            out.append(sub)
        elif isinstance(sub, sp.Basic) and not isinstance(sub, sp.logic.boolalg.BooleanAtom):
            out.extend(_operands(sub))
    return out


def _outside_products(expr) -> set:
    """The symbols of ``expr`` outside the term tuples of its products (where matrix
    parameters are named by plain symbols)."""
    out = set()
    for node in distinct_subexpressions(expr, skip=MatVec):
        if isinstance(node, MatVec):
            out |= _outside_products(node.args[1])
        elif isinstance(node, sp.Symbol):
            out.add(node)
    return out


def _matvec_rows(cell, mv) -> int:
    terms = mv.args[0]
    name, tr = terms[0][0].name, int(terms[0][1])
    shape = cell.decls[name].shape
    return shape[1] if tr else shape[0]


def check_constants_fit(cell, dtype) -> None:
    """Every non-zero constant of the cell's equations is finite and not 0 in ``dtype`` (float64
    is checked as each equation is declared; a float32 model checks here, at compile time:
    1e-46 would silently be 0 and 1e39 inf)."""
    exprs = [(f"update of state {k!r}", e) for k, e in cell.updates.items()]
    exprs += [(f"{d.kind} {d.name!r}", d.expr) for d in cell.decls.values() if d.expr is not None]
    exprs += [("loss", cell.loss_expr)] if cell.loss_expr is not None else []
    for where, e in exprs:
        for node in distinct_subexpressions(e):  # numbers and constant expressions (exp(200), pi**90)
            if isinstance(node, sp.Expr) and node.is_number and node.is_real and not node.is_zero:
                check_constant(node, f"cell {cell.name!r}, {where}", dtype,
                               "; rescale it, or compile with dtype='float64'")


def check_functions(expr, where: str) -> None:
    """Reject sympy functions the compiler has no derivative/backend for."""
    for node in distinct_subexpressions(expr):
        if isinstance(node, Structural) or not isinstance(node, sp.Basic):
            continue
        if isinstance(node, sp.Function) or isinstance(node, sp.core.function.AppliedUndef):
            if type(node) not in SUPPORTED_FUNCTIONS and node.func not in SUPPORTED_FUNCTIONS \
                    and cfunction(node.func) is None:
                raise CellError(f"{where}: function {node.func.__name__!r} is not supported "
                                f"(in {_display_expr(expr)}); supported: {supported_names()}, "
                                "and any expression built from them with + - * / **")
            if isinstance(node, sp.Piecewise):
                _check_conditions(node, expr, where)
        elif isinstance(node, sp.Pow) and node.base.is_number and node.base.is_negative \
                and not node.exp.is_number:
            raise CellError(f"{where}: {_display_expr(node)}: a negative base to a variable power is complex "
                            f"(its derivative has log({node.base}) = log({-node.base}) + iπ); for an integer "
                            f"power of a sign write e.g. sp.cos(sp.pi*n)*{-node.base}**n")
        elif isinstance(node, (sp.Integral, sp.Derivative, sp.Sum, sp.Product)):
            raise CellError(f"{where}: {type(node).__name__} cannot be used element-wise")
        elif node.is_Atom and node.is_number:
            if node in (sp.nan, sp.zoo, sp.oo, -sp.oo):
                hint = " (a division by zero?)" if node == sp.zoo else ""
                raise CellError(f"{where}: non-finite constant {node} in {_display_expr(expr)}{hint}")
            if not node.is_real:
                raise CellError(f"{where}: complex constant {node} in {_display_expr(expr)}")
        if isinstance(node, sp.Expr) and node.is_number and node.is_real and not node.is_zero:
            check_constant(node, where)


def check_constant(c, where: str, dtype="float64", hint: str = "") -> None:
    """A non-zero constant (or a function of constants, exp(1000)) must be a number of ``dtype``:
    not inf, not 0 (float64 as it is declared; float32 when a float32 model is compiled)."""
    dtype = np.dtype(dtype)
    with np.errstate(over="ignore", under="ignore"):
        v = dtype.type(float(sp.N(c)))
    if not np.isfinite(v) or v == 0:
        what = "overflows to inf" if v else "underflows to 0"
        raise CellError(f"{where}: the constant {sp.N(c, 6)} {what} in {dtype.name}{hint}")


def _check_conditions(pw, expr, where: str) -> None:
    for _, cond in pw.args:
        if not isinstance(cond, (sp.core.relational.Relational, sp.logic.boolalg.BooleanFunction,
                                 sp.logic.boolalg.BooleanAtom)):
            raise CellError(f"{where}: Piecewise condition {_display_expr(cond)} is not a comparison "
                            f"(write e.g. {_display_expr(cond)} > 0) in {_display_expr(expr)}")
    if pw.args[-1][1] is not sp.true and _may_fail(sp.Or(*(c for _, c in pw.args))):
        raise CellError(f"{where}: {_display_expr(pw)} has no otherwise branch, so its value is "
                        "undefined (NaN) wherever no condition holds; end it with (value, True)")


def _may_fail(cond) -> bool:
    """Whether sympy cannot show that ``cond`` (a Piecewise's conditions, or-ed) always holds."""
    if cond is sp.true:
        return False
    try:
        return sp.simplify(cond) is not sp.true
    except Exception:  # noqa: BLE001 - whatever sympy cannot decide may fail
        return True
