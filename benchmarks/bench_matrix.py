"""Matrix-valued states on the native backend (issue #19): vector code against plain loops and PyTorch.

    python benchmarks/bench_matrix.py              # ~2 min: a table + benchmarks/results/matrix.json
    python benchmarks/bench_matrix.py --quick
    python benchmarks/bench_matrix.py --baseline REF   # "before" = rnncomp at git revision REF

mLSTM and the delta rule with a 64 × 64 matrix state (n_in = n_hidden = dk = 64), B=16, T=64,
float32, one thread, the forward pass and a training call (loss and every gradient), in three
columns measured in one run, interleaved round by round (the median of each):

- **before**: the native backend at ``--baseline`` (default ``ed10097``, the last revision
  whose matrix ops -- outer products, C·v, Cᵀ·u, row gates, row/column sums -- and vector sums
  were plain scalar loops), exported with ``git archive`` and run in a child process;
- **after**: the native backend of this checkout (``backends/native_matrix.py``), also in a
  child process, so both pay the same process and call overheads;
- **torch**: PyTorch float32 with ``torch.set_num_threads(1)``: the tests' references
  (``tests/matrix_torch_refs.py``, plain loops over time with batched products), forward
  under ``no_grad`` and forward + ``backward()``.

Each child checks its loss against the torch loop's on the same data (float32, relative
difference printed) before anything is timed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
SIZES = dict(D=64, H=64, dk=64, B=16, T=64)
CELLS = ("mlstm", "delta_rule")
CALLS = ("forward", "training call")


def problem(name, D, H, dk, B, T):
    """The cell, float32 parameters, inputs and targets (seeded: the same in every process)."""
    import numpy as np
    import rnncomp as rc  # noqa: F401  (imported from the tree the process was given)
    from rnncomp.zoo_matrix import MATRIX_ZOO

    cell = MATRIX_ZOO[name](D, H, H, dk=dk)
    rng = np.random.default_rng(0)
    params = {k: v.astype(np.float32) for k, v in cell.init_params(seed=0).items()}
    x = {"x": rng.standard_normal((T, B, D)).astype(np.float32)}
    tg = {"target": rng.standard_normal((T, B, H)).astype(np.float32)}
    return cell, params, x, tg


def torch_calls(name):
    """{call: a function running it} for the PyTorch loop, and its loss on the data."""
    import torch
    from matrix_torch_refs import TORCH  # the tests' references: plain loops over time

    torch.set_num_threads(1)
    _, params, x, tg = problem(name, **SIZES)
    P = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    xs, ts = torch.tensor(x["x"]), torch.tensor(tg["target"])

    def train():
        for p in P.values():
            p.grad = None
        TORCH[name](P, xs, ts, torch)[0].backward()

    def forward():
        with torch.no_grad():
            TORCH[name](P, xs, ts, torch)
    with torch.no_grad():  # the oracle's loss is the mean of the per-step costs
        loss = float(TORCH[name](P, xs, ts, torch)[0]) / (xs.shape[0] * xs.shape[1])
    return {"forward": forward, "training call": train}, loss


# ----------------------------------------------------------------------------- child processes
def worker(src):
    """Serve timings of the native backend found at ``src``: one line in (cell, call), one out."""
    sys.path.insert(0, src)
    import rnncomp as rc

    calls = {}
    for name in CELLS:
        cell, params, x, tg = problem(name, **SIZES)
        model = rc.compile(cell, backend="native", dtype="float32", threads=1)
        calls[(name, "forward")] = lambda m=model, p=params, x=x: m.forward(p, x)
        calls[(name, "training call")] = lambda m=model, p=params, x=x, t=tg: m.loss_and_grad(p, x, t)
        loss = float(model.loss_and_grad(params, x, tg)[0])
        print(json.dumps({"loss": [name, loss]}), flush=True)
    for f in calls.values():  # warm the buffers
        f()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        name, call = json.loads(line)
        t0 = time.perf_counter()
        calls[(name, call)]()
        print(json.dumps({"s": time.perf_counter() - t0}), flush=True)


class Child:
    def __init__(self, src):
        self.p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", src],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.loss = {}
        while True:
            msg = self._read()
            if "ready" in msg:
                break
            self.loss[msg["loss"][0]] = msg["loss"][1]

    def _read(self):
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError("bench_matrix: a worker process ended early (see its error above)")
        return json.loads(line)

    def time(self, name, call):
        self.p.stdin.write(json.dumps([name, call]) + "\n")
        self.p.stdin.flush()
        return self._read()["s"]

    def close(self):
        self.p.stdin.close()
        self.p.wait()


def export(ref, dst):
    """The rnncomp package at git revision ``ref`` into ``dst``."""
    archive = subprocess.run(["git", "-C", ROOT, "archive", ref, "rnncomp"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", dst], input=archive, check=True)
    return dst


def run(baseline, rounds):
    with tempfile.TemporaryDirectory() as tmp:
        children = {"before": Child(export(baseline, tmp)), "after": Child(os.path.abspath(ROOT))}
        try:
            torch_fns, torch_loss = {}, {}
            for name in CELLS:
                fns, torch_loss[name] = torch_calls(name)
                torch_fns.update({(name, c): f for c, f in fns.items()})
            for f in torch_fns.values():
                f()
            times = {(n, c, col): [] for n in CELLS for c in CALLS for col in ("before", "after", "torch")}
            for _ in range(rounds):
                for n in CELLS:
                    for c in CALLS:
                        for col, ch in children.items():
                            times[(n, c, col)].append(ch.time(n, c))
                        t0 = time.perf_counter()
                        torch_fns[(n, c)]()
                        times[(n, c, "torch")].append(time.perf_counter() - t0)
            losses = {n: {col: ch.loss[n] for col, ch in children.items()} | {"torch": torch_loss[n]} for n in CELLS}
        finally:
            for ch in children.values():
                ch.close()
    ms = {f"{n} | {c} | {col}": 1e3 * statistics.median(v) for (n, c, col), v in times.items()}
    return {"sizes": SIZES, "baseline": baseline, "rounds": rounds, "ms": ms, "losses": losses}


def report(res) -> str:
    s = res["sizes"]
    lines = [f"\nMatrix states, n_in={s['D']} n_hidden={s['H']} dk={s['dk']} B={s['B']} T={s['T']} float32, "
             f"1 thread, median ms of {res['rounds']} interleaved rounds\n",
             f"| cell | call | before ({res['baseline']}) | after | torch | before/after | after/torch |",
             "|---|---|---|---|---|---|---|"]
    for n in CELLS:
        for c in CALLS:
            b, a, t = (res["ms"][f"{n} | {c} | {col}"] for col in ("before", "after", "torch"))
            lines.append(f"| {n} | {c} | {b:.2f} | {a:.2f} | {t:.2f} | {b / a:.2f}× | {a / t:.2f}× |")
    lines.append("\nlosses (the same data in every column): " + "; ".join(
        f"{n}: " + ", ".join(f"{col} {v:.6g}" for col, v in res["losses"][n].items()) for n in CELLS))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description="matrix states: native before/after against PyTorch (float32)")
    ap.add_argument("--quick", action="store_true", help="5 rounds instead of 15")
    ap.add_argument("--baseline", default="ed10097", help="git revision of the 'before' column")
    ap.add_argument("--json", default=os.path.join(HERE, "results", "matrix.json"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.worker)
    sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
    load = os.getloadavg()
    res = run(args.baseline, rounds=5 if args.quick else 15)
    res["load_start"], res["load_end"] = load, os.getloadavg()
    res["loss_gap"] = {n: max(abs(v - ls["torch"]) / abs(ls["torch"]) for v in ls.values())
                       for n, ls in res["losses"].items()}
    print(report(res) + f"\nload average {load[0]:.2f} at the start, {res['load_end'][0]:.2f} at the end")
    print("".join(f"WARNING: {n}: the columns' losses differ by {g:.1e} (relative)\n"
                  for n, g in res["loss_gap"].items() if g > 1e-4), end="")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump(res, fh, indent=1)
    return print(f"wrote {os.path.relpath(args.json)}") or 0


if __name__ == "__main__":
    sys.exit(main())
