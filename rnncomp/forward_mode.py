"""Forward mode over IR programs: the JVP rule table, the tangent walk, the sensitivity step.

The reverse walk (:mod:`rnncomp.autodiff`) transposes a step; this module pushes tangents
through it.  With ``f`` the forward step

    f : (h[t-1], x[t]; θ) → (h[t], ℓ[t])

its tangent step is

    ḟ : (values at t, ∂h[t-1], ∂θ) → (∂h[t], ∂ℓ[t])

where ``∂v`` is the derivative of a value along a batch of directions (one column per
parameter entry for RTRL: ``∂h[t]`` is the sensitivity ∂h[t]/∂θ).  It is a program in the
same IR, read by the same printers: ``∂h[t] = (1 - h[t]²)·(U·∂h[t-1] + ∂U·h[t-1] + ∂W·x[t] + ∂b)``.
A parameter's tangent is a leaf ``∂θ`` (a seed); a product ``P·v`` gets ``P·∂v + ∂P·v``, the
second a ``matvec`` whose term names the parameter's tangent (see :func:`param_tangent`).

One JVP rule per op, keyed like :data:`rnncomp.autodiff.RULES`; :func:`missing_jvp_rules`
names the ops the reverse table knows and this one does not.

    >>> import rnncomp as rc
    >>> ts = tangent_step(rc.cells.elman(2, 3, 1).step)
    >>> sorted(ts.param_seeds)
    ['U', 'V', 'W', 'b', 'by']
"""
from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

from .array_jvp import ARRAY_JVP_RULES
from .autodiff import RULES
from .derivatives import nondiff_name, partials
from .errors import DifferentiationError
from .ir import INTERNAL, Node, Program, display, internal, key_str, placeholder, verify
from .lower import Step


def tangent_name(name: str) -> str:
    """``∂h`` for ``h``: a generated name (a user's ``dh`` never meets it)."""
    return internal(f"∂{display(name)}")


def param_tangent(p: str) -> str:
    """The name a ``matvec`` term uses for the tangent of matrix parameter ``p``."""
    return tangent_name(p)


def is_tangent_param(name: str) -> bool:
    return name.startswith("∂") and name.endswith(INTERNAL)


def tangent_of(name: str) -> str:
    """The value a tangent name is the tangent of: ``tangent_of(tangent_name("U")) == "U"``."""
    if not is_tangent_param(name):
        raise ValueError(f"{name!r} is not a tangent's name")
    return name[len("∂"):-len(INTERNAL)]


@dataclass
class Tangent:
    """What :func:`jvp` derives: the tangent program and where each tangent is."""

    prog: Program
    tangents: dict = field(default_factory=dict)   # forward key -> tangent key (absent: zero)


class _Ctx:
    def __init__(self, fwd: Program, out: Tangent, params: frozenset, where: str):
        self.fwd, self.out, self.params, self.where = fwd, out, params, where

    def emit(self, name: str, t, node: Node):
        return self.out.prog.add(self.out.prog.fresh(name, t), node)

    def tan(self, key):
        return self.out.tangents.get(key)

    def zero(self, size, t):
        return self.emit("0", t, Node("ew", (), size, {"expr": sp.S.Zero}))

    def add(self, key, node, parts):
        """The tangent of ``key``: the sum of ``parts`` (tangent keys), None when empty."""
        if not parts:
            return None
        if len(parts) == 1:
            return parts[0]
        return self.emit(f"∂{display(key[0])}·sum", key[1],
                         Node("ew", tuple(parts), node.size, {"expr": sp.Add(*map(placeholder, range(len(parts))))}))


def jvp(fwd: Program, seeds: dict, params=(), where: str = "") -> Tangent:
    """Forward-mode walk over ``fwd`` in topological order (iterative, deterministic).

    ``seeds`` maps leaf keys (states, parameter vectors) to the seed keys of their tangents,
    already added to ``fwd`` 's tangent program by the caller through ``seed_nodes``;
    ``params``: the matrix parameters whose tangent enters each product reading them.
    """
    out = Tangent(Program(external=dict(fwd.nodes), name=f"{fwd.name} tangent"))
    ctx = _Ctx(fwd, out, frozenset(params), where or fwd.name)
    for k, (sk, node) in seeds.items():
        out.prog.add(sk, node)
        out.tangents[k] = sk
    for key, node in fwd.nodes.items():
        if node.is_leaf:
            continue
        rule = JVP_RULES.get(node.op)
        if rule is None:
            raise DifferentiationError(
                f"{ctx.where}: {key_str(key)} is a {node.op!r} node and forward mode has no JVP rule "
                f"for op {node.op!r} (add one to rnncomp.forward_mode.JVP_RULES next to its VJP rule)")
        t = rule(ctx, key, node)
        if t is not None:
            out.tangents[key] = t
    verify(out.prog)
    return out


# ----------------------------------------------------------------------------- the rule table
def _jvp_ew(ctx, key, node):
    n = len(node.args)
    tans = [ctx.tan(a) for a in node.args]
    if not any(tans):
        return None
    ds = partials(node.attrs["expr"], n)
    args, terms = list(node.args) + [key], []
    for i, (a, ta) in enumerate(zip(node.args, tans)):
        if ta is None:
            continue
        if ds[i] is None:
            raise DifferentiationError(
                f"{ctx.where}: {key_str(key)} = {node.attrs['expr']} uses "
                f"{nondiff_name(node.attrs['expr'])!r}, which has no derivative, but a tangent "
                f"flows through it (from {key_str(a)})")
        if ds[i] != 0:
            args.append(ta)
            terms.append(ds[i] * placeholder(len(args) - 1))
    if not terms:
        return None
    args, expr = _compact(args, sp.Add(*terms))
    return ctx.emit(f"∂{display(key[0])}", key[1], Node("ew", args, node.size, {"expr": expr}))


def _compact(args, expr):
    """Only the arguments ``expr`` reads, renumbered in order."""
    used = expr.free_symbols
    keep = [i for i in range(len(args)) if placeholder(i) in used]
    return tuple(args[i] for i in keep), expr.xreplace({placeholder(i): placeholder(j) for j, i in enumerate(keep)})


def _jvp_matvec(ctx, key, node):
    (v,) = node.args
    terms = node.attrs["terms"]
    parts = []
    if ctx.tan(v) is not None:  # P·∂v
        parts.append(ctx.emit(f"{_label(terms)}·∂{display(v[0])}", key[1],
                              Node("matvec", (ctx.tan(v),), node.size, {"terms": terms})))
    for p, tr, c in terms:  # ∂P·v
        if p in ctx.params:
            parts.append(ctx.emit(f"∂{p}·{display(v[0])}", key[1],
                                  Node("matvec", (v,), node.size, {"terms": ((param_tangent(p), tr, c),)})))
    return ctx.add(key, node, parts)


def _label(terms) -> str:
    return terms[0][0] + ("ᵀ" if terms[0][1] else "") if len(terms) == 1 else "M"


def _jvp_slice(ctx, key, node):
    (v,) = node.args
    if ctx.tan(v) is None:
        return None
    return ctx.emit(f"∂{display(key[0])}", key[1], Node("slice", (ctx.tan(v),), node.size, dict(node.attrs)))


def _jvp_pad(ctx, key, node):
    (v,) = node.args
    if ctx.tan(v) is None:
        return None
    return ctx.emit(f"∂{display(key[0])}", key[1], Node("pad", (ctx.tan(v),), node.size, dict(node.attrs)))


def _jvp_concat(ctx, key, node):
    tans = [ctx.tan(a) for a in node.args]
    if not any(tans):
        return None
    parts = tuple(t if t is not None else ctx.zero(ctx.fwd.node(a).size, key[1]) for a, t in zip(node.args, tans))
    return ctx.emit(f"∂{display(key[0])}", key[1], Node("concat", parts, node.size))


def _jvp_sum(ctx, key, node):
    (v,) = node.args
    if ctx.tan(v) is None:
        return None
    return ctx.emit(f"∂{display(key[0])}", key[1], Node("sum", (ctx.tan(v),), 1))


def _jvp_lse(ctx, key, node):
    (v,) = node.args
    if ctx.tan(v) is None:
        return None
    n = ctx.fwd.node(v).size  # ∂ lse(v) = Σ softmax(v) ⊙ ∂v
    w = ctx.emit(f"softmax·∂{display(v[0])}", key[1], Node("ew", (v, key, ctx.tan(v)), n, {
        "expr": sp.exp(placeholder(0) - placeholder(1)) * placeholder(2)}))
    return ctx.emit(f"∂{display(key[0])}", key[1], Node("sum", (w,), 1))


JVP_RULES = {
    "ew": _jvp_ew,
    "matvec": _jvp_matvec,
    "slice": _jvp_slice,
    "pad": _jvp_pad,
    "concat": _jvp_concat,
    "sum": _jvp_sum,
    "lse": _jvp_lse,
    **ARRAY_JVP_RULES,  # transpose, matmul, sumto, wew (derived weights); outer, smatvec, mbcast, mreduce
}


# The ops the JVP rules above emit: what an executor of tangent programs must run
# (rnncomp.algorithms.tangents, .pattern, .restricted each have one entry per op here).
TANGENT_OPS = ("ew", "matvec", "slice", "pad", "concat", "sum", "outer", "smatvec", "mbcast", "mreduce")


def missing_jvp_rules(rules=None, jvp_rules=None) -> list:
    """Ops with a VJP rule (:data:`rnncomp.autodiff.RULES`) but no JVP rule, sorted."""
    return sorted(set(RULES if rules is None else rules) - set(JVP_RULES if jvp_rules is None else jvp_rules))


def check_rule_coverage(rules=None, jvp_rules=None) -> None:
    """Raise :class:`DifferentiationError` naming every op the two rule tables (by default
    ``autodiff.RULES`` and ``JVP_RULES``) disagree on."""
    rules = RULES if rules is None else rules
    jvp_rules = JVP_RULES if jvp_rules is None else jvp_rules
    missing, extra = missing_jvp_rules(rules, jvp_rules), sorted(set(jvp_rules) - set(rules))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"op(s) {', '.join(map(repr, missing))} have a VJP rule (autodiff.RULES) but no "
                         "JVP rule (forward_mode.JVP_RULES)")
        if extra:
            parts.append(f"op(s) {', '.join(map(repr, extra))} have a JVP rule but no VJP rule")
        raise DifferentiationError("; ".join(parts))


# ----------------------------------------------------------------------------- the sensitivity step
@dataclass
class TangentStep:
    """The derived tangent step ḟ of a cell (see the module docstring)."""

    step: Step
    prog: Program
    state_seeds: dict    # state -> seed key ∂h[t-1]
    param_seeds: dict    # parameter -> seed key ∂θ (vectors) or the matvec term name (matrices)
    out: dict            # state -> key of ∂h[t] (None: no tangent reaches it)
    loss: tuple | None   # key of ∂ℓ[t] (None: no loss, or no tangent reaches it)


def tangent_step(step: Step, states: bool = True, params=None) -> TangentStep:
    """Derive the tangent step of a lowered cell.

    ``states``: seed ∂h[t-1] for every state (False: the immediate ∂h[t]/∂θ only);
    ``params``: the parameters whose tangents are seeded (None: all; () : none, then the
    step is h ↦ ∂h[t]/∂h[t-1]·∂h[t-1], a Jacobian-vector product)."""
    params = tuple(step.params) if params is None else tuple(params)
    seeds, state_seeds, param_seeds, matrices = {}, {}, {}, []
    if states:
        for s, n in step.states.items():
            k = state_seeds[s] = (tangent_name(s), "t-1")
            seeds[(s, "t-1")] = (k, Node("seed", (), n))
    for p in params:
        shape = step.params[p]
        if isinstance(shape, tuple):
            matrices.append(p)
            param_seeds[p] = param_tangent(p)
        else:
            k = param_seeds[p] = (tangent_name(p), None)
            seeds[(p, None)] = (k, Node("seed", (), shape))
    tan = jvp(step.prog, seeds, matrices, where=f"cell {step.name!r}")
    out = {s: tan.tangents.get((s, "t")) for s in step.states}
    loss = tan.tangents.get(step.loss_key) if step.has_loss else None
    return TangentStep(step, tan.prog, state_seeds, param_seeds, out, loss)
