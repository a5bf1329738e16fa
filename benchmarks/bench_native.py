"""Training step (forward over all T + full BPTT gradients), float32, median time.

    python benchmarks/bench_native.py [--quick]     # table + benchmarks/results/native.json

Columns: rnncomp native with 1 thread and with all cores, the NumPy reference executor,
and PyTorch fused nn.RNN/GRU/LSTM (with 1 thread and with all cores) when torch is
installed (`pip install '.[benchmarks]'`).  All measured in the same run.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import rnncomp as rc  # noqa: E402

CASES = [
    ("elman", "Elman tanh H=32 D=8 B=1 T=100", 8, 32, 1, 100),
    ("elman", "Elman H=128 D=64 B=32 T=100", 64, 128, 32, 100),
    ("gru", "GRU H=128 D=64 B=32 T=100", 64, 128, 32, 100),
    ("lstm", "LSTM H=128 D=64 B=32 T=100", 64, 128, 32, 100),
    ("lstm", "LSTM H=512 D=256 B=64 T=50", 256, 512, 64, 50),
    ("softsign_lstm", "softsign-gate LSTM H=128 B=32 T=100", 64, 128, 32, 100),
]


def median_time(fn, repeats, budget=20.0):
    fn()  # warm-up
    times, start = [], time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget:
            break
    return statistics.median(times)


def torch_fused(kind, D, H, B, T, threads):
    try:
        import torch
    except ImportError:
        return None
    if kind not in ("elman", "gru", "lstm"):
        return None
    torch.set_num_threads(threads)
    mod = {"elman": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[kind](D, H)
    head = torch.nn.Linear(H, 4)
    x = torch.randn(T, B, D)
    y = torch.randn(T, B, 4)

    def step():
        mod.zero_grad()
        out, _ = mod(x)
        loss = ((head(out) - y) ** 2).sum(-1).mean() / 2
        loss.backward()
    return step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repeats, skip the largest case")
    args = ap.parse_args()
    rows = []
    for kind, label, D, H, B, T in CASES:
        if args.quick and H >= 512:
            continue
        cell = rc.cells.get(kind)(D, H, 4)
        rng = np.random.default_rng(0)
        params = cell.init_params(0, "float32")
        x = rng.normal(size=(T, B, D)).astype(np.float32)
        y = rng.normal(size=(T, B, 4)).astype(np.float32)
        t0 = time.perf_counter()
        native1 = rc.compile(cell, backend="native", dtype="float32", threads=1)
        compile_s = time.perf_counter() - t0
        native = rc.compile(cell, backend="native", dtype="float32")
        ref = rc.compile(cell, backend="numpy", dtype="float32")
        reps = 3 if args.quick else 10
        ncpu = os.cpu_count() or 1
        r = {"case": label, "compile_s": compile_s, "threads": ncpu,
             "native_1t_ms": 1e3 * median_time(lambda: native1.loss_and_grad(params, x, y), reps),
             "native_ms": 1e3 * median_time(lambda: native.loss_and_grad(params, x, y), reps),
             "numpy_ms": 1e3 * median_time(lambda: ref.loss_and_grad(params, x, y), max(2, reps // 3))}
        for key, th in (("torch_1t_ms", 1), ("torch_ms", ncpu)):
            tf = torch_fused(kind, D, H, B, T, th)
            r[key] = 1e3 * median_time(tf, reps) if tf else None
        rows.append(r)
        print(f"  measured {label}", flush=True)
    fmt = lambda v: f"{v:>9.1f}ms" if v else f"{'n/a':>11}"  # noqa: E731
    print(f"\n{'case':<38}{'native 1t':>11}{'native':>11}{'numpy':>11}{'torch 1t':>11}{'torch':>11}"
          f"{'vs numpy':>9}{'vs torch':>9}")
    for r in rows:
        vs_t = f"{r['torch_ms'] / r['native_ms']:>8.2f}x" if r["torch_ms"] else f"{'n/a':>9}"
        print(f"{r['case']:<38}{fmt(r['native_1t_ms'])}{fmt(r['native_ms'])}{fmt(r['numpy_ms'])}"
              f"{fmt(r['torch_1t_ms'])}{fmt(r['torch_ms'])}{r['numpy_ms'] / r['native_ms']:>8.2f}x{vs_t}")
    out = os.path.join(os.path.dirname(__file__), "results")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "native.json"), "w") as fh:
        json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
