"""Derived weights: matrices computed from parameters once per call, and the chain back.

A cell may multiply vectors by expressions of parameters (``(W * M) @ h``, ``sp.exp(W) @ h``,
``(g * V / rc.norm(V)) @ x``, ``(W @ W) @ h``: :mod:`rnncomp.weight_dsl`).  They read no
state, so they are computed before the time loop, by this module's NumPy host code, which
every backend shares: a backend compiles the *plain* cell, where each derived weight and
constant is an ordinary parameter, and never sees the difference.  With D the weight
program and θ the declared parameters,

    before the loop:  θ → (θ, D(θ))
    after the loop:   (∂L/∂θ, ∂L/∂D) → ∂L/∂θ + (∂D/∂θ)ᵀ·∂L/∂D

the second by :func:`rnncomp.autodiff.reverse` over D (its ops ``wew``, ``transpose``,
``matmul``, ``sumto`` have rules in the same table as the step's).  Values in D are 2-D: a
vector parameter of size m is an (m, 1) column, so ``g * V`` scales rows.

    >>> import numpy as np, sympy as sp, rnncomp as rc
    >>> cell = rc.Cell("masked")
    >>> x, h = cell.input("x", 2), cell.state("h", 3)
    >>> W, M = cell.param("W", (3, 3)), cell.const("M", np.tril(np.ones((3, 3))))
    >>> cell.update(h, sp.tanh((W * M) @ h + cell.param("U", (3, 2)) @ x))
    >>> D = DerivedWeights(cell)
    >>> p = cell.init_params(0)
    >>> full = D.expand(p, np.float64)
    >>> sorted(full), bool(np.all(full["d1"] == p["W"] * np.tril(np.ones((3, 3)))))
    (['M', 'U', 'W', 'd1'], True)
"""
from __future__ import annotations

import copy

import numpy as np
import sympy as sp

from .autodiff import Contribution, reverse
from .dsl import Vec
from .errors import CallError
from .ir import Node, Program, internal, placeholder
from .lower import templated
from .weight_dsl import WMat, WMatMul, WNorm, WTranspose


# ----------------------------------------------------------------------------- lowering
def _shape2(shape) -> tuple:
    return shape if isinstance(shape, tuple) else (shape, 1)


class _Lowerer:
    """Weight expressions → nodes at time None (the memo shares repeated sub-expressions)."""

    def __init__(self, cell):
        self.cell, self.prog, self.memo, self.count = cell, Program(name=f"{cell.name} weights"), {}, 0

    def temp(self, base, node):
        return self.prog.add(self.prog.fresh(base, None), node)

    def lower(self, e):
        if e in self.memo:
            return self.memo[e]
        if isinstance(e, WMat):
            k = (e.args[0].name, None)
        elif isinstance(e, Vec):
            k = (e.name, None)
        elif isinstance(e, WTranspose):
            a = self.lower(e.args[0])
            k = self.temp(f"{a[0]}ᵀ", Node("transpose", (a,), self.prog.node(a).size[::-1]))
        elif isinstance(e, WMatMul):
            a, b = (self.lower(x) for x in e.args)
            k = self.temp(f"{a[0]}·{b[0]}", Node("matmul", (a, b), (self.prog.node(a).size[0], self.prog.node(b).size[1])))
        elif isinstance(e, WNorm):  # ‖A‖ = sqrt(Σ A²) over the axis
            a = self.lower(e.args[0])
            m, n = self.prog.node(a).size
            sq = self.temp(f"{a[0]}²", Node("wew", (a,), (m, n), {"expr": placeholder(0) ** 2}))
            s = self.temp(f"Σ{a[0]}²", Node("sumto", (sq,), (m, 1) if int(e.args[1]) == 1 else (1, n)))
            k = self.temp(f"‖{a[0]}‖", Node("wew", (s,), self.prog.node(s).size, {"expr": sp.sqrt(placeholder(0))}))
        else:
            k = self.elementwise(e)
        self.memo[e] = k
        return k

    def elementwise(self, e):
        keys, template = templated(e, self.lower)
        sizes = [self.prog.node(k).size for k in keys]
        shape = (max(s[0] for s in sizes), max(s[1] for s in sizes))  # checked at declaration
        self.count += 1
        return self.temp(f"w{self.count}", Node("wew", tuple(keys), shape, {"expr": template}))


def lower_weights(cell) -> tuple[Program, dict]:
    """The weight program of ``cell`` and {derived weight: key of its value}."""
    low = _Lowerer(cell)
    outs = {}
    for d in cell.decls.values():
        if d.kind in ("param", "const"):  # a constant is a leaf without a gradient: an "input"
            low.prog.add((d.name, None), Node("param" if d.kind == "param" else "input", (), _shape2(d.shape)))
        elif d.kind == "weight":
            k = low.lower(d.expr)  # then a node of its own, printed by its name
            k = low.prog.add((d.name, None), Node("wew", (k,), low.prog.node(k).size, {"expr": placeholder(0)}))
            outs[d.name] = low.memo[WMat(sp.Symbol(d.name), *map(sp.Integer, d.shape))] = k
    return low.prog, outs


# ----------------------------------------------------------------------------- forward rules
def _wew(node, vals):
    from .backends.numpy import ew_function
    return np.broadcast_to(ew_function(node.attrs["expr"], len(vals))(*vals), node.size)


def _sumto(node, vals):
    (v,) = vals
    axes = tuple(i for i in (0, 1) if node.size[i] == 1 and v.shape[i] != 1)
    return np.broadcast_to(v.sum(axis=axes, keepdims=True), node.size)


FORWARD = {
    "wew": _wew,
    "ew": _wew,  # the adjoint sums the reverse walk makes
    "transpose": lambda node, vals: vals[0].T,
    "matmul": lambda node, vals: vals[0] @ vals[1],
    "sumto": _sumto,
}


def run(prog: Program, env: dict) -> dict:
    for key, node in prog.nodes.items():
        if not node.is_leaf:
            env[key] = FORWARD[node.op](node, [env[a] for a in node.args])
    return env


# ----------------------------------------------------------------------------- the shared pre/post pass
class DerivedWeights:
    """The derived weights and constants of a cell, and the plain cell a backend compiles.

    ``plain``: a copy of the cell in which each derived weight and constant is a parameter
    (an inline weight, named by its expression, becomes ``d1``, ``d2`` ...: names no
    declaration of the cell takes); :meth:`expand` computes their values, :meth:`pullback`
    chains their gradients back to the declared parameters."""

    def __init__(self, cell):
        self.cell = cell
        self.prog, self.outs = lower_weights(cell)
        self.params = {d.name: d.shape for d in cell.decls.values() if d.kind == "param"}
        self.consts = {d.name: d.init for d in cell.decls.values() if d.kind == "const"}
        self.rename, i = {}, 0
        for d in cell.decls.values():
            if d.kind == "weight" and not d.name.isidentifier():
                i += 1
                while f"d{i}" in cell.decls:
                    i += 1
                self.rename[d.name] = f"d{i}"
        self.plain = _plain_cell(cell, self.rename)
        self._rev = None

    @property
    def rev(self):
        """The reverse of the weight program (derived on the first gradient asked for)."""
        if self._rev is None:
            self._rev = self._reverse()
        return self._rev

    def _reverse(self):
        seeds = {k: [Contribution(placeholder(0), ((internal(f"δ{n}"), None),), self.prog.node(k).size)]
                 for n, k in self.outs.items()}
        seed_nodes = {(internal(f"δ{n}"), None): Node("seed", (), self.prog.node(k).size) for n, k in self.outs.items()}
        return reverse(self.prog, seeds, seed_nodes, where=f"cell {self.cell.name!r}, derived weights")

    def plain_name(self, name: str) -> str:
        return self.rename.get(name, name)

    def expand(self, params: dict, dtype, check_finite: bool = True) -> dict:
        """The plain cell's parameters: the declared ones, the constants and the derived weights
        (a non-finite one is a CallError unless ``check_finite`` is false, as for the parameters)."""
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # reported below, by name
            env = self._env(params, dtype)
        out = dict(params)
        out.update({n: np.asarray(v, dtype=dtype) for n, v in self.consts.items()})
        for n, k in self.outs.items():
            v = np.ascontiguousarray(env[k], dtype=dtype)
            if check_finite and not np.isfinite(v).all():
                raise CallError(f"cell {self.cell.name!r}: the derived weight {n.replace('%', '')} has a "
                                f"non-finite value ({v[~np.isfinite(v)][0]}) for these parameters")
            out[self.plain_name(n)] = v
        return out

    def _env(self, params, dtype):
        env = {(n, None): np.asarray(params[n], dtype=dtype).reshape(_shape2(s)) for n, s in self.params.items()}
        env.update({(n, None): np.asarray(v, dtype=dtype).reshape(_shape2(np.shape(v) if v.ndim == 2 else v.size))
                    for n, v in self.consts.items()})
        return run(self.prog, env)

    def pullback(self, params: dict, grads: dict, dtype) -> dict:
        """The declared parameters' gradients from the plain cell's (``grads``)."""
        env = self._env(params, dtype)
        for n, k in self.outs.items():
            env[(internal(f"δ{n}"), None)] = np.asarray(grads[self.plain_name(n)], dtype=dtype)
        run(self.rev.prog, env)
        out = {n: np.array(grads[n], dtype=dtype) for n in self.params}
        for p, specs in self.rev.grads.items():
            if p in out:
                for _, k in specs:
                    out[p] += np.asarray(env[k]).reshape(out[p].shape)
        return out


def _plain_cell(cell, rename: dict):
    """A copy of ``cell`` with its constants and derived weights declared as parameters."""
    from .cell import Decl
    plain = copy.copy(cell)
    plain.decls = {}
    for d in cell.decls.values():
        if d.kind in ("const", "weight"):
            n = rename.get(d.name, d.name)
            plain.decls[n] = Decl("param", n, d.shape)
        else:
            plain.decls[d.name] = d
    subs = {sp.Symbol(a): sp.Symbol(b) for a, b in rename.items()}
    plain.updates = {s: e.xreplace(subs) for s, e in cell.updates.items()}
    for n, d in plain.decls.items():
        if d.expr is not None:
            plain.decls[n] = Decl(d.kind, d.name, d.shape, d.init, d.expr.xreplace(subs))
    plain.loss_expr = None if cell.loss_expr is None else cell.loss_expr.xreplace(subs)
    plain._lowered = None
    return plain
