"""A cell's declaration as JSON-able text and back: what checkpoints and pickled models hold.

Each sympy expression is its ``srepr`` text, read back through a namespace of the DSL's and
sympy's own names (never a pickle, never ``eval`` of an unchecked name), and the cell is
rebuilt through the DSL, so every declaration-time check runs again.  It sits just above the
declaration, below the backends (pickling a model) and ``train/`` (checkpoints).

    >>> import rnncomp as rc
    >>> cell = rc.cells.elman(2, 3, 1)
    >>> str(cell_from_dict(cell_to_dict(cell))) == str(cell)
    True
"""
from __future__ import annotations

import ast
import keyword
from collections import Counter

import numpy as np
import sympy as sp
from sympy.printing.repr import ReprPrinter

from . import dsl, functions
from .cell import Cell
from .errors import CellError, CheckpointError, RnncompError
from .exprwalk import postorder, tree_size
from .matrix_dsl import MATRIX_ATOMS, MatState, MatStateNew
from .weight_dsl import WEIGHT_ATOMS


class LostInitializer:
    """A custom initialiser a checkpoint could not hold (a Python function): drawing from it is
    an error naming it, never the default initialiser in its place."""

    def __init__(self, param: str, name: str):
        self.param, self.__qualname__ = param, name

    def __call__(self, rng, shape):
        raise CellError(f"parameter {self.param!r} was initialised by {self.__qualname__}, a Python function the "
                        "checkpoint does not hold (it holds the values it made); to draw new initial values, "
                        "declare the cell again")


#: the names a shared sub-expression is bound to in a written expression (a declared name
#: starts with a letter, so none is one)
_SHARED = "_shared_"


class _SharedRepr(ReprPrinter):
    """``srepr`` writing each sub-expression of ``names`` as its name."""

    def __init__(self, names: dict):
        super().__init__()
        self.names = names

    def _print(self, expr, **kwargs):
        name = self.names.get(expr) if isinstance(expr, sp.Basic) else None
        return name if name is not None else super()._print(expr, **kwargs)


def expression_text(expr):
    """``srepr(expr)``; where ``expr`` shares sub-expressions so much that its text would grow with
    its paths rather than its nodes (more than 4 tree nodes per distinct one: an Euler-integrated
    cell doubles its paths per sub-step), ``{"let": [[name, text], ...], "in": text}``, each
    shared sub-expression written once and named by those after it."""
    nodes = list(postorder(expr))
    if tree_size(expr) <= 4 * len(nodes):
        return sp.srepr(expr)
    uses = Counter(a for e in nodes if isinstance(e, sp.Basic) for a in e.args)
    names, lets = {}, []
    for e in nodes:
        if e is not expr and uses[e] > 1 and e.args:
            lets.append([f"{_SHARED}{len(lets)}", _SharedRepr(names).doprint(e)])
            names[e] = lets[-1][0]
    return {"let": lets, "in": _SharedRepr(names).doprint(expr)}


def cell_to_dict(cell: Cell, callables: bool = False, text=expression_text) -> dict:
    """The cell's declarations and equations, each expression as sympy ``srepr`` text
    (:func:`expression_text`).
    ``callables``: a custom initialiser is kept as the function itself (for pickle, which
    stores it by name), else only its name.  ``text``: what each expression is written as
    (``exprwalk.digest`` for a key that need not be read back)."""
    decls = []
    for d in cell.decls.values():
        init = d.init
        if isinstance(init, np.ndarray):  # a constant's values
            init = init.tolist()
        elif callable(init):
            init = {"callable": getattr(init, "__qualname__", repr(init)), **({"object": init} if callables else {})}
        elif isinstance(init, tuple):
            init = list(init)
        decls.append({"kind": d.kind, "name": d.name, "shape": d.shape if isinstance(d.shape, int) else list(d.shape),
                      "init": init, "expr": None if d.expr is None else text(d.expr)})
    return {"name": cell.name, "decls": decls,
            "updates": {k: text(e) for k, e in cell.updates.items()},
            "loss": None if cell.loss_expr is None else text(cell.loss_expr),
            **({} if cell.energy_expr is None else {"energy": text(cell.energy_expr)})}


def _namespace() -> dict:
    ns = {k: v for k, v in vars(sp).items() if not k.startswith("_")}
    ns.update({k: v for k, v in vars(functions).items() if isinstance(v, type) and issubclass(v, sp.Function)})
    ns.update(functions.cfunction_classes())   # log1p, expm1, ... (sympy.codegen's)
    ns["ExprCondPair"] = sp.functions.elementary.piecewise.ExprCondPair
    ns.update(Vec=lambda name, **assumptions: dsl.Vec(name),
              StateVec=lambda name, **assumptions: dsl.StateVec(name),
              MatVec=dsl.MatVec, Slice=dsl.Slice, Concat=dsl.Concat, RowSum=dsl.RowSum, LogSumExp=dsl.LogSumExp,
              MatState=lambda name, **assumptions: MatState(name),
              MatStateNew=lambda name, **assumptions: MatStateNew(name),
              **{c.__name__: c for c in WEIGHT_ATOMS + MATRIX_ATOMS})
    return ns


# keyword arguments that srepr writes: Symbol assumptions, and a Float's binary precision
# (``Float('0.10000000000000001', precision=53)``: enough digits to give back the same bits)
_KEYWORDS = ("real", "positive", "integer", "commutative", "evaluate", "precision")


#: the calls whose first argument srepr writes as a string: a symbol's name (never parsed:
#: a derived weight's is its expression, '(M*W)%') or a Float's digits (parsed by mpmath)
_STRING_CALLS = {"Symbol", "Dummy", "Vec", "StateVec", "MatState", "MatStateNew", "Float", "Str"}


def _not_srepr(tree) -> str | None:
    """What in ``tree`` is not srepr's grammar -- calls of names with numbers, names and keyword
    arguments, strings only as a symbol's name or a Float's digits (sympy turns a string given
    to any other call into code: ``tanh("...")``) -- or None."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name):
                return "a call of something that is not a name"
            for a in node.args[1:] + [k.value for k in node.keywords]:
                if isinstance(a, ast.Constant) and isinstance(a.value, str):
                    return f"a string given to {node.func.id}"
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str) and node.func.id not in _STRING_CALLS:
                return f"the string {first.value!r:.40} given to {node.func.id}"
        elif isinstance(node, ast.Constant):
            if not isinstance(node.value, (str, int, float, bool)):
                return f"the constant {node.value!r:.40}"
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, (ast.USub, ast.UAdd)):
                return "an operator"
        elif not isinstance(node, (ast.Expression, ast.Name, ast.Load, ast.keyword, ast.USub, ast.UAdd,
                                   ast.Tuple, ast.List)):
            return f"a {type(node).__name__}"
    return None


def _expr(text, ns: dict, where: str):
    """An expression from its ``srepr`` text (or :func:`expression_text`'s shared form); only
    names of the DSL and of sympy may occur."""
    if isinstance(text, dict):  # {"let": [[name, text], ...], "in": text}
        try:
            lets, body = list(text["let"]), text["in"]
        except (KeyError, TypeError):
            raise CheckpointError(f"{where}: unreadable expression (a 'let' form without 'let' and 'in')") from None
        ns = dict(ns)
        for item in lets:
            if not (isinstance(item, (list, tuple)) and len(item) == 2):
                raise CheckpointError(f"{where}: unreadable expression (a 'let' item {item!r:.60} is not [name, text])")
            name, sub = item
            if not (isinstance(name, str) and name.startswith(_SHARED) and name[len(_SHARED):].isdigit()):
                raise CheckpointError(f"{where}: unreadable expression (a shared name {name!r})")
            ns[name] = _expr(sub, ns, where)
        return _expr(body, ns, where)
    if not isinstance(text, str):
        raise CheckpointError(f"{where}: unreadable expression (a {type(text).__name__}, not text)")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError) as exc:
        raise CheckpointError(f"{where}: unreadable expression ({exc})") from None
    bad = _not_srepr(tree)
    if bad:
        raise CheckpointError(f"{where}: the expression holds {bad}, which srepr never writes (a damaged or "
                              "foreign file?)")
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    unknown = sorted(n for n in names if n not in ns and not keyword.iskeyword(n)
                     and n not in _KEYWORDS)
    if unknown:
        raise CheckpointError(f"{where}: the expression uses {', '.join(unknown)}, which is not a name of "
                              "rnncomp's DSL or of sympy (a damaged or foreign file?)")
    try:
        return eval(text, {"__builtins__": {}}, ns)  # noqa: S307 - names checked above
    except Exception as exc:  # noqa: BLE001 - any failure is a damaged declaration
        raise CheckpointError(f"{where}: cannot rebuild the expression: {exc}") from None


def cell_from_dict(d: dict, where: str = "checkpoint") -> Cell:
    """The cell :func:`cell_to_dict` wrote, rebuilt through the DSL (so its checks run)."""
    ns = _namespace()
    try:
        cell = Cell(d["name"])
        for decl in d["decls"]:
            kind, name, init = decl["kind"], decl["name"], decl["init"]
            shape = decl["shape"] if isinstance(decl["shape"], int) else tuple(decl["shape"])
            if isinstance(init, dict):  # a callable initialiser: itself (pickle), or only its name
                init = init["object"] if callable(init.get("object")) else LostInitializer(name, str(init["callable"]))
            elif isinstance(init, list):
                init = tuple(init)
            if kind == "param" and name in cell.decls:  # a learnable initial state's h_0
                continue
            if kind in ("input", "target"):
                getattr(cell, kind)(name, shape)
            elif kind == "state":
                cell.state(name, shape, init=init)
            elif kind == "param":
                cell.param(name, shape, init=init)
            elif kind == "const":
                cell.const(name, init)
            elif kind == "weight":
                cell._restore_weight(name, _expr(decl["expr"], ns, f"{where}: weight {name!r}"))
            elif kind in ("output", "define"):
                getattr(cell, kind)(name, _expr(decl["expr"], ns, f"{where}: {kind} {name!r}"))
            else:
                raise CheckpointError(f"{where}: unknown declaration kind {kind!r}")
        for name, text in d["updates"].items():
            cell.update(name, _expr(text, ns, f"{where}: update of {name!r}"))
        if d["loss"] is not None:
            cell.loss(_expr(d["loss"], ns, f"{where}: loss"))
        if d.get("energy") is not None:  # cell.energy (issue #20); absent from older files
            cell.energy(_expr(d["energy"], ns, f"{where}: energy"))
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{where}: the cell declaration is incomplete ({exc!r})") from None
    except CheckpointError:
        raise
    except RnncompError as exc:
        raise CheckpointError(f"{where}: the saved cell does not declare: {exc}") from None
    return cell
