"""SnAp's step over the stored entries only, as index tables: the plan a native executor follows.

SnAp-n stores the entries (k, u) of ∂s/∂θ that its pattern M keeps (:mod:`.snap`; in the
order of ``np.nonzero`` of the (P, n_s) pattern: by parameter entry k, then unit u).  One
step is the tangent step run over one direction per parameter entry, seeded with those
entries,

    J[t][u, k] = M[u, k] · ḟ(values at t;  ∂s[t-1] = J[t-1][:, k],  ∂θ = e_k)[u]

and each tangent node here holds only the (direction, unit) entries a seed reaches
(forward, :data:`.pattern.STRUCTURE`) *and* a kept output entry reads (backward,
:data:`.restricted.NEED`).  For SnAp-1 a weight W[i, j] reaches unit i only, so every node
holds about one entry per parameter entry: O(|θ|) values per sample, the size of a BPTT
step.  Every node is a sum of *terms*, each ``y[b, yp[i]] += coefficient · x[b, xp[i]]``:

    copy     x a tangent node (slice, pad, concat, sum; a state seed reads J)   coefficient 1
    ew       x the tangent argument of an element-wise node      ∂expr/∂x at (b, units[i])
    mat      x the tangent argument of P·∂v                       Σ c·P[yu[i], xu[i]]
    inject   x a forward value v, the term ∂P·v                   c[i]
    one      a parameter vector's seed ∂b (no x)                  1

    >>> import numpy as np, rnncomp as rc
    >>> from rnncomp.algorithms.pattern import pattern
    >>> st = rc.cells.elman(1, 4, 1).step
    >>> plan = SparsePlan(st, pattern(st, 1))
    >>> plan.nnz, max(len(plan.entries[k][0]) for k in plan.order)   # W: 4, U: 16, b: 4 entries, one each
    (24, 24)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy as sp

from ..backends.numpy import ew_function
from ..forward_mode import is_tangent_param, tangent_of, tangent_step
from ..ir import placeholder
from .pattern import STRUCTURE, entry_classes, expand_rows, group_pairs, stored_entries
from .restricted import Positions, kept_entries, narrow
from .tangents import Directions


@dataclass
class Term:
    """``y[b, yp[i]] += coefficient · x[b, xp[i]]`` (see the module docstring for ``kind``)."""

    kind: str           # copy | ew | mat | inject | one
    arg: object         # the key x is read from (a tangent node, J, or a forward value); None: one
    yp: np.ndarray      # positions in the node's entries
    xp: np.ndarray      # positions in x (entries of a tangent node, stored entries, or units of v)
    expr: object = None  # ew: ∂expr/∂x (a template over the node's arguments)
    units: object = None  # ew: the unit of each entry (where the coefficient is read)
    coef: object = None   # inject: c per entry; mat: (yu, xu, terms) to read off the matrices

    def __post_init__(self):   # int32 where the values fit: a plan holds a few such arrays per entry
        self.yp, self.xp = narrow(self.yp), narrow(self.xp)
        self.units = None if self.units is None else narrow(self.units)
        if self.kind == "mat":
            self.coef = (narrow(self.coef[0]), narrow(self.coef[1]), self.coef[2])


class SparsePlan:
    """The entries and terms of every tangent node (see the module docstring).

    ``mask``: {state: (P, n) bool}, SnAp's pattern (:func:`.pattern.pattern`), or the same as
    :func:`.pattern.pattern_classes`'s ``(patterns per class, index)``, which plans without a
    (P, n) table (O(kept entries) memory: the native executor's and explain's form).  The stored
    entries come in the order of ``np.nonzero`` (by parameter entry, then unit: the NumPy
    executor's carry), or, ``by_state``, state by state in that order (each state's entries a
    range of J: the native executor reads and writes them contiguously); ``perm[i]`` is the
    position of stored entry i in the ``np.nonzero`` order."""

    def __init__(self, step, mask, ts=None, by_state=False):
        self.st = step
        ts = self.ts = ts or tangent_step(step)
        self.dirs = Directions.dense(step)
        offs = np.cumsum([0] + list(step.states.values()))
        self.state_off = dict(zip(step.states, offs[:-1]))
        self.N = int(offs[-1])
        # the reach and need of each node per class of entries with one pattern (pattern.py)
        dirs, classes = entry_classes(step, ts)
        by_class = isinstance(mask, tuple) and np.array_equal(mask[1], classes)
        if isinstance(mask, tuple) and not by_class:   # classes of another split: per entry
            mask = {s: v[mask[1]] for s, v in mask[0].items()}
        if by_class:
            mask = mask[0]
            col, row = stored_entries(mask, classes, step.states)      # the stored entries
        else:
            col, row = np.nonzero(np.concatenate([mask[s] for s in step.states], axis=1))   # (P, N)
        state = np.searchsorted(offs, row, side="right")
        self.perm = np.argsort(state, kind="stable") if by_state else np.arange(len(col))
        self.col, self.row = narrow(col[self.perm]), narrow(row[self.perm])
        self.nnz = len(self.col)
        stored = Positions(col, row, self.N, narrow(np.argsort(self.perm)))   # (k, unit) -> its place in J
        self.perm = narrow(self.perm)
        del col, row
        if not by_class:
            first = np.unique(classes, return_index=True)[1]
            if not all(np.array_equal(mask[s][first][classes], mask[s]) for s in step.states):
                dirs, classes, first = self.dirs, None, slice(None)   # a mask of another shape: per entry
            mask = {s: mask[s][first] for s in step.states}
        K = dirs.K
        prog = ts.prog
        seed_state = {k: s for s, k in ts.state_seeds.items()}
        sizes = {k: n.size for k, n in prog.nodes.items()}
        tangent = lambda node: [a for a in node.args if a in prog.nodes]  # noqa: E731
        sup = {}
        for key, node in prog.nodes.items():          # reachable from a seed
            if node.op == "seed":
                s = seed_state.get(key)
                if s is not None:
                    sup[key] = mask[s].copy()
                else:
                    v = np.zeros((K, node.size), dtype=bool)
                    col = dirs.column.get(tangent_of(key[0]))
                    if col is not None:
                        v[col, np.arange(node.size)] = True
                    sup[key] = v
            else:
                sup[key] = np.broadcast_to(STRUCTURE[node.op](node, [sup[a] for a in tangent(node)], dirs, prog),
                                           (K, node.size))
        need = {k: np.zeros((K, sizes[k]), dtype=bool) for k in prog.nodes}
        for s, k in ts.out.items():                    # a kept entry, then what it reads
            if k is not None:
                need[k] |= mask[s]
        self.entries, index = kept_entries(prog, sup, need, sizes, classes, consume=True)
        del sup, need
        self.order = [k for k in prog.nodes if len(self.entries[k][0])]
        # a node's positions (8 bytes an entry) are dropped after the last node that reads them
        last = {a: i for i, key in enumerate(self.order) for a in (*prog.nodes[key].args, key)}
        outs = set(ts.out.values())
        self.terms, self._ranges = {}, {}
        for i, key in enumerate(self.order):
            self.terms[key] = [self._shared(tm) for tm in self._terms(key, prog.nodes[key], index, stored, seed_state,
                                                                     sizes)]
            for a in (*prog.nodes[key].args, key):
                if last.get(a) == i and a not in outs:
                    index.pop(a, None)
        self.out = []   # per state: (node, positions in its entries, stored positions)
        for s, k in ts.out.items():
            if k is None:
                continue
            o = self.state_off[s]
            cols, units = np.nonzero(mask[s]) if classes is None else expand_rows(mask[s], classes)
            src = index[k][cols, units]
            ok = src >= 0                                # the others stay 0: never reached
            self.out.append((k, narrow(src[ok]), narrow(stored[cols[ok], units[ok] + o])))

    def _range(self, n):
        """0 … n-1, one array per length for the whole plan (most positions of SnAp-1's terms)."""
        if n not in self._ranges:
            self._ranges[n] = narrow(np.arange(n))
        return self._ranges[n]

    def _shared(self, tm):
        """``tm`` with positions 0 … n-1 replaced by the plan's one array of them."""
        for f in ("yp", "xp"):
            a = getattr(tm, f)
            if len(a) and a[0] == 0 and a[-1] == len(a) - 1 and np.array_equal(a, self._range(len(a))):
                setattr(tm, f, self._range(len(a)))
        return tm

    def _terms(self, key, node, index, stored, seed_state, sizes):
        d, u = self.entries[key]
        every = self._range(len(d))   # shared by the terms that write every entry
        if node.op == "seed":
            s = seed_state.get(key)
            if s is None:
                return [Term("one", None, every, every)]
            return [Term("copy", "J", every, stored[d, u + self.state_off[s]])]
        if node.op == "ew":
            out = []
            for i, a in enumerate(node.args):
                if a not in index:
                    continue
                xp = index[a][d, u if sizes[a] == node.size else np.zeros_like(u)]
                ok = xp >= 0
                every_ok = ok.all()
                out.append(Term("ew", a, every if every_ok else every[ok], xp if every_ok else xp[ok],
                                sp.diff(node.attrs["expr"], placeholder(i)), u if every_ok else u[ok]))
            return out
        if node.op == "matvec":
            return self._matvec(key, node, index)
        lo = node.attrs.get("lo", 0)
        starts = np.cumsum([0] + [sizes.get(a, 0) for a in node.args])
        out = []
        for i, a in enumerate(node.args):
            if a not in index:
                continue
            if node.op == "sum":  # every entry of the argument into unit 0 of its direction
                ad, _ = self.entries[a]
                yp = index[key][ad, 0]
                ok = yp >= 0
                out.append(Term("copy", a, yp[ok], np.nonzero(ok)[0]))
                continue
            xu = {"slice": u + lo, "pad": u - lo, "concat": u - starts[i]}[node.op]
            ok = (xu >= 0) & (xu < sizes[a])
            xp = np.full(len(u), -1)
            xp[ok] = index[a][d[ok], xu[ok]]
            ok &= xp >= 0
            out.append(Term("copy", a, every[ok], xp[ok]))
        return out

    def _matvec(self, key, node, index):
        d, u = self.entries[key]
        terms = node.attrs["terms"]
        if all(is_tangent_param(p) for p, _, _ in terms):   # ∂P·v: v's entries into P's directions
            yp, src, cs = [], [], []
            for p, tr, c in terms:
                col = self.dirs.column.get(tangent_of(p))
                if col is None:
                    continue
                m_, n_ = col.shape
                k = d - self.dirs.offsets[tangent_of(p)]
                inside = (k >= 0) & (k < m_ * n_)
                i, j = np.divmod(np.where(inside, k, 0), n_)
                unit, other = (j, i) if tr else (i, j)
                hit = inside & (unit == u)
                yp.append(np.nonzero(hit)[0])
                src.append(other[hit])
                cs.append(np.full(int(hit.sum()), float(c)))
            return [Term("inject", node.args[0], np.concatenate(yp), np.concatenate(src), coef=np.concatenate(cs))]
        (a,) = node.args
        ad, au = self.entries[a]
        yp, xp = group_pairs(ad, d)   # pairs (y entry, x entry) in the same direction (x's sorted by it)
        return [Term("mat", a, yp, xp, coef=(u[yp], au[xp], terms))]

    # ------------------------------------------------------------------ the NumPy evaluation
    @staticmethod
    def mat_weights(term, params, dtype):
        """The coefficients Σ c·P[yu, xu] of a ``mat`` term (constant while θ is)."""
        yu, xu, terms = term.coef
        return sum(float(c) * (np.asarray(params[p]).T if tr else np.asarray(params[p]))[yu, xu]
                   for p, tr, c in terms).astype(dtype)

    def evaluate(self, env, params, J):
        """J[t] ``(B, nnz)`` from J[t-1] and the forward values ``env`` of step t (the
        reference of the native executor's sweep, on NumPy arrays)."""
        B, dt = J.shape[0], J.dtype
        vals = {"J": J}
        for key in self.order:
            node = self.ts.prog.nodes[key]
            y = np.zeros((B, len(self.entries[key][0])), dtype=dt)
            for tm in self.terms[key]:
                if tm.kind == "one":
                    y[:, tm.yp] += 1
                    continue
                if tm.kind == "inject":
                    x = np.broadcast_to(env[tm.arg], (B, np.shape(env[tm.arg])[-1]))[:, tm.xp] * tm.coef
                else:
                    x = vals[tm.arg][:, tm.xp]
                if tm.kind == "ew":
                    c = np.asarray(ew_function(tm.expr, len(node.args))(
                        *[env.get(k, 0.0) if k not in self.ts.prog.nodes else 0.0 for k in node.args]), dtype=dt)
                    c = np.broadcast_to(np.reshape(c, (1, -1)) if c.ndim < 2 else c, (B, max(np.shape(c)[-1:] or (1,))))
                    x = x * (c[:, tm.units] if c.shape[1] > 1 else c[:, :1])
                elif tm.kind == "mat":
                    x = x * self.mat_weights(tm, params, dt)
                np.add.at(y, (slice(None), tm.yp), x)
            vals[key] = y
        new = np.zeros_like(J)
        for k, src, dst in self.out:
            new[:, dst] = vals[k][:, src]
        return new
