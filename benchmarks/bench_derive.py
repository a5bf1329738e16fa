"""Time to declare + derive + print the backward step (must be flat in H) and to unfold +
reverse over k steps (must grow linearly in k).

    python benchmarks/bench_derive.py        # prints a table, writes benchmarks/results/derive.json
"""
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import rnncomp as rc  # noqa: E402
from rnncomp.autodiff import unrolled  # noqa: E402
from rnncomp.derivatives import partials  # noqa: E402
from sympy.core.cache import clear_cache  # noqa: E402


def timed(fn, repeats=3):
    out = []
    for _ in range(repeats):
        partials.cache_clear()  # cold: every derivative derived again
        clear_cache()
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main():
    rows = []
    for H in (8, 128, 1024):
        s = timed(lambda: rc.explain(rc.cells.lstm(H, H, H)).backward_text())
        rows.append({"case": f"LSTM declare+derive+print H={H}", "seconds": s})
    for k in (10, 100, 1000):
        cell = rc.cells.lstm(8, 8, 8)
        s = timed(lambda: unrolled(cell.step, k))
        rows.append({"case": f"LSTM unfold+reverse k={k}", "seconds": s, "per_step_ms": 1e3 * s / k})
    print(f"{'case':<40}{'seconds':>10}{'ms/step':>10}")
    for r in rows:
        extra = f"{r['per_step_ms']:>10.3f}" if "per_step_ms" in r else ""
        print(f"{r['case']:<40}{r['seconds']:>10.4f}{extra}")
    h = [r["seconds"] for r in rows[:3]]
    k = [r["per_step_ms"] for r in rows[3:]]
    print(f"H=1024 / H=8 time ratio: {h[2] / h[0]:.2f} (flat means ≈ 1)")
    print(f"per-step cost k=1000 / k=10: {k[2] / k[0]:.2f} (linear means ≈ 1 or less)")
    out = os.path.join(os.path.dirname(__file__), "results")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "derive.json"), "w") as fh:
        json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    import argparse
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # --help, and no stray arguments
    main()
