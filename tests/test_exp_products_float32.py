"""Products of exponentials written by hand, in float32 on every backend (rnncomp.logistic.exp_products).

A Gumbel density g = exp(u)·exp(-exp(u)) squared is exp(2u)·exp(-2·exp(u)) as sympy holds it: in
float32 exp(2u) overflows from u ≈ 44 and the product is inf·0 = NaN where the value is ~0 (loss
and gradients NaN on the NumPy, native and PTX backends for |u| ≤ 80).  Lowered as one
exp(2u - 2·exp(u)), every backend agrees with float64 NumPy, which agrees with central differences;
the backward step is derived from the lowered form, so its gradients are finite too.
"""
import numpy as np
import pytest
import sympy as sp

import rnncomp as rc
from rnncomp.logistic import exp_products

from gradcheck import check_grads


def gumbel_cell():
    cell = rc.Cell("gumbel")
    x, h = cell.input("x", 1), cell.state("h", 4)
    u = cell.param("W", (4, 1)) @ x + cell.param("b", 4)
    g = sp.exp(u) * sp.exp(-sp.exp(u))
    cell.update(h, h / 2 + g ** 2 + g * sp.tanh(u / 50))
    cell.loss(h.new ** 2)
    return cell


def _data(dtype, scale=80.0):
    """u = W·x + b from -scale to scale, through the values where g is not ~0."""
    x = np.array([[1.0, 0.55], [-1.0, 0.03], [0.7, -0.02]])[:, :, None]
    params = {"W": np.array([[1.0], [0.5], [-1.0], [0.04]]) * scale, "b": np.array([0.3, -0.2, 0.5, 0.1])}
    return {k: v.astype(dtype) for k, v in params.items()}, {"x": x.astype(dtype)}


@pytest.mark.parametrize("backend", ["numpy", "native", "ptx"])
def test_float32_matches_float64(backend):
    opts = {"runner": "host"} if backend == "ptx" else {}
    cell = gumbel_cell()
    p32, x32 = _data("float32")
    u = np.einsum("ij,tbj->tbi", p32["W"], x32["x"]) + p32["b"]
    assert u.max() > 79 and u.min() < -79 and (np.abs(u) < 81).all()
    p64 = {k: v.astype("float64") for k, v in p32.items()}  # the same numbers: only the arithmetic differs
    want_loss, want, _ = rc.compile(cell, backend="numpy", dtype="float64").loss_and_grad(p64, {"x": x32["x"].astype("float64")}, {})
    loss, g, _ = rc.compile(cell, backend=backend, dtype="float32", **opts).loss_and_grad(p32, x32, {})
    assert np.isfinite(loss) and loss == pytest.approx(want_loss, rel=1e-4), backend
    for k in want:
        assert np.isfinite(g[k]).all(), (backend, k, g[k])
        np.testing.assert_allclose(g[k], want[k], rtol=1e-4, atol=1e-4 * np.abs(want[k]).max(), err_msg=k)


def test_float64_gradient_matches_central_differences():
    params, inputs = _data("float64", scale=2.0)
    check_grads(rc.compile(gumbel_cell(), backend="numpy", dtype="float64"), params, inputs, {})


def test_products_of_exponentials_are_one_exponential():
    u, v = sp.symbols("u v", real=True)
    assert exp_products(sp.exp(2 * u) * sp.exp(-2 * sp.exp(u))) == sp.exp(2 * u - 2 * sp.exp(u))
    assert exp_products(sp.exp(u) * sp.exp(-v) * sp.tanh(u)) == sp.exp(u - v) * sp.tanh(u)
    assert exp_products(sp.tanh(sp.exp(u) * sp.exp(v)) + sp.exp(u)) == sp.tanh(sp.exp(u + v)) + sp.exp(u)
    assert exp_products(sp.sqrt(sp.exp(u) * sp.exp(v))) == sp.exp(u / 2 + v / 2)
    assert exp_products(sp.exp(u) * sp.tanh(v)) == sp.exp(u) * sp.tanh(v)   # one exponential: unchanged


def test_the_cell_text_keeps_what_was_written_and_the_listing_shows_one_exponential():
    cell = gumbel_cell()
    assert "exp(2*b + 2*(W·x[t]))*exp(-2*exp(b + W·x[t]))" in str(cell)
    listing = str(rc.explain(cell))   # the forward values the backward step reads: one exp of 2u - 2e^u
    assert "= 2*b - 2*exp(a₁)[t] + 2*(W·x[t])" in listing and "exp(2*b" not in listing.split("backward step")[1]
