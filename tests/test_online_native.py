"""The native executor of RTRL and dense SnAp (rnncomp/backends/native_tangent.py, issue #20).

Oracles: the NumPy executor of the same algorithm (same recursion, other code: 1e-10 relative
to each gradient's largest entry in float64; observed ~1e-15), the rolled BPTT of the NumPy
reference model (the same sum in another order: 1e-10 as in test_online.py), and for
fit_online the NumPy trainer's parameters after the same updates.  float32: 1e-4 relative
(a few hundred float32 roundings per entry over T steps).
"""
import sys
import warnings

import numpy as np
import pytest
from hypothesis import given, settings

import rnncomp as rc
from rnncomp.algorithms import RTRL, SnAp, UORO, sequence_grad
from rnncomp.algorithms.compiled import NumpyFallbackWarning
from rnncomp.errors import CompileError

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from fuzzgen import array_cells, calls, fuzz_cells, fuzz_data  # noqa: E402
from gradcheck import random_data  # noqa: E402


def rel_err(g1, g2):
    return max(float(np.abs(g1[k] - g2[k]).max()) / max(float(np.abs(g1[k]).max()), 1e-300) for k in g1)


def oracle(cell, *args, **kw):
    return rc.compile(cell, backend="numpy").loss_and_grad(*args, **kw)


# the zoo, native RTRL against NumPy RTRL and BPTT: test_online.py::test_rtrl_equals_bptt_on_the_zoo


@settings(max_examples=12)
@given(fuzz_cells(max_depth=2), calls(max_T=5, max_B=3))
def test_rtrl_equals_bptt_on_fuzzed_cells(cell, call):
    """Masks, given and learned initial states, kinks, slices, concats, Jordan states (fuzzgen);
    both executors against the oracle, and each other."""
    T, B, seed, mask_kind, h0_kind, _ = call
    params, x, y, mask, h0 = fuzz_data(cell, T, B, seed, mask_kind, h0_kind)
    l0, g0, _ = oracle(cell, params, x, y, h0=h0, mask=mask)
    got = [sequence_grad(RTRL(), cell, params, x, y, h0=h0, mask=mask, backend=b) for b in ("numpy", "native")]
    for loss, g, _ in got:
        assert abs(loss - l0) <= 1e-11 * max(abs(l0), 1e-300)
        assert rel_err(g0, g) < 1e-10
    assert rel_err(got[0][1], got[1][1]) < 1e-10


@pytest.mark.parametrize("name", ["elman", "gru", "lstm"])
@pytest.mark.parametrize("n", [1, 2])
def test_native_dense_snap_equals_numpy_snap(name, n):
    cell = rc.cells.ZOO[name](2, 4, 2)
    params, x, y = random_data(cell, T=6, B=2, seed=5)
    _, g1, _ = sequence_grad(SnAp(n, sparse=False), cell, params, x, y)
    _, g2, _ = sequence_grad(SnAp(n, sparse=False), cell, params, x, y, backend="native")
    _, g3, _ = sequence_grad(SnAp(n, sparse=True), cell, params, x, y)
    assert rel_err(g1, g2) < 1e-10
    assert rel_err(g3, g2) < 1e-10  # and the sparse executor's, the same recursion once more
    if n == 1:  # SnAp-1 of a dense recurrence is biased: the mask did act (SnAp-2 reaches every unit)
        _, g0, _ = oracle(cell, params, x, y)
        assert rel_err(g0, g2) > 1e-6


def test_native_rtrl_float32():
    cell = rc.cells.gru(3, 8, 2)
    params, x, y = random_data(cell, T=10, B=4, seed=1)
    _, g0, _ = oracle(cell, params, x, y)
    f32 = lambda d: {k: v.astype(np.float32) for k, v in d.items()}  # noqa: E731
    _, g2, _ = sequence_grad(RTRL(), cell, f32(params), f32(x), f32(y), dtype="float32", backend="native")
    assert all(v.dtype == np.float32 for v in g2.values())
    assert rel_err(g0, g2) < 1e-4


@pytest.mark.parametrize("gradient", [RTRL(), SnAp(1, sparse=False), SnAp(1, sparse=True), UORO(seed=2)])
def test_fit_online_native_follows_the_numpy_trainer(gradient):
    """Same updates (every 3 steps, SGD, a last short window): same parameters and losses."""
    cell = rc.cells.lstm(2, 4, 1)
    params, x, y = random_data(cell, T=11, B=3, seed=6)
    out = []
    for backend in ("numpy", "native"):
        tr = rc.Trainer(cell, optimizer=rc.SGD(0.1), gradient=gradient, backend=backend, dtype="float64",
                        params={k: v.copy() for k, v in params.items()})
        with warnings.catch_warnings():
            warnings.simplefilter("error", NumpyFallbackWarning)  # native means native here
            losses = tr.fit_online(x["x"], y["target"], every=3)
        out.append((losses, {k: np.array(v) for k, v in tr.params.items()}, tr.online_state))
    (l1, p1, s1), (l2, p2, s2) = out
    assert len(l2) == 4
    np.testing.assert_allclose(l2, l1, rtol=1e-12)
    assert rel_err(p1, p2) < 1e-12
    for s in s1:
        np.testing.assert_allclose(s2[s], s1[s], rtol=1e-12, atol=1e-14)


MATRIX_CELLS = ["fast_weights", "mlstm", "delta_rule", "diag_linear"]


@pytest.mark.parametrize("name", MATRIX_CELLS)
def test_matrix_state_cells_run_natively(name):
    """Matrix states (outer, smatvec, mbcast, mreduce) in the native executors: RTRL and dense
    SnAp-1 (the tangent program's product rule over B·K rows), UORO; against the NumPy
    executor of each and RTRL against BPTT (1e-10, module docstring), float32 at 1e-4."""
    from rnncomp import zoo_matrix
    cell = getattr(zoo_matrix, name)(2, 3, 2)
    params, x, y = random_data(cell, T=7, B=3, seed=4)
    _, g0, _ = oracle(cell, params, x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NumpyFallbackWarning)
        for alg in (RTRL(), SnAp(1, sparse=False), UORO(seed=2)):
            l1, g1, _ = sequence_grad(alg, cell, params, x, y)
            l2, g2, _ = sequence_grad(alg, cell, params, x, y, backend="native")
            assert abs(l1 - l2) <= 1e-12 * abs(l1), (alg, l1, l2)
            assert rel_err(g1, g2) < 1e-10, alg
        _, g_rtrl, _ = sequence_grad(RTRL(), cell, params, x, y, backend="native")
        assert rel_err(g0, g_rtrl) < 1e-10  # RTRL is BPTT's gradient
        f32 = lambda d: {k: v.astype(np.float32) for k, v in d.items()}  # noqa: E731
        _, g3, _ = sequence_grad(RTRL(), cell, f32(params), f32(x), f32(y), dtype="float32", backend="native")
        assert rel_err(g0, g3) < 1e-4


@settings(max_examples=6)
@given(array_cells(), calls(max_T=4, max_B=3))
def test_rtrl_equals_bptt_on_fuzzed_matrix_state_and_derived_weight_cells(cell, call):
    """fuzzgen's array cells (a matrix state C written by outer products or the delta rule and
    read by smatvec or reductions; derived weights): native RTRL against the oracle's BPTT and
    the NumPy executor's RTRL, with masks and initial states (1e-10, module docstring)."""
    T, B, seed, mask_kind, h0_kind, _ = call
    params, x, y, mask, h0 = fuzz_data(cell, T, B, seed, mask_kind, h0_kind)
    l0, g0, _ = oracle(cell, params, x, y, h0=h0, mask=mask)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NumpyFallbackWarning)
        got = [sequence_grad(RTRL(), cell, params, x, y, h0=h0, mask=mask, backend=b) for b in ("numpy", "native")]
    for loss, g, _ in got:
        assert abs(loss - l0) <= 1e-11 * max(abs(l0), 1e-300)
        assert rel_err(g0, g) < 1e-10
    assert rel_err(got[0][1], got[1][1]) < 1e-10


def test_what_has_no_native_code_is_named_and_the_trainer_falls_back(monkeypatch):
    """Every op of the DSL has native online code now, so an op without it is simulated: the
    executor's table without ``outer`` (as a new op would be).  The error names the cell and
    the op; the trainer warns and runs the NumPy executor, with its numbers."""
    from rnncomp import zoo_matrix
    from rnncomp.backends import native_tangent_plan as plan
    for table in ("FORWARD_OPS", "TANGENT_OPS"):
        monkeypatch.setattr(plan, table, tuple(op for op in getattr(plan, table) if op != "outer"))
    cell = zoo_matrix.fast_weights(2, 3, 2)
    params, x, y = random_data(cell, T=3, B=2, seed=3)
    with pytest.raises(CompileError, match=r"fast_weights.*no code for op\(s\) outer.*backend='numpy'"):
        sequence_grad(RTRL(), cell, params, x, y, backend="native")
    # the trainer says so and runs the NumPy executor: the same numbers as backend="numpy"
    res = []
    for backend in ("native", "numpy"):
        tr = rc.Trainer(cell, optimizer=rc.SGD(0.1), gradient=RTRL(), backend=backend, dtype="float64",
                        params={k: v.copy() for k, v in params.items()})
        if backend == "native":
            with pytest.warns(NumpyFallbackWarning, match=r"fast_weights.*NumPy executor"):
                res.append(tr.fit_online(x["x"], y["target"], every=1))
        else:
            res.append(tr.fit_online(x["x"], y["target"], every=1))
    np.testing.assert_allclose(res[0], res[1], rtol=1e-13)


@pytest.mark.parametrize("algorithm", [RTRL(), SnAp(1, sparse=False), SnAp(1, sparse=True), UORO()])
def test_a_derived_weight_step_is_named_and_falls_back(algorithm):
    """The native executors run a plain cell's step (sequence_grad and fit_online give them
    one).  Prepared directly on a step with a derived weight, sparse SnAp stopped on a bare
    KeyError that fallback=True did not catch, and RTRL said "LLVM failed ... 'D'".  Now a
    CompileError names the weight, and fallback gives the NumPy executor, which runs it."""
    import sympy as sp
    from rnncomp.algorithms.compiled import prepare
    cell = rc.Cell("derived")
    x, h = cell.input("x", 3), cell.state("h", 5)
    W, V = cell.param("W", (5, 5)), cell.param("V", (5, 3))
    D = cell.weight("D", W - W.T)
    cell.update(h, sp.tanh(D @ h + V @ x))
    cell.loss(rc.vsum((h.new - cell.target("t", 5)) ** 2))
    with pytest.raises(CompileError, match=r"cell 'derived'.*D is a derived weight.*sequence_grad"):
        prepare(algorithm, cell.step, "native")
    with pytest.warns(NumpyFallbackWarning, match="D is a derived weight"):
        prep = prepare(algorithm, cell.step, "native", fallback=True)
    assert not hasattr(prep, "kernel")
    params, xs, ys = random_data(cell, T=3, B=2, seed=0)   # the user's way runs natively, on the plain cell
    _, g1, _ = sequence_grad(algorithm, cell, params, xs, ys)
    _, g2, _ = sequence_grad(algorithm, cell, params, xs, ys, backend="native")
    for k in g1:
        np.testing.assert_allclose(g2[k], g1[k], rtol=1e-10, atol=1e-12)


def test_default_trainer_runs_rtrl_natively_in_float32():
    """Trainer's defaults (native, float32): the native executor in float32, no fallback."""
    cell = rc.cells.lstm(1, 4, 1)
    s = np.sin(np.arange(61) * 0.3)[:, None, None]
    for g in (rc.RTRL(), rc.SnAp(1, sparse=False)):
        tr = rc.Trainer(cell, optimizer=rc.Adam(0.01), gradient=g, clip_norm=1.0)
        with warnings.catch_warnings():
            warnings.simplefilter("error", NumpyFallbackWarning)
            losses = tr.fit_online(s[:-1], s[1:], every=5)
        assert len(losses) == 12 and np.isfinite(losses).all()
        assert np.mean(losses[-3:]) < np.mean(losses[:3])  # it learns the sine
        assert tr.flat.dtype == np.float32 and tr.online_state["c"].dtype == np.float32


@pytest.mark.parametrize("gradient", [RTRL(), SnAp(1, sparse=False), SnAp(1, sparse=True), UORO(seed=2)],
                         ids=["rtrl", "snap-dense", "snap-sparse", "uoro"])
def test_threads_split_the_batch_with_the_same_numbers(gradient, monkeypatch):
    """The batch cut into three slices, each run by a fork of the kernel in its own thread on
    its rows of the carry: the losses, parameters and carried state of fit_online equal one
    thread's to rounding (the same terms summed in another order: 1e-12)."""
    from rnncomp.algorithms.compiled import Native
    monkeypatch.setattr(Native, "MIN_WORK", 1)  # every window splits, however small
    monkeypatch.setattr(Native, "SPARSE_ROWS", 1)
    split = []
    run = Native._run
    monkeypatch.setattr(Native, "_run", lambda self, slices, part: split.append(len(slices)) or run(self, slices, part))
    cell = rc.cells.lstm(2, 4, 1)
    params, x, y = random_data(cell, T=11, B=7, seed=6)
    out = []
    for threads in (1, 3):
        tr = rc.Trainer(cell, optimizer=rc.SGD(0.1), gradient=gradient, backend="native", dtype="float64",
                        params={k: v.copy() for k, v in params.items()}, threads=threads)
        with warnings.catch_warnings():
            warnings.simplefilter("error", NumpyFallbackWarning)
            losses = tr.fit_online(x["x"], y["target"], every=3)
        out.append((losses, {k: np.array(v) for k, v in tr.params.items()}, tr.online_state))
    assert split and set(split) == {3}, split  # the three-thread trainer's every window, cut in three
    (l1, p1, s1), (l3, p3, s3) = out
    np.testing.assert_allclose(l3, l1, rtol=1e-12)
    assert rel_err(p1, p3) < 1e-12
    for s in s1:
        np.testing.assert_allclose(s3[s], s1[s], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("threads", [1, 2])
def test_one_prepared_executor_from_several_python_threads(threads, monkeypatch):
    """Found by a probe: four Python threads calling sequence_grad with one prepared native
    executor got wrong gradients (threads=2) or corrupted the heap (threads=1, an abort): the
    kernels' buffers serve one window at a time.  Each call must give its serial answer."""
    import threading
    from rnncomp.algorithms.compiled import Native, prepare
    monkeypatch.setattr(Native, "MIN_WORK", 1)
    monkeypatch.setattr(Native, "SPARSE_ROWS", 1)
    cell = rc.cells.lstm(2, 4, 1)
    params = cell.init_params(seed=0, dtype="float64")
    rng = np.random.default_rng(0)
    data = [({"x": rng.normal(size=(6, B, 2))}, {"target": rng.normal(size=(6, B, 1))}) for B in (4, 6, 3, 5)]
    for make in (RTRL, lambda: SnAp(1, sparse=True), lambda: UORO(seed=1)):
        want = [sequence_grad(make(), cell, params, x, y) for x, y in data]
        prepared = prepare(make(), cell.step, "native", "float64", threads=threads)
        errors = []

        def work(i):
            x, y = data[i]
            for _ in range(10):
                loss, g, _ = sequence_grad(make(), cell, params, x, y, backend="native", prepared=prepared)
                if abs(loss - want[i][0]) > 1e-10 or rel_err(want[i][1], g) > 1e-10:
                    errors.append((i, loss, want[i][0]))
                    return

        workers = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        assert not errors, (make(), errors)


def test_fit_online_keeps_its_prepared_executor(monkeypatch):
    """Preparing sparse SnAp took ~50 ms (its pattern, colouring and plan) and fit_online did
    it every call: a stream fed in chunks paid it every chunk.  The trainer keeps it while the
    algorithm, backend, dtype and threads stay; a new gradient= prepares again."""
    from rnncomp.algorithms import compiled
    made = []
    real = compiled.prepare
    monkeypatch.setattr(compiled, "prepare", lambda *a, **k: (a[2] == "native" and made.append(a[0])) or real(*a, **k))
    cell = rc.cells.elman(2, 4, 1)
    params, x, y = random_data(cell, T=9, B=3, seed=2)
    tr = rc.Trainer(cell, optimizer=rc.SGD(0.1), gradient=SnAp(1), backend="native", dtype="float64",
                    params={k: v.copy() for k, v in params.items()})
    ref = rc.Trainer(cell, optimizer=rc.SGD(0.1), gradient=SnAp(1), backend="numpy", dtype="float64",
                     params={k: v.copy() for k, v in params.items()})
    for lo in (0, 3, 6):  # the stream in three chunks, the state carried
        chunk = (x["x"][lo:lo + 3], y["target"][lo:lo + 3])
        got = tr.fit_online(*chunk, every=1, h0=tr.online_state if lo else None)
        want = ref.fit_online(*chunk, every=1, h0=ref.online_state if lo else None)
        np.testing.assert_allclose(got, want, rtol=1e-12)
    assert len(made) == 1, made
    tr.gradient = RTRL()
    tr.fit_online(x["x"], y["target"], every=3)
    assert len(made) == 2 and isinstance(made[-1], RTRL)
    tr.gradient.max_bytes = 100  # an option changed in place (found by a probe): prepared again
    with pytest.raises(Exception, match="max_bytes"):
        tr.fit_online(x["x"], y["target"], every=3)
    assert len(made) == 3


def test_a_pickled_trainer_trains_on_as_the_original():
    """Pickling copied each parameter view of the flat vector, so an unpickled trainer's updates
    never reached the arrays its model read (its second fit_online loss already differed), and
    a trainer that had run the native update did not pickle (ctypes pointers)."""
    import pickle
    cell = rc.cells.gru(3, 8, 2)
    params, x, y = random_data(cell, T=12, B=6, seed=3)
    for gradient in (None, RTRL()):
        tr = rc.Trainer(cell, optimizer=rc.Adam(1e-2), clip_norm=1.0, gradient=gradient, dtype="float64",
                        params={k: v.copy() for k, v in params.items()})
        train = (lambda t: t.fit(x["x"], y["target"], epochs=2, verbose=0)) if gradient is None else \
            (lambda t: t.fit_online(x["x"], y["target"], every=3))
        train(tr)
        copy = pickle.loads(pickle.dumps(tr))
        train(tr)
        train(copy)
        np.testing.assert_array_equal(copy.flat, tr.flat)
        assert all(np.shares_memory(copy.params[n], copy.flat) for n in copy.params)


@pytest.mark.parametrize("gradient", [RTRL(), SnAp(1, sparse=True), UORO(seed=2)])
def test_fit_online_caches_its_kernel_where_the_trainer_was_told(gradient, tmp_path, monkeypatch):
    """``cache=`` of a Trainer is the online kernel's too: it went to the default cache always
    (written there with cache=None, and not in the folder given)."""
    default, mine = tmp_path / "default", tmp_path / "mine"
    monkeypatch.setenv("RNNCOMP_CACHE_DIR", str(default))
    cell = rc.cells.elman(2, 4, 1)
    params, x, y = random_data(cell, T=6, B=2, seed=1)
    for cache in (None, str(mine)):
        tr = rc.Trainer(cell, optimizer=rc.SGD(0.1), gradient=gradient, backend="native", threads=1,
                        params={k: v.copy() for k, v in params.items()}, cache=cache)
        before = set(mine.glob("obj/*.o"))
        tr.fit_online(x["x"], y["target"], every=3)
        assert not default.exists()
    assert set(mine.glob("obj/*.o")) - before   # the kernel's object (and the update's), beside the model's


def test_rtrl_max_bytes_counts_the_native_working_buffers():
    """RTRL's max_bytes bounded the sensitivity J only, while the native kernel's working buffers
    (the tangent step's values over B·P directions) are about 3× J more (an LSTM with 200 units
    peaked at 2.9 GB under a 1 GiB limit on a 558 MB J): a limit of 2·J ran.  Now J and the
    buffers are counted together, named; 20·J runs and equals the NumPy executor."""
    from rnncomp.algorithms import sequence_grad
    cell = rc.cells.lstm(4, 16, 2)
    params = cell.init_params(0)
    rng = np.random.default_rng(0)
    x, y = {"x": rng.standard_normal((3, 4, 4))}, {"target": rng.standard_normal((3, 4, 2))}
    J = 4 * sum(v.size for v in params.values()) * 32 * 8
    with pytest.raises(rc.SensitivityMemoryError, match=r"RTRL's sensitivity ∂state/∂θ \(.* at B = 4\) and "
                                                        r"the native executor's working buffers \(.*\) need"):
        sequence_grad(rc.RTRL(max_bytes=2 * J), cell, params, x, y, backend="native")
    got = sequence_grad(rc.RTRL(max_bytes=20 * J), cell, params, x, y, backend="native")
    want = sequence_grad(rc.RTRL(), cell, params, x, y)
    assert got[0] == pytest.approx(want[0], rel=1e-12)
    for k in want[1]:
        np.testing.assert_allclose(got[1][k], want[1][k], rtol=1e-10, atol=1e-14)
