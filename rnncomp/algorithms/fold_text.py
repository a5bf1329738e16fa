"""SnAp's recursion per kept entry as the native executor runs it, printed (``rc.explain(cell,
algorithm="snap")``): each fused run's chain rule folded per unit (:mod:`.sparse_fold`).

For each group of directions (a parameter's entries that reach unit u: a weight row ``W[u, j]``,
a bias ``b[u]``), the new entries of the states as sums of what the step reads: the carried
entries ∂s_u[t-1] of the same direction, the weight's input (``x[t]_j``, ``h[t-1]_j``, 1), with
coefficients per unit u made of the step's forward values.  For Elman under SnAp-1, h[t] =
tanh(b + U·h[t-1] + W·x[t]): a weight W[u, j] reaches h_u only, and its entry moves as
(1 - h_u²)·(U[u,u]·∂h_u[t-1] + x_j) -- worked out by hand, printed here as derived:

    >>> import rnncomp as rc
    >>> print("\\n".join(folded_lines(rc.cells.elman(2, 3, 1), 1)[1:]))
      W[u, j]:
        ∂h_u[t] = U[u,u]*(1 - h[t]**2)·∂h_u[t-1] + (1 - h[t]**2)·x[t]_j
      U[u, j]:
        ∂h_u[t] = U[u,u]*(1 - h[t]**2)·∂h_u[t-1] + (1 - h[t]**2)·h[t-1]_j
      b[u]:
        ∂h_u[t] = U[u,u]*(1 - h[t]**2)·∂h_u[t-1] + (1 - h[t]**2)
"""
from __future__ import annotations

import numpy as np
import sympy as sp

from ..equations import stored_values
from ..ir import NodeSym, display, placeholder

#: P·n_s up to which the folded recursion is derived for printing (its plan is P × n_s booleans)
PRINT_LIMIT = 2_000_000


def folded_lines(cell, n: int) -> list:
    """The lines of the folded recursion of SnAp-n for ``cell`` ([] where there is none to show:
    matrix states, a pattern past :data:`PRINT_LIMIT`, no run that folds)."""
    from ..ops import matrix_ops
    from .pattern import pattern_classes
    from .sparse_fold import fold
    from .sparse_fuse import Run, fuse
    from .sparse_plan import SparsePlan

    from ..printing import Explanation
    step = cell.step
    P = sum(int(np.prod(s)) for s in step.params.values())
    if matrix_ops(step.prog) or P * sum(step.states.values()) > PRINT_LIMIT:
        return []
    plan = SparsePlan(step, pattern_classes(step, n), by_state=True)
    state_of = {k: s for s, k in plan.ts.state_seeds.items()}
    new_of = {k: s for s, k in plan.ts.out.items() if k is not None}
    stored = stored_values(step.prog)
    lines, coefs = [], []
    for run in fuse(plan, list(step.states)):
        if not isinstance(run, Run):
            continue
        f = fold(plan, run)
        subs = {sym: _coefficient(plan, step, src, stored) for sym, src in f.symbols.items()}
        d = plan.entries[run.keys[0]][0]
        for (s0, _), written in zip(run.segments(), f.segments):
            eqs = []
            for j, combo in written or ():
                state = new_of.get(run.keys[j])
                if state is not None:
                    terms = sorted(((_basis(plan, run, beta, state_of), _coef(c, f, subs)) for beta, c in combo),
                                   key=lambda bc: (not bc[0].startswith("∂"), bc[0] == "1", bc[0]))  # carried first
                    coefs += [c for _, c in terms if isinstance(c, sp.Basic)]
                    eqs.append(f"    ∂{state}_u[t] = " + (" + ".join(_term(b, c) for b, c in terms) or "0"))
            if eqs:
                lines += [f"  {_directions(plan, step, int(d[s0]))}:"] + eqs
    if not lines:
        return []
    head = ["folded per kept entry, as the native executor runs it (coefficients per sample and unit u, "
            "made once a step from the forward values at u; rnncomp/algorithms/sparse_fold.py):"]
    used = Explanation(cell)._forward_values(coefs)
    tail = ["  forward values read above (from the forward step t)"] + [f"    {lhs} = {sp.sstr(rhs)}"
                                                                      for lhs, rhs in used] if used else []
    return head + lines + tail


def _directions(plan, step, k) -> str:
    """The parameter entries of direction k's group: ``W[u, j]``, ``W[j, u]`` (a transposed
    product's), ``b[u]``."""
    p = next(p for p, o in plan.dirs.offsets.items() if o <= k < o + plan.dirs.sizes[p])
    shape = step.params[p]
    if not isinstance(shape, tuple):
        return f"{p}[u]"
    transposed = any(tr for node in step.prog.nodes.values() if node.op == "matvec"
                     for q, tr, _ in node.attrs["terms"] if q == p)
    return f"{p}[j, u]" if transposed else f"{p}[u, j]"


def _basis(plan, run, beta, state_of) -> str:
    if beta == "one":
        return "1"
    j, pos = beta
    f = run.terms[j][pos]
    key = run.keys[j]
    if f.inline and f.inline[0] == "J":
        return f"∂{state_of[f.inline[1]]}_u[t-1]"
    if f.inline and f.inline[0] == "inject":
        v = plan.terms[f.inline[1]][0].arg
        return f"{display(v[0])}[{v[1]}]_j"
    tm = plan.terms[key][f.term]
    if tm.arg == "J":
        return f"∂{state_of.get(key, display(key[0]))}_u[t-1]"
    if tm.kind == "inject":
        return f"{display(tm.arg[0])}[{tm.arg[1]}]_j"
    return f"{display(tm.arg[0])}_u"


def _coefficient(plan, step, src, stored):
    """An F symbol's meaning: an element-wise derivative over the forward values, or a weight
    entry ``U[u,u]`` (``U[u,v]`` where the entry's unit and the carried one differ)."""
    if src[0] == "ew":
        key, i = src[1], src[2]
        node, tm = plan.ts.prog.nodes[key], plan.terms[src[1]][src[2]]
        vals = {placeholder(a): (sp.Integer(0) if arg in plan.ts.prog.nodes else NodeSym(arg))
                for a, arg in enumerate(node.args)}
        return tm.expr.xreplace(vals).xreplace(stored)
    total = sp.Integer(0)
    for p, _, c, _flat in src[3]:
        total += sp.Float(c) * sp.Symbol(f"{p}[u,u]") if c != 1 else sp.Symbol(f"{p}[u,u]")
    return total


def _coef(c, f, subs):
    """A folded coefficient: a number, or F's expression over the forward values."""
    return sp.Float(c) if not isinstance(c, int) else f.coefs[c].xreplace(subs)


def _term(basis: str, c) -> str:
    if c == 1:
        return basis
    text = sp.sstr(sp.nsimplify(c) if c.is_Number and float(c).is_integer() else c)
    text = f"({text})" if c.is_Add else text
    return text if basis == "1" else f"{text}·{basis}"
