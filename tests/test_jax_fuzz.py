"""rnncomp.jax on fuzzed cells (issue #16): the layer against the NumPy oracle and finite differences.

tests/test_jax.py checks the JAX layer on zoo cells; the PyTorch layer and the VJP API are
fuzzed (tests/test_torch.py, tests/test_vjp.py).  Here each cell from ``fuzzgen.fuzz_cells``
(1–2 states, learned initial states, Jordan states, stacked gates, kinks, names the passes
generate) and call from ``fuzzgen.calls`` (T, B, which states get an h0, the native options)
goes through ``rc.jax.recurrent`` on both backends (native with the drawn options, numpy)
with every ``backward=`` strategy, in float64:

1. outputs (every output: ``output=None``) and final states == ``oracle.forward``;
2. ``jax.vjp``'s cotangents of params, inputs and the given h0 for random cotangents of
   every output and every final state == ``oracle.vjp`` (its ``res.params`` includes a
   learned initial state's gradient, which reaches the layer through its broadcast);
3. ``jax.grad`` of J = Σ⟨δy, y⟩ + Σ⟨δh_T, h_T⟩ (the same cotangents) == the same;
4. once per cell, ``jax.jit(jax.value_and_grad(J))`` on one drawn backend / strategy /
   host-call kind (the XLA FFI handler or ``jax.pure_callback``) == the same;
5. away from kinks, a few single entries of that gradient (a parameter's, an input's,
   an h0's) == central differences of the oracle's J.

Tolerances: the layer and the oracle compute the same float64 sums in different orders
(native: other loop orders, fused/packed/hoisted by the drawn options), so they agree to
rounding: rtol 1e-10 of each array's largest entry (10⁵ ulps for T ≤ 4), as tests/test_jax.py.
Finite differences: ``gradcheck``'s step 1e-6 and rtol 1e-6 / atol 1e-8 (truncation ~1e-12,
rounding ~1e-10: 100× slack, far tighter than a real derivative bug), with Richardson
extrapolation where truncation dominates; skipped when a kink argument lies within 1e-4 of
its kink (tests/test_vjp.py's margin), where a difference straddles the kink.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import event, given, settings, strategies as st

jax = pytest.importorskip("jax", reason="rnncomp.jax needs JAX (pip install 'rnncomp[jax]')")

import jax.numpy as jnp  # noqa: E402

import rnncomp as rc  # noqa: E402
import rnncomp.jax  # noqa: E402,F401

from fuzzgen import calls, fuzz_cells, fuzz_data  # noqa: E402
from gradcheck import ATOL, EPS, RTOL as FD_RTOL  # noqa: E402

pytestmark = pytest.mark.usefixtures("jax_x64")

RTOL = 1e-10
KINK_MARGIN = 1e-4
BACKENDS = ("native", "numpy")
#: examples: each runs 6 layers eagerly and one jitted, ~1.5–2 s here (2 shared cores; the file ~20–25 s)
JAX_FUZZ_CI_EXAMPLES = 12


def _close(got, want, what):
    want = np.asarray(want)
    np.testing.assert_allclose(np.asarray(got), want, rtol=RTOL, atol=RTOL * (1 + np.abs(want).max(initial=0)),
                               err_msg=what)


def _check(got, want, what):
    """``got`` = (params, inputs, h0) cotangents from JAX against the oracle's ``Gradients``."""
    d_params, d_xs, d_h0 = got
    assert set(d_params) == set(want.params) and set(d_xs) == set(want.inputs), what
    for p in want.params:
        _close(d_params[p], want.params[p], f"{what}: gradient of param {p}")
    for x in want.inputs:
        _close(d_xs[x], want.inputs[x], f"{what}: gradient of input {x}")
    for s in d_h0:
        _close(d_h0[s], want.h0[s], f"{what}: gradient of h0 {s}")


def _objective(layer, d_out, d_fin):
    """J(params, inputs, h0) = Σ⟨δy, y⟩ + Σ⟨δh_T, h_T⟩ through ``layer`` (all outputs)."""
    def J(params, xs, h0):
        outs, final = layer(params, xs, h0)
        return (sum(jnp.sum(outs[o] * d) for o, d in d_out.items())
                + sum(jnp.sum(final[s] * d) for s, d in d_fin.items()))
    return J


def _fd_entries(oracle, args, grads, d_out, d_fin, rng):
    """One random entry of a random parameter, of an input and of a given h0: the gradient
    entry against the central difference of the oracle's J in that entry."""
    def J(moved):
        outs, fin = oracle.forward(*moved)
        return (sum(float((outs[o] * d).sum()) for o, d in d_out.items())
                + sum(float((fin[s] * d).sum()) for s, d in d_fin.items()))

    for g, (values, grad) in enumerate(zip(args, grads)):
        if not values:  # no h0 given
            continue
        name = sorted(values)[rng.integers(len(values))]
        at = tuple(int(rng.integers(n)) for n in np.shape(values[name]))

        def D(eps):
            def moved(sign):
                a = [dict(v) for v in args]
                a[g][name] = np.array(values[name], copy=True)
                a[g][name][at] += sign * eps
                return a
            return (J(moved(1)) - J(moved(-1))) / (2 * eps)

        an, fd = float(np.asarray(grad[name])[at]), D(EPS)
        if abs(fd - an) > ATOL + FD_RTOL * abs(fd):  # truncation? Richardson, then judge
            fd = (4 * D(EPS / 2) - fd) / 3
        what = ("param", "input", "h0")[g]
        assert abs(fd - an) <= ATOL + FD_RTOL * abs(fd), f"{what} {name}{list(at)}: central difference {fd} vs {an}"


@settings(max_examples=JAX_FUZZ_CI_EXAMPLES)
@given(fuzz_cells(max_states=2, max_depth=2), calls(max_T=4, max_B=3),
       st.sampled_from(BACKENDS), st.sampled_from(rc.jax.BACKWARDS), st.booleans())
def test_fuzzed_cells_against_the_numpy_oracle(cell, call, jit_backend, jit_backward, ffi):
    T, B, seed, _, h0_kind, opts = call
    params, xs, _, _, h0 = fuzz_data(cell, T, B, seed, None, h0_kind)
    st_ = cell.step
    rng = np.random.default_rng(seed + 7)
    d_out = {o: rng.normal(size=(T, B, n)) for o, n in st_.outputs.items()}
    d_fin = {s: rng.normal(size=(B, n)) for s, n in st_.states.items()}
    oracle = rc.compile(cell, backend="numpy")
    want_outs, want_final = oracle.forward(params, xs, h0)
    want = oracle.vjp(params, xs, h0, d_outputs=d_out, d_final=d_fin)
    for backend in BACKENDS:
        options = opts if backend == "native" else {}
        for backward in rc.jax.BACKWARDS:
            what = f"{backend}, backward={backward!r}"
            layer = rc.jax.recurrent(cell, backend=backend, dtype="float64", backward=backward, **options)
            (outs, final), back = jax.vjp(lambda p, x, h: layer(p, x, h), params, xs, h0)
            for o in st_.outputs:
                _close(outs[o], want_outs[o], f"{what}: output {o}")
            for s in st_.states:
                _close(final[s], want_final[s], f"{what}: final {s}")
            _check(back((d_out, d_fin)), want, f"{what}: jax.vjp")
            _check(jax.grad(_objective(layer, d_out, d_fin), argnums=(0, 1, 2))(params, xs, h0), want,
                   f"{what}: jax.grad")
    # once under jit, on the FFI handler or pure_callback (the host call off JAX's CPU backend)
    model = rc.compile(cell, backend=jit_backend, dtype="float64", **(opts if jit_backend == "native" else {}))
    layer = rc.jax.Recurrent(model, None, jit_backward, _ffi=ffi)
    value, grads = jax.jit(jax.value_and_grad(_objective(layer, d_out, d_fin), argnums=(0, 1, 2)))(params, xs, h0)
    what = f"jit, {jit_backend}, backward={jit_backward!r}, {'FFI' if ffi else 'pure_callback'}"
    J = sum((want_outs[o] * d).sum() for o, d in d_out.items()) + sum((want_final[s] * d).sum()
                                                                        for s, d in d_fin.items())
    _close(value, J, f"{what}: J")
    _check(grads, want, what)
    margin = min([np.abs(want_outs[k]).min() for k in getattr(cell, "_fuzz_kinks", [])] + [np.inf])
    event(f"h0 given: {h0_kind}; {'finite differences' if margin >= KINK_MARGIN else 'near a kink: no FD'}")
    if margin >= KINK_MARGIN:
        _fd_entries(oracle, (params, xs, h0), grads, d_out, d_fin, rng)
