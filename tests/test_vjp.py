"""Gradients in and out (``model.vjp``, ``forward(keep=True)`` + ``backward``) on every backend.

Each fuzzed cell and call is checked five ways:

1. the rolled NumPy VJP == the VJP of the *unfolded* graph (one reverse walk, no loop,
   no carried adjoints: ``unrolled_vjp``), to 1e-11 relative;
2. the NumPy VJP == central finite differences (float64) of
   J = [loss] + Σ_t Σ ⟨δy[t], y[t]⟩ + Σ ⟨δh_T, h[T]⟩ in a random direction of the inputs,
   of the initial states and of each parameter (``gradcheck``'s tolerances, rtol 1e-6 /
   atol 1e-8, with Richardson extrapolation where truncation dominates);
3. two chained chunks (the second's δh[0] is the first's ``d_final``) == the whole sequence;
4. native float64 (random options) == NumPy to 1e-10 of each result's scale;
5. native float32 == the float64 oracle on the same float32-rounded data, within
   max(2e-4, 30 × the error of NumPy's own float32 VJP) of each result's scale.
"""
from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
from hypothesis import given, settings, strategies as st

import rnncomp as rc
from rnncomp.backends.numpy import unrolled_vjp
from rnncomp.backends.validate import initial_states, check_call
from rnncomp.errors import CallError

from fuzzgen import calls, fuzz_cells, fuzz_data
from gradcheck import ATOL, EPS, RTOL

KINK_MARGIN = 1e-4


def _rel(a, ref):
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    d = np.abs(a - ref).max() if a.size else 0.0
    return 0.0 if d == 0 else d / max(np.abs(ref).max(), 1e-300)


def _results(res):
    """Every array of a Gradients, keyed by where it came from."""
    out = {("param", k): v for k, v in res.params.items()}
    out.update({("input", k): v for k, v in res.inputs.items()})
    out.update({("h0", k): v for k, v in res.h0.items()})
    return out


def assert_same(got, ref, rtol, what, floor=1e-13):
    a, b = _results(got), _results(ref)
    assert a.keys() == b.keys(), f"{what}: {sorted(a)} vs {sorted(b)}"
    big = max([np.abs(v).max() for v in b.values() if v.size] + [1e-300])
    for k in b:
        err = np.abs(np.asarray(a[k], np.float64) - b[k]).max() if b[k].size else 0.0
        assert err <= rtol * np.abs(b[k]).max() + floor * big, f"{what}: {k}: error {err:.3g}"
    if ref.loss is None:
        assert got.loss is None
    else:
        assert abs(got.loss - ref.loss) <= rtol * abs(ref.loss) + 1e-300, f"{what}: loss"


def cotangents(cell, T, B, seed, which_out, which_state):
    rng = np.random.default_rng(seed + 7)
    st_ = cell.step
    outs = [o for i, o in enumerate(st_.outputs) if which_out >> i & 1]
    states = [s for i, s in enumerate(st_.states) if which_state >> i & 1]
    d_out = {o: rng.normal(size=(T, B, st_.outputs[o])) for o in outs}
    d_fin = {s: rng.normal(size=(B, st_.states[s])) for s in states}
    return d_out, d_fin


def objective(model, params, inputs, h0, targets, mask, d_out, d_fin):
    """J = [loss] + Σ⟨δy, y⟩ + Σ⟨δh_T, h_T⟩: its gradient is what vjp returns."""
    outs, fin = model.forward(params, inputs, h0)
    J = sum(float((outs[o] * d).sum()) for o, d in d_out.items())
    J += sum(float((fin[s] * d).sum()) for s, d in d_fin.items())
    if targets is not None:
        J += model.loss_and_grad(params, inputs, targets, h0, mask)[0]
    return J


def check_fd(model, params, inputs, h0, targets, mask, d_out, d_fin, res, seed):
    """Directional central differences: the inputs, the initial states, each parameter."""
    rng = np.random.default_rng(seed + 11)
    groups = [("inputs", inputs, res.inputs), ("h0", h0, res.h0)]
    groups += [("param", {p: v}, {p: res.params[p]}) for p, v in params.items()]
    for kind, values, grads in groups:
        d = {k: rng.normal(size=v.shape) for k, v in values.items()}
        an = sum(float((grads[k] * d[k]).sum()) for k in values)

        def J(eps):
            moved = {k: v + eps * d[k] for k, v in values.items()}
            p = dict(params, **moved) if kind == "param" else params
            x = moved if kind == "inputs" else inputs
            h = moved if kind == "h0" else h0
            return objective(model, p, x, h, targets, mask, d_out, d_fin)

        fd = (J(EPS) - J(-EPS)) / (2 * EPS)
        if abs(fd - an) > ATOL + RTOL * abs(fd):  # truncation? Richardson, then judge
            fd = (4 * (J(EPS / 2) - J(-EPS / 2)) / EPS - fd) / 3
        assert abs(fd - an) <= ATOL + RTOL * abs(fd), f"{kind}: finite difference {fd} vs vjp {an}"


def check_chained(model, params, inputs, h0, d_out, d_fin, whole, cut, rtol=1e-11, floor=1e-13, what=""):
    """Two chunks chained by hand give the whole sequence's VJP (no loss: it is a per-call mean)."""
    a = {k: v[:cut] for k, v in inputs.items()}
    b = {k: v[cut:] for k, v in inputs.items()}
    _, mid = model.forward(params, a, h0)
    second = model.vjp(params, b, mid, d_outputs={o: v[cut:] for o, v in d_out.items()}, d_final=d_fin)
    first = model.vjp(params, a, h0, d_outputs={o: v[:cut] for o, v in d_out.items()}, d_final=second.h0)
    chained = rc.backends.vjp.Gradients(
        {p: first.params[p] + second.params[p] for p in params},
        {x: np.concatenate([first.inputs[x], second.inputs[x]]) for x in inputs}, first.h0)
    assert_same(chained, whole, rtol, f"{what}two chained chunks vs the whole sequence", floor)


def check_vjp_cell(cell, T, B, seed, mask_kind, h0_kind, opts, with_targets, which_out, which_state,
                   backends=("native", "f32")):
    params, inputs, targets, mask, h0 = fuzz_data(cell, T, B, seed, mask_kind, h0_kind)
    if not with_targets:
        targets, mask = None, None
    d_out, d_fin = cotangents(cell, T, B, seed, which_out, which_state)
    oracle = rc.compile(cell, backend="numpy")
    kw = dict(d_outputs=d_out, d_final=d_fin, targets=targets, mask=mask)
    ref = oracle.vjp(params, inputs, h0, **kw)
    # 1. rolled == unrolled
    loss_u, g_u, in_u, h0_u = unrolled_vjp(cell, params, inputs, h0, **kw)
    assert_same(rc.backends.vjp.Gradients(g_u, in_u, h0_u, loss_u), ref, 1e-11, "rolled vs unrolled")
    # 2. finite differences, away from kinks (every initial state given, so each can move)
    outs, _ = oracle.forward(params, inputs, h0)
    kinks = getattr(cell, "_fuzz_kinks", [])   # fuzzgen may name a kink output from its pool, not kink<i>
    margin = min([np.abs(v).min() for k, v in outs.items() if k in kinks] + [np.inf])
    if margin >= KINK_MARGIN:
        call = check_call(cell.step, np.float64, params, inputs, None, h0)
        full_h0 = initial_states(cell.step, call, np.float64)
        res_full = oracle.vjp(params, inputs, full_h0, **kw)
        check_fd(oracle, params, inputs, full_h0, targets, mask, d_out, d_fin, res_full, seed)
        for s in full_h0:  # the cotangent of h[0] does not depend on where h[0] came from
            np.testing.assert_allclose(res_full.h0[s], ref.h0[s], rtol=1e-12, atol=1e-14)
    # 3. chained chunks
    if T >= 2:
        whole = oracle.vjp(params, inputs, h0, d_outputs=d_out, d_final=d_fin)
        check_chained(oracle, params, inputs, h0, d_out, d_fin, whole, T // 2)
    # 4. native float64
    if "native" in backends:
        nat = rc.compile(cell, backend="native", cache=None, **opts)
        assert_same(nat.vjp(params, inputs, h0, **kw), ref, 1e-10, "native float64 vs oracle")
        kept = nat.forward(params, inputs, h0, keep=True, targets=targets, mask=mask)
        assert_same(kept.backward(d_out, d_fin), ref, 1e-10, "native forward(keep) + backward vs oracle")
        if T >= 2:  # rounding only: the chunks sum the same terms in another order
            check_chained(nat, params, inputs, h0, d_out, d_fin, nat.vjp(params, inputs, h0, d_outputs=d_out,
                          d_final=d_fin), T // 2, 1e-10, what="native float64: ")
    for kind, runner in (("ptx", "host"), ("cuda", "cuda")):
        if kind in backends:
            ptx = rc.compile(cell, backend="ptx", runner=runner)
            assert_same(ptx.vjp(params, inputs, h0, **kw), ref, 1e-10, f"PTX ({runner} runner) vs oracle")
            kept = ptx.forward(params, inputs, h0, keep=True, targets=targets, mask=mask)
            assert_same(kept.backward(d_out, d_fin), ref, 1e-10, f"PTX ({runner}) forward(keep) + backward")
            if T >= 2:
                check_chained(ptx, params, inputs, h0, d_out, d_fin, ptx.vjp(params, inputs, h0, d_outputs=d_out,
                              d_final=d_fin), T // 2, 1e-10, what=f"PTX ({runner}): ")
    # 5. native float32 against the float64 oracle on float32-rounded data
    if "f32" in backends and margin >= KINK_MARGIN:
        r32 = lambda d: None if d is None else {k: np.asarray(v, np.float32) for k, v in d.items()}  # noqa: E731
        args32 = (r32(params), r32(inputs), r32(h0))
        kw32 = dict(d_outputs=r32(d_out), d_final=r32(d_fin), targets=r32(targets), mask=mask)
        up = lambda d: None if d is None else {k: v.astype(np.float64) for k, v in d.items()}  # noqa: E731
        ref64 = oracle.vjp(*(up(a) for a in args32), **{k: up(v) if k != "mask" else v for k, v in kw32.items()})
        np32 = rc.compile(cell, backend="numpy", dtype="float32").vjp(*args32, **kw32)
        nat32 = rc.compile(cell, backend="native", dtype="float32", cache=None, **opts)
        got = nat32.vjp(*args32, **kw32)
        if T >= 2:  # float32 rounding of two partial sums against one: 1e-4 of each array, 1e-5 of the largest
            d32 = dict(d_outputs=kw32["d_outputs"], d_final=kw32["d_final"])
            check_chained(nat32, *args32, kw32["d_outputs"], kw32["d_final"], nat32.vjp(*args32, **d32), T // 2,
                          1e-4, 1e-5, what="native float32: ")
        a, b, c = _results(got), _results(ref64), _results(np32)
        for k in b:
            allowed = max(2e-4, 30 * _rel(c[k], b[k]))
            assert _rel(a[k], b[k]) <= allowed, f"native float32 {k}: {_rel(a[k], b[k]):.3g} > {allowed:.3g}"


VJP_CI_EXAMPLES = 12


@settings(max_examples=VJP_CI_EXAMPLES)
@given(fuzz_cells(max_depth=2), calls(max_T=5, max_B=4), st.booleans(), st.integers(0, 15), st.integers(0, 7))
def test_fuzz_vjp_ci(cell, call, with_targets, which_out, which_state):
    T, B, seed, mask, h0, opts = call
    check_vjp_cell(cell, T, B, seed, mask, h0, opts, with_targets, which_out, which_state)


@settings(max_examples=3)
@given(fuzz_cells(max_depth=2), calls(max_T=3, max_B=3), st.booleans(), st.integers(0, 15), st.integers(0, 7))
def test_fuzz_vjp_ptx_host_ci(cell, call, with_targets, which_out, which_state):
    """The PTX kernels and launch plan of the VJP variants on the host runner; few examples:
    each compiles the kernels twice (PTX text, then for this CPU)."""
    T, B, seed, mask, h0, _ = call
    check_vjp_cell(cell, T, B, seed, mask, h0, {}, with_targets, which_out, which_state, backends=("ptx",))


@pytest.mark.fuzz
@given(fuzz_cells(max_depth=3), calls(max_T=20, max_B=9), st.booleans(), st.integers(0, 15), st.integers(0, 7))
def test_fuzz_vjp_cuda(cell, call, with_targets, which_out, which_state):
    """On a CUDA GPU (skipped without one): the VJP variants' PTX against the oracle."""
    from rnncomp.backends.ptx.runtime import cuda_available
    if not cuda_available():
        pytest.skip("needs a CUDA GPU, its driver and cuda-python")
    T, B, seed, mask, h0, _ = call
    check_vjp_cell(cell, T, B, seed, mask, h0, {}, with_targets, which_out, which_state, backends=("cuda",))


@pytest.mark.fuzz
@given(fuzz_cells(max_states=3, max_depth=4), calls(max_T=20, max_B=9), st.booleans(),
       st.integers(0, 15), st.integers(0, 7))
def test_fuzz_vjp_long(cell, call, with_targets, which_out, which_state):
    T, B, seed, mask, h0, opts = call
    check_vjp_cell(cell, T, B, seed, mask, h0, opts, with_targets, which_out, which_state)


# ----------------------------------------------------------------------------- fixed cells, NumPy only
def _every_seed():
    """Two inputs, two states, two outputs and a loss: every kind of seed a backward step and
    the unrolled reference take (loss weight, output cotangents, final-state cotangents, input
    adjoints), in a cell whose states read each other and an output that reads an input."""
    cell = rc.Cell("every_seed")
    x1, x2 = cell.input("x1", 2), cell.input("x2", 3)
    h, c = cell.state("h", 3), cell.state("c", 2)
    cell.update(h, sp.tanh(cell.param("W", (3, 2)) @ x1 + cell.param("U", (3, 2)) @ c))
    cell.update(c, rc.sigmoid(cell.param("A", (2, 3)) @ x2) * c + cell.param("B", (2, 3)) @ h.new / 2)
    y = cell.output("y", cell.param("V", (2, 3)) @ h.new)
    cell.output("z", c.new * x1 + y)
    cell.loss((y - cell.target("t", 2)) ** 2 / 2)
    return cell


@pytest.mark.parametrize("with_targets, which_out, which_state, h0_kind, mask", [
    (True, 0b11, 0b11, "some", "binary"),   # everything seeded at once
    (False, 0b01, 0b00, "none", None),      # one output's cotangent alone
    (False, 0b10, 0b00, "all", None),       # the other output alone (it reads an input)
    (False, 0b00, 0b10, "some", None),      # one final state's cotangent alone
    (True, 0b00, 0b00, "none", "weights"),  # the loss alone
])
def test_vjp_numpy_every_seed(with_targets, which_out, which_state, h0_kind, mask):
    """The NumPy VJP against central differences and the unrolled graph, each seed alone and all
    together (no compiler: seconds; the fuzzed cases above also compile native)."""
    check_vjp_cell(_every_seed(), 3, 2, 4, mask, h0_kind, {}, with_targets, which_out, which_state,
                   backends=())


def test_every_seed_has_the_size_of_what_it_seeds():
    # a backend allocates a seed's buffer from its node (the NumPy oracle does not look): the carry
    # of h has h's 3 units, of c 2, each output's cotangent 2, the step weight 1; likewise unrolled
    from rnncomp.autodiff import Cotangents, backward_step, carry_key, cotangent_key, unrolled
    st_ = _every_seed().step
    cot = Cotangents(loss=True, outputs=("y", "z"), inputs=("x1", "x2"), final=True)
    bwd = backward_step(st_, cot)
    size = lambda prog, k: prog.nodes[k].size  # noqa: E731
    assert {s: size(bwd.prog, k) for s, k in bwd.carry_in.items()} == {"h": 3, "c": 2}
    assert {o: size(bwd.prog, k) for o, k in bwd.out_seeds.items()} == {"y": 2, "z": 2}
    assert size(bwd.prog, bwd.weight) == 1
    u = unrolled(st_, 3, cot)
    assert [size(u.rev.prog, cotangent_key(o, t)) for t in (1, 2, 3) for o in ("y", "z")] == [2] * 6
    assert [size(u.rev.prog, carry_key(s, 3)) for s in ("h", "c")] == [3, 2]


@pytest.mark.parametrize("name", ["lstm", "jordan"])
def test_vjp_numpy_zoo(name):
    cell = rc.cells.get(name)(2, 3, 2)
    check_vjp_cell(cell, 4, 3, 9, "binary", "some", {}, True, 1, 0b11, backends=())


# ----------------------------------------------------------------------------- the zoo, float32
@pytest.mark.parametrize("name", sorted(rc.cells.ZOO))
def test_zoo_vjp_native_matches_oracle(name):
    cell = rc.cells.get(name)(3, 5, 2)
    check_vjp_cell(cell, 6, 9, 3, None, "some", {"threads": 2}, True, 15, 7, backends=("native",))



@pytest.mark.parametrize("name", ["lstm", "gru"])
@pytest.mark.parametrize("memory", ["every2", "binomial1"])
def test_vjp_under_a_memory_schedule(name, memory):
    """With input cotangents the kept δ values also feed the weight gradients after the loop;
    under a schedule that is per recomputed segment: still the oracle's VJP (float64, 1e-10)."""
    cell = rc.cells.get(name)(3, 5, 2)
    sched = rc.Every(2) if memory == "every2" else rc.Binomial(1)
    check_vjp_cell(cell, 7, 4, 5, None, "some", {"memory": sched}, False, 15, 7, backends=("native",))

def test_learned_initial_state_gets_the_h0_cotangent():
    cell = rc.Cell("learned")
    x, h = cell.input("x", 2), cell.state("h", 3, init="learn")
    W, U = cell.param("W", (3, 2)), cell.param("U", (3, 3))
    cell.update(h, rc.sigmoid(W @ x + U @ h))
    cell.output("y", h.new)
    params = cell.init_params(seed=0)
    x_ = np.random.default_rng(0).normal(size=(4, 2, 2))
    dy = np.random.default_rng(1).normal(size=(4, 2, 3))
    for backend in ("numpy", "native"):
        res = rc.compile(cell, backend=backend).vjp(params, {"x": x_}, d_outputs={"y": dy})
        np.testing.assert_allclose(res.params["h_0"], res.h0["h"].sum(axis=0), rtol=1e-12)
        with_h0 = rc.compile(cell, backend=backend).vjp(params, {"x": x_}, {"h": np.tile(params["h_0"], (2, 1))},
                                                         d_outputs={"y": dy})
        assert not with_h0.params["h_0"].any()  # given h0: the learned one is not used
        np.testing.assert_allclose(with_h0.h0["h"], res.h0["h"], rtol=1e-12)


def test_wrt_skips_inputs_and_costs_nothing_for_unused_outputs():
    cell = rc.cells.lstm(3, 4, 2)
    m = rc.compile(cell, backend="native")
    params = cell.init_params(seed=0)
    x = {"x": np.random.default_rng(0).normal(size=(5, 3, 3))}
    none = m.vjp(params, x, d_final={"h": np.ones((3, 4))}, wrt=())
    assert none.inputs == {}
    every = m.vjp(params, x, d_final={"h": np.ones((3, 4))})
    for p in params:
        np.testing.assert_allclose(none.params[p], every.params[p], rtol=1e-12, atol=1e-15)
    cot = {v._cot for v in m._variants.values()}
    assert rc.autodiff.Cotangents(loss=False, outputs=(), inputs=(), final=True) in cot  # y: not seeded


def test_kept_forward_backward_twice_and_free():
    cell = rc.cells.gru(2, 3, 2)
    params = cell.init_params(seed=0)
    rng = np.random.default_rng(0)
    x, tg = {"x": rng.normal(size=(4, 2, 2))}, {"target": rng.normal(size=(4, 2, 2))}
    for backend in ("numpy", "native"):
        m = rc.compile(cell, backend=backend)
        fwd = m.forward(params, x, keep=True, targets=tg)
        outs, fin = fwd  # unpacks like forward()
        ref_outs, ref_fin = m.forward(params, x)
        np.testing.assert_allclose(outs["y"], ref_outs["y"], rtol=1e-12)
        dy = rng.normal(size=outs["y"].shape)
        r1, r2 = fwd.backward({"y": dy}), fwd.backward({"y": dy})
        for p in params:
            np.testing.assert_array_equal(r1.params[p], r2.params[p])
        assert r1.loss == pytest.approx(m.loss_and_grad(params, x, tg)[0], rel=1e-12)
        fwd.free()
        with pytest.raises(CallError, match="freed"):
            fwd.backward({"y": dy})


@pytest.mark.parametrize("backend,options", [("numpy", {}), ("native", {}), ("native", {"memory": rc.Every(2)}),
                                             ("ptx", {"runner": "host"})])
def test_kept_forward_owns_its_arguments(backend, options):
    """A kept forward's backward is the gradient of the forward that ran, even when the caller
    reuses its arrays (the next batch loaded into x, a parameter updated in place) before the
    backward: found by an adversarial probe, where numpy and native read x, the parameters
    and (numpy, memory schedules) h0 in place.  Exact: the same call without the overwrite."""
    cell = rc.cells.lstm(3, 5, 2)
    m = rc.compile(cell, backend=backend, **options)
    rng = np.random.default_rng(0)
    x, h, mask = rng.normal(size=(6, 2, 3)), rng.normal(size=(2, 5)), rng.uniform(0.5, 1, size=(6, 2))
    tg, dy = rng.normal(size=(6, 2, 2)), {"y": rng.normal(size=(6, 2, 2))}
    params = cell.init_params(seed=0)
    want = m.vjp(params, {"x": x}, {"h": h}, d_outputs=dy, targets={"target": tg}, mask=mask)
    for what in ("x", "h0", "Wi", "target", "mask"):
        xx, hh, tt, mm = x.copy(), h.copy(), tg.copy(), mask.copy()
        pp = {k: v.copy() for k, v in params.items()}
        fwd = m.forward(pp, {"x": xx}, {"h": hh}, keep=True, targets={"target": tt}, mask=mm)
        {"x": xx, "h0": hh, "Wi": pp["Wi"], "target": tt, "mask": mm}[what][...] = 0.25
        got = fwd.backward(d_outputs=dy)
        for p in params:
            np.testing.assert_array_equal(got.params[p], want.params[p], err_msg=f"{what}: {p}")
        np.testing.assert_array_equal(got.inputs["x"], want.inputs["x"], err_msg=what)
        np.testing.assert_array_equal(got.h0["h"], want.h0["h"], err_msg=what)
        assert got.loss == want.loss


# ----------------------------------------------------------------------------- bad calls
@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_bad_cotangents_are_named(backend):
    cell = rc.cells.elman(2, 3, 2)
    m = rc.compile(cell, backend=backend)
    params = cell.init_params(seed=0)
    x = {"x": np.zeros((4, 2, 2))}
    cases = [
        (dict(d_outputs={"y": np.zeros((4, 2, 3))}), r"d_outputs\['y'\] has shape \(4, 2, 3\), expected \(4, 2, 2\)"),
        (dict(d_outputs={"y": np.zeros((4, 2, 2), np.float32)}), r"d_outputs\['y'\] has dtype float32"),
        (dict(d_outputs={"z": np.zeros((4, 2, 2))}), r"d_outputs names 'z', which is not an output.*outputs: 'y'"),
        (dict(d_final={"c": np.zeros((2, 3))}), r"d_final names 'c', which is not a state.*states: 'h'"),
        (dict(d_final={"h": np.zeros((3, 3))}), r"d_final\['h'\] has shape \(3, 3\), expected \(2, 3\)"),
        (dict(d_outputs=np.zeros((4, 2, 2))), r"d_outputs must be a dict keyed by 'y'"),
        (dict(wrt=["h"]), r"wrt names 'h', which is not an input"),
        (dict(mask=np.ones(4)), r"mask= weighs the cell's loss, so it needs targets="),
        (dict(d_outputs={"y": np.full((4, 2, 2), np.nan)}), r"d_outputs\['y'\] contains nan"),
    ]
    for kw, msg in cases:
        with pytest.raises(CallError, match=msg):
            m.vjp(params, x, **kw)
    fwd = m.forward(params, x, keep=True, outputs=())
    with pytest.raises(CallError, match="kept for cotangents of no output only"):
        fwd.backward({"y": np.zeros((4, 2, 2))})
    with pytest.raises(CallError, match="not an output"):
        m.forward(params, x, keep=True, outputs=("h",))
    nl = rc.Cell("noloss")
    xx, hh = nl.input("x", 2), nl.state("h", 2)
    nl.update(hh, rc.sigmoid(nl.param("W", (2, 2)) @ xx + hh))
    with pytest.raises(CallError, match="targets given but the cell has no loss"):
        rc.compile(nl, backend=backend).vjp(nl.init_params(seed=0), x, targets={"t": np.zeros((4, 2, 2))})


def _same_nonfinite(got, want, what):
    """NaN where ``want`` has NaN, ±inf where it has ±inf, and the finite entries equal to rounding."""
    got, want = np.asarray(got), np.asarray(want)
    for test in (np.isnan, np.isposinf, np.isneginf):
        assert (test(got) == test(want)).all(), f"{what}: {test.__name__} differs"
    fin = np.isfinite(want)
    assert np.allclose(got[fin], want[fin], rtol=1e-10, atol=1e-12), what


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the NumPy oracle's invalid-value warnings
@pytest.mark.parametrize("backend", ["numpy", "native", "ptx"])
def test_a_nonfinite_cotangent_is_refused_unless_the_forward_said_check_finite_false(backend):
    """rnncomp's own calls refuse an inf or NaN cotangent by name (vjp, a kept forward's
    backward, one made by kept_from); a forward called with check_finite=False (what the
    PyTorch and JAX layers call) lets it through, as the oracle of the unfolded graph does."""
    cell = rc.cells.lstm(2, 3, 2)
    m = rc.compile(cell, backend=backend, **({"runner": "host"} if backend == "ptx" else {}))
    params = cell.init_params(seed=0)
    x = {"x": np.random.default_rng(0).normal(size=(4, 2, 2))}
    dy = np.random.default_rng(1).normal(size=(4, 2, 2))
    dy[3, 0, 0], dy[1, 1, 1] = np.inf, np.nan
    d_fin = {"c": np.zeros((2, 3))}
    d_fin["c"][0, 2] = -np.inf
    for kw, msg in ((dict(d_outputs={"y": dy}), r"cell 'lstm': d_outputs\['y'\] contains nan at index \(1, 1, 1\)"),
                    (dict(d_final=d_fin), r"cell 'lstm': d_final\['c'\] contains -inf at index \(0, 2\)")):
        with pytest.raises(CallError, match=msg):
            m.vjp(params, x, **kw)
        with pytest.raises(CallError, match=msg):
            m.forward(params, x, keep=True).backward(**kw)
        k = m.forward(params, x, keep=True)
        with pytest.raises(CallError, match=msg):
            m.kept_from(k.residuals(), params, x).backward(**kw)
    _, grads, d_in, d_h0 = unrolled_vjp(cell, params, x, d_outputs={"y": dy}, d_final=d_fin, check_finite=False)
    k = m.forward(params, x, keep=True, check_finite=False)
    for how, res in (("vjp", m.vjp(params, x, d_outputs={"y": dy}, d_final=d_fin, check_finite=False)),
                     ("kept", k.backward(d_outputs={"y": dy}, d_final=d_fin)),
                     ("kept_from", m.kept_from(k.residuals(), params, x, check_finite=False).backward(
                         d_outputs={"y": dy}, d_final=d_fin))):
        for n in grads:
            _same_nonfinite(res.params[n], grads[n], f"{how}: params[{n!r}]")
        _same_nonfinite(res.inputs["x"], d_in["x"], f"{how}: inputs['x']")
        for s in d_h0:
            _same_nonfinite(res.h0[s], d_h0[s], f"{how}: h0[{s!r}]")
    assert np.isnan(res.params["Wi"]).all() and np.isfinite(res.inputs["x"]).any()  # it flowed through


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the NumPy oracle's invalid-value warnings
@pytest.mark.parametrize("comp", ["stack", "bidirectional"])
def test_a_composition_refuses_a_nonfinite_cotangent_unless_its_forward_said_check_finite_false(comp):
    """As a cell's (above), for a stack and a bidirectional layer: native against NumPy."""
    cells = lambda: (rc.Stack([rc.cells.elman(2, 3, 3), rc.cells.gru(3, 3, 2)]) if comp == "stack"  # noqa: E731
                     else rc.Bidirectional(rc.cells.lstm(2, 3, 2)))
    models = [rc.compile(cells(), backend=b) for b in ("numpy", "native")]
    params = models[0].init_params(seed=0)
    x = {"x": np.random.default_rng(0).normal(size=(4, 2, 2))}
    (out, y), = models[0].forward(params, x)[0].items()
    dy = np.random.default_rng(1).normal(size=y.shape)
    dy[3, 0, 0], dy[0, 1, 1] = np.inf, -np.inf
    with pytest.raises(CallError, match=r"d_outputs\['%s'\] contains -inf at index \(0, 1, 1\)" % out):
        models[1].vjp(params, x, d_outputs={out: dy})
    with pytest.raises(CallError, match="contains -inf"):
        models[1].forward(params, x, keep=True).backward(d_outputs={out: dy})
    want, got = (m.forward(params, x, keep=True, check_finite=False).backward(d_outputs={out: dy}) for m in models)
    assert any(np.isnan(g).any() for g in want.params.values())  # the inf reached the parameters
    for n in want.params:
        _same_nonfinite(got.params[n], want.params[n], f"params[{n!r}]")
    _same_nonfinite(got.inputs["x"], want.inputs["x"], "inputs['x']")
    vjp = models[1].vjp(params, x, d_outputs={out: dy}, check_finite=False)
    for n in want.params:
        _same_nonfinite(vjp.params[n], want.params[n], f"vjp: params[{n!r}]")

def test_explain_prints_the_input_and_output_cotangents():
    cell = rc.cells.elman(8, 32, 4)
    text = rc.explain(cell, wrt="inputs", d_outputs=True).backward_text()
    assert "δx[t] = Wᵀ·δpre(h)[t]" in text
    assert "δy[t] = w[t]*(-target[t] + y[t]) + δyᵉˣᵗ[t]" in text
    assert "δ⁺h[T] = d_final['h']" in text
    plain = rc.explain(cell).backward_text()
    assert "δx" not in plain and "ᵉˣᵗ" not in plain  # the plain BPTT step is unchanged
    assert r"{\delta y^{\mathrm{ext}}}_{t}" in rc.explain(cell, d_outputs="y").latex()
    with pytest.raises(rc.CellError, match="'z' is not an input; inputs: 'x'"):
        rc.explain(cell, wrt="z")


def test_the_backward_step_docs_vjp_shows_is_what_explain_prints():
    """docs/vjp.md "What is derived" prints the step, then shows it: the lines it shows (up to
    its "...") are the printed ones (they had drifted: δa1 where the printer says δpre(h))."""
    import pathlib
    doc = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "vjp.md").read_text()
    shown = doc.split("backward_text())\n```\n\n```\n", 1)[1].split("...\n```", 1)[0].splitlines()
    printed = rc.explain(rc.cells.elman(8, 32, 4), wrt="inputs", d_outputs=True).backward_text().splitlines()
    assert len(shown) >= 5 and printed[:len(shown)] == shown
