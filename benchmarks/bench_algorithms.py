"""Gradient algorithms side by side on one task (issue #20): cost, memory, bias, learning.

    python benchmarks/bench_algorithms.py            # ~1 min: a table + benchmarks/results/algorithms.json
    python benchmarks/bench_algorithms.py --quick

The task: a delayed echo, y[t] = x[t - delay] for a stream of random ±1 inputs (a dependency
``delay`` steps long), Elman H hidden units, NumPy float64 on one core.  For each algorithm:

* bias: its gradient on one sequence (T = 50, B = 8, random parameters) against BPTT's,
  relative error ‖g − g_BPTT‖/‖g_BPTT‖ and cosine (UORO: one run, and the mean of 64 seeds);
* cost: milliseconds per step of that gradient, and memory from the cost model
  (``rnncomp inspect --cost``'s numbers at T = 1000);
* learning: ``Trainer.fit_online`` on a stream, an Adam update every ``every`` steps; the
  mean loss of the last 20% of updates (predicting 0 scores 0.5; BPTT runs truncated over
  each window of ``every`` steps, so it cannot see a dependency longer than the window; DNI
  is the same windows with a synthetic gradient at their ends: no one-sequence gradient or
  cost-model row of its own).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _echo(T, B, delay, seed):
    import numpy as np
    rng = np.random.default_rng(seed)
    x = rng.choice([-1.0, 1.0], size=(T, B, 1))
    y = np.zeros_like(x)
    y[delay:] = x[:-delay]
    return x, y


def run(H=16, delay=4, stream=3000, every=3, quick=False):
    import numpy as np

    sys.path.insert(0, os.path.join(HERE, ".."))
    import rnncomp as rc
    from rnncomp.algorithms import sequence_grad
    from rnncomp.algorithms.cost import algorithm_costs

    if quick:
        stream = 600
    cell = rc.cells.elman(1, H, 1)
    costs = {r["algorithm"]: r for r in algorithm_costs(cell, T=1000, B=8, dtype="float64").rows}
    params = cell.init_params(0)
    x, y = _echo(50, 8, delay, 1)
    flat = lambda g: np.concatenate([g[k].ravel() for k in sorted(g)])  # noqa: E731
    model = rc.compile(cell, backend="numpy")
    model.loss_and_grad(params, {"x": x}, {"target": y})  # derive and print once, then time
    t0 = time.perf_counter()
    ref = flat(model.loss_and_grad(params, {"x": x}, {"target": y})[1])
    rows = {"BPTT": {"ms_per_step": (time.perf_counter() - t0) * 1e3 / 50, "rel_error": 0.0, "cosine": 1.0}}
    algos = {"RTRL": rc.RTRL(), "SnAp-1": rc.SnAp(1), "SnAp-2": rc.SnAp(2), "UORO": rc.UORO()}
    for name, algo in algos.items():
        prep = algo.prepare(cell.step)
        sequence_grad(algo, cell, params, {"x": x}, {"target": y}, prepared=prep)
        t0 = time.perf_counter()
        g = flat(sequence_grad(algo, cell, params, {"x": x}, {"target": y}, prepared=prep)[1])
        ms = (time.perf_counter() - t0) * 1e3 / 50
        rows[name] = {"ms_per_step": ms, "rel_error": float(np.linalg.norm(g - ref) / np.linalg.norm(ref)),
                      "cosine": float(g @ ref / (np.linalg.norm(g) * np.linalg.norm(ref)))}
    xs, ys = (np.repeat(a, 64, axis=1) for a in (x, y))  # 64 copies per sample: 64 seeds' mean
    g = flat(sequence_grad(rc.UORO(seed=7), cell, params, {"x": xs}, {"target": ys})[1])
    rows["UORO"]["rel_error_mean_of_64"] = float(np.linalg.norm(g - ref) / np.linalg.norm(ref))
    sx, sy = _echo(stream, 8, delay, 2)
    rows["DNI"] = {}
    for name, algo in [("BPTT", rc.BPTT()), ("DNI", rc.DNI(lr=1e-3))] + list(algos.items()):
        tr = rc.Trainer(cell, optimizer=rc.Adam(0.01), gradient=algo, backend="numpy", dtype="float64",
                        clip_norm=1.0, seed=0)
        t0 = time.perf_counter()
        losses = tr.fit_online(sx, sy, every=every)
        rows[name]["train_s"] = time.perf_counter() - t0
        k = max(1, len(losses) // 5)
        rows[name]["final_loss"] = float(np.mean(losses[-k:]))
        if name in costs:
            rows[name]["memory_bytes_T1000_B8"] = costs[name]["memory"]
            rows[name]["flops_per_sample_step"] = costs[name]["flops"]
    return {"task": f"delayed echo, delay {delay}", "cell": f"elman(1, {H}, 1)", "stream": stream,
            "every": every, "rows": rows}


def table(res) -> str:
    out = [f"{res['task']}, {res['cell']}, stream {res['stream']} × 8, update every {res['every']} steps (NumPy float64)",
           f"  {'algorithm':<9}{'grad rel.err':>13}{'cosine':>8}{'ms/step':>9}{'FLOPs/step':>12}{'memory@T=1000':>15}"
           f"{'final loss':>12}{'train s':>9}"]
    for name, r in res["rows"].items():
        cell = lambda key, fmt, w: format(r[key], fmt).rjust(w) if key in r else "-".rjust(w)  # noqa: E731
        mem = f"{r['memory_bytes_T1000_B8'] / 1024:>13.1f} K" if "memory_bytes_T1000_B8" in r else "-".rjust(15)
        out.append(f"  {name:<9}{cell('rel_error', '.3g', 13)}{cell('cosine', '.3f', 8)}{cell('ms_per_step', '.3f', 9)}"
                   f"{cell('flops_per_sample_step', ',', 12)}{mem}{cell('final_loss', '.4f', 12)}{cell('train_s', '.1f', 9)}")
    if "rel_error_mean_of_64" in res["rows"]["UORO"]:
        out.append(f"  UORO, mean of 64 seeds: rel. error {res['rows']['UORO']['rel_error_mean_of_64']:.3g}")
    return "\n".join(out)


def one_blas_thread() -> str:
    """NumPy's BLAS on one thread (threadpoolctl): the tangent products are skinny (B·P rows of
    n_s), and OpenBLAS's threads on a shared machine made them 20-40x slower, not faster."""
    import numpy  # noqa: F401 - threadpoolctl limits only the libraries already loaded
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return "BLAS threads as NumPy chose (threadpoolctl not installed)"
    threadpool_limits(1)
    return "one BLAS thread"


def main(argv=None):
    ap = argparse.ArgumentParser(description="BPTT, RTRL, SnAp-1/2, UORO on one task")
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--delay", type=int, default=4)
    ap.add_argument("--every", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="a short stream (a smoke test)")
    ap.add_argument("--json", default=os.path.join(HERE, "results", "algorithms.json"))
    args = ap.parse_args(argv)
    blas = one_blas_thread()
    res = run(args.hidden, args.delay, every=args.every, quick=args.quick)
    res["blas"] = blas
    print(table(res))
    print(f"  ({blas})")
    write_json(res, args.json)


def write_json(res, path) -> None:
    """The results as JSON at ``path`` (its folder made if needed); says where."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(res, fh, indent=1)
    print(f"wrote {os.path.relpath(path)}")


if __name__ == "__main__":
    main()
