"""Peak memory of native sparse SnAp-1: planning, then one step (issue #20's plan tables).

    python benchmarks/bench_snap_memory.py lstm 16 128 [B]          # one line, one fresh process
    python benchmarks/bench_snap_memory.py --trace lstm 16 128      # + tracemalloc's peaks (slower)

Phases, each measured as the growth of the process's peak resident set (VmHWM, reset between
phases through /proc/self/clear_refs) over the resident set before it: ``pattern`` (the
algorithm's prepare: SnAp's pattern), ``plan`` (:class:`.SparsePlan`), ``kernel`` (the fused
plan, the index tables and the compiled code; ``cache=None``: compiled afresh), ``step`` (one
window of T = 1 at batch B, default 8).  Also the kernel's index tables (bytes, and how many
entries), the stored entries nnz, the carry of one sample (nnz · 8 bytes), and the resident set
held once the plan is dropped (as the native executor does), over the RSS after import.  The
process's peak is the largest phase's peak plus what was held before it.
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Phase:
    def __init__(self, name, out, trace):
        self.name, self.out, self.trace = name, out, trace

    def __enter__(self):
        import gc
        gc.collect()
        self.ok = _reset_peak()
        self.rss0, self.t0 = _status("VmRSS"), time.perf_counter()
        if self.trace:
            import tracemalloc
            tracemalloc.reset_peak()
            self.tm0 = tracemalloc.get_traced_memory()[0]

    def __exit__(self, *exc):
        row = {"s": time.perf_counter() - self.t0, "peak_rss": _status("VmHWM") - self.rss0,
               "held_rss": _status("VmRSS") - self.rss0}
        if self.trace:
            import tracemalloc
            cur, peak = tracemalloc.get_traced_memory()
            row["py_peak"], row["py_held"] = peak - self.tm0, cur - self.tm0
        self.out[self.name] = row


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cell"), ap.add_argument("D", type=int), ap.add_argument("H", type=int)
    ap.add_argument("B", type=int, nargs="?", default=8)
    ap.add_argument("--trace", action="store_true", help="also tracemalloc's peaks (Python and NumPy)")
    a = ap.parse_args(argv)
    import numpy as np
    import rnncomp as rc
    from rnncomp.algorithms import SnAp
    from rnncomp.backends.native_snap import SparseKernel
    from rnncomp.algorithms.sparse_plan import SparsePlan

    if a.trace:
        import tracemalloc
        tracemalloc.start()
    cell = rc.cells.ZOO[a.cell](a.D, a.H, 4)
    params = cell.init_params(seed=0, dtype="float64")
    out, base = {}, _status("VmRSS")
    algo = SnAp(1, sparse=True)
    with Phase("pattern", out, a.trace):
        prep = algo.prepare(cell.step)
    with Phase("plan", out, a.trace):
        plan = SparsePlan(prep.st, prep.pattern, ts=prep.ts, by_state=True)
    with Phase("kernel", out, a.trace):
        kernel = SparseKernel(prep.st, plan, "float64", cache=None)
    import gc
    nnz = plan.nnz
    del plan   # as Native does: the kernel keeps what it reads
    gc.collect()
    try:   # hand freed heap pages back, so that the resident set shows what is still held
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    held = _status("VmRSS") - base
    tables = kernel.plan.tables
    tb = sum(t.nbytes for t in tables.values())
    te = sum(t.size for t in tables.values())
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, a.B, a.D))
    w = np.ones((1, a.B))
    states = {s: np.zeros((a.B, n)) for s, n in cell.step.states.items()}
    seqs = {"x": x, "target": rng.normal(size=(1, a.B, 4))}
    J = prep.begin(params, states, [], a.B, np.float64)
    with Phase("step", out, a.trace):
        kernel.run(params, states, seqs, w, J)
    print(f"{a.cell} {a.D}->{a.H} B={a.B}: nnz {nnz:,} (carry of one sample {nnz * 8 / 2**20:.1f} MiB), "
          f"{len(tables)} tables, {te:,} entries, {tb / 2**20:.1f} MiB ({tb / (nnz * 8):.1f}x the carry); "
          f"held after planning (the plan freed) +{held / 2**20:.0f} MiB; "
          f"RSS after import {base / 2**20:.0f} MiB")
    for k, r in out.items():
        extra = f", tracemalloc peak {r['py_peak'] / 2**20:.0f} MiB, held {r['py_held'] / 2**20:.0f} MiB" \
            if "py_peak" in r else ""
        print(f"  {k:8s} {r['s']:7.2f} s  peak +{r['peak_rss'] / 2**20:6.0f} MiB  held +{r['held_rss'] / 2**20:6.0f} MiB"
              + extra, flush=True)


if __name__ == "__main__":
    main()
