"""The chain rule of a fused run folded per unit (issue #20): what sparse SnAp's sweep computes
per kept entry, reduced to the entries it must write.

A run (:mod:`.sparse_fuse`) computes, for each entry e of its nodes, every node in turn:

    v[node](e) = Σ_terms coefficient · x(e)      x: an earlier node's v(e), or read (J, a stored
                                                 node, v[b, j]: ∂W·h's h, the constant 1)

Over a segment (the same terms write every entry) each coefficient depends on the sample and on
the entry's unit only (an element-wise derivative c[b, u], a weight entry P[u, u'] the same for
every direction of unit u, a number).  Every node is then a linear combination of what the
segment reads, with coefficients per (sample, unit):

    v[node](e) = Σ_β F[node, β][b, u(e)] · x_β(e)

and only the nodes something outside the run sees (stored, written to J, gathered) are
computed per entry.  For SnAp-1 on an LSTM, ~25 tangent nodes per entry become the two new
entries (∂c, ∂h) of the direction, each a sum of three products (J's ∂c and ∂h, and the
input of the weight); the F are computed once per (sample, unit) before the run, their
common sub-expressions shared.  This is the same arithmetic in another order (products of
coefficients first), equal to rounding.

    >>> import rnncomp as rc
    >>> from rnncomp.algorithms.pattern import pattern
    >>> from rnncomp.algorithms.sparse_plan import SparsePlan
    >>> from rnncomp.algorithms.sparse_fuse import fuse
    >>> st = rc.cells.elman(2, 4, 1).step
    >>> plan = SparsePlan(st, pattern(st, 1))
    >>> f = fold(plan, fuse(plan, ["h"])[0])
    >>> [[j for j, _ in out] for out in f.segments]   # per segment (W, U, b): ∂h[t-1] gathered, ∂h[t] into J
    [[0, 4], [0, 4], [0, 4]]
    >>> f.coefs                                       # F per (sample, unit): of J[t-1] and of h, x or 1
    [ew1*mat0, ew1]
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy as sp


@dataclass
class Fold:
    """A run's folded segments (see the module docstring).

    ``units``: U, the F arrays are (B, U).  ``symbols``: {Symbol: ("ew", key, i) | ("mat", key,
    i, [(param, transposed, c, flat index per unit (U,))])}.  ``coefs``: the distinct non-constant
    F (sympy expressions over ``symbols``), an array each.  ``segments``: per segment of the run,
    None (not folded: a coefficient there is not one per unit) or [(node index, [(basis,
    F)])] for the nodes written, F a float or an index into ``coefs``; a basis is ``(node
    index, position in its terms)`` (that FusedTerm's x) or "one"."""

    units: int
    symbols: dict
    coefs: list
    segments: list

    def describe(self):
        return (self.units, sorted((str(s), v[:3]) for s, v in self.symbols.items()),
                [sp.srepr(c) for c in self.coefs], self.segments)


def fold(plan, run) -> Fold:
    """The :class:`Fold` of ``run`` (a :class:`.sparse_fuse.Run` of ``plan``)."""
    units = plan.entries[run.keys[0]][1]
    U = int(units.max()) + 1 if len(units) else 1
    segs = run.segments()
    symbols, per_term, bad = {}, {}, set()
    for key, ts in zip(run.keys, run.terms):
        for f in ts:
            c = _coefficient(plan, key, f, segs, units, U, symbols)
            if c is None:
                bad.add((key, f.term))
            else:
                per_term[(key, f.term)] = c
    coefs, index, out = [], {}, []
    for s0, s1 in segs:
        cover = lambda f: f.y0 <= s0 and s1 <= f.y0 + f.n  # noqa: E731
        if any((k, f.term) in bad for k, ts in zip(run.keys, run.terms) for f in ts if cover(f)):
            out.append(None)
            continue
        vals, written = {}, []
        for j, (key, ts) in enumerate(zip(run.keys, run.terms)):
            v = {}
            for pos, f in enumerate(ts):
                if not cover(f):
                    continue
                c = per_term[(key, f.term)]
                if f.reg:
                    src = vals[plan.terms[key][f.term].arg]
                elif f.inline and f.inline[0] == "one":
                    src = {"one": sp.Integer(1)}
                else:
                    src = {(j, pos): sp.Integer(1)}
                for beta, e in src.items():
                    v[beta] = v.get(beta, sp.Integer(0)) + c * e
            vals[key] = v
            to_j = run.to_j[j] is not None and s1 <= run.j_count[j]
            if run.store[j] or to_j or run.gather[j] is not None:
                combo = []
                for beta, e in v.items():   # (not expanded: a sum over paths grows exponentially)
                    if e == 0:
                        continue
                    if not e.is_Number and e not in index:
                        index[e] = len(coefs)
                        coefs.append(e)
                    combo.append((beta, float(e) if e.is_Number else index[e]))
                written.append((j, combo))
        out.append(written)
    return Fold(U, symbols, coefs, out)


def _symbol(symbols, source):
    s = sp.Symbol(f"{source[0]}{len(symbols)}")
    symbols[s] = source
    return s


def _coefficient(plan, key, f, segs, units, U, symbols):
    """Term ``f`` of ``key``'s coefficient as a function of the unit: a number, a new Symbol
    (an element-wise derivative c[b, u]; a weight sum Σ c·P[yu, xu] where (yu, xu) is one pair
    per unit; filed in ``symbols``), or None (it differs between entries of one unit)."""
    tm = plan.terms[key][f.term]
    if tm.kind in ("copy", "one"):
        return sp.Integer(1)
    if tm.kind == "ew":
        if tm.expr.is_Number:
            return sp.sympify(tm.expr)
        return _symbol(symbols, ("ew", key, f.term))
    inside = [(s0, s1) for s0, s1 in segs if f.y0 <= s0 and s1 <= f.y0 + f.n]
    k = np.concatenate([np.arange(s0, s1) for s0, s1 in inside]) if inside else np.zeros(0, int)
    u = units[k]
    k = k - f.y0
    if tm.kind == "inject":
        c = np.unique(np.asarray(tm.coef)[k])
        return sp.Float(float(c[0])) if len(c) == 1 else None
    if tm.kind != "mat":
        return None
    yu, xu, mterms = tm.coef
    pair = np.stack([yu[k], xu[k]], axis=1)
    first = np.full((U, 2), -1)
    first[u[::-1]] = pair[::-1]                 # the pair of each unit's first entry
    if not (first[u] == pair).all():
        return None
    first[first < 0] = 0                        # units the term does not write: any entry
    flats = []
    for p, tr, c in mterms:
        shape = plan.st.params[p]
        flats.append((p, tr, float(c), np.ravel_multi_index((first[:, 1], first[:, 0]) if tr else
                                                             (first[:, 0], first[:, 1]), shape)))
    return _symbol(symbols, ("mat", key, f.term, flats))
