"""Settling networks on the native backend: blocks of iterations per native call against one
call per iteration (issue #20, "several relaxation iterations per native call").

``rc.compile_fixed_point(cell, backend="native")`` relaxes s ← f(s, x) and iterates the adjoint
λ ← (∂f/∂s)ᵀλ + ∂ℓ/∂s; it tests convergence once per block of iterations (1, 2, 3, 5, 9, 17,
33, …) and runs a block's iterations but the last as one native call of m steps.  ``block = 1``
(the model's attribute) tests after every iteration, one call each: what it did before.  Both
are timed in one process, alternating in rounds, on a Hopfield-style cell
s = tanh(W s + U x + b) with W scaled so that the relaxation takes tens to hundreds of
iterations; ``solve="direct"`` (the Jacobian: one backward over N seeded copies of the batch,
before: N backwards) is timed against NumPy's executor, the reference.

    python benchmarks/bench_settle.py            # a table; JSON in benchmarks/results/settle.json
    python benchmarks/bench_settle.py --quick    # a smoke test
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np  # noqa: E402
import sympy as sp  # noqa: E402

import rnncomp as rc  # noqa: E402


def settle_cell(n_in, n):
    cell = rc.Cell("hopfield")
    x, s = cell.input("x", n_in), cell.state("s", n)
    cell.update(s, sp.tanh(cell.param("W", (n, n)) @ s + cell.param("U", (n, n_in)) @ x + cell.param("b", n)))
    y = cell.output("y", cell.param("V", (4, n)) @ s.new)
    cell.loss(rc.vsum((y - cell.target("t", 4)) ** 2) / 2)
    return cell


def _best(f, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def run(H, B, radius, repeats, rounds, tol=1e-10):
    cell = settle_cell(16, H)
    blocked = rc.compile_fixed_point(cell, tol=tol, max_iter=5000, backend="native")
    single = rc.compile_fixed_point(cell, tol=tol, max_iter=5000, backend="native")
    single.block = 1
    numpy_ = rc.compile_fixed_point(cell, tol=tol, max_iter=5000)
    rng = np.random.default_rng(0)
    p = blocked.init_params(0)
    W = rng.standard_normal((H, H))
    p["W"] = radius * W / np.abs(np.linalg.eigvals(W)).max()  # the contraction's rate, about
    x, y = rng.standard_normal((B, 16)), rng.standard_normal((B, 4))
    jobs = {"forward": lambda m: m.forward(p, x),
            "rbp, iterate": lambda m: m.loss_and_grad(p, x, y),
            "rbp, direct": lambda m: m.loss_and_grad(p, x, y, solve="direct")}
    rows = []
    for name, job in jobs.items():
        want = job(numpy_)
        for m in (single, blocked):  # warm up (compiles) and check against NumPy's executor
            got = job(m)
            if name != "forward":
                scale = max(np.abs(v).max() for v in want[1].values())
                err = max(np.abs(want[1][k] - got[1][k]).max() for k in want[1]) / scale
                assert err < 1e-7, (name, err)
        its = {"single": single.iterations, "blocked": blocked.iterations}
        t = {"single": [], "blocked": []}
        for _ in range(rounds):
            t["single"].append(_best(lambda: job(single), repeats))
            t["blocked"].append(_best(lambda: job(blocked), repeats))
        t_np = _best(lambda: job(numpy_), max(1, repeats // 3))
        ratio = statistics.median(a / b for a, b in zip(t["single"], t["blocked"]))
        rows.append({"H": H, "B": B, "radius": radius, "job": name, "iterations": its,
                     "single_ms": 1e3 * statistics.median(t["single"]), "blocked_ms": 1e3 * statistics.median(t["blocked"]),
                     "numpy_ms": 1e3 * t_np, "speedup": ratio,
                     "speedup_range": [min(a / b for a, b in zip(t["single"], t["blocked"])),
                                       max(a / b for a, b in zip(t["single"], t["blocked"]))]})
    return rows


def table(rows) -> str:
    out = ["| H | B | job | iterations (one call each / blocks) | one call each, ms | blocks, ms | speedup [range] | NumPy executor, ms |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["speedup_range"]
        out.append(f"| {r['H']} | {r['B']} | {r['job']} | {r['iterations']['single']} / {r['iterations']['blocked']} | "
                   f"{r['single_ms']:.2f} | {r['blocked_ms']:.2f} | {r['speedup']:.2f}× [{lo:.2f}–{hi:.2f}] | {r['numpy_ms']:.2f} |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one small size, few repeats (a smoke test)")
    ap.add_argument("--json", default=os.path.join(HERE, "results", "settle.json"))
    args = ap.parse_args(argv)
    sizes = [(16, 8, 0.9)] if args.quick else [(32, 32, 0.9), (32, 32, 0.98), (128, 32, 0.9), (512, 32, 0.9)]
    repeats, rounds = (2, 1) if args.quick else (5, 5)
    rows = [r for H, B, rho in sizes for r in run(H, B, rho, repeats, rounds)]
    print(table(rows))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {load:.2f}; float64, tol 1e-10; "
          "speedup = one call per iteration / blocks, median of alternating rounds")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump({"rows": rows, "load": load}, fh, indent=1)
    print(f"wrote {os.path.relpath(args.json)}")


if __name__ == "__main__":
    main()
