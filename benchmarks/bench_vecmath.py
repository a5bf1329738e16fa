"""Throughput of rnncomp's inline vector math against numpy, float32 and float64.

    python benchmarks/bench_vecmath.py [--n 1000000] [--repeats 31]

For every function a loop kernel ``void k(i64 n, T* x[, T* y], T* out)`` with the
function emitted by ``rnncomp.backends.llvm.vecmath`` is JIT-compiled (O3, loop
vectoriser) and timed on n-element arrays against numpy's ufunc writing into a
preallocated output (``sigmoid`` = ``1/(1+exp(-x))``, ``softplus`` =
``logaddexp(0, x)``, ``erf`` = ``scipy.special.erf`` when scipy is installed).
Median wall time of ``--repeats`` calls each, measured in the same run,
single thread.  Prints a table of elements per nanosecond and writes
``benchmarks/results/vecmath.json``.

On AVX-512 hosts LLVM's tuning for most server cores (``prefer-256-bit``)
keeps the vectoriser at 256-bit vectors; the ``zmm`` column recompiles the
same kernels for the same CPU with ``-prefer-256-bit`` to show what 512-bit
vectors would give.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from llvmlite import ir  # noqa: E402

from rnncomp.backends.llvm.builder import for_range, gep  # noqa: E402
from rnncomp.backends.llvm.jit import HostTarget, compile_module  # noqa: E402
from rnncomp.backends.llvm.vecmath import ARITY, emit  # noqa: E402

FUNCS = ["exp", "expm1", "log", "log1p", "tanh", "sigmoid", "softplus", "sin", "cos", "atan",
         "erf", "sqrt", "pow"]


def _erf():
    try:
        from scipy.special import erf
        return erf
    except ImportError:
        return None


def numpy_impl(name):
    """numpy (or scipy) callable ``f(*args, out)`` for ``name``, or None."""
    simple = {"exp": np.exp, "expm1": np.expm1, "log": np.log, "log1p": np.log1p,
              "tanh": np.tanh, "sin": np.sin, "cos": np.cos, "atan": np.arctan,
              "sqrt": np.sqrt, "pow": np.power, "erf": _erf()}
    if name == "sigmoid":
        def sigmoid(x, out):
            np.negative(x, out=out)
            np.exp(out, out=out)
            out += 1
            return np.reciprocal(out, out=out)
        return sigmoid
    if name == "softplus":
        return lambda x, out: np.logaddexp(0, x, out=out)
    f = simple[name]
    return None if f is None else (lambda *a: f(*a[:-1], out=a[-1]))


def inputs(name, dtype, n, rng):
    """Arguments in the range a recurrent network would feed each function."""
    if name in ("log", "sqrt"):
        args = [rng.uniform(1e-3, 100, n)]
    elif name == "log1p":
        args = [rng.uniform(-0.9, 100, n)]
    elif name in ("sin", "cos"):
        args = [rng.uniform(-100, 100, n)]
    elif name == "pow":
        args = [rng.uniform(0.1, 10, n), rng.uniform(-3, 3, n)]
    elif name == "exp":
        args = [rng.uniform(-20, 20, n)]
    else:
        args = [rng.normal(0, 3, n)]
    return [a.astype(dtype) for a in args]


def build(dtype, host=None):
    T = ir.FloatType() if dtype == np.float32 else ir.DoubleType()
    m = ir.Module(name=f"bench_vecmath_{np.dtype(dtype).name}")
    for name in FUNCS:
        nargs = ARITY[name]
        fn = ir.Function(m, ir.FunctionType(ir.VoidType(), [ir.IntType(64)]
                                            + [T.as_pointer()] * (nargs + 1)), name=f"k_{name}")
        for a in fn.args[1:]:
            a.add_attribute("noalias")
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        n, *ptrs = fn.args
        with for_range(b, n) as i:
            b.store(emit(b, name, [b.load(gep(b, p, i)) for p in ptrs[:-1]]), gep(b, ptrs[-1], i))
        b.ret_void()
    lib = compile_module(m, cache=None, host=host)
    out = {}
    for name in FUNCS:
        proto = ctypes.CFUNCTYPE(None, ctypes.c_int64, *[ctypes.c_void_p] * (ARITY[name] + 1))
        out[name] = proto(lib.address(f"k_{name}"))
    return lib, out


def median_time(fn, repeats):
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def main(argv=None):
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=31)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "results", "vecmath.json"))
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    host = HostTarget.detect()
    zmm_host = None
    if host.has("avx512f"):
        zmm_host = HostTarget(host.triple, host.cpu, host.features + ",-prefer-256-bit")
    rows = []
    for dtype in (np.float32, np.float64):
        lib, kernels = build(dtype)                # keep lib alive while calling its kernels
        zlib, zmm_kernels = build(dtype, zmm_host) if zmm_host else (None, None)
        for name in FUNCS:
            xs = inputs(name, dtype, args.n, rng)
            out = np.empty_like(xs[0])
            ptrs = [a.ctypes.data for a in xs] + [out.ctypes.data]
            k = kernels[name]
            t_ours = median_time(lambda: k(args.n, *ptrs), args.repeats)
            t_zmm = None
            if zmm_kernels:
                kz = zmm_kernels[name]
                t_zmm = median_time(lambda: kz(args.n, *ptrs), args.repeats)
            ref = numpy_impl(name)
            t_np = None
            if ref is not None:
                with np.errstate(all="ignore"):
                    t_np = median_time(lambda: ref(*xs, out), args.repeats)
            rows.append({
                "function": name, "dtype": np.dtype(dtype).name,
                "rnncomp_el_per_ns": args.n / (t_ours * 1e9),
                "rnncomp_zmm_el_per_ns": None if t_zmm is None else args.n / (t_zmm * 1e9),
                "numpy_el_per_ns": None if t_np is None else args.n / (t_np * 1e9),
                "speedup": None if t_np is None else t_np / t_ours,
            })
        del lib, zlib
    print(f"host: {host.cpu} ({platform.machine()}), n = {args.n}, median of {args.repeats}, "
          "single thread; elements/ns (higher is better)")
    print(f"{'function':<10}{'dtype':<9}{'rnncomp':>9}{'zmm':>9}{'numpy':>9}{'speedup':>9}")
    for r in rows:
        def fmt(v):
            return "n/a" if v is None else f"{v:.3f}"
        sp = "" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        print(f"{r['function']:<10}{r['dtype']:<9}{fmt(r['rnncomp_el_per_ns']):>9}"
              f"{fmt(r['rnncomp_zmm_el_per_ns']):>9}{fmt(r['numpy_el_per_ns']):>9}{sp:>9}")
    print("speedup = numpy time / rnncomp time (default 256-bit build)")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    meta = {"host_cpu": host.cpu, "triple": host.triple,
            "avx512f": host.has("avx512f"), "avx2": host.has("avx2"), "fma": host.has("fma"),
            "zmm_column": "same CPU, features + ',-prefer-256-bit'" if zmm_host else None,
            "n": args.n, "repeats": args.repeats, "statistic": "median",
            "numpy": np.__version__, "python": platform.python_version(),
            "sigmoid_numpy": "1/(1+exp(-x)) in place", "softplus_numpy": "logaddexp(0, x)",
            "erf_numpy": "scipy.special.erf" if _erf() else None}
    with open(args.out, "w") as fh:
        json.dump({"meta": meta, "results": rows}, fh, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
