"""Generated matrix products (rnncomp.backends.llvm.gemm) against numpy.

One module per host flavour holds every variant (both dtypes, all transpose
combinations, packed B); the native host is always tested, and on a host with
AVX-512 (or AVX2) the narrower code paths are compiled for a restricted feature
set and run here too.
"""
from __future__ import annotations

import ctypes
import re

import numpy as np
import pytest
from llvmlite import ir

from rnncomp.backends.llvm import gemm
from rnncomp.backends.llvm.jit import HostTarget, compile_module

NATIVE = HostTarget.detect()
DTYPES = ("float32", "float64")
TOL = {"float32": 1e-5, "float64": 1e-12}
GUARD = 64      # sentinel elements after every buffer the kernels write

P, L = ctypes.c_void_p, ctypes.c_int64
GEMM = ctypes.CFUNCTYPE(None, L, L, L, P, L, P, L, P, L, ctypes.c_int32, P)
GEMM_PB = ctypes.CFUNCTYPE(None, L, L, L, P, L, P, P, L, ctypes.c_int32, P)
PACK_B = ctypes.CFUNCTYPE(None, L, L, P, L, P)


def restricted(host: HostTarget, level: str) -> HostTarget:
    """``host`` with its AVX-512 ("avx2") or all AVX/FMA ("sse") features switched off."""
    if level == "avx2":
        drop, cpu = ("avx512", "avx10", "amx", "evex512"), "haswell"
    else:
        drop, cpu = ("avx", "amx", "evex512", "fma", "f16c", "vaes", "vpclmulqdq", "xop"), "x86-64"
    feats = ",".join("-" + f[1:] if f.startswith("+") and f[1:].startswith(drop) else f
                     for f in host.features.split(","))
    return HostTarget(host.triple, cpu, feats)


HOSTS = {"native": NATIVE}
if NATIVE.has("avx512f") and NATIVE.has("avx2") and NATIVE.has("fma"):
    HOSTS["avx2"] = restricted(NATIVE, "avx2")
if NATIVE.has("avx2") and NATIVE.has("sse4.2"):
    HOSTS["sse"] = restricted(NATIVE, "sse")


def _name(kind, dtype, ta=False, tb=False):
    return f"{kind}_{dtype}_{int(ta)}{int(tb)}"


class Kernels:
    def __init__(self, host: HostTarget):
        self.host = host
        m = ir.Module(name="test_gemm")
        for dt in DTYPES:
            for ta in (False, True):
                for tb in (False, True):
                    gemm.define_gemm(m, _name("gemm", dt, ta, tb), dt, ta, tb, host)
                gemm.define_gemm_packed_b(m, _name("gemm_pb", dt, ta), dt, ta, host)
            for tb in (False, True):
                gemm.define_pack_b(m, _name("pack_b", dt, False, tb), dt, tb, host)
        self.lib = compile_module(m, cache=None, host=host)

    def fn(self, proto, kind, dtype, ta=False, tb=False):
        return proto(self.lib.address(_name(kind, dtype, ta, tb)))


@pytest.fixture(scope="module", params=sorted(HOSTS))
def kernels(request):
    return Kernels(HOSTS[request.param])


def _strided(rng, rows, cols, dtype, pad):
    """A ``rows x cols`` view with row stride ``cols + pad`` (its leading dimension)."""
    full = rng.standard_normal((rows, cols + pad)).astype(dtype)
    return full[:, :cols], full


def _ld(view):
    return max(view.strides[0] // view.itemsize, 1)


def _guarded(n, dtype, fill=np.nan, offset=0):
    """A buffer of ``n`` elements starting ``offset`` elements into an array, and
    the sentinel elements after it."""
    buf = np.full(offset + n + GUARD, fill, dtype)
    return buf[offset:], buf[offset + n:]


SHAPES = [
    (0, 5, 7), (5, 0, 7), (5, 7, 0), (0, 0, 0), (1, 1, 1), (1, 17, 1), (7, 1, 33), (2, 3, 4),
    (17, 33, 7), (33, 100, 17), (8, 48, 256), (9, 49, 257), (31, 47, 255), (32, 512, 128),
    (33, 130, 64), (100, 48, 300), (64, 300, 129), (3, 5, 600), (400, 20, 10), (2, 4200, 3),
    (250, 70, 520), (4, 32, 32), (6, 96, 300), (1, 64, 2), (3, 130, 513),
]


def _check(c, ref, bound, dtype, what):
    err = np.abs(c.astype(np.float64) - ref)
    scale = TOL[dtype] * (bound + 1e-30)
    bad = err > scale
    assert not bad.any(), (f"{what}: max error {err.max():.3g} (allowed {scale[bad].min():.3g}) "
                           f"at {np.argwhere(bad)[0].tolist()}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
def test_gemm_matches_numpy(kernels, dtype, ta, tb):
    host = kernels.host
    rng = np.random.default_rng(DTYPES.index(dtype) * 4 + 2 * ta + tb)
    run = kernels.fn(GEMM, "gemm", dtype, ta, tb)
    run_pb = kernels.fn(GEMM_PB, "gemm_pb", dtype, ta)
    pack = kernels.fn(PACK_B, "pack_b", dtype, False, tb)
    for i, (M, N, K) in enumerate(SHAPES):
        pads = (i % 3, (i * 7) % 5, (i * 3) % 4)
        a, _ = _strided(rng, K, M, dtype, pads[0]) if ta else _strided(rng, M, K, dtype, pads[0])
        b, _ = _strided(rng, N, K, dtype, pads[1]) if tb else _strided(rng, K, N, dtype, pads[1])
        opa, opb = (a.T if ta else a).astype(np.float64), (b.T if tb else b).astype(np.float64)
        ref = opa @ opb
        bound = np.abs(opa) @ np.abs(opb)
        wn = gemm.workspace_elems(M, N, K, dtype, host)
        pn = gemm.packed_b_elems(K, N, dtype, host)
        packed, pguard = _guarded(pn, dtype)
        pack(K, N, b.ctypes.data, _ld(b), packed.ctypes.data)
        assert np.isnan(pguard).all(), f"pack_b wrote past packed_b_elems for {(K, N)}"
        for accumulate in (0, 1):
            c0, cfull = _strided(rng, M, N, dtype, pads[2])
            if not accumulate:
                c0[...] = np.nan          # C is write-only then
            outside = cfull[:, N:].copy()
            results = []
            for variant in ("gemm", "gemm_pb"):
                cf = cfull.copy()
                c = cf[:, :N]
                work, wguard = _guarded(wn, dtype, fill=np.float32(1e30), offset=(i + accumulate) % 5)
                if variant == "gemm":
                    run(M, N, K, a.ctypes.data, _ld(a), b.ctypes.data, _ld(b), c.ctypes.data, _ld(c),
                        accumulate, work.ctypes.data)
                else:
                    run_pb(M, N, K, a.ctypes.data, _ld(a), packed.ctypes.data, c.ctypes.data, _ld(c),
                           accumulate, work.ctypes.data)
                what = f"{variant} {dtype} ta={ta} tb={tb} M,N,K={M, N, K} acc={accumulate}"
                assert (wguard == np.float32(1e30)).all(), f"{what}: wrote past workspace_elems"
                np.testing.assert_array_equal(cf[:, N:], outside, err_msg=f"{what}: wrote past N")
                if accumulate:
                    _check(c, ref + c0, bound + np.abs(c0), dtype, what)
                else:
                    _check(c, ref, bound, dtype, what)
                results.append(c.copy())
            np.testing.assert_array_equal(results[0], results[1], err_msg="packed B differs from unpacked")


@pytest.mark.parametrize("dtype", DTYPES)
def test_k_zero_overwrites_or_keeps(kernels, dtype):
    run = kernels.fn(GEMM, "gemm", dtype)
    a = np.ones((3, 1), dtype)
    for accumulate in (0, 1):
        c = np.full((3, 4), 7.0, dtype)
        run(3, 4, 0, a.ctypes.data, 1, a.ctypes.data, 4, c.ctypes.data, 4, accumulate, None)
        assert (c == (7.0 if accumulate else 0.0)).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_packed_b_reused_across_calls(kernels, dtype):
    """The recurrent pattern: pack W once, then many products with a changing h."""
    host = kernels.host
    rng = np.random.default_rng(1)
    M, N, K = 32, 512, 128
    w = rng.standard_normal((K, N)).astype(dtype)
    packed = np.empty(gemm.packed_b_elems(K, N, dtype, host), dtype)
    kernels.fn(PACK_B, "pack_b", dtype)(K, N, w.ctypes.data, N, packed.ctypes.data)
    run_pb = kernels.fn(GEMM_PB, "gemm_pb", dtype)
    work = np.empty(gemm.workspace_elems(M, N, K, dtype, host), dtype)
    c = np.zeros((M, N), dtype)
    expect = np.zeros((M, N))
    for _ in range(3):
        h = rng.standard_normal((M, K)).astype(dtype)
        run_pb(M, N, K, h.ctypes.data, K, packed.ctypes.data, c.ctypes.data, N, 1, work.ctypes.data)
        expect += h.astype(np.float64) @ w.astype(np.float64)
    _check(c, expect, 3 * np.abs(h).max() * np.abs(w).sum(0) + np.abs(expect), dtype, "reuse")


def test_sizes_are_consistent():
    for dt in DTYPES:
        assert gemm.workspace_elems(0, 10, 10, dt, NATIVE) == 0
        assert gemm.packed_b_elems(10, 0, dt, NATIVE) == 0
        bl = gemm.Blocking.for_host(dt, NATIVE)
        assert gemm.packed_b_elems(3, bl.nr + 1, dt, NATIVE) == 3 * 2 * bl.nr
        # the workspace stops growing once the blocks are full
        big = gemm.workspace_elems(10**6, 10**6, 10**6, dt, NATIVE)
        assert big == gemm.workspace_elems(2 * 10**6, 2 * 10**6, 2 * 10**6, dt, NATIVE)


def test_blocking_follows_host_features():
    assert gemm.Blocking.for_host("float32", NATIVE).v == (16 if NATIVE.has("avx512f") else
                                                           8 if NATIVE.has("avx2") else 4)
    if "avx2" in HOSTS:
        assert gemm.Blocking.for_host("float32", HOSTS["avx2"]).v == 8
        assert gemm.Blocking.for_host("float64", HOSTS["avx2"]).v == 4
    if "sse" in HOSTS:
        assert gemm.Blocking.for_host("float32", HOSTS["sse"]).v == 4
    with pytest.raises(ValueError):
        gemm.Blocking.for_host("int32", NATIVE)


def _packed_fma_registers(host: HostTarget) -> set[str]:
    m = ir.Module(name="asm_check")
    gemm.define_gemm_packed_b(m, "g", "float32", False, host)
    asm = compile_module(m, cache=None, host=host).asm()
    return set(re.findall(r"vfmadd\d+ps\s+[^\n]*%(xmm|ymm|zmm)", asm))


@pytest.mark.skipif(not NATIVE.has("avx2") or not NATIVE.has("fma"),
                    reason="host has no AVX2+FMA: no packed 256/512-bit FMA to look for")
def test_float32_kernel_uses_wide_packed_fma():
    regs = _packed_fma_registers(NATIVE)
    assert ("zmm" if NATIVE.has("avx512f") else "ymm") in regs, regs
    if "avx2" in HOSTS:           # the AVX2 build of the same kernel: ymm, no zmm
        regs = _packed_fma_registers(HOSTS["avx2"])
        assert "ymm" in regs and "zmm" not in regs, regs
