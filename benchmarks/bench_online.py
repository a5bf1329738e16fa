"""Online gradients per step, native against NumPy, and against one BPTT step (issue #20).

    python benchmarks/bench_online.py            # a table + benchmarks/results/online.json
    python benchmarks/bench_online.py --quick    # one small cell (a smoke test)

For each cell, on one sequence (T steps, batch B, float64, one thread everywhere), the time
per step of:

* BPTT: ``loss_and_grad`` over the T steps divided by T, native (``threads=1``) and NumPy;
* RTRL and dense SnAp-1 (``rc.SnAp(1, sparse=False)``): ``sequence_grad`` on the NumPy
  executor and on the native one (:mod:`rnncomp.backends.native_tangent`);
* SnAp-1 sparse (only the kept entries; :mod:`rnncomp.backends.native_snap`) and UORO
  (:mod:`rnncomp.backends.native_uoro`, the same random draws as NumPy's): both executors.

Next to each: FLOPs per sample per step from the cost model (``rnncomp inspect --cost``),
the GFLOP/s that makes, and the time over one native BPTT step (CPU time: see ``best``).  Every native result is first
checked against the NumPy executor's gradient (1e-10 relative).  Times are the best of
``--repeat`` runs, all columns from the same run.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = [("elman", 8, 32, 4, 16), ("gru", 8, 32, 4, 16), ("lstm", 8, 32, 4, 8), ("elman", 16, 64, 4, 8)]
QUICK = [("elman", 4, 16, 2, 4)]


def best(fn, repeat):
    """(wall, CPU) seconds, each the least of ``repeat`` runs.  Everything here runs on one
    thread, so the CPU time is the work done; on a loaded machine the wall time is mostly
    waiting for a core, and the ratios below use the CPU time."""
    fn()  # warm: compiles, caches, first-touch pages
    walls, cpus = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus)


def run_case(kind, D, H, O, B, T, repeat):
    import numpy as np
    import rnncomp as rc
    from rnncomp.algorithms import sequence_grad
    from rnncomp.algorithms.compiled import prepare
    from rnncomp.algorithms.cost import algorithm_costs

    cell = rc.cells.ZOO[kind](D, H, O)
    params = cell.init_params(seed=0, dtype="float64")
    rng = np.random.default_rng(0)
    x, y = {"x": rng.normal(size=(T, B, D))}, {"target": rng.normal(size=(T, B, O))}
    flops = {r["algorithm"]: r["flops"] for r in algorithm_costs(cell, T=T, B=B, dtype="float64").rows}
    rows = {}
    native = rc.compile(cell, backend="native", dtype="float64", threads=1)
    oracle = rc.compile(cell, backend="numpy", dtype="float64")
    rows["BPTT native"] = best(lambda: native.loss_and_grad(params, x, y), repeat), flops["BPTT"]
    rows["BPTT numpy"] = best(lambda: oracle.loss_and_grad(params, x, y), repeat), flops["BPTT"]
    algos = [("RTRL", rc.RTRL(), "RTRL", True), ("SnAp-1 dense", rc.SnAp(1, sparse=False), "SnAp-1", True),
             ("SnAp-1 sparse", rc.SnAp(1, sparse=True), "SnAp-1", True), ("UORO", rc.UORO(), "UORO", True)]
    for label, algo, cost_row, has_native in algos:
        backends = ("numpy", "native") if has_native else ("numpy",)
        grads = {}
        for backend in backends:
            prep = prepare(algo, cell.step, backend, "float64", threads=1)

            def one():
                grads[backend] = sequence_grad(algo, cell, params, x, y, prepared=prep)[1]
            # a sparse SnAp-1 is cheaper than the dense one by the pattern: its own FLOPs row
            f = flops[cost_row] if label != "SnAp-1 dense" else flops["RTRL"]
            rows[f"{label} {backend}"] = best(one, repeat), f
        if has_native:
            g1, g2 = grads["numpy"], grads["native"]
            err = max(float(np.abs(g1[k] - g2[k]).max()) / max(float(np.abs(g1[k]).max()), 1e-300) for k in g1)
            if err > 1e-10:
                raise SystemExit(f"{kind}: native {label} differs from NumPy's by {err:.2g}")
    base = rows["BPTT native"][0][1]
    return {"cell": f"{kind}({D}, {H}, {O})", "B": B, "T": T,
            "P": sum(int(np.prod(s)) for s in cell.step.params.values()),
            "rows": {k: {"wall_ms_per_step": w * 1e3 / T, "cpu_ms_per_step": c * 1e3 / T,
                         "flops_per_sample_step": f, "gflops_cpu": f * B * T / c / 1e9 if f and c else None,
                         "x_bptt_native_step_cpu": c / base}
                     for k, ((w, c), f) in rows.items()}}


def machine() -> dict:
    cpu = platform.processor()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        cpu = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), cpu)
    except (OSError, subprocess.SubprocessError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "load_1_5_15": list(os.getloadavg())}


def table(res) -> str:
    out = []
    for case in res["cases"]:
        out.append(f"{case['cell']}, B = {case['B']}, T = {case['T']}, P = {case['P']:,} (float64, one thread)")
        out.append(f"  {'':<22}{'CPU ms/step':>12}{'wall ms':>9}{'FLOPs/sample/step':>19}{'GFLOP/s':>9}"
                   f"{'× BPTT step':>13}")
        for name, r in case["rows"].items():
            gf = f"{r['gflops_cpu']:.2f}" if r["gflops_cpu"] is not None else "-"
            out.append(f"  {name:<22}{r['cpu_ms_per_step']:>12.3f}{r['wall_ms_per_step']:>9.2f}"
                       f"{r['flops_per_sample_step']:>19,}{gf:>9}{r['x_bptt_native_step_cpu']:>13.0f}")
        rt = {k: v["cpu_ms_per_step"] for k, v in case["rows"].items()}
        out.append(f"  native / NumPy (CPU time): RTRL {rt['RTRL numpy'] / rt['RTRL native']:.1f}x, "
                   f"SnAp-1 dense {rt['SnAp-1 dense numpy'] / rt['SnAp-1 dense native']:.1f}x, "
                   f"SnAp-1 sparse {rt['SnAp-1 sparse numpy'] / rt['SnAp-1 sparse native']:.1f}x, "
                   f"UORO {rt['UORO numpy'] / rt['UORO native']:.1f}x")
        out.append(f"  SnAp-1 sparse native per step = {rt['SnAp-1 sparse native'] / rt['BPTT native']:.1f} native "
                   f"BPTT steps (forward + backward), UORO native {rt['UORO native'] / rt['BPTT native']:.1f}")
    m = res["machine"]
    out.append(f"{m['cpu']}, {m['cores']} cores, load {m['load_1_5_15'][0]:.1f} before / "
               f"{res['load_after'][0]:.1f} after (loaded: shared machine)")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description="native vs NumPy RTRL / SnAp-1 per step, and one BPTT step")
    ap.add_argument("--T", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=os.path.join(HERE, "results", "online.json"))
    args = ap.parse_args(argv)
    sys.path.insert(0, os.path.join(HERE, ".."))
    sys.path.insert(0, HERE)
    from bench_algorithms import one_blas_thread, write_json

    blas = one_blas_thread()
    res = {"machine": machine(), "blas": blas, "cases": []}
    for case in (QUICK if args.quick else CASES):
        res["cases"].append(run_case(*case, T=5 if args.quick else args.T, repeat=1 if args.quick else args.repeat))
    res["load_after"] = list(os.getloadavg())
    print(table(res) + f"\n  ({blas})")
    write_json(res, args.json)


if __name__ == "__main__":
    main()
