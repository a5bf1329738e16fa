"""Which tangent nodes of sparse SnAp's sweep one element-wise loop computes (issue #20).

:class:`.sparse_plan.SparsePlan` writes each node as terms ``y[b, yp[i]] += c·x[b, xp[i]]``.
Most of them are plain: for SnAp-1 on Elman, GRU or LSTM nearly every term's ``yp`` is the
node's entries in order, or a contiguous range of them (the entries of one parameter's
directions), and consecutive nodes hold the same entries (∂a, ∂tanh(a), ∂h: one entry per
parameter entry).  A *run* is a list of consecutive nodes with the same entries whose terms
all write contiguous ranges: one loop over the entries computes them all, every value in a
register, each term's ``x`` read

    from a register        x is a node earlier in the run, at the same entry;
    at x0 + (e - y0)       x's positions are contiguous (no index table);
    through xp[e - y0]     otherwise (an indexed load from a node outside the run, J, or v);
    computed in place      x a *leaf* node (∂b: 1; ∂P·v: c·v[b, j] with j counting up over each
                           piece, as a weight row's directions do), not stored and read back.

The loop over entries is cut into *segments* where the set of terms that write there is
constant, so every loop body is straight-line code, and each segment into *pieces* of one unit
whose directions count up (an element-wise coefficient is a scalar over a piece).  A node is
stored only where a term outside its run reads it or the state's entries J are copied from it;
a state's new entries go straight into J where they are a range of it and nothing reads J
after; the run that loads a state's entries from J gathers δh·J as well.  A node with a term
whose ``yp`` is not contiguous (GRU's U·∂(r⊙h): all pairs of entries in one direction) is
*general*: its terms run one by one.  Sums in a run keep each node's term order.

    >>> import rnncomp as rc
    >>> from rnncomp.algorithms.pattern import pattern
    >>> from rnncomp.algorithms.sparse_plan import SparsePlan
    >>> st = rc.cells.elman(2, 4, 1).step
    >>> steps = fuse(SparsePlan(st, pattern(st, 1)))
    >>> [[k[0] for k in s.keys] for s in steps]   # ∂U·h, ∂W·x and ∂b are computed inside the run
    [['∂h%', 'U·∂h%', '∂U·h·sum%', '∂a1%', '∂h%']]
    >>> [f.inline[0] for ts in steps[0].terms for f in ts if f.inline]
    ['inject', 'inject', 'one']
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def contiguous(a):
    """a[0] if ``a`` is a[0], a[0] + 1, …; else None (an empty array is contiguous from 0)."""
    if not len(a):
        return 0
    return int(a[0]) if np.array_equal(a, np.arange(a[0], a[0] + len(a))) else None


@dataclass
class FusedTerm:
    """Term ``term`` of a run's node, writing the node's entries y0 … y0 + n - 1."""

    term: int
    y0: int
    n: int
    reg: bool          # x is a node of the run at the same entry (its register)
    x0: object = None  # x read at x0 + (e - y0); None: through the term's xp table
    inline: object = None  # x computed here: ("one", node), ("inject", node, starts, steps): _inline;
    #                        ("J", seed, j0, state or None): _inline_seeds


@dataclass(eq=False)
class Run:
    """Nodes ``keys`` (same entries, ``ny`` of them) computed by one loop (module docstring)."""

    keys: list
    ny: int
    terms: list = field(default_factory=list)   # per node: its FusedTerms
    store: list = field(default_factory=list)   # per node: written to its entries' buffer
    pieces: tuple = ()   # (per segment (p0, p1), each piece's start (and the end), each piece's unit)
    to_j: list = field(default_factory=list)    # per node: None, or d0: entry e is J's entry d0 + e
    j_count: list = field(default_factory=list)  # per node: entries 0 … count-1 go to J (None: none)
    gather: list = field(default_factory=list)  # per node: None, or the state whose δh·J it gathers
    diag: list = field(default_factory=list)    # per segment: its pieces' units count up with e (see cut)

    def segments(self):
        """(s0, s1) pieces of 0 … ny - 1 in which every term writes all entries or none."""
        cuts = sorted({0, self.ny} | {c for ts in self.terms for ft in ts for c in (ft.y0, ft.y0 + ft.n)}
                      | {c for c in self.j_count if c is not None})
        return [(a, b) for a, b in zip(cuts, cuts[1:]) if a < b]

    def describe(self):
        inl = lambda f: f.inline and (f.inline[:2], [np.asarray(a).tolist() for a in f.inline[2:]])  # noqa: E731
        return (self.keys, self.ny, [[(f.term, f.y0, f.n, f.reg, f.x0, inl(f)) for f in ts] for ts in self.terms],
                self.store, self.pieces[0], self.to_j, self.j_count, self.gather, self.diag)

    def cut(self, units, dirs):
        """Set ``pieces``: each segment cut where the unit of the entries changes or their
        direction stops counting up (an element-wise coefficient is one value over a piece, and
        a gathered gradient entry a range: for SnAp-1, a weight row's directions) -- or, a
        *diagonal* segment, where unit and direction stop counting up together (a parameter
        vector's directions: one piece where the first way gives a piece per entry), whichever
        gives fewer pieces; over a diagonal piece the unit is the piece's plus e - start."""
        starts, punits, pdirs, ranges, self.diag = [], [], [], [], []
        for s0, s1 in self.segments():
            at, diag = stretches((dirs[s0:s1],), (units[s0:s1],)), stretches((dirs[s0:s1], units[s0:s1]), ())
            self.diag.append(len(diag) < len(at))
            at = s0 + (diag if self.diag[-1] else at)[:-1]
            ranges.append((len(starts), len(starts) + len(at)))
            starts.extend(int(a) for a in at)
            punits.extend(int(units[a]) for a in at)
            pdirs.extend(int(dirs[a]) for a in at)
        self.pieces = (ranges, np.array(starts + [self.ny]), np.array(punits), np.array(pdirs))


def _same_entries(plan, a, b):
    (da, ua), (db, ub) = plan.entries[a], plan.entries[b]
    return np.array_equal(da, db) and np.array_equal(ua, ub)


def _fused_terms(plan, key, run):
    """The FusedTerms of ``key`` as a member of ``run`` (None: it cannot join it)."""
    out = []
    for i, tm in enumerate(plan.terms[key]):
        if not len(tm.yp):
            continue
        y0, x0 = contiguous(tm.yp), (None if tm.kind == "one" else contiguous(tm.xp))
        if y0 is None:
            return None
        reg = run is not None and tm.arg in run.keys
        if reg and x0 != y0:  # another entry of a node the same loop writes: not a register
            return None
        out.append(FusedTerm(i, y0, len(tm.yp), reg, x0))
    return out


def fuse(plan, gathered=()):
    """The sweep of ``plan`` as a list of :class:`Run` and keys of general nodes, in an order
    that respects every term's reads.  A node joins the last run with its entries when what
    it reads is computed by then; a node that reads no other node (a seed, ∂P·v) may move
    ahead of that run to let it.  ``gathered``: the states whose g[k] += δh[b, u]·J[b, (u, k)]
    the run that reads the state's seed may do as it loads J (see :func:`_gathers`)."""
    steps, where = [], {}
    at = lambda s: next(i for i, m in enumerate(steps) if m is s)  # noqa: E731
    tangent = lambda key: [tm.arg for tm in plan.terms[key] if tm.arg in plan.entries and len(tm.yp)]  # noqa: E731
    leaf = lambda s: not any(tangent(k) for k in (s.keys if isinstance(s, Run) else [s]))  # noqa: E731
    for key in plan.order:
        run = next((s for s in reversed(steps) if isinstance(s, Run) and _same_entries(plan, s.keys[0], key)), None)
        terms = None if run is None else _fused_terms(plan, key, run)
        if terms is not None:
            late = []
            for a in tangent(key):
                s = where[a]
                if s is not run and at(s) > at(run) and not any(s is m for m in late):
                    late.append(s)
            if all(leaf(s) for s in late):
                for s in late:   # reads nothing: computed before the run instead
                    steps.pop(at(s))
                    steps.insert(at(run), s)
                run.keys.append(key)
                run.terms.append(terms)
                where[key] = run
                continue
        terms = _fused_terms(plan, key, None)
        step = key if terms is None else Run([key], len(plan.entries[key][0]), [terms])
        steps.append(step)
        where[key] = step
    direct = _direct_outs(plan, steps, where)
    for s in steps:
        if isinstance(s, Run):
            s.to_j = [direct[k][0] if k in direct else None for k in s.keys]
            s.j_count = [direct[k][1] if k in direct else None for k in s.keys]
            d, u = plan.entries[s.keys[0]]
            s.cut(u, d)
    steps = _inline_seeds(plan, _inline(plan, steps), gathered)
    read = {k for k, _, _ in plan.out if k not in direct}   # what must be in memory: J's source, reads outside a register
    for s in steps:
        if isinstance(s, Run):
            read |= {plan.terms[k][f.term].arg for k, ts in zip(s.keys, s.terms) for f in ts
                     if not f.reg and f.inline is None}
        else:
            read |= {tm.arg for tm in plan.terms[s]}
    for s in steps:
        if isinstance(s, Run):
            s.store = [k in read for k in s.keys]
            s.gather = _gathers(plan, s, gathered)
    return steps


def _leaf(plan, s):
    """The one term of ``s`` when it is a run of one node computed from no other node: a
    parameter vector's seed ("one") or ∂P·v ("inject") written to every entry in order."""
    if not isinstance(s, Run) or len(s.keys) != 1 or len(plan.terms[s.keys[0]]) != 1:
        return None
    tm = plan.terms[s.keys[0]][0]
    return tm if tm.kind in ("one", "inject") and contiguous(tm.yp) == 0 and len(tm.yp) == s.ny else None


def _inline(plan, steps):
    """Leaf runs (:func:`_leaf`) computed inside the runs that read them instead of stored and
    read back: a "one" term is the constant 1; an "inject" term c·v[b, xp[i]] (one c) where, over
    each piece of the reading run, xp counts up by one (SnAp-1: a weight row's directions read
    v[0 … n-1]), so v is read at starts[piece] + (e - piece start), contiguous like the rest of
    the loop, or, over each piece of a segment, stays at starts[piece].  A leaf run every reader
    of which computes it is dropped."""
    leaves = {s.keys[0]: tm for s in steps for tm in [_leaf(plan, s)] if tm is not None}
    if not leaves:
        return steps
    kept = {k for k, _, _ in plan.out} & set(leaves)
    for s in steps:
        if not isinstance(s, Run):
            kept |= {tm.arg for tm in plan.terms[s]} & set(leaves)
            continue
        (ranges, starts, _, _), segs = s.pieces, s.segments()
        for key, ts in zip(s.keys, s.terms):
            for f in ts:
                arg = plan.terms[key][f.term].arg
                if arg not in leaves or key in leaves:
                    continue
                tm = leaves[arg]
                if f.reg or f.x0 is None:
                    kept.add(arg)
                elif tm.kind == "one":
                    f.inline = ("one", arg)
                else:
                    at = _piece_starts(tm.xp, f, segs, ranges, starts)
                    if at is None or len(set(tm.coef)) > 1:
                        kept.add(arg)
                    else:
                        f.inline = ("inject", arg, *at)
    return [s for s in steps if not (isinstance(s, Run) and s.keys[0] in leaves and s.keys[0] not in kept)]


def _seed(plan, s):
    """(state, j0) when ``s`` is a run of one state seed that copies the state's stored entries,
    in order, from J[j0 …] (J kept state by state)."""
    key = s.keys[0] if isinstance(s, Run) and len(s.keys) == 1 and len(s.terms[0]) == 1 else None
    state = next((st for st, k in plan.ts.state_seeds.items() if k == key), None)
    if state is None or len(plan.terms[key]) != 1 or plan.terms[key][0].arg != "J":
        return None
    f, o = s.terms[0][0], plan.state_off[state]
    stored = np.nonzero((plan.row >= o) & (plan.row < o + plan.st.states[state]))[0]
    ok = f.y0 == 0 and f.n == s.ny == len(stored) and f.x0 is not None and contiguous(stored) == f.x0
    return (state, f.x0) if ok else None


def _inline_seeds(plan, steps, gathered):
    """A state's seed run (:func:`_seed`: LSTM's ∂c[t-1]) dropped where every reader is a
    FusedTerm at contiguous positions: they read J in place, J[b, j0 + x0 + (e - y0)], and
    the one that reads every entry at the run's entry of the same direction and unit gathers
    δs·J[t-1] as it does (for a state of ``gathered``).  Not where a J entry so read is written
    first: by an earlier run, or in the same run by an earlier node or at another entry."""
    writes = [(i, j, d0, n) for i, s in enumerate(steps) if isinstance(s, Run)
              for j, (d0, n) in enumerate(zip(s.to_j, s.j_count)) if d0 is not None]
    drop = []
    for seed in steps:
        info = _seed(plan, seed)
        if info is None:
            continue
        (state, j0), key = info, seed.keys[0]
        readers = [(i, j, f) for i, s in enumerate(steps) if isinstance(s, Run) and s is not seed
                   for j, (k, ts) in enumerate(zip(s.keys, s.terms)) for f in ts if plan.terms[k][f.term].arg == key]
        general = any(key in {tm.arg for tm in plan.terms[s]} for s in steps if not isinstance(s, Run))
        if general or not readers or key in {k for k, _, _ in plan.out} or any(
                f.reg or f.x0 is None or f.inline is not None or not _unwritten(writes, i, j, f, j0) for i, j, f in readers):
            continue
        carrier = None
        if state in gathered:
            (d, u), whole = plan.entries[key], [(i, f) for i, _, f in readers if f.x0 == 0 and f.n == seed.ny]
            rd, ru = plan.entries[steps[whole[0][0]].keys[0]] if whole else (None, None)
            same = whole and (rd[whole[0][1].y0:whole[0][1].y0 + len(d)] == d).all() and \
                (ru[whole[0][1].y0:whole[0][1].y0 + len(u)] == u).all()
            if not same:
                continue
            carrier = whole[0][1]
        for _, _, f in readers:
            f.inline = ("J", key, j0, state if f is carrier else None)
        drop.append(seed)
    return [s for s in steps if not any(s is d for d in drop)]


def _unwritten(writes, i, j, f, j0):
    """Whether FusedTerm ``f`` of node j of run i reads J[j0 + f.x0 + (e - f.y0)] before any
    write (``writes``: (run, node, d0, count)) changes that entry."""
    lo, hi = j0 + f.x0, j0 + f.x0 + f.n
    for wi, wj, d0, n in writes:
        apart = hi <= d0 or d0 + n <= lo
        if wi < i and not apart or wi == i and not apart and not (lo - f.y0 == d0 and j <= wj):
            return False
    return True


def _piece_starts(xp, f, segs, ranges, starts):
    """(per piece of the reading run, xp at its first entry (0 outside the term's entries); per
    segment, 1 where xp counts up by one over each of its pieces, 0 where it stays (a diagonal
    segment of Wᵀ·x: the unit moves, x's entry does not), None where the term does not write),
    or None when some segment is neither."""
    out, steps = np.zeros(len(starts) - 1, dtype=np.int64), []
    for (s0, s1), (p0, p1) in zip(segs, ranges):
        if not (f.y0 <= s0 and s1 <= f.y0 + f.n):
            steps.append(None)
            continue
        pieces = [xp[f.x0 + starts[p] - f.y0:f.x0 + starts[p + 1] - f.y0] for p in range(p0, p1)]
        if all(contiguous(a) is not None for a in pieces):
            steps.append(1)
        elif all((a == a[0]).all() for a in pieces):
            steps.append(0)
        else:
            return None
        out[p0:p1] = [a[0] for a in pieces]
    return out, steps


def _gathers(plan, run, gathered):
    """Per node of ``run``: the state of ``gathered`` whose seed it is, where the seed reads every
    one of the state's stored entries, in order, as a range of J (each entry once: its
    direction is the parameter entry k, its unit u)."""
    out = []
    for key, ts in zip(run.keys, run.terms):
        s = next((s for s in gathered if plan.ts.state_seeds.get(s) == key), None)
        if s is not None:
            o, n = plan.state_off[s], plan.st.states[s]
            e = np.nonzero((plan.row >= o) & (plan.row < o + n))[0]
            f = ts[0] if len(ts) == 1 and plan.terms[key][ts[0].term].arg == "J" else None
            ok = f is not None and f.x0 is not None and f.n == len(e) and contiguous(e) == f.x0
            s = s if ok else None
        out.append(s)
    return out


def _direct_outs(plan, steps, where):
    """{node: (d0, count)} for the state entries a run can write into J itself (J[b, d0 + e] =
    entry e, e < count): the node's first ``count`` entries in order are a range of J (the
    others reach no stored entry: LSTM's ∂c in the output gate's directions), and nothing
    reads J after that entry is written (every read of J is in an earlier step, or in the run
    at the entry it writes or outside the range it writes)."""
    order = {id(s): i for i, s in enumerate(steps)}
    reads = []   # (step index, the run's FusedTerm or None) of every term reading J
    for s in steps:
        for k, ts in (zip(s.keys, s.terms) if isinstance(s, Run) else [(s, None)]):
            fts = ts if ts is not None else [None] * len(plan.terms[k])
            for i, tm in enumerate(plan.terms[k]):
                if tm.arg == "J" and len(tm.yp):
                    reads.append((order[id(s)], next((f for f in fts if f is not None and f.term == i), None)))
    direct = {}
    for k, src, dst in plan.out:
        s, d0 = where.get(k), contiguous(dst)
        if not isinstance(s, Run) or d0 is None or len(src) > s.ny or contiguous(src) != 0:
            continue
        n = len(src)
        if all(i < order[id(s)] or (i == order[id(s)] and f is not None and f.x0 is not None
                                    and (f.x0 - f.y0 == d0 or f.x0 + f.n <= d0 or d0 + n <= f.x0))
               for i, f in reads):
            direct[k] = (d0, n)
    return direct


def row_groups(yp, xp):
    """(ys, lo, xs) when the pairs (yp, xp) come grouped by y entry, each group's x positions a
    contiguous run: group r is pairs lo[r] … lo[r+1] - 1, writing ys[r], reading from xs[r]
    (a ``mat`` term: every entry of a direction against the entries of x in it); else None.

    >>> row_groups(np.array([0, 0, 2]), np.array([5, 6, 1]))
    (array([0, 2]), array([0, 2, 3]), array([5, 1]))
    """
    if not len(yp) or (np.diff(yp) < 0).any():
        return None
    ys, lo = np.unique(yp, return_index=True)
    lo = np.append(lo, len(yp))
    xs = xp[lo[:-1]]
    if not np.array_equal(xp, np.repeat(xs - lo[:-1], np.diff(lo)) + np.arange(len(yp))):
        return None
    return ys, lo, xs


def stretches(up, same):
    """Starts (and the end) of the longest stretches of 0 … n-1 over which every array of ``up``
    counts up by one and every array of ``same`` stays equal.

    >>> stretches((np.array([0, 1, 2, 5, 6]),), (np.array([3, 3, 4, 4, 4]),)).tolist()
    [0, 2, 3, 5]
    """
    n = len((up + same)[0])
    new = np.zeros(n, dtype=bool)
    new[:1] = True
    for a in up:
        new[1:] |= np.diff(a) != 1
    for a in same:
        new[1:] |= np.diff(a) != 0
    return np.append(np.nonzero(new)[0], n)
