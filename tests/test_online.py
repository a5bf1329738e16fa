"""Forward mode and the online gradient algorithms (issue #20): RTRL, SnAp, UORO, fit_online.

Oracles: the rolled BPTT of the NumPy reference (``rc.compile(cell, backend="numpy")``), a
central finite difference of one step (for the tangent step), and for UORO the RTRL gradient.
Tolerances (float64): RTRL and BPTT compute the same sum in another order, so 1e-10 relative
to each gradient's largest entry (observed ~1e-15 on the zoo, ~1e-13 on fuzzed cells);
the one-step finite difference at eps 1e-6 has error ~1e-10, checked at 1e-7.
"""
import re
import sys

import numpy as np
import pytest
from hypothesis import given, settings

import rnncomp as rc
from rnncomp.autodiff import RULES
from rnncomp.errors import DifferentiationError
from rnncomp.forward_mode import JVP_RULES, check_rule_coverage, jvp, missing_jvp_rules, tangent_step
from rnncomp.ir import Node, Program

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from fuzzgen import calls, fuzz_cells, fuzz_data  # noqa: E402
from gradcheck import random_data  # noqa: E402

from rnncomp.algorithms import RTRL, SensitivityMemoryError, sequence_grad  # noqa: E402
from rnncomp.algorithms.tangents import Directions, run_tangents  # noqa: E402
from rnncomp.backends.numpy import run_program  # noqa: E402
from rnncomp.train.tasks import delayed_copy  # noqa: E402


def rel_err(g1, g2):
    return max(float(np.abs(g1[k] - g2[k]).max()) / max(float(np.abs(g1[k]).max()), 1e-300) for k in g1)


def oracle(cell, *args, **kw):
    return rc.compile(cell, backend="numpy").loss_and_grad(*args, **kw)


# ----------------------------------------------------------------------------- forward mode
def test_jvp_and_vjp_tables_cover_the_same_ops():
    missing = missing_jvp_rules()
    assert not missing, (f"op(s) {missing} have a VJP rule in rnncomp.autodiff.RULES but no JVP rule: "
                         "add one to rnncomp.forward_mode.JVP_RULES")
    assert set(JVP_RULES) == set(RULES)
    check_rule_coverage()


def test_tangent_executors_cover_the_ops_jvp_rules_emit():
    """A JVP rule that emits a new op needs it in each executor of tangent programs."""
    from rnncomp.algorithms.pattern import STRUCTURE
    from rnncomp.algorithms.restricted import NEED
    from rnncomp.algorithms.tangents import TANGENT_FORWARD
    from rnncomp.forward_mode import TANGENT_OPS
    for name, table in [("tangents.TANGENT_FORWARD", set(TANGENT_FORWARD) | {"matvec"}),
                        ("pattern.STRUCTURE", set(STRUCTURE)), ("restricted.NEED", set(NEED))]:
        missing = sorted(set(TANGENT_OPS) - table)
        assert not missing, f"rnncomp.algorithms.{name} has no entry for tangent op(s) {missing}"
    for name in sorted(rc.cells.ZOO):  # and the rules emit only those
        ops = {n.op for n in tangent_step(rc.cells.ZOO[name](2, 3, 2).step).prog.nodes.values()}
        assert ops <= set(TANGENT_OPS) | {"seed"}, (name, ops)


def test_a_missing_jvp_rule_is_named():
    with pytest.raises(DifferentiationError, match=r"'weight_mul'.*VJP rule.*no JVP rule"):
        check_rule_coverage(dict(RULES, weight_mul=None), JVP_RULES)
    prog = Program(name="toy")
    prog.add(("h", "t-1"), Node("state", (), 2))
    prog.add(("y", "t"), Node("frobnicate", (("h", "t-1"),), 2))
    with pytest.raises(DifferentiationError, match=r"toy: y\[t\] is a 'frobnicate' node.*no JVP rule"):
        jvp(prog, {("h", "t-1"): (("dh%", "t-1"), Node("seed", (), 2))})


def _one_step(cell, params, h, x, y):
    st = cell.step
    env = {(p, None): v for p, v in params.items()}
    env.update({(s, "t-1"): h[s] for s in st.states})
    env.update({(n, "t"): a for n, a in {**x, **y}.items()})
    run_program(st.prog, env, next(iter(h.values())).shape[0], np.dtype(np.float64))
    return env


@pytest.mark.parametrize("name", sorted(rc.cells.ZOO))
def test_tangent_step_is_the_derivative_of_one_step(name):
    """∂h[t] and ∂ℓ[t] along a random direction (θ and h[t-1] both moved) == central difference."""
    cell = rc.cells.ZOO[name](2, 3, 2)
    st, B = cell.step, 2
    rng = np.random.default_rng(4)
    params, x, y = random_data(cell, T=1, B=B, seed=4)
    x, y = {k: v[0] for k, v in x.items()}, {k: v[0] for k, v in y.items()}
    h = {s: rng.normal(0, 0.5, (B, n)) for s, n in st.states.items()}
    dp = {p: rng.normal(size=np.shape(v)) for p, v in params.items()}
    dh = {s: rng.normal(size=(B, n)) for s, n in st.states.items()}
    ts, dirs = tangent_step(st), Directions.dense(st)
    env = _one_step(cell, params, h, x, y)
    # one direction: the dense tangent contracted with dθ, plus the state direction
    d = np.concatenate([dp[p].ravel() for p in st.params])
    seeds = {ts.state_seeds[s]: np.zeros((B, dirs.K, n)) for s, n in st.states.items()}
    tan = run_tangents(ts.prog, env, seeds, dirs, B, np.float64)
    ts1 = tangent_step(st, params=())
    tan1 = run_tangents(ts1.prog, env, {ts1.state_seeds[s]: dh[s][:, None, :] for s in st.states},
                        Directions(1, {}, {}, {}), B, np.float64)
    eps = 1e-6
    plus = _one_step(cell, {p: v + eps * dp[p] for p, v in params.items()}, {s: h[s] + eps * dh[s] for s in h}, x, y)
    minus = _one_step(cell, {p: v - eps * dp[p] for p, v in params.items()}, {s: h[s] - eps * dh[s] for s in h}, x, y)
    for s in st.states:
        an = np.einsum("bkn,k->bn", np.broadcast_to(tan[ts.out[s]], (B, dirs.K, st.states[s])), d) + tan1[ts1.out[s]][:, 0]
        fd = (plus[(s, "t")] - minus[(s, "t")]) / (2 * eps)
        np.testing.assert_allclose(an, fd, rtol=1e-7, atol=1e-9, err_msg=s)
    an = np.einsum("bk,k->b", np.broadcast_to(tan[ts.loss][..., 0], (B, dirs.K)), d) + tan1[ts1.loss][:, 0, 0]
    fd = (plus[st.loss_key] - minus[st.loss_key])[:, 0] / (2 * eps)
    np.testing.assert_allclose(an, fd, rtol=1e-7, atol=1e-9)


# ----------------------------------------------------------------------------- RTRL
@pytest.mark.parametrize("backend", ["numpy", "native"])
@pytest.mark.parametrize("name", sorted(rc.cells.ZOO))
@pytest.mark.parametrize("loss", ["mse", "xent"])
def test_rtrl_equals_bptt_on_the_zoo(name, loss, backend):
    """Each executor against the rolled BPTT oracle; the native one also against the NumPy
    executor of the same recursion (tolerances: tests/test_online_native.py's docstring)."""
    cell = rc.cells.ZOO[name](2, 3, 2, loss=loss)
    params, x, y = random_data(cell, T=6, B=3, seed=2)
    l1, g1, f1 = oracle(cell, params, x, y)
    l2, g2, f2 = sequence_grad(RTRL(), cell, params, x, y, backend=backend)
    assert abs(l1 - l2) <= 1e-12 * abs(l1)
    assert rel_err(g1, g2) < 1e-10
    for s in f1:
        np.testing.assert_allclose(f2[s], f1[s], rtol=1e-13, atol=1e-15 if backend == "native" else 0)
    if backend == "native":
        l3, g3, _ = sequence_grad(RTRL(), cell, params, x, y)
        assert abs(l2 - l3) <= 1e-12 * abs(l3)
        assert rel_err(g3, g2) < 1e-10


# test_rtrl_equals_bptt_on_fuzzed_cells: in test_online_native.py, over both executors


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_rtrl_learned_initial_state(backend):
    cell = rc.Cell("learned")
    x, h = cell.input("x", 2), cell.state("h", 3, init="learn")
    W, U = cell.param("W", (3, 2)), cell.param("U", (3, 3))
    cell.update(h, rc.sigmoid(W @ x + U @ h))
    t = cell.target("t", 3)
    cell.loss((h.new - t) ** 2)
    params, x, y = random_data(cell, T=4, B=2, seed=7)
    _, g1, _ = oracle(cell, params, x, y)
    _, g2, _ = sequence_grad(RTRL(), cell, params, x, y, backend=backend)
    assert np.abs(g1["h_0"]).max() > 1e-3  # the initial state's gradient is there to check
    assert rel_err(g1, g2) < 1e-10


def test_rtrl_memory_limit_names_the_sizes():
    cell = rc.cells.elman(2, 8, 1)
    params, x, y = random_data(cell, T=2, B=4, seed=0)
    P = sum(v.size for v in params.values())
    with pytest.raises(SensitivityMemoryError, match=rf"cell 'elman'.*4 × {P} × 8 values") as e:
        sequence_grad(RTRL(max_bytes=1000), cell, params, x, y)
    assert "rc.SnAp(1) or rc.UORO()" in str(e.value) and "max_bytes" in str(e.value)


# ----------------------------------------------------------------------------- SnAp
def test_dense_snap_memory_limit_says_it_is_snap_running_rtrls_sensitivity():
    """SnAp(2) of Elman keeps every one of RTRL's entries (its pattern is full after two
    steps), so it runs the dense executor: the limit's message named only RTRL before."""
    cell = rc.cells.elman(2, 8, 1)
    params, x, y = random_data(cell, T=2, B=4, seed=0)
    P = sum(v.size for v in params.values())
    kept = (8 * 2 + 8 * 8 + 8) * 8   # W, U, b reach every unit in two steps; V, by none
    with pytest.raises(SensitivityMemoryError, match=rf"cell 'elman': rc.SnAp\(2\) keeps {kept:,} of RTRL's "
                       rf"{P * 8:,} entries per sample here, so it runs the dense executor.*4 × {P} × 8 values"):
        sequence_grad(rc.SnAp(2, sparse=False, max_bytes=1000), cell, params, x, y)


from rnncomp.algorithms import SnAp, UORO  # noqa: E402
from rnncomp.algorithms.pattern import pattern
from rnncomp.algorithms.snap import colouring  # noqa: E402


@pytest.mark.parametrize("name", sorted(rc.cells.ZOO))
@pytest.mark.parametrize("n", [1, 2])
def test_snap_sparse_equals_its_dense_reference(name, n):
    """Two executors of one recursion: only the summation order differs (1e-12)."""
    cell = rc.cells.ZOO[name](2, 3, 2)
    params, x, y = random_data(cell, T=5, B=2, seed=3)
    _, g1, _ = sequence_grad(SnAp(n, sparse=False), cell, params, x, y)
    _, g2, _ = sequence_grad(SnAp(n, sparse=True), cell, params, x, y)
    assert rel_err(g1, g2) < 1e-12


@settings(max_examples=10)
@given(fuzz_cells(max_depth=2), calls(max_T=4, max_B=2))
def test_snap_sparse_equals_dense_on_fuzzed_cells(cell, call):
    """Slices, concats, stacked gates, Jordan states, learned h0: the pattern and the sparse
    executor agree with the masked dense RTRL step (1e-11), and SnAp-n for n past the number
    of state units is RTRL (1e-10)."""
    T, B, seed, mask_kind, h0_kind, _ = call
    params, x, y, mask, h0 = fuzz_data(cell, T, B, seed, mask_kind, h0_kind)
    _, g1, _ = sequence_grad(SnAp(1, sparse=False), cell, params, x, y, h0=h0, mask=mask)
    _, g2, _ = sequence_grad(SnAp(1, sparse=True), cell, params, x, y, h0=h0, mask=mask)
    assert rel_err(g1, g2) < 1e-11
    n = sum(cell.step.states.values()) + 1
    _, g3, _ = sequence_grad(SnAp(n, sparse=True), cell, params, x, y, h0=h0, mask=mask)
    _, g0, _ = oracle(cell, params, x, y, h0=h0, mask=mask)
    assert rel_err(g0, g3) < 1e-10


def _diagonal_cell():
    """Every recurrence element-wise (two states, one reading the other's new value)."""
    cell = rc.Cell("diagonal")
    x, h, c = cell.input("x", 3), cell.state("h", 4), cell.state("c", 4, init="learn")
    W, u, v = cell.param("W", (4, 3)), cell.param("u", 4), cell.param("v", 4)
    cell.update(c, sp.tanh(W @ x + u * c))
    cell.update(h, rc.sigmoid(v * h + c.new))
    t = cell.target("t", 2)
    y = cell.output("y", cell.param("V", (2, 4)) @ h.new)
    cell.loss(rc.softmax_xent(y, t))
    return cell


import sympy as sp  # noqa: E402


@pytest.mark.parametrize("make", [lambda: rc.cells.indrnn(3, 4, 2), _diagonal_cell])
def test_snap1_is_rtrl_when_the_recurrence_is_diagonal(make):
    cell = make()
    params, x, y = random_data(cell, T=6, B=2, seed=5)
    _, g0, _ = oracle(cell, params, x, y)
    _, g1, _ = sequence_grad(SnAp(1, sparse=True), cell, params, x, y)
    assert rel_err(g0, g1) < 1e-10


@pytest.mark.parametrize("name", ["elman", "gru", "lstm", "antisymmetric"])
def test_snap1_is_cheaper_and_biased_when_it_is_not(name):
    cell = rc.cells.ZOO[name](2, 6, 2)
    st = cell.step
    m1 = pattern(st, 1)
    P = sum(int(np.prod(s)) for s in st.params.values())
    nnz, full = sum(int(v.sum()) for v in m1.values()), P * sum(st.states.values())
    assert nnz * 2 < full, (nnz, full)  # SnAp-1 keeps under half of RTRL's sensitivity
    params, x, y = random_data(cell, T=6, B=2, seed=5)
    _, g0, _ = oracle(cell, params, x, y)
    _, g1, _ = sequence_grad(SnAp(1, sparse=True), cell, params, x, y)
    assert rel_err(g0, g1) > 1e-6  # truncated: not the exact gradient
    # ... but correlated with it (the point of SnAp)
    f0, f1 = (np.concatenate([g[k].ravel() for k in sorted(g)]) for g in (g0, g1))
    assert f0 @ f1 / (np.linalg.norm(f0) * np.linalg.norm(f1)) > 0.5


def test_snap_pattern_from_the_structure_of_the_step():
    """Elman: W[i, j], U[i, j], b[i] reach h[i] in one step, everything in two; V and by never."""
    cell = rc.cells.elman(2, 3, 1)
    m1, m2 = pattern(cell.step, 1)["h"], pattern(cell.step, 2)["h"]
    rows = {"W": (0, 6, (3, 2)), "U": (6, 9, (3, 3)), "b": (15, 3, (3,))}
    for p, (o, n, shape) in rows.items():
        for idx in np.ndindex(shape):
            flat = o + np.ravel_multi_index(idx, shape)
            assert list(np.nonzero(m1[flat])[0]) == [idx[0]], (p, idx)
            assert m2[flat].all(), (p, idx)
    assert not m2[18:].any()  # V (3 entries) and by (1)


def _pattern_per_entry(step, n):
    """SnAp-n's pattern pushed through the tangent program with one direction per entry (as
    before the classes of entries): the reference for :func:`pattern`."""
    from rnncomp.algorithms.pattern import reach
    ts, dirs = tangent_step(step), Directions.dense(step)
    m = {s: np.zeros((dirs.K, k), dtype=bool) for s, k in step.states.items()}
    for s, p in step.state_init.items():
        if p is not None:
            m[s][dirs.column[p], np.arange(step.states[s])] = True
    for _ in range(n):
        m = {s: m[s] | v for s, v in reach(ts, dirs, m).items()}
    return m


@settings(max_examples=40, deadline=None)
@given(fuzz_cells())
def test_snap_pattern_per_class_of_entries_equals_the_pattern_per_entry(cell):
    """pattern() pushes one direction per class of entries whose seeds reach the same units
    (pattern.entry_classes); spread back to the entries it is the per-entry pattern."""
    for n in (1, 2):
        want, got = _pattern_per_entry(cell.step, n), pattern(cell.step, n)
        assert got.keys() == want.keys() and all(np.array_equal(got[s], want[s]) for s in want)


def test_colouring_gives_disjoint_columns():
    rng = np.random.default_rng(0)
    s = rng.random((40, 12)) < 0.15
    c = colouring(s)
    assert ((c >= 0) == s.any(axis=1)).all()
    for k in range(c.max() + 1):
        assert (s[c == k].sum(axis=0) <= 1).all()


def test_snap_rejects_a_bad_n():
    with pytest.raises(ValueError, match=r"SnAp\(n=0\).*positive integer"):
        SnAp(0)
    with pytest.raises(ValueError, match=r"SnAp\(sparse='yes'\)"):
        SnAp(1, sparse="yes")


def test_snap_plans_an_lstm_with_128_units_in_memory_of_its_stored_entries():
    """SnAp-1 of LSTM 16 → 128 stores 129,920 entries per sample.  Its plans kept a dense
    (parameter entries × units) position table per tangent node (8 bytes a pair: 3.3 GB at
    their peak here, and an LSTM with 256 units was killed for memory); now positions are
    sorted keys and reach is pushed per class of entries: 164 MB measured (tracemalloc, which
    sees NumPy's buffers), so 600 MB leaves room and still catches the dense tables."""
    import tracemalloc
    from rnncomp.algorithms.sparse_plan import SparsePlan
    st = rc.cells.lstm(16, 128, 8).step
    tracemalloc.start()
    try:
        SnAp(1).prepare(st)
        plan = SparsePlan(st, pattern(st, 1), by_state=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert plan.nnz == (3 * 2 + 1) * (16 + 128 + 1) * 128
    assert peak < 600 * 2 ** 20, peak / 2 ** 20


def test_snap_auto_picks_sparse_for_a_thin_pattern_only():
    from rnncomp.algorithms.snap import _Dense, _Sparse
    st = rc.cells.elman(2, 6, 1).step
    assert isinstance(SnAp(1).prepare(st), _Sparse) and isinstance(SnAp(2).prepare(st), _Dense)


# ----------------------------------------------------------------------------- UORO
def _flat(g):
    return np.concatenate([g[k].ravel() for k in sorted(g)])


@pytest.mark.parametrize("name", ["elman", "lstm"])
def test_uoro_mean_over_seeds_approaches_rtrl(name):
    """n copies of one sequence in a batch are n independent UORO runs (each sample draws
    its own signs); the batch mean is their mean.  Unbiased with variance ∝ 1/n: the relative
    error (RMS over 6 repeats) at n = 1024 must be 1/8 – 1/2 of that at n = 64 (1/4 expected;
    measured 0.34 for elman, 0.29 for lstm: 6 repeats of a heavy-tailed estimate), and under
    0.1 (measured 0.044, 0.054)."""
    cell = rc.cells.ZOO[name](2, 3, 1)
    params, x, y = random_data(cell, T=5, B=1, seed=1)
    ref = _flat(sequence_grad(RTRL(), cell, params, x, y)[1])

    def rms_error(n):
        errs = []
        for r in range(6):
            xx, yy = ({k: np.repeat(v, n, axis=1) for k, v in d.items()} for d in (x, y))
            g = _flat(sequence_grad(UORO(seed=100 * n + r), cell, params, xx, yy)[1])
            errs.append(np.linalg.norm(g - ref) / np.linalg.norm(ref))
        return float(np.sqrt(np.mean(np.square(errs))))

    e64, e1024 = rms_error(64), rms_error(1024)
    assert 1 / 8 < e1024 / e64 < 1 / 2, (e64, e1024)
    assert e1024 < 0.1


@settings(max_examples=10)
@given(fuzz_cells(max_depth=2), calls(max_T=1, max_B=4))
def test_per_sample_parameter_gradients_sum_to_the_batch_gradient(cell, call):
    """UORO's per-sample ∂θ (transposed products, size-1 values, vector parameters read per
    sample) summed over the batch == the executor's batch-summed gradient (1e-12)."""
    from rnncomp.algorithms.base import flat_layout, per_sample_grads, step_env
    from rnncomp.autodiff import backward_step
    from rnncomp.backends.numpy import accumulate_grads
    _, B, seed, _, _, _ = call
    params, x, y, _, _ = fuzz_data(cell, 1, B, seed, None, "none")
    st, dt = cell.step, np.dtype(np.float64)
    rng = np.random.default_rng(seed)
    env = step_env(st, params, {s: rng.normal(size=(B, n)) for s, n in st.states.items()}, {**x, **y}, 0)
    run_program(st.prog, env, B, dt)
    bwd = backward_step(st)
    for s, n in st.states.items():
        env[bwd.carry_in[s]] = rng.normal(size=(B, n))
    env[bwd.weight] = rng.random((B, 1))
    run_program(bwd.prog, env, B, dt)
    layout = flat_layout(st)
    per = per_sample_grads(bwd, env, B, layout, dt).sum(axis=0)
    total = {p: np.zeros(np.shape(v)) for p, v in params.items()}
    accumulate_grads(total, bwd.grads, env)
    ref = np.concatenate([total[p].ravel() for p in st.params])
    np.testing.assert_allclose(per, ref, rtol=1e-12, atol=1e-13)


def test_uoro_learned_initial_state_is_unbiased():
    cell = _diagonal_cell()
    params, x, y = random_data(cell, T=4, B=1, seed=2)
    ref = _flat(sequence_grad(RTRL(), cell, params, x, y)[1])
    xx, yy = ({k: np.repeat(v, 4096, axis=1) for k, v in d.items()} for d in (x, y))
    g = _flat(sequence_grad(UORO(seed=3), cell, params, xx, yy)[1])
    assert np.linalg.norm(g - ref) / np.linalg.norm(ref) < 0.1


# ----------------------------------------------------------------------------- fit_online
def _hand_rtrl_elman(params, xs, ys, lr):
    """Online RTRL for Elman + SGD after every step, written out by hand in NumPy (the
    independent reference): h = tanh(W x + U h + b), y = V h + by, ℓ = ½|y − t|²."""
    W, U, b, V, by = (params[k].copy() for k in ("W", "U", "b", "V", "by"))
    T, B, n_in = xs.shape
    n = U.shape[0]
    P = W.size + U.size + b.size + V.size + by.size
    J = np.zeros((B, n, P))
    h = np.zeros((B, n))
    for t in range(T):
        a = xs[t] @ W.T + h @ U.T + b
        imm = np.zeros((B, n, P))
        for j in range(n):
            imm[:, j, j * n_in:(j + 1) * n_in] = xs[t]                       # ∂a_j/∂W[j, :]
            o = W.size + j * n
            imm[:, j, o:o + n] = h                                            # ∂a_j/∂U[j, :]
            imm[:, j, W.size + U.size + j] = 1                                # ∂a_j/∂b[j]
        h = np.tanh(a)
        J = (1 - h ** 2)[:, :, None] * (np.einsum("ij,bjp->bip", U, J) + imm)
        e = h @ V.T + by - ys[t]
        g = np.einsum("bi,ij,bjp->p", e, V, J) / B
        o = W.size + U.size + b.size
        g[o:o + V.size] += np.einsum("bi,bj->ij", e, h).ravel() / B
        g[o + V.size:] += e.sum(axis=0) / B
        flat = np.concatenate([W.ravel(), U.ravel(), b, V.ravel(), by]) - lr * g
        W, U, b, V, by = np.split(flat, np.cumsum([W.size, U.size, b.size, V.size]))
        W, U, V = W.reshape(n, n_in), U.reshape(n, n), V.reshape(-1, n)
    return {"W": W, "U": U, "b": b, "V": V, "by": by}


def _trainer(cell, gradient, lr=0.05, **kw):
    return rc.Trainer(cell, optimizer=rc.SGD(lr), gradient=gradient, backend="numpy", dtype="float64", **kw)


def test_fit_online_rtrl_follows_a_hand_written_rtrl_loop():
    cell = rc.cells.elman(2, 4, 1)
    params, x, y = random_data(cell, T=12, B=3, seed=6)
    tr = _trainer(cell, rc.RTRL(), params=params)
    losses = tr.fit_online(x["x"], y["target"], every=1)
    assert len(losses) == 12 and tr.step_count == 12
    ref = _hand_rtrl_elman(params, x["x"], y["target"], lr=0.05)
    for k, v in ref.items():
        np.testing.assert_allclose(tr.params[k], v, rtol=1e-10, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("gradient", [rc.RTRL(), rc.SnAp(2)])
def test_one_update_over_the_whole_stream_is_a_bptt_step(gradient):
    """every = T: one update from the whole stream's gradient, which RTRL (and SnAp-2 on a
    3-unit GRU, whose pattern is then full) computes exactly: the same step as BPTT's."""
    cell = rc.cells.gru(2, 3, 1)
    params, x, y = random_data(cell, T=7, B=2, seed=8)
    a, b = _trainer(cell, gradient, params=params), _trainer(cell, rc.BPTT(), params=params)
    la, lb = a.fit_online(x, y, every=7), b.fit_online(x, y, every=7)
    assert abs(la[0] - lb[0]) < 1e-12
    for k in a.params:
        np.testing.assert_allclose(a.params[k], b.params[k], rtol=1e-10, atol=1e-13, err_msg=k)


@pytest.mark.parametrize("gradient", [rc.RTRL(), rc.SnAp(1), rc.UORO(), rc.BPTT()])
def test_fit_online_learns_a_sine(gradient):
    """Predict the next value of a sine from a stream: the mean loss of the last quarter of
    updates must be under half the first quarter's (measured 100x lower for RTRL, 88x SnAp-1,
    7.6x UORO, 370x BPTT)."""
    cell = rc.cells.elman(1, 8, 1)
    s = np.sin(np.arange(401) * 0.3)[:, None, None]
    tr = rc.Trainer(cell, optimizer=rc.Adam(0.02), gradient=gradient, backend="numpy", dtype="float64",
                    clip_norm=1.0)
    losses = tr.fit_online(s[:-1], s[1:], every=4)
    q = len(losses) // 4
    assert np.mean(losses[-q:]) < 0.5 * np.mean(losses[:q]), (np.mean(losses[:q]), np.mean(losses[-q:]))
    assert set(tr.online_state) == {"h"}


def test_fit_online_bad_arguments():
    cell = rc.cells.elman(1, 2, 1)
    with pytest.raises(ValueError, match=r"gradient must be rc.RTRL\(\).*got 'rtrl'"):
        _trainer(cell, "rtrl")
    tr = _trainer(cell, rc.RTRL())
    x = np.zeros((3, 1, 1))
    with pytest.raises(ValueError, match=r"fit_online: every must be a positive integer, got 0"):
        tr.fit_online(x, x, every=0)
    with pytest.raises(rc.CallError, match="elman"):
        tr.fit_online(np.zeros((3, 1, 2)), x)


# ----------------------------------------------------------------------------- explain and costs
from rnncomp.algorithms.cost import algorithm_costs  # noqa: E402


def test_explain_rtrl_prints_the_derived_sensitivity_recursion():
    text = str(rc.explain(rc.cells.elman(2, 3, 1), algorithm="rtrl"))
    assert "h[t] = tanh(b + U·h[t-1] + W·x[t])" in text  # the cell first
    assert "∂h[t] = (1 - h[t]**2)*(∂b + U·∂h[t-1] + ∂U·h[t-1] + ∂W·x[t])" in text
    assert "∂ℓ[t] = (-target[t] + y[t])*(∂by + V·∂h[t] + ∂V·h[t])" in text  # one output: no Σ
    assert "%" not in text  # generated names print without their mark


@pytest.mark.parametrize("algorithm", ["snap", "snap2", "uoro", "rbp", "bptt", "SnAp-1", "RTRL"])
def test_explain_every_algorithm(algorithm):
    text = str(rc.explain(rc.cells.lstm(2, 3, 1), algorithm=algorithm))
    assert "c[t] =" in text and ("∂c[t] =" in text or "δc[t-1]" in text or "δ⁺c" in text)


def test_explain_snap_prints_the_folded_recursion_per_kept_entry():
    """Worked out by hand: SnAp-1 on Elman keeps W[u, j] → h_u, which moves as
    (1 - h_u²)·(U[u,u]·∂h_u[t-1] + x_j); on an LSTM the output gate's weights reach h only
    (no ∂c line, no ∂c term), the other gates' reach c and h; a matrix-state cell has no
    sparse plan, so no folded section."""
    text = str(rc.explain(rc.cells.elman(2, 3, 1), algorithm="snap"))
    assert "  W[u, j]:\n    ∂h_u[t] = U[u,u]*(1 - h[t]**2)·∂h_u[t-1] + (1 - h[t]**2)·x[t]_j" in text
    assert "  b[u]:\n    ∂h_u[t] = U[u,u]*(1 - h[t]**2)·∂h_u[t-1] + (1 - h[t]**2)\n" in text + "\n"
    lstm = str(rc.explain(rc.cells.lstm(2, 3, 1), algorithm="snap")).split("folded per kept entry")[1]
    groups = dict(re.findall(r"  (\w+)\[u(?:, j)?\]:\n((?:    .*\n)+)", lstm + "\n"))
    assert sorted(groups) == sorted(f"{w}{g}" for w in "WUb" for g in "ifgo")
    for name, body in groups.items():
        assert body.startswith("    ∂c_u[t] = ") == (not name.endswith("o")), name
        # the output gate's directions keep no c entry to carry
        assert "∂h_u[t] = " in body and "·∂h_u[t-1]" in body and ("·∂c_u[t-1]" in body) == (name[-1] != "o"), name
    from rnncomp import zoo_matrix
    assert "folded per kept entry" not in str(rc.explain(zoo_matrix.fast_weights(2, 3, 2), algorithm="snap"))


def test_explain_snap_counts_per_class_of_entries():
    """rc.explain(algorithm="snap") counted the kept entries on the (P × n_s) pattern: 4 GB for a
    GRU 256 → 1024.  It counts per class of entries now (19 MB measured at 256 units where the
    table took 54 MB, so 30 MB), with the counts of the per-entry pattern."""
    import tracemalloc
    cell = rc.cells.gru(16, 256, 4)
    tracemalloc.start()
    try:
        text = str(rc.explain(cell, algorithm="snap").recursion_text())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    m = pattern(cell.step, 1)["h"]
    assert f"reach: {int(m.sum())} of {m.size}" in text and peak < 30 * 2 ** 20, peak / 2 ** 20


def test_explain_unknown_algorithm():
    with pytest.raises(rc.CellError, match=r"cell 'elman': explain: unknown algorithm 'kfrtrl'.*rtrl"):
        rc.explain(rc.cells.elman(1, 2, 1), algorithm="kfrtrl")


def test_algorithm_costs_table():
    """RTRL's memory is B·P·n_s whatever T; BPTT's grows with T; SnAp-1 below RTRL on a dense cell."""
    cell = rc.cells.elman(3, 8, 2)
    P = sum(v.size for v in cell.init_params(0).values())
    short, long = (algorithm_costs(cell, T=T, B=4, dtype="float64") for T in (10, 1000))
    rows = {r["algorithm"]: r for r in short.rows}
    assert rows["RTRL"]["memory"] == 4 * P * 8 * 8
    assert rows["UORO"]["memory"] == 4 * (P + 8) * 8
    assert rows["SnAp-1"]["memory"] == 4 * (8 * 3 + 8 * 8 + 8) * 8  # W, U, b rows: one unit each
    assert rows["SnAp-1"]["flops"] < rows["RTRL"]["flops"] and rows["SnAp-1"]["exact"] == "biased, online"
    assert rows["SnAp-2"]["exact"] == "exact (RTRL's pattern)"
    long_rows = {r["algorithm"]: r for r in long.rows}
    assert long_rows["BPTT"]["memory"] > 50 * rows["BPTT"]["memory"]
    assert long_rows["RTRL"]["memory"] == rows["RTRL"]["memory"]
    table = short.table()
    for name in ("BPTT", "RTRL", "SnAp-1", "SnAp-2", "UORO"):
        assert f"  {name}" in table


def test_algorithm_costs_skip_snap_past_the_pattern_limit():
    cell = rc.cells.elman(3, 8, 2)
    P = sum(v.size for v in cell.init_params(0).values())  # 114
    c = algorithm_costs(cell, T=10, B=4, pattern_limit=100)
    rows = {r["algorithm"]: r for r in c.rows}
    # classes of entries: W's, U's, V's rows, b's and by's entries: 8 + 8 + 2 + 8 + 2 = 28 < P
    assert P == 114 and rows["SnAp-1"]["flops"] is None
    assert "28 classes of entries × n_s = 8" in rows["SnAp-1"]["exact"]
    assert rows["RTRL"]["flops"] > 0
    assert "SnAp-1                       -" in c.table()


def test_algorithm_costs_count_snap_for_an_lstm_with_128_units():
    """P·n_s = 29.5 M for LSTM 64 → 128: past the limit while the pattern had a row per entry
    ("not counted"); per class of entries it is 1,792 × 256.  SnAp-1 keeps, per gate row i,
    the entries of Wf, Wi, Wg, Uf, Ui, Ug, bf, bi, bg on c[i] and h[i], those of Wo, Uo, bo on
    h[i] only: (3·2 + 1)·(64 + 128 + 1)·128 values per sample."""
    rows = {r["algorithm"]: r for r in algorithm_costs(rc.cells.lstm(64, 128, 128), T=100, B=32).rows}
    assert rows["SnAp-1"]["memory"] == 32 * 4 * (3 * 2 + 1) * (64 + 128 + 1) * 128
    assert rows["SnAp-1"]["exact"] == "biased, online" and rows["SnAp-2"]["exact"] == "exact (RTRL's pattern)"
    assert rows["BPTT"]["flops"] < rows["SnAp-1"]["flops"] < rows["UORO"]["flops"] * 10 < rows["RTRL"]["flops"]


def test_algorithm_costs_count_a_full_pattern_without_its_pair_tables():
    """SnAp-2 of a GRU is RTRL's full pattern: its restricted Jacobian pairs every entry of a
    direction with every other (N³ terms).  The cost table built those tables to count them
    (252 MB and 3.5 s at 192 units, 4.5 GB and 35 s at 512); it now counts them (27 MB
    measured, so 100 MB).  The count equals the tables' own, checked on the zoo's cells by
    tests comparing against the built plans (test_snap_fuse, the NumPy SnAp executor)."""
    import tracemalloc
    from rnncomp.algorithms.restricted import RestrictedJacobian
    tracemalloc.start()
    try:
        rows = {r["algorithm"]: r for r in algorithm_costs(rc.cells.gru(4, 192, 4), T=10, B=4).rows}
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rows["SnAp-2"]["exact"] == "exact (RTRL's pattern)" and peak < 100 * 2 ** 20, peak / 2 ** 20
    st = rc.cells.gru(2, 5, 1).step   # counted = built, on a small full pattern
    rj = RestrictedJacobian(st, *np.nonzero(np.ones((5, 5), bool)))
    counted = rj.flops()
    assert counted == 2 * sum(len(yp) for plan in rj.plans.values() for _, yp, _, _ in plan) > 0


def test_cli_inspect_cost_lists_the_algorithms(capsys):
    from rnncomp.cli import main
    assert main(["inspect", "gru", "--cost", "--T", "100", "--B", "4"]) == 0
    out = capsys.readouterr().out
    assert "gradient algorithms for 'gru': T = 100, B = 4, float32" in out
    for name in ("BPTT", "RTRL", "SnAp-1", "SnAp-2", "UORO"):
        assert f"\n  {name} " in out


# ----------------------------------------------------------------------------- DNI
def _echo(T, B, delay, seed):
    return delayed_copy(T, B, delay, seed, dtype="float64")[:2]


def test_dni_without_a_future_is_truncated_bptt():
    """gamma = 0 seeds every window's end with 0: exactly BPTT over the same windows."""
    cell = rc.cells.gru(1, 4, 1)
    x, y = _echo(30, 3, 2, 0)
    a, b = _trainer(cell, rc.DNI(gamma=0.0)), _trainer(cell, rc.BPTT())
    la, lb = a.fit_online(x, y, every=3), b.fit_online(x, y, every=3)
    np.testing.assert_allclose(la, lb, rtol=1e-12)
    for k in a.params:
        np.testing.assert_allclose(a.params[k], b.params[k], rtol=1e-11, atol=1e-14, err_msg=k)


def test_dni_learns_a_dependency_longer_than_the_window():
    """A delayed echo y[t] = x[t-4] with BPTT windows of 3 steps: truncated BPTT cannot see
    the dependency (its loss ends near the 0.5 of predicting 0; measured 0.47), DNI's synthetic
    gradient carries it across the boundary (measured 0.0002 over the last fifth of updates)."""
    cell = rc.cells.elman(1, 16, 1)
    x, y = _echo(3000, 8, 4, 2)
    last = {}
    for name, g in [("bptt", rc.BPTT()), ("dni", rc.DNI(lr=1e-3))]:
        tr = rc.Trainer(cell, optimizer=rc.Adam(0.01), gradient=g, backend="numpy", dtype="float64", clip_norm=1.0)
        losses = tr.fit_online(x, y, every=3)
        last[name] = float(np.mean(losses[-len(losses) // 5:]))
    assert last["bptt"] > 0.3 and last["dni"] < 0.05, last
    A, c = g.module
    assert A.shape == (16, 16) and np.abs(A).max() > 0  # the module was trained


def test_dni_bad_arguments():
    with pytest.raises(ValueError, match=r"DNI: lr must be a finite number > 0, got 0"):
        rc.DNI(lr=0)
    with pytest.raises(TypeError, match="fit_online"):
        rc.DNI().prepare(rc.cells.elman(1, 2, 1).step)


def test_fit_online_in_float32():
    """A float32 trainer runs the online algorithms in float32 (the trainer's dtype)."""
    cell = rc.cells.lstm(1, 4, 1)
    s = np.sin(np.arange(61) * 0.3)[:, None, None].astype(np.float32)
    for g in (rc.RTRL(), rc.SnAp(1), rc.UORO()):
        tr = rc.Trainer(cell, optimizer=rc.Adam(0.01), gradient=g, backend="numpy", dtype="float32")
        losses = tr.fit_online(s[:-1], s[1:], every=5)
        assert len(losses) == 12 and np.isfinite(losses).all()
        assert tr.flat.dtype == np.float32 and tr.online_state["c"].dtype == np.float32


def test_compositions_get_a_clear_error_and_train_with_bptt():
    stack = rc.Stack([rc.cells.elman(2, 4, 3), rc.cells.elman(3, 4, 1)])
    with pytest.raises(rc.CallError, match=r"rc.RTRL\(\) derives its recursion from one cell's step; "
                                           r"'stack\(elman, elman\)' is a composition \(Stack\)"):
        rc.Trainer(stack, gradient=rc.RTRL(), backend="numpy", dtype="float64")
    with pytest.raises(rc.CellError, match=r"explain\(algorithm='rtrl'\).*composition"):
        rc.explain(stack, algorithm="rtrl")
    with pytest.raises(rc.CallError, match="composition"):
        sequence_grad(rc.UORO(), stack, {}, {}, {})
    tr = rc.Trainer(stack, optimizer=rc.SGD(0.1), gradient=rc.BPTT(), backend="numpy", dtype="float64")
    rng = np.random.default_rng(0)
    losses = tr.fit_online(rng.normal(size=(6, 2, 2)), rng.normal(size=(6, 2, 1)), every=3)
    assert len(losses) == 2 and tr.step_count == 2


def test_fit_online_batch_first_is_the_same_stream():
    cell = rc.cells.elman(1, 3, 1)
    s = np.sin(np.arange(21) * 0.3)[:, None, None].repeat(2, axis=1)
    a = _trainer(cell, rc.RTRL())
    b = _trainer(cell, rc.RTRL(), batch_first=True)
    la = a.fit_online(s[:-1], s[1:], every=5)
    lb = b.fit_online(s[:-1].swapaxes(0, 1), s[1:].swapaxes(0, 1), every=5)
    np.testing.assert_allclose(la, lb, rtol=1e-13)
    np.testing.assert_allclose(a.flat, b.flat, rtol=1e-13)


# ----------------------------------------------------------------------------- array ops (#19)
@pytest.mark.parametrize("name", ["mlstm", "fast_weights", "delta_rule", "diag_linear"])
def test_rtrl_equals_bptt_on_matrix_state_cells(name):
    """Matrix states (outer, smatvec, row/column broadcasts and sums) through the JVP rules of
    rnncomp.array_jvp: the same sum as BPTT in another order, so 1e-10 as for the zoo."""
    from rnncomp import zoo_matrix
    cell = getattr(zoo_matrix, name)(2, 3, 2)
    params, x, y = random_data(cell, T=5, B=2, seed=3)
    l1, g1, _ = oracle(cell, params, x, y)
    l2, g2, _ = sequence_grad(RTRL(), cell, params, x, y)
    assert abs(l1 - l2) <= 1e-12 * abs(l1)
    assert rel_err(g1, g2) < 1e-10
    # SnAp over the same ops (the dense executor: the sparse one names what it lacks), and
    # SnAp-n with n past the number of state units keeps every reachable entry: RTRL (1e-10)
    _, g3, _ = sequence_grad(SnAp(1), cell, params, x, y)
    assert all(np.isfinite(v).all() for v in g3.values())
    if cell.step.matrix_states:
        with pytest.raises(NotImplementedError, match="matrix states"):
            sequence_grad(SnAp(1, sparse=True), cell, params, x, y)
    big = sum(cell.step.states.values()) + 1
    _, g5, _ = sequence_grad(SnAp(big), cell, params, x, y)
    assert rel_err(g1, g5) < 1e-10


@pytest.mark.parametrize("make", ["masked_elman", "skew_elman", "weightnorm_gru"])
def test_rtrl_equals_bptt_with_derived_weights(make):
    """Derived weights and constants (#19): RTRL runs on the plain cell and its gradient is chained
    back through the weights' expressions, as the compiled models do; 1e-10 as above."""
    import test_weight_ops
    cell = getattr(test_weight_ops, make)()
    params, x, y = random_data(cell, T=5, B=2, seed=4)
    l1, g1, _ = oracle(cell, params, x, y)
    l2, g2, _ = sequence_grad(RTRL(), cell, params, x, y)
    assert g1.keys() == g2.keys()
    assert abs(l1 - l2) <= 1e-12 * abs(l1)
    assert rel_err(g1, g2) < 1e-10


# ----------------------------------------------------------------------------- restricted Jacobian
from rnncomp.algorithms.restricted import RestrictedJacobian  # noqa: E402


@pytest.mark.parametrize("name", sorted(rc.cells.ZOO))
def test_restricted_jacobian_entries_equal_the_full_jacobian(name):
    """Random entries of D = ∂s[t]/∂s[t-1] (structural zeros among them) against D from the
    tangent step run over one direction per state unit: the same products (1e-14)."""
    cell = rc.cells.ZOO[name](2, 4, 2)
    st, B = cell.step, 3
    params, x, y = random_data(cell, T=1, B=B, seed=1)
    rng = np.random.default_rng(0)
    h = {s: rng.normal(size=(B, n)) for s, n in st.states.items()}
    env = _one_step(cell, params, h, {k: v[0] for k, v in x.items()}, {k: v[0] for k, v in y.items()})
    ts = tangent_step(st, params=())
    N = sum(st.states.values())
    offs = dict(zip(st.states, np.cumsum([0] + list(st.states.values()))))
    seeds = {}
    for s, n in st.states.items():
        e = np.zeros((1, N, n))
        e[0, offs[s] + np.arange(n), np.arange(n)] = 1
        seeds[ts.state_seeds[s]] = e
    tan = run_tangents(ts.prog, env, seeds, Directions(N, {}, {}, {}), B, np.float64)
    D = np.zeros((B, N, N))
    for s, n in st.states.items():
        if ts.out[s] is not None:
            D[:, offs[s]:offs[s] + n] = np.broadcast_to(tan[ts.out[s]], (B, N, n)).transpose(0, 2, 1)
    rows, cols = np.nonzero(rng.random((N, N)) < 0.5)
    got = RestrictedJacobian(st, rows, cols).evaluate(env, B, np.float64)
    np.testing.assert_allclose(got, D[:, rows, cols], rtol=1e-13, atol=1e-14)


def test_restricted_jacobian_computes_only_what_snap1_needs():
    """Elman under SnAp-1 needs the diagonal of D: n_s entries in each tangent node."""
    st = rc.cells.elman(1, 32, 1).step
    rj = RestrictedJacobian(st, np.arange(32), np.arange(32))
    assert max(len(d) for d, _ in rj.positions.values()) == 32
