"""Training step (forward over all T + full BPTT gradients of every parameter), float32,
median wall time, every implementation measured in the same run.

    python benchmarks/bench_native.py                  # ~2-5 min: tables + benchmarks/results/native.json
    python benchmarks/bench_native.py --quick          # 3 repeats, no H=512 case
    python benchmarks/bench_native.py --cases lstm,gru --threads 2 --peers torch

Cases (``--cases`` takes ids or cell names, comma-separated; a cell name selects every case
of that cell, e.g. ``lstm`` both LSTMs): elman-b1 (Elman tanh H=32 D=8 B=1 T=100), elman,
gru, lstm (H=128 D=64 B=32 T=100), lstm-512 (H=512 D=256 B=64 T=50), softsign_lstm (an LSTM
with softsign gates, H=128 D=64 B=32 T=100).  ``--quick`` skips H=512 unless named.

Columns (milliseconds per training step; "1t" one thread, "Nt" the ``--threads`` count):

- rnncomp native (``threads=1`` and ``threads=N``) and the NumPy reference executor;
- PyTorch fused ``nn.RNN/GRU/LSTM`` (oneDNN) loaded with the same parameters, and the same
  cell equations as a Python loop of torch ops with autograd (benchmarks/peers.py);
- JAX: the same equations, ``jax.jit(jax.value_and_grad(loss))`` over ``jax.lax.scan``,
  timed after an ahead-of-time compile (its compile time is reported apart).

PyTorch and JAX are optional (``pip install '.[benchmarks]'``): without them their columns
say n/a.  Every peer's loss and gradients are compared with rnncomp's on the same
parameters and data (loss to 1e-4 relative, each gradient to 1e-3 relative in norm), and
rnncomp native with the NumPy reference; a failed check is reported and the script exits 1.
torch's fused GRU is a variant (r ⊙ (Un h) in place of Un (r ⊙ h)), same FLOPs, unchecked.

GFLOP/s: a training step's FLOPs are taken as 3 × the forward matrix-product FLOPs
(2·m·n·B·T for each m×n weight product), set against numpy's float32 2048³ matmul measured
in the same run with 1 and N threads, so that each figure reads as a share of the machine.
The matmul probe runs in its own process with ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE``
removed from its environment (some machines here set them to an older core, which makes
OpenBLAS run AVX2 kernels on an AVX-512 chip: the yardstick would read ~2x low) and reports
the kernel OpenBLAS chose (threadpoolctl, when installed); the float32 FMA peak of the chip
(``benchmarks/fma_peak.py``: a generated register-only FMA loop) is printed beside it.
Neither variable is changed for rnncomp, the peers, the tests or CI.
Ratios (> 1: rnncomp is faster): rnncomp Nt vs the fastest peer column (any thread count),
vs the NumPy reference; rnncomp 1t vs the fastest 1-thread peer; the goals of issue #3.

``--threads N`` (default: every core this process may run on) is the thread count of the
multi-thread columns; the 1-thread columns are always measured, and N = 1 measures only
them.  How each implementation gets its count: rnncomp ``threads=``; PyTorch
``torch.set_num_threads``; JAX in two worker processes, since XLA sizes its thread pool
once, at start-up: the N-thread one with XLA's default pool (every core; pinned to N cores
with sched_setaffinity when N is fewer), the 1-thread one pinned to one core, because the
pool follows the affinity mask and ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1`` (also set) no longer holds it to one thread in jax 0.10
(three threads still shared a large matmul; pinned, one did all the work); the matmul probes in
subprocesses with ``OPENBLAS_NUM_THREADS``; the NumPy reference executor uses OpenBLAS's
default (every core), or N when ``--threads`` is given.  The frameworks run in worker
processes (benchmarks/peers.py), one request per case, so all columns of a case are
measured together and no framework thread pool lives in the process that times rnncomp.

Other jobs on the machine skew the times (most of all the multi-thread columns): the load
average at the start and the end is printed and kept in the JSON.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = [  # id, cell, label, D, H, B, T
    ("elman-b1", "elman", "Elman tanh H=32 D=8 B=1 T=100", 8, 32, 1, 100),
    ("elman", "elman", "Elman H=128 D=64 B=32 T=100", 64, 128, 32, 100),
    ("gru", "gru", "GRU H=128 D=64 B=32 T=100", 64, 128, 32, 100),
    ("lstm", "lstm", "LSTM H=128 D=64 B=32 T=100", 64, 128, 32, 100),
    ("lstm-512", "lstm", "LSTM H=512 D=256 B=64 T=50", 256, 512, 64, 50),
    ("softsign_lstm", "softsign_lstm", "softsign-gate LSTM H=128 B=32 T=100", 64, 128, 32, 100),
]
PEERS = [("torch_fused", "torch fused"), ("torch_loop", "torch loop"), ("jax", "JAX")]
LOSS_TOL, GRAD_TOL = 1e-4, 1e-3
peers = None  # benchmarks/peers.py, imported in main() once OPENBLAS_NUM_THREADS is set
XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"

MATMUL_N = 2048
MATMUL_PROBE = r"""
import json, statistics, time
import numpy as np
n = {n}
rng = np.random.default_rng(0)
a = rng.standard_normal((n, n), dtype=np.float32)
b = rng.standard_normal((n, n), dtype=np.float32)
c = a @ b
ts = []
for _ in range({reps}):
    t0 = time.perf_counter()
    np.matmul(a, b, out=c)
    ts.append(time.perf_counter() - t0)
f = 2 * n ** 3 / 1e9
try:
    from threadpoolctl import threadpool_info
    kernel = ", ".join(f"{{i.get('internal_api')}} {{i.get('version')}} {{i.get('architecture')}}"
                       for i in threadpool_info() if i.get("user_api") == "blas")
except ImportError:
    kernel = "unknown (pip install threadpoolctl)"
print(json.dumps({{"gflops": f / statistics.median(ts), "best_gflops": f / min(ts), "kernel": kernel}}))
"""
# set on some machines for old OpenBLAS builds; they pin an older (slower) kernel
OPENBLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def core_ids():
    """The cores this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux: no pinning, every core
        return list(range(os.cpu_count() or 1))


def all_cores():
    return len(core_ids())


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()),
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="See the module docstring for the columns and threads.")
    ap.add_argument("--quick", action="store_true", help="3 repeats, shorter budgets, skip H=512")
    ap.add_argument("--cases", default=None,
                    help="comma-separated case ids or cell names: " + ", ".join(c[0] for c in CASES))
    ap.add_argument("--threads", type=int, default=None,
                    help=f"threads of the multi-thread columns (default: all cores, {all_cores()} here)")
    ap.add_argument("--peers", default="torch,jax", help="frameworks to compare with: torch,jax or none")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per column (default 10, quick 3)")
    ap.add_argument("--json", default=os.path.join(HERE, "results", "native.json"), help="where to write")
    args = ap.parse_args(argv)
    ids = {c[0] for c in CASES} | {c[1] for c in CASES}
    args.case_filter = [s for s in (args.cases or "").split(",") if s]
    bad = [s for s in args.case_filter if s not in ids]
    if bad:
        ap.error(f"unknown case {', '.join(bad)}; known: {', '.join(sorted(ids))}")
    args.peer_set = {p for p in args.peers.split(",") if p and p != "none"}
    if args.peer_set - {"torch", "jax"}:
        ap.error("--peers takes torch, jax or none")
    return args


# --------------------------------------------------------------------------- helpers

def matmul_gflops(threads, reps=10):
    """numpy's float32 MATMUL_N³ matmul on ``threads`` threads, in a process of its own whose
    environment has no OpenBLAS core override (only that process's)."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    for k in OPENBLAS_OVERRIDES:
        env.pop(k, None)
    out = subprocess.run([sys.executable, "-c", MATMUL_PROBE.format(reps=reps, n=MATMUL_N)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def fma_peak_gflops(counts):
    """{threads: fma_peak.peak(threads)}: the chip's float32 FMA peak (benchmarks/fma_peak.py)."""
    sys.path.insert(0, HERE)
    import fma_peak
    return {n: fma_peak.peak(n) for n in counts}


def training_flops(cell, B, T):
    """3 × the forward matrix-product FLOPs: 2·m·n·B·T for each weight term of each product."""
    st = cell.step
    per_sample_step = 0
    for node in st.prog.nodes.values():
        if node.op == "matvec":
            for P, _transposed, _c in node.attrs["terms"]:
                m, n = st.params[P]
                per_sample_step += 2 * m * n
    return 3 * per_sample_step * B * T


class Worker:
    """A peers.py worker process: one JSON request a line in, one tagged JSON line out."""

    def __init__(self, framework, threads, env_extra=None, cores=None):
        sp = subprocess
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", JAX_PLATFORMS="cpu", **(env_extra or {}))
        self.log = tempfile.TemporaryFile(mode="w+")
        preexec = (lambda: os.sched_setaffinity(0, cores)) if cores else None
        self.proc = sp.Popen([sys.executable, os.path.join(HERE, "peers.py"), "--worker", framework,
                              "--threads", ",".join(map(str, threads))],
                             stdin=sp.PIPE, stdout=sp.PIPE, stderr=self.log, text=True, env=env,
                             preexec_fn=preexec)
        self.ready, self.error, self.info = None, None, {}

    def wait_ready(self):
        msg = self._read()
        if msg is None:
            self.ready, self.error = False, "worker exited: " + self._log_tail()
        else:
            self.ready, self.error, self.info = bool(msg.get("ready")), msg.get("error"), msg
        return self.ready

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith(peers.TAG):
                return json.loads(line[len(peers.TAG):])
        return None

    def _log_tail(self, n=800):
        self.log.seek(0)
        return self.log.read()[-n:]

    def ask(self, req):
        if not self.ready:
            return None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        msg = self._read()
        if msg is None:
            self.ready, self.error = False, "worker exited: " + self._log_tail()
            print(f"    ! {self.error}", flush=True)
            return None
        if not msg["ok"]:
            print(f"    ! peer failed:\n{msg['error']}", flush=True)
            return None
        return msg["result"]

    def close(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except Exception:  # noqa: BLE001
            self.proc.kill()


def fmt_ms(v):
    if v is None:
        return "n/a"
    return f"{v:.0f} ms" if v >= 100 else f"{v:.1f} ms" if v >= 10 else f"{v:.2f} ms"


def fmt_x(v):
    return "n/a" if v is None else f"{v:.2f}×"


def md_table(header, rows):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [line(r) for r in rows])


# --------------------------------------------------------------------------- goals

def goals(case_id, r, mm_nt):
    """Issue #3's goals for this case: a list of (goal, ratio or value, met)."""
    out = []
    vs_np = r["native_ms"] and r["numpy_ms"] / r["native_ms"]
    out.append(("≥2× NumPy ref", vs_np, vs_np >= 2))
    if r["fastest_peer_ms"] is not None:
        vs = r["vs_fastest_peer"]
        out.append(("faster than every peer", vs, vs > 1))
        if case_id in ("elman-b1", "elman", "gru", "softsign_lstm"):
            out.append(("≥2× fastest peer", vs, vs >= 2))
    fused = [r.get(k) for k in ("torch_fused_1t_ms", "torch_fused_ms") if r.get(k)]
    if case_id == "lstm" and fused:
        v = min(fused) / r["native_ms"]
        out.append(("≥1.25× torch fused", v, v >= 1.25))
    if case_id == "lstm-512":
        if fused:
            v = min(fused) / r["native_ms"]
            out.append(("ahead of torch fused", v, v > 1))
        if mm_nt:
            share = r["native_gflops"] / mm_nt
            out.append(("≥85% of matmul GFLOP/s", share, share >= 0.85))
    return out


def speed_goals(rows, N, mm_nt, fma_nt):
    """Issue #21's CPU goals, each with the rate it needs: (case, goal, measured, met, needed
    GFLOP/s, reachable).  A goal "k× a peer" needs the case's matrix-product FLOPs (the GFLOP
    column; the element-wise work not counted) at k× the peer's rate; where that is above the
    FMA peak measured in the same run, no code reaches it on this machine."""
    out = []  # (case, goal, measured, threshold, needed GFLOP/s)
    for r in rows:  # the faster of torch's 1- and N-thread columns, as issue #3's goals take it
        fused = min([r[k] for k in ("torch_fused_1t_ms", "torch_fused_ms") if r.get(k)], default=None)
        if r["id"] == "lstm" and fused:
            out.append((r["case"], "≥ 2× torch fused (oneDNN)", fused / r["native_ms"], 2.0,
                        2.0 * r["flops"] / fused / 1e6))
        if r["id"] == "lstm-512" and fused:
            out.append((r["case"], "≥ 1.3× torch fused (oneDNN)", fused / r["native_ms"], 1.3,
                        1.3 * r["flops"] / fused / 1e6))
        if r["id"] == "lstm-512" and mm_nt:
            out.append((r["case"], "≥ 95% of numpy's matmul", r["native_gflops"] / mm_nt, 0.95, 0.95 * mm_nt))
    return [(c, g, v, v >= k, need, need <= fma_nt) for c, g, v, k, need in out]


def report_speed_goals(rows, N, mm_nt, fma_nt):
    goals21 = speed_goals(rows, N, mm_nt, fma_nt)
    if not goals21:
        return
    print(f"\nIssue #21's CPU goals, {N} thread(s); the rate each needs (matrix products only) against the "
          f"float32 FMA peak measured in this run, {fma_nt:.0f} GFLOP/s\n")
    print(md_table(["case", "goal", "measured", "met", "needs GFLOP/s", "reachable here"],
                   [[c, g, f"{v:.2f}", "met" if m else "MISSED", f"{need:.0f} ({100 * need / fma_nt:.0f}% of peak)",
                     "yes" if ok else "no: above the FMA peak"] for c, g, v, m, need, ok in goals21]))


# --------------------------------------------------------------------------- main

def main(args):
    N = args.threads or all_cores()
    if args.threads:  # the NumPy reference executor: OpenBLAS reads this at import
        os.environ.setdefault("OPENBLAS_NUM_THREADS", str(N))
    import numpy as np

    sys.path.insert(0, os.path.join(HERE, ".."))
    import rnncomp as rc
    global peers
    sys.path.insert(0, HERE)
    import peers  # benchmarks/peers.py: numpy only at import (the frameworks in its workers)
    median_time = peers.median_time

    counts = [1] if N == 1 else [1, N]
    reps = args.repeats or (3 if args.quick else 10)
    budget = 2.0 if args.quick else 5.0
    started = time.perf_counter()
    load_start = os.getloadavg()
    print(f"{all_cores()} cores, load average {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}; "
          f"multi-thread columns: {N} thread{'s' if N > 1 else ''}; {reps} repeats", flush=True)

    mm = {n: matmul_gflops(n) for n in counts}
    fma = fma_peak_gflops(counts)
    print(f"float32 FMA peak ({fma[counts[0]]['cpu']}, {fma[counts[0]]['lanes']} lanes): "
          + ", ".join(f"{fma[n]['gflops']:.0f} GFLOP/s ({n}t)" for n in counts))
    print(f"numpy float32 {MATMUL_N}³ matmul [{mm[counts[0]]['kernel']}]: "
          + ", ".join(f"{mm[n]['gflops']:.1f} GFLOP/s ({n}t, {100 * mm[n]['gflops'] / fma[n]['gflops']:.0f}% of peak)"
                      for n in counts),
          flush=True)

    workers = {}
    if "torch" in args.peer_set:
        workers["torch"] = Worker("torch", counts)
    if "jax" in args.peer_set:
        # XLA sizes its CPU thread pool from the affinity mask; the flags alone do not hold it
        # to one thread in jax 0.10 (three threads still ran a large matmul)
        workers["jax_1"] = Worker("jax", [1], {"XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " "
                                                               + XLA_ONE_THREAD).strip()},
                                  cores=core_ids()[-1:] if hasattr(os, "sched_setaffinity") else None)
        if N > 1:
            workers[f"jax_{N}"] = Worker("jax", [N], cores=core_ids()[:N]
                                         if N < all_cores() else None)
    versions = {"numpy": np.__version__, "python": sys.version.split()[0]}
    for name, w in workers.items():
        if w.wait_ready():
            versions[name.split("_")[0]] = w.info.get("version")
        else:
            print(f"  {name}: n/a ({(w.error or '').strip().splitlines()[-1] if w.error else 'unavailable'})",
                  flush=True)

    selected = [c for c in CASES
                if (not args.case_filter and not (args.quick and c[4] >= 512))
                or (args.case_filter and (c[0] in args.case_filter
                                          or (c[1] in args.case_filter and not (args.quick and c[4] >= 512))))]
    rows, failures = [], []
    tmp = tempfile.mkdtemp(prefix="bench_native_")
    for case_id, kind, label, D, H, B, T in selected:
        cell = rc.cells.get(kind)(D, H, 4)
        rng = np.random.default_rng(0)
        params = cell.init_params(0, "float32")
        x = rng.normal(size=(T, B, D)).astype(np.float32)
        y = rng.normal(size=(T, B, 4)).astype(np.float32)
        t0 = time.perf_counter()
        native1 = rc.compile(cell, backend="native", dtype="float32", threads=1)
        compile_s = time.perf_counter() - t0
        nativeN = rc.compile(cell, backend="native", dtype="float32", threads=N)
        ref = rc.compile(cell, backend="numpy", dtype="float32")

        # the function every column computes: rnncomp native's loss and gradients, checked
        # against the NumPy reference and handed to the peers with the same parameters and data
        loss, grads, _ = nativeN.loss_and_grad(params, x, y)
        rloss, rgrads, _ = ref.loss_and_grad(params, x, y)
        grads64 = {k: v.astype(np.float64) for k, v in grads.items()}
        checks = {"numpy_ref": peers.check(rloss, rgrads, loss, grads64)}
        npz = os.path.join(tmp, f"{case_id}.npz")
        np.savez(npz, x=x, target=y, loss=np.float64(loss), **{f"p:{k}": v for k, v in params.items()},
                 **{f"g:{k}": v for k, v in grads.items()})

        r = {"case": label, "id": case_id, "cell": kind, "D": D, "H": H, "B": B, "T": T,
             "threads": N, "compile_s": compile_s, "flops": training_flops(cell, B, T)}
        # OpenBLAS's worker threads spin for a while after a call (the reference executor's
        # check above, the previous case's NumPy timing) and took the second core: Elman
        # H=128 with 2 threads measured 4.0 ms right after a NumPy call, 2.2 ms after 0.1 s
        time.sleep(0.5)
        r["native_1t_ms"] = 1e3 * median_time(lambda: native1.loss_and_grad(params, x, y), reps, budget)
        r["native_ms"] = (1e3 * median_time(lambda: nativeN.loss_and_grad(params, x, y), reps, budget)
                          if N > 1 else r["native_1t_ms"])
        req = {"npz": npz, "kind": kind, "repeats": reps, "budget": budget}
        tw = workers.get("torch")
        res = tw.ask(req) if tw else None
        for style in ("fused", "loop"):
            for n in counts:
                got = (res or {}).get(f"{style}_{n}")
                key = f"torch_{style}_{'1t_' if n == 1 else ''}ms"
                r[key] = got["ms"] if got else None
                if got:
                    checks[f"torch_{style}"] = got["check"]
        for n in counts:
            w = workers.get(f"jax_{n}")
            got = (w.ask(req) or {}).get(str(n)) if w else None
            r[f"jax_{'1t_' if n == 1 else ''}ms"] = got["ms"] if got else None
            r[f"jax_{'1t_' if n == 1 else ''}compile_s"] = got["compile_s"] if got else None
            if got:
                checks[f"jax {n}t"] = got["check"]
        if N == 1:  # the multi-thread columns are the 1-thread ones
            for p, _ in PEERS:
                r[f"{p}_ms"] = r[f"{p}_1t_ms"]
            r["jax_compile_s"] = r["jax_1t_compile_s"]
        r["numpy_ms"] = 1e3 * median_time(lambda: ref.loss_and_grad(params, x, y), max(2, reps // 3), budget)
        # compatibility with earlier native.json: torch_ms / torch_1t_ms are the fused module
        r["torch_1t_ms"], r["torch_ms"] = r["torch_fused_1t_ms"], r["torch_fused_ms"]

        for name, c in checks.items():
            c["same_function"] = c.get("same_function", True)
            c["ok"] = c["loss_rel"] <= LOSS_TOL and c["grad_rel"] <= GRAD_TOL
            if c["same_function"] and not c["ok"]:
                failures.append(f"{label}: {name} loss rel {c['loss_rel']:.2e}, grad rel {c['grad_rel']:.2e}")
        r["checks"] = checks

        # GFLOP/s and ratios
        peer_cols = {f"{name} {'1t' if n == 1 else f'{N}t'}": r[f"{p}_{'1t_' if n == 1 else ''}ms"]
                     for p, name in PEERS for n in counts}
        peer_cols = {k: v for k, v in peer_cols.items() if v}
        one_t = {k: v for k, v in peer_cols.items() if k.endswith(" 1t")}
        r["fastest_peer"] = min(peer_cols, key=peer_cols.get) if peer_cols else None
        r["fastest_peer_ms"] = peer_cols.get(r["fastest_peer"])
        r["fastest_1t_peer"] = min(one_t, key=one_t.get) if one_t else None
        r["fastest_1t_peer_ms"] = one_t.get(r["fastest_1t_peer"])
        r["native_gflops"] = r["flops"] / r["native_ms"] / 1e6
        r["native_1t_gflops"] = r["flops"] / r["native_1t_ms"] / 1e6
        r["fastest_peer_gflops"] = r["flops"] / r["fastest_peer_ms"] / 1e6 if r["fastest_peer_ms"] else None
        r["vs_fastest_peer"] = r["fastest_peer_ms"] / r["native_ms"] if r["fastest_peer_ms"] else None
        r["vs_numpy"] = r["numpy_ms"] / r["native_ms"]
        r["1t_vs_fastest_1t_peer"] = r["fastest_1t_peer_ms"] / r["native_1t_ms"] if r["fastest_1t_peer_ms"] else None
        r["goals"] = [{"goal": g, "value": v, "met": bool(m)} for g, v, m in goals(case_id, r, mm[N]["gflops"])]
        rows.append(r)
        print(f"  measured {label} ({time.perf_counter() - started:.0f} s)", flush=True)

    for w in workers.values():
        w.close()
    shutil.rmtree(tmp, ignore_errors=True)
    import bench_vjp  # gradients in and out: the same machine, the same run
    vjp = bench_vjp.run(N, rounds=5 if args.quick else 15)
    load_end = os.getloadavg()
    report(rows, counts, N, mm, load_start, load_end, failures)
    report_speed_goals(rows, N, mm[N]["gflops"], fma[N]["gflops"])
    print(bench_vjp.report(vjp))
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump({"machine": {"cores": all_cores(), "threads": N, "load_start": load_start,
                               "load_end": load_end, f"matmul_{MATMUL_N}_gflops": {str(n): mm[n] for n in counts},
                               "fma_peak_gflops": {str(n): fma[n] for n in counts},
                               "versions": versions, "repeats": reps,
                               "peers_unavailable": {k: w.error for k, w in workers.items() if not w.ready},
                               "wall_s": time.perf_counter() - started},
                   "cases": rows, "vjp": vjp, "check_failures": failures,
                   "speed_goals": [dict(zip(("case", "goal", "measured", "met", "needs_gflops", "reachable"), g))
                                   for g in speed_goals(rows, N, mm[N]["gflops"], fma[N]["gflops"])]}, fh, indent=1)
    print(f"\nwrote {os.path.relpath(args.json)} ({time.perf_counter() - started:.0f} s)")
    return 1 if failures else 0


def report(rows, counts, N, mm, load_start, load_end, failures):
    Nt = f"{N}t"
    head = ["case", "rnncomp 1t"] + ([f"rnncomp {Nt}"] if N > 1 else []) + ["NumPy ref"]
    for _, name in PEERS:
        head += [f"{name} 1t"] + ([f"{name} {Nt}"] if N > 1 else [])
    body = []
    for r in rows:
        line = [r["case"], fmt_ms(r["native_1t_ms"])] + ([fmt_ms(r["native_ms"])] if N > 1 else [])
        line.append(fmt_ms(r["numpy_ms"]))
        for p, _ in PEERS:
            line += [fmt_ms(r[f"{p}_1t_ms"])] + ([fmt_ms(r[f"{p}_ms"])] if N > 1 else [])
        body.append(line)
    print("\nTraining step, float32, median (forward + full BPTT)\n")
    print(md_table(head, body))

    mmN, mm1 = mm[N]["gflops"], mm[1]["gflops"]
    head = ["case", "GFLOP", f"rnncomp {Nt} GFLOP/s", "fastest peer", "peer GFLOP/s",
            f"rnncomp {Nt} vs peer", f"vs NumPy ref", "1t vs 1t peer", "JAX compile", "goals (issue #3)"]
    body = []
    for r in rows:
        pct = lambda g, m: f"{g:.1f} ({100 * g / m:.0f}%)"  # noqa: E731
        peer = f"{r['fastest_peer']} {fmt_ms(r['fastest_peer_ms'])}" if r["fastest_peer"] else "n/a"
        jc = r.get("jax_compile_s") or r.get("jax_1t_compile_s")
        missed = [f"{g['goal']} ({g['value']:.2f})" for g in r["goals"] if not g["met"]]
        body.append([r["case"], f"{r['flops'] / 1e9:.3g}", pct(r["native_gflops"], mmN), peer,
                     pct(r["fastest_peer_gflops"], mmN) if r["fastest_peer_gflops"] else "n/a",
                     fmt_x(r["vs_fastest_peer"]), fmt_x(r["vs_numpy"]), fmt_x(r["1t_vs_fastest_1t_peer"]),
                     f"{jc:.1f} s" if jc else "n/a",
                     ("missed: " + "; ".join(missed)) if missed
                     else "all met" if r["fastest_peer"] else "met (no peer measured)"])
    print(f"\nGFLOP = 3 × forward matrix-product FLOPs; (%) of numpy's float32 {MATMUL_N}³ matmul with "
          f"{N} thread{'s' if N > 1 else ''}: {mmN:.1f} GFLOP/s"
          + (f" ({mm1:.1f} with 1 thread)" if N > 1 else "") + "; ratios > 1: rnncomp faster\n")
    print(md_table(head, body))

    worst = {}
    for r in rows:
        for name, c in r["checks"].items():
            if c["same_function"]:
                w = worst.setdefault(name, [0.0, 0.0])
                w[0], w[1] = max(w[0], c["loss_rel"]), max(w[1], c["grad_rel"])
    print("\nsame function as rnncomp native (largest relative error over the cases, loss / gradient): "
          + "; ".join(f"{k} {v[0]:.1e} / {v[1]:.1e}" for k, v in worst.items())
          + "; torch's fused GRU is a variant (r⊙(Un h)), not compared")
    print(f"load average {load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end "
          f"({all_cores()} cores)")
    for f in failures:
        print(f"CHECK FAILED {f}")


if __name__ == "__main__":
    sys.exit(main(parse_args()))
