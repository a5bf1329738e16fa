"""SnAp's planning scales with the entries it keeps, not with parameter entries × state units.

The bounds are on memory (tracemalloc), measured before and after each fix."""
import tracemalloc

import numpy as np
import pytest

import rnncomp as rc
from rnncomp.algorithms.pattern import kept_count, pattern, pattern_classes, stored_entries
from rnncomp.algorithms.snap import SnAp
from rnncomp.algorithms.sparse_plan import SparsePlan


def _peak(fn):
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_snap_prepare_makes_no_dense_pattern():
    """SnAp(1).prepare built the (P × n_s) pattern twice ("auto" counting it, the sparse executor
    taking np.nonzero of it): LSTM 16→128, 41 MB (16→256: 298 MB; 16→512 natively 4.2 GB, 21 s).
    It works on the classes of entries now: 9 MB at 128 units."""
    st = rc.cells.lstm(16, 128, 4).step
    prep, peak = _peak(lambda: SnAp(1).prepare(st))
    assert prep.nnz == 129920 and peak < 20 * 2 ** 20, peak / 2 ** 20


@pytest.mark.parametrize("make", [lambda: rc.cells.lstm(3, 5, 2), lambda: rc.cells.gru(3, 6, 2),
                                  lambda: rc.cells.elman(2, 4, 1)])
@pytest.mark.parametrize("n", [1, 2])
def test_class_form_gives_the_dense_pattern_plan(make, n):
    st = make().step
    dense = pattern(st, n)
    m, index = pattern_classes(st, n)
    col, row = np.nonzero(np.concatenate([dense[s] for s in st.states], axis=1))
    c2, r2 = stored_entries(m, index, st.states)
    assert np.array_equal(col, c2) and np.array_equal(row, r2)
    assert kept_count(m, index) == sum(int(v.sum()) for v in dense.values())
    for by_state in (False, True):
        a, b = SparsePlan(st, dense, by_state=by_state), SparsePlan(st, (m, index), by_state=by_state)
        assert all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("col", "row", "perm"))
        assert a.order == b.order
        for k in a.order:
            assert all(np.array_equal(x, y) for x, y in zip(a.entries[k], b.entries[k]))
            assert [(t.kind, t.arg) for t in a.terms[k]] == [(t.kind, t.arg) for t in b.terms[k]]
            assert all(np.array_equal(t.yp, u.yp) and np.array_equal(t.xp, u.xp) for t, u in zip(a.terms[k], b.terms[k]))
        assert all(ka == kb and np.array_equal(sa, sb) and np.array_equal(da, db)
                   for (ka, sa, da), (kb, sb, db) in zip(a.out, b.out))


def test_a_sensitivity_over_the_limit_fails_before_the_native_kernel_is_built():
    """Dense SnAp (and RTRL) checked max_bytes at the window's start, after the native kernel
    had made its tables, among them the mask as a (P × n_s) array of the dtype: a GRU 16→512
    under SnAp(1) took 3.9 GB and 10 s to say 'over the limit'.  One sample over it now fails
    first: LSTM 16→96, 79 MB peak before, under 20 MB now."""
    from rnncomp.algorithms import sequence_grad
    cell = rc.cells.lstm(16, 96, 4)
    params, x, y = cell.init_params(0), {"x": np.zeros((2, 1, 16))}, {"target": np.zeros((2, 1, 4))}

    def run():
        with pytest.raises(rc.SensitivityMemoryError, match=r"1 × \d+ × 192 values"):
            sequence_grad(SnAp(2, max_bytes=10 ** 6), cell, params, x, y, backend="native")
    _, peak = _peak(run)
    assert peak < 20 * 2 ** 20, peak / 2 ** 20
