"""Generated float32 matrix products against numpy (OpenBLAS), one thread each.

    python benchmarks/bench_gemm.py [--quick]     # table + benchmarks/results/gemm.json

Shapes (M, N, K): the per-step recurrent products (B x H times H x G*H), the
hoisted input projection (T*B x D times D x G*H), the gradient accumulation
sum_t delta[t]^T v[t] (op(A) = A^T) and a square reference.  Columns: our kernel
with B unpacked, with B packed in advance (define_pack_b, as recurrent weights
are: once per sequence), and numpy.matmul into a preallocated output.  All
arrays start on gemm.BUFFER_ALIGN-byte boundaries.  Each
round times every contender back to back (so drifting clock speeds hit all of
them alike); the table shows medians over rounds.  Both sides are called from
Python (ctypes with precomputed pointers vs numpy's C entry point); the ctypes
call overhead is measured and reported in the JSON.
"""
import os
import sys

# before numpy loads: one OpenBLAS thread, and none of the tuning overrides that
# slow it down on this machine
for _var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
    os.environ.pop(_var, None)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import ctypes  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from llvmlite import ir  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from rnncomp.backends.llvm import gemm  # noqa: E402
from rnncomp.backends.llvm.jit import HostTarget, compile_module  # noqa: E402

SHAPES = [  # (M, N, K, trans_a, what)
    (32, 512, 128, False, "step: B=32 H=128 LSTM"),
    (32, 384, 128, False, "step: B=32 H=128 GRU"),
    (32, 512, 192, False, "step: B=32 [x,h] 64+128"),
    (64, 2048, 512, False, "step: B=64 H=512 LSTM"),
    (3200, 512, 64, False, "input projection T*B=3200 D=64"),
    (512, 128, 3200, True, "gradient sum_t d[t]^T v[t]"),
    (1024, 1024, 1024, False, "square"),
    (1, 32, 32, False, "step: B=1 H=32 Elman"),
    (4, 512, 128, False, "step: B=4 H=128 LSTM"),
]

P, L = ctypes.c_void_p, ctypes.c_int64
GEMM = ctypes.CFUNCTYPE(None, L, L, L, P, L, P, L, P, L, ctypes.c_int32, P)
GEMM_PB = ctypes.CFUNCTYPE(None, L, L, L, P, L, P, P, L, ctypes.c_int32, P)
PACK_B = ctypes.CFUNCTYPE(None, L, L, P, L, P)


def single_threaded_numpy():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return f"OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}"
    threadpool_limits(1)
    return "threadpoolctl limit 1"


def build(host):
    m = ir.Module(name="bench_gemm")
    for ta in (False, True):
        gemm.define_gemm(m, f"gemm{int(ta)}", "float32", ta, False, host)
        gemm.define_gemm_packed_b(m, f"gemm_pb{int(ta)}", "float32", ta, host)
    gemm.define_pack_b(m, "pack_b", "float32", False, host)
    t0 = time.perf_counter()
    lib = compile_module(m, cache=None, host=host)
    return lib, time.perf_counter() - t0


def rounds_of(fns, flops, budget):
    """Median seconds per call of each function, timed in interleaved rounds."""
    for fn in fns.values():
        fn()
    one = min(_time(fn, 1) for fn in fns.values())
    inner = max(1, int(2e-3 / max(one, 1e-7)))        # ~2 ms per timing
    rounds = max(7, min(200, int(budget / (len(fns) * inner * one * 1.2 + 1e-9))))
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            times[k].append(_time(fn, inner))
    return {k: {"median_s": statistics.median(t), "best_s": min(t), "rounds": rounds, "inner": inner,
                "gflops": flops / statistics.median(t) / 1e9} for k, t in times.items()}


def aligned(shape, align=gemm.BUFFER_ALIGN):
    """A float32 array whose data starts on an ``align``-byte boundary."""
    n = int(np.prod(shape))
    raw = np.empty(n + align // 4, np.float32)
    skip = (-raw.ctypes.data % align) // 4
    return raw[skip:skip + n].reshape(shape)


def _time(fn, n):
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short timing budget per shape")
    args = ap.parse_args()
    budget = 0.6 if args.quick else 3.0
    threads = single_threaded_numpy()
    host = HostTarget.detect()
    lib, compile_s = build(host)
    bl = gemm.Blocking.for_host("float32", host)
    pack = PACK_B(lib.address("pack_b"))
    rng = np.random.default_rng(0)

    noop = GEMM(lib.address("gemm0"))
    call_s = rounds_of({"noop": lambda: noop(0, 0, 0, None, 1, None, 1, None, 1, 0, None)}, 1, 0.3)["noop"]["median_s"]

    rows = []
    for M, N, K, ta, what in SHAPES:
        a = aligned((K, M) if ta else (M, K))
        a[...] = rng.standard_normal(a.shape)
        b = aligned((K, N))
        b[...] = rng.standard_normal(b.shape)
        c, out = aligned((M, N)), aligned((M, N))
        work = aligned((max(1, gemm.workspace_elems(M, N, K, "float32", host)),))
        packed = aligned((gemm.packed_b_elems(K, N, "float32", host),))
        pack(K, N, b.ctypes.data, N, packed.ctypes.data)
        pa, pb, pc, pw, pp = a.ctypes.data, b.ctypes.data, c.ctypes.data, work.ctypes.data, packed.ctypes.data
        lda = a.shape[1]
        run = GEMM(lib.address(f"gemm{int(ta)}"))
        run_pb = GEMM_PB(lib.address(f"gemm_pb{int(ta)}"))
        opa = a.T if ta else a
        fns = {"ours": lambda: run(M, N, K, pa, lda, pb, N, pc, N, 0, pw)}
        if not ta:   # B is a weight matrix here; in the gradient it is data, packed per call anyway
            fns["ours_packed_b"] = lambda: run_pb(M, N, K, pa, lda, pp, pc, N, 0, pw)
        fns["numpy"] = lambda: np.matmul(opa, b, out=out)
        # correctness of what we time
        fns["ours"]()
        np.matmul(opa, b, out=out)
        err = float(np.abs(c - out).max() / max(1.0, np.abs(out).max()))
        assert err < 1e-4, f"{(M, N, K)}: result differs from numpy by {err}"
        res = rounds_of(fns, 2.0 * M * N * K, budget)
        rows.append({"M": M, "N": N, "K": K, "trans_a": ta, "what": what, "max_rel_err": err, **res})

    hdr = f"{'M':>5} {'N':>5} {'K':>5} {'op(A)':>5}  {'ours':>7} {'packedB':>7} {'numpy':>7}  {'ours/np':>7} {'pkd/np':>7}  what"
    print(f"float32 GFLOP/s, one thread, median of rounds; host {host.cpu} "
          f"(blocking {bl.mr}x{bl.nr}, V={bl.v}, KC={bl.kc}, MC={bl.mc}, NC={bl.nc}); numpy: {threads}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        ours, npy = r["ours"]["gflops"], r["numpy"]["gflops"]
        pk = r.get("ours_packed_b", {}).get("gflops")
        print(f"{r['M']:5d} {r['N']:5d} {r['K']:5d} {'A^T' if r['trans_a'] else 'A':>5}  {ours:7.1f} "
              f"{pk if pk is not None else float('nan'):7.1f} {npy:7.1f}  {ours / npy:7.2f} "
              f"{pk / npy if pk is not None else float('nan'):7.2f}  {r['what']}")
    print(f"module compile time {compile_s:.2f} s (4 products + pack_b); ctypes call overhead "
          f"{call_s * 1e6:.2f} us per call")

    result = {
        "benchmark": "gemm float32, 1 thread", "host": {"cpu": host.cpu, "machine": platform.machine(),
                                                      "avx512f": host.has("avx512f"), "avx2": host.has("avx2")},
        "blocking": {"mr": bl.mr, "nr": bl.nr, "v": bl.v, "kc": bl.kc, "mc": bl.mc, "nc": bl.nc},
        "numpy": {"version": np.__version__, "threads": threads},
        "compile_s": compile_s, "ctypes_call_s": call_s, "rows": rows,
    }
    out_dir = os.path.join(os.path.dirname(__file__), "results")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "gemm.json"), "w") as fh:
        json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
