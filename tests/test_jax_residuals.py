"""rnncomp.jax's three backward strategies: ``"kept"`` (the default) runs the backward of the
forward kept on rnncomp's side behind a handle, ``"residuals"`` reads the forward's kept
buffers returned to JAX as residuals, both running no forward again; ``"recompute"`` runs
``model.vjp`` (the forward again).  (tests/test_jax_kept.py: the handles' own behaviour.)

Oracles: the same cells written as ``jax.lax.scan`` and differentiated by JAX (float64; the
two compute the same sums in different orders: rtol 1e-10), the NumPy oracle's ``vjp``, and
a count of the native entry points each training step calls.
"""
from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="rnncomp.jax needs JAX (pip install 'rnncomp[jax]')")

import jax.numpy as jnp  # noqa: E402

import rnncomp as rc  # noqa: E402
import rnncomp.jax  # noqa: E402,F401
from rnncomp.errors import CallError  # noqa: E402

RTOL = 1e-10


pytestmark = pytest.mark.usefixtures("jax_x64")


# ----------------------------------------------------------------------------- lax.scan references
def _affine(p, gate, x, h):
    return x @ p[f"W{gate}"].T + h @ p[f"U{gate}"].T + p[f"b{gate}"]


def _elman(p, x, h):
    h = jnp.tanh(_affine(p, "", x, h["h"]))
    return {"h": h}, h


def _gru(p, x, h):
    h = h["h"]
    z, r = jax.nn.sigmoid(_affine(p, "z", x, h)), jax.nn.sigmoid(_affine(p, "r", x, h))
    n = jnp.tanh(x @ p["Wn"].T + (r * h) @ p["Un"].T + p["bn"])
    h = (1 - z) * n + z * h
    return {"h": h}, h


def _lstm(p, x, hc):
    h, c = hc["h"], hc["c"]
    i, f = jax.nn.sigmoid(_affine(p, "i", x, h)), jax.nn.sigmoid(_affine(p, "f", x, h))
    g, o = jnp.tanh(_affine(p, "g", x, h)), jax.nn.sigmoid(_affine(p, "o", x, h))
    c = f * c + i * g
    h = o * jnp.tanh(c)
    return {"h": h, "c": c}, h


SCAN_STEPS = {"elman": _elman, "gru": _gru, "lstm": _lstm}


def scan_layer(name):
    """rc.cells.<name>'s step as a lax.scan: (params, x, h0) -> (y (T, B, n_out), final)."""
    def run(p, x, h0):
        def step(h, x_t):
            h, h_new = SCAN_STEPS[name](p, x_t, h)
            return h, h_new @ p["V"].T + p["by"]
        final, y = jax.lax.scan(step, h0, x)
        return y, final
    return run


def _problem(name, T, B, seed):
    cell = rc.cells.get(name)(3, 4, 2)
    rng = np.random.default_rng(seed)
    params = {n: v + rng.normal(0, 0.3, v.shape) for n, v in cell.init_params(seed).items()}
    x = rng.normal(size=(T, B, 3))
    h0 = {s: rng.normal(size=(B, n)) for s, n in cell.step.states.items()}
    dy = rng.normal(size=(T, B, 2))
    d_fin = {s: rng.normal(size=(B, n)) for s, n in cell.step.states.items()}
    return cell, params, x, h0, dy, d_fin


def _weighted(layer, dy, d_fin):
    """A scalar of every output and final state: its gradient is the layer's VJP of (dy, d_fin)."""
    def f(p, x, h0):
        y, final = layer(p, x, h0)
        return (y * dy).sum() + sum((final[s] * d_fin[s]).sum() for s in d_fin)
    return f


def _close(got, want, what):
    got, want = np.asarray(got), np.asarray(want)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * (1 + np.abs(want).max()), err_msg=what)


def _close_trees(got, want):
    for path, a in jax.tree_util.tree_leaves_with_path(got):
        b = want
        for k in path:
            b = b[k.key if hasattr(k, "key") else k.idx]
        _close(a, b, jax.tree_util.keystr(path))


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("backward", rc.jax.BACKWARDS)
@pytest.mark.parametrize("name", ["elman", "gru", "lstm"])
@pytest.mark.parametrize("B", [3, 17])  # 17 with threads=2: two batch slices, residuals of each
def test_gradients_match_jax_scan_of_the_same_cell(name, B, backward):
    cell, params, x, h0, dy, d_fin = _problem(name, 6, B, 0)
    layer = rc.jax.recurrent(cell, dtype="float64", output="y", threads=2, backward=backward)
    got = jax.jit(jax.grad(_weighted(layer, dy, d_fin), argnums=(0, 1, 2)))(params, x, h0)
    want = jax.grad(_weighted(scan_layer(name), dy, d_fin), argnums=(0, 1, 2))(params, x, h0)
    _close_trees(got, want)
    assert len(layer.model.residual_shapes(6, B)) > 0  # "kept" and "residuals" ran their backward on some


@pytest.mark.parametrize("backward", rc.jax.BACKWARDS)
@pytest.mark.parametrize("name, ffi", [("elman", True), ("gru", True), ("lstm", True), ("lstm", False)],
                         ids=["elman", "gru", "lstm", "lstm-pure_callback"])
def test_an_inf_or_nan_cotangent_flows_through_as_in_jax_scan(name, ffi, backward):
    """An inf or NaN cotangent reaches the layer's backward (``(y * jnp.inf).sum()``, an
    overflowing loss) as it reaches any JAX op: no error, and the gradients are non-finite
    exactly where the lax.scan's are, the finite ones equal.  (Where lax.scan has NaN the layer
    may have ±inf: JAX's tanh rule computes g + g·tanh(u) before multiplying by 1 − tanh(u),
    ∞ − ∞ for an infinite g, where the layer, as PyTorch's loop, computes g·(1 − tanh²u).)"""
    cell, params, x, h0, dy, d_fin = _problem(name, 5, 3, 0)
    model = rc.compile(cell, backend="native", dtype="float64")
    layer = rc.jax.Recurrent(model, "y", backward, _ffi=ffi)
    spoiled = [(dy * np.inf, d_fin), (dy.copy(), {s: v.copy() for s, v in d_fin.items()})]
    spoiled[1][0][4, 0, 0], spoiled[1][0][2, 1, 1], spoiled[1][1]["h"][0, 0] = np.inf, np.nan, -np.inf
    for dy_, d_fin_ in spoiled:
        got = jax.jit(jax.grad(_weighted(layer, dy_, d_fin_), argnums=(0, 1, 2)))(params, x, h0)
        want = jax.grad(_weighted(scan_layer(name), dy_, d_fin_), argnums=(0, 1, 2))(params, x, h0)
        for path, a in jax.tree_util.tree_leaves_with_path(got):
            b = want
            for k in path:
                b = b[k.key if hasattr(k, "key") else k.idx]
            a, b = np.asarray(a), np.asarray(b)
            assert (np.isfinite(a) == np.isfinite(b)).all(), jax.tree_util.keystr(path)
            if np.isfinite(b).any():
                _close(a[np.isfinite(b)], b[np.isfinite(b)], jax.tree_util.keystr(path))
        assert not np.isfinite(np.asarray(got[0]["W" if name == "elman" else "Wz" if name == "gru" else "Wi"])).all()

def _count_entries(monkeypatch, model):
    """Counts of the native forward and backward entry calls of ``model`` and its VJP variants."""
    calls = {"forward": 0, "backward": 0}

    def counted(fn, kind):
        def call(*args):
            calls[kind] += 1
            return fn(*args)
        return call

    for m in [model, *model._variants.values()]:
        monkeypatch.setattr(m, "_fwd", counted(m._fwd, "forward"))
        if m._bwdfn is not None:
            monkeypatch.setattr(m, "_bwdfn", counted(m._bwdfn, "backward"))
    return calls


@pytest.mark.parametrize("backward", rc.jax.BACKWARDS)
@pytest.mark.parametrize("B, slices", [(3, 1), (17, 2)])
def test_native_entry_calls_of_a_training_step(monkeypatch, B, slices, backward):
    """"kept" and "residuals": one forward and one backward per batch slice, the backward
    recomputes nothing.  "recompute": the plain forward (one call, its threads inside it), then
    ``model.vjp``, which runs the forward again and the backward, each once per slice.  (The
    value too, so that the forward's outputs are used: a jitted gradient of a function linear
    in the outputs needs only their cotangents, and XLA drops a forward nothing reads.)"""
    cell, params, x, h0, dy, d_fin = _problem("lstm", 5, B, 1)
    layer = rc.jax.recurrent(cell, dtype="float64", output="y", threads=2, backward=backward)
    grad = jax.jit(jax.value_and_grad(_weighted(layer, dy, d_fin), argnums=(0, 1, 2)))
    want = grad(params, x, h0)  # compiles; makes the VJP variant
    calls = _count_entries(monkeypatch, layer.model)
    got = grad(params, x, h0)
    assert calls == {"forward": 1 + slices if backward == "recompute" else slices, "backward": slices}
    _close_trees(got, jax.tree_util.tree_map(np.asarray, want))
    calls.update(forward=0, backward=0)
    jax.block_until_ready(jax.jit(layer)(params, x, h0))  # not differentiated: one plain forward
    assert calls == {"forward": 1, "backward": 0}


def test_a_memory_schedule_exports_nothing_and_recomputes():
    """Under memory=Every(2) a kept forward keeps only the call: no residuals, and the
    backward runs the schedule's plan (recomputing), with the same gradients."""
    cell, params, x, h0, dy, d_fin = _problem("gru", 7, 3, 2)
    every = rc.jax.recurrent(cell, dtype="float64", output="y", memory=rc.Every(2), backward="residuals")
    assert every.model.residual_shapes(7, 3) == []
    got = jax.jit(jax.grad(_weighted(every, dy, d_fin), argnums=(0, 1, 2)))(params, x, h0)
    want = jax.grad(_weighted(scan_layer("gru"), dy, d_fin), argnums=(0, 1, 2))(params, x, h0)
    _close_trees(got, want)


def test_kept_from_reads_the_residuals_in_place_and_leaves_them_unchanged():
    """model.kept_from on copies of a kept forward's residuals, made read-only (as XLA's are):
    the backward equals the NumPy oracle's vjp and writes nothing into them."""
    cell, params, x, _, dy, d_fin = _problem("lstm", 4, 3, 3)
    model = rc.compile(cell, backend="native", dtype="float64")
    kept = model.forward(params, {"x": x}, keep=True)
    residuals = [np.array(a) for a in kept.residuals()]
    assert [a.shape for a in residuals] == model.residual_shapes(4, 3)
    kept.free()
    with pytest.raises(CallError, match="residuals of a forward whose buffers were freed"):
        kept.residuals()
    before = [a.copy() for a in residuals]
    for a in residuals:
        a.flags.writeable = False
    got = model.kept_from(residuals, params, {"x": x}).backward({"y": dy}, d_fin)
    want = rc.compile(cell, backend="numpy").vjp(params, {"x": x}, d_outputs={"y": dy}, d_final=d_fin)
    for p in want.params:
        _close(got.params[p], want.params[p], f"gradient of {p}")
    _close(got.inputs["x"], want.inputs["x"], "gradient of x")
    assert all(np.array_equal(a, b) for a, b in zip(residuals, before))


def test_kept_from_names_wrong_residuals():
    cell, params, x, _, _, _ = _problem("elman", 4, 3, 4)
    model = rc.compile(cell, backend="native", dtype="float64")
    shapes = model.residual_shapes(4, 3)
    good = [np.zeros(s) for s in shapes]
    with pytest.raises(CallError, match=rf"needs the {len(shapes)} residuals of a \(T=4, B=3\) forward.*"
                                        rf"got {len(shapes) + 1}"):
        model.kept_from(good + good[:1], params, {"x": x})
    bad = good[:-1] + [np.zeros((9,) + shapes[-1][1:])]
    with pytest.raises(CallError, match=rf"residual {len(shapes) - 1} has shape \(9, 3, {shapes[-1][2]}\), expected"):
        model.kept_from(bad, params, {"x": x})
    with pytest.raises(CallError, match="residual 0 has dtype float32"):
        model.kept_from([good[0].astype(np.float32)] + good[1:], params, {"x": x})


def test_backends_without_residuals_run_the_forward_in_the_backward():
    """The NumPy backend exports nothing: kept_from([]) runs the forward again, same numbers."""
    cell, params, x, _, dy, d_fin = _problem("gru", 4, 2, 5)
    model = rc.compile(cell, backend="numpy")
    assert model.residual_shapes(4, 2) == [] and model.forward(params, {"x": x}, keep=True).residuals() == []
    got = model.kept_from([], params, {"x": x}).backward({"y": dy}, d_fin)
    want = model.vjp(params, {"x": x}, d_outputs={"y": dy}, d_final=d_fin)
    for p in want.params:
        _close(got.params[p], want.params[p], f"gradient of {p}")


@pytest.mark.parametrize("name, options", [(n, {}) for n in sorted(rc.cells.ZOO) + ["two"]] + [
    (n, o) for n in ("lstm", "two") for o in ({"hoist": False, "stack": False}, {"grad_after": True})])
def test_backward_keys_cover_every_address_the_backward_code_takes(monkeypatch, name, options):
    """What a kept forward exports follows from ``_backward_keys``: it must name every value
    whose address the code generator takes while emitting the backward entry point (else
    ``kept_from``'s backward would read a buffer nobody wrote)."""
    from llvmlite import ir

    from rnncomp.autodiff import Cotangents
    from rnncomp.backends.native_emit import Gen
    from layer_cells import two_inputs_learned_state

    cell = two_inputs_learned_state() if name == "two" else rc.cells.get(name)(3, 4, 2)
    st = cell.step
    model = rc.compile(cell, backend="native", dtype="float64", **options)
    v = model._variant(Cotangents(loss=False, outputs=tuple(st.outputs), inputs=tuple(st.inputs), final=True))
    asked, ptr = set(), Gen.ptr

    def recording(self, key, t):
        asked.add(key)
        return ptr(self, key, t)

    monkeypatch.setattr(Gen, "ptr", recording)
    v._gen_backward(ir.Module(name="probe"))
    assert asked, "the probe saw no address"
    assert asked <= v._backward_keys(), sorted(asked - v._backward_keys(), key=repr)


def test_host_call_through_the_ffi_reads_and_writes_xla_buffers():
    """jax_ffi.host_call under jit and vmap, and an exception of the host function raised
    by JAX with its message (never a silent result)."""
    from rnncomp import jax_ffi

    class Owner:
        pass

    owner = Owner()

    def axpy(args, rets):
        rets[0][...] = 2 * args[0] + args[1]

    def fails(args, rets):
        raise ValueError("boom from the host")

    key, bad = jax_ffi.FUNCTIONS.add(owner, axpy), jax_ffi.FUNCTIONS.add(owner, fails)
    a, b = np.arange(6.0).reshape(2, 3), np.ones((2, 3))
    f = jax.jit(lambda a, b: jax_ffi.host_call(key, jax.ShapeDtypeStruct((2, 3), jnp.float64), a, b))
    _close(f(a, b), 2 * a + b, "jit")
    _close(jax.vmap(f)(np.stack([a, b]), np.stack([b, a])), np.stack([2 * a + b, 2 * b + a]), "vmap")
    with pytest.raises(Exception, match="boom from the host"):
        jax.block_until_ready(jax_ffi.host_call(bad, jax.ShapeDtypeStruct((2,), jnp.float64), jnp.ones(2)))


@pytest.mark.parametrize("backward", rc.jax.BACKWARDS)
def test_the_pure_callback_path_gives_the_same_gradients(backward):
    """Off JAX's CPU backend the layer's host calls go through jax.pure_callback."""
    cell, params, x, h0, dy, d_fin = _problem("gru", 5, 3, 6)
    model = rc.compile(cell, backend="native", dtype="float64")
    grads = [jax.jit(jax.grad(_weighted(rc.jax.Recurrent(model, "y", backward, _ffi=ffi), dy, d_fin),
                              argnums=(0, 1, 2)))(params, x, h0) for ffi in (True, False)]
    want = jax.grad(_weighted(scan_layer("gru"), dy, d_fin), argnums=(0, 1, 2))(params, x, h0)
    _close_trees(grads[0], want)
    _close_trees(grads[1], jax.tree_util.tree_map(np.asarray, grads[0]))


def test_backward_must_be_a_known_strategy():
    with pytest.raises(CallError, match="backward must be one of 'kept', 'residuals', 'recompute', got 'yes'"):
        rc.jax.recurrent(rc.cells.elman(3, 4, 2), backward="yes")
