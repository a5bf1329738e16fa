"""``Cell``: the user's declaration of one recurrent step.

A cell records declarations and equations and checks each as it is written
(sizes, unknown symbols, unsupported functions: :mod:`rnncomp.cell_check`).  See
:mod:`rnncomp.dsl` for an example.

The declaration imports nothing above it.  What the compiler makes of a cell (its
lowered step, its graph, its equations as text and LaTeX) is computed by modules above
it; ``Cell.compiler`` holds those functions (:class:`CompilerViews`), set by
:mod:`rnncomp.cell_views` when ``import rnncomp`` runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import sympy as sp

from . import initializers
from .cell_check import check_expr, check_functions, size_of
from .checks import float_dtype
from .dsl import _NAME, MatParam, StateVec, Vec, _display_expr
from .errors import CellError, ShapeError
from .exprwalk import contains
from .matrix_dsl import MatState, check_matrix_shape
from .weight_dsl import WMatVec, internal_name, weight_form, weight_shape


@dataclass
class Decl:
    kind: str  # input | target | state | param | const | weight | output | define
    name: str
    shape: object  # int, or (m, n) for matrix params
    init: object = None
    expr: object = None


@dataclass(frozen=True)
class CompilerViews:
    """The functions above the declaration that a cell's views call, each taking the cell."""

    lower: Callable  # -> the lowered one-step program (rnncomp.lower.lower)
    graph: Callable  # -> the one-step networkx graph (rnncomp.graph.step_graph)
    text: Callable  # -> the equations as text (rnncomp.printing.cell_text)
    latex: Callable  # -> the equations as LaTeX (rnncomp.printing.cell_latex)


class Cell:
    """A recurrent cell: see the module docstring of :mod:`rnncomp.dsl`."""

    compiler: CompilerViews | None = None  # set by rnncomp.cell_views (see the module docstring)
    energy_expr = None  # cell.energy(E): read only by rc.compile_fixed_point

    def __init__(self, name: str = "cell"):
        self.name = name
        self.decls: dict[str, Decl] = {}
        self.updates: dict[str, sp.Expr] = {}
        self.loss_expr = None
        self._lowered = None
        self._derived: dict = {}  # weight expression -> name of its derived weight

    # ------------------------------------------------------------------ declarations
    def _declare(self, kind, name, shape, init=None, expr=None):
        if not isinstance(name, str) or not _NAME.match(name):
            raise CellError(f"cell {self.name!r}: {kind} name {name!r} must be a letter followed by "
                            "letters, digits or '_'")
        if name in self.decls:
            raise CellError(f"cell {self.name!r}: name {name!r} is already declared as "
                            f"{self.decls[name].kind}")
        self.decls[name] = Decl(kind, name, shape, init, expr)
        self._lowered = None

    @staticmethod
    def _size(n, what):
        if isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1:
            return int(n)
        raise CellError(f"{what}: size must be a positive integer, got {n!r}")

    def input(self, name: str, size: int) -> Vec:
        """A per-step input vector x[t] of ``size`` units."""
        self._declare("input", name, self._size(size, f"cell {self.name!r}, input {name!r}"))
        return Vec(name)

    def target(self, name: str, size: int) -> Vec:
        """A per-step target vector, read only by the loss (and outputs if you like)."""
        self._declare("target", name, self._size(size, f"cell {self.name!r}, target {name!r}"))
        return Vec(name)

    def state(self, name: str, size: int, init="zeros") -> StateVec:
        """A recurrent state of ``size`` units, or a matrix state of shape ``(m, n)``
        (:mod:`rnncomp.matrix_dsl`).  ``init``: ``"zeros"`` (default; or given per call) or
        ``"learn"`` (a learnable parameter ``<name>_0``)."""
        where = f"cell {self.name!r}, state {name!r}"
        if init not in ("zeros", "learn"):
            raise CellError(f"{where}: init must be 'zeros' or 'learn', got {init!r}")
        if isinstance(size, tuple):
            check_matrix_shape(size, where)
            self._declare("state", name, tuple(size), init)
        else:
            self._declare("state", name, self._size(size, where), init)
        if init == "learn":
            self._declare("param", f"{name}_0", _units(self.decls[name].shape), "zeros")
        if isinstance(size, tuple):
            return MatState(name)
        return StateVec(name)

    def param(self, name: str, shape, init=None):
        """A parameter: ``shape`` is an int (vector; 1 for a scalar) or ``(m, n)`` (matrix).

        ``init``: "zeros", "ones", "normal", "uniform", "glorot", "orthogonal",
        ``("normal", std)``, ``("uniform", a)``, ``("constant", c)`` or a callable
        ``f(rng, shape) -> array``.  Default: Glorot for matrices, zeros otherwise.
        """
        where = f"cell {self.name!r}, param {name!r}"
        if isinstance(shape, tuple) and len(shape) == 1:
            shape = shape[0]
        if isinstance(shape, tuple):
            if len(shape) != 2:
                raise CellError(f"{where}: shape must be n or (m, n), got {shape!r}")
            shape = (self._size(shape[0], where), self._size(shape[1], where))
        else:
            shape = self._size(shape, where)
        initializers.check(init, where)
        self._declare("param", name, shape, init)
        return MatParam(self, name, shape) if isinstance(shape, tuple) else Vec(name)

    def const(self, name: str, value):
        """A fixed array (a mask): a vector (n,) or a matrix (m, n), never trained.  Use it like
        a parameter: ``W * M`` (a derived weight), ``M @ v``."""
        where = f"cell {self.name!r}, constant {name!r}"
        try:  # a ragged list: NumPy's "inhomogeneous shape" from here before
            is_complex = np.iscomplexobj(value)
        except ValueError:
            is_complex = False  # refused just below
        if is_complex:  # np.array(..., float64) would drop the imaginary part with a warning
            raise CellError(f"{where}: complex values; a constant is real (pass .real or .imag)")
        try:
            a = np.array(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise CellError(f"{where}: expected an array of numbers, got {type(value).__name__}") from None
        if a.ndim not in (1, 2) or a.size == 0:
            raise CellError(f"{where}: expected a non-empty vector or matrix, got shape {a.shape}")
        if not np.isfinite(a).all():
            raise CellError(f"{where}: contains {a[~np.isfinite(a)][0]}")
        shape = (a.shape[0], a.shape[1]) if a.ndim == 2 else a.shape[0]
        self._declare("const", name, shape, init=a)
        return MatParam(self, name, shape) if a.ndim == 2 else Vec(name)

    def weight(self, name: str, expr):
        """A named derived weight: a matrix computed from parameters and constants once per call
        (``cell.weight("E", sp.exp(W))``), printed by name; use it like a matrix parameter."""
        where = f"cell {self.name!r}, weight {name!r}"
        expr = weight_form(expr, where)
        shape = weight_shape(self, expr, where)
        check_functions(expr, where)
        self._declare("weight", name, shape, expr=expr)
        return MatParam(self, name, shape)

    def _restore_weight(self, name: str, expr) -> None:
        """A derived weight read back from a declaration (a checkpoint): named, or generated."""
        if name.isidentifier():
            self.weight(name, expr)
            return
        self.decls[name] = Decl("weight", name, weight_shape(self, expr, f"cell {self.name!r}, weight {name!r}"),
                                expr=expr)
        self._derived[expr] = name

    def _resolve_weights(self, expr, where):
        """``weight @ v`` → a product with a derived weight (declared once per weight expression)."""
        if not isinstance(expr, sp.Basic) or not contains(expr, WMatVec):
            return expr
        repl = {}
        for node in sp.postorder_traversal(expr):
            if isinstance(node, WMatVec) and node not in repl:
                w, v = node.args
                v = v.xreplace(repl)
                shape = weight_shape(self, w, where)
                check_functions(w, where)
                name = self._derived.get(w)
                if name is None:
                    name = self._derived[w] = internal_name(w, self.decls)
                    self.decls[name] = Decl("weight", name, shape, expr=w)
                repl[node] = MatParam(self, name, shape) @ v
        return expr.xreplace(repl)

    # ------------------------------------------------------------------ equations
    def update(self, state, expr) -> None:
        """Set the new value h[t] of a state."""
        name = state.name if isinstance(state, Vec) else state
        d = self.decls.get(name)
        if d is None or d.kind != "state":
            kind = f"{'an' if d.kind[0] in 'aeiou' else 'a'} {d.kind}" if d else "not declared"
            raise CellError(f"cell {self.name!r}: update of {name!r}, which is {kind}; "
                            "only states (cell.state) are updated")
        if name in self.updates:
            raise CellError(f"cell {self.name!r}: state {name!r} is updated twice")
        where = f"cell {self.name!r}, update of state {name!r}"
        expr = self._check_expr(expr, where)
        n = self.size_of(expr, where)
        if n not in (1, d.shape):
            raise ShapeError(f"{where}: state has size {d.shape} but the expression "
                             f"{_display_expr(expr)} has size {n}")
        self.updates[name] = expr
        self._lowered = None

    def output(self, name: str, expr) -> Vec:
        """A named per-step output y[t] (returned by ``forward``), usable in later equations."""
        where = f"cell {self.name!r}, output {name!r}"
        expr = self._check_expr(expr, where)
        self._declare("output", name, self._vector_size(expr, where), expr=expr)
        return Vec(name)

    def define(self, name: str, expr) -> Vec:
        """A named intermediate (printed by name, computed once)."""
        where = f"cell {self.name!r}, definition of {name!r}"
        expr = self._check_expr(expr, where)
        self._declare("define", name, self._vector_size(expr, where), expr=expr)
        return Vec(name)

    def _vector_size(self, expr, where) -> int:
        n = self.size_of(expr, where)
        if isinstance(n, tuple):
            raise ShapeError(f"{where}: {_display_expr(expr)} is a {n[0]}×{n[1]} matrix; outputs and "
                             "definitions are vectors (read a matrix out with C @ q or rc.rowsum)")
        return n

    def loss(self, expr) -> None:
        """The per-step cost: an expression summed over its units."""
        self._summed("loss", expr)

    def energy(self, expr) -> None:
        """A settling network's energy E, summed over its units: ``rc.compile_fixed_point(cell)``
        relaxes ds/dt = −∂E/∂s (:mod:`rnncomp.algorithms.energy`).  Stored only: the step and
        its gradient do not read it."""
        self._summed("energy", expr)

    def _summed(self, what, expr) -> None:
        """Declare the scalar field ``what`` ("loss" or "energy"): ``expr`` summed over its units."""
        where = f"cell {self.name!r}, {what}"
        if getattr(self, f"{what}_expr") is not None:
            raise CellError(f"{where}: the {what} is declared twice")
        expr = self._check_expr(expr, where)
        self.size_of(expr, where)
        setattr(self, f"{what}_expr", expr)
        self._lowered = None

    # ------------------------------------------------------------------ checking (cell_check.py)
    def _check_expr(self, expr, where):
        """``expr`` as a checked sympy expression of this cell's vectors (:func:`.cell_check.check_expr`)."""
        return check_expr(self, expr, where)

    def size_of(self, expr, where):
        """Units of a vector expression (1 for a per-step scalar), or the (m, n) shape of a
        matrix-valued one (a matrix state); checks broadcasting (:func:`.cell_check.size_of`)."""
        return size_of(self, expr, where)

    # ------------------------------------------------------------------ views
    def symbols(self, kind: str) -> list:
        return [d for d in self.decls.values() if d.kind == kind]

    def _views(self) -> CompilerViews:
        if Cell.compiler is None:  # only while `import rnncomp` has not finished
            raise RuntimeError(f"cell {self.name!r}: the compiler is not loaded yet (import rnncomp first)")
        return Cell.compiler

    @property
    def step(self):
        """The lowered one-step program (:class:`rnncomp.lower.Step`), kept until the cell changes."""
        if self._lowered is None:
            self._lowered = self._views().lower(self)
        return self._lowered

    @property
    def graph(self):
        """The one-step graph as a ``networkx.DiGraph`` (recurrent edges marked)."""
        return self._views().graph(self)

    def init_params(self, seed: int = 0, dtype="float64") -> dict:
        """A dict of freshly initialised parameter arrays (deterministic in ``seed``).

        A compiled model checks the dtype of what it is given: pass the model's ``dtype``
        here, or call ``model.init_params(seed)``, which does."""
        dtype = float_dtype(dtype, f"cell {self.name!r}: init_params: dtype")  # int32 would round every weight
        try:
            return initializers.init_all(initializers.specs(self), seed, dtype)
        except CellError as exc:
            raise CellError(f"cell {self.name!r}, {exc}") from None

    def __str__(self) -> str:
        return self._views().text(self)

    def _repr_latex_(self) -> str:
        return self._views().latex(self)

    def __repr__(self) -> str:
        count = lambda kind: sum(1 for d in self.decls.values() if d.kind == kind)  # noqa: E731
        return (f"<Cell {self.name!r}: {count('input')} input(s), {count('state')} state(s), "
                f"{count('param')} parameter(s), {'a loss' if self.loss_expr is not None else 'no loss'}; "
                "print() it for its equations>")

    def _repr_html_(self) -> str:
        from .show import TextShown
        return TextShown._repr_html_(self)

    def _text(self) -> str:
        return str(self)


def _units(shape) -> int:
    """Units of a state: n, or m·n for a matrix state (kept flattened, row-major)."""
    return shape[0] * shape[1] if isinstance(shape, tuple) else shape
