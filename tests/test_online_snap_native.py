"""The native executor of sparse SnAp-n (rnncomp/backends/native_snap.py, issue #20).

Oracles: the NumPy sparse executor of the same recursion (other code, other summation order:
1e-10 relative to each gradient's largest entry in float64; observed ~1e-15), its masked
dense reference (``sparse=False``), and, for SnAp-n with n at least the state's dependency
depth (where the pattern is full), the rolled BPTT of the NumPy reference model (the same
sum as RTRL in another order: 1e-10 as in test_online.py).  float32: 1e-4 relative against
float64 (a few hundred float32 roundings per entry over T steps).
"""
import sys

import numpy as np
import pytest
from hypothesis import given, settings

import rnncomp as rc
from rnncomp.algorithms import SnAp, sequence_grad
from rnncomp.algorithms.compiled import prepare
from rnncomp.algorithms.pattern import pattern
from rnncomp.algorithms.sparse_plan import SparsePlan

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from fuzzgen import calls, fuzz_cells, fuzz_data  # noqa: E402
from gradcheck import random_data  # noqa: E402


def rel_err(g1, g2):
    return max(float(np.abs(g1[k] - g2[k]).max()) / max(float(np.abs(g1[k]).max()), 1e-300) for k in g1)


def oracle(cell, *args, **kw):
    return rc.compile(cell, backend="numpy").loss_and_grad(*args, **kw)


def depth(step):
    """The least n whose SnAp-n pattern is RTRL's (every entry that can ever be nonzero)."""
    full, n = pattern(step, None), 1
    while any((pattern(step, n)[s] != full[s]).any() for s in full):
        n += 1
    return n


@pytest.mark.parametrize("name", sorted(rc.cells.ZOO))
def test_native_sparse_snap_equals_numpy_on_the_zoo(name):
    cell = rc.cells.ZOO[name](2, 4, 2)
    params, x, y = random_data(cell, T=6, B=3, seed=5)
    for n in (1, 2):
        l1, g1, s1 = sequence_grad(SnAp(n, sparse=True), cell, params, x, y)
        l2, g2, s2 = sequence_grad(SnAp(n, sparse=True), cell, params, x, y, backend="native")
        assert abs(l1 - l2) <= 1e-12 * abs(l1)
        assert rel_err(g1, g2) < 1e-10
        for s in s1:
            np.testing.assert_allclose(s2[s], s1[s], rtol=1e-12, atol=1e-14)
        _, g3, _ = sequence_grad(SnAp(n, sparse=False), cell, params, x, y)
        assert rel_err(g3, g2) < 1e-10
    d = depth(cell.step)
    _, g0, _ = oracle(cell, params, x, y)
    _, gd, _ = sequence_grad(SnAp(d, sparse=True), cell, params, x, y, backend="native")
    assert rel_err(g0, gd) < 1e-10   # the full pattern: RTRL, so BPTT's gradient
    if d > 1:  # ... and one step less is truncated (the pattern did act)
        _, gb, _ = sequence_grad(SnAp(d - 1, sparse=True), cell, params, x, y, backend="native")
        assert rel_err(g0, gb) > 1e-6


@settings(max_examples=10, deadline=None)
@given(fuzz_cells(max_depth=2), calls(max_T=4, max_B=3))
def test_native_sparse_snap_on_fuzzed_cells(cell, call):
    """Masks, given and learned initial states, slices, concats, Jordan states (fuzzgen)."""
    T, B, seed, mask_kind, h0_kind, _ = call
    params, x, y, mask, h0 = fuzz_data(cell, T, B, seed, mask_kind, h0_kind)
    kw = dict(h0=h0, mask=mask)
    l1, g1, _ = sequence_grad(SnAp(1, sparse=True), cell, params, x, y, **kw)
    l2, g2, _ = sequence_grad(SnAp(1, sparse=True), cell, params, x, y, backend="native", **kw)
    _, g3, _ = sequence_grad(SnAp(1, sparse=False), cell, params, x, y, **kw)
    assert abs(l1 - l2) <= 1e-11 * max(abs(l1), 1e-300)
    assert rel_err(g1, g2) < 1e-10 and rel_err(g3, g2) < 1e-10
    _, g0, _ = oracle(cell, params, x, y, **kw)
    _, gd, _ = sequence_grad(SnAp(depth(cell.step), sparse=True), cell, params, x, y, backend="native", **kw)
    assert rel_err(g0, gd) < 1e-10


def test_snap1_keeps_one_entry_per_weight_entry_for_elman():
    """SnAp-1 on Elman: W[i, j], U[i, j], b[i] each reach h[i] alone, so every tangent node of
    the sweep holds at most one entry per such parameter entry (per sample: the size of θ)."""
    st = rc.cells.elman(3, 8, 2).step
    plan = SparsePlan(st, pattern(st, 1))
    recurrent = 8 * 3 + 8 * 8 + 8
    assert plan.nnz == recurrent
    assert max(len(plan.entries[k][0]) for k in plan.order) == recurrent
    # and the read-out's tangents (V·∂h, ∂ℓ) hold nothing: the backward step gives ∂ℓ/∂h[t-1]
    assert plan.ts.loss not in plan.order and len(plan.order) < len(plan.ts.prog.nodes)


def test_native_sparse_snap_float32():
    cell = rc.cells.lstm(3, 6, 2)
    params, x, y = random_data(cell, T=8, B=4, seed=1)
    _, g0, _ = sequence_grad(SnAp(1, sparse=True), cell, params, x, y)
    f32 = lambda d: {k: v.astype(np.float32) for k, v in d.items()}  # noqa: E731
    _, g2, _ = sequence_grad(SnAp(1, sparse=True), cell, f32(params), f32(x), f32(y), dtype="float32",
                             backend="native")
    assert all(v.dtype == np.float32 for v in g2.values())
    assert rel_err(g0, g2) < 1e-4


def test_matrix_states_are_named():
    from rnncomp import zoo_matrix
    from rnncomp.errors import CompileError
    st = zoo_matrix.fast_weights(2, 3, 2).step
    with pytest.raises((CompileError, NotImplementedError), match=r"fast_weights"):
        prepare(SnAp(1, sparse=True), st, "native")
