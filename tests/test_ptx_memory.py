"""``memory=`` on the PTX backend (backends/ptx/checkpoint.py), on the host runner (and on a
CUDA GPU where one is present: ``-k cuda``, run by benchmarks/gpu_session.sh): every schedule
gives the oracle's loss, gradients, outputs and VJP, and the device arena holds one leaf of the
plan instead of every step.

Tolerance 1e-10 (float64): a schedule sums the same per-step terms in another order (leaf
by leaf), so the results differ from the oracle's only by rounding, ~1e-15 relative here.
"""
import numpy as np
import pytest

import rnncomp as rc
from rnncomp.errors import ArgumentError
from rnncomp.backends.ptx.checkpoint import footprint, leaf_model
from layer_cells import two_inputs_learned_state

T, B = 11, 3


def _cuda_present():
    from rnncomp.backends.ptx.runtime import cuda_available
    return cuda_available()


RUNNERS = ["host", pytest.param("cuda", marks=pytest.mark.skipif(not _cuda_present(), reason="needs a CUDA GPU"))]


def _data(cell, seed=0):
    rng = np.random.default_rng(seed)
    st = cell.step
    params = cell.init_params(seed=seed)
    inputs = {x: rng.standard_normal((T, B, n)) for x, n in st.inputs.items()}
    targets = {k: rng.standard_normal((T, B, n)) for k, n in st.targets.items()}
    d_out = {o: rng.standard_normal((T, B, n)) for o, n in st.outputs.items()}
    d_fin = {s: rng.standard_normal((B, n)) for s, n in st.states.items()}
    return params, inputs, targets or None, d_out, d_fin


def _close(got, want, what):
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-10, atol=1e-12, err_msg=f"{what} {k}")


def _schedules(model):
    whole = model.activation_bytes(T, B)  # store all, the default
    return [rc.Every(4), rc.Binomial(2), rc.Budget(whole // 3)]


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("make", [lambda: rc.cells.elman(3, 5, 2), lambda: rc.cells.lstm(2, 4, 2),
                                  two_inputs_learned_state], ids=["elman", "lstm", "two-learned"])
def test_every_schedule_gives_the_oracles_numbers(make, runner):
    cell = make()
    params, inputs, targets, d_out, d_fin = _data(cell)
    mask = np.ones((T, B))
    mask[7:, 1] = 0  # a padded sample
    ref = rc.compile(cell, backend="numpy")
    model = rc.compile(cell, backend="ptx", runner=runner)
    for memory in _schedules(model):
        model.memory = memory
        plan = model.memory_plan(T, B)
        assert plan.max_leaf < T, f"{memory}: the plan is not a checkpointing one ({plan.name})"
        outs, fin = model.forward(params, inputs)
        o0, f0 = ref.forward(params, inputs)
        _close(outs, o0, f"{memory}: forward output")
        _close(fin, f0, f"{memory}: final state")
        if targets is not None:
            loss, grads, fin = model.loss_and_grad(params, inputs, targets, mask=mask)
            l0, g0, f0 = ref.loss_and_grad(params, inputs, targets, mask=mask)
            assert abs(loss - l0) <= 1e-10 * max(1.0, abs(l0)), f"{memory}: loss {loss} vs {l0}"
            _close(grads, g0, f"{memory}: gradient")
            _close(fin, f0, f"{memory}: final state of a training call")
        kw = dict(d_outputs=d_out, d_final=d_fin, targets=targets, mask=None if targets is None else mask)
        want = ref.vjp(params, inputs, **kw)
        for got in (model.vjp(params, inputs, **kw),
                    model.forward(params, inputs, keep=True, targets=kw["targets"], mask=kw["mask"]).backward(
                        d_out, d_fin)):
            _close(got.params, want.params, f"{memory}: VJP parameter")
            _close(got.inputs, want.inputs, f"{memory}: VJP input")
            _close(got.h0, want.h0, f"{memory}: VJP initial state")


@pytest.mark.parametrize("runner", RUNNERS)
def test_the_arena_holds_one_leaf(runner):
    cell = rc.cells.lstm(2, 4, 2)
    params, inputs, targets, _, _ = _data(cell)
    model = rc.compile(cell, backend="ptx", runner=runner, memory=rc.Every(4))
    isz = model.dtype.itemsize
    whole = model.plan.layout.offsets(T, B, isz)[1]
    model.loss_and_grad(params, inputs, targets)
    arena = leaf_model(model)._arena
    assert arena["TB"][0] <= 4, arena["TB"]
    assert arena["size"] < whole, (arena["size"], whole)
    fp = footprint(model, B)  # what one more step adds to the arena, as the plan counts it
    grown = model.plan.layout.offsets(T + 1, B, isz)[1] - whole
    assert abs(grown - fp.step) <= 256 * len(model.plan.layout.slots), (grown, fp.step)
    assert model.activation_bytes(T, B) == model.memory_plan(T, B).memory(fp)


def test_a_plans_two_lengths_keep_their_arenas():
    """Every(4) at T = 11: leaves and advances of 4 steps and one leaf of 3.  The model keeps
    both arenas, so a second call makes none; storing all again gives the spare back."""
    cell = rc.cells.elman(3, 5, 2)
    params, inputs, targets, _, _ = _data(cell)
    model = rc.compile(cell, backend="ptx", runner="host", memory=rc.Every(4))
    lm = leaf_model(model)
    made = []
    fill = lm._fill_arena
    lm._fill_arena = lambda a, T_, B_: made.append(T_) or fill(a, T_, B_)
    model.loss_and_grad(params, inputs, targets)
    assert sorted(set(made)) == [3, 4], made
    made.clear()
    want = model.loss_and_grad(params, inputs, targets)
    assert made == [], f"a second call made arenas of {made} steps"
    assert {lm._arena["TB"][0], lm._spare["TB"][0]} == {3, 4}
    model.memory = "all"
    assert lm._spare is None
    got = model.loss_and_grad(params, inputs, targets)
    _close(got[1], want[1], "store-all after a schedule")


def test_a_new_schedule_reaches_the_variants():
    cell = rc.cells.elman(3, 5, 2)
    params, inputs, _, d_out, _ = _data(cell)
    model = rc.compile(cell, backend="ptx", runner="host")
    model.vjp(params, inputs, d_outputs=d_out)  # makes a VJP variant under store-all
    model.memory = rc.Every(2)
    assert all(v.memory == rc.Every(2) for v in model._variants.values())
    assert model.memory_plan(T, B).max_leaf == 2
    want = rc.compile(cell, backend="numpy").vjp(params, inputs, d_outputs=d_out)
    _close(model.vjp(params, inputs, d_outputs=d_out).params, want.params, "after a new schedule")


def test_a_bad_schedule_is_named():
    with pytest.raises(ArgumentError, match="memory"):
        rc.compile(rc.cells.elman(3, 5, 2), backend="ptx", runner="host", memory="half")


def test_a_kept_forward_with_targets_keeps_every_steps_outputs():
    """Found by a probe: under a schedule the kept forward's outputs were the last leaf's
    (3 of 11 steps); they are every step's, for a cell and a stack."""
    cell = rc.cells.elman(3, 5, 2)
    params, inputs, targets, _, _ = _data(cell)
    want = rc.compile(cell, backend="numpy").forward(params, inputs, keep=True, targets=targets)
    got = rc.compile(cell, backend="ptx", runner="host", memory=rc.Every(4)).forward(
        params, inputs, keep=True, targets=targets)
    _close(got.outputs, want.outputs, "kept outputs")
    assert abs(got.loss - want.loss) <= 1e-12 * abs(want.loss)
    comp = rc.Stack([rc.cells.lstm(3, 4, 4), rc.cells.elman(4, 5, 2)])
    p = comp.init_params(0)
    x = {k: np.random.default_rng(1).standard_normal((9, 2, n)) for k, n in comp.step.inputs.items()}
    y = {k: np.random.default_rng(2).standard_normal((9, 2, n)) for k, n in comp.step.targets.items()}
    want = rc.compile(comp, backend="numpy").forward(p, x, keep=True, targets=y)
    got = rc.compile(comp, backend="ptx", runner="host", memory=rc.Every(4)).forward(p, x, keep=True, targets=y)
    _close(got.outputs, want.outputs, "a stack's kept outputs")


def test_a_new_schedule_gives_back_the_arenas_of_the_old():
    """Found by a probe: after store-all, a schedule kept the T-step arena as its spare (T = 8
    and Every(4): every call of the plan has 4 steps, so no other length evicts it)."""
    cell = rc.cells.lstm(2, 4, 2)
    params, inputs, targets, _, _ = _data(cell)
    inputs, targets = ({k: v[:8] for k, v in d.items()} for d in (inputs, targets))
    model = rc.compile(cell, backend="ptx", runner="host")
    model.loss_and_grad(params, inputs, targets)
    model.memory = rc.Every(4)
    model.loss_and_grad(params, inputs, targets)
    model.forward(params, inputs)
    held = [a for m in [model, *model._variants.values()] for a in (m._arena, m._spare) if a is not None]
    assert held and all(a["TB"][0] <= 4 for a in held), [a["TB"] for a in held]


@pytest.mark.parametrize("backend", ["native", "ptx"])
def test_a_schedule_assigned_after_compile_survives_pickling(backend):
    import pickle
    opts = {"runner": "host"} if backend == "ptx" else {"cache": None}
    model = rc.compile(rc.cells.elman(3, 5, 2), backend=backend, **opts)
    model.memory = rc.Every(4)
    assert pickle.loads(pickle.dumps(model)).memory == rc.Every(4)
