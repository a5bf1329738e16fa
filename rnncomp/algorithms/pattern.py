"""Which tangent entries may be nonzero: a boolean pushed through the tangent program.

One rule per tangent op (:data:`STRUCTURE`, the structure of :mod:`rnncomp.forward_mode`'s
JVP rules): an element-wise node is nonzero where any tangent argument is, a product with a
(dense) matrix wherever its argument is anywhere, ``∂P·v`` on the rows of P's entries.
SnAp's pattern (:func:`pattern`) and the restricted Jacobian (:mod:`.restricted`) read it.
"""
from __future__ import annotations

import numpy as np

from ..forward_mode import is_tangent_param, tangent_of, tangent_step
from .tangents import Directions


def _struct_matvec(node, vals, dirs, tprog):
    out = np.zeros((dirs.K, node.size), dtype=bool)
    for name, tr, _ in node.attrs["terms"]:
        if is_tangent_param(name):
            col = dirs.column.get(tangent_of(name))
            if col is not None:
                rows, cols = np.nonzero(col >= 0)
                out[col[rows, cols], cols if tr else rows] = True
        elif node.args[0] in tprog.nodes:
            out |= vals[0].any(axis=1, keepdims=True)  # a dense matrix: every unit
    return out


def _struct_concat(node, vals, dirs, tprog):
    return np.concatenate([np.broadcast_to(v, (dirs.K, v.shape[1])) for v in vals], axis=1)


def _struct_pad(node, vals, dirs, tprog):
    out = np.zeros((dirs.K, node.size), dtype=bool)
    out[:, node.attrs["lo"]:node.attrs["lo"] + vals[0].shape[1]] = vals[0]
    return out


def _struct_outer(node, vals, dirs, tprog):      # ∂a bᵀ: row i where ∂a[i] is; a ∂bᵀ: column j
    m, n = node.attrs["shape"]
    first = node.args[0] in tprog.nodes
    return np.repeat(vals[0], n, axis=1) if first else np.tile(vals[0], (1, m))


def _struct_smatvec(node, vals, dirs, tprog):    # ∂X v: the rows (columns) ∂X has; X ∂v: all of them
    m, n = node.attrs["shape"]
    if node.args[0] in tprog.nodes:
        return vals[0].reshape(dirs.K, m, n).any(axis=1 if node.attrs["transposed"] else 2)
    return np.repeat(vals[0].any(axis=1, keepdims=True), node.size, axis=1)


def _struct_mbcast(node, vals, dirs, tprog):
    m, n = node.attrs["shape"]
    return np.repeat(vals[0], n, axis=1) if node.attrs["axis"] == 1 else np.tile(vals[0], (1, m))


def _struct_mreduce(node, vals, dirs, tprog):
    m, n = node.attrs["shape"]
    return vals[0].reshape(dirs.K, m, n).any(axis=2 if node.attrs["axis"] == 1 else 1)


STRUCTURE = {  # tangent op -> the pattern of its value from its tangent arguments' patterns
    "ew": lambda node, vals, dirs, tprog: np.logical_or.reduce(
        [np.broadcast_to(v, (dirs.K, node.size)) for v in vals] or [np.zeros((dirs.K, node.size), bool)]),
    "matvec": _struct_matvec,
    "slice": lambda node, vals, dirs, tprog: vals[0][:, node.attrs["lo"]:node.attrs["lo"] + node.size],
    "pad": _struct_pad,
    "concat": _struct_concat,
    "sum": lambda node, vals, dirs, tprog: vals[0].any(axis=1, keepdims=True),
    # matrix states (#19; m·n units per sample, row-major)
    "outer": _struct_outer,
    "smatvec": _struct_smatvec,
    "mbcast": _struct_mbcast,
    "mreduce": _struct_mreduce,
}


def reach(ts, dirs, before: dict) -> dict:
    """{state: (K, n) pattern of ∂h[t]} from the patterns ``before`` of ∂h[t-1]."""
    pat = {}
    for key, node in ts.prog.nodes.items():
        if node.op == "seed":
            s = next((s for s, k in ts.state_seeds.items() if k == key), None)
            if s is not None:
                pat[key] = before[s]
            else:
                col = dirs.column.get(tangent_of(key[0]))
                v = np.zeros((dirs.K, node.size), dtype=bool)
                if col is not None:
                    v[col, np.arange(node.size)] = True
                pat[key] = v
            continue
        vals = [pat[a] for a in node.args if a in ts.prog.nodes]
        pat[key] = STRUCTURE[node.op](node, vals, dirs, ts.prog)
    return {s: (np.zeros_like(before[s]) if k is None else np.broadcast_to(pat[k], before[s].shape).copy())
            for s, k in ts.out.items()}


def entry_classes(step, ts) -> tuple[Directions, np.ndarray]:
    """Parameter entries whose seeds reach the same units, one direction each: ``(dirs, index)``,
    ``index[e]`` the direction of flat entry e.  An entry of P seeds the tangent program where
    a product reads ∂P (entry (i, j): unit i, transposed j), a vector seed or a learned initial
    state (entry k: unit k); entries that agree on all of these have one pattern, so it is
    pushed through once per class (an LSTM's W[i, :] is one class: 512 rows where the dense
    directions had 65,536 at H = 128)."""
    uses = {p: set() for p in step.params}
    for key, node in ts.prog.nodes.items():
        if node.op == "matvec":
            for name, tr, _ in node.attrs["terms"]:
                if is_tangent_param(name) and tangent_of(name) in uses:
                    uses[tangent_of(name)].add("col" if tr else "row")
        elif node.op == "seed" and key not in ts.state_seeds.values() and tangent_of(key[0]) in uses:
            uses[tangent_of(key[0])].add("flat")
    for p in step.state_init.values():
        if p is not None:
            uses[p].add("flat")
    column, index, K = {}, [], 0
    for p, shape in step.params.items():
        shape = tuple(np.atleast_1d(shape))
        grids = np.indices(shape).reshape(len(shape), -1)
        flat = np.arange(grids.shape[1])
        inverse = np.zeros(flat.size, dtype=np.int64)   # the entry's seeded units as one number
        for u in sorted(uses[p]):
            key = inverse * flat.size + (grids[0] if u == "row" else grids[-1] if u == "col" else flat)
            inverse = np.unique(key, return_inverse=True)[1].reshape(-1)   # < size: no overflow
        column[p] = (K + inverse.reshape(-1)).reshape(shape)
        index.append(column[p].reshape(-1))
        K += int(inverse.max()) + 1 if inverse.size else 0
    dense = Directions.dense(step)
    return Directions(K, column, dense.offsets, dense.sizes), np.concatenate(index or [np.zeros(0, np.int64)])


def pattern_classes(step, n: int | None = 1, ts=None, classes=None) -> tuple[dict, np.ndarray]:
    """:func:`pattern` per class of entries: ``({state: (K, n_state) bool}, index)``, the row of
    flat entry e being ``index[e]`` (``classes``: :func:`entry_classes`'s, if made already)."""
    ts = ts or tangent_step(step)
    dirs, index = classes or entry_classes(step, ts)
    m = {s: np.zeros((dirs.K, k), dtype=bool) for s, k in step.states.items()}
    for s, p in step.state_init.items():
        if p is not None:
            m[s][dirs.column[p], np.arange(step.states[s])] = True
    i = 0
    while n is None or i < n:
        new = {s: m[s] | v for s, v in reach(ts, dirs, m).items()}
        if n is None and all((new[s] == m[s]).all() for s in m):
            break
        m, i = new, i + 1
    return m, index


def ragged_ranges(start, count) -> np.ndarray:
    """The ranges ``start[i] … start[i] + count[i] - 1``, one after another, as one array."""
    count = np.asarray(count)
    return np.repeat(np.asarray(start) - (np.cumsum(count) - count), count) + np.arange(int(count.sum()))


def group_pairs(groups, keys):
    """``(y, x)``: each position i of ``keys`` paired with every position j of ``groups`` (sorted)
    where ``groups[j] == keys[i]``, in the order of i, then j (the entries of a direction, or of
    a column, that meet in a product)."""
    start = np.searchsorted(groups, keys, side="left")
    count = np.searchsorted(groups, keys, side="right") - start
    return np.repeat(np.arange(len(keys)), count), ragged_ranges(start, count)


def expand_rows(compact, classes):
    """``np.nonzero(compact[classes])`` without the dense (len(classes), n) table: the rows of a
    class-uniform boolean, spread back to the directions of each class."""
    rows, units = np.nonzero(compact)
    starts = np.searchsorted(rows, np.arange(compact.shape[0] + 1))
    count = np.diff(starts)[classes]
    return np.repeat(np.arange(len(classes)), count), units[ragged_ranges(starts[:-1][classes], count)]


def stored_entries(m, index, states):
    """``np.nonzero`` of the (P, N) pattern (the states' ``pattern`` side by side, in ``states``'
    order) from :func:`pattern_classes`'s ``(m, index)``, without making it: (entries, units).
    The dense table is P·N bytes (an LSTM with 512 units: 1.1 GB, where SnAp-1 keeps 2.2 M entries)."""
    return expand_rows(np.concatenate([m[s] for s in states], axis=1), index)


def kept_count(m, index) -> int:
    """How many entries :func:`pattern` keeps, from :func:`pattern_classes`'s ``(m, index)``."""
    per = np.bincount(index, minlength=len(next(iter(m.values()), ())))   # entries per class
    return sum(int(per @ v.sum(axis=1)) for v in m.values())


def pattern(step, n: int | None = 1, ts=None) -> dict:
    """SnAp-n's pattern ``{state: (P, n_state) bool}``: which parameter entries (rows, in the
    flat parameter order) may reach which units of each state within n steps from J[0] = 0
    (a learned initial state's own entries start on the diagonal).  ``n=None``: in any number
    of steps (the entries of RTRL's sensitivity that can ever be nonzero)."""
    m, index = pattern_classes(step, n, ts)
    return {s: v[index] for s, v in m.items()}
