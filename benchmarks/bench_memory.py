"""Memory and time of a training step under each memory schedule (LSTM H=256, D=64, B=32, float32, 1 thread).

    python benchmarks/bench_memory.py [--quick | --full] [--reps 3]
        table + benchmarks/results/memory.json (+ memory.png when matplotlib is importable)

T = 100, 300, 1000, 3000 (--quick: 100, 1000; --full adds 10,000).  Schedules: store all,
Every(√T), Budget(5% of store-all), Budget(the memory of Every(√T)), Binomial(⌈√T⌉ slots).

Each (T, schedule) runs in its own process, so that its peak RSS is its own: the schedule
is timed first (peak RSS read after it), then, in the same process, the store-all model
is timed interleaved with it (schedule, all, schedule, all, …): the time ratio is from
the same process and the same minutes, which matters on a shared machine.  Times are the
minimum over the repetitions, of the wall clock and of the process's CPU time (on a
machine shared with other work, CPU time leaves out the waits for a core).
"""
import argparse
import json
import math
import os
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import numpy as np
sys.path.insert(0, {root!r})
import rnncomp as rc
from rnncomp.backends.checkpoint import footprint
from rnncomp.schedules import make_plan
T, sched, reps, B = {T}, {sched!r}, {reps}, 32
cell = rc.cells.lstm(64, 256, 10)
opts = dict(backend="native", dtype="float32", threads=1)
probe = rc.compile(cell, **opts)
fp = footprint(probe, B)
full = make_plan("all", T, fp).memory(fp)
sqrt = make_plan(rc.Every("sqrt"), T, fp).memory(fp)
memory = {{"all": "all", "sqrt": rc.Every("sqrt"), "budget5": rc.Budget(full // 20), "budget_sqrt": rc.Budget(sqrt),
          "binomial": rc.Binomial(max(1, int(np.ceil(np.sqrt(T)))))}}[sched]
model = rc.compile(cell, memory=memory, **opts)
rng = np.random.default_rng(0)
p = cell.init_params(0, "float32")
x = rng.normal(size=(T, B, 64)).astype(np.float32)
y = rng.normal(size=(T, B, 10)).astype(np.float32)
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t0 = time.perf_counter(); model.loss_and_grad(p, x, y); first = time.perf_counter() - t0
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
plan = model.memory_plan(T, B)
t0 = time.perf_counter(); make_plan(memory, T, fp); plan_s = time.perf_counter() - t0
def timed(m):
    t0, c0 = time.perf_counter(), time.process_time()
    m.loss_and_grad(p, x, y)
    return time.perf_counter() - t0, time.process_time() - c0
mine, base = [], []
others = [] if sched == "all" else [probe]
if others:
    probe.loss_and_grad(p, x, y)  # warm
for _ in range(reps):
    mine.append(timed(model))
    for m in others:
        base.append(timed(m))
base = base or mine
out = {{"T": T, "schedule": sched, "plan": plan.name, "seconds": min(w for w, _ in mine),
       "all_seconds": min(w for w, _ in base), "cpu_seconds": min(c for _, c in mine),
       "all_cpu_seconds": min(c for _, c in base), "activation_bytes": model.activation_bytes(T, B),
       "all_activation_bytes": full, "advanced": plan.advanced, "leaves": plan.leaves,
       "checkpoints": plan.max_held, "plan_seconds": plan_s, "peak_rss_bytes": rss,
       "rss_before_bytes": rss0, "first_call_seconds": first}}
print(json.dumps(out))
"""

NAMES = {"all": "store all", "sqrt": "Every(√T)", "budget5": "Budget(5%)", "budget_sqrt": "Budget(=√T mem)",
         "binomial": "Binomial(√T)"}


def run(T, sched, reps, root):
    env = dict(os.environ, PYTHONPATH=root)
    out = subprocess.run([sys.executable, "-c", CHILD.format(root=root, T=T, sched=sched, reps=reps)],
                         capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"T={T} {sched}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows) -> str:
    w = max([38] + [len(r["plan"]) for r in rows])   # a Budget plan's name is longer than most
    lines = [f"{'T':>6} {'schedule':<16} {'plan':<{w}} {'ms/step':>8} {'activations':>12} {'vs all':>7} "
             f"{'time vs all':>11} {'(CPU)':>6} {'recomputed':>10} {'peak RSS':>9} {'Δ RSS':>8}"]
    for r in rows:
        lines.append(f"{r['T']:>6} {NAMES[r['schedule']]:<16} {r['plan']:<{w}} {1e3 * r['seconds'] / r['T']:>8.3f} "
                     f"{r['activation_bytes'] / 2**20:>10.1f}MB {r['activation_bytes'] / r['all_activation_bytes']:>7.1%} "
                     f"{r['seconds'] / r['all_seconds']:>10.2f}x {r['cpu_seconds'] / r['all_cpu_seconds']:>5.2f}x "
                     f"{r['advanced']:>10} "
                     f"{r['peak_rss_bytes'] / 2**20:>7.0f}MB {(r['peak_rss_bytes'] - r['rss_before_bytes']) / 2**20:>6.0f}MB")
    return "\n".join(lines)


def verdict(rows) -> str:
    """The issue's goals: at T=1000, ≤ 5% of the activation memory at ≤ 1.3× the time; the
    DP never slower than Every(√T) at the same memory (5% slack for timing noise)."""
    out = []
    at = {(r["T"], r["schedule"]): r for r in rows}
    b = at.get((1000, "budget5"))
    if b:
        mem, tim = b["activation_bytes"] / b["all_activation_bytes"], b["seconds"] / b["all_seconds"]
        cpu = b["cpu_seconds"] / b["all_cpu_seconds"]
        ok = mem <= 0.05 and tim <= 1.3
        out.append(f"T=1000, Budget(5%): {mem:.1%} of the memory at {tim:.2f}x the time ({cpu:.2f}x in CPU "
                   f"time): goal (≤5%, ≤1.3x) {'met' if ok else 'NOT met'}")
    for T in sorted({r["T"] for r in rows}):
        s, d = at.get((T, "sqrt")), at.get((T, "budget_sqrt"))
        if s and d:
            rs, rd = s["cpu_seconds"] / s["all_cpu_seconds"], d["cpu_seconds"] / d["all_cpu_seconds"]
            out.append(f"T={T}: Budget at Every(√T)'s memory {rd:.2f}x vs Every(√T) {rs:.2f}x (CPU time), "
                       f"{d['advanced']} vs {s['advanced']} recomputed steps: "
                       f"{'not slower' if rd <= rs * 1.05 else 'SLOWER'}")
    return "\n".join(out)


def plot(rows, path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for sched in NAMES:
        rs = sorted((r for r in rows if r["schedule"] == sched), key=lambda r: r["T"])
        if not rs:
            continue
        Ts = [r["T"] for r in rs]
        a1.loglog(Ts, [r["activation_bytes"] / 2**20 for r in rs], "o-", label=NAMES[sched])
        a2.semilogx(Ts, [r["seconds"] / r["all_seconds"] for r in rs], "o-", label=NAMES[sched])
    a1.set(xlabel="T", ylabel="activation buffers (MiB)", title="memory (LSTM H=256, B=32)")
    a2.set(xlabel="T", ylabel="time / store-all time", title="time per training step")
    a2.axhline(1.3, color="grey", ls=":")
    a1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next(ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="T = 100, 1000")
    ap.add_argument("--full", action="store_true", help="add T = 10,000 (store-all: 6 GB, minutes)")
    ap.add_argument("--reps", type=int, default=3, help="timed rounds per (T, schedule); the least is kept (default 3)")
    ap.add_argument("--T", type=int, nargs="+", help="these sequence lengths instead")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"),
                    help="a directory for memory.json and memory.png (default benchmarks/results)")
    args = ap.parse_args()
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    Ts = (100, 1000) if args.quick else (100, 300, 1000, 3000) + ((10_000,) if args.full else ())
    Ts = args.T or Ts
    rows = []
    os.makedirs(args.out, exist_ok=True)
    print(table([]), flush=True)
    for T in Ts:
        for sched in NAMES:
            if sched == "binomial" and T > 1000:
                continue  # leaves of one step: T calls of each entry point, minutes at T = 3000
            rows.append(run(T, sched, args.reps if T < 10_000 else 1, root))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
            with open(os.path.join(args.out, "memory.json"), "w") as fh:  # after every row
                json.dump({"case": "LSTM D=64 H=256 out=10, B=32, float32, 1 thread",
                           "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "rows": rows}, fh, indent=1)
    print()
    print(table(rows))
    print()
    print(verdict(rows))
    if plot(rows, os.path.join(args.out, "memory.png")):
        print(f"wrote {os.path.join(args.out, 'memory.png')}")
    assert all(math.isfinite(r["seconds"]) for r in rows)


if __name__ == "__main__":
    main()
