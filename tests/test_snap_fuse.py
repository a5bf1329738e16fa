"""The fused sweep of native sparse SnAp (rnncomp/algorithms/sparse_fuse.py, issue #20).

Which path each node takes is checked against the cell's structure (what SnAp-1 keeps, worked
out by hand below), and every path against the NumPy sparse executor (other code: 1e-10
relative to each gradient's largest entry, float64) on Elman (one run, no index table), LSTM
(a run that reads the carried entries through an index table, two states), GRU (general nodes:
U·∂(r⊙h) pairs every entry of a direction with every other) and a cell with two coupled states
of different sizes.
"""
import sys

import numpy as np
import pytest
import sympy as sp

import rnncomp as rc
from rnncomp.algorithms import SnAp, sequence_grad
from rnncomp.algorithms.pattern import pattern
from rnncomp.algorithms.sparse_fuse import Run, contiguous, fuse, row_groups, stretches
from rnncomp.algorithms.sparse_plan import SparsePlan

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from gradcheck import random_data  # noqa: E402


def coupled():
    """c reads h[t-1] through a matrix, h reads the new c through another: two coupled states."""
    cell = rc.Cell("coupled")
    x, h, c = cell.input("x", 3), cell.state("h", 5), cell.state("c", 4)
    K, d = cell.param("K", (4, 5)), cell.param("d", 4)
    W, U, A, b = cell.param("W", (5, 3)), cell.param("U", (5, 5)), cell.param("A", (5, 4)), cell.param("b", 5)
    cell.update(c, sp.tanh(K @ h + d * c))
    cell.update(h, sp.tanh(W @ x + U @ h + A @ c.new + b))
    y = cell.output("y", cell.param("V", (2, 5)) @ h.new)
    cell.loss(rc.softmax_xent(y, cell.target("t", 2)))
    return cell


def two_matrices():
    """One product of two matrices, one scaled (∂A·h's entries carry the coefficient 2), a
    transposed one (Wᵀ·x: a unit's directions step by rows, pieces of one entry) and a bias
    that multiplies (∂b meets the coefficient tanh(…))."""
    cell = rc.Cell("two_matrices")
    x, h = cell.input("x", 4), cell.state("h", 4)
    W, U, A, b = cell.param("W", (4, 4)), cell.param("U", (4, 4)), cell.param("A", (4, 4)), cell.param("b", 4)
    cell.update(h, sp.tanh(W.T @ x + (U + 2 * A) @ h) * b)
    cell.loss(rc.vsum((h.new - cell.target("t", 4)) ** 2))
    return cell


CELLS = {"elman": lambda: rc.cells.elman(3, 5, 2), "elman wide": lambda: rc.cells.elman(6, 8, 2),
         "lstm": lambda: rc.cells.lstm(3, 5, 2),
         "gru": lambda: rc.cells.gru(3, 5, 2), "coupled": coupled, "two matrices": two_matrices}


def steps_of(cell, n=1):
    plan = SparsePlan(cell.step, pattern(cell.step, n))
    return plan, fuse(plan)


def test_contiguous():
    assert contiguous(np.array([4, 5, 6])) == 4 and contiguous(np.array([], dtype=int)) == 0
    assert contiguous(np.array([4, 6])) is None and contiguous(np.array([1, 0])) is None


def test_elman_is_one_run_without_index_tables():
    """Elman under SnAp-1: ∂h[t-1], U·∂h (U's diagonal), ∂U·h + …, ∂a, ∂h[t] hold the same
    entries (one per W, U, b entry), so one loop computes them, each reading the one before
    from a register or a range; nothing is stored but ∂h[t], straight into J (its entries
    are J's, in order: SnAp-1 keeps one unit per parameter entry)."""
    plan, steps = steps_of(CELLS["elman"]())
    (run,) = [s for s in steps if isinstance(s, Run) and len(s.keys) > 1]
    assert [k[0] for k in run.keys] == ["∂h%", "U·∂h%", "∂U·h·sum%", "∂a1%", "∂h%"]
    assert run.ny == 5 * 3 + 5 * 5 + 5
    assert all(f.reg or f.x0 is not None for ts in run.terms for f in ts)
    assert run.store == [False] * 5 and run.to_j == [None] * 4 + [0]
    assert not [s for s in steps if not isinstance(s, Run)]   # no general node


def test_leaf_nodes_are_computed_inside_the_run_that_reads_them():
    """∂P·v and a parameter vector's seed read no other node: the run that reads them computes
    them in place (v read at a per-piece start, contiguous over the piece) and no run of their
    own is left.  The numbers: test_fused_sweep_equals_numpy."""
    for name, names in (("elman", {"∂U·h%", "∂W·x%", "∂b%"}), ("two matrices", {"∂U·h%", "∂A·h%", "∂W·x%", "∂b%"})):
        plan, steps = steps_of(CELLS[name]())
        leaves = {k for k in plan.order if len(plan.terms[k]) == 1 and plan.terms[k][0].kind in ("inject", "one")}
        inlined = {f.inline[1] for s in steps if isinstance(s, Run) for ts in s.terms for f in ts if f.inline}
        assert inlined == leaves and {k[0] for k in leaves} == names, (name, leaves)
        assert not any(isinstance(s, Run) and s.keys[0] in inlined for s in steps)
        coefs = {k[0]: set(plan.terms[k][0].coef) for k in leaves if plan.terms[k][0].kind == "inject"}
        assert coefs.get("∂A·h%", {2.0}) == {2.0} and coefs["∂U·h%"] == {1.0}   # 2A: a scaled inject
        for s in steps:
            for ts in s.terms if isinstance(s, Run) else ():
                for f in ts:
                    if f.inline and f.inline[0] == "inject":   # v's start per piece, read in order or held
                        tm, (_, _, at, step) = plan.terms[f.inline[1]][0], f.inline
                        (ranges, starts, _, _), segs = s.pieces, s.segments()
                        for (s0, s1), (p0, p1), st in zip(segs, ranges, step):
                            assert (st is None) == (not (f.y0 <= s0 and s1 <= f.y0 + f.n))
                            for p in range(p0, p1) if st is not None else ():
                                e = np.arange(starts[p], starts[p + 1])
                                assert (tm.xp[f.x0 + e - f.y0] == at[p] + st * (e - starts[p])).all()


def test_lstm_run_reads_the_carried_entries_through_a_table():
    """LSTM, J in the NumPy executor's order: J stores h's and c's entries of one parameter entry next to each other, so ∂h[t-1]
    reads J at every other position (an index table), and ∂c[t] reads ∂c[t-1] (other entries:
    W, U, b of the cell gate ... reach c only through the gates) from memory."""
    plan, steps = steps_of(CELLS["lstm"]())
    big = max((s for s in steps if isinstance(s, Run)), key=lambda s: len(s.keys))
    first = big.terms[0][0]
    assert big.keys[0] == plan.ts.state_seeds["h"] and first.x0 is None and not first.reg
    read_c = [f for k, ts in zip(big.keys, big.terms) for f in ts
              if plan.terms[k][f.term].arg == plan.ts.state_seeds["c"]]
    assert read_c and all(not f.reg and f.x0 is not None for f in read_c)
    assert plan.ts.state_seeds["c"] not in big.keys
    assert all(d is None for s in steps if isinstance(s, Run) for d in s.to_j)   # J's h entries are not a range


def test_lstm_by_state_reads_and_writes_j_as_ranges():
    """The same LSTM plan with J's entries state by state (the native executor's order): ∂h[t-1]
    reads J's first range, ∂c[t-1] the next, and ∂h[t] and ∂c[t] are written straight into J."""
    st = CELLS["lstm"]().step
    mask = pattern(st, 1)
    plan, numpy_order = SparsePlan(st, mask, by_state=True), SparsePlan(st, mask)
    n_h = int(mask["h"].sum())
    assert (plan.row[:n_h] < 5).all() and (plan.row[n_h:] >= 5).all()
    assert (plan.col == numpy_order.col[plan.perm]).all() and (plan.row == numpy_order.row[plan.perm]).all()
    steps = fuse(plan)
    big = max((s for s in steps if isinstance(s, Run)), key=lambda s: len(s.keys))
    assert big.terms[0][0].x0 == 0 and big.to_j[-1] == 0 and big.keys[-1] == plan.ts.out["h"]
    # ∂c[t] too, in the same loop that reads J's h range: its entries in the directions that
    # reach c (not the output gate's) are J's c range, in order
    at = big.keys.index(plan.ts.out["c"])
    n_c = int(mask["c"].sum())
    assert (big.to_j[at], big.j_count[at]) == (n_h, n_c) and n_c < big.ny
    assert n_c in {c for seg in big.segments() for c in seg}
    # ∂c[t-1] is no run of its own: ∂c[t] reads it in J's c range at the entry it writes there
    # (read first), and gathers δc·J[t-1] as it does (fuse's gathered states)
    assert not [s for s in steps if isinstance(s, Run) and s.keys == [plan.ts.state_seeds["c"]]]
    (read_c,) = [f for f in big.terms[at] if f.inline and f.inline[0] == "J"]
    assert read_c.inline[1:] == (plan.ts.state_seeds["c"], n_h, None) and read_c.x0 - read_c.y0 == 0
    gathering = fuse(plan, ["h", "c"])
    big = max((s for s in gathering if isinstance(s, Run)), key=lambda s: len(s.keys))
    assert [f.inline[3] for f in big.terms[at] if f.inline and f.inline[0] == "J"] == ["c"]


def test_a_seed_is_read_in_j_only_before_j_is_written_there():
    """sparse_fuse._unwritten: a FusedTerm reading J[j0 + x0 + (e - y0)] (here J[10 … 19] at
    entries 0 … 9 of node 2 of run 1) against writes (run, node, d0, count) of J[d0 + e]."""
    from rnncomp.algorithms.sparse_fuse import FusedTerm, _unwritten
    f = FusedTerm(0, y0=0, n=10, reg=False, x0=0)
    assert _unwritten([(1, 3, 10, 10), (0, 0, 0, 10), (2, 0, 10, 10)], 1, 2, f, 10)  # later node, same entry; apart; later run
    assert not _unwritten([(0, 5, 15, 10)], 1, 2, f, 10)         # an earlier run wrote J[15 …]
    assert not _unwritten([(1, 1, 10, 10)], 1, 2, f, 10)         # an earlier node of the run did
    assert not _unwritten([(1, 3, 11, 10)], 1, 2, f, 10)         # the same run, another entry
    assert _unwritten([(1, 2, 10, 10)], 1, 2, f, 10)             # the node itself: read, then written


def test_gru_has_general_nodes():
    """GRU: U_n·∂(r⊙h) pairs each entry with every entry of its direction: a scattered yp."""
    plan, steps = steps_of(CELLS["gru"]())
    general = [s for s in steps if not isinstance(s, Run)]
    assert general and all(any(contiguous(tm.yp) is None for tm in plan.terms[k]) for k in general)
    assert any(k[0].startswith("Un·∂") for k in general)
    mats = [tm for k in general for tm in plan.terms[k] if tm.kind == "mat"]
    assert mats and all(row_groups(tm.yp, tm.xp) is not None for tm in mats)   # dot products per entry


def test_gru_dense_blocks_are_whole_directions():
    """sparse_blocks: GRU's general mat terms split into runs of directions whose y and x
    entries are every unit in order, one after another (checked entry by entry here), and the
    other pairs; together they are the term's pairs, each once."""
    from rnncomp.algorithms.sparse_blocks import dense_blocks
    plan, steps = steps_of(CELLS["gru"]())
    found = 0
    for key in (s for s in steps if not isinstance(s, Run)):
        for tm in plan.terms[key]:
            if tm.kind != "mat":
                continue
            blocks, rest = dense_blocks(plan, key, tm)
            (d, u), (ad, au) = plan.entries[key], plan.entries[tm.arg]
            m, n = plan.ts.prog.nodes[key].size, plan.ts.prog.nodes[tm.arg].size
            pairs = set()
            for y0, x0, count in blocks:
                for j in range(count):
                    ys, xs = np.arange(y0 + j * m, y0 + (j + 1) * m), np.arange(x0 + j * n, x0 + (j + 1) * n)
                    assert (u[ys] == np.arange(m)).all() and (au[xs] == np.arange(n)).all()
                    assert (d[ys] == d[ys[0]]).all() and (ad[xs] == d[ys[0]]).all()
                    pairs |= {(a, c) for a in ys.tolist() for c in xs.tolist()}
            found += len(blocks)
            assert pairs.isdisjoint(zip(rest.yp.tolist(), rest.xp.tolist()))
            assert pairs | set(zip(rest.yp.tolist(), rest.xp.tolist())) == set(zip(tm.yp.tolist(), tm.xp.tolist()))
    assert found


def test_stretches():
    up, same = np.array([3, 4, 5, 6, 9, 10]), np.array([1, 1, 2, 2, 2, 2])
    assert stretches((up,), (same,)).tolist() == [0, 2, 4, 6]
    assert stretches((up,), ()).tolist() == [0, 4, 6] and stretches((), (same,)).tolist() == [0, 2, 6]


def test_row_groups():
    ys, lo, xs = row_groups(np.array([1, 1, 1, 4, 4]), np.array([7, 8, 9, 0, 1]))
    assert ys.tolist() == [1, 4] and lo.tolist() == [0, 3, 5] and xs.tolist() == [7, 0]
    assert row_groups(np.array([1, 1]), np.array([7, 9])) is None      # x not contiguous in a group
    assert row_groups(np.array([2, 1]), np.array([0, 1])) is None      # y not grouped


@pytest.mark.parametrize("name", sorted(CELLS))
def test_runs_are_cut_into_pieces_of_one_unit_and_counting_directions(name):
    """Each segment into the fewer pieces of the two ways: one unit with directions counting up,
    or (diagonal) unit and direction counting up together (a parameter vector's directions)."""
    plan, steps = steps_of(CELLS[name]())
    for run in (s for s in steps if isinstance(s, Run)):
        dirs, units = plan.entries[run.keys[0]]
        ranges, starts, punits, pdirs = run.pieces
        assert starts[0] == 0 and starts[-1] == run.ny and (np.diff(starts) > 0).all()
        for (s0, s1), (p0, p1), diag in zip(run.segments(), ranges, run.diag):
            assert starts[p0] == s0 and starts[p1] == s1
            for p in range(p0, p1):   # one unit (a diagonal segment: the unit counts up with the direction)
                step = np.arange(starts[p + 1] - starts[p])
                assert (units[starts[p]:starts[p + 1]] == punits[p] + (step if diag else 0)).all()
                assert (dirs[starts[p]:starts[p + 1]] == pdirs[p] + step).all()
            one_unit = len(stretches((dirs[s0:s1],), (units[s0:s1],))) - 1
            assert p1 - p0 == min(one_unit, len(stretches((dirs[s0:s1], units[s0:s1]), ())) - 1)
        for ts in run.terms:   # a term writes whole segments
            for f in ts:
                assert f.y0 in starts and f.y0 + f.n in starts


def test_gather_joins_the_run_that_reads_j():
    """With J state by state, each state's seed reads all its stored entries as a range of J:
    the run that reads them gathers δh·J too (or, LSTM's c, the term that reads the seed in J
    itself).  In the NumPy executor's order (LSTM: h and c entries alternate) the gather stays
    a loop of its own over index tables."""
    from rnncomp.backends.native_snap import SparseKernel
    for name, by_state, fused in (("elman wide", True, {"h"}), ("lstm", True, {"h", "c"}), ("lstm", False, set()),
                                  ("coupled", True, {"h", "c"})):
        st = CELLS[name]().step
        kernel = SparseKernel(st, SparsePlan(st, pattern(st, 1), by_state=by_state), "float64")
        runs = [r for r in kernel.steps if isinstance(r, Run)]
        in_place = {f.inline[3] for r in runs for ts in r.terms for f in ts if f.inline and f.inline[0] == "J"}
        assert {s for r in runs for s in r.gather if s} | (in_place - {None}) == fused, name
        assert len(kernel.gather) == len(st.states) - len(fused)


@pytest.mark.parametrize("name", ["lstm", "coupled"])
def test_unfused_gather_equals_numpy(name):
    """The gather on its own (J in the NumPy executor's order), against the NumPy executor."""
    from rnncomp.algorithms.compiled import prepare
    from rnncomp.backends.native_snap import SparseKernel
    cell = CELLS[name]()
    params, x, y = random_data(cell, T=5, B=3, seed=4)
    prep = prepare(SnAp(1, sparse=True), cell.step, "native", "float64")
    prep.kernel = SparseKernel(cell.step, SparsePlan(cell.step, pattern(cell.step, 1)), "float64")
    assert len(prep.kernel.gather) == 2
    _, g1, _ = sequence_grad(SnAp(1, sparse=True), cell, params, x, y)
    _, g2, _ = sequence_grad(SnAp(1, sparse=True), cell, params, x, y, prepared=prep)
    for k in g1:
        assert np.abs(g1[k] - g2[k]).max() <= 1e-10 * max(np.abs(g1[k]).max(), 1e-300), (name, k)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_fused_sweep_equals_numpy(name):
    cell = CELLS[name]()
    params, x, y = random_data(cell, T=5, B=3, seed=2)
    for n in (1, 2):
        l1, g1, s1 = sequence_grad(SnAp(n, sparse=True), cell, params, x, y)
        l2, g2, s2 = sequence_grad(SnAp(n, sparse=True), cell, params, x, y, backend="native")
        assert abs(l1 - l2) <= 1e-12 * abs(l1)
        for k in g1:
            assert np.abs(g1[k] - g2[k]).max() <= 1e-10 * max(np.abs(g1[k]).max(), 1e-300), (name, n, k)
        for s in s1:
            np.testing.assert_allclose(s2[s], s1[s], rtol=1e-12, atol=1e-14)


def test_lstm_run_folds_to_the_new_entries_of_each_direction():
    """SnAp-1 on an LSTM keeps (c_u, h_u) per entry of a weight row u (worked out by hand:
    c' = f⊙c + i⊙g̃, h' = o⊙tanh(c'); a gate's pre-activation reaches c_u and h_u only).  Folded
    per unit, every segment (a gate's W, U or b) computes only the seed it gathers and the new
    ∂c, ∂h: each a sum over J's ∂c[t-1], ∂h[t-1] and the weight's input (h, x or 1), three
    things at most; the output gate's directions reach no c entry, so ∂c is not written there."""
    from rnncomp.algorithms.sparse_fold import fold
    st = rc.cells.lstm(3, 5, 2).step
    plan = SparsePlan(st, pattern(st, 1), by_state=True)
    (run,) = [r for r in fuse(plan, list(st.states)) if isinstance(r, Run) and len(r.keys) > 1]
    f = fold(plan, run)
    assert len(f.segments) == 12 and all(s is not None for s in f.segments)   # 4 gates × (W, U, b)
    names = [k[0] for k in run.keys]
    seed, dc, dh = names.index("∂h%"), names.index("∂c%"), len(names) - 1 - names[::-1].index("∂h%")
    for s in f.segments:
        written = dict(s)
        assert set(written) <= {seed, dc, dh} and dh in written
        assert written[seed] == [((seed, 0), 1.0)]          # the gathered seed: J's ∂h[t-1] itself
        assert all(len(combo) <= 3 for combo in written.values())
    assert sum(dc in dict(s) for s in f.segments) == 9      # i, f, g gates' W, U, b


@pytest.mark.parametrize("folded", [True, False])
@pytest.mark.parametrize("name", sorted(CELLS))
def test_folded_and_unfolded_runs_equal_numpy(name, folded, monkeypatch):
    """Both ways of emitting a run (the chain rule folded per unit, or every node per entry:
    ``SparseKernel.fold``) against the NumPy executor, 1e-10 as above."""
    from rnncomp.algorithms.compiled import prepare
    from rnncomp.backends.native_snap import SparseKernel
    monkeypatch.setattr(SparseKernel, "fold", folded)
    cell = CELLS[name]()
    params, x, y = random_data(cell, T=5, B=3, seed=6)
    prep = prepare(SnAp(1, sparse=True), cell.step, "native", "float64")
    assert bool(prep.kernel.folds) == folded
    _, g1, _ = sequence_grad(SnAp(1, sparse=True), cell, params, x, y)
    _, g2, _ = sequence_grad(SnAp(1, sparse=True), cell, params, x, y, prepared=prep)
    for k in g1:
        assert np.abs(g1[k] - g2[k]).max() <= 1e-10 * max(np.abs(g1[k]).max(), 1e-300), (name, folded, k)


def _ladder(L):
    """z ← a·b + a + b/2 with a = tanh z, b = sin z, L times: 2^L paths through the chain."""
    cell = rc.Cell(f"ladder{L}")
    x, h = cell.input("x", 3), cell.state("h", 4)
    W, U = cell.param("W", (4, 3)), cell.param("U", (4, 4))
    z = cell.define("z0", W @ x + U @ h)
    for i in range(L):
        a, b = cell.define(f"a{i}", sp.tanh(z)), cell.define(f"b{i}", sp.sin(z))
        z = cell.define(f"z{i + 1}", a * b + a + b / 2)
    cell.update(h, sp.tanh(z))
    cell.loss(rc.vsum((h.new - cell.target("t", 4)) ** 2))
    return cell


def _dag_size(exprs):
    seen, todo = set(), list(exprs)
    while todo:
        e = todo.pop()
        if e not in seen:
            seen.add(e)
            todo.extend(e.args)
    return len(seen)


def test_fold_grows_linearly_with_the_chain():
    """The folded coefficients are kept factored, shared sub-expressions and all: expanded
    into a sum over paths they had 2^L products (a probe's ladder: fold() took 22 s at L = 12,
    the prepared kernel minutes).  Their distinct sub-expressions grow with L, not 2^L, and the
    deep ladder's gradient equals the NumPy executor's."""
    from rnncomp.algorithms.sparse_fold import fold
    sizes = {}
    for L in (6, 12):
        st = _ladder(L).step
        plan = SparsePlan(st, pattern(st, 1), by_state=True)
        runs = [r for r in fuse(plan, list(st.states)) if isinstance(r, Run)]
        sizes[L] = _dag_size([c for r in runs for c in fold(plan, r).coefs])
    assert sizes[12] <= 2.5 * sizes[6], sizes
    cell = _ladder(12)
    params, x, y = random_data(cell, T=4, B=2, seed=1)
    _, g1, _ = sequence_grad(SnAp(1, sparse=True), cell, params, x, y)
    _, g2, _ = sequence_grad(SnAp(1, sparse=True), cell, params, x, y, backend="native")
    for k in g1:
        assert np.abs(g1[k] - g2[k]).max() <= 1e-10 * max(np.abs(g1[k]).max(), 1e-300), k
