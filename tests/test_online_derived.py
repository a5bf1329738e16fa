"""fit_online with RTRL, SnAp and UORO on cells with derived weights or constants (#19, #20).

The algorithms run on the plain cell whose parameters the derived weights are, and each
update's gradient is chained back to the declared parameters.  Oracles: the rolled BPTT of
the NumPy reference model of the declared cell (an update over the whole stream is an SGD
step with its gradient: RTRL computes the same sum in another order, 1e-10 relative to the
update), a central finite difference of the loss in a random direction (eps 1e-6 in float64:
error ~1e-9 relative, checked at 1e-6), and the NumPy trainer for the native one (1e-12).
"""
import sys
import warnings

import numpy as np
import pytest

import rnncomp as rc
from rnncomp.algorithms.compiled import NumpyFallbackWarning

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import test_weight_ops  # noqa: E402
from gradcheck import random_data  # noqa: E402

LR = 0.1
CELLS = ["masked_elman", "skew_elman", "weightnorm_gru"]


def trainer(cell, gradient, params, backend="numpy"):
    return rc.Trainer(cell, optimizer=rc.SGD(LR), gradient=gradient, backend=backend, dtype="float64",
                      params={k: v.copy() for k, v in params.items()})


def step_taken(tr, params):
    """The gradient the single SGD update applied: (θ₀ − θ₁)/lr."""
    return {k: (params[k] - np.asarray(tr.params[k])) / LR for k in params}


def rel_err(g1, g2):
    return max(float(np.abs(g1[k] - g2[k]).max()) / max(float(np.abs(g1[k]).max()), 1e-300) for k in g1)


@pytest.mark.parametrize("make", CELLS)
@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_one_update_over_the_stream_is_the_bptt_gradient(make, backend):
    cell = getattr(test_weight_ops, make)()
    params, x, y = random_data(cell, T=6, B=2, seed=4)
    _, g0, _ = rc.compile(cell, backend="numpy").loss_and_grad(params, x, y)
    for gradient in (rc.RTRL(), rc.SnAp(sum(cell.step.states.values()) + 1)):  # a full pattern: RTRL
        tr = trainer(cell, gradient, params, backend)
        with warnings.catch_warnings():
            warnings.simplefilter("error", NumpyFallbackWarning)  # native means native
            tr.fit_online(x, y, every=6)
        assert rel_err(g0, step_taken(tr, params)) < 1e-10


def test_the_chained_gradient_is_the_finite_difference():
    cell = test_weight_ops.weightnorm_gru()
    params, x, y = random_data(cell, T=5, B=2, seed=7)
    tr = trainer(cell, rc.RTRL(), params)
    tr.fit_online(x, y, every=5)
    g = step_taken(tr, params)
    model = rc.compile(cell, backend="numpy")
    rng = np.random.default_rng(0)
    d = {k: rng.normal(size=np.shape(v)) for k, v in params.items()}
    eps = 1e-6
    loss = lambda s: model.loss_and_grad({k: params[k] + s * d[k] for k in params}, x, y)[0]  # noqa: E731
    fd = (loss(eps) - loss(-eps)) / (2 * eps)
    an = sum(float((g[k] * d[k]).sum()) for k in g)
    assert abs(fd - an) <= 1e-6 * abs(an)


@pytest.mark.parametrize("make", CELLS)
def test_window_by_window(make):
    """Windows of 3 steps: the first update is the first window's BPTT gradient; the native
    trainer follows the NumPy one for RTRL and SnAp-1; UORO runs and stays finite."""
    cell = getattr(test_weight_ops, make)()
    params, x, y = random_data(cell, T=8, B=2, seed=5)
    cx, cy = ({k: v[:3] for k, v in d.items()} for d in (x, y))
    _, g0, _ = rc.compile(cell, backend="numpy").loss_and_grad(params, cx, cy)
    first = trainer(cell, rc.RTRL(), params)
    first.fit_online(cx, cy, every=3)
    assert rel_err(g0, step_taken(first, params)) < 1e-10
    for gradient in (rc.RTRL(), rc.SnAp(1)):
        runs = [trainer(cell, gradient, params, b) for b in ("numpy", "native")]
        losses = [tr.fit_online(x, y, every=3) for tr in runs]
        assert len(losses[0]) == 3
        np.testing.assert_allclose(losses[1], losses[0], rtol=1e-12)
        assert rel_err({k: np.asarray(v) for k, v in runs[0].params.items()},
                       {k: np.asarray(v) for k, v in runs[1].params.items()}) < 1e-12
    tr = trainer(cell, rc.UORO(seed=3), params)
    assert np.isfinite(tr.fit_online(x, y, every=3)).all()
    assert all(np.isfinite(v).all() for v in tr.params.values())
