"""Data-parallel training over MPI: time per step on 1 and 2 ranks, the Allreduce's cost,
and the model of docs/distributed.md that extrapolates them to more ranks.

    python benchmarks/bench_mpi.py [--rounds 3]   # table + benchmarks/results/mpi.json

The case: LSTM H=256 (inputs 64, outputs 64), global batch 64, T=100, float32, native
backend, Adam + clipping by norm; one step = forward + full BPTT of this rank's shard,
the Allreduce of the gradient arena, the update.  Each rank runs 1 thread, so 2 ranks
use both cores of the 2-core machine.  The launches alternate (1, 2, 1, 2, ...) and the
table keeps each configuration's best median: on a machine shared with other work a
launch is slowed by whatever else holds a core.  The CPU time of a step (the busier
rank's) is also recorded: it leaves out the time another process held the core, so its
1 -> 2 ratio shows the work distribution adds, whatever the load.

Also measured, on 1 thread: the CPU time of one step for per-rank batches 64 … 1,
H=256 and H=1024, and the Allreduce of an arena the size of H=256's and H=1024's
gradients between 2 ranks.  Workers: ``mpiexec -n R python bench_mpi.py --worker KIND``.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import rnncomp as rc  # noqa: E402

T, B, D, OUT = 100, 64, 64, 64
HERE = os.path.dirname(os.path.abspath(__file__))


def timings(fn, repeats):
    """Seconds per call: median and best wall-clock time, median CPU time of this process
    (the CPU time does not count the time another process held the core)."""
    fn()  # warm-up: compilation, first-touch allocations
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"wall": statistics.median(wall), "best": min(wall), "cpu": statistics.median(cpu)}


def data(H, batch, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 1, (T, batch, D)).astype(np.float32),
            rng.normal(0, 1, (T, batch, OUT)).astype(np.float32))


def worker_step(repeats):
    """Per-step time of distributed training on this launch's ranks (global batch B)."""
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    cell = rc.cells.lstm(D, 256, OUT)
    tr = rc.Trainer(cell, rc.Adam(1e-3), clip_norm=1.0, backend="native", dtype="float32",
                    distributed="mpi", threads=1)
    x, y = data(256, B)

    comm.Barrier()
    t = timings(lambda: tr.train_step({"x": x}, {"target": y}), repeats)
    arena, t_ar = np.zeros(tr.flat.size + 2, np.float32), []
    for _ in range(5 * repeats):
        comm.Barrier()
        t0 = time.perf_counter()
        tr.dist.allreduce(arena)
        t_ar.append(time.perf_counter() - t0)
    worst_cpu = comm.allreduce(t["cpu"], op=MPI.MAX)
    return {"ranks": comm.Get_size(), "step_s": t["wall"], "step_best_s": t["best"], "step_cpu_s": worst_cpu,
            "allreduce_s": statistics.median(t_ar), "params": int(tr.flat.size)}


def worker_allreduce(repeats):
    """The Allreduce of float32 arenas of the H=256 and H=1024 gradients' sizes (barrier excluded)."""
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    out = {}
    for H in (256, 1024):
        n = 4 * H * (D + H + 1) + OUT * (H + 1) + 2
        buf = np.zeros(n, np.float32)
        times = []
        for _ in range(repeats):
            comm.Barrier()
            t0 = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            times.append(time.perf_counter() - t0)
        out[str(H)] = {"params": n - 2, "bytes": 4 * n, "allreduce_s": statistics.median(times),
                       "allreduce_best_s": min(times)}
    return out


def compute_curve(H, batches, repeats):
    """One-thread compute of one training step (forward + BPTT + update) for each per-rank batch:
    its CPU time (median), which another process holding the core does not inflate."""
    tr = rc.Trainer(rc.cells.lstm(D, H, OUT), rc.Adam(1e-3), clip_norm=1.0, backend="native",
                    dtype="float32", threads=1)
    out = {}
    for b in batches:
        x, y = data(H, b)
        out[str(b)] = timings(lambda: tr.train_step({"x": x}, {"target": y}), repeats)["cpu"]
    return out


def launch(n, kind, repeats):
    exe = shutil.which("mpiexec", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]]))
    if exe is None:
        raise SystemExit("bench_mpi: mpiexec not found (pip install 'rnncomp[mpi]')")
    p = subprocess.run([exe, "-n", str(n), sys.executable, __file__, "--worker", kind, "--repeats", str(repeats)],
                       capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def ring_allreduce_s(nbytes, R, bw, latency):
    """A ring Allreduce (reduce-scatter + all-gather) of nbytes on R ranks."""
    return 2 * (R - 1) / R * nbytes / bw + 2 * (R - 1) * latency


def model(res, net_bw=None, latency=0.0):
    """Predicted efficiency on R ranks (docs/distributed.md), from the one-thread compute
    curve t_c(b) and the Allreduce t_ar(R) of the gradient's bytes:

        fixed global batch B (strong):   E(R) = t_c(B) / (R (t_c(B/R) + t_ar(R)))
        B rows per rank (weak):          E(R) = t_c(B) / (t_c(B) + t_ar(R))

    ``net_bw`` None: the bandwidth the 2-rank shared-memory Allreduce reached (its best run)."""
    rows = {}
    for H, curve in res["compute"].items():
        curve = {int(b): t for b, t in curve.items()}
        nbytes = res["allreduce"][H]["bytes"]
        bw = net_bw or nbytes / res["allreduce"][H]["allreduce_best_s"]  # 2 ranks: 2 (R-1)/R = 1
        strong = {R: curve[B] / (R * (curve[B // R] + ring_allreduce_s(nbytes, R, bw, latency)))
                  for R in (2, 4, 8, 16, 32, 64) if B // R in curve}
        weak = {R: curve[B] / (curve[B] + ring_allreduce_s(nbytes, R, bw, latency))
                for R in (2, 16, 128, 1024, 8192)}
        rows[H] = {"strong": strong, "weak": weak, "bandwidth_Bps": bw, "latency_s": latency}
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", choices=["step", "allreduce"])
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3, help="alternating launches of 1 and 2 ranks")
    args = ap.parse_args()
    if args.worker:
        from mpi4py import MPI
        res = worker_step(args.repeats) if args.worker == "step" else worker_allreduce(10 * args.repeats)
        if MPI.COMM_WORLD.Get_rank() == 0:
            print(json.dumps(res))
        return

    runs = {1: [], 2: []}
    for _ in range(args.rounds):
        for n in (1, 2):
            runs[n].append(launch(n, "step", args.repeats))
    best = {n: min(r["step_s"] for r in rs) for n, rs in runs.items()}
    allreduce = launch(2, "allreduce", args.repeats)
    compute = {"256": compute_curve(256, [64, 32, 16, 8, 4, 2, 1], args.repeats),
               "1024": compute_curve(1024, [64, 32, 16, 8, 4, 2, 1], 2)}
    one = best[1]
    cpu = {n: min(r["step_cpu_s"] for r in rs) for n, rs in runs.items()}
    res = {"case": f"LSTM H=256 D={D} out={OUT}, global batch {B}, T={T}, float32, native, 1 thread per rank",
           "cpu": _cpu(), "load": os.getloadavg(), "runs": runs, "best_step_s": best,
           "plain_trainer_step_cpu_s": compute["256"]["64"],
           "efficiency_1_to_2": one / (2 * best[2]), "best_step_cpu_s": cpu,
           "cpu_efficiency_1_to_2": cpu[1] / (2 * cpu[2]), "allreduce": allreduce, "compute": compute}
    res["model_shared_memory"] = model(res)
    res["model_ib_100g"] = model(res, net_bw=12.5e9, latency=2e-6)
    res["model_10gbe"] = model(res, net_bw=1.25e9, latency=20e-6)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "mpi.json"), "w") as fh:
        json.dump(res, fh, indent=1)
    print(f"{res['case']}; {res['cpu']}; load {res['load'][0]:.2f}")
    for n in (1, 2):
        per_launch = ", ".join(f"{r['step_s'] * 1e3:.1f}" for r in runs[n])
        ar = statistics.median(r["allreduce_s"] for r in runs[n])
        print(f"  {n} rank(s): step {best[n] * 1e3:.1f} ms (medians per launch: {per_launch}); "
              f"Allreduce of the arena in that launch {ar * 1e3:.3f} ms")
    print(f"  the plain Trainer (no MPI), 1 thread: {res['plain_trainer_step_cpu_s'] * 1e3:.1f} ms of CPU time")
    print(f"  scaling efficiency 1 -> 2 ranks: {res['efficiency_1_to_2'] * 100:.1f} % (wall clock); "
          f"{res['cpu_efficiency_1_to_2'] * 100:.1f} % in CPU time per step "
          f"({cpu[1] * 1e3:.1f} ms on 1 rank, {cpu[2] * 1e3:.1f} ms on the busier of 2)")
    for H, a in allreduce.items():
        print(f"  Allreduce of H={H}'s gradient ({a['bytes'] / 1e6:.2f} MB, 2 ranks): median "
              f"{a['allreduce_s'] * 1e3:.3f} ms, best {a['allreduce_best_s'] * 1e3:.3f} ms")
    for H, curve in compute.items():
        points = ", ".join(f"B={b} {t * 1e3:.1f} ms" for b, t in curve.items())
        print(f"  CPU time per step, 1 thread, H={H}: {points}")
    for name in ("model_shared_memory", "model_ib_100g", "model_10gbe"):
        for H, m in res[name].items():
            for kind in ("strong", "weak"):
                print(f"  {name} H={H} {kind}: " + ", ".join(f"R={R} {e * 100:.0f}%" for R, e in m[kind].items()))


def _cpu():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        name = "unknown CPU"
    return f"{name}, {os.cpu_count()} cores"


if __name__ == "__main__":
    main()
