"""The machine's FMA peak, measured: a generated loop of register-only fused multiply-adds,
so that the benchmarks' figures and ``rnncomp inspect --profile`` read as a share of the chip.

The loop keeps ``ACC`` independent vector accumulators (enough to cover the FMA latency
times the number of FMA ports on any x86 core seen here: 4-cycle latency × 2 ports = 8;
12 leaves room) of the widest vector the host has (16 floats with AVX-512, 8 with AVX2,
4 otherwise) and runs ``n`` iterations of ``acc_i = acc_i * m + a`` on them; nothing is
loaded or stored inside the loop.  One call per thread; ``peak(threads)`` runs one thread
per core at once (the native call releases the GIL) and adds their rates.

    python benchmarks/fma_peak.py            # prints {"threads": GFLOP/s, ...} and the vector width

    >>> r = peak(1, iters=1_000_000)
    >>> r["gflops"] > 0 and r["lanes"] in (4, 8, 16)
    True
    >>> peak(1, iters=100_000, dtype="float64")["lanes"] * 2 == r["lanes"]
    True
"""
from __future__ import annotations

import ctypes
import threading
import time

from llvmlite import ir

from ..backends.llvm.jit import HostTarget, compile_module

ACC = 12


def _lanes(host: HostTarget) -> int:
    if host.has("avx512f"):
        return 16
    if host.has("avx2") or host.has("avx"):
        return 8
    return 4


def _build(lanes: int, dtype: str = "float32") -> ir.Module:
    """``T fma_loop(int64 n)``: n iterations of ACC vector FMAs; returns a lane sum so
    the work is not optimised away."""
    f32, i64 = (ir.FloatType() if dtype == "float32" else ir.DoubleType()), ir.IntType(64)
    vec = ir.VectorType(f32, lanes)
    mod = ir.Module(name="fma_peak")
    fma = ir.Function(mod, ir.FunctionType(vec, [vec, vec, vec]),
                      f"llvm.fma.v{lanes}{'f32' if dtype == 'float32' else 'f64'}")
    fn = ir.Function(mod, ir.FunctionType(f32, [i64]), "fma_loop")
    entry, loop, done = (fn.append_basic_block(n) for n in ("entry", "loop", "done"))
    b = ir.IRBuilder(entry)
    m = ir.Constant(vec, [0.999999] * lanes)
    a = ir.Constant(vec, [1e-7] * lanes)
    inits = [ir.Constant(vec, [1.0 + 1e-3 * k] * lanes) for k in range(ACC)]
    b.branch(loop)
    b.position_at_end(loop)
    i = b.phi(i64)
    accs = [b.phi(vec) for _ in range(ACC)]
    new = [b.call(fma, [acc, m, a]) for acc in accs]
    i2 = b.add(i, ir.Constant(i64, 1))
    i.add_incoming(ir.Constant(i64, 0), entry)
    i.add_incoming(i2, loop)
    for acc, init, nv in zip(accs, inits, new):
        acc.add_incoming(init, entry)
        acc.add_incoming(nv, loop)
    b.cbranch(b.icmp_signed("<", i2, fn.args[0]), loop, done)
    b.position_at_end(done)
    s = new[0]
    for nv in new[1:]:
        s = b.fadd(s, nv)
    b.ret(b.extract_element(s, ir.Constant(ir.IntType(32), 0)))
    return mod


def peak(threads: int = 1, iters: int = 20_000_000, repeats: int = 3, dtype: str = "float32",
         cpu_time: bool = False) -> dict:
    """Best of ``repeats`` runs: GFLOP/s summed over ``threads`` threads running at once
    (each FMA lane counts 2 FLOPs); float64 vectors hold half as many lanes.  ``cpu_time``:
    each thread's rate over its own CPU time (``time.thread_time``), not the wall clock --
    on a machine other jobs load, the rate of the core while it runs this loop."""
    host = HostTarget.detect()
    lanes = _lanes(host) // (2 if dtype == "float64" else 1)
    lib = compile_module(_build(lanes, dtype), level=2, cache=None)
    ret = ctypes.c_float if dtype == "float32" else ctypes.c_double
    fn = ctypes.CFUNCTYPE(ret, ctypes.c_int64)(lib.address("fma_loop"))
    fn(1000)  # warm up
    flops = iters * ACC * lanes * 2
    best = 0.0
    for _ in range(repeats):
        start = threading.Barrier(threads + 1)
        cpu = []

        def work():
            start.wait()
            t0 = time.thread_time()
            fn(iters)
            cpu.append(time.thread_time() - t0)

        ts = [threading.Thread(target=work) for _ in range(threads)]
        for t in ts:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        for t in ts:
            t.join()
        dt = time.perf_counter() - t0
        rate = sum(flops / c for c in cpu) if cpu_time else threads * flops / dt
        best = max(best, rate / 1e9)
    return {"gflops": best, "lanes": lanes, "threads": threads, "cpu": host.cpu, "dtype": dtype}
