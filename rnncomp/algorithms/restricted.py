"""Chosen entries of the state Jacobian D = ∂s[t]/∂s[t-1], by forward mode that computes each
tangent only where it is both reachable and needed.

SnAp needs D[u, v] only for the pairs (u, v) its pattern links (the diagonal for an Elman
cell under SnAp-1).  Run over one direction per state unit, the tangent step would compute
all of D (n_s directions × a step).  Here each tangent node keeps only the (direction, unit)
entries that a seed reaches (forward, as in :func:`rnncomp.algorithms.pattern.pattern`) and a
wanted entry reads (backward from the wanted (u, v)); the evaluation is a gather, a
multiply by the forward step's coefficients and a scatter per node.  For SnAp-1 on Elman
that is n_s entries per node: the cost of a step, not of n_s steps.

    >>> import numpy as np, rnncomp as rc
    >>> rj = RestrictedJacobian(rc.cells.elman(1, 4, 1).step, np.arange(4), np.arange(4))
    >>> [len(d) for d, _ in rj.positions.values()]  # ∂h[t-1], U·∂h, ∂a, ∂h[t]; the read-out: none
    [4, 4, 4, 4, 0, 0, 0, 0]
"""
from __future__ import annotations

from functools import cached_property

import numpy as np
import sympy as sp

from ..backends.numpy import ew_function
from ..errors import CompileError
from ..forward_mode import tangent_step
from ..ir import placeholder
from ..ops import MATRIX, matrix_ops
from .pattern import STRUCTURE, expand_rows, group_pairs
from .tangents import Directions


def _need_ew(node, need, args, sizes):
    out = []
    for a in args:
        out.append(need if sizes[a] == node.size else need.any(axis=1, keepdims=True))
    return out


def _need_slice(node, need, args, sizes):
    x = np.zeros((need.shape[0], sizes[args[0]]), dtype=bool)
    x[:, node.attrs["lo"]:node.attrs["lo"] + node.size] = need
    return [x]


def _need_concat(node, need, args, sizes):
    out, lo = [], 0
    for a in args:
        out.append(need[:, lo:lo + sizes[a]])
        lo += sizes[a]
    return out


def _need_all(node, need, args, sizes):
    anyrow = need.any(axis=1, keepdims=True)
    return [np.repeat(anyrow, sizes[a], axis=1) for a in args]


NEED = {  # tangent op -> which entries of each tangent argument the needed entries read
    "ew": _need_ew,
    "matvec": lambda node, need, args, sizes: [np.repeat(need.any(axis=1, keepdims=True), sizes[args[0]], axis=1)],
    "slice": _need_slice,
    "pad": lambda node, need, args, sizes: [need[:, node.attrs["lo"]:node.attrs["lo"] + sizes[args[0]]]],
    "concat": _need_concat,
    "sum": lambda node, need, args, sizes: [np.repeat(need, sizes[args[0]], axis=1)],
    # matrix states (#19): every entry of each tangent argument wherever an entry is needed
    # (a superset: exact for outer/smatvec rows would be finer, the result is the same)
    **{op: _need_all for op in MATRIX},
}


def narrow(a):
    """An index array as int32 where every value fits (NumPy's int64 doubles the bytes of the
    plans' per-entry arrays; issue #20), else as it is."""
    a = np.asarray(a)
    if a.dtype.kind in "iu" and a.dtype.itemsize > 4 and (not a.size or (int(a.min()) >= -2**31 and int(a.max()) < 2**31)):
        return a.astype(np.int32)
    return a


class Positions:
    """``pos[d, u]``: the position of entry (d, u) among a node's entries (sorted by direction,
    then unit), -1 where it has none.  Held as the sorted keys d·n + u: O(entries) memory, where
    a dense (directions × units) table took 8 bytes per pair (an LSTM with 128 units under SnAp:
    78 MB per tangent node, 6.6 GB for the step)."""

    def __init__(self, d, u, n: int, values=None):
        self.n, self.keys = n, np.asarray(d, np.int64) * n + np.asarray(u, np.int64)
        self.values = None if values is None else np.asarray(values)   # None: the position itself

    def __getitem__(self, du):
        d, u = np.broadcast_arrays(np.asarray(du[0], np.int64), np.asarray(du[1], np.int64))
        if not len(self.keys):
            return np.full(d.shape, -1)
        k = d * self.n + u
        p = np.minimum(np.searchsorted(self.keys, k), len(self.keys) - 1)
        return np.where(self.keys[p] == k, p if self.values is None else self.values[p], -1)


def kept_entries(prog, sup, need, sizes, classes=None, consume=False):
    """The entries each tangent node of ``prog`` computes: reachable (``sup``, (K, size) per
    node) and read by a wanted entry (``need``: the wanted entries, updated in place backward).
    ``classes[e]``: the row of ``sup``/``need`` that direction e follows, where their rows are
    classes of directions with one pattern (:func:`.pattern.entry_classes`); None: a row each.
    ``consume``: each node's ``sup`` and ``need`` are dropped from the dicts once its entries
    are known (they are K × size booleans per node: the plan's peak holds fewer of them).
    Returns ``({key: (directions, units)}, {key: Positions})``."""
    for key in reversed(list(prog.nodes)):
        node = prog.nodes[key]
        args = [a for a in node.args if a in prog.nodes]
        if node.op == "seed" or not args:  # a seed, ∂P·v: nothing tangent to read
            continue
        for a, n_a in zip(args, NEED[node.op](node, need[key] & sup[key], args, sizes)):
            need[a] = need[a] | n_a
    entries, index, seen = {}, {}, {}
    for key in prog.nodes:
        kept = need.pop(key) & sup.pop(key) if consume else need[key] & sup[key]
        d, u = np.nonzero(kept) if classes is None else expand_rows(kept, classes)
        # nodes with the same entries share their arrays (SnAp-1 of an LSTM: most of its ~30 nodes)
        same = seen.setdefault((len(d), sizes[key]), [])
        at = next((k for k in same if np.array_equal(entries[k][0], d) and np.array_equal(entries[k][1], u)), None)
        if at is not None:
            entries[key], index[key] = entries[at], index[at]
            continue
        same.append(key)
        entries[key] = (narrow(d), narrow(u))   # held for every node: int32 where they fit
        index[key] = Positions(d, u, sizes[key])
    return entries, index


class RestrictedJacobian:
    """D[rows[i], cols[i]] for i = 0 … (see the module docstring); rows and columns index the
    state units of all states in declaration order."""

    def __init__(self, step, rows, cols):
        matrix = matrix_ops(step.prog)
        if matrix:  # the plans below gather and scatter vector entries only
            raise CompileError(f"cell {step.name!r} has matrix states (ops {', '.join(matrix)}): the sparse "
                               "state Jacobian (algorithms/restricted.py) has no plan for them; the dense "
                               "tangent step (rc.RTRL, rc.SnAp(n, sparse=False)) runs them")
        self.st = step
        ts = self.ts = tangent_step(step, params=())
        prog = ts.prog
        offs = np.cumsum([0] + list(step.states.values()))
        self.off = dict(zip(step.states, offs[:-1]))
        N = self.N = int(offs[-1])
        dirs = Directions(N, {}, {}, {})
        seed_state = {k: s for s, k in ts.state_seeds.items()}
        tangent = lambda node: [a for a in node.args if a in prog.nodes]  # noqa: E731
        sup = {}
        for key, node in prog.nodes.items():  # reachable from a seed, forward
            if node.op == "seed":
                s = seed_state[key]
                v = np.zeros((N, node.size), dtype=bool)
                v[self.off[s] + np.arange(node.size), np.arange(node.size)] = True
                sup[key] = v
            else:
                sup[key] = np.broadcast_to(STRUCTURE[node.op](node, [sup[a] for a in tangent(node)], dirs, prog),
                                           (N, node.size))
        need = {k: np.zeros_like(v) for k, v in sup.items()}
        for s, k in ts.out.items():  # wanted, then read, backward
            if k is not None:
                o, n = self.off[s], step.states[s]
                inside = (rows >= o) & (rows < o + n)
                need[k][cols[inside], rows[inside] - o] = True
        sizes = {k: prog.node(k).size for k in prog.nodes}
        self.positions, index = kept_entries(prog, sup, need, sizes)  # key -> (direction, unit) of each entry
        self._index, self._sizes = index, sizes
        self.wanted = []  # per state: (positions in its tangent's values, positions in the output)
        for s, k in ts.out.items():
            o, n = self.off[s], step.states[s]
            inside = np.nonzero((rows >= o) & (rows < o + n))[0]
            if k is not None and len(inside):
                src = index[k][cols[inside], rows[inside] - o]
                self.wanted.append((k, src[src >= 0], inside[src >= 0]))  # the others are 0
        self.count = len(rows)

    @cached_property
    def plans(self):
        """{key: [(argument, y positions, x positions, what multiplies)]}, made on first use (a
        full pattern's products pair every entry of a direction with every other: :meth:`flops`
        counts them without the tables)."""
        return {key: self._plan(key, node, self._index, self._sizes)
                for key, node in self.ts.prog.nodes.items() if node.op != "seed"}

    def _plan(self, key, node, index, sizes, count_only=False):
        """[(argument, y positions, x positions, what multiplies)] of one node (``count_only``:
        a product's terms only counted, as [(argument, range(n), None, None)])."""
        d, u = self.positions[key]
        terms = []
        if node.op == "ew":
            expr = node.attrs["expr"]
            for i, a in enumerate(node.args):
                if a not in index:
                    continue
                coef = sp.diff(expr, placeholder(i))
                xu = u if sizes[a] == node.size else np.zeros_like(u)
                xp = index[a][d, xu]
                ok = xp >= 0
                terms.append((a, np.nonzero(ok)[0], xp[ok], ("ew", coef, len(node.args), u[ok])))
        elif node.op == "matvec":
            (a,) = node.args
            ad, au = self.positions[a]
            # pairs (y entry, x entry) in the same direction: x's entries are sorted by direction
            if count_only:
                count = np.searchsorted(ad, d, side="right") - np.searchsorted(ad, d, side="left")
                terms.append((a, range(int(count.sum())), None, None))
                return terms
            yp, xp = group_pairs(ad, d)
            terms.append((a, yp, xp, ("matvec", node.attrs["terms"], u[yp], au[xp])))
        else:
            lo = node.attrs.get("lo", 0)
            starts = np.cumsum([0] + [sizes[a] for a in node.args])
            for i, a in enumerate(node.args):
                if a not in index:
                    continue
                if node.op == "slice":
                    xu = u + lo
                elif node.op == "pad":
                    xu = u - lo
                elif node.op == "concat":
                    xu = u - starts[i]
                else:  # sum: every unit of the argument into unit 0
                    ad, au = self.positions[a]
                    yp = index[key][ad, 0]
                    ok = yp >= 0
                    terms.append((a, yp[ok], np.nonzero(ok)[0], None))
                    continue
                ok = (xu >= 0) & (xu < sizes[a])
                xp = np.full(len(u), -1)
                xp[ok] = index[a][d[ok], xu[ok]]
                ok &= xp >= 0
                terms.append((a, np.nonzero(ok)[0], xp[ok], None))
        return terms

    def flops(self) -> int:
        """Per sample: a multiply and an add per (entry, term) the plans read."""
        return 2 * sum(len(yp) for key, node in self.ts.prog.nodes.items() if node.op != "seed"
                       for _, yp, _, _ in self._plan(key, node, self._index, self._sizes, count_only=True))

    def evaluate(self, env, B, dtype) -> np.ndarray:
        """The wanted entries, ``(B, len(rows))``, at the forward values ``env`` of step t."""
        vals = {}
        for key, node in self.ts.prog.nodes.items():
            n = len(self.positions[key][0])
            if node.op == "seed":
                vals[key] = np.ones((B, n), dtype=dtype)
                continue
            y = np.zeros((B, n), dtype=dtype)
            for a, yp, xp, how in self.plans[key]:
                x = vals[a][:, xp]
                if how is not None and how[0] == "ew":
                    _, coef, nargs, units = how
                    c = np.asarray(ew_function(coef, nargs)(*[env.get(k) for k in node.args]), dtype=dtype)
                    c = np.broadcast_to(c if c.ndim == 2 else np.reshape(c, (1, -1)), (B, c.shape[-1] if c.ndim else 1))
                    x = x * (c[:, units] if c.shape[1] > 1 else c[:, :1])
                elif how is not None:
                    _, mterms, yu, xu = how
                    w = sum(float(cc) * (env[(p, None)].T if tr else env[(p, None)])[yu, xu] for p, tr, cc in mterms)
                    x = x * w
                np.add.at(y, (slice(None), yp), x)
            vals[key] = y
        out = np.zeros((B, self.count), dtype=dtype)
        for k, src, dst in self.wanted:
            out[:, dst] = vals[k][:, src]
        return out
