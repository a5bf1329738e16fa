"""Reverse mode over IR programs: the rule table, the reverse walk, the BPTT step.

BPTT is the transpose of a scan.  With ``f`` the forward step

    f : (h[t-1], x[t]; θ) → (h[t], ℓ[t])

the backward step is

    f̄ : (stored values at t, δ⁺h[t], w[t]; θ) → (δh[t-1], ∂ℓ/∂θ contributions at t)

where ``δ⁺h[t]`` is the adjoint of h[t] arriving from step t+1 (zero at the last
step) and ``w[t]`` the weight of step t's cost in the loss.  The executor runs
f̄ for t = T … 1, carrying ``δh[t-1]`` into the next iteration as ``δ⁺h``, and
sums the parameter contributions over t.  The same :func:`reverse` walk applied
to an unfolded program gives the unrolled gradient.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import sympy as sp

from .dsl import _NAME
from .errors import ArgumentError, DifferentiationError
from .array_rules import ARRAY_RULES
from .derivatives import nondiff_name, partials
from .gradspec import Batch, Outer
from .ir import Node, Program, display, eliminate_aliases, internal, key_str, placeholder, readable, verify
from .lower import LOSS, Step


# ----------------------------------------------------------------------------- the walk
@dataclass
class Contribution:
    """An additive piece of an adjoint: ``template`` over ``keys``, ``size`` units."""

    template: sp.Expr
    keys: tuple
    size: int


@dataclass
class Reverse:
    """What :func:`reverse` derives: the backward program and where each result is."""

    prog: Program
    adjoints: dict = field(default_factory=dict)          # forward key -> adjoint key
    grads: dict = field(default_factory=lambda: defaultdict(list))  # param -> [spec]


class _Ctx:
    def __init__(self, fwd: Program, out: Reverse, where: str):
        self.fwd, self.out, self.where = fwd, out, where
        self.pending: dict = defaultdict(list)

    def contribute(self, key, template, keys, size, at=None):
        """Add a piece to the adjoint of ``key``; ``at`` is the time of the reading node."""
        c = Contribution(template, tuple(keys), size)
        node = self.fwd.nodes.get(key)
        if node is not None and node.op == "param":
            key = (key[0], at)
            # a parameter is read at every step: each read's contribution is its own
            # gradient term (summed by the executor), so an unfolded graph stays linear
            self.out.grads[key[0]].append(Batch(self.materialize(key, node, [c])))
        else:
            self.pending[key].append(c)

    def emit(self, name: str, t, node: Node):
        return self.out.prog.add(self.out.prog.fresh(name, t), node)

    def materialize(self, key, node: Node, cs: list) -> tuple:
        """One ``ew`` node summing the contributions (unbroadcasting size-n into size 1)."""
        name, t = key
        keys, terms = [], []
        for c in cs:
            tmpl, ks = c.template, c.keys
            if c.size != node.size:  # a size-1 value used against size n: sum over units
                tmp = self.emit(f"δ{name}·part", t, Node("ew", ks, c.size, {"expr": tmpl}))
                tmpl, ks = placeholder(0), (self.emit(f"Σδ{name}", t, Node("sum", (tmp,), 1)),)
            repl = {}
            used = tmpl.free_symbols
            for i, k in enumerate(ks):
                if placeholder(i) not in used:
                    continue
                if k not in keys:
                    keys.append(k)
                repl[placeholder(i)] = placeholder(keys.index(k))
            terms.append(tmpl.xreplace(repl))
        return self.emit(adjoint_name(name), t, Node("ew", tuple(keys), node.size, {"expr": sp.Add(*terms)}))


def adjoint_name(name: str) -> str:
    """δh for a named value, δ(W·h) for a temporary (the key's name is marked by ``fresh``)."""
    name = display(name)
    return f"δ{name}" if _NAME.match(name) or name == display(LOSS) else f"δ({name})"


def _active(fwd: Program, leaves=()) -> set:
    """Keys whose value depends on a parameter, a state or one of ``leaves`` (inputs whose
    cotangent is wanted): the ones that need adjoints."""
    active = set(leaves)
    for key, node in fwd.nodes.items():
        if node.op in ("param", "state") or any(a in active for a in node.args) or (
                node.op == "matvec" and any((p, None) in active for p, _, _ in node.attrs["terms"])):
            active.add(key)
    return active


def reverse(fwd: Program, seeds: dict, seed_nodes: dict, where: str, leaves=()) -> Reverse:
    """Reverse-mode walk over ``fwd``: iterative, reverse topological, deterministic.

    ``seeds`` maps forward keys to initial :class:`Contribution` lists; ``seed_nodes``
    are the leaves those contributions read (added to the backward program first);
    ``where`` names the program in errors (``"cell 'lstm'"``); ``leaves`` the input leaves
    whose adjoints are wanted too (parameters and states always get theirs).
    """
    out = Reverse(Program(external=dict(fwd.nodes), name=f"{fwd.name} backward"))
    for k, n in seed_nodes.items():
        out.prog.add(k, n)
    ctx = _Ctx(fwd, out, where)
    stray = [key_str(k) for k in (*seeds, *leaves) if k not in fwd.nodes]
    if stray:  # a seed or leaf the walk would never meet: a caller's bug, not a zero gradient
        raise AssertionError(f"{fwd.name}: seeds or leaves for values it does not compute: {', '.join(stray)}")
    for k, cs in seeds.items():
        ctx.pending[k].extend(cs)
    active = _active(fwd, leaves)
    for key in reversed(list(fwd.nodes)):
        cs = ctx.pending.pop(key, None)
        if not cs or key not in active:
            continue
        node = fwd.nodes[key]
        adj = ctx.materialize(key, node, cs)
        out.adjoints[key] = adj
        if not node.is_leaf:
            RULES[node.op](ctx, key, node, adj, active)
    return out


# ----------------------------------------------------------------------------- the rule table
def _ew_partials(ctx, key, node, active):  # [(argument, ∂template/∂argument)], active and nonzero
    ds = partials(node.attrs["expr"], len(node.args))
    for i, a in enumerate(node.args):
        if a in active and ds[i] is None:
            raise DifferentiationError(
                f"{ctx.where}: {readable(ctx.fwd, key)} uses {nondiff_name(node.attrs['expr'])!r}, which has "
                f"no derivative there, but a gradient flows through it (to {readable(ctx.fwd, a)})")
    return [(a, d) for a, d in zip(node.args, ds) if a in active and d != 0]


def _vjp_ew(ctx, key, node, g, active):
    G = placeholder(len(node.args) + 1)
    for a, d in _ew_partials(ctx, key, node, active):
        ctx.contribute(a, G * d, node.args + (key, g), node.size, at=key[1])


def _transpose_terms(terms):
    return tuple((p, not tr, c) for p, tr, c in terms)


def _vjp_matvec(ctx, key, node, g, active):
    (v,) = node.args
    terms = node.attrs["terms"]
    if v in active:
        tt = _transpose_terms(terms)
        label = terms[0][0] + ("" if terms[0][1] else "ᵀ") if len(terms) == 1 else "Mᵀ"
        mv = ctx.emit(f"{label}·{adjoint_name(key[0])}", key[1], Node("matvec", (g,), ctx.fwd.node(v).size, {"terms": tt}))
        ctx.contribute(v, placeholder(0), (mv,), ctx.fwd.node(v).size)
    for p, tr, c in terms:
        ctx.out.grads[p].append(Outer(g, v, c, tr))


def _vjp_slice(ctx, key, node, g, active):
    (v,) = node.args
    n = ctx.fwd.node(v).size
    pad = ctx.emit(f"pad(δ{key[0]})", key[1], Node("pad", (g,), n, {"lo": node.attrs["lo"]}))
    ctx.contribute(v, placeholder(0), (pad,), n)


def _vjp_pad(ctx, key, node, g, active):
    (v,) = node.args
    n = ctx.fwd.node(v).size
    s = ctx.emit(f"δ{key[0]}[{node.attrs['lo']}:]", key[1], Node("slice", (g,), n, {"lo": node.attrs["lo"]}))
    ctx.contribute(v, placeholder(0), (s,), n)


def _vjp_concat(ctx, key, node, g, active):
    lo = 0
    for a in node.args:
        n = ctx.fwd.node(a).size
        if a in active:
            s = ctx.emit(f"δ{key[0]}[{lo}:{lo + n}]", key[1], Node("slice", (g,), n, {"lo": lo}))
            ctx.contribute(a, placeholder(0), (s,), n)
        lo += n


def _vjp_sum(ctx, key, node, g, active):
    (v,) = node.args
    ctx.contribute(v, placeholder(0), (g,), ctx.fwd.node(v).size)


def _vjp_lse(ctx, key, node, g, active):
    (v,) = node.args
    ctx.contribute(v, placeholder(2) * sp.exp(placeholder(0) - placeholder(1)), (v, key, g),
                   ctx.fwd.node(v).size)


# derived weights (rnncomp.weights): (m, n) arrays at time None, computed once per call
def _vjp_wew(ctx, key, node, g, active):  # as ew, for operands that broadcast
    G = placeholder(len(node.args) + 1)
    for a, d in _ew_partials(ctx, key, node, active):
        n, piece, keys = ctx.fwd.node(a).size, G * d, node.args + (key, g)
        if n != node.size:  # the piece at full size, summed over the axes the operand was broadcast along
            part = ctx.emit(f"δ{display(a[0])}·part", None, Node("wew", keys, node.size, {"expr": piece}))
            piece, keys = placeholder(0), (ctx.emit(f"Σδ{display(a[0])}", None, Node("sumto", (part,), n)),)
        ctx.contribute(a, piece, keys, n)


RULES = {
    "ew": _vjp_ew,
    "matvec": _vjp_matvec,
    "slice": _vjp_slice,
    "pad": _vjp_pad,
    "concat": _vjp_concat,
    "sum": _vjp_sum,
    "lse": _vjp_lse,
    "wew": _vjp_wew,
    **ARRAY_RULES,  # transpose, matmul, sumto (derived weights); outer, smatvec, mbcast, mreduce (matrix states)
}


# ----------------------------------------------------------------------------- BPTT
@dataclass(frozen=True)
class Cotangents:
    """What a backward step differentiates (its seeds) and which input cotangents it emits.

    ``loss``: the cell's own cost, weighted by w[t]; ``outputs``: outputs that receive an
    external cotangent δyᵉˣᵗ[t] from the caller (a later layer); ``inputs``: inputs whose
    cotangent δx[t] the step computes (to send to an earlier layer); ``final``: the final
    states receive the caller's cotangent as δ⁺h[T] (a plain loss: 0).  The rolled step
    carries δ⁺h either way, and the adjoint carried out of step 1 is the cotangent of h[0].
    ``params=False``: no parameter gradients (an iteration that needs only the carried
    adjoints, as recurrent backprop's adjoint fixed point: ``algorithms/settle_exec.py``).
    """

    loss: bool = True
    outputs: tuple = ()
    inputs: tuple = ()
    final: bool = False
    params: bool = True


LOSS_ONLY = Cotangents()


@dataclass
class BackwardStep:
    """The derived backward step f̄ of a cell (see the module docstring).

    With external cotangents (:class:`Cotangents`) the step is

        f̄ : (stored values at t, δ⁺h[t], w[t], δyᵉˣᵗ[t]; θ) → (δh[t-1], δx[t], ∂θ contributions at t)
    """

    step: Step
    prog: Program
    carry_in: dict       # state -> seed key δ⁺h[t]
    carry_out: dict      # state -> key of δh[t-1] (None: no gradient reaches h[t-1])
    weight: tuple        # seed key w[t]
    grads: dict          # param -> list of gradient specs (rnncomp.gradspec: Batch | Outer)
    adjoints: dict = field(default_factory=dict)  # forward key -> key of its total adjoint
    cot: Cotangents = LOSS_ONLY
    out_seeds: dict = field(default_factory=dict)       # output -> seed key δyᵉˣᵗ[t]
    input_adjoints: dict = field(default_factory=dict)  # input -> key of δx[t] (None: 0)


WEIGHT = internal("w")  # w[t], the weight of step t's cost: never the key of a user's `w`


def carry_key(state: str, t="t"):
    return (internal(f"δ⁺{state}"), t)


def cotangent_key(output: str, t="t"):
    """The seed of an output's external cotangent (a name no declaration can take)."""
    return (internal(f"δ{output}ᵉˣᵗ"), t)


def backward_step(step: Step, cot: Cotangents = LOSS_ONLY) -> BackwardStep:
    """Derive the backward step of a lowered cell, seeded as ``cot`` says."""
    if not isinstance(step, Step):  # a Cell, a composition's step or None: "... has no attribute 'states'"
        raise ArgumentError(f"rc.backward_step takes one cell's lowered step (cell.step), got {type(step).__name__}"
                            f"{'; rc.explain(cell) prints it' if hasattr(step, 'step') else ''}")
    seed_nodes, seeds = {}, {}
    for s, n in step.states.items():
        k = carry_key(s)
        seed_nodes[k] = Node("seed", (), n)
        seeds[(s, "t")] = [Contribution(placeholder(0), (k,), n)]
    w = (WEIGHT, "t")
    seed_nodes[w] = Node("seed", (), 1)
    if step.has_loss and cot.loss:
        seeds[(LOSS, "t")] = [Contribution(placeholder(0), (w,), 1)]
    out_seeds = {}
    for o in cot.outputs:
        k = out_seeds[o] = cotangent_key(o)
        seed_nodes[k] = Node("seed", (), step.outputs[o])
        seeds.setdefault((o, "t"), []).append(Contribution(placeholder(0), (k,), step.outputs[o]))
    leaves = [(x, "t") for x in cot.inputs]
    rev = reverse(step.prog, seeds, seed_nodes, where=f"cell {step.name!r}", leaves=leaves)
    # an input's cotangent is read step by step by the caller: it keeps a node of its own
    prog, alias = eliminate_aliases(rev.prog, keep={rev.adjoints[x] for x in leaves if x in rev.adjoints})
    verify(prog)
    a = lambda k: alias.get(k, k)  # noqa: E731
    carry_out = {s: a(rev.adjoints[(s, "t-1")]) if (s, "t-1") in rev.adjoints else None
                 for s in step.states}
    grads = {p: [spec.renamed(a) for spec in specs] for p, specs in rev.grads.items()} if cot.params else {}
    return BackwardStep(step, prog, {s: carry_key(s) for s in step.states}, carry_out, w, grads,
                        {k: a(v) for k, v in rev.adjoints.items()}, cot, out_seeds,
                        {x: rev.adjoints.get((x, "t")) for x in cot.inputs})


# ----------------------------------------------------------------------------- unrolled
@dataclass
class Unrolled:
    """The unfolded forward program and its reverse: the reference for the rolled step."""

    fwd: Program
    rev: Reverse


def unrolled(step: Step, k: int, cot: Cotangents = LOSS_ONLY) -> Unrolled:
    """Unfold ``k`` steps and run :func:`reverse` over the whole graph (no loop).

    Seeds as ``cot`` says: w[s]·ℓ[s] for the loss, δyᵉˣᵗ[s] for each output in ``cot.outputs``
    and, with ``cot.final``, δ⁺h[k] for each state (the final state's cotangent); the adjoints
    of the inputs in ``cot.inputs`` at every step are derived too."""
    from .graph import unfold_program

    fwd = unfold_program(step, k)
    seed_nodes, seeds = {}, {}
    for s in range(1, k + 1):
        if step.has_loss and cot.loss:
            w = (WEIGHT, s)
            seed_nodes[w] = Node("seed", (), 1)
            seeds[(LOSS, s)] = [Contribution(placeholder(0), (w,), 1)]
        for o in cot.outputs:
            d = cotangent_key(o, s)
            seed_nodes[d] = Node("seed", (), step.outputs[o])
            seeds[(o, s)] = [Contribution(placeholder(0), (d,), step.outputs[o])]
    for st, n in (step.states.items() if cot.final else ()):
        d = carry_key(st, k)
        seed_nodes[d] = Node("seed", (), n)
        seeds.setdefault((st, k), []).append(Contribution(placeholder(0), (d,), n))
    leaves = [(x, s) for x in cot.inputs for s in range(1, k + 1)]
    rev = reverse(fwd, seeds, seed_nodes, where=f"cell {step.name!r} unfolded", leaves=leaves)
    verify(rev.prog)  # as backward_step's: every read defined, every size consistent
    return Unrolled(fwd, rev)
