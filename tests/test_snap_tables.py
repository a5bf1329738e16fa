"""The index tables of the native sparse SnAp executor (issue #20: they took ~47× the carry of
one sample, an LSTM with 1,024 units peaked at 7.6 GB).

Oracles: the count of SnAp-1's stored entries from the LSTM's structure (each gate's W, U and b
row reaches its unit's c and h, the output gate's its h only: (3·2 + 1)·(D + H + 1)·H, as
``test_online.py`` counts them), and the NumPy executor's gradient (1e-10 relative, as in
``test_online_snap_native.py``) for the int64 tables a plan too big for int32 would get.
"""
import sys

import numpy as np
import pytest

import rnncomp as rc
from rnncomp.algorithms import SnAp, sequence_grad
from rnncomp.algorithms.compiled import prepare
from rnncomp.algorithms.pattern import pattern
from rnncomp.algorithms.sparse_plan import SparsePlan

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from gradcheck import random_data  # noqa: E402


def test_lstm_snap1_tables_hold_about_one_int32_per_stored_entry():
    """Fused and folded, SnAp-1 of an LSTM reads one table per stored entry (J's order: state by
    state, against the NumPy executor's) and a few per piece of a weight row (a unit's
    directions: per gate, W, U and b rows for each of H units): at most 128 int32 per unit.  Before, every term's positions
    were int64 tables, read or not: 47× the carry (1.0 MiB of tables per 21 KiB here)."""
    D, H = 8, 32
    cell = rc.cells.lstm(D, H, 2)
    nnz = (3 * 2 + 1) * (D + H + 1) * H
    kernel = prepare(SnAp(1, sparse=True), cell.step, "native", "float64").kernel
    tables = list(kernel.plan.tables.values())
    per_unit = 128   # its weight rows' pieces (start, unit, direction) and where each reads x
    assert sum(t.nbytes for t in tables) <= 4 * (nnz + per_unit * H), sum(t.nbytes for t in tables) / (8 * nnz)
    assert all(t.dtype == np.int32 for t in tables if t.dtype.kind in "iu")
    assert kernel.nnz == nnz
    # the buffers per sample: J in the plan's order, and per unit the coefficients and the step's
    # values; no tangent node's entries (they live in registers: none is stored).  Before, a
    # buffer per tangent node, about 25 × nnz per sample
    per_sample = sum(u for r, u in kernel.plan.sizes.values() if r == "B")
    assert per_sample <= nnz + per_unit * H, per_sample / nnz
    assert kernel.sp is None   # the plan's per-entry arrays are dropped once the code is built


def test_the_plan_holds_int32_positions():
    st = rc.cells.gru(3, 8, 2).step
    plan = SparsePlan(st, pattern(st, 1), by_state=True)
    arrays = [a for d, u in plan.entries.values() for a in (d, u)] + [plan.col, plan.row, plan.perm]
    arrays += [a for ts in plan.terms.values() for tm in ts for a in (tm.yp, tm.xp, tm.units) if a is not None]
    assert arrays and all(a.dtype == np.int32 for a in arrays)


@pytest.mark.parametrize("name, by_state", [("gru", True), ("lstm", False), ("elman", True)])
def test_int64_tables_equal_numpy(name, by_state, monkeypatch):
    """Tables whose values pass 2**31 stay int64, and the code loads them as such: forced here
    (every table int64) on a GRU (general nodes: yp, xp, units and row tables), an LSTM in the
    NumPy executor's order (J's order and the gather's tables) and Elman."""
    from rnncomp.backends import native_snap
    from rnncomp.backends.native_snap import SparseKernel
    monkeypatch.setattr(native_snap, "narrow", lambda a: np.asarray(a, dtype=np.int64))
    cell = rc.cells.ZOO[name](3, 6, 2)
    params, x, y = random_data(cell, T=5, B=3, seed=7)
    prep = prepare(SnAp(1, sparse=True), cell.step, "native", "float64")
    prep.kernel = SparseKernel(cell.step, SparsePlan(cell.step, pattern(cell.step, 1), by_state=by_state), "float64")
    ints = [t for t in prep.kernel.plan.tables.values() if t.dtype.kind in "iu"]
    assert ints and all(t.dtype == np.int64 for t in ints)
    _, g1, _ = sequence_grad(SnAp(1, sparse=True), cell, params, x, y)
    _, g2, _ = sequence_grad(SnAp(1, sparse=True), cell, params, x, y, prepared=prep)
    for k in g1:
        assert np.abs(g1[k] - g2[k]).max() <= 1e-10 * max(np.abs(g1[k]).max(), 1e-300), (name, k)
