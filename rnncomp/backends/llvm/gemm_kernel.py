"""Building blocks of the generated matrix products (see :mod:`.gemm`).

* :class:`Blocking` -- register and cache blocking chosen from the host's vector
  features (AVX-512 -> 512-bit vectors, AVX2 -> 256, else 128).
* :func:`define_microkernel` -- the ``MR x nrv*V`` register-blocked kernel:
  ``MR * nrv`` vector accumulators, one broadcast of A and ``nrv`` vector loads
  of B per ``k``, fused with ``llvm.fma``; whole tiles are stored straight to C,
  ragged ones through a stack tile.  Its ``copy_b`` variant also stores the B
  vectors it loads, packing B on the fly.
* :func:`define_packer` -- copies a block of A or B into panels: for every ``R``
  consecutive rows (of op(A)) or columns (of op(B)), ``kc`` groups of ``R``
  contiguous elements, zero-padded past the edge.  The micro-kernel reads A
  panels with stride ``MR`` and B panels with stride ``NR`` per ``k``.

All are internal functions of the module, shared by every product of the same
dtype and blocking in it.
"""
from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

from .builder import I1, I32, I64, alloca_once, float_type, for_range, gep

VOID = ir.VoidType()


@dataclass(frozen=True)
class Blocking:
    """Register (``mr x nr``, ``nr = nrv * v``) and cache (``kc``, ``mc``, ``nc``) blocking."""

    dtype: str
    v: int          # elements per vector register
    mr: int         # rows of C per micro-tile (broadcasts of A)
    nrv: int        # vectors of C per micro-tile row
    kc: int         # depth of a packed block
    mc: int         # rows of a packed A block (mc*kc elements stay in L2)
    nc: int         # columns of a packed B block
    unroll: int     # k-loop unroll of the micro-kernel
    fma: bool       # host has fused multiply-add
    direct_m: int   # B (unpacked, not transposed) is read in place, unpacked, when M <= direct_m

    @property
    def nr(self) -> int:
        return self.nrv * self.v

    @property
    def esize(self) -> int:
        return 4 if self.dtype == "float32" else 8

    @classmethod
    def for_host(cls, dtype: str, host) -> "Blocking":
        float_type(dtype, "gemm: dtype")  # refuses any other
        esize = 4 if dtype == "float32" else 8
        fma = host.has("fma") or host.has("avx512f")
        if host.has("avx512f"):      # 32 zmm: 8x3 accumulators + 3 B vectors + broadcast
            v, mr, nrv, l2_bytes = 64 // esize, 8, 3, 384 << 10
        elif host.has("avx2"):       # 16 ymm: 4x3 accumulators + 3 B vectors + broadcast
            v, mr, nrv, l2_bytes = 32 // esize, 4, 3, 160 << 10
        else:                        # 16 xmm
            v, mr, nrv, l2_bytes = 16 // esize, 4, 2, 160 << 10
        nr = v * nrv
        # Measured on Sapphire Rapids (48 KiB L1d, 2 MiB L2): kc = 256 with the B
        # micro-panel streaming from L2 is as fast as L1-sized micro-panels, and
        # longer k loops amortise the C tile updates better.  On Zen 4 (32 KiB L1d,
        # 1 MiB L2, benchmarks/bench_gemm.py --cpu-time) kc = 512 (mc 192) ran the
        # LSTM H=512 products of depth >= 512 3-8% faster than kc = 256 (mc 384), and
        # kc = 128 or 192 (L1-sized B micro-panels) 2-9% slower.
        kc = 512 if host.has("avx512f") else 256
        mc = max(mr, l2_bytes // (kc * esize) // mr * mr)
        nc = max(nr, 4096 // nr * nr)
        return cls(dtype, v, mr, nrv, kc, mc, nc, 4, fma, 4 * mr)


def declare(module: ir.Module, name: str, fnty: ir.FunctionType) -> ir.Function:
    """The module's function ``name``, declared with ``fnty`` if absent."""
    fn = module.globals.get(name)
    return fn if fn is not None else ir.Function(module, fnty, name)


def imin(b: ir.IRBuilder, x, y):
    return b.select(b.icmp_signed("<", x, y), x, y)


def splat(b: ir.IRBuilder, x, n: int):
    vt = ir.VectorType(x.type, n)
    one = b.insert_element(ir.Constant(vt, ir.Undefined), x, I32(0))
    return b.shuffle_vector(one, ir.Constant(vt, ir.Undefined), ir.Constant(ir.VectorType(I32, n), [0] * n))


def load_vec(b: ir.IRBuilder, ptr, n: int, esize: int):
    """Unaligned load of ``n`` elements at ``ptr``."""
    vt = ir.VectorType(ptr.type.pointee, n)
    return b.load(b.bitcast(ptr, vt.as_pointer()), align=esize)


def store_vec(b: ir.IRBuilder, val, ptr, esize: int):
    b.store(val, b.bitcast(ptr, val.type.as_pointer()), align=esize)


def _masked(module: ir.Module, op: str, vt: ir.VectorType) -> ir.Function:
    """``llvm.masked.load`` / ``llvm.masked.store`` for vectors of type ``vt``."""
    mt = ir.VectorType(I1, vt.count)
    suffix = f"v{vt.count}{'f32' if isinstance(vt.element, ir.FloatType) else 'f64'}.p0"
    if op == "load":
        return declare(module, f"llvm.masked.load.{suffix}", ir.FunctionType(vt, [vt.as_pointer(), I32, mt, vt]))
    return declare(module, f"llvm.masked.store.{suffix}", ir.FunctionType(VOID, [vt, vt.as_pointer(), I32, mt]))


def lane_masks(b: ir.IRBuilder, n, nvec: int, V: int) -> list:
    """For vectors ``j < nvec`` of ``V`` lanes: the lanes ``j*V + l < n``."""
    n32 = splat(b, b.trunc(n, I32), V)
    return [b.icmp_signed("<", ir.Constant(ir.VectorType(I32, V), [j * V + lane for lane in range(V)]), n32)
            for j in range(nvec)]


def define_microkernel(module: ir.Module, bl: Blocking, nrv: int, copy_b: bool = False,
                       rows: int | None = None, strided_a: bool = False) -> ir.Function:
    """``uk(kc, a, aks, ais, b, bs, c, ldc, mr, nr, acc, bcopy)`` for tiles ``rows x nrv*V``
    (``rows`` defaults to MR; ``mr <= rows``, ``nr <= nrv*V``):
    ``C[:mr, :nr] (+)= sum_k A(i, k) * b[k*bs + j]`` (``+=`` when ``acc``), where A(i, k)
    is ``a[k*MR + i]`` (a packed panel; ``aks``, ``ais`` unused) or, ``strided_a``,
    ``a[k*aks + i*ais]`` read in place (few rows: packing A would cost more than it saves).
    ``copy_b``: also write the B rows it loads to ``bcopy[k*NR + j]`` -- packing B on the
    fly, from registers.  A tile that is not whole is stored with masked vector stores."""
    T = float_type(bl.dtype)
    P = T.as_pointer()
    MR, NRV, V, U, E = bl.mr, nrv, bl.v, bl.unroll, bl.esize
    R = rows or MR
    NR = NRV * V
    vt = ir.VectorType(T, V)
    name = (f"rnncomp.gemm.uk.{bl.dtype}.{R}x{NR}.v{V}{'' if bl.fma else '.nofma'}"
            f"{'.copyb' if copy_b else ''}{'.sa' if strided_a else ''}")
    if name in module.globals:
        return module.globals[name]
    fn = ir.Function(module, ir.FunctionType(VOID, [I64, P, I64, I64, P, I64, P, I64, I64, I64, I1, P]), name)
    fn.linkage = "internal"
    # one copy per module, called from every tile loop: inlined into each call site, the
    # kernels doubled the optimisation time of a cell for no measurable gain
    fn.attributes.add("noinline")
    for i in (1, 4, 6, 11):
        fn.args[i].add_attribute("noalias")
    kc, a, aks, ais, bp, bs, c, ldc, mr, nr, acc, bcopy = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    fma = declare(module, f"llvm.fma.v{V}{'f32' if E == 4 else 'f64'}", ir.FunctionType(vt, [vt, vt, vt]))
    slots = [[alloca_once(b, vt, f"acc{i}_{j}") for j in range(NRV)] for i in range(R)]
    zero = ir.Constant(vt, [ir.Constant(T, 0.0)] * V)
    for row in slots:
        for s in row:
            b.store(zero, s)
    a_rows = [b.mul(I64(i), ais) for i in range(R)] if strided_a else [I64(i) for i in range(R)]

    def steps(k0, count):
        accs = [[b.load(s) for s in row] for row in slots]
        for u in range(count):
            k = b.add(k0, I64(u)) if u else k0
            brow = gep(b, bp, b.mul(k, bs))
            bv = [load_vec(b, gep(b, brow, I64(j * V)), V, E) for j in range(NRV)]
            if copy_b:
                crow = gep(b, bcopy, b.mul(k, I64(NR)))
                for j in range(NRV):
                    store_vec(b, bv[j], gep(b, crow, I64(j * V)), E)
            arow = gep(b, a, b.mul(k, aks if strided_a else I64(MR)))
            for i in range(R):
                av = splat(b, b.load(gep(b, arow, a_rows[i])), V)
                for j in range(NRV):
                    if bl.fma:
                        accs[i][j] = b.call(fma, [av, bv[j], accs[i][j]])
                    else:
                        accs[i][j] = b.fadd(b.fmul(av, bv[j]), accs[i][j])
        for row, srow in zip(accs, slots):
            for val, s in zip(row, srow):
                b.store(val, s)

    kmain = b.and_(kc, I64(-U))
    with for_range(b, kmain, step=I64(U), name="k") as k:
        steps(k, U)
    with for_range(b, kc, start=kmain, name="kr") as k:
        steps(k, 1)

    full = b.and_(b.icmp_signed("==", mr, I64(R)), b.icmp_signed("==", nr, I64(NR)))
    masks = None
    with b.if_else(full, likely=True) as (then, otherwise):
        with then:                                   # whole tile: vector stores into C
            _store_rows(b, slots, c, ldc, acc, E, None, None)
        with otherwise:                              # edge tile: rows < mr, masked lanes
            masks = lane_masks(b, nr, NRV, V)
            _store_rows(b, slots, c, ldc, acc, E, mr, masks)
    b.ret_void()
    return fn


def _store_rows(b, slots, c, ldc, acc, E, mr, masks):
    """C rows (+)= the accumulators; ``mr``/``masks`` given: only rows < mr, masked lanes."""
    module = b.module
    with b.if_else(acc) as (add, overwrite):
        for branch, accumulate in ((add, True), (overwrite, False)):
            with branch:
                for i, row in enumerate(slots):
                    def one_row(i=i, row=row):
                        crow = gep(b, c, b.mul(I64(i), ldc))
                        for j, s in enumerate(row):
                            val = b.load(s)
                            vt = val.type
                            p = gep(b, crow, I64(j * vt.count))
                            if masks is None:
                                if accumulate:
                                    val = b.fadd(val, load_vec(b, p, vt.count, E))
                                store_vec(b, val, p, E)
                                continue
                            vp = b.bitcast(p, vt.as_pointer())
                            if accumulate:
                                zero = ir.Constant(vt, [ir.Constant(vt.element, 0.0)] * vt.count)
                                val = b.fadd(val, b.call(_masked(module, "load", vt), [vp, I32(E), masks[j], zero]))
                            b.call(_masked(module, "store", vt), [val, vp, I32(E), masks[j]])
                    if mr is None:
                        one_row()
                    else:
                        with b.if_then(b.icmp_signed(">", mr, I64(i))):
                            one_row()


def transpose(b: ir.IRBuilder, rows: list) -> list:
    """Transpose ``n`` vectors of ``n`` elements (``n`` a power of two): log2(n)
    rounds of interleaving row ``i`` with row ``i + n/2``."""
    n = len(rows)
    half = n // 2
    lo = ir.Constant(ir.VectorType(I32, n), [x for i in range(half) for x in (i, n + i)])
    hi = ir.Constant(ir.VectorType(I32, n), [x for i in range(half, n) for x in (i, n + i)])
    for _ in range(n.bit_length() - 1):
        rows = [b.shuffle_vector(rows[i // 2], rows[i // 2 + half], hi if i % 2 else lo) for i in range(n)]
    return rows


def define_packer(module: ir.Module, bl: Blocking, R: int, contiguous: bool) -> ir.Function:
    """``pack(n, kc, src, stride, out)``: element ``(r, k)`` of the source, at
    ``src[r + k*stride]`` (``contiguous``) or ``src[r*stride + k]``, goes to
    ``out[(r // R)*kc*R + k*R + r % R]``; rows past ``n`` in the last panel are 0."""
    T = float_type(bl.dtype)
    P = T.as_pointer()
    name = f"rnncomp.gemm.pack.{bl.dtype}.{R}.{'c' if contiguous else 's'}"
    if name in module.globals:
        return module.globals[name]
    fn = ir.Function(module, ir.FunctionType(VOID, [I64, I64, P, I64, P]), name)
    fn.linkage = "internal"
    for arg in fn.args[2], fn.args[4]:
        arg.add_attribute("noalias")
    n, kc, src, stride, out = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    E = bl.esize
    vt = ir.VectorType(T, R)
    zero = ir.Constant(T, 0.0)

    def elem_ptr(base, r, k):
        return gep(b, base, b.add(r, b.mul(k, stride)) if contiguous else b.add(b.mul(r, stride), k))

    nfull = b.sub(n, b.srem(n, I64(R)))
    if contiguous:       # kb source rows at a time; each panel gets whole cache lines
        kb = max(1, 256 // (R * E))
        with for_range(b, kc, step=I64(kb), name="pk0") as k0:
            kend = imin(b, b.add(k0, I64(kb)), kc)
            with for_range(b, nfull, step=I64(R), name="p") as p:
                dst = gep(b, out, b.mul(p, kc))
                with for_range(b, kend, start=k0, name="pk") as k:
                    store_vec(b, load_vec(b, elem_ptr(src, p, k), R, E), gep(b, dst, b.mul(k, I64(R))), E)
    else:                # panel by panel: R sequential streams, S x S blocks transposed in registers
        S = min(16, R & -R)
        with for_range(b, nfull, step=I64(R), name="p") as p:
            base, dst = gep(b, src, b.mul(p, stride)), gep(b, out, b.mul(p, kc))
            kfull = b.sub(kc, b.srem(kc, I64(S)))
            with for_range(b, kfull, step=I64(S), name="pt") as k0:
                for r0 in range(0, R, S):
                    rows = [load_vec(b, elem_ptr(base, I64(r0 + r), k0), S, E) for r in range(S)]
                    for j, col in enumerate(transpose(b, rows)):
                        store_vec(b, col, gep(b, dst, b.add(b.mul(b.add(k0, I64(j)), I64(R)), I64(r0))), E)
            with for_range(b, kc, start=kfull, name="pk") as k:
                val = ir.Constant(vt, ir.Undefined)
                for r in range(R):
                    val = b.insert_element(val, b.load(elem_ptr(base, I64(r), k)), I32(r))
                store_vec(b, val, gep(b, dst, b.mul(k, I64(R))), E)
    with b.if_then(b.icmp_signed("<", nfull, n)):   # ragged last panel, zero-padded
        rv = b.sub(n, nfull)
        base = gep(b, src, nfull if contiguous else b.mul(nfull, stride))
        dst = gep(b, out, b.mul(nfull, kc))
        with for_range(b, kc, name="pe") as k:
            val = ir.Constant(vt, ir.Undefined)
            for r in range(R):
                inside = b.icmp_signed("<", I64(r), rv)
                rr = b.select(inside, I64(r), b.sub(rv, I64(1)))
                x = b.select(inside, b.load(elem_ptr(base, rr, k)), zero)
                val = b.insert_element(val, x, I32(r))
            store_vec(b, val, gep(b, dst, b.mul(k, I64(R))), E)
    b.ret_void()
    return fn
