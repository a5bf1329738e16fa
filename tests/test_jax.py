"""rnncomp.jax: the layer against the NumPy oracle, finite differences, jit and vmap.

Tolerances: float64 (x64 enabled per test).  The native layer and the oracle compute the
same sums in different orders: rtol 1e-10.  ``jax.test_util.check_grads`` compares
reverse-mode products with a central difference in one random direction; with a step of
1e-6 its truncation error is ~1e-12 and its rounding error ~1e-10, so rtol = atol = 1e-7
(its defaults, 1e-5 with a step of 1e-4, let a 0.1 % error through).
"""
from __future__ import annotations

import contextlib
import importlib

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="rnncomp.jax needs JAX (pip install 'rnncomp[jax]')")

import jax.numpy as jnp  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import rnncomp as rc  # noqa: E402
import rnncomp.jax  # noqa: E402,F401
from rnncomp.errors import CallError, CellError  # noqa: E402

from layer_cells import two_inputs_learned_state  # noqa: E402

RTOL = 1e-10
FD_EPS, FD_TOL = 1e-6, 1e-7


@contextlib.contextmanager
def x64_enabled(on: bool):
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", on)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", before)


@pytest.fixture(autouse=True)
def x64():
    with x64_enabled(True):
        yield


def _data(cell, T, B, seed):
    rng = np.random.default_rng(seed)
    st = cell.step
    params = {n: v + rng.normal(0, 0.3, v.shape) for n, v in cell.init_params(seed).items()}
    xs = {n: rng.normal(size=(T, B, s)) for n, s in st.inputs.items()}
    d_out = {o: rng.normal(size=(T, B, n)) for o, n in st.outputs.items()}
    d_fin = {s: rng.normal(size=(B, n)) for s, n in st.states.items()}
    return rng, params, xs, d_out, d_fin


def _close(a, b, what):
    np.testing.assert_allclose(np.asarray(a), b, rtol=RTOL, atol=RTOL * (1 + np.abs(b).max()), err_msg=what)


@pytest.mark.parametrize("backward", rc.jax.BACKWARDS)
@pytest.mark.parametrize("name", ["elman", "gru", "lstm", "two"])
def test_layer_matches_the_numpy_oracle_under_jit(name, backward):
    """Outputs, final states and jax.vjp's cotangents of params, inputs and the given h0,
    under jax.jit, against the oracle's forward and vjp."""
    cell = two_inputs_learned_state() if name == "two" else rc.cells.get(name)(3, 4, 2)
    st = cell.step
    rng, params, xs, d_out, d_fin = _data(cell, 5, 3, 0)
    first = next(iter(st.states)) if name != "two" else "c"  # "two": h from its learned state
    h0 = {first: rng.normal(size=(3, st.states[first]))}
    layer = rc.jax.recurrent(cell, dtype="float64", backward=backward)

    @jax.jit
    def run(params, xs, h0):
        return jax.vjp(lambda p, x, h: layer(p, x, h), params, xs, h0)

    (outs, final), back = run(params, xs, h0)
    d_params, d_xs, d_h0 = back((d_out, d_fin))
    oracle = rc.compile(cell, backend="numpy")
    want_outs, want_final = oracle.forward(params, xs, h0)
    res = oracle.vjp(params, xs, h0, d_outputs=d_out, d_final=d_fin)
    for o in st.outputs:
        _close(outs[o], want_outs[o], f"output {o}")
    for s in st.states:
        _close(final[s], want_final[s], f"final {s}")
    for p in st.params:
        _close(d_params[p], res.params[p], f"gradient of {p}")
    for x in st.inputs:
        _close(d_xs[x], res.inputs[x], f"gradient of input {x}")
    _close(d_h0[first], res.h0[first], f"gradient of h0 {first}")


@pytest.mark.parametrize("backward", rc.jax.BACKWARDS)
def test_check_grads_finite_differences(backward):
    """jax.test_util.check_grads (order 1, reverse mode) through params, both inputs, h0,
    with a learned initial state among the parameters."""
    cell = two_inputs_learned_state()
    rng, params, xs, _, _ = _data(cell, 3, 2, 1)
    layer = rc.jax.recurrent(cell, dtype="float64", backward=backward)
    c0 = rng.normal(size=(2, 2))

    def f(params, xs, c0):
        outs, final = layer(params, xs, {"c": c0})
        return outs["y"], outs["z"], final["h"], final["c"]

    check_grads(f, (params, xs, c0), order=1, modes=["rev"], eps=FD_EPS, atol=FD_TOL, rtol=FD_TOL)
    check_grads(jax.jit(f), (params, xs, c0), order=1, modes=["rev"], eps=FD_EPS, atol=FD_TOL, rtol=FD_TOL)


@pytest.mark.parametrize("backward", rc.jax.BACKWARDS)
def test_vmap_runs_one_call_per_element(backward):
    cell = rc.cells.elman(3, 4, 2)
    _, params, _, _, _ = _data(cell, 4, 2, 2)
    layer = rc.jax.recurrent(cell, output="y", dtype="float64", backward=backward)
    xs = np.random.default_rng(3).normal(size=(3, 4, 2, 3))
    got = jax.vmap(lambda x: layer(params, x)[0])(xs)
    for i in range(3):
        _close(got[i], np.asarray(layer(params, xs[i])[0]), f"element {i}")
    grads = jax.vmap(jax.grad(lambda x: layer(params, x)[0].sum()))(xs)
    for i in range(3):
        _close(grads[i], np.asarray(jax.grad(lambda x: layer(params, x)[0].sum())(xs[i])), f"gradient {i}")


@pytest.mark.parametrize("ffi", [True, False])
@pytest.mark.parametrize("backward", rc.jax.BACKWARDS)
def test_a_second_order_gradient_is_a_named_error(backward, ffi):
    """jax.grad of a jax.grad, jax.hessian and a jvp of a gradient differentiate the host calls;
    a named CallError, not JAX's "The FFI call to `rnncomp_host_call` cannot be differentiated.
    You can use `jax.custom_jvp`..." (found by a probe).  First order is unchanged."""
    cell = rc.cells.elman(3, 4, 2)
    _, params, xs, _, _ = _data(cell, 4, 2, 5)
    layer = rc.jax.Recurrent(rc.compile(cell, dtype="float64"), "y", backward, _ffi=ffi)

    def loss(p):
        return jnp.sum(layer(p, xs["x"])[0] ** 2)

    first_order_only = "cell 'elman': the gradient of its gradient .* first-order gradients only"
    with pytest.raises(CallError, match=first_order_only):
        jax.grad(lambda p: jnp.sum(jax.grad(loss)(p)["W"] ** 2))(params)
    with pytest.raises(CallError, match=first_order_only):
        jax.hessian(loss)(params)
    with pytest.raises(CallError, match=first_order_only):
        jax.jvp(jax.grad(loss), (params,), (params,))
    check_grads(loss, (params,), order=1, modes=["rev"], eps=FD_EPS, atol=FD_TOL, rtol=FD_TOL)


def test_training_with_jax_grad_decreases_the_loss():
    layer = rc.jax.recurrent(rc.cells.gru(2, 8, 1), output="y")  # float32
    t = np.linspace(0, 6, 20, dtype=np.float32)
    x = np.repeat(np.stack([np.sin(t), np.cos(t)], -1)[:, None], 4, 1)
    target = np.repeat(np.sin(t + 0.5)[:, None, None], 4, 1)
    loss = jax.jit(jax.value_and_grad(lambda p: jnp.mean((layer(p, x)[0] - target) ** 2)))
    p = layer.init_params(seed=0)
    first = None
    for _ in range(60):
        value, g = loss(p)
        first = value if first is None else first
        p = {k: v - 0.5 * g[k] for k, v in p.items()}
    assert loss(p)[0] < 0.3 * first, (first, loss(p)[0])


def test_params_may_be_any_mapping():
    """flax's FrozenDict and other read-only mappings: the same results as a dict (they were
    refused: 'params must be a dict')."""
    import types
    layer = rc.jax.recurrent(rc.cells.elman(3, 4, 2), dtype="float64")
    p, x = layer.init_params(0), np.ones((5, 2, 3))
    got, want = layer(types.MappingProxyType(p), x), layer(p, x)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda u, v: bool((u == v).all()), got, want))


def test_bad_calls_are_named():
    cell = rc.cells.lstm(3, 4, 2)
    layer = rc.jax.recurrent(cell, output="y", dtype="float64")
    p = layer.init_params()
    x = np.zeros((5, 2, 3))
    with pytest.raises(CallError, match=r"inputs\['x'\] has dtype float32, but the layer is float64"):
        layer(p, x.astype(np.float32))
    with pytest.raises(CallError, match=r"h0\['c'\] has shape \(3, 4\), expected \(2, 4\)"):
        layer(p, x, {"c": np.zeros((3, 4))})
    with pytest.raises(CallError, match=r"initial states \(h0\) names 'k'"):
        layer(p, x, {"k": np.zeros((2, 4))})
    with pytest.raises(CallError, match=r"params lacks 'Wi'"):
        layer({k: v for k, v in p.items() if k != "Wi"}, x)
    with pytest.raises(CallError, match=r"unknown params 'Wii'; expected 'Wi', "):
        layer({**p, "Wii": p["Wi"]}, x)
    with pytest.raises(CallError, match=r"params lacks 'Wi', .*; it has 'emb', 'rnn' instead \(the cell's "
                                        r"parameters are in params\['rnn'\]: pass that\)"):
        layer({"rnn": p, "emb": np.zeros(3)}, x)   # a model's whole parameter tree
    with pytest.raises(CallError, match=r"inputs must be \(T, B, n\) arrays, got shape \(2, 3\)"):
        layer(p, x[0])
    with pytest.raises(CellError, match=r"output='h'\) names no output.*'h' is a state"):
        rc.jax.recurrent(cell, output="h")
    with x64_enabled(False), pytest.raises(CallError, match="the layer is float64 but JAX runs in float32"):
        layer(p, x)


def test_init_params_takes_a_jax_prng_key():
    """A JAX user's seed is a key (found by a probe: ``init_params(jax.random.PRNGKey(0))`` was
    NumPy's "SeedSequence expects int or sequence of ints", naming neither the call nor what
    to pass).  A typed or raw key gives an int seed drawn from its bits: the same parameters
    for the same key, others for another; anything else that is no seed is named."""
    layer = rc.jax.recurrent(rc.cells.gru(3, 4, 2), output="y", dtype="float64")
    typed, raw = layer.init_params(jax.random.key(7)), layer.init_params(jax.random.PRNGKey(7))
    assert set(typed) == set(layer.model.step.params)
    for n in typed:
        assert typed[n].dtype == np.float64 and np.array_equal(typed[n], raw[n]), n
    assert not np.array_equal(typed["Wz"], layer.init_params(jax.random.key(8))["Wz"])
    assert np.array_equal(layer.init_params(3)["Wz"], layer.model.init_params(3)["Wz"])  # an int: as before
    for bad in (1.5, -1, "0"):
        with pytest.raises(CallError, match=r"init_params takes a seed \(an int >= 0\) or a JAX PRNG key"):
            layer.init_params(bad)
    with pytest.raises(CallError, match="init_params runs on the host"):
        jax.jit(layer.init_params)(jax.random.key(0))


def test_a_layer_made_inside_jit_runs_and_differentiates():
    """A layer made inside the function it is jitted with (as a flax or haiku module makes
    its layers in ``__call__``) dies once traced, and the compiled function holds only the
    key of its host functions: every call then failed ("host function … no longer exists",
    found by a probe).  A traced call now keeps its functions; an eager-only layer's go
    with it."""
    import gc
    from rnncomp import jax_ffi
    cell = rc.cells.elman(3, 4, 2)
    x = np.random.default_rng(0).standard_normal((3, 2, 3))
    made_outside = rc.jax.recurrent(cell, output="y", dtype="float64")
    params = made_outside.init_params()

    @jax.jit
    def inside(p, x):
        return (rc.jax.recurrent(cell, output="y", dtype="float64")(p, x)[0] ** 2).sum()
    want = jax.value_and_grad(lambda p, x: (made_outside(p, x)[0] ** 2).sum())(params, x)
    for _ in range(2):
        gc.collect()
        assert float(inside(params, x)) == pytest.approx(float(want[0]), rel=1e-12)
        got = jax.jit(jax.value_and_grad(lambda p, x: (rc.jax.recurrent(cell, output="y", dtype="float64")(
            p, x)[0] ** 2).sum()))(params, x)
        for k in params:
            np.testing.assert_allclose(got[1][k], want[1][k], rtol=1e-12, atol=1e-14)
    before = len(jax_ffi.FUNCTIONS._fns)
    eager = rc.jax.recurrent(cell, output="y", dtype="float64")
    eager(params, x)
    assert len(jax_ffi.FUNCTIONS._fns) > before
    del eager
    gc.collect()
    assert len(jax_ffi.FUNCTIONS._fns) == before


def test_nan_goes_through_like_any_jax_op():
    """No exception inside the callback (undefined behaviour in JAX): NaN in, NaN out."""
    cell = rc.cells.elman(3, 4, 2)
    layer = rc.jax.recurrent(cell, output="y", dtype="float64")
    x = np.zeros((3, 2, 3))
    x[1, 0, 0] = np.nan
    y, final = jax.jit(layer)(layer.init_params(), x)
    assert np.isnan(np.asarray(y)[1:, 0]).all() and np.isfinite(np.asarray(y)[:, 1]).all()
    assert np.isfinite(np.asarray(y)[0]).all() and np.isnan(np.asarray(final["h"])[0]).all()


def test_doctest():
    import doctest
    with x64_enabled(False):
        result = doctest.testmod(rc.jax)
        kept = doctest.testmod(importlib.import_module("rnncomp.jax_kept"))
    assert result.failed == 0 and result.attempted > 0
    assert kept.failed == 0 and kept.attempted > 0


@pytest.mark.parametrize("backward", rc.jax.BACKWARDS)
def test_lengths_of_a_padded_batch_match_one_call_per_sequence(backward):
    """Under jit (lengths static): outputs, final states and gradients of the padded batch
    against each sequence run alone over its own steps."""
    cell = two_inputs_learned_state()
    rng, params, xs, _, _ = _data(cell, 6, 4, 5)
    layer = rc.jax.recurrent(cell, dtype="float64", backward=backward)
    lengths = [3, 6, 1, 3]
    c0 = rng.normal(size=(4, 2))
    d = {k: rng.normal(size=s) for k, s in (("y", (6, 4, 2)), ("z", (6, 4, 2)), ("h", (4, 3)), ("c", (4, 2)))}

    def padded(params, xs, c0):
        outs, final = layer(params, xs, {"c": c0}, lengths=lengths)
        return (outs["y"] * d["y"]).sum() + (outs["z"] * d["z"]).sum() + (final["h"] * d["h"]).sum() \
            + (final["c"] * d["c"]).sum(), (outs, final)

    def alone(params, xs, c0):
        total = 0
        for b, n in enumerate(lengths):
            o, f = layer(params, {k: v[:n, b:b + 1] for k, v in xs.items()}, {"c": c0[b:b + 1]})
            total = total + (o["y"][:, 0] * d["y"][:n, b]).sum() + (o["z"][:, 0] * d["z"][:n, b]).sum() \
                + (f["h"][0] * d["h"][b]).sum() + (f["c"][0] * d["c"][b]).sum()
        return total

    (value, (outs, final)), grads = jax.jit(jax.value_and_grad(padded, argnums=(0, 1, 2), has_aux=True))(
        params, xs, c0)
    want_value, want = jax.value_and_grad(alone, argnums=(0, 1, 2))(params, xs, c0)
    _close(value, np.asarray(want_value), "the weighted sum")
    for got_tree, want_tree in zip(grads, want):
        for a, b in zip(jax.tree_util.tree_leaves(got_tree), jax.tree_util.tree_leaves(want_tree)):
            _close(a, np.asarray(b), "gradient")
    for b, n in enumerate(lengths):
        assert not np.asarray(outs["z"])[n:, b].any(), "outputs after a sequence's end are zeros"
    with pytest.raises(CallError, match="lengths must be static"):
        jax.jit(lambda n: layer(params, xs, lengths=n))(np.array(lengths))
    with pytest.raises(CallError, match=r"lengths must be 4 ints \(one per sequence\) from 1 to T = 6"):
        layer(params, xs, lengths=[0, 6, 1, 3])


def test_lengths_given_to_jit_as_a_list_are_named():
    """``jax.jit(layer)(p, x, lengths=[2, 4])``: jit makes each int of a list or tuple a tracer
    (found by a probe: NumPy's TracerArrayConversionError from inside the layer, where an
    array of lengths got the named error).  Closed over, or static, they still run."""
    layer = rc.jax.recurrent(rc.cells.elman(3, 4, 2), output="y", dtype="float64")
    params, x = layer.init_params(), np.ones((4, 2, 3))
    for lengths in ([2, 4], (2, 4)):
        with pytest.raises(CallError, match=r"lengths must be static .* not a traced value"):
            jax.jit(layer)(params, x, lengths=lengths)
    want = layer(params, x, lengths=[2, 4])
    got = jax.jit(layer, static_argnames="lengths")(params, x, lengths=(2, 4))
    _close(got[0], np.asarray(want[0]), "outputs")


def test_an_eager_kept_backward_with_numpy_inputs_uses_its_kept_forward(monkeypatch):
    """backward="kept" with NumPy arrays, eagerly (found by a probe): each host call got its own
    copy of x, so the backward found its arguments moved and ran model.vjp -- the forward again
    -- on 3 to 5 of 5 steps, silently.  The layer makes its arguments JAX arrays once per call."""
    layer = rc.jax.recurrent(rc.cells.gru(4, 16, 2), output="y")
    params = layer.init_params(seed=0)
    x = np.random.default_rng(0).normal(size=(10, 3, 4)).astype(np.float32)
    again = []
    vjp = layer.model.vjp
    monkeypatch.setattr(layer.model, "vjp", lambda *a, **k: again.append(1) or vjp(*a, **k))
    g = jax.grad(lambda p: layer(p, x)[0].sum())
    for _ in range(5):
        g(params)
    assert again == []
