"""Every zoo cell: gradients vs finite differences, rolled vs unrolled, options."""
import numpy as np
import pytest

import rnncomp as rc
from rnncomp.backends.numpy import unrolled_loss_and_grad

from gradcheck import assert_grads_close, check_grads, numpy_model, random_data

ZOO = sorted(rc.cells.ZOO)


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("loss", ["mse", "xent"])
def test_zoo_finite_differences(name, loss):
    cell = rc.cells.get(name)(3, 5, 2, loss=loss)
    params, inputs, targets = random_data(cell, T=5, B=3)
    if loss == "xent":
        targets = {"target": np.eye(2)[np.random.default_rng(0).integers(0, 2, (5, 3))]}
    check_grads(numpy_model(cell), params, inputs, targets)


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("k", range(1, 7))
def test_rolled_equals_unrolled(name, k):
    cell = rc.cells.get(name)(2, 3, 2)
    params, inputs, targets = random_data(cell, T=k, B=2, seed=k)
    l1, g1, h1 = numpy_model(cell).loss_and_grad(params, inputs, targets)
    l2, g2, h2 = unrolled_loss_and_grad(cell, params, inputs, targets)
    assert l1 == pytest.approx(l2, rel=1e-12)
    assert_grads_close(g1, g2)
    for s in h1:
        np.testing.assert_allclose(h1[s], h2[s], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["elman", "lstm", "gru"])
def test_mask_and_initial_state(name):
    cell = rc.cells.get(name)(3, 4, 2)
    params, inputs, targets = random_data(cell, T=6, B=3)
    mask = np.zeros((6, 3))
    mask[-1] = 1.0  # a target only at the last step
    h0 = {s: np.random.default_rng(5).normal(size=(3, n)) for s, n in cell.step.states.items()}
    model = numpy_model(cell)
    check_grads(model, params, inputs, targets, mask=mask, h0=h0)
    l1, g1, _ = model.loss_and_grad(params, inputs, targets, mask=mask, h0=h0)
    l2, g2, _ = unrolled_loss_and_grad(cell, params, inputs, targets, mask=mask, h0=h0)
    assert l1 == pytest.approx(l2, rel=1e-12)
    assert_grads_close(g1, g2)
    # the masked loss is the mean of the last step's costs, computed independently
    outs, _ = model.forward(params, inputs, h0=h0)
    manual = ((outs["y"][-1] - targets["target"][-1]) ** 2 / 2).sum(axis=1).mean()
    assert l1 == pytest.approx(manual, rel=1e-12)


def test_forward_matches_loss_final_state():
    cell = rc.cells.gru(3, 4, 2)
    params, inputs, targets = random_data(cell, T=5, B=2)
    model = numpy_model(cell)
    outs, final = model.forward(params, inputs)
    loss, _, final2 = model.loss_and_grad(params, inputs, targets)
    assert outs["y"].shape == (5, 2, 2)
    np.testing.assert_array_equal(final["h"], final2["h"])
    manual = ((outs["y"] - targets["target"]) ** 2 / 2).sum(axis=2).mean()
    assert loss == pytest.approx(manual, rel=1e-12)


def test_float32_close_to_float64():
    cell = rc.cells.lstm(3, 8, 2)
    p64, i64, t64 = random_data(cell, T=20, B=4)
    cast = lambda d: {k: v.astype(np.float32) for k, v in d.items()}  # noqa: E731
    l64, g64, _ = numpy_model(cell).loss_and_grad(p64, i64, t64)
    l32, g32, _ = numpy_model(cell, "float32").loss_and_grad(cast(p64), cast(i64), cast(t64))
    assert all(g.dtype == np.float32 for g in g32.values())
    assert l32 == pytest.approx(l64, rel=1e-5)
    for k in g64:  # float32 rounding accumulated over 20 steps: 1e-4 relative to the gradient's norm
        assert np.abs(g32[k] - g64[k]).max() <= 1e-4 * (np.abs(g64[k]).max() + 1e-3), k


@pytest.mark.parametrize("name", sorted(rc.cells.ZOO))
def test_n_out_defaults_to_n_hidden(name):
    """``rc.cells.lstm(64, 256)`` (issue #19's stack snippet) is the cell with n_out = n_hidden."""
    make = rc.cells.ZOO[name]
    short, full = make(3, 5), make(3, 5, 5)
    assert str(short) == str(full)
    assert rc.compile(short).step.outputs == rc.compile(full).step.outputs == {"y": 5}
    assert str(make(3, 5, 2)) != str(short)


def test_the_issue_stack_snippet_runs_with_default_output_sizes():
    model = rc.compile(rc.Stack([rc.cells.lstm(4, 6), rc.cells.gru(6, 6)], dropout=0.0))
    x = {"x": np.random.default_rng(0).normal(size=(3, 2, 4))}
    outputs, _final = model.forward(model.init_params(0), x)
    assert outputs["y"].shape == (3, 2, 6)
