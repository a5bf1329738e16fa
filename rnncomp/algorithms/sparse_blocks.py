"""Dense blocks of sparse SnAp's ``mat`` terms: products over directions, as GEMMs (issue #20).

A ``mat`` term of :class:`.sparse_plan.SparsePlan` is y[b, yp[i]] += Σ c·P[yu, xu]·x[b, xp[i]]
over pairs of entries in the same direction.  Where SnAp keeps every unit of a direction in
both y and x (GRU under SnAp-1: the reset gate's weights reach every unit in one step, so
Un·∂(r⊙h) pairs all 32 × 32 entries of each of those directions), the pairs of a direction
are a whole matrix-vector product, and a run of such directions whose entries lie one after
another is one product

    y[b, y0 + j·m + u] += Σ_v P[u, v] · x[b, x0 + j·n + v]     j = 0 … count-1

a GEMM of ``count`` rows against P, for each sample.  :func:`dense_blocks` finds those runs
and returns the term's other pairs as a term of their own (the per-pair path).  Below, the
reset gate's 6 + 9 + 3 directions (Wr, Ur, br) are one block; each of the 36 others (z and n
gates) pairs one unit of y with the 3 of x.

    >>> import rnncomp as rc
    >>> from rnncomp.algorithms.pattern import pattern
    >>> from rnncomp.algorithms.sparse_plan import SparsePlan
    >>> st = rc.cells.gru(2, 3, 1).step
    >>> plan = SparsePlan(st, pattern(st, 1))
    >>> key = next(k for k in plan.order if k[0] == "Un·∂a4%")
    >>> blocks, rest = dense_blocks(plan, key, plan.terms[key][0])
    >>> [count for _, _, count in blocks], len(rest.yp)
    ([18], 108)
"""
from __future__ import annotations

import numpy as np

from .sparse_plan import Term


def _runs(d, u, size):
    """{direction: first position} of the directions whose entries are units 0 … size-1 in order."""
    starts = np.flatnonzero(np.r_[True, d[1:] != d[:-1]])
    ends = np.r_[starts[1:], len(d)]
    full = {}
    for a, b in zip(starts, ends):
        if b - a == size and (u[a:b] == np.arange(size)).all():
            full[int(d[a])] = int(a)
    return full


def dense_blocks(plan, key, term):
    """``([(y0, x0, count)], rest)`` for ``mat`` term ``term`` of node ``key``: the runs of
    directions (see the module docstring) and a Term of the pairs outside them.  Only a term of
    one matrix with coefficient 1 has blocks (the GEMM reads P itself)."""
    yu, xu, terms = term.coef
    if term.kind != "mat" or len(terms) != 1 or terms[0][2] != 1:
        return [], term
    nodes = plan.ts.prog.nodes
    m, n = nodes[key].size, nodes[term.arg].size
    (d, u), (ad, au) = plan.entries[key], plan.entries[term.arg]
    fy, fx = _runs(d, u, m), _runs(ad, au, n)
    dirs = sorted(set(fy) & set(fx))
    blocks, j = [], 0
    while j < len(dirs):
        k = j
        while (k + 1 < len(dirs) and fy[dirs[k + 1]] == fy[dirs[k]] + m and fx[dirs[k + 1]] == fx[dirs[k]] + n):
            k += 1
        blocks.append((fy[dirs[j]], fx[dirs[j]], k - j + 1))
        j = k + 1
    inside = np.isin(d[term.yp], dirs)
    if not inside.any():
        return [], term
    keep = ~inside
    rest = Term("mat", term.arg, term.yp[keep], term.xp[keep], coef=(yu[keep], xu[keep], terms))
    return blocks, rest
