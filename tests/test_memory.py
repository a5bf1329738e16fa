"""Memory schedules: checkpointing gives the same gradients as storing every step."""
import numpy as np
import pytest

import rnncomp as rc

from gradcheck import numpy_model, random_data
from test_custom_cells import many_functions


@pytest.mark.parametrize("name", sorted(rc.cells.ZOO))
@pytest.mark.parametrize("n", [1, 4, "sqrt", 50])
def test_every_n_equals_store_all(name, n):
    cell = rc.cells.get(name)(3, 5, 2)
    params, inputs, targets = random_data(cell, T=17, B=2, seed=3)
    mask = np.random.default_rng(0).random((17, 2)) > 0.3
    mask[0, 0] = True
    base = rc.compile(cell, backend="native", cache=None)
    ckpt = rc.compile(cell, backend="native", cache=None, memory=rc.Every(n))
    l1, g1, h1 = base.loss_and_grad(params, inputs, targets, mask=mask)
    l2, g2, h2 = ckpt.loss_and_grad(params, inputs, targets, mask=mask)
    assert l2 == pytest.approx(l1, rel=1e-14)
    for k in g1:  # the same arithmetic in the same order: bit for bit
        np.testing.assert_array_equal(g2[k], g1[k], err_msg=k)
    for s in h1:
        np.testing.assert_array_equal(h2[s], h1[s])


def test_checkpointing_with_learned_initial_state_and_threads():
    cell = many_functions()  # h has init="learn"
    params, inputs, targets = random_data(cell, T=11, B=16, seed=2)
    ref = numpy_model(cell).loss_and_grad(params, inputs, targets)
    model = rc.compile(cell, backend="native", cache=None, memory=rc.Every(3), threads=2)
    loss, grads, _ = model.loss_and_grad(params, inputs, targets)
    assert loss == pytest.approx(ref[0], rel=1e-12)
    for k in grads:
        np.testing.assert_allclose(grads[k], ref[1][k], rtol=1e-10, atol=1e-13)


def test_activation_memory_shrinks():
    cell = rc.cells.lstm(8, 16, 4)
    full = rc.compile(cell, backend="native", cache=None).activation_bytes(1000, 32)
    sqrt = rc.compile(cell, backend="native", cache=None, memory=rc.Every("sqrt")).activation_bytes(1000, 32)
    assert sqrt < 0.1 * full


def test_bad_schedule():
    with pytest.raises(ValueError, match="positive integer"):
        rc.Every(0)
    with pytest.raises(ValueError, match="memory must be"):
        rc.compile(rc.cells.elman(2, 2, 2), backend="native", memory="some")
