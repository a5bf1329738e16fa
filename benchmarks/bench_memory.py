"""Memory and time of a training step under each memory schedule (LSTM H=256, B=32, float32).

    python benchmarks/bench_memory.py [--quick]    # table + benchmarks/results/memory.json

Each (schedule, T) runs in its own process so that its peak RSS is its own.  The
activation bytes are the executor's own per-step buffers (``activation_bytes``).
"""
import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import numpy as np
sys.path.insert(0, {root!r})
import rnncomp as rc
T, sched = {T}, {sched!r}
cell = rc.cells.lstm(64, 256, 10)
memory = "all" if sched == "all" else rc.Every(sched)
model = rc.compile(cell, backend="native", dtype="float32", threads=1, memory=memory)
rng = np.random.default_rng(0)
p = cell.init_params(0, "float32")
x = rng.normal(size=(T, 32, 64)).astype(np.float32)
y = rng.normal(size=(T, 32, 10)).astype(np.float32)
model.loss_and_grad(p, x, y)
times = []
for _ in range(3):
    t0 = time.perf_counter(); model.loss_and_grad(p, x, y); times.append(time.perf_counter() - t0)
print(json.dumps({{"T": T, "schedule": str(sched), "seconds": sorted(times)[1],
                  "activation_bytes": model.activation_bytes(T, 32),
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}}))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    Ts = (100, 1000) if args.quick else (100, 1000, 3000)
    rows = []
    for T in Ts:
        for sched in ("all", "sqrt"):
            out = subprocess.run([sys.executable, "-c", CHILD.format(root=root, T=T, sched=sched)],
                                 capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"{'T':>6} {'schedule':>9} {'ms/step':>9} {'activations':>12} {'vs all':>7} {'time vs all':>12} {'peak RSS':>10}")
    base = {r["T"]: r for r in rows if r["schedule"] == "all"}
    for r in rows:
        b = base[r["T"]]
        print(f"{r['T']:>6} {r['schedule']:>9} {1e3 * r['seconds'] / r['T']:>9.3f} "
              f"{r['activation_bytes'] / 2**20:>10.1f}MB {r['activation_bytes'] / b['activation_bytes']:>6.1%} "
              f"{r['seconds'] / b['seconds']:>11.2f}x {r['peak_rss_bytes'] / 2**20:>8.0f}MB")
    out = os.path.join(os.path.dirname(__file__), "results")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "memory.json"), "w") as fh:
        json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
