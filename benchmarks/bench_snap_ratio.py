"""One SnAp-1 sparse native step over one native BPTT step, measured in the same process (issue #20).

    python benchmarks/bench_snap_ratio.py                 # the four cells of docs/algorithms.md
    python benchmarks/bench_snap_ratio.py elman lstm      # some of them

For each cell, on one sequence (T = 20, float64): CPU time of the native model's
``loss_and_grad`` (``threads=1``: forward + backward) and of ``sequence_grad(SnAp(1,
sparse=True), backend="native")``, each the least of several runs, BPTT timed before and after
SnAp (the least of both kept).  The ratio of two times taken in one process moments apart is
robust to the load of a shared machine; the native gradient is checked against the NumPy
executor's first.  Each line also gives the ratio of the two steps' FLOPs by the cost model
(``rnncomp inspect CELL --cost``: the steps the native executors run, SnAp-1's chain rule folded
per unit, with its backward step): the time ratio SnAp-1 would have at BPTT's FLOP rate.
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

CASES = {"elman": ("elman", 8, 32, 16), "lstm": ("lstm", 8, 32, 8), "elman64": ("elman", 16, 64, 8),
         "gru": ("gru", 8, 32, 16)}


def best(fn, repeat):
    fn()  # warm: compiles, caches, first-touch pages
    out = []
    for _ in range(repeat):
        c0 = time.process_time()
        fn()
        out.append(time.process_time() - c0)
    return min(out)


def case(kind, D, H, B, T=20, repeat=7):
    import numpy as np
    import rnncomp as rc
    from rnncomp.algorithms import SnAp, sequence_grad
    from rnncomp.algorithms.compiled import prepare

    cell = rc.cells.ZOO[kind](D, H, 4)
    params = cell.init_params(seed=0, dtype="float64")
    rng = np.random.default_rng(0)
    x, y = {"x": rng.normal(size=(T, B, D))}, {"target": rng.normal(size=(T, B, 4))}
    native = rc.compile(cell, backend="native", dtype="float64", threads=1)
    algo = SnAp(1, sparse=True)
    prep = prepare(algo, cell.step, "native", "float64", threads=1)
    g1 = sequence_grad(algo, cell, params, x, y)[1]
    g2 = sequence_grad(algo, cell, params, x, y, prepared=prep)[1]
    err = max(float(np.abs(g1[k] - g2[k]).max()) / max(float(np.abs(g1[k]).max()), 1e-300) for k in g1)
    if err > 1e-10:
        raise SystemExit(f"{kind}: native SnAp-1 differs from NumPy's by {err:.2g}")
    tb = best(lambda: native.loss_and_grad(params, x, y), repeat)
    ts = best(lambda: sequence_grad(algo, cell, params, x, y, prepared=prep), repeat)
    tb = min(tb, best(lambda: native.loss_and_grad(params, x, y), repeat))
    from rnncomp.algorithms.cost import algorithm_costs
    flops = {r["algorithm"]: r["flops"] for r in algorithm_costs(cell, T=T, B=B, dtype="float64").rows}
    by_flops = flops["SnAp-1"] / flops["BPTT"]
    print(f"{kind} {D}->{H} B={B}: BPTT {tb * 1e3 / T:.4f} ms/step, SnAp-1 sparse {ts * 1e3 / T:.4f} ms/step, "
          f"ratio {ts / tb:.1f}x; by the cost model's FLOPs per sample and step ({flops['SnAp-1']:,} against "
          f"{flops['BPTT']:,}) {by_flops:.1f}x, so SnAp-1 runs at {by_flops * tb / ts:.1f}x BPTT's FLOP rate "
          f"(a ratio of 1 needs {by_flops:.1f}x)", flush=True)


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="See the module docstring for what is timed and how.")
    ap.add_argument("cases", nargs="*", metavar="CASE", help=f"which cells ({', '.join(CASES)}; default: all)")
    names = ap.parse_args(argv).cases or list(CASES)
    for name in names:
        if name not in CASES:
            ap.error(f"unknown case {name!r} (choose from {', '.join(CASES)})")
    for name in names:
        case(*CASES[name], repeat=3 if name == "gru" else 7)


if __name__ == "__main__":
    main()
