"""The persistent kernel of the PTX backend (``persistent=True``): one launch per pass.

* the host runner (the very kernels and plan, on this CPU; a block is a loop over its
  rows' elements) matches the NumPy oracle to float64 rounding (1e-11) for every zoo
  and custom cell, stack on and off, with masks, h0, learned initial states, no
  hoisting, other (T, B) on one model and blocks that own several rows; float32 within
  the float32 tolerance of ``test_ptx_stacking`` (1e-5 loss, 1e-4 of each gradient's
  largest entry);
* the plan: one launch per pass for the steps, the step kernels inlined (not entries),
  every step product reading a transposed weight built once per call;
* the PTX assembles for sm_80 and sm_90 without spills (the zoo: ``test_ptx``, both modes);
* on a GPU machine: the real thing against the oracle in float64.
"""
import numpy as np
import pytest

import rnncomp as rc
from rnncomp.backends.ptx import persistent as pers
from rnncomp.backends.ptx.launches import split_factor
from rnncomp.backends.ptx.ptxgen import entries, find_ptxas, ptxas, spills
from rnncomp.errors import CompileError

from gradcheck import mask_and_h0, numpy_model, random_data
from test_custom_cells import CUSTOM
from test_ptx_stacking import _targets, gated_learned_init

needs_ptxas = pytest.mark.skipif(find_ptxas() is None, reason="ptxas (CUDA toolkit) not on PATH")
ZOO = sorted(rc.cells.ZOO)


def check(cell, T=5, B=3, targets=None, runner="host", tol=1e-11, model=None, **options):
    params, inputs, tg = random_data(cell, T=T, B=B, seed=1)
    tg = targets or tg
    kw = {k: options.pop(k) for k in ("mask", "h0") if k in options}
    l1, g1, h1 = numpy_model(cell).loss_and_grad(params, inputs, tg, **kw)
    m = model or rc.compile(cell, backend="ptx", runner=runner, **({"persistent": True} | options))
    l2, g2, h2 = m.loss_and_grad(params, inputs, tg, **kw)
    assert l2 == pytest.approx(l1, rel=tol)
    assert g2.keys() == g1.keys()
    for k in g1:
        assert np.abs(g2[k] - g1[k]).max() <= tol * (np.abs(g1[k]).max() + 1e-6), k
    for s in h1:
        np.testing.assert_allclose(h2[s], h1[s], rtol=tol, atol=tol / 10)
    o1, f1 = numpy_model(cell).forward(params, inputs, kw.get("h0"))
    o2, f2 = m.forward(params, inputs, kw.get("h0"))
    for o in o1:
        np.testing.assert_allclose(o2[o], o1[o], rtol=tol, atol=tol / 10)
    for s in f1:
        np.testing.assert_allclose(f2[s], f1[s], rtol=tol, atol=tol / 10)
    return m


@pytest.mark.parametrize("stack", [True, False], ids=["stack", "nostack"])
@pytest.mark.parametrize("name", ZOO)
def test_zoo_persistent_matches_oracle(name, stack):
    m = check(rc.cells.get(name)(3, 5, 2), stack=stack)
    assert m.plan.fwd_loop is not None and m.plan.bwd_loop is not None


@pytest.mark.parametrize("make", CUSTOM, ids=lambda f: f.__name__)
def test_custom_cells_persistent(make):
    check(make(), targets=_targets(make, 5, 3))


def test_masks_h0_other_shapes_and_no_hoisting():
    cell = rc.cells.lstm(7, 13, 3)
    T, B = 9, 5
    mask, h0 = mask_and_h0(cell, T, B)
    m = check(cell, T=T, B=B, mask=mask, h0=h0)
    check(cell, T=2, B=1, model=m)      # the same model, another arena
    check(cell, T=11, B=7, model=m)
    m = check(cell, T=4, B=3, hoist=False)
    assert not m.plan.fwd_static


def test_learned_initial_state_and_float32():
    check(gated_learned_init(), T=4, B=3)
    cell = rc.cells.gru(4, 6, 2)
    params, inputs, targets = random_data(cell, T=6, B=4, dtype="float32")
    up = lambda d: {k: v.astype(np.float64) for k, v in d.items()}  # noqa: E731
    l1, g1, _ = numpy_model(cell).loss_and_grad(up(params), up(inputs), up(targets))
    m = rc.compile(cell, backend="ptx", dtype="float32", runner="host", persistent=True)
    l2, g2, _ = m.loss_and_grad(params, inputs, targets)
    assert l2 == pytest.approx(l1, rel=1e-5)
    for k in g1:
        assert np.abs(g2[k] - g1[k]).max() <= 1e-4 * (np.abs(g1[k]).max() + 1e-6), k


def test_blocks_owning_several_rows():
    """The kernel splits the batch over any grid: ⌈B/N⌉ rows a block, the last one short."""
    cell = rc.cells.gru(4, 6, 2)
    m = rc.compile(cell, backend="ptx", runner="host", persistent=True)
    for loop in (m.plan.fwd_loop, m.plan.bwd_loop):
        m.plan.kernels.kernels[loop.kernel].size = lambda R: (R + 1) // 2
    check(cell, T=6, B=5, model=m)
    assert m._arena["fwd"][-1][1] == 3  # 3 blocks: rows [0, 2), [2, 4), [4, 5)


def test_forward_only_cell():
    cell = rc.Cell("no_loss")
    x, h = cell.input("x", 3), cell.state("h", 4)
    cell.update(h, rc.sigmoid(cell.param("W", (4, 3)) @ x + cell.param("U", (4, 4)) @ h))
    cell.output("y", cell.param("V", (2, 4)) @ h.new)
    params, inputs, _ = random_data(cell, T=5, B=3)
    o1, f1 = numpy_model(cell).forward(params, inputs)
    m = rc.compile(cell, backend="ptx", runner="host", persistent=True)
    assert m.plan.fwd_loop is not None and m.plan.bwd_loop is None
    o2, f2 = m.forward(params, inputs)
    np.testing.assert_allclose(o2["y"], o1["y"], rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(f2["h"], f1["h"], rtol=1e-12, atol=1e-13)


# ----------------------------------------------------------------------------- the plan
@pytest.mark.parametrize("stack", [True, False], ids=["stack", "nostack"])
def test_plan_one_launch_per_pass(stack):
    cell = rc.cells.lstm(8, 16, 3)
    m = rc.compile(cell, backend="ptx", runner="host", persistent=True, stack=stack)
    P, ks = m.plan, m.plan.kernels.kernels
    params, inputs, targets = random_data(cell, T=6, B=2)
    m.loss_and_grad(params, inputs, targets)
    n_fwd, n_bwd = m._arena["launches"]
    assert n_fwd == len(P.fwd_prologue) + len(P.fwd_static) + 1  # no launch per step
    assert n_bwd == len(P.bwd_prologue) + 1 + len(P.bwd_grads)
    step_kernels = {x.kernel for x in P.fwd_step + P.bwd_step}
    assert not any(ks[k].entry for k in step_kernels)
    assert all(ks[k].per_row and not ks[k].block for k in step_kernels)
    # the step products read transposed copies (coalesced), never the weight they copy
    n_prod, n_split = 0, 0
    for prog, launches in [(P.fwd_prog, P.fwd_step), (P.bwd_prog, P.bwd_step)]:
        for i, x in enumerate(launches):
            kind = ks[x.kernel].kind
            if kind in ("matvec", "mvpart"):
                key = x.computes[0] if kind == "matvec" else launches[i + 1].computes[0]
                terms = prog.nodes[key].attrs["terms"]
                assert [a[0] for a in x.args[1:-1]] == [p if tr else P.transposed[p] for p, tr, _ in terms]
                n_prod += 1
            if kind == "mvpart":  # split-k: the partial sums, then their sum into the node's value
                nxt = launches[i + 1]
                assert ks[nxt.kernel].kind == "mvsum" and nxt.args[0] == x.args[-1] and not x.computes
                assert ks[x.kernel].per_row == ks[nxt.kernel].per_row * split_factor(
                    prog.node(x.args[0]).size, prog.nodes[key].size)
                n_split += 1
    assert n_prod >= 4 and (n_split >= 1 or not stack)  # stacked δh = [U]ᵀ·δa: 64 deep, 16 wide: 4 chunks
    built = {x.computes[0][0] for x in P.fwd_prologue + P.bwd_prologue}
    assert set(P.transposed.values()) <= built and P.transposed
    assert sorted(entries(m.ptx)) == sorted(k for k, v in ks.items() if v.entry)
    assert "persistent launch per pass" in P.summary()
    # the loop computes what the step launches compute, in their order
    assert P.fwd_loop.computes == tuple(k for x in P.fwd_step for k in x.computes)


def test_split_factor():
    assert split_factor(512, 128) == 8      # LSTM H=128 backward: δh = [U]ᵀ·δa
    assert split_factor(128, 4) == 8        # an output layer: 4 wide, 128 deep
    assert split_factor(128, 512) == 1      # [U]·h at H=128: 2 chunks would not pay
    assert split_factor(4096, 4) == 64      # at most 64 chunks
    assert split_factor(40, 4) == 1         # too shallow to split


def test_too_many_pointers_is_a_clear_error_or_the_per_step_plan(monkeypatch):
    monkeypatch.setattr(pers, "MAX_POINTERS", 12)
    with pytest.raises(CompileError, match="persistent=False"):
        rc.compile(rc.cells.lstm(3, 4, 2), backend="ptx", persistent=True)
    # the default falls back to exactly the plan of persistent=False (tiled step products)
    auto = check(rc.cells.lstm(3, 4, 2), persistent=None)
    off = rc.compile(rc.cells.lstm(3, 4, 2), backend="ptx", persistent=False).plan
    P = auto.plan
    assert P.fwd_loop is None and P.bwd_loop is None and not P.transposed
    assert all(k.entry for k in P.kernels.kernels.values())
    assert [P.kernels.kernels[x.kernel].kind for x in P.fwd_step + P.bwd_step] == \
        [off.kernels.kernels[x.kernel].kind for x in off.fwd_step + off.bwd_step]
    assert any(P.kernels.kernels[x.kernel].block for x in P.fwd_step)  # tiled, as persistent=False


# ----------------------------------------------------------------------------- on a GPU (skipped here)
def _cuda_present():
    from rnncomp.backends.ptx.runtime import cuda_available
    return cuda_available()


@pytest.mark.skipif(not _cuda_present(), reason="no CUDA GPU/driver or cuda-python in this process")
@pytest.mark.parametrize("graphs, cluster", [(True, None), (False, None), (True, 1), (True, 8)],
                         ids=["auto", "launches", "nocluster", "cluster8"])
@pytest.mark.parametrize("name", ["lstm", "gru", "softsign_lstm"])
def test_cuda_persistent_matches_oracle(name, graphs, cluster):
    """float64 on the GPU: T·B = 600 rows, a block (or a cluster of blocks: auto picks 2 here,
    and 8 blocks share 280-wide rows) per sample, tiled hoisted and gradient GEMMs."""
    check(rc.cells.get(name)(37, 70, 3), T=30, B=20, runner="cuda", tol=1e-10, graphs=graphs,
          persistent_cluster=cluster)


# ----------------------------------------------------------------------------- staged calls
def test_results_are_fresh_arrays_and_calls_independent():
    """A call copies through one staging buffer: results must not alias it, and a forward
    call (target slots zeroed on the device) between training calls changes nothing."""
    cell = rc.cells.lstm(3, 5, 2)
    m = rc.compile(cell, backend="ptx", runner="host")
    d1, d2 = random_data(cell, T=4, B=3, seed=1), random_data(cell, T=4, B=3, seed=2)
    l1, g1, h1 = m.loss_and_grad(*d1)
    keep = (l1, {k: v.copy() for k, v in g1.items()}, {k: v.copy() for k, v in h1.items()})
    outs, fin = m.forward(d2[0], d2[1])
    l2, g2, _ = m.loss_and_grad(*d2)
    for k in g1:
        np.testing.assert_array_equal(g1[k], keep[1][k])  # untouched by the later calls
    for s in h1:
        np.testing.assert_array_equal(h1[s], keep[2][s])
    assert m.loss_and_grad(*d1)[0] == l1 and l2 != l1
    ref_outs, ref_fin = numpy_model(cell).forward(d2[0], d2[1])
    np.testing.assert_allclose(outs["y"], ref_outs["y"], rtol=1e-12, atol=1e-13)
    outs["y"][...] = 0  # the caller owns it
    assert np.abs(m.forward(d2[0], d2[1])[0]["y"]).max() > 0


# ----------------------------------------------------------------------------- launch shape
def test_block_and_cluster_choice():
    """pick_block: the widest block with every block resident; pick_cluster: split a sample
    over up to 8 blocks only while the batch leaves multiprocessors idle."""
    occ = {1024: 1, 512: 3, 256: 6, 128: 12, 64: 24}.__getitem__  # 40 registers a thread
    assert pers.pick_block(512, 32, 132, occ) == 512
    assert pers.pick_block(512, 512, 132, occ) == 256        # 3 × 132 < 512: a second wave
    assert pers.pick_block(2048, 64, 132, occ) == 1024
    assert pers.pick_block(100, 8, 132, occ) == 128          # one thread per element, whole warps
    assert pers.pick_block(512, 10 ** 6, 132, occ) == 256    # nothing fits at once
    assert pers.pick_cluster(2048, 64, 132) == 2 and pers.pick_cluster(2048, 100, 132) == 1
    assert pers.pick_cluster(8192, 8, 132) == 8 and pers.pick_cluster(8192, 32, 132) == 4
    assert pers.pick_cluster(1536, 8, 132) == 1              # at least 1024 elements a block
    assert pers.pick_cluster(512, 32, 132) == 1


@needs_ptxas
def test_clusters_only_from_sm_90():
    cell = rc.cells.gru(8, 16, 2)
    m90 = rc.compile(cell, backend="ptx", dtype="float32", arch="sm_90")
    m80 = rc.compile(cell, backend="ptx", dtype="float32", arch="sm_80")
    one = rc.compile(cell, backend="ptx", dtype="float32", arch="sm_90", persistent_cluster=1)
    assert "barrier.cluster.arrive" in m90.ptx and "%cluster_ctarank" in m90.ptx
    assert "barrier.cluster" not in m80.ptx and "barrier.cluster" not in one.ptx
    assert "bar.sync" in m90.ptx  # a launch without clusters synchronises the block only
    for m in (m90, m80):
        assert not any(any(v) for v in spills(ptxas(m.ptx, m.arch)).values())


def test_memory_is_given_back(monkeypatch):
    """close() (and a failed arena build) free the device arena and the staging buffer; the
    model keeps working after close(); bad launch options are refused up front."""
    cell = rc.cells.gru(3, 4, 2)
    m = rc.compile(cell, backend="ptx", runner="host")
    data = random_data(cell, T=3, B=2)
    l1 = m.loss_and_grad(*data)[0]
    r = m.runner
    assert len(r._arrays) == 2  # the arena and the staging buffer
    m.loss_and_grad(*random_data(cell, T=5, B=3))  # another (T, B): the old ones are freed
    assert len(r._arrays) == 2
    m.close()
    assert not r._arrays
    with m:
        assert m.loss_and_grad(*data)[0] == l1
    assert not r._arrays
    monkeypatch.setattr(r, "prepare", lambda ops: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        m.loss_and_grad(*data)
    assert not r._arrays and m._arena is None
    for bad in ({"persistent_block": 100}, {"persistent_block": 2048}, {"persistent_cluster": 9},
                {"persistent_cluster": 2, "arch": "sm_80"}):
        with pytest.raises(ValueError, match="persistent_"):
            rc.compile(cell, backend="ptx", **bad)
