"""The peers of benchmarks/bench_native.py: rnncomp's zoo cells written in JAX and PyTorch.

The equations are those of ``rnncomp.cells`` (same parameter names and shapes: ``W·`` is
(H, D), ``U·`` (H, H), ``V`` (n_out, H)), written once against a tiny array namespace
(``cat``, ``tanh``, ``sigmoid``, ``zeros``, ``scan``) so that JAX and PyTorch run the
same code::

    elman          h = tanh(W x + U h + b)
    gru            z = σ(Wz x + Uz h + bz),  r = σ(Wr x + Ur h + br),
                   n = tanh(Wn x + Un (r ⊙ h) + bn),  h = (1 − z) ⊙ n + z ⊙ h
    lstm           i, f, o = σ(W· x + U· h + b·),  g = tanh(Wg x + Ug h + bg),
                   c = f ⊙ c + i ⊙ g,  h = o ⊙ tanh(c)
    softsign_lstm  the LSTM with gates (1 + softsign(z))/2 and softsign for tanh,
                   softsign(z) = z / (1 + |z|)
    read-out       y = V h + by,   L = Σ_t Σ_b Σ_units (y − target)² / 2 / (T·B)

with zero initial states.  They are written the way a careful user writes a custom cell:
the gate weights stacked (concatenated inside the loss, so the gradients are those of the
original parameters) and the read-out applied once after the loop.  The input products
W· x are either hoisted out of the time loop (``hoist=True``: one (T·B)×D by D×G·H product)
or computed in each step (``hoist=False``); each framework runs the form that was faster for
it here (``HOIST``: PyTorch hoisted, JAX per step — XLA ran the hoisted scan slower).

- JAX: ``jax.jit(jax.value_and_grad(loss))`` over a ``jax.lax.scan``, compiled ahead of the
  timing (``lower().compile()``, the compile time reported apart).
- PyTorch loop: the same loss as a Python loop over time of torch ops, ``loss.backward()``.
- PyTorch fused: ``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM`` (oneDNN) loaded with the same
  parameters (second bias zero).  Elman and LSTM are then the same function; torch's GRU is
  a variant (n = tanh(Wn x + bn + r ⊙ (Un h))), same FLOPs, so its loss differs; there is no
  fused softsign LSTM.

Every peer's loss and gradients are compared with rnncomp's on the same parameters and
data (``check``).  The frameworks are imported only in worker processes::

    python benchmarks/peers.py --worker jax|torch --threads N

which answer bench_native.py over stdin/stdout (one JSON object a line, prefixed
``@@peer``), so that XLA's thread flags (read once, at import) can differ per worker and
no framework's thread pool runs inside the process that times rnncomp.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
import traceback

import numpy as np

# The form each framework runs (the faster one here, by CPU time with 1 thread): XLA ran the
# hoisted form slower (LSTM H=128 B=32: 65 vs 43 ms, GRU 29 vs 26 ms), PyTorch about equally.
HOIST = {"jax": False, "torch": True}
GATES = {"elman": [""], "gru": ["z", "r", "n"], "lstm": ["i", "f", "g", "o"],
         "softsign_lstm": ["i", "f", "g", "o"]}
TAG = "@@peer "


def median_time(fn, repeats, budget=20.0, warmup=1, warm_s=0.3):
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` calls and at least
    ``warm_s`` seconds of calls; stops early (with at least 3 calls, or 1 if a call alone exceeds
    the budget) once ``budget`` s are spent.

    The warm-up by time is for every side alike: on these shared 2-core machines the first ~10
    calls after an idle moment (a compile, a peer's process ending) run up to 2x slow (measured
    2026-12-07 on a Zen 5: 2.5 ms calls at 4-5 ms for ~50 ms), which one untimed call does not
    absorb, so whichever side was timed right after idling read slow."""
    start = time.perf_counter()
    for i in itertools.count():
        if i >= warmup and time.perf_counter() - start >= warm_s:
            break
        fn()
    times, start = [], time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget and len(times) >= min(3, repeats):
            break
        if times[0] > budget:
            break
    return statistics.median(times)


def _softsign(z):
    return z / (1 + abs(z))


def make_loss(kind, ops, hoist=True):
    """The training loss of zoo cell ``kind`` as a function ``loss(P, x, target)`` of the
    parameter dict P (rnncomp's names), x (T, B, D) and target (T, B, n_out)."""
    gates = GATES[kind]
    if kind == "softsign_lstm":
        gate, squash = (lambda z: (1 + _softsign(z)) / 2), _softsign
    else:
        gate, squash = ops.sigmoid, ops.tanh

    def loss(P, x, target):
        T, B = x.shape[0], x.shape[1]
        Wx = ops.cat([P["W" + g] for g in gates])           # (G·H, D)
        bx = ops.cat([P["b" + g] for g in gates])
        H = P["V"].shape[1]

        def pre(xt):                                       # W· x + b· of every gate
            if len(xt.shape) == 3:  # (T, B, D) as one 2-D product (XLA's CPU dot is slow on 3-D)
                return (xt.reshape(T * B, -1) @ Wx.T + bx).reshape(T, B, -1)
            return xt @ Wx.T + bx

        if kind == "gru":
            Uh, Un = ops.cat([P["Uz"], P["Ur"]]), P["Un"]
        else:
            Uh = ops.cat([P["U" + g] for g in gates])

        def step(carry, xt):
            xw = xt if hoist else pre(xt)
            if kind == "elman":
                h = ops.tanh(xw + carry @ Uh.T)
                return h, h
            if kind == "gru":
                h = carry
                a = h @ Uh.T
                z = ops.sigmoid(xw[:, :H] + a[:, :H])
                r = ops.sigmoid(xw[:, H:2 * H] + a[:, H:])
                n = ops.tanh(xw[:, 2 * H:] + (r * h) @ Un.T)
                h = (1 - z) * n + z * h
                return h, h
            h, c = carry
            a = xw + h @ Uh.T
            i, f = gate(a[:, :H]), gate(a[:, H:2 * H])
            g, o = squash(a[:, 2 * H:3 * H]), gate(a[:, 3 * H:])
            c = f * c + i * g
            h = o * squash(c)
            return (h, c), h

        h0 = ops.zeros((B, H))
        init = h0 if kind in ("elman", "gru") else (h0, ops.zeros((B, H)))
        hs = ops.scan(step, init, pre(x) if hoist else x)  # (T, B, H)
        y = hs.reshape(T * B, H) @ P["V"].T + P["by"]
        return ((y - target.reshape(T * B, -1)) ** 2).sum() / (2 * T * B)

    return loss


def check(loss, grads, ref_loss, ref_grads):
    """Relative error of the loss and the largest relative (Frobenius) error of a gradient."""
    loss_rel = abs(float(loss) - ref_loss) / abs(ref_loss)
    grad_rel = max(float(np.linalg.norm(np.asarray(grads[k], np.float64) - ref_grads[k])
                         / max(np.linalg.norm(ref_grads[k]), 1e-30)) for k in ref_grads)
    return {"loss_rel": loss_rel, "grad_rel": grad_rel, "loss": float(loss)}


def load_case(path):
    """The case file bench_native.py writes: params (p:NAME), x, target, rnncomp's loss and
    gradients (g:NAME), as float32 (the reference in float64)."""
    z = np.load(path)
    params = {k[2:]: z[k] for k in z.files if k.startswith("p:")}
    ref_grads = {k[2:]: z[k].astype(np.float64) for k in z.files if k.startswith("g:")}
    return params, z["x"], z["target"], float(z["loss"]), ref_grads


# --------------------------------------------------------------------------- JAX

def jax_case(req, threads):
    import jax
    import jax.numpy as jnp

    class ops:
        cat = staticmethod(lambda xs: jnp.concatenate(xs, axis=0))
        tanh, sigmoid = staticmethod(jnp.tanh), staticmethod(jax.nn.sigmoid)
        zeros = staticmethod(lambda shape: jnp.zeros(shape, jnp.float32))
        scan = staticmethod(lambda f, init, xs: jax.lax.scan(f, init, xs)[1])

    params, x, target, ref_loss, ref_grads = load_case(req["npz"])
    P = {k: jnp.asarray(v) for k, v in params.items()}
    xj, tj = jnp.asarray(x), jnp.asarray(target)
    t0 = time.perf_counter()
    fn = jax.jit(jax.value_and_grad(make_loss(req["kind"], ops, req.get("hoist", HOIST["jax"]))))
    compiled = fn.lower(P, xj, tj).compile()
    compile_s = time.perf_counter() - t0
    loss, grads = compiled(P, xj, tj)
    out = {"compile_s": compile_s,
           "check": check(loss, {k: np.asarray(v) for k, v in grads.items()}, ref_loss, ref_grads),
           "ms": 1e3 * median_time(lambda: jax.block_until_ready(compiled(P, xj, tj)),
                                   req["repeats"], req["budget"])}
    return {f"{threads}": out}


# --------------------------------------------------------------------------- PyTorch

def torch_case(req, threads):
    import torch

    class ops:
        cat = staticmethod(lambda xs: torch.cat(xs, dim=0))
        tanh, sigmoid = staticmethod(torch.tanh), staticmethod(torch.sigmoid)
        zeros = staticmethod(lambda shape: torch.zeros(shape, dtype=torch.float32))

        @staticmethod
        def scan(f, carry, xs):
            hs = []
            for xt in xs.unbind(0):  # (xs[t] would back-propagate a full-size zero tensor a step)
                carry, h = f(carry, xt)
                hs.append(h)
            return torch.stack(hs)

    kind = req["kind"]
    params, x, target, ref_loss, ref_grads = load_case(req["npz"])
    xt, tt = torch.from_numpy(x), torch.from_numpy(target)
    out = {}

    # the Python loop with autograd
    P = {k: torch.from_numpy(v.copy()).requires_grad_() for k, v in params.items()}
    loss_fn = make_loss(kind, ops, req.get("hoist", HOIST["torch"]))

    def loop_step():
        for p in P.values():
            p.grad = None
        loss = loss_fn(P, xt, tt)
        loss.backward()
        return loss

    torch.set_num_threads(threads[0])
    loss = loop_step()
    chk = check(loss.item(), {k: p.grad.numpy() for k, p in P.items()}, ref_loss, ref_grads)
    for n in threads:
        torch.set_num_threads(n)
        out[f"loop_{n}"] = {"ms": 1e3 * median_time(loop_step, req["repeats"], req["budget"]),
                            "check": chk}

    # the fused module, loaded with the same parameters
    if kind in ("elman", "gru", "lstm"):
        H, D = params["V"].shape[1], x.shape[2]
        order = {"elman": [""], "gru": ["r", "z", "n"], "lstm": ["i", "f", "g", "o"]}[kind]
        mod = {"elman": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[kind](D, H)
        with torch.no_grad():
            mod.weight_ih_l0.copy_(torch.from_numpy(np.concatenate([params["W" + g] for g in order])))
            mod.weight_hh_l0.copy_(torch.from_numpy(np.concatenate([params["U" + g] for g in order])))
            mod.bias_ih_l0.copy_(torch.from_numpy(np.concatenate([params["b" + g] for g in order])))
            mod.bias_hh_l0.zero_()
        V = torch.from_numpy(params["V"].copy()).requires_grad_()
        by = torch.from_numpy(params["by"].copy()).requires_grad_()
        T, B = x.shape[:2]

        def fused_step():
            mod.zero_grad(set_to_none=True)
            V.grad = by.grad = None
            hs, _ = mod(xt)
            loss = (((hs @ V.T + by) - tt) ** 2).sum() / (2 * T * B)
            loss.backward()
            return loss

        torch.set_num_threads(threads[0])
        loss = fused_step()
        grads = {"V": V.grad.numpy(), "by": by.grad.numpy()}
        for name, p in (("W", mod.weight_ih_l0), ("U", mod.weight_hh_l0), ("b", mod.bias_ih_l0)):
            for g, part in zip(order, p.grad.numpy().reshape(len(order), H, -1)):
                grads[name + g] = part if p.dim() == 2 else part.reshape(H)
        chk = check(loss.item(), grads, ref_loss, ref_grads)
        chk["same_function"] = kind != "gru"
        for n in threads:
            torch.set_num_threads(n)
            out[f"fused_{n}"] = {"ms": 1e3 * median_time(fused_step, req["repeats"], req["budget"]),
                                 "check": chk}
    return out


# --------------------------------------------------------------------------- worker

def _say(obj):
    sys.stdout.write(TAG + json.dumps(obj) + "\n")
    sys.stdout.flush()


def worker(framework, threads):
    """Serve requests ``{"npz", "kind", "repeats", "budget"}`` (one JSON line each) until EOF."""
    try:
        if framework == "jax":
            import jax
            jax.config.update("jax_platforms", "cpu")
            version = jax.__version__
        else:
            import torch
            version = torch.__version__
    except Exception as e:  # noqa: BLE001 — not installed or broken: the columns say n/a
        _say({"ready": False, "error": f"{type(e).__name__}: {e}"})
        return
    _say({"ready": True, "version": version, "xla_flags": os.environ.get("XLA_FLAGS")})
    for line in sys.stdin:
        req = json.loads(line)
        try:
            if framework == "jax":
                res = jax_case(req, threads[0])
            else:
                res = torch_case(req, threads)
            _say({"ok": True, "result": res})
        except Exception:  # noqa: BLE001
            _say({"ok": False, "error": traceback.format_exc()})


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--worker", choices=["jax", "torch"], required=True)
    ap.add_argument("--threads", default="1", help="jax: the one thread count this process was "
                    "started for; torch: comma-separated counts, each measured")
    a = ap.parse_args()
    worker(a.worker, [int(t) for t in a.threads.split(",")])
