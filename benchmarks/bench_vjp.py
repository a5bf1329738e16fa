"""Gradients in and out (issue #15): what a VJP call costs next to ``loss_and_grad``.

    python benchmarks/bench_vjp.py            # ~1 min: a table + benchmarks/results/vjp.json
    python benchmarks/bench_vjp.py --quick

LSTM H=128 D=128 B=32 T=100, float32, native backend, all cores, every column in one run
(interleaved rounds, the median of each): a training step with the cell's own loss
(``loss_and_grad``) against the same step as a layer would run it -- ``forward(keep=True)``
then ``backward(d_outputs=...)`` -- with the input cotangents (δx, as a layer needs
when something is below it) and without (``wrt=()``).  Goals: keep + backward ≤ 1.15×
``loss_and_grad``; input cotangents on / off ≤ 1.10×.  ``bench_native.py`` prints the same
rows after its own tables.

The input cotangents add one product, δX = δA·W over T·B rows (2·T·B·4H·D flops).  The
machine's FMA peak is measured in the same run (``rnncomp.inspect.peak``), and the table
states the lowest "on / off" any code could reach here: the "off" time plus that product at
the peak.  Where that floor is above 1.10× the goal is out of this machine's reach, and the
table says so rather than leaving a bare "MISSED".
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def run(threads=None, rounds=15, D=128, H=128, B=32, T=100):
    """The rows of the table: {case: median ms}, and the ratios against the goals."""
    import numpy as np

    sys.path.insert(0, os.path.join(HERE, ".."))
    import rnncomp as rc

    cell = rc.cells.lstm(D, H, H)
    model = rc.compile(cell, backend="native", dtype="float32", threads=threads)
    rng = np.random.default_rng(0)
    params = {k: v.astype(np.float32) for k, v in cell.init_params(seed=0).items()}
    x = {"x": rng.standard_normal((T, B, D)).astype(np.float32)}
    tg = {"target": rng.standard_normal((T, B, H)).astype(np.float32)}
    dy = {"y": rng.standard_normal((T, B, H)).astype(np.float32) / (T * B)}
    cases = {
        "loss_and_grad": lambda: model.loss_and_grad(params, x, tg),
        "forward(keep) + backward, δx on": lambda: model.forward(params, x, keep=True).backward(d_outputs=dy),
        "forward(keep) + backward, δx off": lambda: model.forward(params, x, keep=True, wrt=()).backward(
            d_outputs=dy),
        "vjp (one call), δx on": lambda: model.vjp(params, x, d_outputs=dy),
    }
    times = {k: [] for k in cases}
    cpu = {k: [] for k in cases}
    for f in cases.values():  # compile the variants, warm the buffers
        f(), f()
    for _ in range(rounds):
        for k, f in cases.items():
            c0, t0 = time.process_time(), time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    cpu_ms = {k: 1e3 * statistics.median(v) for k, v in cpu.items()}
    on, off, base = "forward(keep) + backward, δx on", "forward(keep) + backward, δx off", "loss_and_grad"
    ratios = {"keep+backward / loss_and_grad": ms[on] / ms[base], "δx on / off": ms[on] / ms[off],
              "keep+backward, δx off / loss_and_grad": ms[off] / ms[base],
              # the same by the process's CPU time (all threads): what the calls computed, less of
              # what a shared machine's other guests took from them
              "CPU time: keep+backward / loss_and_grad": cpu_ms[on] / cpu_ms[base],
              "CPU time: δx on / off": cpu_ms[on] / cpu_ms[off]}
    goals = {"keep+backward / loss_and_grad": 1.15, "δx on / off": 1.10}
    from rnncomp.inspect.peak import peak

    dx_gflop = 2 * T * B * 4 * H * D / 1e9
    fma = peak(model.threads)["gflops"]
    floor = 1 + dx_gflop / fma / (ms[off] / 1e3)
    return {"case": f"LSTM H={H} D={D} B={B} T={T} float32", "ms": ms, "cpu_ms": cpu_ms, "ratios": ratios,
            "goals": goals,
            "threads": model.threads, "dx_gflop": dx_gflop, "fma_peak_gflops": fma, "dx_on_off_floor": floor}


def report(res) -> str:
    lines = [f"\nGradients in and out, {res['case']}, {res['threads']} thread(s), median ms\n",
             "| call | ms | vs loss_and_grad | CPU ms (all threads) |", "|---|---|---|---|"]
    base = res["ms"]["loss_and_grad"]
    lines += [f"| {k} | {v:.2f} | {v / base:.2f}× | {res['cpu_ms'][k]:.2f} |" for k, v in res["ms"].items()]
    lines.append("")
    for k, v in res["ratios"].items():
        g = res["goals"].get(k)
        lines.append(f"{k}: {v:.2f}×" + ("" if g is None else f" (goal ≤ {g:.2f}×: {'met' if v <= g else 'MISSED'})"))
    floor, fma = res["dx_on_off_floor"], res["fma_peak_gflops"]
    lines.append(f"δX = δA·W is {res['dx_gflop']:.3f} GFLOP; at this machine's FMA peak ({fma:.0f} GFLOP/s on "
                 f"{res['threads']} thread(s), measured now) it would take {res['dx_gflop'] / fma * 1e3:.2f} ms, "
                 f"so δx on / off ≥ {floor:.3f}× for any code here"
                 + (" -- the 1.10× goal is above what this machine can do" if floor > 1.10 else ""))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description="VJP calls against loss_and_grad (native, float32)")
    ap.add_argument("--quick", action="store_true", help="5 rounds instead of 15")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="default benchmarks/results/vjp.json (vjp-quick.json with --quick)")
    args = ap.parse_args(argv)
    load = os.getloadavg()
    args.json = args.json or os.path.join(HERE, "results", "vjp-quick.json" if args.quick else "vjp.json")
    res = run(args.threads, rounds=5 if args.quick else 15)
    res["load_start"], res["load_end"] = load, os.getloadavg()
    print(report(res))
    print(f"load average {load[0]:.2f} at the start, {res['load_end'][0]:.2f} at the end")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump(res, fh, indent=1)
    print(f"wrote {os.path.relpath(args.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
