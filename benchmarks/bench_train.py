"""Training throughput (sequences/s): the compiled trainer against the NumPy reference and PyTorch.

    nice -n 10 python benchmarks/bench_train.py [--quick]   # table + benchmarks/results/train.json

The task: the adding problem (rnncomp.train.tasks.adding), T=100, B=32, float32; a cell
with a linear read-out, MSE on the last step only (the mask), Adam(1e-3) and clipping of
the global gradient norm to 1.0.  One training step = forward + full BPTT + clip + Adam.
Rows: LSTM and GRU with H=64 and H=128.  Columns, all measured in the same run:

- rnncomp: ``Trainer(backend="native")`` (compiled forward/BPTT + the compiled update,
  rnncomp/train/native_update.py) with ``threads=1`` and with all cores;
- numpy: the same Trainer on the NumPy reference executor (``backend="numpy"``), one
  OpenBLAS thread (see below);
- torch fused: ``nn.LSTM``/``nn.GRU`` (oneDNN) + ``nn.Linear`` + ``clip_grad_norm_`` +
  ``torch.optim.Adam``, with ``torch.set_num_threads(1)`` and all cores.  (torch's GRU
  applies the reset gate after the recurrent product, rnncomp's ``cells.gru`` before it:
  same sizes and cost, not the same function);
- torch loop: rnncomp's exact cell equations written as a Python loop of torch ops over t
  (input products for all t hoisted into one matmul, as a careful user would), autograd
  for BPTT, same optimizer and clipping; 1 thread and all cores.

A last row times the update alone on a 1M-element float32 vector (Adam + clip by norm,
finite check included): the native kernel, the NumPy path of the Trainer, and
``clip_grad_norm_`` + ``torch.optim.Adam`` on one 1M-element tensor.

Times are the best of the repeats (the JSON also holds the medians): on a 2-core machine
shared with other work, the columns with all cores (torch's OpenMP threads especially)
collapse whenever another process holds a core; compare them only on an idle machine.
"""
import argparse
import json
import os
import statistics
import sys
import time

# The NumPy reference runs with one OpenBLAS thread unless OPENBLAS_NUM_THREADS says otherwise
# (set before NumPy loads it): on a busy 2-core machine two spinning BLAS threads made a
# step 70x slower (13 s instead of 0.18 s for the LSTM H=128), and one thread is the
# baseline that the 1-thread columns compare with.  rnncomp and torch do not use OpenBLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import rnncomp as rc  # noqa: E402
from rnncomp.train.native_update import NativeUpdate  # noqa: E402
from rnncomp.train.tasks import adding  # noqa: E402

T, B, D, LR, CLIP = 100, 32, 2, 1e-3, 1.0
CASES = [("lstm", 64), ("gru", 64), ("lstm", 128), ("gru", 128)]
NCPU = os.cpu_count() or 1


def timed(fn, repeats, budget):
    """(best, median) seconds per call over up to ``repeats`` calls within ``budget`` s.
    The table uses the best: on a shared machine it is the least disturbed measurement."""
    fn()  # warm-up (compilation, first-touch allocations)
    times, start = [], time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget:
            break
    return min(times), statistics.median(times)


def data():
    x, y, m = adding(T=T, N=B, seed=0)
    return x, y, m


# ---------------------------------------------------------------------------- rnncomp
def rnncomp_step(kind, H, backend, threads=None):
    cell = rc.cells.get(kind)(D, H, 1)
    opts = {"threads": threads} if backend == "native" else {}
    tr = rc.Trainer(cell, rc.Adam(LR), clip_norm=CLIP, backend=backend, dtype="float32", **opts)
    x, y, m = data()
    return lambda: tr.train_step({"x": x}, {"target": y}, mask=m)


# ---------------------------------------------------------------------------- torch
def torch_fused_step(kind, H, threads):
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    rnn = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind](D, H)
    head = torch.nn.Linear(H, 1)
    params = list(rnn.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=LR)
    x, y, m = (torch.from_numpy(a) for a in data())
    w = m / m.sum()

    def step():
        opt.zero_grad(set_to_none=True)
        out, _ = rnn(x)
        loss = (((head(out) - y) ** 2).sum(-1) / 2 * w).sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()
    return step


def torch_loop_step(kind, H, threads):
    """rnncomp's cells.lstm / cells.gru equations as a Python loop of torch ops."""
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    ngate = {"lstm": 4, "gru": 3}[kind]
    Wx = torch.nn.Parameter(torch.randn(D, ngate * H) * 0.3)
    Uh = torch.nn.Parameter(torch.randn(H, ngate * H) / H ** 0.5)
    b = torch.nn.Parameter(torch.zeros(ngate * H))
    V, c = torch.nn.Parameter(torch.randn(H, 1) / H ** 0.5), torch.nn.Parameter(torch.zeros(1))
    params = [Wx, Uh, b, V, c]
    opt = torch.optim.Adam(params, lr=LR)
    x, y, m = (torch.from_numpy(a) for a in data())
    w = m / m.sum()

    def step():
        opt.zero_grad(set_to_none=True)
        xw = x @ Wx + b  # (T, B, ngate*H): the input products for all t at once
        h = torch.zeros(B, H)
        hs = []
        if kind == "lstm":
            cs = torch.zeros(B, H)
            for t in range(T):
                i, f, g, o = (xw[t] + h @ Uh).chunk(4, -1)
                cs = torch.sigmoid(f) * cs + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(cs)
                hs.append(h)
        else:
            Uzr, Un = Uh[:, :2 * H], Uh[:, 2 * H:]
            for t in range(T):
                xz, xr, xn = xw[t].chunk(3, -1)
                hz, hr = (h @ Uzr).chunk(2, -1)
                z, r = torch.sigmoid(xz + hz), torch.sigmoid(xr + hr)
                n = torch.tanh(xn + (r * h) @ Un)
                h = (1 - z) * n + z * h
                hs.append(h)
        out = torch.stack(hs) @ V + c
        loss = (((out - y) ** 2).sum(-1) / 2 * w).sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()
    return step


def have_torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------- the update alone
def update_alone(n, reps, budget):
    rng = np.random.default_rng(0)
    grad = rng.normal(0, 1, n).astype(np.float32)
    flat_n = rng.normal(0, 1, n).astype(np.float32)
    flat_p = flat_n.copy()
    opt_n, opt_p = rc.Adam(LR), rc.Adam(LR)
    opt_n.init(flat_n)
    opt_p.init(flat_p)
    up = NativeUpdate("float32")
    counter = {"n": 0, "p": 0}

    def native():
        counter["n"] += 1
        assert up(opt_n, flat_n, grad, counter["n"], None, CLIP) == -1

    gbuf = np.empty_like(grad)

    def numpy_path():  # Trainer.train_step's NumPy path after the gradients are concatenated
        counter["p"] += 1
        if not np.isfinite(grad).all():
            raise RuntimeError("non-finite")
        g64 = grad.astype(np.float64)
        norm = float(np.sqrt(np.dot(g64, g64)))
        g = np.multiply(grad, np.float32(CLIP / norm), out=gbuf) if norm > CLIP else grad
        opt_p.step(flat_p, g, counter["p"])

    r = {"native_ms": 1e3 * timed(native, reps, budget)[0],
         "numpy_ms": 1e3 * timed(numpy_path, reps, budget)[0]}
    if have_torch():
        import torch
        for key, th in (("torch_1t_ms", 1), ("torch_ms", NCPU)):
            torch.set_num_threads(th)
            p = torch.nn.Parameter(torch.from_numpy(flat_n.copy()))
            p.grad = torch.from_numpy(grad.copy())
            opt = torch.optim.Adam([p], lr=LR)

            def torch_update():
                torch.nn.utils.clip_grad_norm_([p], CLIP)
                opt.step()
            r[key] = 1e3 * timed(torch_update, reps, budget)[0]
    return r


# ---------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repeats, H=64 only")
    args = ap.parse_args()
    reps, budget = (5, 2.0) if args.quick else (20, 6.0)
    torch_ok = have_torch()
    rows = []
    for kind, H in CASES:
        if args.quick and H > 64:
            continue
        r = {"case": f"{kind.upper()} H={H}", "T": T, "B": B, "threads": NCPU}
        cols = [("rnncomp_1t", lambda: rnncomp_step(kind, H, "native", 1)),
                ("rnncomp", lambda: rnncomp_step(kind, H, "native", NCPU)),
                ("numpy", lambda: rnncomp_step(kind, H, "numpy"))]
        if torch_ok:
            cols += [("torch_fused_1t", lambda: torch_fused_step(kind, H, 1)),
                     ("torch_fused", lambda: torch_fused_step(kind, H, NCPU)),
                     ("torch_loop_1t", lambda: torch_loop_step(kind, H, 1)),
                     ("torch_loop", lambda: torch_loop_step(kind, H, NCPU))]
        for key, make in cols:
            fn = make()
            slow = key.startswith(("numpy", "torch_loop"))
            best, med = timed(fn, max(3, reps // 3) if slow else reps, budget)
            r[key + "_ms"], r[key + "_median_ms"] = 1e3 * best, 1e3 * med
            r[key + "_seq_s"] = B / best
        rows.append(r)
        print(f"  measured {r['case']}", flush=True)
    upd = update_alone(1 << 20, reps, budget)
    print_table(rows, upd, torch_ok)
    out = os.path.join(os.path.dirname(__file__), "results")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "train.json"), "w") as fh:
        json.dump({"task": f"adding T={T} B={B} float32, Adam + clip_norm", "cpus": NCPU,
                   "openblas_threads": os.environ["OPENBLAS_NUM_THREADS"],
                   "rows": rows, "update_1M": upd}, fh, indent=1)


def print_table(rows, upd, torch_ok):
    keys = ["rnncomp_1t", "rnncomp", "numpy"] + (["torch_fused_1t", "torch_fused", "torch_loop_1t", "torch_loop"]
                                                 if torch_ok else [])
    heads = {"rnncomp_1t": "rnncomp 1t", "rnncomp": f"rnncomp {NCPU}t", "numpy": "numpy ref",
             "torch_fused_1t": "fused 1t", "torch_fused": f"fused {NCPU}t", "torch_loop_1t": "loop 1t",
             "torch_loop": f"loop {NCPU}t"}
    print(f"\ntraining throughput, sequences/s (adding problem, T={T}, B={B}, float32, Adam, clip_norm)")
    print(f"{'case':<12}" + "".join(f"{heads[k]:>12}" for k in keys)
          + f"   (numpy: {os.environ['OPENBLAS_NUM_THREADS']} BLAS thread(s))")
    for r in rows:
        print(f"{r['case']:<12}" + "".join(f"{r[k + '_seq_s']:>12.0f}" for k in keys))
    # ratios at equal thread counts: rnncomp 1t / X 1t and rnncomp Nt / X Nt (numpy: its own BLAS threads)
    pairs = [("numpy", "numpy", "numpy")] + ([("torch_fused_1t", "torch_fused", "torch fused"),
                                              ("torch_loop_1t", "torch_loop", "torch loop")] if torch_ok else [])
    print(f"\nrnncomp speed-up (1 thread vs 1 thread / {NCPU} vs {NCPU})")
    print(f"{'case':<12}" + "".join(f"{'vs ' + name:>20}" for _, _, name in pairs))
    for r in rows:
        cells = [f"{r['rnncomp_1t_seq_s'] / r[a + '_seq_s']:.2f}x / {r['rnncomp_seq_s'] / r[b + '_seq_s']:.2f}x"
                 for a, b, _ in pairs]
        print(f"{r['case']:<12}" + "".join(f"{c:>20}" for c in cells))
    print("\nupdate alone, 1M float32 elements (finite check + clip by norm + Adam), ms per step")
    t = (f"   torch 1t {upd['torch_1t_ms']:.3f}   torch {NCPU}t {upd['torch_ms']:.3f}" if "torch_ms" in upd else "")
    print(f"native {upd['native_ms']:.3f}   numpy {upd['numpy_ms']:.3f}{t}   "
          f"native vs numpy {upd['numpy_ms'] / upd['native_ms']:.1f}x")


if __name__ == "__main__":
    main()
