"""``rnncomp demo``: a tour of a few seconds.  Declares a GRU in the DSL, prints its equations
and the BPTT step rnncomp derived, checks that gradient against central finite differences,
compiles it for this CPU and times it against the NumPy reference, then trains it on sine
waves (a checkpoint that ``rnncomp train --resume`` continues, and a learning curve).
"""
from __future__ import annotations

import time

import numpy as np

from . import cells
from .compile import compile as rc_compile
from .printing import explain


def demo(args) -> int:
    print("rnncomp demo: a GRU declared in the DSL, its derived BPTT step, checked.\n")
    cell = cells.gru(4, 8, 2)
    e = explain(cell)
    print(e.forward_text(), "\n")
    print(e.backward_text(), "\n")
    model = rc_compile(cell, backend="numpy", dtype="float64")
    rng = np.random.default_rng(0)
    params = cell.init_params(seed=0)
    x = rng.normal(size=(20, 4, 4))
    y = rng.normal(size=(20, 4, 2))
    t0 = time.perf_counter()
    loss, grads, _ = model.loss_and_grad(params, x, y)
    dt = time.perf_counter() - t0
    print(f"loss over T=20, B=4: {loss:.6f}  ({dt * 1e3:.1f} ms, NumPy reference executor)")
    print("gradient check, central differences (eps 1e-6) in a random direction per parameter:")
    worst = 0.0
    for name, value in params.items():
        d = rng.normal(size=value.shape)
        lp = model.loss_and_grad(dict(params, **{name: value + 1e-6 * d}), x, y)[0]
        lm = model.loss_and_grad(dict(params, **{name: value - 1e-6 * d}), x, y)[0]
        fd, an = (lp - lm) / 2e-6, float((grads[name] * d).sum())
        rel = abs(fd - an) / max(abs(fd), 1e-12)
        worst = max(worst, rel)
        print(f"  {name:>3}: derived {an:+.10f}   finite difference {fd:+.10f}   rel. error {rel:.1e}")
    ok = worst < 1e-6
    print(f"\n{'OK' if ok else 'MISMATCH'}: worst relative error {worst:.1e} (tolerance 1e-6)")
    ok = _native_vs_reference(cell, params, x, y, loss, grads) and ok
    _demo_training()
    return 0 if ok else 1


def _demo_training() -> None:
    import os
    import tempfile

    from .cli_train import held_out
    from .train import Adam, Trainer
    from .train.tasks import sine

    # the run as `rnncomp train` records it, so that the printed --resume continues it
    run = {"task": "sine", "cell": "gru", "T": 50, "N": 576, "hidden": 32, "lr": 1e-2, "seed": 1, "batch": 32}
    print("\ntraining a GRU (H=32) to continue sine waves: native backend, float32, Adam, clip 1.0")
    xs, ys, _ = sine(T=run["T"], N=run["N"], seed=run["seed"])
    n = held_out(run["N"])  # 72 held-out waves, 504 to train on
    xt, yt, x, y = xs[:, :n], ys[:, :n], xs[:, n:], ys[:, n:]
    tr = Trainer(cells.gru(1, run["hidden"], 1), Adam(run["lr"]), clip_norm=1.0, backend="native",
                 dtype="float32", seed=run["seed"])
    tr.info["task"] = run
    print(f"  held-out loss before: {tr.evaluate(xt, yt):.5f}")
    t0 = time.perf_counter()
    for epoch in range(8):
        tr.fit(x, y, epochs=1, batch_size=run["batch"], verbose=0)  # the orders of fit(epochs=8)
        print(f"  epoch {epoch + 1}: training loss {tr.history[-1]:.5f}   held-out {tr.evaluate(xt, yt):.5f}")
    print(f"  {tr.step_count} updates (forward + BPTT + clip + Adam) in {time.perf_counter() - t0:.2f} s")
    ref = rc_compile(tr.cell, backend="numpy", dtype="float32")
    b = (x[:, :32], y[:, :32])
    tn = min(_timed(lambda: tr.model.loss_and_grad(tr.params, *b)) for _ in range(5))
    tref = min(_timed(lambda: ref.loss_and_grad(tr.params, *b)) for _ in range(3))
    print(f"  one step of this training (T=50, B=32, forward + BPTT): native {tn * 1e3:.2f} ms, "
          f"NumPy reference {tref * 1e3:.2f} ms ({tref / tn:.1f}x)")
    ckpt = os.path.join(tempfile.gettempdir(), "rnncomp-demo-gru.ckpt")
    png = os.path.join(tempfile.gettempdir(), "rnncomp-demo-gru.png")
    tr.save(ckpt)
    tr.plot(png, title="rnncomp demo: GRU learning sine waves")
    print(f"  checkpoint: {ckpt}  (resume: rnncomp train --resume {ckpt})")
    print(f"  learning curve: {png}")


def _native_vs_reference(cell, params, x, y, loss, grads) -> bool:
    print("\nnative backend (LLVM, this CPU), float64, against the NumPy reference:")
    t0 = time.perf_counter()
    native = rc_compile(cell, backend="native", dtype="float64")
    print(f"  compiled in {time.perf_counter() - t0:.2f} s")
    nl, ng, _ = native.loss_and_grad(params, x, y)
    diff = max(float(np.abs(ng[k] - grads[k]).max() / (np.abs(grads[k]).max() + 1e-300)) for k in grads)
    ref = rc_compile(cell, backend="numpy", dtype="float64")
    tn = min(_timed(lambda: native.loss_and_grad(params, x, y)) for _ in range(5))
    tr = min(_timed(lambda: ref.loss_and_grad(params, x, y)) for _ in range(3))
    print(f"  loss {nl:.12f} (reference {loss:.12f}); largest gradient difference {diff:.1e} (relative)")
    print(f"  training step: native {tn * 1e3:.2f} ms, reference {tr * 1e3:.2f} ms ({tr / tn:.1f}x)")
    return diff < 1e-10


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
