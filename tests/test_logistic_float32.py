"""A hand-written logistic ratio in float32 on every backend (rnncomp.logistic).

h' = h/2 + (e/(1+e))**2 with e = exp(W·x + b): sympy holds exp(2u)/(exp(u) + 1)**2, and in
float32 exp(2u) and the square overflow from u ≈ 44: loss and gradients were NaN on the NumPy and
native backends although the value is σ(u)² ≤ 1.  Lowered as σ(u)², every backend agrees with
float64 NumPy, which itself agrees with central differences.
"""
import numpy as np
import pytest
import sympy as sp

import rnncomp as rc

from gradcheck import check_grads


def squared_ratio_cell():
    cell = rc.Cell("sq")
    x, h = cell.input("x", 3), cell.state("h", 4)
    e = sp.exp(cell.param("W", (4, 3)) @ x + cell.param("b", 4))
    cell.update(h, h / 2 + (e / (1 + e)) ** 2)
    cell.loss(h.new ** 2)
    return cell


def hand_sigmoid_cell():
    """1/(1 + exp(-u)): its derivative as sympy writes it, exp(-u)/(1 + exp(-u))**2, is NaN
    in float32 for u ≲ -44."""
    cell = rc.Cell("hand")
    x, h = cell.input("x", 3), cell.state("h", 4)
    u = cell.param("W", (4, 3)) @ x + cell.param("b", 4)
    cell.update(h, h / 2 + 1 / (1 + sp.exp(-u)) * sp.tanh(u / 50))
    cell.loss(h.new ** 2)
    return cell


def _data(dtype, scale=80.0):
    """|W·x + b| past 50 on both sides: exp(2u) overflows float32 from 44."""
    rng = np.random.default_rng(0)
    params = {"W": rng.normal(size=(4, 3)) * scale, "b": rng.normal(size=4)}
    x = rng.normal(size=(3, 2, 3))
    u = np.einsum("ij,tbj->tbi", params["W"], x) + params["b"]
    assert scale < 80 or (u.max() > 50 and u.min() < -50)
    return {k: v.astype(dtype) for k, v in params.items()}, {"x": x.astype(dtype)}


@pytest.mark.parametrize("make", [squared_ratio_cell, hand_sigmoid_cell])
@pytest.mark.parametrize("backend", ["numpy", "native", "ptx"])
def test_float32_matches_float64(make, backend):
    opts = {"runner": "host"} if backend == "ptx" else {}
    cell = make()
    p64, x64 = _data("float64")
    want_loss, want, _ = rc.compile(cell, backend="numpy", dtype="float64").loss_and_grad(p64, x64, {})
    p32, x32 = _data("float32")
    loss, g, _ = rc.compile(cell, backend=backend, dtype="float32", **opts).loss_and_grad(p32, x32, {})
    assert np.isfinite(loss) and loss == pytest.approx(want_loss, rel=1e-5), backend
    for k in want:
        assert np.isfinite(g[k]).all(), (backend, k, g[k])
        np.testing.assert_allclose(g[k], want[k], rtol=1e-4, atol=1e-4 * np.abs(want[k]).max(), err_msg=k)


@pytest.mark.parametrize("make", [squared_ratio_cell, hand_sigmoid_cell])
def test_float64_gradient_matches_central_differences(make):
    cell = make()
    params, inputs = _data("float64", scale=3.0)  # saturated units have ~0 derivatives: scale 3
    check_grads(rc.compile(cell, backend="numpy", dtype="float64"), params, inputs, {})


def test_the_cell_text_keeps_what_was_written_and_the_listing_shows_sigma():
    cell = squared_ratio_cell()
    assert "exp(2*b + 2*(W·x[t]))/(exp(b + W·x[t]) + 1)**2" in str(cell)
    assert "sigmoid(" in rc.explain(cell).backward_text()


def hand_softplus_cell():
    """u·σ(u) − log(1 + exp(u)) (≈ 0 for large u) and log(1/(1 + exp(-u))): in float32
    exp(u) overflows from u ≈ 89, and the first came out −inf (the state tanh of it −1, where
    float64 says ≈ 0), the gradients NaN; σ(u) underflows from u ≈ −104 and the log of it is −inf.
    Lowered as u·σ(u) − softplus(u) and −softplus(−u)."""
    cell = rc.Cell("hand_softplus")
    x, h = cell.input("x", 3), cell.state("h", 4)
    u = cell.param("W", (4, 3)) @ x + cell.param("b", 4)
    cell.update(h, h / 2 + sp.tanh(u * rc.sigmoid(u) - sp.log(1 + sp.exp(u)))
                + sp.tanh(sp.log(1 / (1 + sp.exp(-u))) / 200))
    cell.loss(h.new ** 2)
    return cell


@pytest.mark.parametrize("backend", ["numpy", "native", "ptx"])
def test_hand_softplus_float32_matches_float64(backend):
    opts = {"runner": "host"} if backend == "ptx" else {}
    cell = hand_softplus_cell()
    p64, x64 = _data("float64", scale=300.0)
    u = np.einsum("ij,tbj->tbi", p64["W"], x64["x"]) + p64["b"]
    assert u.max() > 150 and u.min() < -150
    want_loss, want, _ = rc.compile(cell, backend="numpy", dtype="float64").loss_and_grad(p64, x64, {})
    p32, x32 = _data("float32", scale=300.0)
    loss, g, _ = rc.compile(cell, backend=backend, dtype="float32", **opts).loss_and_grad(p32, x32, {})
    # float64 on data rounded to float32 would be closer; 1e-4 leaves room for the rounded data
    assert np.isfinite(loss) and loss == pytest.approx(want_loss, rel=1e-4), backend
    for k in want:
        assert np.isfinite(g[k]).all(), (backend, k, g[k])
        np.testing.assert_allclose(g[k], want[k], rtol=1e-4, atol=1e-4 * np.abs(want[k]).max(), err_msg=k)
