"""Cells that bench_native.py does not contain, against JAX (issue #21: "≥ 2× JAX's
jit(value_and_grad(scan)) on any cell, including ones with two coupled states and
element-wise-only recurrences").

    python benchmarks/bench_custom_cells.py [--quick] [--cells a,b] [--shape D,H,B,T]
        # a table + results/custom_cells.json (--quick: custom_cells-quick.json; --shape: custom_cells-D-H-B-T.json)

The JAX side is not written per cell: :func:`jax_loss` translates the cell's own step program
(the IR every rnncomp backend reads) into ``jax.numpy`` -- element-wise nodes through
``sympy.lambdify(..., "jax")``, products as ``v @ P.T`` -- the way a careful JAX user writes a
cell: every value that reads no state (W·x and the element-wise work on it) for all steps at
once before ``lax.scan``, the rest inside it, the loss the mean of the per-step costs, and
``jax.jit(jax.value_and_grad(...))`` around it.  Its loss and gradients are checked against
rnncomp's first (relative 1e-4 / 1e-3, float32).  Cells: the zoo's Jordan, MGU, IndRNN
(element-wise recurrence) and antisymmetric RNN, a minimal GRU whose recurrence is
element-wise only (z and h̃ read x alone), two coupled states of different sizes, a damped
oscillator (two states, an element-wise recurrence with parameter-only coefficients), a
multiplicative RNN ((A·h) ⊙ (B·x)), a four-layer highway ladder of element-wise gates with
per-unit parameters, and a clipped leaky ReLU (Max/Min kinks).
H = 128, D = 64, B = 32, T = 100, float32; rnncomp's native ``loss_and_grad`` on all cores,
JAX in its own process (``--worker``) with XLA's default threading, compiled in two forms (the
read-out inside the scan, and after it: the values the next states do not need computed for
all T steps at once), both checked, the faster one timed.  The worker stays up and the parent
alternates a block of rnncomp calls with a block of JAX calls (``--rounds``), each block the
median of ``--repeats`` calls after 0.3 s of warm-up; ratio = JAX / rnncomp of the median
round, with the lowest and highest round's printed beside it.

What 2× JAX asks of the machine: each row also gives rnncomp's rate (the FLOPs of a training
call as ``rnncomp inspect CELL --cost`` counts them -- forward, the backward step and the
parameter gradients, no input cotangent -- over its time), the rate that twice JAX's speed
needs, and both as shares of the chip's float32 FMA peak on all cores, measured in the same
run (``fma_peak.py``, before the first cell and after the last; the lower of the two).  A
goal whose rate is near or above the peak is out of this machine's reach whatever the code.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def mingru(n_in, n_hidden, n_out):
    """h = (1 - z) ⊙ h + z ⊙ h̃ with z, h̃ from x alone: the recurrence is element-wise."""
    import sympy as sp
    import rnncomp as rc
    c = rc.Cell("mingru")
    x, h = c.input("x", n_in), c.state("h", n_hidden)
    z = rc.sigmoid(c.param("Wz", (n_hidden, n_in)) @ x + c.param("bz", n_hidden))
    ht = sp.tanh(c.param("Wh", (n_hidden, n_in)) @ x + c.param("bh", n_hidden))
    c.update(h, (1 - z) * h + z * ht)
    y = c.output("y", c.param("V", (n_out, n_hidden)) @ h.new + c.param("by", n_out))
    c.loss(rc.vsum((y - c.target("target", n_out)) ** 2) / 2)
    return c


def coupled(n_in, n_hidden, n_out):
    """Two coupled states of different sizes: c reads h[t-1], h reads the new c."""
    import sympy as sp
    import rnncomp as rc
    m = 3 * n_hidden // 4
    cell = rc.Cell("coupled")
    x, h, c = cell.input("x", n_in), cell.state("h", n_hidden), cell.state("c", m)
    cell.update(c, sp.tanh(cell.param("K", (m, n_hidden)) @ h + cell.param("d", m) * c + cell.param("bc", m)))
    cell.update(h, sp.tanh(cell.param("W", (n_hidden, n_in)) @ x + cell.param("U", (n_hidden, n_hidden)) @ h
                           + cell.param("A", (n_hidden, m)) @ c.new + cell.param("b", n_hidden)))
    y = cell.output("y", cell.param("V", (n_out, n_hidden)) @ h.new + cell.param("by", n_out))
    cell.loss(rc.vsum((y - cell.target("target", n_out)) ** 2) / 2)
    return cell


def _readout(cell, state, n_hidden, n_out):
    """y = V·state[t], the loss ½‖y − target‖² (the new cells' common tail)."""
    import rnncomp as rc
    y = cell.output("y", cell.param("V", (n_out, n_hidden)) @ state.new)
    cell.loss(rc.vsum((y - cell.target("target", n_out)) ** 2) / 2)
    return cell


def ladder(n_in, n_hidden, n_out, L=4):
    """Four highway layers of element-wise gates with per-unit parameters after one product."""
    import sympy as sp
    import rnncomp as rc
    cell = rc.Cell("ladder")
    x, h = cell.input("x", n_in), cell.state("h", n_hidden)
    z = cell.define("z0", cell.param("W", (n_hidden, n_in)) @ x + cell.param("U", (n_hidden, n_hidden)) @ h)
    for layer in range(L):
        a, c = cell.param(f"a{layer}", n_hidden), cell.param(f"c{layer}", n_hidden)
        t = rc.sigmoid(z * c)
        z = cell.define(f"z{layer + 1}", t * sp.tanh(z * a) + (1 - t) * z)
    cell.update(h, z)
    return _readout(cell, h, n_hidden, n_out)


def mrnn(n_in, n_hidden, n_out):
    """A multiplicative RNN: tanh(W·x + U·h + (A·h) ⊙ (B·x) + b)."""
    import sympy as sp
    import rnncomp as rc
    cell = rc.Cell("mrnn")
    x, h = cell.input("x", n_in), cell.state("h", n_hidden)
    m = (cell.param("A", (n_hidden, n_hidden)) @ h) * (cell.param("Bm", (n_hidden, n_in)) @ x)
    cell.update(h, sp.tanh(cell.param("W", (n_hidden, n_in)) @ x + cell.param("U", (n_hidden, n_hidden)) @ h + m
                           + cell.param("b", n_hidden)))
    return _readout(cell, h, n_hidden, n_out)


def oscillator(n_in, n_hidden, n_out):
    """A damped oscillator per unit, driven by the input: two states, an element-wise recurrence
    whose coefficients (k², σ(c)) read parameters only."""
    import sympy as sp
    import rnncomp as rc
    cell = rc.Cell("oscillator")
    u, p, v = cell.input("x", n_in), cell.state("p", n_hidden), cell.state("v", n_hidden)
    k, c = cell.param("k", n_hidden), cell.param("c", n_hidden)
    f = sp.tanh(cell.param("W", (n_hidden, n_in)) @ u + cell.param("b", n_hidden))
    cell.update(v, v + sp.Rational(1, 10) * (-(k * k) * p - rc.sigmoid(c) * v + f))
    cell.update(p, p + sp.Rational(1, 10) * v.new)
    return _readout(cell, p, n_hidden, n_out)


def reluclip(n_in, n_hidden, n_out):
    """A clipped leaky ReLU recurrence: min(max(a, 0), 6) + min(a, 0)/100 (Max/Min kinks)."""
    import sympy as sp
    import rnncomp as rc
    cell = rc.Cell("reluclip")
    x, h = cell.input("x", n_in), cell.state("h", n_hidden)
    a = cell.param("W", (n_hidden, n_in)) @ x + cell.param("U", (n_hidden, n_hidden)) @ h + cell.param("b", n_hidden)
    cell.update(h, sp.Min(sp.Max(a, 0), 6) + sp.Rational(1, 100) * sp.Min(a, 0))
    return _readout(cell, h, n_hidden, n_out)


def make_cell(name, D, H):
    import rnncomp as rc
    extra = {"mingru": mingru, "coupled": coupled, "ladder": ladder, "mrnn": mrnn, "oscillator": oscillator,
             "reluclip": reluclip}
    return (extra[name] if name in extra else rc.cells.ZOO[name])(D, H, H)


CELLS = ["jordan", "mgu", "indrnn", "antisymmetric", "mingru", "coupled", "oscillator", "mrnn", "ladder", "reluclip"]


# --------------------------------------------------------------------------- the JAX side
def jax_loss(step, after_scan=True):
    """f(params, inputs, targets) -> the mean per-step cost, from the step program (module
    docstring): values that read no state are computed for all T steps before the scan and, with
    ``after_scan``, values the next states do not need (read-out, loss) for all T steps after it."""
    import jax
    import jax.numpy as jnp
    import sympy as sp
    from rnncomp.ir import LEAF_OPS, placeholder

    prog, states = step.prog, list(step.states)
    known = {"sigmoid": jax.nn.sigmoid, "softplus": jax.nn.softplus, "erf": jax.scipy.special.erf}
    fns = {k: sp.lambdify([placeholder(i) for i in range(len(n.args))], n.attrs["expr"], modules=[known, "jax"])
           for k, n in prog.nodes.items() if n.op == "ew"}
    looped = {(s, "t-1") for s in states}
    for key, node in prog.nodes.items():
        if any(a in looped for a in node.args):
            looped.add(key)
    computed = [k for k, n in prog.nodes.items() if n.op not in LEAF_OPS]
    before = [k for k in computed if k not in looped]
    inside = [k for k in computed if k in looped]
    timed = {k for k, n in prog.nodes.items() if n.op in ("input", "target")}
    for key, node in prog.nodes.items():   # what changes with t (the rest reads parameters only)
        if any(a in timed for a in node.args):
            timed.add(key)
    if after_scan:   # what the next states do not need (read-out, loss) runs on all T steps after the scan
        need = {(s, "t") for s in states}
        for key in reversed(inside):
            if key in need:
                need.update(a for a in prog.nodes[key].args if a in looped)
        scanned, after = [k for k in inside if k in need], [k for k in inside if k not in need]
    else:
        scanned, after = inside, []
    prev = {(s, "t-1") for s in states}
    kept = sorted({a for k in after for a in prog.nodes[k].args if a in scanned or a in prev}
                  | ({step.loss_key} & set(scanned)), key=str)   # handed out of the scan, stacked over t
    read = {a for k in scanned for a in prog.nodes[k].args if a in before or prog.nodes[a].op in ("input", "target")}
    carried_in = sorted(read & timed, key=str)     # scanned over t
    fixed = sorted(read - timed, key=str)          # the same every step: closed over

    def run(keys, env):
        for key in keys:
            node, v = prog.nodes[key], [env[a] for a in prog.nodes[key].args]
            op = node.op
            if op == "ew":
                out = fns[key](*v)
            elif op == "matvec":
                out = sum(float(c) * (v[0] @ (env[(p, None)] if tr else env[(p, None)].T))
                          for p, tr, c in node.attrs["terms"])
            elif op == "slice":
                out = v[0][..., node.attrs["lo"]:node.attrs["lo"] + node.size]
            elif op == "concat":
                out = jnp.concatenate(v, axis=-1)
            elif op == "sum":
                out = v[0].sum(axis=-1, keepdims=True)
            elif op == "lse":
                out = jax.nn.logsumexp(v[0], axis=-1, keepdims=True)
            elif op == "pad":
                lo = node.attrs["lo"]
                out = jnp.pad(v[0], [(0, 0)] * (v[0].ndim - 1) + [(lo, node.size - lo - v[0].shape[-1])])
            else:
                raise NotImplementedError(f"{op} in the JAX translation")
            env[key] = out
        return env

    def loss(params, inputs, targets):
        T, B = next(iter(inputs.values())).shape[:2]
        env = {(p, None): v for p, v in params.items()}
        env.update({(n, "t"): v for n, v in {**inputs, **targets}.items()})
        run(before, env)
        h0 = {s: jnp.zeros((B, n), jnp.float32) for s, n in step.states.items()}

        def body(h, xs):
            e = {(p, None): v for p, v in params.items()}
            e.update({k: env[k] for k in fixed})
            e.update({(s, "t-1"): h[s] for s in states})
            e.update(zip(carried_in, xs))
            run(scanned, e)
            return {s: e[(s, "t")] for s in states}, [e[k] for k in kept]

        _, ys = jax.lax.scan(body, h0, [env[k] for k in carried_in])
        env.update(zip(kept, ys))
        run(after, env)
        return env[step.loss_key].mean()
    return loss


def worker(path, name, repeats):
    """The JAX side, in its own process: both translations (the read-out inside the scan and
    after it) compiled, checked against rnncomp's loss and gradients, the faster one kept; then
    it answers ``time`` lines on stdin with a median, so the parent can alternate the two sides."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    jax.config.update("jax_platforms", "cpu")
    z = np.load(path)
    cell = make_cell(name, int(z["D"]), int(z["H"]))
    P = {k[2:]: jnp.asarray(z[k]) for k in z.files if k.startswith("p:")}
    x, t = {"x": jnp.asarray(z["x"])}, {"target": jnp.asarray(z["target"])}
    ref, variants = float(z["loss"]), {}
    for after_scan in (False, True):
        t0 = time.perf_counter()
        fn = jax.jit(jax.value_and_grad(jax_loss(cell.step, after_scan))).lower(P, x, t).compile()
        compile_s = time.perf_counter() - t0
        loss, grads = fn(P, x, t)
        err = max(float(np.abs(np.asarray(grads[k]) - z["g:" + k]).max() / max(np.abs(z["g:" + k]).max(), 1e-30))
                  for k in grads)
        run = (lambda f: lambda: jax.block_until_ready(f(P, x, t)))(fn)
        variants["after" if after_scan else "inside"] = {
            "run": run, "compile_s": compile_s, "loss_rel_err": abs(float(loss) - ref) / abs(ref),
            "grad_rel_err": err, "ms": 1e3 * median(run, repeats)}
    kind = min(variants, key=lambda k: variants[k]["ms"])
    best = variants[kind]
    out = {k: v for k, v in best.items() if k != "run"}
    out.update(readout=kind, jax=jax.__version__, **{f"{k}_ms": v["ms"] for k, v in variants.items()})
    print("RESULT " + json.dumps(out), flush=True)
    for line in sys.stdin:
        if line.startswith("time"):
            print(f"MS {1e3 * median(best['run'], int(line.split()[1]))}", flush=True)


def median(fn, repeats):
    """Median wall time of ``fn()`` over ``repeats`` calls after a warm-up (peers.py's)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from peers import median_time
    return median_time(fn, repeats, budget=60.0)


def main():
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--quick", action="store_true", help="H=32, T=20, 3 repeats, 2 rounds (a smoke test)")
    ap.add_argument("--cells", default=",".join(CELLS))
    ap.add_argument("--shape", metavar="D,H,B,T", help="inputs, hidden units, batch, steps (default 64,128,32,100)")
    ap.add_argument("--repeats", type=int, default=15, help="timed calls per side per round")
    ap.add_argument("--rounds", type=int, default=5, help="rounds alternating rnncomp and JAX")
    ap.add_argument("--worker", nargs=2, metavar=("NPZ", "CELL"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a.worker[0], a.worker[1], a.repeats)
    import numpy as np
    import rnncomp as rc
    D, H, B, T, repeats = (16, 32, 8, 20, 3) if a.quick else (64, 128, 32, 100, a.repeats)
    if a.shape:
        try:
            D, H, B, T = (int(v) for v in a.shape.split(","))
        except ValueError:
            raise SystemExit(f"--shape takes four integers D,H,B,T, got {a.shape!r}") from None
    rounds = 2 if a.quick else a.rounds
    rows, tmp = [], tempfile.mkdtemp()
    from fma_peak import peak
    from rnncomp.inspect.cost import cost
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    peaks = [peak(cores)["gflops"]]
    for name in a.cells.split(","):
        cell = make_cell(name, D, H)
        flops = cost(cell, T=T, B=B).sequence_flops["total"]
        params = {k: v.astype(np.float32) for k, v in cell.init_params(seed=0).items()}
        rng = np.random.default_rng(0)
        x = rng.standard_normal((T, B, D)).astype(np.float32)
        tg = rng.standard_normal((T, B, H)).astype(np.float32)
        model = rc.compile(cell, backend="native", dtype="float32")
        loss, grads, _ = model.loss_and_grad(params, {"x": x}, {"target": tg})
        path = os.path.join(tmp, f"{name}.npz")
        np.savez(path, D=D, H=H, x=x, target=tg, loss=loss, **{"p:" + k: v for k, v in params.items()},
                 **{"g:" + k: np.asarray(v, np.float64) for k, v in grads.items()})
        proc = subprocess.Popen([sys.executable, __file__, "--worker", path, name, "--repeats", str(repeats)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = next((ln for ln in proc.stdout if ln.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"{name}: the JAX worker failed:\n{proc.stderr.read()[-3000:]}")
        j = json.loads(line[7:])
        if j["loss_rel_err"] > 1e-4 or j["grad_rel_err"] > 1e-3:
            raise SystemExit(f"{name}: JAX and rnncomp disagree: {j}")
        ours, theirs = [], []
        for _ in range(rounds):   # alternate the sides, so a slower minute of the machine hits both
            ours.append(1e3 * median(lambda: model.loss_and_grad(params, {"x": x}, {"target": tg}), repeats))
            proc.stdin.write(f"time {repeats}\n")
            proc.stdin.flush()
            theirs.append(float(proc.stdout.readline().split()[1]))
        proc.stdin.close()
        proc.wait()
        ratios = sorted(b / a for a, b in zip(ours, theirs))
        ms, jms = statistics.median(ours), statistics.median(theirs)
        rows.append({"cell": name, "rnncomp_ms": ms, "jax_ms": jms, "ratio": statistics.median(ratios),
                     "round_ratios": ratios, "rnncomp_rounds_ms": ours, "jax_rounds_ms": theirs,
                     "flops": flops, "rnncomp_gflops": flops / ms / 1e6, "needs_gflops_2x": 2 * flops / jms / 1e6, **j})
        print(f"{name:14s} rnncomp {ms:8.2f} ms   JAX {jms:8.2f} ms ({j['readout']:6s})  "
              f"{statistics.median(ratios):5.2f}x  [{ratios[0]:.2f}-{ratios[-1]:.2f}]   "
              f"(agree: loss {j['loss_rel_err']:.1e}, grads {j['grad_rel_err']:.1e})", flush=True)
    peaks.append(peak(cores)["gflops"])
    fma = min(peaks)
    print(f"\nWhat 2x JAX asks (FLOPs of a training call, `rnncomp inspect CELL --cost`), against the float32 "
          f"FMA peak on {cores} cores measured in this run: {fma:.0f} GFLOP/s (before {peaks[0]:.0f}, after "
          f"{peaks[1]:.0f})")
    print(f"{'cell':14s} {'MFLOP':>7s} {'rnncomp GFLOP/s':>17s} {'2x JAX needs':>17s}")
    for r in rows:
        r["fma_peak_gflops"] = fma
        print(f"{r['cell']:14s} {r['flops'] / 1e6:7.0f} {r['rnncomp_gflops']:8.0f} ({100 * r['rnncomp_gflops'] / fma:3.0f}%) "
              f"{r['needs_gflops_2x']:8.0f} ({100 * r['needs_gflops_2x'] / fma:3.0f}%)")
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor())
    print(f"H={H} D={D} B={B} T={T} float32, {cpu}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; "
          f"ratio = JAX / rnncomp, median of {rounds} alternating rounds [lowest-highest round]")
    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    # a smoke test or another shape never overwrites the default run
    name = (f"custom_cells-{D}-{H}-{B}-{T}.json" if a.shape else "custom_cells-quick.json" if a.quick
            else "custom_cells.json")
    with open(os.path.join(ROOT, "benchmarks", "results", name), "w") as f:
        json.dump({"shape": {"D": D, "H": H, "B": B, "T": T}, "cpu": cpu, "fma_peak_gflops": peaks,
                   "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
