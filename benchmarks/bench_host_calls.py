"""What a host call from a jitted JAX function costs: ``jax.pure_callback`` against the XLA
FFI handler of rnncomp/jax_ffi.py, per call, for a tiny array and for results the size of the
charlm layer's residuals, each against a baseline measured in the same run (an XLA op that
copies the same bytes, and NumPy copying them).

    nice -n 10 python benchmarks/bench_host_calls.py    # a table + benchmarks/results/host_calls.json
"""
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from rnncomp import jax_ffi  # noqa: E402

# the residuals of examples/jax_charlm.py's layer (T=100, B=32, H=128, two batch slices): 26 arrays, 31 MB
RESIDUALS = [(101, 16, 128)] * 4 + [(100, 16, 128)] * 16 + [(100, 16, 512)] * 6


def best_of(f, x, n):
    g = jax.jit(f)
    jax.block_until_ready(g(x))
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        jax.block_until_ready(g(x))
        ts.append(time.perf_counter() - t)
    return min(ts), float(np.median(ts))


class _Owner:
    pass


def main():
    owner, rows = _Owner(), []
    for label, shapes in [("one (16,) array", [(16,)]), (f"{len(RESIDUALS)} arrays, "
                          f"{sum(np.prod(s) for s in RESIDUALS) * 4 / 1e6:.0f} MB", RESIDUALS)]:
        src = [np.ones(s, np.float32) for s in shapes]
        results = tuple(jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes)

        def fill(args, rets):
            for r, a in zip(rets, src):
                np.copyto(r, a)

        key = jax_ffi.FUNCTIONS.add(owner, fill)
        kinds = {  # each returns its results: XLA materialises them (fresh buffers every call)
            "pure_callback": lambda x: jax.pure_callback(lambda x: tuple(src), results, x),
            "jax_ffi.host_call": lambda x: jax_ffi.host_call(key, results, x),
            "XLA op writing the same bytes": lambda x: tuple(jnp.full(s, x[0]) for s in shapes),
        }
        for kind, f in kinds.items():
            b, m = best_of(f, jnp.ones(3, jnp.float32), 20)
            rows.append({"results": label, "call": kind, "best_ms": 1e3 * b, "median_ms": 1e3 * m})
        t = time.perf_counter()
        for _ in range(5):
            for r, a in zip([np.empty_like(a) for a in src], src):
                np.copyto(r, a)
        rows.append({"results": label, "call": "NumPy copy into fresh arrays", "best_ms": 1e3 * (time.perf_counter() - t) / 5,
                     "median_ms": None})
    print(f"host calls from jitted JAX on the CPU; load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores")
    print(f"{'results':<22}{'call':<32}{'best ms':>10}{'median ms':>11}")
    for r in rows:
        med = "" if r["median_ms"] is None else f"{r['median_ms']:11.2f}"
        print(f"{r['results']:<22}{r['call']:<32}{r['best_ms']:10.2f}{med}")
    out = os.path.join(ROOT, "benchmarks", "results", "host_calls.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as fh:
        json.dump({"rows": rows, "load_average": os.getloadavg(), "cpu_count": os.cpu_count()}, fh, indent=1)
    print(f"written: {out}")


if __name__ == "__main__":
    import argparse
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # --help, and no stray arguments
    main()
