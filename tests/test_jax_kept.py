"""rnncomp.jax's default backward, ``backward="kept"``: the forward kept on rnncomp's side
behind an int32 handle (rnncomp/jax_kept.py).  What the handles promise: the same numbers as
the other strategies (bit for bit: the same native code on the same values), the kept
forward given back by its backward, at most ``max_kept`` kept forwards whose backward never
came, the forward run again (``model.vjp``) for a backward whose kept forward is gone
(evicted, or taken by an earlier backward of the same residual), and concurrent training
steps from several threads.

Oracles: the NumPy backend's ``vjp`` (rtol 1e-10 in float64: the same sums in another
order), ``backward="recompute"`` (exactly equal), and counts of the native entry calls.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="rnncomp.jax needs JAX (pip install 'rnncomp[jax]')")

import rnncomp as rc  # noqa: E402
import rnncomp.jax  # noqa: E402,F401
from rnncomp.errors import CallError  # noqa: E402

from test_jax_residuals import _close_trees, _count_entries, _problem, _weighted  # noqa: E402

pytestmark = pytest.mark.usefixtures("jax_x64")  # float64 in every test (conftest.py), restored after it


def _equal_trees(got, want):
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree_util.tree_leaves(want)):
        assert np.array_equal(np.asarray(a), np.asarray(b)), jax.tree_util.keystr(path)


def _oracle_vjp(cell, params, x, h0, dy, d_fin):
    res = rc.compile(cell, backend="numpy").vjp(params, {"x": x}, h0, d_outputs={"y": dy}, d_final=d_fin)
    return res.params, res.inputs["x"], res.h0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("B", [3, 17])  # 17 with threads=2: two batch slices, each kept
def test_every_strategy_gives_the_same_numbers_bit_for_bit(dtype, B):
    cell, params, x, h0, dy, d_fin = _problem("lstm", 6, B, 0)
    cast = (lambda t: jax.tree_util.tree_map(lambda a: np.asarray(a, dtype), t))
    params, x, h0, dy, d_fin = map(cast, (params, x, h0, dy, d_fin))
    model = rc.compile(cell, backend="native", dtype=dtype, threads=2)
    got = {}
    for backward in rc.jax.BACKWARDS:
        layer = rc.jax.Recurrent(model, "y", backward)
        step = jax.jit(jax.value_and_grad(_weighted(layer, dy, d_fin), argnums=(0, 1, 2)))
        got[backward] = [step(params, x, h0) for _ in range(2)]  # the second on the spare buffers
        assert len(layer.kept) == 0  # each backward took its kept forward and gave it back
    for backward, runs in got.items():
        for run in runs:
            _equal_trees(run, got["recompute"][0])


def test_a_dropped_backward_keeps_at_most_max_kept_and_the_evicted_recompute(monkeypatch):
    """jax.vjp whose vjp functions wait (or are dropped): the layer holds the last max_kept
    kept forwards; the backward of an evicted one runs the forward again, with the same
    numbers, and the backward of a kept one does not."""
    cell, params, x, h0, dy, d_fin = _problem("gru", 5, 3, 1)
    layer = rc.jax.recurrent(cell, dtype="float64", output="y", max_kept=3)
    fwd = jax.jit(lambda p, x, h: jax.vjp(layer, p, x, h))
    pending = [fwd(params, x, h0) for _ in range(5)]
    assert len(layer.kept) == 3
    calls = _count_entries(monkeypatch, layer.model)
    want = _oracle_vjp(cell, params, x, h0, dy, d_fin)
    for i in (0, 4):  # evicted, then still kept
        (y, final), back = pending[i]
        calls.update(forward=0, backward=0)
        got = jax.jit(back)((dy, d_fin))
        _close_trees((got[0], got[1], got[2]), want)
        # evicted: the forward again; kept: none
        assert calls["backward"] == 1 and calls["forward"] == (1 if i == 0 else 0), (i, calls)
    assert len(layer.kept) == 2  # the one taken is given back; two still wait
    layer.kept.clear()
    assert len(layer.kept) == 0


def test_a_second_backward_of_the_same_residual_recomputes_with_the_same_numbers(monkeypatch):
    cell, params, x, h0, dy, d_fin = _problem("lstm", 5, 3, 2)
    layer = rc.jax.recurrent(cell, dtype="float64", output="y")
    _, back = jax.vjp(layer, params, x, h0)
    first = back((dy, d_fin))
    calls = _count_entries(monkeypatch, layer.model)
    second = back((dy, d_fin))
    assert calls == {"forward": 1, "backward": 1}  # the kept forward went with the first backward
    _equal_trees(second, first)
    _close_trees(tuple(first), _oracle_vjp(cell, params, x, h0, dy, d_fin))


def test_jacrev_runs_one_backward_per_row():
    """jax.jacrev maps the vjp function over rows (sequentially): the first row takes the kept
    forward, the others run the forward again; the Jacobian is recompute's."""
    cell, params, x, h0, _, _ = _problem("elman", 3, 2, 3)
    layers = {b: rc.jax.recurrent(cell, dtype="float64", output="y", backward=b) for b in ("kept", "recompute")}
    jac = {b: jax.jacrev(lambda x: layer(params, x, h0)[1]["h"])(x) for b, layer in layers.items()}
    _equal_trees(jac["kept"], jac["recompute"])
    assert len(layers["kept"].kept) == 0


@pytest.mark.parametrize("how", ["scan", "vmap"])
def test_a_backward_inside_scan_or_vmap_runs_on_its_kept_forward(monkeypatch, how):
    """The layer inside lax.scan (chunks of a sequence, the state carried) or vmap: each
    backward's arguments are slices XLA put elsewhere than the forward's.  A kept forward owns
    copies of its arguments, so its backward runs there (found by a probe: an address check,
    older than those copies, sent every such backward to model.vjp, the forward again, which
    made "kept" cost more than "recompute").  Gradients: the lax.scan reference's."""
    from test_jax_residuals import scan_layer

    cell, params, x, h0, _, _ = _problem("lstm", 12, 3, 4)
    xs = x.reshape(3, 4, 3, 3)
    ref = scan_layer("lstm")

    def loss(f):
        def chunks(p, xs):
            def body(h, x):
                y, final = f(p, x, h)
                return final, (y ** 2).sum()
            final, ls = jax.lax.scan(body, h0, xs)
            return ls.sum() + final["c"].sum()

        def mapped(p, xs):
            y, final = jax.vmap(lambda x: f(p, x, h0))(xs)
            return (y ** 2).sum() + final["c"].sum()
        return {"scan": chunks, "vmap": mapped}[how]

    layer = rc.jax.recurrent(cell, dtype="float64", output="y")
    again = []
    vjp = layer.model.vjp
    monkeypatch.setattr(layer.model, "vjp", lambda *a, **k: again.append(1) or vjp(*a, **k))
    got = jax.jit(jax.grad(loss(layer), argnums=(0, 1)))(params, xs)
    assert again == [] and len(layer.kept) == 0
    _close_trees(got, jax.grad(loss(ref), argnums=(0, 1))(params, xs))


@pytest.mark.parametrize("max_kept", [1, 16])
def test_lengths_with_more_calls_than_max_kept(max_kept):
    """A padded batch makes one call per distinct length, all forwards before any backward: with
    max_kept=1 every call but the last is evicted and recomputed; the same gradients."""
    cell, params, x, h0, dy, d_fin = _problem("gru", 6, 4, 4)
    lengths = [2, 6, 4, 3]
    grads = {}
    for backward in ("kept", "recompute"):
        layer = rc.jax.recurrent(cell, dtype="float64", output="y", backward=backward, max_kept=max_kept)
        loss = _weighted(lambda p, x, h: layer(p, x, h, lengths=lengths), dy, d_fin)
        grads[backward] = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(params, x, h0)
        assert len(layer.kept) == 0
    _equal_trees(grads["kept"], grads["recompute"])


def test_training_steps_from_several_threads():
    """Four threads run the same jitted gradient on different data at once, several times
    each: every result is the one computed alone (each backward finds its own forward)."""
    cell, params, _, h0, dy, d_fin = _problem("lstm", 5, 3, 5)
    layer = rc.jax.recurrent(cell, dtype="float64", output="y", threads=1)
    grad = jax.jit(jax.grad(_weighted(layer, dy, d_fin), argnums=(0, 1, 2)))
    xs = [np.random.default_rng(10 + i).normal(size=(5, 3, 3)) for i in range(4)]
    alone = [grad(params, x, h0) for x in xs]
    got, errors = [[] for _ in xs], []

    def work(i):
        try:
            for _ in range(5):
                got[i].append(jax.block_until_ready(grad(params, xs[i], h0)))
        except Exception as e:  # noqa: BLE001 - reported below, with the thread
            errors.append((i, e))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i, runs in enumerate(got):
        assert len(runs) == 5
        for run in runs:
            _equal_trees(run, alone[i])
    assert len(layer.kept) == 0


def test_handles_without_x64():
    """The handle is int32, JAX's integer without jax_enable_x64: float32 gradients work."""
    jax.config.update("jax_enable_x64", False)
    cell, params, x, h0, dy, d_fin = _problem("gru", 4, 2, 6)
    params, x, h0, dy, d_fin = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32),
                                                       (params, x, h0, dy, d_fin))
    layers = {b: rc.jax.recurrent(cell, output="y", backward=b) for b in ("kept", "recompute")}
    grads = {b: jax.jit(jax.grad(_weighted(layer, dy, d_fin), argnums=(0, 1, 2)))(params, x, h0)
             for b, layer in layers.items()}
    _equal_trees(grads["kept"], grads["recompute"])


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "8"])
def test_max_kept_must_be_a_positive_int(bad):
    with pytest.raises(CallError, match=rf"max_kept must be a positive int .*got {bad!r}"):
        rc.jax.recurrent(rc.cells.elman(3, 4, 2), max_kept=bad)


def test_the_old_residuals_option_and_an_unknown_backward_are_named():
    cell = rc.cells.elman(3, 4, 2)
    for old, new in ((True, "backward='residuals'"), (False, "backward='recompute'")):
        with pytest.raises(CallError, match=rf"residuals= is now backward=: .*{new}.*got residuals={old}"):
            rc.jax.recurrent(cell, residuals=old)
    with pytest.raises(CallError, match=r"backward must be one of 'kept', 'residuals', 'recompute', got 'keep'"):
        rc.jax.recurrent(cell, backward="keep")
