"""Gradient sums over many rows in float32 (T·B terms of one parameter's gradient).

A bias's gradient is Σ over all T·B rows of its δ; summed in float32 one row after another,
the sum stops growing once each row's term is small beside it.  With every y − target ≈ −30
(targets offset by 30), ∂L/∂by is ≈ −30, built from T·B = 4·10⁶ terms of ≈ −7.5·10⁻⁶: the
native backend's float32 sum came out 3.4·10⁻³ off (1.4 % at T·B = 10⁷), while the weight
gradients (products, their depth-B sums in registers) stayed within 2·10⁻⁶.  Each column is now summed
in double and rounded once per step (per call after the loop, ``grad_after``).
"""
import numpy as np
import pytest

import rnncomp as rc


def _data(T, B):
    cell = rc.cells.elman(1, 2, 1)
    rng = np.random.default_rng(0)
    params = cell.init_params(0, "float32")
    x = rng.normal(size=(T, B, 1)).astype(np.float32)
    target = (30 + rng.normal(size=(T, B, 1))).astype(np.float32)
    return cell, params, x, target


@pytest.mark.parametrize("grad_after", [False, True])
def test_bias_gradient_over_millions_of_rows(grad_after):
    cell, params, x, target = _data(2000, 2000)
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    _, want, _ = rc.compile(cell, backend="numpy", dtype="float64").loss_and_grad(
        p64, x.astype(np.float64), target.astype(np.float64))
    model = rc.compile(cell, backend="native", dtype="float32", grad_after=grad_after)
    _, got, _ = model.loss_and_grad(params, x, target)
    # the float64 oracle against float32 data: 2·10⁻⁶ is ~17 ulp (measured ≤ 4.2·10⁻⁷ for the
    # biases, ≤ 1.7·10⁻⁶ for the products' T float32 accumulations); the running sum missed 1700×
    for k in ("b", "by", "W", "V"):
        np.testing.assert_allclose(got[k], want[k], rtol=2e-6, atol=2e-6 * np.abs(want[k]).max(), err_msg=k)
