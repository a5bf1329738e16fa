"""The PTX backend without a GPU: PTX that ptxas accepts, and the host semantics check.

* every zoo cell (and the custom cells) compiles to PTX whose kernels are ``.entry``
  points that ``ptxas`` assembles for sm_80 and sm_90 with no local-memory spills
  (skipped, with the reason, when ``ptxas`` is not on PATH);
* ``runner="host"`` runs the very same kernel bodies and launch plan on this CPU (here with
  one launch per step, ``persistent=False``; the persistent kernel: ``test_ptx_persistent``)
  (each wrapper loops over the thread index): it must match the NumPy oracle to
  float64 rounding, so an indexing bug shows here before any GPU is involved;
* every vector-math function lowers for NVPTX (LLVM aborts the process on an
  unselectable intrinsic, so these run in the isolated child process);
* running on the default CUDA runner without cuda-python/GPU gives the clear error.

The tiled products (shared memory, barriers, split-K atomics) run in the host check too:
the host wrapper emulates a block by running each barrier-free phase as a loop over the
thread ids.  ``test_cuda_*`` (run on a GPU machine: ``-k "cuda or host"``) check the real
thing, tiled and simple, fused and not, at shapes with several tiles and k-splits.
"""
import numpy as np
import pytest
import sympy as sp
from llvmlite import ir

import rnncomp as rc
from rnncomp.backends.llvm import vecmath
from rnncomp.backends.ptx import NO_GPU, NoGPUError
from rnncomp.backends.ptx.codegen import NVPTX_DATALAYOUT, NVPTX_TRIPLE
from rnncomp.backends.ptx.ptxgen import entries, find_ptxas, ptxas, spills, to_ptx
from rnncomp.errors import CompileError

from gradcheck import mask_and_h0, numpy_model, random_data
from test_custom_cells import CUSTOM, jordan_with_xent

needs_ptxas = pytest.mark.skipif(find_ptxas() is None, reason="ptxas (CUDA toolkit) not on PATH")
ZOO = sorted(rc.cells.ZOO)


def _cuda_present():
    from rnncomp.backends.ptx.runtime import cuda_available
    return cuda_available()


# ----------------------------------------------------------------------------- PTX assembles
@needs_ptxas
@pytest.mark.parametrize("persistent", [False, True], ids=["steps", "persistent"])
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("name", ZOO)
def test_zoo_ptx_assembles_without_spills(name, arch, persistent):
    dtype = "float32" if arch == "sm_90" else "float64"
    m = rc.compile(rc.cells.get(name)(64, 256, 16), backend="ptx", dtype=dtype, arch=arch, persistent=persistent)
    names = entries(m.ptx)
    ks = m.plan.kernels.kernels  # the persistent kernel inlines the step kernels: not entries
    assert names and sorted(names) == sorted(k for k, v in ks.items() if v.entry)
    assert sum("_loop" in n for n in names) == (2 if persistent else 0)
    assert ".func" not in m.ptx.replace(".func_", "")  # every kernel is a launchable .entry
    report = ptxas(m.ptx, arch)
    sp_ = spills(report)
    assert set(sp_) == set(names), report[-2000:]
    bad = {k: v for k, v in sp_.items() if any(v)}
    assert not bad, f"local memory (spill stores, spill loads, stack) in {bad}"


@needs_ptxas
@pytest.mark.parametrize("make", CUSTOM, ids=lambda f: f.__name__)
def test_custom_cells_ptx_assembles(make):
    m = rc.compile(make(), backend="ptx", dtype="float64", arch="sm_90")
    assert entries(m.ptx)
    ptxas(m.ptx, "sm_90", verbose=False)


def test_vecmath_lowers_for_nvptx():
    """Every vector-math function, float and double, through the NVPTX code generator."""
    for ty in (ir.FloatType(), ir.DoubleType()):
        m = ir.Module("vm")
        m.triple, m.data_layout = NVPTX_TRIPLE, NVPTX_DATALAYOUT
        for name in sorted(vecmath.SUPPORTED):
            n = vecmath.ARITY[name]
            fn = ir.Function(m, ir.FunctionType(ir.VoidType(), [ty.as_pointer()]), f"k_{name}")
            fn.calling_convention = "ptx_kernel"
            b = ir.IRBuilder(fn.append_basic_block())
            args = [b.load(b.gep(fn.args[0], [ir.IntType(64)(i)])) for i in range(n)]
            b.store(vecmath.emit(b, name, args), fn.args[0])
            b.ret_void()
        ptx = to_ptx(str(m), "sm_80")
        assert sorted(entries(ptx)) == sorted(f"k_{n}" for n in vecmath.SUPPORTED)
        if find_ptxas():
            ptxas(ptx, "sm_80", verbose=False)


def test_llvm_abort_is_a_compile_error_not_a_crash():
    """The child process absorbs LLVM's abort on an unselectable intrinsic."""
    m = ir.Module("bad")
    m.triple, m.data_layout = NVPTX_TRIPLE, NVPTX_DATALAYOUT
    f32 = ir.FloatType()
    fn = ir.Function(m, ir.FunctionType(ir.VoidType(), [f32.as_pointer()]), "k")
    fn.calling_convention = "ptx_kernel"
    b = ir.IRBuilder(fn.append_basic_block())
    exp = ir.Function(m, ir.FunctionType(f32, [f32]), "llvm.exp.f32")
    b.store(b.call(exp, [b.load(fn.args[0])]), fn.args[0])
    b.ret_void()
    try:
        ptx = to_ptx(str(m), "sm_90")
    except CompileError as exc:
        assert "NVPTX" in str(exc)
    else:  # a future LLVM may select it: then it must at least be real PTX
        assert entries(ptx) == ["k"]


def test_ptx_header_and_arch_checks():
    m = rc.compile(rc.cells.elman(3, 4, 2), backend="ptx", arch="sm_80")
    assert ".target sm_80" in m.ptx and ".version 8.5" in m.ptx and ".address_size 64" in m.ptx
    with pytest.raises(CompileError, match="too old"):
        rc.compile(rc.cells.elman(3, 4, 2), backend="ptx", arch="sm_70")
    with pytest.raises(CompileError, match="arch must look like"):
        rc.compile(rc.cells.elman(3, 4, 2), backend="ptx", arch="ampere")


# ----------------------------------------------------------------------------- host semantics check
def compare_host(cell, T=5, B=3, seed=0, targets=None, options=None, **kw):
    params, inputs, tg = random_data(cell, T=T, B=B, seed=seed)
    tg = targets or tg
    l1, g1, h1 = numpy_model(cell).loss_and_grad(params, inputs, tg, **kw)
    model = rc.compile(cell, backend="ptx", runner="host", **({"persistent": False} | (options or {})))
    l2, g2, h2 = model.loss_and_grad(params, inputs, tg, **kw)
    assert l2 == pytest.approx(l1, rel=1e-11)
    assert g2.keys() == g1.keys()
    for k in g1:
        assert np.abs(g2[k] - g1[k]).max() <= 1e-11 * (np.abs(g1[k]).max() + 1e-6), k
    for s in h1:
        np.testing.assert_allclose(h2[s], h1[s], rtol=1e-11, atol=1e-12)
    outs1, fin1 = numpy_model(cell).forward(params, inputs, kw.get("h0"))
    outs2, fin2 = model.forward(params, inputs, kw.get("h0"))
    for o in outs1:
        np.testing.assert_allclose(outs2[o], outs1[o], rtol=1e-11, atol=1e-12)
    for s in fin1:
        np.testing.assert_allclose(fin2[s], fin1[s], rtol=1e-11, atol=1e-12)
    return model


@pytest.mark.parametrize("name", ZOO)
def test_zoo_host_semantics_match_oracle(name):
    compare_host(rc.cells.get(name)(3, 5, 2))


@pytest.mark.parametrize("make", CUSTOM, ids=lambda f: f.__name__)
def test_custom_cells_host_semantics(make):
    targets = None
    if make is jordan_with_xent:
        targets = {"t": np.eye(4)[np.random.default_rng(1).integers(0, 4, (5, 3))]}
    compare_host(make(), targets=targets)


def test_host_semantics_masks_h0_and_shapes():
    cell = rc.cells.lstm(7, 13, 3)
    T, B = 9, 5
    mask, h0 = mask_and_h0(cell, T, B)
    m = compare_host(cell, T=T, B=B, mask=mask, h0=h0)
    # one compiled model serves other (T, B): a new arena and launch list
    params, inputs, targets = random_data(cell, T=2, B=1, seed=4)
    l1, _, _ = numpy_model(cell).loss_and_grad(params, inputs, targets)
    assert m.loss_and_grad(params, inputs, targets)[0] == pytest.approx(l1, rel=1e-12)


@pytest.mark.parametrize("options", [{}, {"tiled": False, "fuse": False}, {"tiled": False}, {"fuse": False}],
                         ids=["tiled-fused", "simple", "simple-fused", "tiled-unfused"])
def test_host_semantics_tiles_splits_and_fallbacks(options):
    """Several output tiles (H=70 > 64), ragged edges, k-splits (T·B = 300 > 256 rows)."""
    cell = rc.cells.lstm(37, 70, 3)
    m = compare_host(cell, T=30, B=10, options=options)
    ks = m.plan.kernels.kernels
    assert any(k.block for k in ks.values()) == options.get("tiled", True)


def test_fusion_cuts_launches_and_keeps_order():
    cell = rc.cells.lstm(8, 16, 3)
    m = rc.compile(cell, backend="ptx")
    fused, plain = m.plan, rc.compile(cell, backend="ptx", fuse=False).plan
    assert len(fused.fwd_step) < len(plain.fwd_step) and len(fused.bwd_step) < len(plain.bwd_step)
    for prog, lf, lp in [(None, fused.fwd_step, plain.fwd_step), (m.bwd.prog, fused.bwd_step, plain.bwd_step)]:
        order = [k for launch in lf for k in launch.computes]
        assert sorted(map(str, order)) == sorted(str(k) for launch in lp for k in launch.computes)
        if prog is not None:  # a topological order: every argument computed in the step comes first
            seen = set()
            for k in order:
                assert all(a in seen for a in prog.nodes[k].args if a in set(order)), k
                seen.add(k)


def test_learned_initial_state_and_float32():
    cell = rc.Cell("learned_h0")
    x, h = cell.input("x", 3), cell.state("h", 4, init="learn")
    cell.update(h, sp.tanh(cell.param("W", (4, 3)) @ x + cell.param("U", (4, 4)) @ h))
    y = cell.output("y", cell.param("V", (2, 4)) @ h.new)
    cell.loss((y - cell.target("t", 2)) ** 2 / 2)
    compare_host(cell)
    params, inputs, targets = random_data(cell, T=6, B=4, dtype="float32")
    l1, g1, _ = numpy_model(cell).loss_and_grad(*(
        {k: v.astype(np.float64) for k, v in d.items()} for d in (params, inputs, targets)))
    l2, g2, _ = rc.compile(cell, backend="ptx", dtype="float32", runner="host").loss_and_grad(
        params, inputs, targets)
    assert l2 == pytest.approx(l1, rel=1e-5)
    for k in g1:
        assert np.abs(g2[k] - g1[k]).max() <= 1e-4 * (np.abs(g1[k]).max() + 1e-6), k


def test_untiled_float32_gradient_sums_run_in_double():
    """``tiled=False`` gives one thread all T·B rows of a gradient sum; summed in float32 that
    lost ~T·B·2⁻²⁴ (7e-6 to 3e-5 of the largest entry here, 1e-2 at T = B = 2,000).  With the
    sum in double, what is left is the float32 δ values' own rounding: ≤ 1.3e-7 measured over
    400,000 rows whose terms share a sign (targets offset by 30), so 1e-6 has 8× room."""
    cell = rc.cells.elman(2, 3, 1)
    params, inputs, targets = random_data(cell, T=1000, B=400, dtype="float32", seed=1)
    targets = {k: v + 30 for k, v in targets.items()}
    f64 = lambda d: {k: v.astype(np.float64) for k, v in d.items()}  # noqa: E731
    _, g1, _ = numpy_model(cell).loss_and_grad(f64(params), f64(inputs), f64(targets))
    m = rc.compile(cell, backend="ptx", dtype="float32", runner="host", tiled=False, persistent=False)
    _, g2, _ = m.loss_and_grad(params, inputs, targets)
    for k in g1:
        assert np.abs(g2[k] - g1[k]).max() <= 1e-6 * np.abs(g1[k]).max(), k


def test_host_runner_compiles_a_deep_parameter_chain():
    """Found by the long fuzz run (chunk 16: ``asin(0.9·tanh(p)) + 0.4`` in a fuzzed cell): a
    kernel recomputes a parameter-only chain for every element, from loads LLVM may not hoist
    out of the host wrapper's loop (an output may alias p).  With loop interleaving, LLVM 22's
    vectoriser took time exponential in the chain's depth (this cell 25 s, tanh(tanh(p)) 17 s,
    the fuzzed cell's > 12 min; docs/gpu.md, "The host runner's compile"), so the host runner
    compiles without unrolling or interleaving, as the native backend's cell code does."""
    assert not rc.compile(rc.cells.elman(2, 3, 1), backend="ptx", runner="host").runner.lib.unroll
    cell = rc.Cell("deep_param_chain")
    x, h = cell.input("x", 1), cell.state("h", 1)
    cell.update(h, sp.tanh(h + x + sp.asin(0.9 * sp.tanh(cell.param("p", 1))) + 0.4))
    cell.loss(h.new ** 2)
    for persistent in (False, True):
        compare_host(cell, options={"persistent": persistent})


# ----------------------------------------------------------------------------- no GPU
@pytest.mark.skipif(_cuda_present(), reason="a CUDA GPU is present: the no-GPU error cannot be shown")
def test_running_without_gpu_is_a_clear_error():
    cell = rc.cells.elman(3, 4, 2)
    m = rc.compile(cell, backend="ptx")
    assert ".entry" in m.ptx  # compiling needs no GPU
    params, inputs, targets = random_data(cell)
    with pytest.raises(NoGPUError, match="no CUDA GPU/driver found"):
        m.loss_and_grad(params, inputs, targets)
    with pytest.raises(CompileError, match="backend='ptx' can compile"):
        m.forward(params, inputs)
    assert NO_GPU.startswith("no CUDA GPU/driver found")


# ----------------------------------------------------------------------------- on a GPU (skipped here)
@pytest.mark.skipif(not _cuda_present(), reason="no CUDA GPU/driver or cuda-python in this process")
@pytest.mark.parametrize("name", ["lstm", "gru", "jordan"])
def test_cuda_matches_oracle(name):
    cell = rc.cells.get(name)(3, 5, 2)
    params, inputs, targets = random_data(cell, T=7, B=4)
    l1, g1, h1 = numpy_model(cell).loss_and_grad(params, inputs, targets)
    for graphs in (True, False):
        m = rc.compile(cell, backend="ptx", graphs=graphs, persistent=False)
        l2, g2, h2 = m.loss_and_grad(params, inputs, targets)
        assert l2 == pytest.approx(l1, rel=1e-11)
        for k in g1:
            assert np.abs(g2[k] - g1[k]).max() <= 1e-11 * (np.abs(g1[k]).max() + 1e-6), k
        for s in h1:
            np.testing.assert_allclose(h2[s], h1[s], rtol=1e-11, atol=1e-12)


@pytest.mark.skipif(not _cuda_present(), reason="no CUDA GPU/driver or cuda-python in this process")
@pytest.mark.parametrize("options", [{}, {"tiled": False, "fuse": False}], ids=["tiled-fused", "simple"])
@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_cuda_tiles_and_splits_match_oracle(name, options):
    """Several output tiles, ragged edges and k-splits with atomics (T·B = 600 rows), float64."""
    cell = rc.cells.get(name)(37, 70, 3)
    params, inputs, targets = random_data(cell, T=30, B=20)
    l1, g1, h1 = numpy_model(cell).loss_and_grad(params, inputs, targets)
    m = rc.compile(cell, backend="ptx", persistent=False, **options)
    l2, g2, h2 = m.loss_and_grad(params, inputs, targets)
    assert l2 == pytest.approx(l1, rel=1e-10)
    for k in g1:
        assert np.abs(g2[k] - g1[k]).max() <= 1e-10 * (np.abs(g1[k]).max() + 1e-6), k
    for s in h1:
        np.testing.assert_allclose(h2[s], h1[s], rtol=1e-10, atol=1e-12)
