"""A hand-written quotient's derivative in float32 on every backend (docs/reliability.md).

h' = e/(1+e) + h with e = exp(w·x): sympy's derivative holds -e/(1+e)**2 + 1/(1+e).  At w·x = 60,
(1+e)² overflows float32; printed as one division by the square, the gradient was 3.6e3 on
the NumPy, native and PTX backends alike (float64: ~1e-23).  Every printer now divides by the
base one time after another (``rnncomp.functions.SEQUENTIAL_DIVISIONS``).  Checked against
the closed form x²·σ'(wx): ~0 at 60 (|g| ≤ 1e-6), and at wx = 1.5 within 1e-5 relative
(float32 rounding of a handful of operations).
"""
import math

import numpy as np
import pytest
import sympy as sp

import rnncomp as rc


def quotient_cell():
    cell = rc.Cell("quotient")
    x, h, w = cell.input("x", 1), cell.state("h", 1), cell.param("w", 1)
    e = sp.exp(w * x)
    cell.update(h, e / (1 + e) + h)
    cell.loss(rc.vsum(h.new * x))
    return cell


def shared_denominator_cell():
    """Two states read one quotient's denominator: (1+e)**-2 comes twice in the backward, and
    the NumPy oracle's common sub-expressions made it a value of its own, 1/z/z, which is 0 in
    float32 (found by a review: the gradient was 3.6e3 again, on NumPy only)."""
    cell = rc.Cell("quotient2")
    x, h, g = cell.input("x", 1), cell.state("h", 1), cell.state("g", 1)
    w, v = cell.param("w", 1), cell.param("v", 1)
    e = sp.exp(w * x)
    cell.update(h, e / (1 + e) + h)
    cell.update(g, v / (1 + e) + g)
    cell.loss(rc.vsum(h.new * x + g.new))
    return cell


def closed_form(wx, x):
    """∂/∂w of x·σ(w·x) (one step from h = 0)."""
    s = 1 / (1 + math.exp(-wx))
    return x * x * s * (1 - s)


@pytest.mark.parametrize("backend", ["numpy", "native", "ptx"])
@pytest.mark.parametrize("x", [60.0, 1.5])
def test_float32_quotient_gradient(backend, x):
    opts = {"runner": "host"} if backend == "ptx" else {}
    model = rc.compile(quotient_cell(), backend=backend, dtype="float32", **opts)
    params = {"w": np.ones(1, dtype=np.float32)}
    _, g, *_ = model.loss_and_grad(params, {"x": np.full((1, 1, 1), x, dtype=np.float32)}, {})
    want = closed_form(x, x)
    if x > 50:
        assert abs(float(g["w"][0])) <= 1e-6, (backend, g["w"])
    else:
        assert float(g["w"][0]) == pytest.approx(want, rel=1e-5), backend


@pytest.mark.parametrize("backend", ["numpy", "native", "ptx"])
@pytest.mark.parametrize("x", [60.0, 1.5])
def test_float32_shared_denominator(backend, x):
    """One step from zero states: ℓ = x·σ(wx) + v·(1 − σ(wx)), so ∂ℓ/∂w = (x − v)·x·σ'(wx) and
    ∂ℓ/∂v = 1 − σ(wx); ~0 and ~0 at wx = 60 (|g| ≤ 1e-6), 1e-5 relative at 1.5."""
    opts = {"runner": "host"} if backend == "ptx" else {}
    model = rc.compile(shared_denominator_cell(), backend=backend, dtype="float32", **opts)
    params = {"w": np.ones(1, dtype=np.float32), "v": np.ones(1, dtype=np.float32)}
    _, g, *_ = model.loss_and_grad(params, {"x": np.full((1, 1, 1), x, dtype=np.float32)}, {})
    s = 1 / (1 + math.exp(-x))
    want_w, want_v = (x - 1) * x * s * (1 - s), 1 - s
    if x > 50:
        assert abs(float(g["w"][0])) <= 1e-6 and abs(float(g["v"][0])) <= 1e-6, (backend, g)
    else:
        assert float(g["w"][0]) == pytest.approx(want_w, rel=1e-5), backend
        assert float(g["v"][0]) == pytest.approx(want_v, rel=1e-5), backend


def temperature_cell():
    """h' = e/(1+e)/τ + h, e = exp(w·x): sympy keeps e·(e+1)⁻¹·τ⁻¹, which the printers wrote
    e/((e+1)·τ); at w·x = 86, τ = 100, (e+1)·τ = 2.2e39 is inf in float32 (found by a probe:
    loss 0 for 0.01 on every backend, ∂ℓ/∂w −0.86 for ~0 on native and PTX)."""
    cell = rc.Cell("temperature")
    x, h = cell.input("x", 1), cell.state("h", 1)
    w, tau = cell.param("w", 1), cell.param("tau", 1)
    e = sp.exp(w * x)
    cell.update(h, e / (1 + e) / tau + h)
    cell.loss(rc.vsum(h.new))
    return cell


@pytest.mark.parametrize("backend", ["numpy", "native", "ptx"])
@pytest.mark.parametrize("x", [86.0, 1.5])
def test_float32_denominator_of_two_factors(backend, x):
    """ℓ = σ(wx)/τ: ∂ℓ/∂w = x·σ'(wx)/τ, ∂ℓ/∂τ = −σ(wx)/τ²; at 86, ℓ = 0.01, ∂ℓ/∂w ~0 (|g| ≤ 1e-6),
    ∂ℓ/∂τ = −1e-4; everything 1e-5 relative to the closed form where it is not ~0."""
    opts = {"runner": "host"} if backend == "ptx" else {}
    model = rc.compile(temperature_cell(), backend=backend, dtype="float32", **opts)
    params = {"w": np.ones(1, dtype=np.float32), "tau": np.full(1, 100.0, dtype=np.float32)}
    loss, g, *_ = model.loss_and_grad(params, {"x": np.full((1, 1, 1), x, dtype=np.float32)}, {})
    s = 1 / (1 + math.exp(-x))
    assert float(loss) == pytest.approx(s / 100, rel=1e-5), backend
    assert float(g["tau"][0]) == pytest.approx(-s / 100 ** 2, rel=1e-5), backend
    want_w = x * s * (1 - s) / 100
    if x > 50:
        assert abs(float(g["w"][0])) <= 1e-6, (backend, g["w"])
    else:
        assert float(g["w"][0]) == pytest.approx(want_w, rel=1e-5), backend
