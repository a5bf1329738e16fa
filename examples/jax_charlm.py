"""A character-level language model in JAX whose recurrent layer is an rnncomp cell:
embedding → softsign peephole LSTM (rnncomp.jax.recurrent) → dense, trained with optax's
AdamW under ``jax.jit`` on the shipped corpus, measured in held-out bits per character;
then the time per training step against the same cell as a ``jax.lax.scan``.

The cell is declared in rnncomp's DSL in examples/charlm_common.py; training is stateful
truncated BPTT as in examples/torch_charlm.py.

    python examples/jax_charlm.py                         # ≈ 1 min on 2 loaded cores: ≈ 2.13 bpc
    python examples/jax_charlm.py --epochs 1
    python examples/jax_charlm.py --quick                 # a few seconds (the smoke test)
"""
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from charlm_common import GATES, CharStreams, arguments, bits, peephole_cell, time_steps  # noqa: E402

import rnncomp.jax  # noqa: E402


def softsign_gate(z):
    return (1 + jax.nn.soft_sign(z)) / 2


def scan_lstm(params, x, h0):
    """The same cell as a ``jax.lax.scan`` over time, gate weights stacked; the rnncomp
    layer's parameters and interface: ``(params, x (T, B, n), h0) -> (h per step, final)``."""
    W = jnp.concatenate([params[f"W{g}"] for g in GATES])
    U = jnp.concatenate([params[f"U{g}"] for g in GATES])
    b = jnp.concatenate([params[f"b{g}"] for g in GATES])
    pi, pf, po = params["pi"], params["pf"], params["po"]

    def step(carry, x_t):
        h, c = carry
        zi, zf, zg, zo = jnp.split(x_t @ W.T + h @ U.T + b, 4, axis=1)
        c = softsign_gate(zf + pf * c) * c + softsign_gate(zi + pi * c) * jax.nn.soft_sign(zg)
        h = softsign_gate(zo + po * c) * jax.nn.soft_sign(c)
        return (h, c), h

    (h, c), hs = jax.lax.scan(step, (h0["h"], h0["c"]), x)
    return hs, {"h": h, "c": c}


def init_params(rnn_params, vocab, embed, hidden, seed=0):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    return {"embed": jax.random.normal(k1, (vocab, embed)),
            "rnn": rnn_params,
            "head_W": jax.random.normal(k2, (vocab, hidden)) / math.sqrt(hidden),
            "head_b": jnp.zeros(vocab)}


def make_step(rnn, opt):
    """A jitted training step ``(params, opt_state, x, y, state) -> (params, opt_state, loss,
    final state)`` of the model embedding → ``rnn`` → dense; and its loss alone."""

    def loss_fn(p, x, y, state):
        h, final = rnn(p["rnn"], p["embed"][x], state)
        logits = h @ p["head_W"].T + p["head_b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), final

    @jax.jit
    def step(p, opt_state, x, y, state):
        (loss, final), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, x, y, state)
        updates, opt_state = opt.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss, final

    return step, jax.jit(loss_fn)


def optimizer(lr):
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(lr))


def zeros_state(batch, hidden):
    return {"h": jnp.zeros((batch, hidden)), "c": jnp.zeros((batch, hidden))}


def held_out_bpc(loss, p, data, T, hidden):
    total, n, state = 0.0, 0, zeros_state(data.test.shape[1], hidden)
    for x, y in data.windows("test", T):
        mean, state = loss(p, x, y, state)
        total, n = total + float(mean) * y.size, n + y.size
    return bits(total / n)


def check_scan(embed=8, hidden=16, T=7, B=3):
    """The scan computes the rnncomp cell: largest differences of the outputs and of the
    parameters' gradients, float32, on the rnncomp layer's parameters."""
    layer = rnncomp.jax.recurrent(peephole_cell(embed, hidden), output="y")
    params = layer.init_params(seed=1)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(T, B, embed)).astype(np.float32)
    h0 = {s: rng.normal(size=(B, hidden)).astype(np.float32) for s in "hc"}

    def loss(rnn, p):
        y, final = rnn(p, x, h0)
        return jnp.sum(y ** 2) + jnp.sum(final["c"]), y

    (_, ya), ga = jax.jit(jax.value_and_grad(lambda p: loss(layer, p), has_aux=True))(params)
    (_, yb), gb = jax.jit(jax.value_and_grad(lambda p: loss(scan_lstm, p), has_aux=True))(params)
    return float(jnp.abs(ya - yb).max()), max(float(jnp.abs(ga[k] - gb[k]).max()) for k in ga)


def step_times(kinds, vocab, embed, hidden, T, batch, steps=5, warmup=1):
    """Seconds per training step (median and best of ``steps``) of each kind ("rnncomp": the
    layer's default, its backward on the forward kept behind a handle; "rnncomp residuals" and
    "rnncomp recompute": the layer with ``backward="residuals"`` / ``"recompute"``;
    "lax.scan") on one random window, and of its first step (the jit compile)."""
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, vocab, (T, batch)), rng.integers(0, vocab, (T, batch))
    layer = rnncomp.jax.recurrent(peephole_cell(embed, hidden), output="y")
    layers = {"rnncomp": layer, "lax.scan": scan_lstm,
              **{f"rnncomp {b}": rnncomp.jax.Recurrent(layer.model, "y", b) for b in ("residuals", "recompute")}}
    out = {}
    for kind in kinds:
        rnn = layers[kind]
        p = init_params(layer.init_params(seed=0), vocab, embed, hidden)
        opt = optimizer(1e-3)
        step, _ = make_step(rnn, opt)
        box = [p, opt.init(p)]
        state = zeros_state(batch, hidden)

        def one():
            box[0], box[1], loss, _ = step(box[0], box[1], x, y, state)
            loss.block_until_ready()

        t0 = time.perf_counter()
        one()
        first = time.perf_counter() - t0
        out[kind] = dict(time_steps(one, steps, warmup), first_step_s=first)
    return out


def main(argv=None):
    p = arguments(" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--quick", action="store_true", help="a small run for the smoke test")
    a = p.parse_args(argv)
    limit = None
    if a.quick:
        limit, a.epochs, a.hidden, a.embed, a.T, a.batch, a.time_steps = 6000, 1, 24, 8, 20, 8, 1

    d_out, d_grad = check_scan(a.embed, a.hidden)
    print(f"lax.scan against the rnncomp layer (float32): outputs differ by {d_out:.1e}, gradients by {d_grad:.1e}")
    data = CharStreams(batch=a.batch, limit=limit)
    V = len(data.vocab)
    layer = rnncomp.jax.recurrent(peephole_cell(a.embed, a.hidden), output="y")
    params = init_params(layer.init_params(seed=0), V, a.embed, a.hidden)
    opt = optimizer(a.lr)
    opt_state = opt.init(params)
    step, loss = make_step(layer, opt)
    n_params = sum(v.size for v in jax.tree_util.tree_leaves(params))
    print(f"{data.n_chars} characters, {V} distinct; model: embedding ({V}, {a.embed}) → softsign peephole "
          f"LSTM (H = {a.hidden}) → dense; {n_params} parameters")
    before = held_out_bpc(loss, params, data, a.T, a.hidden)
    print(f"held-out: {before:.3f} bits per character before training (uniform: {math.log2(V):.3f})")
    t0, curve = time.perf_counter(), []
    for epoch in range(a.epochs):
        state, losses = zeros_state(a.batch, a.hidden), []
        for x, y in data.windows("train", a.T):
            params, opt_state, mean, state = step(params, opt_state, x, y, state)
            losses.append(mean)
        curve.append(held_out_bpc(loss, params, data, a.T, a.hidden))
        print(f"  epoch {epoch + 1}: train {bits(float(np.mean(losses))):.3f} bpc, held-out {curve[-1]:.3f} bpc "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    seconds = time.perf_counter() - t0
    result = {"bpc_before": before, "bpc": curve[-1] if curve else before, "curve": curve,
              "uniform_bpc": math.log2(V), "seconds": seconds, "scan_difference": (d_out, d_grad)}
    print(f"held-out: {result['bpc']:.3f} bits per character after {a.epochs} epoch{'s' if a.epochs != 1 else ''} ({seconds:.0f} s)")

    if a.time_steps:
        print(f"\ntime per training step (T = {a.T}, B = {a.batch}, H = {a.hidden}, median of {a.time_steps}, "
              f"load average {os.getloadavg()[0]:.1f}):")
        times = step_times(["rnncomp", "lax.scan"], V, a.embed, a.hidden, a.T, a.batch, a.time_steps)
        ours = times["rnncomp"]["step_s"]
        for kind, t in times.items():
            print(f"  {kind:<10} {1e3 * t['step_s']:8.1f} ms   {t['step_s'] / ours:5.2f}× rnncomp's time, "
                  f"first step (the jit compile) {t['first_step_s']:.1f} s")
        result["step_times"] = times
    return result


if __name__ == "__main__":
    main()
