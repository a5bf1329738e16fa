"""Pass "stack" in the PTX backend (``stack=True``, default): fewer launches, same values.

Run with one launch per step (``persistent=False``); stack on and off with the persistent
kernel: ``test_ptx_persistent``.

* the host semantics runner (``runner="host"``: the very kernels and launch plan, on this
  CPU) with stack on and off agrees with the NumPy oracle for every zoo cell and every
  custom cell, in float32 against the float64 oracle on the same float32-rounded data
  (loss 1e-5 relative, each gradient 1e-4 of its largest entry, outputs and states 1e-4:
  the tolerance of ``test_ptx.test_learned_initial_state_and_float32``), and stack on and
  off agree with each other to float64 rounding (1e-11) on the edge cases of the pass:
  columns stacked (transposed products), a sum of products in the forward step, a learned
  initial state whose adjoint lives in a stacked product, several tiles and k-splits;
* the plan: one product launch per group, members of a whole cost no launch, one gradient
  launch per gradient group, the stacked weights built once per call; LSTM and GRU launch
  fewer kernels per step;
* the PTX of stacked plans assembles with ``ptxas`` for sm_80 and sm_90 without spills.
"""
import numpy as np
import pytest
import sympy as sp

import rnncomp as rc
from rnncomp.backends.ptx.launches import resolve_args
from rnncomp.backends.ptx.ptxgen import entries, find_ptxas, ptxas, spills

from gradcheck import numpy_model, random_data
from test_custom_cells import CUSTOM, jordan_with_xent
from test_stacking import sum_of_products_forward, transposed_and_mixed

needs_ptxas = pytest.mark.skipif(find_ptxas() is None, reason="ptxas (CUDA toolkit) not on PATH")
ZOO = sorted(rc.cells.ZOO)


def _targets(make, T, B):
    if make is jordan_with_xent:
        return {"t": np.eye(4)[np.random.default_rng(1).integers(0, 4, (T, B))]}
    return None


def compare_f32(cell, T=5, B=3, targets=None):
    """stack on and off, float32 host runner vs the float64 oracle on the rounded data."""
    params, inputs, tg = random_data(cell, T=T, B=B, seed=2, dtype="float32")
    tg = {k: v.astype(np.float32) for k, v in (targets or tg).items()}
    up = lambda d: {k: v.astype(np.float64) for k, v in d.items()}  # noqa: E731
    oracle = numpy_model(cell)
    l1, g1, h1 = oracle.loss_and_grad(up(params), up(inputs), up(tg))
    o1, _ = oracle.forward(up(params), up(inputs))
    got = {}
    for stack in (True, False):
        m = rc.compile(cell, backend="ptx", dtype="float32", runner="host", stack=stack, persistent=False)
        l2, g2, h2 = got[stack] = m.loss_and_grad(params, inputs, tg)
        assert l2 == pytest.approx(l1, rel=1e-5), f"stack={stack}"
        assert g2.keys() == g1.keys()
        for k in g1:
            assert np.abs(g2[k] - g1[k]).max() <= 1e-4 * (np.abs(g1[k]).max() + 1e-6), (stack, k)
        for s in h1:
            np.testing.assert_allclose(h2[s], h1[s], rtol=1e-4, atol=1e-4, err_msg=f"stack={stack} {s}")
        o2, _ = m.forward(params, inputs)
        for o in o1:
            np.testing.assert_allclose(o2[o], o1[o], rtol=1e-4, atol=1e-4, err_msg=f"stack={stack} {o}")
    return got


def compare_on_off_f64(cell, T=5, B=3, **options):
    """stack on vs off (and the oracle), float64: the same values up to rounding."""
    params, inputs, tg = random_data(cell, T=T, B=B, seed=5)
    l1, g1, h1 = numpy_model(cell).loss_and_grad(params, inputs, tg)
    models = {}
    for stack in (True, False):
        m = models[stack] = rc.compile(cell, backend="ptx", runner="host", stack=stack,
                                       **({"persistent": False} | options))
        l2, g2, h2 = m.loss_and_grad(params, inputs, tg)
        assert l2 == pytest.approx(l1, rel=1e-11)
        for k in g1:
            assert np.abs(g2[k] - g1[k]).max() <= 1e-11 * (np.abs(g1[k]).max() + 1e-6), (stack, k)
        for s in h1:
            np.testing.assert_allclose(h2[s], h1[s], rtol=1e-11, atol=1e-12)
    return models


@pytest.mark.parametrize("name", ZOO)
def test_zoo_stack_on_off_match_oracle_float32(name):
    compare_f32(rc.cells.get(name)(3, 5, 2))


@pytest.mark.parametrize("make", CUSTOM, ids=lambda f: f.__name__)
def test_custom_cells_stack_on_off_match_oracle_float32(make):
    compare_f32(make(), targets=_targets(make, 5, 3))


# ----------------------------------------------------------------------------- edge cases of the pass
def gated_learned_init():
    """A GRU-like cell with a learned initial state: δh[-1] is read from the stacked product."""
    cell = rc.Cell("gated_h0")
    x, h = cell.input("x", 3), cell.state("h", 5, init="learn")
    z = rc.sigmoid(cell.param("Wz", (5, 3)) @ x + cell.param("Uz", (5, 5)) @ h)
    n = sp.tanh(cell.param("Wn", (5, 3)) @ x + cell.param("Un", (5, 5)) @ h)
    cell.update(h, z * h + (1 - z) * n)
    y = cell.output("y", cell.param("V", (2, 5)) @ h.new)
    cell.loss((y - cell.target("target", 2)) ** 2 / 2)
    return cell




def test_columns_stacked_transposed_products():
    models = compare_on_off_f64(transposed_and_mixed())
    assert any(s.axis == 1 for s in models[True].plan.stacks.values())


def test_sum_of_products_in_the_forward_step():
    models = compare_on_off_f64(sum_of_products_forward())
    assert any(n.op == "stackv" for n in models[True].plan.fwd_prog.nodes.values())


def test_learned_initial_state_read_through_a_stacked_product():
    models = compare_on_off_f64(gated_learned_init(), T=4, B=3)
    assert models[True].plan.stacks


@pytest.mark.parametrize("options", [{}, {"tiled": False, "fuse": False}], ids=["tiled-fused", "simple"])
def test_several_tiles_and_splits_stack_on_off(options):
    """Stacked rows of width 4·70 = 280 (several tiles, ragged), k-splits over T·B = 300 rows
    in the grouped gradient products, strided members read by tiled and simple kernels."""
    compare_on_off_f64(rc.cells.lstm(37, 70, 3), T=30, B=10, **options)


def test_not_hoisted_input_products_stack_in_the_loop():
    models = compare_on_off_f64(rc.cells.lstm(3, 5, 2), hoist=False)
    assert not models[True].plan.fwd_static and len(models[True].plan.stacks) == 3


def test_masks_h0_and_other_shapes_stacked():
    cell = rc.cells.gru(4, 6, 2)
    T, B = 7, 4
    params, inputs, targets = random_data(cell, T=T, B=B, seed=6)
    mask = (np.random.default_rng(7).random((T, B)) > 0.4).astype(float)
    mask[0, 0] = 1
    h0 = {"h": np.random.default_rng(8).normal(size=(B, 6))}
    ref = numpy_model(cell).loss_and_grad(params, inputs, targets, h0=h0, mask=mask)
    m = rc.compile(cell, backend="ptx", runner="host", persistent=False)
    got = m.loss_and_grad(params, inputs, targets, h0=h0, mask=mask)
    assert got[0] == pytest.approx(ref[0], rel=1e-11)
    for k in ref[1]:
        assert np.abs(got[1][k] - ref[1][k]).max() <= 1e-11 * (np.abs(ref[1][k]).max() + 1e-6), k
    p2, i2, t2 = random_data(cell, T=2, B=1, seed=9)  # the same model, another arena
    assert m.loss_and_grad(p2, i2, t2)[0] == pytest.approx(numpy_model(cell).loss_and_grad(p2, i2, t2)[0],
                                                           rel=1e-11)


# ----------------------------------------------------------------------------- the plan
@pytest.mark.parametrize("name, fwd_bwd", [("lstm", (5, 4)), ("gru", (7, 7))])
def test_fewer_launches_per_step(name, fwd_bwd):
    cell = rc.cells.get(name)(8, 16, 3)
    on = rc.compile(cell, backend="ptx", persistent=False).plan
    off = rc.compile(cell, backend="ptx", stack=False, persistent=False).plan
    assert on.per_step() == fwd_bwd
    assert on.per_step()[0] < off.per_step()[0] and on.per_step()[1] < off.per_step()[1]
    assert len(on.bwd_grads) < len(off.bwd_grads) and len(on.fwd_static) < len(off.fwd_static)
    # one product per step for the recurrent gates, forward and backward
    ks = on.kernels.kernels
    prods = lambda launches: [x for x in launches if ks[x.kernel].kind == "matvec"]  # noqa: E731
    n_prod = 2 if name == "lstm" else 3  # [U]·h (GRU: and Un·(r∘h)), V·h; backward: their transposes
    assert len(prods(on.fwd_step)) == n_prod and len(prods(on.bwd_step)) == n_prod
    # the stacked weights are built once per call, not per step
    assert {x.computes[0][0] for x in on.fwd_prologue + on.bwd_prologue} == set(on.stacks)
    assert all(ks[x.kernel].kind == "stackw" for x in on.fwd_prologue + on.bwd_prologue)
    assert not any(ks[x.kernel].kind == "stackw" for x in on.fwd_step + on.bwd_step)
    # the gates' gradients: one launch per group (biases, input weights, recurrent weights)
    gates = 4 if name == "lstm" else 2
    assert [len(g[2]) for g in on.grad_groups] == [gates] * 3


def test_launch_order_is_topological_and_members_cost_nothing():
    for stack in (True, False):
        plan = rc.compile(rc.cells.lstm(8, 16, 3), backend="ptx", stack=stack, persistent=False).plan
        for prog, launches in [(plan.fwd_prog, plan.fwd_static + plan.fwd_step), (plan.bwd_prog, plan.bwd_step)]:
            order = [k for x in launches for k in x.computes]
            assert len(order) == len(set(order))
            want = {k for k, n in prog.nodes.items()
                    if n.op not in ("input", "target", "param", "state", "seed", "view", "stackv")}
            assert set(order) == want - set(plan.aliases)
            done = set()
            for k in order:
                assert set(resolve_args(prog, k, set(order), plan.aliases)) <= done, k
                done.add(k)
        L = plan.layout
        for key, (whole, col, width) in plan.views.items():
            assert L.where[key][0] == L.where[whole][0] and L.where[key][2] == col and L.ld(key) == width


# ----------------------------------------------------------------------------- on a GPU (skipped here)
def _cuda_present():
    from rnncomp.backends.ptx.runtime import cuda_available
    return cuda_available()


@pytest.mark.skipif(not _cuda_present(), reason="no CUDA GPU/driver or cuda-python in this process")
@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_cuda_stack_on_off_match_oracle(name):
    """On the GPU, float64: several tiles, k-splits with atomics (T·B = 600), graphs on."""
    cell = rc.cells.get(name)(37, 70, 3)
    params, inputs, targets = random_data(cell, T=30, B=20, seed=5)
    l1, g1, h1 = numpy_model(cell).loss_and_grad(params, inputs, targets)
    for stack in (True, False):
        l2, g2, h2 = rc.compile(cell, backend="ptx", stack=stack, persistent=False).loss_and_grad(
            params, inputs, targets)
        assert l2 == pytest.approx(l1, rel=1e-10)
        for k in g1:
            assert np.abs(g2[k] - g1[k]).max() <= 1e-10 * (np.abs(g1[k]).max() + 1e-6), (stack, k)
        for s in h1:
            np.testing.assert_allclose(h2[s], h1[s], rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- ptxas
@needs_ptxas
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("make, stack", [(lambda: rc.cells.lstm(256, 512, 16), True),
                                         (lambda: rc.cells.lstm(64, 256, 16), False),
                                         (lambda: rc.cells.gru(64, 256, 16), False),
                                         (transposed_and_mixed, True)],
                         ids=["lstm512-stacked", "lstm-unstacked", "gru-unstacked", "columns-stacked"])
def test_ptx_assembles_without_spills(make, stack, arch):
    dtype = "float32" if arch == "sm_90" else "float64"
    m = rc.compile(make(), backend="ptx", dtype=dtype, arch=arch, stack=stack, persistent=False)
    names = entries(m.ptx)
    assert names and sorted(names) == sorted(m.plan.kernels.kernels)
    sp_ = spills(ptxas(m.ptx, arch))
    assert set(sp_) == set(names)
    bad = {k: v for k, v in sp_.items() if any(v)}
    assert not bad, f"local memory (spill stores, spill loads, stack) in {bad}"
