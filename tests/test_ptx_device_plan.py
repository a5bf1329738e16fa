"""Device-resident calls of the PTX backend under a ``memory=`` schedule (ptx/device_plan.py).

On this CPU the host runner's "device" is host memory (see test_ptx_device.py). References: the
staged host call under the same schedule (the host plan executor, ptx/checkpoint.py, itself
checked against the NumPy oracle in test_ptx_memory.py) and the staged call storing every step.
Forward values and losses are the same kernels on the same values: equal bit for bit. Parameter
gradients are the same terms summed in another order (the host sums each leaf's gradients
after it, the device's gradient kernels add onto the sum so far): equal to 1e-12 relative in
float64, a few roundings of sums of at most T·B terms.
"""
import numpy as np
import pytest

import rnncomp as rc
from rnncomp.backends.ptx.checkpoint import leaf_model
from rnncomp.backends.ptx.device import DeviceArray

from gradcheck import random_data
from test_ptx_device import CELLS, OnHost, on

T, B = 9, 3
SCHEDULES = {"every2": rc.Every(2), "every4": rc.Every(4), "binomial1": rc.Binomial(1), "binomial2": rc.Binomial(2)}


def _close(got, want, what):
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13, err_msg=what)


def _data(cell):
    params, inputs, targets = random_data(cell, T=T, B=B)
    rng = np.random.default_rng(5)
    st = cell.step
    h0 = {s: rng.standard_normal((B, n)) for s, n in st.states.items() if st.state_init[s] is None}
    return params, inputs, targets, h0


@pytest.mark.parametrize("name", ["jordan", "learned_h0", "lstm"])   # a fed-back output, a learned h0, two states
def test_loss_and_grad_under_a_schedule(name):
    cell = CELLS[name]()
    params, inputs, targets, h0 = _data(cell)
    m = rc.compile(cell, backend="ptx", runner="host")
    mask = np.random.default_rng(1).random((T, B)) > 0.3
    mask[0] = True
    loss_all, grads_all, final_all = m.loss_and_grad(params, inputs, targets, h0=h0, mask=mask)
    for schedule, memory in SCHEDULES.items():
        m.memory = memory
        assert m.memory_plan(T, B).max_leaf < T, schedule   # the plan path, not one leaf
        dloss, dgrads, dfinal = m.loss_and_grad(on(params), on(inputs), on(targets), h0=on(h0), mask=mask)
        loss, grads, final = m.loss_and_grad(params, inputs, targets, h0=h0, mask=mask)
        assert dloss == loss and abs(dloss - loss_all) <= 1e-12 * abs(loss_all), schedule
        assert set(dgrads) == set(grads) == set(grads_all)
        for k in grads:
            assert isinstance(dgrads[k], DeviceArray)
            _close(dgrads[k].copy_to_host(), grads[k], f"{schedule} {k} vs the host plan")
            _close(dgrads[k].copy_to_host(), grads_all[k], f"{schedule} {k} vs storing all")
        for s in final:
            assert np.array_equal(dfinal[s].copy_to_host(), final[s]), (schedule, s)
            _close(final[s], final_all[s], f"{schedule} final {s} vs storing all")
        # the arena of a leaf holds at most the plan's longest leaf of steps
        assert leaf_model(m)._arena["TB"][0] <= m.memory_plan(T, B).max_leaf, schedule


@pytest.mark.parametrize("name", ["lstm", "learned_h0"])
def test_vjp_under_a_schedule(name):
    cell = CELLS[name]()
    params, inputs, targets, h0 = _data(cell)
    st = cell.step
    rng = np.random.default_rng(7)
    d_out = {o: rng.standard_normal((T, B, n)) for o, n in st.outputs.items()}
    d_fin = {s: rng.standard_normal((B, n)) for s, n in st.states.items()}
    m = rc.compile(cell, backend="ptx", runner="host")
    calls = ({"d_outputs": d_out, "d_final": d_fin}, {"d_outputs": d_out, "targets": targets}, {"d_final": d_fin})
    refs = [m.vjp(params, inputs, h0=h0, **kw) for kw in calls]   # storing every step
    m.memory = rc.Every(2)   # its VJP variants follow
    for kw, ref in zip(calls, refs):
        g = m.vjp(on(params), on(inputs), h0=on(h0), **{k: on(v) for k, v in kw.items()})
        assert (g.loss is None) == (ref.loss is None)
        if ref.loss is not None:
            assert abs(g.loss - ref.loss) <= 1e-12 * abs(ref.loss)
        for part in ("params", "inputs", "h0"):
            mine, theirs = getattr(g, part), getattr(ref, part)
            assert set(mine) == set(theirs), part
            for k in theirs:
                _close(mine[k].copy_to_host(), theirs[k], f"{part} {k} {sorted(kw)}")


@pytest.mark.parametrize("name", ["gru", "learned_h0"])
def test_forward_under_a_schedule_and_a_second_length(name):
    cell = CELLS[name]()
    m = rc.compile(cell, backend="ptx", runner="host", memory=rc.Every(4))
    for T_ in (T, 6):   # two lengths: the plan's arenas differ, its leaves too
        params, inputs, _ = random_data(cell, T=T_, B=B)
        outs, fin = m.forward(on(params), on(inputs))
        want, want_fin = m.forward(params, inputs)
        for o in want:
            assert np.array_equal(outs[o].copy_to_host(), want[o]), o
        for s in want_fin:
            assert np.array_equal(fin[s].copy_to_host(), want_fin[s]), s


def test_a_bad_array_is_still_named_under_a_schedule():
    cell = rc.cells.elman(3, 4, 2)
    m = rc.compile(cell, backend="ptx", runner="host", memory=rc.Every(2))
    params, inputs, targets = random_data(cell, T=T, B=B)
    with pytest.raises(rc.CallError, match=r"inputs\['x'\] has shape \(9, 3, 2\), expected \(9, 3, 3\)"):
        m.loss_and_grad(on(params), {"x": OnHost(np.zeros((T, B, 2)))}, on(targets))


@pytest.mark.skipif(not __import__("rnncomp.backends.ptx.runtime", fromlist=["x"]).cuda_available(),
                    reason="no CUDA GPU/driver or cuda-python in this process")
@pytest.mark.parametrize("name", ["lstm", "learned_h0"])
def test_cuda_calls_under_a_schedule(name):
    """On a GPU: DeviceArrays in and out under Every(2) against the staged call storing all."""
    cell = CELLS[name]()
    params, inputs, targets, h0 = _data(cell)
    m = rc.compile(cell, backend="ptx")
    loss, grads, final = m.loss_and_grad(params, inputs, targets, h0=h0)
    m.memory = rc.Every(2)
    dev = lambda d: {k: DeviceArray.from_host(m, v) for k, v in d.items()}   # noqa: E731
    dloss, dgrads, dfinal = m.loss_and_grad(dev(params), dev(inputs), dev(targets), h0=dev(h0))
    assert abs(dloss - loss) <= 1e-12 * abs(loss)
    for k in grads:
        _close(dgrads[k].copy_to_host(), grads[k], k)
    for s in final:
        _close(dfinal[s].copy_to_host(), final[s], s)
