"""Compile time of the native backend, each figure from a fresh process (what a user waits for).

    python benchmarks/bench_compile.py [--H 128] [--repeats 3]
        # prints a table, writes benchmarks/results/compile.json

Columns, for each zoo cell (float32, D = H/2, n_out = 8):
- first: the first compile on a machine: empty cache, so the product kernels of
  ``rnncomp.backends.llvm.kernel_library`` are built too (once per machine and rnncomp version);
- cold: the cell is not in the cache, the kernel library is (every new cell after the first);
- warm: the cell is in the disk cache;
- derive: of ``cold``, the symbolic part (declare, differentiate, plan) — the rest is LLVM;
- jax: ``jax.jit(value_and_grad(loss)).lower().compile()`` of the same cell written with
  ``lax.scan`` (benchmarks/peers.py), in a fresh process too, when JAX is installed.
Medians over ``--repeats`` processes; the machine is shared, so compare columns of one run.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CELLS = ["elman", "gru", "lstm", "softsign_lstm"]

_RNNCOMP = r"""
import json, sys, time
sys.path.insert(0, {root!r})
import rnncomp as rc
cell = rc.cells.get({name!r})({D}, {H}, 8)
if {measure_derive}:   # the symbolic part alone: the model planned, no code generated or compiled
    import rnncomp.backends.native as nat
    nat.NativeModel._compile = lambda self, key, build: None
t0 = time.perf_counter()
try:
    model = rc.compile(cell, backend="native", dtype="float32")
except Exception:
    if not {measure_derive}:
        raise
t1 = time.perf_counter()
print(json.dumps({{"seconds": t1 - t0}}))
"""

_JAX = r"""
import json, sys, time
sys.path.insert(0, {here!r})
import numpy as np, jax, jax.numpy as jnp
from peers import make_loss
sys.path.insert(0, {root!r})
import rnncomp as rc
cell = rc.cells.get({name!r})({D}, {H}, 8)
P = {{k: jnp.asarray(v, jnp.float32) for k, v in cell.init_params(seed=0).items()}}
x = jnp.zeros((50, 16, {D}), jnp.float32); y = jnp.zeros((50, 16, 8), jnp.float32)
class ops:
    cat = staticmethod(lambda xs: jnp.concatenate(xs, axis=0))
    tanh, sigmoid = staticmethod(jnp.tanh), staticmethod(jax.nn.sigmoid)
    zeros = staticmethod(lambda shape: jnp.zeros(shape, jnp.float32))
    scan = staticmethod(lambda f, init, xs: jax.lax.scan(f, init, xs)[1])
t0 = time.perf_counter()
jax.jit(jax.value_and_grad(make_loss({name!r}, ops))).lower(P, x, y).compile()
print(json.dumps({{"seconds": time.perf_counter() - t0}}))
"""


def _run(code: str, cache_dir: str) -> dict:
    env = dict(os.environ, RNNCOMP_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(name: str, H: int, repeats: int, jax: bool) -> dict:
    D = max(H // 2, 1)
    fmt = dict(root=ROOT, here=HERE, name=name, H=H, D=D)
    first, cold, warm, derive, jx = [], [], [], [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as d:
            first.append(_run(_RNNCOMP.format(measure_derive=False, **fmt), d)["seconds"])
            warm.append(_run(_RNNCOMP.format(measure_derive=False, **fmt), d)["seconds"])
            # another size: a new cell for the cache, the kernel library already there
            cold.append(_run(_RNNCOMP.format(measure_derive=False, **dict(fmt, H=H + 2)), d)["seconds"])
            derive.append(_run(_RNNCOMP.format(measure_derive=True, **dict(fmt, H=H + 4)), d)["seconds"])
        if jax:
            jx.append(_run(_JAX.format(**fmt), tempfile.gettempdir())["seconds"])
    med = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
    return {"cell": name, "H": H, "first_s": med(first), "cold_s": med(cold), "warm_s": med(warm),
            "derive_s": med(derive), "jax_s": med(jx)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--H", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cells", default=",".join(CELLS))
    args = ap.parse_args(argv)
    try:
        import jax  # noqa: F401
        have_jax = True
    except ImportError:
        have_jax = False
    rows = [measure(c, args.H, args.repeats, have_jax) for c in args.cells.split(",")]
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    print(f"{'cell':<15}{'first s':>9}{'cold s':>9}{'warm s':>9}{'derive s':>10}{'jax s':>9}")
    for r in rows:
        print(f"{r['cell']:<15}{f(r['first_s']):>9}{f(r['cold_s']):>9}{f(r['warm_s']):>9}"
              f"{f(r['derive_s']):>10}{f(r['jax_s']):>9}")
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "compile.json"), "w") as fh:
        json.dump({"H": args.H, "repeats": args.repeats, "rows": rows}, fh, indent=1)
    return rows


if __name__ == "__main__":
    main()
