"""Settling networks on the native backend (issue #20: "Native and NumPy backends for all").

``compile_fixed_point(cell, backend="native")`` relaxes with the natively compiled step and
takes the adjoint fixed point from its VJP entry points; the NumPy executor (the reference,
itself checked against finite differences and BPTT in tests/test_fixed_point.py) must agree
within 1e-10 relative in float64.  Relaxed to 1e-13, both executors stop at the same
iteration (asserted), and their states differ by rounding only (~1e-16 per step, damped by
the contraction); the adjoint solves to 1e-13 likewise.
"""
import re
import warnings

import numpy as np
import pytest

import rnncomp as rc
from rnncomp.algorithms.compiled import NumpyFallbackWarning
from test_fixed_point import CELLS, _data, _scaled, energy_cell


def _close(a, b, what, rtol=1e-10):
    """Relative to the largest entry of all of ``a``: a gradient that vanishes at the fixed
    point (the GRU's update gate: h̃ = h there) is compared at the scale of the others."""
    scale = max(float(np.abs(v).max()) for v in a.values())
    for k in a:
        assert np.abs(np.asarray(a[k]) - np.asarray(b[k])).max() <= rtol * scale, (what, k)


def _models(cell, **kw):
    return [rc.compile_fixed_point(cell, backend=b, **kw, **({"cache": None} if b == "native" else {}))
            for b in ("numpy", "native")]


@pytest.mark.parametrize("name", sorted(CELLS))
def test_native_settling_equals_numpy(name):
    cell = CELLS[name]()
    ref, nat = _models(cell, tol=1e-13, max_iter=2000)
    params = _scaled(ref)
    x, y = _data(cell)
    _close(ref.forward(params, x), nat.forward(params, x), "s*")
    assert ref.iterations == nat.iterations
    for kw in ({}, {"solve": "direct"}, {"method": "bptt"}, {"method": "bptt", "iterations": 5}):
        (la, ga, sa), (lb, gb, sb) = ref.loss_and_grad(params, x, y, **kw), nat.loss_and_grad(params, x, y, **kw)
        assert abs(la - lb) <= 1e-10 * abs(la), kw
        _close(ga, gb, kw)
        _close(sa, sb, kw)


def test_native_energy_model_equals_numpy():
    """Free and nudged relaxations and EqProp run natively, and RBP and BPTT through the
    descent too: their Hessian-vector products are compiled (backends/native_hvp.py), no
    NumpyFallbackWarning."""
    cell, energy = energy_cell()
    ref, nat = _models(cell, energy=energy, tol=1e-13, max_iter=5000, step=0.5)
    rng = np.random.default_rng(0)
    params = {k: 0.5 * v + 0.2 * rng.normal(size=v.shape) for k, v in ref.init_params(0).items()}
    x, y = rng.normal(size=(4, 3)), np.eye(2)[rng.integers(0, 2, 4)]
    _close(ref.forward(params, x, y), nat.forward(params, x, y), "s0")
    assert ref.iterations == nat.iterations
    for kw in ({"method": "eqprop", "beta": 0.05}, {"method": "eqprop", "beta": 0.05, "symmetric": True}):
        (la, ga, _), (lb, gb, _) = ref.loss_and_grad(params, x, y, **kw), nat.loss_and_grad(params, x, y, **kw)
        assert abs(la - lb) <= 1e-10 * abs(la)
        _close(ga, gb, kw, rtol=1e-8)  # (∂F(s^β) − ∂F(s⁰))/β: rounding divided by β = 0.05
    assert nat.E.kernel is not None
    for kw in ({"method": "rbp"}, {"method": "bptt", "iterations": 30}):
        with warnings.catch_warnings():
            warnings.simplefilter("error", NumpyFallbackWarning)
            _, gb, _ = nat.loss_and_grad(params, x, y, **kw)
        _close(ref.loss_and_grad(params, x, y, **kw)[1], gb, kw)


def test_native_hessian_vector_products_equal_numpys():
    """The compiled H μ and μᵀ ∂²E/∂s∂θ at a few points and directions against the NumPy
    executor's (the same programs; 1e-12 relative to each result's largest entry), and H μ
    against central differences of ∂E/∂s (float64, step 1e-6: O(h²) ≈ 1e-12 truncation,
    ~1e-10 rounding of the gradient difference, so 1e-6 relative)."""
    cell, energy = energy_cell()
    ref, nat = _models(cell, energy=energy, tol=1e-13, max_iter=5000, step=0.5)
    rng = np.random.default_rng(1)
    params = {k: 0.5 * v + 0.2 * rng.normal(size=v.shape) for k, v in ref.init_params(0).items()}
    x, y = rng.normal(size=(4, 3)), np.eye(2)[rng.integers(0, 2, 4)]
    call = nat._call(params, x, y, None)
    seqs, B, dt = {**call.inputs, **call.targets}, call.B, np.dtype("float64")
    for _ in range(3):
        s = {k: rng.normal(size=(B, n)) for k, n in nat.step.states.items()}
        mu = {k: rng.normal(size=(B, n)) for k, n in nat.step.states.items()}
        h_ref, m_ref = ref.E.hessian_products(ref.E.evaluate(params, s, seqs, B, dt), mu, B, dt)
        h_nat, m_nat = nat.E.hessian_products(nat.E.evaluate(params, s, seqs, B, dt), mu, B, dt)
        _close(h_ref, h_nat, "H μ", rtol=1e-12)
        _close(m_ref, m_nat, "μᵀ ∂²E/∂s∂θ", rtol=1e-12)
        eps = 1e-6
        up = nat.gE.grad(call, {k: s[k] + eps * mu[k] for k in s})[1]
        down = nat.gE.grad(call, {k: s[k] - eps * mu[k] for k in s})[1]
        _close(h_nat, {k: (up[k] - down[k]) / (2 * eps) for k in s}, "H μ vs central differences", rtol=1e-6)


def test_without_native_hessian_code_the_products_run_on_numpy(monkeypatch):
    """Where the compiled products have no code (simulated: the kernel refuses), the NumPy
    executor runs them after a warning that says why, with the NumPy numbers."""
    from rnncomp.backends import native_hvp
    from rnncomp.errors import CompileError

    def refuse(self, *a, **k):
        raise CompileError("cell 'x': the native Hessian-vector product has no code for op 'new'")

    monkeypatch.setattr(native_hvp.HvpKernel, "__init__", refuse)
    cell, energy = energy_cell()
    ref, nat = _models(cell, energy=energy, tol=1e-13, max_iter=5000, step=0.5)
    rng = np.random.default_rng(0)
    params = {k: 0.5 * v + 0.2 * rng.normal(size=v.shape) for k, v in ref.init_params(0).items()}
    x, y = rng.normal(size=(4, 3)), np.eye(2)[rng.integers(0, 2, 4)]
    with pytest.warns(NumpyFallbackWarning, match="Hessian-vector products.*no code for op 'new'"):
        _, gb, _ = nat.loss_and_grad(params, x, y, method="rbp")
    _close(ref.loss_and_grad(params, x, y, method="rbp")[1], gb, "rbp on NumPy")


def test_backend_errors():
    cell = CELLS["elman"]()
    with pytest.raises(ValueError, match="backend='ptx'.*'numpy', 'native'"):
        rc.compile_fixed_point(cell, backend="ptx")
    with pytest.raises(ValueError, match=r"\['threads'\] are for backend='native'"):
        rc.compile_fixed_point(cell, threads=1)


def _diverging():
    """s ← 2s + b: no fixed point to reach, |s| doubles each iteration."""
    cell = rc.Cell("blow")
    cell.input("x", 1)
    h = cell.state("h", 2)
    cell.update(h, 2.0 * h + cell.param("b", 2))
    cell.loss(rc.vsum(h.new ** 2))
    return cell


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_a_diverging_relaxation_is_the_same_fixed_point_error_on_both_backends(backend):
    """Found by an adversarial probe: native said "CallError: h0['h'] contains inf" (its own
    iterate re-checked as if the caller had passed it), NumPy ran all max_iter iterations on
    NaN before "did not converge: ... = nan"."""
    model = rc.compile_fixed_point(_diverging(), tol=1e-10, max_iter=5000, backend=backend,
                                   **({"cache": None} if backend == "native" else {}))
    params, x = {"b": np.array([1.0, 2.0])}, np.ones((2, 1))
    message = (r"^cell 'blow': the forward relaxation diverged: state 'h' is not finite after (\d+) iterations; "
               r"the update may not be a contraction")
    for call in (lambda: model.forward(params, x), lambda: model.loss_and_grad(params, x, {})):
        with np.errstate(all="ignore"), pytest.raises(rc.FixedPointError, match=message) as err:
            call()
        assert int(re.match(message, str(err.value)).group(1)) < 1100   # stopped where it diverged


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_a_diverging_energy_descent_is_a_fixed_point_error(backend):
    cell = rc.Cell("hill")
    x, s = cell.input("x", 1), cell.state("s", 2)
    cell.update(s, s)
    cell.loss(rc.vsum(s.new ** 2))
    model = rc.compile_fixed_point(cell, energy=-s ** 2 - cell.param("b", 2) * s, max_iter=5000, step=0.5,
                                   backend=backend, **({"cache": None} if backend == "native" else {}))
    with np.errstate(all="ignore"), pytest.raises(
            rc.FixedPointError, match=r"^cell 'hill': gradient descent on the energy \(β = 0\) diverged: state 's' "
                                      r"is not finite after \d+ iterations"):
        model.forward({"b": np.array([1.0, 2.0])}, np.ones((2, 1)), {})
