"""Compile time of the native backend, each figure from a fresh process (what a user waits for).

    python benchmarks/bench_compile.py [--H 128] [--repeats 3] [--phases] [--baseline DIR]
        # prints a table, writes benchmarks/results/compile.json

Columns, for each zoo cell (float32, D = H/2, n_out = 8):
- first: the first compile on a machine: empty cache, so the product kernels of
  ``rnncomp.backends.llvm.kernel_library`` are built too (once per machine and rnncomp version);
- cold: the cell is not in the cache, the kernel library is (every new cell after the first);
- warm: the cell is in the disk cache;
- derive: of ``cold``, the symbolic part (declare, differentiate, plan) — the rest is LLVM;
- jax: ``jax.jit(value_and_grad(loss)).lower().compile()`` of the same cell written with
  ``lax.scan`` (benchmarks/peers.py), in a fresh process too, when JAX is installed;
- cpu: the CPU seconds of the same spans (``time.process_time``, all threads of the child:
  on a loaded machine they move far less than the wall times; XLA may compile on several
  threads), and cold/jax, the ratio of the wall times.
Medians over ``--repeats`` processes; the machine is shared, so compare columns of one run.
The children run with Python's bytecode cache (``_child_env``: rnncomp's sources are
byte-compiled first), as an installed package has it.

``--phases``: a cold compile split into phases (benchmarks/compile_phases.py: import,
derive, IR generation, parse, LLVM optimisation, code generation, load), wall and CPU.
``--baseline DIR``: every row and phase also for the rnncomp checkout in DIR (e.g. a
worktree of main), measured in the same run, so a change is judged against its baseline.
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
t0, c0 = time.perf_counter(), time.process_time()
try:
    model = rc.compile(cell, backend="native", dtype="float32")
except Exception:
    if not {measure_derive}:
        raise
t1, c1 = time.perf_counter(), time.process_time()
print(json.dumps({{"seconds": t1 - t0, "cpu": c1 - c0}}))
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
t0, c0 = time.perf_counter(), time.process_time()
jax.jit(jax.value_and_grad(make_loss({name!r}, ops))).lower(P, x, y).compile()
print(json.dumps({{"seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0}}))
"""


def _child_env(**extra) -> dict:
    """The children's environment: Python's bytecode cache on, as an installed package has it
    (pip writes the .pyc files at install); ``PYTHONDONTWRITEBYTECODE=1``, set on some machines,
    would add compiling rnncomp's own sources (~40 ms) to every figure."""
    env = dict(os.environ, **extra)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _byte_compile(root: str) -> None:
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(root, "rnncomp")],
                   env=_child_env(), check=True, capture_output=True)


def _run(code, cache_dir: str, script_args=None) -> dict:
    env = _child_env(RNNCOMP_CACHE_DIR=cache_dir)
    cmd = [sys.executable, "-c", code] if script_args is None else [sys.executable, code, *script_args]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(name: str, H: int, repeats: int, jax: bool, root: str = ROOT) -> dict:
    D = max(H // 2, 1)
    fmt = dict(root=root, here=HERE, name=name, H=H, D=D)
    runs = {k: [] for k in ("first", "cold", "warm", "derive", "jax")}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as d:
            runs["first"].append(_run(_RNNCOMP.format(measure_derive=False, **fmt), d))
            runs["warm"].append(_run(_RNNCOMP.format(measure_derive=False, **fmt), d))
            # another size: a new cell for the cache, the kernel library already there
            runs["cold"].append(_run(_RNNCOMP.format(measure_derive=False, **dict(fmt, H=H + 2)), d))
            runs["derive"].append(_run(_RNNCOMP.format(measure_derive=True, **dict(fmt, H=H + 4)), d))
        if jax:
            runs["jax"].append(_run(_JAX.format(**fmt), tempfile.gettempdir()))
    med = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
    row = {"cell": name, "H": H, "root": root}
    for k, rs in runs.items():
        row[f"{k}_s"] = med([r["seconds"] for r in rs])
        row[f"{k}_cpu_s"] = med([r["cpu"] for r in rs])
    row["cold_over_jax"] = row["cold_s"] / row["jax_s"] if row["jax_s"] else None
    return row


PHASES = ("import", "derive", "irgen", "parse", "optimize", "codegen", "load", "total (next cell)")


def phases(name: str, H: int, repeats: int, root: str) -> dict:
    """Median wall and CPU seconds of each phase of a cold compile (kernels already built)."""
    script = os.path.join(HERE, "compile_phases.py")
    runs = []
    with tempfile.TemporaryDirectory() as d:
        _run(script, d, [root, name, str(H - 2)])          # builds the kernel library
        for _ in range(repeats):
            runs.append(_run(script, d, [root, name, str(H + 2 + 2 * len(runs))])["phases"])
    return {p: [statistics.median(r[p][i] for r in runs) for i in (0, 1)] for p in PHASES}


def main(argv=None):
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--H", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cells", default=",".join(CELLS))
    ap.add_argument("--phases", action="store_true", help="also split a cold compile into phases")
    ap.add_argument("--baseline", default=None, help="another rnncomp checkout, measured in the same run")
    args = ap.parse_args(argv)
    try:
        import jax  # noqa: F401
        have_jax = True
    except ImportError:
        have_jax = False
    roots = [ROOT] + ([os.path.abspath(args.baseline)] if args.baseline else [])
    label = {ROOT: "this"} | ({roots[1]: "baseline"} if args.baseline else {})
    for root in roots:
        _byte_compile(root)
    rows, split = [], {}
    for c in args.cells.split(","):
        for root in roots:
            rows.append(measure(c, args.H, args.repeats, have_jax, root))
            if args.phases:
                split[f"{c} {label[root]}"] = phases(c, args.H, args.repeats, root)
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    cols = ("first_s", "cold_s", "warm_s", "derive_s", "jax_s", "cold_cpu_s", "warm_cpu_s", "jax_cpu_s",
            "cold_over_jax")
    names = ("first s", "cold s", "warm s", "derive s", "jax s", "cold cpu", "warm cpu", "jax cpu", "cold/jax")
    print(f"{'cell':<24}" + "".join(f"{n:>10}" for n in names))
    for r in rows:
        print(f"{r['cell'] + ' ' + label[r['root']] if args.baseline else r['cell']:<24}"
              + "".join(f"{f(r[k]):>10}" for k in cols))
    if split:
        print(f"\ncold compile by phase, H={args.H + 2}: wall s / cpu s (medians of {args.repeats})")
        print(f"{'phase':<20}" + "".join(f"{k:>24}" for k in split))
        for p in PHASES:
            print(f"{p:<20}" + "".join(f"{v[p][0]:>12.3f}{v[p][1]:>12.3f}" for v in split.values()))
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "compile.json"), "w") as fh:
        json.dump({"H": args.H, "repeats": args.repeats, "rows": rows, "phases": split,
                   "load": os.getloadavg()}, fh, indent=1)
    return rows


if __name__ == "__main__":
    main()
