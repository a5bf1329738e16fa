"""check_grads in the style of autograd's test_util: central differences in a random direction.

Tolerance: with float64 and a step of 1e-6, the central difference has truncation
error O(eps² f''') ≈ 1e-12 and rounding error O(u |f| / eps) ≈ 1e-10, so the
directional derivatives must agree to rtol 1e-6 / atol 1e-8 (generous by 100×,
far tighter than any real derivative bug).  Where they do not, truncation may be the cause
(a long, expansive recurrence has a huge third derivative: the fuzzer found T = 22 cells
whose central difference at 1e-6 is off by 4e-4 relative), so the check is repeated with the
Richardson extrapolation (4·D(eps/2) − D(eps))/3, error O(eps⁴), at the same tolerance.
"""
import numpy as np

import rnncomp as rc

EPS = 1e-6
RTOL = 1e-6
ATOL = 1e-8


def random_data(cell, T=4, B=3, seed=0, dtype="float64", scale=0.5):
    rng = np.random.default_rng(seed)
    st = cell.step
    params = cell.init_params(seed, dtype)
    params = {k: (v + rng.normal(0, 0.1, v.shape)).astype(dtype) for k, v in params.items()}
    inputs = {n: rng.normal(0, scale, (T, B, s)).astype(dtype) for n, s in st.inputs.items()}
    targets = {n: rng.normal(0, scale, (T, B, s)).astype(dtype) for n, s in st.targets.items()}
    return params, inputs, targets


def mask_and_h0(cell, T, B):
    """A random 0/1 mask (at least one step counted) and a random h0 for every state."""
    mask = (np.random.default_rng(2).random((T, B)) > 0.5).astype(float)
    mask[0, 0] = 1
    h0 = {s: np.random.default_rng(3).normal(size=(B, n)) for s, n in cell.step.states.items()}
    return mask, h0


def check_grads(model, params, inputs, targets, seed=1, rtol=RTOL, atol=ATOL, **kw):
    """Every parameter's gradient against a central difference in a random direction."""
    rng = np.random.default_rng(seed)
    loss, grads, _ = model.loss_and_grad(params, inputs, targets, **kw)
    assert np.isfinite(loss)
    checked = 0
    for name, value in params.items():
        d = rng.normal(size=value.shape)
        fd = _central(model, params, name, value, d, EPS, inputs, targets, kw)
        an = float((grads[name] * d).sum())
        if abs(fd - an) > atol + rtol * abs(fd):  # truncation error? extrapolate, then judge
            half = _central(model, params, name, value, d, EPS / 2, inputs, targets, kw)
            fd = (4 * half - fd) / 3
        assert abs(fd - an) <= atol + rtol * abs(fd), f"{name}: finite difference {fd} vs gradient {an}"
        checked += 1
    assert checked == len(params)
    return loss, grads


def _central(model, params, name, value, d, eps, inputs, targets, kw):
    plus = dict(params, **{name: value + eps * d})
    minus = dict(params, **{name: value - eps * d})
    return (model.loss_and_grad(plus, inputs, targets, **kw)[0]
            - model.loss_and_grad(minus, inputs, targets, **kw)[0]) / (2 * eps)


def assert_grads_close(g1, g2, rtol=1e-12, atol=1e-14):
    assert g1.keys() == g2.keys()
    for k in g1:
        np.testing.assert_allclose(g1[k], g2[k], rtol=rtol, atol=atol, err_msg=k)


def numpy_model(cell, dtype="float64"):
    return rc.compile(cell, backend="numpy", dtype=dtype)


def assert_matches_oracle(cell, backend, T=4, B=3, rtol=1e-9, atol=1e-12, **options):
    """A backend's loss and gradients against the NumPy oracle's, on :func:`random_data`."""
    params, inputs, targets = random_data(cell, T, B)
    ref = rc.compile(cell).loss_and_grad(params, inputs, targets)
    got = rc.compile(cell, backend=backend, **options).loss_and_grad(params, inputs, targets)
    assert abs(got[0] - ref[0]) <= rtol * abs(ref[0]), (got[0], ref[0])
    for k in params:
        np.testing.assert_allclose(got[1][k], ref[1][k], rtol=rtol, atol=atol, err_msg=k)
