"""Generated matrix products: ``C[M,N] = op(A)[M,K] @ op(B)[K,N] (+ C)``, row-major.

Every product is built with the llvmlite builder for a given host and compiled
with the rest of its module by :func:`.jit.compile_module`; it runs on one
thread (callers split M or N across threads themselves).

Blocking (after Goto & van de Geijn / BLIS), with ``V`` elements per vector
register (AVX-512: 16 float32 / 8 float64, AVX2: 8 / 4, otherwise 4 / 2)::

    for jc in 0..N step NC:                 # NC = 4080 (float32, AVX-512)
      for pc in 0..K step KC:               # KC = 512 (AVX-512), 256; C += from the second block on
        [pack op(B)[pc:+kc, jc:+nc] into NR-column panels]     (see below)
        for ic in 0..M step MC:             # MC = 192: the A block (MC x KC) stays in L2
          pack op(A)[ic:+mc, pc:+kc] into MR-row panels
          for jr in 0..nc step NR:          # B micro-panel (KC x NR): L1 / L2
            for ir in 0..mc step MR:
              micro-kernel: C[ir:+MR, jr:+NR] (+)= A panel @ B micro-panel

K and M are cut into even blocks of at most KC and MC (no thin last block).

The micro-kernel (:func:`.gemm_kernel.define_microkernel`) keeps ``MR x NR/V``
vector accumulators in registers (AVX-512: 8 x 3 zmm, i.e. 8 x 48 float32;
AVX2: 4 x 3 ymm; SSE: 4 x 2 xmm); per ``k`` it loads ``NR/V`` vectors of B,
broadcasts ``MR`` elements of A and issues ``MR*NR/V`` ``llvm.fma`` calls, the
k loop unrolled 4 times.  Packed panels are zero-padded, so a ragged tile still
runs the register kernel and only its store is narrowed (through a stack tile);
a ragged last panel of columns runs a kernel only ``ceil(nr/V)`` vectors wide.

Packing B costs as much as the whole product when M is small, so B is packed
only where that pays:

* :func:`define_pack_b` packs all of op(B) once (recurrent weights: once per
  sequence) into the panel layout that :func:`define_gemm_packed_b` reads;
* an unpacked, non-transposed B is read in place (row stride ``ldb``) by every
  tile when ``M <= 4*MR`` (per-time-step products), and otherwise by the first
  row of tiles, whose kernel also stores the B vectors it loaded into the packed
  panel the other tiles then read (packing from registers, no extra pass); only
  a ragged last panel goes through the packing routine;
* a transposed B is packed per block, as is A always (row-major sources by
  ``S x S`` register transposes, column-major ones by plain vector copies).

``work`` (:func:`workspace_elems`) holds the packed A block followed by the
packed B block, both moved up to :data:`BUFFER_ALIGN`-byte boundaries.  Any
alignment of the arguments works; an aligned packed B (and B, C rows) is
fastest.  Measured on one Sapphire Rapids core (``benchmarks/bench_gemm.py``):
1.4-1.7x numpy/OpenBLAS on the per-step shapes (32 x 512 x 128 with packed B:
~170-180 GFLOP/s), 1.1-1.25x on the input projection and gradient shapes,
parity at 1024^3.

    >>> from llvmlite import ir
    >>> from rnncomp.backends.llvm.jit import HostTarget, compile_module
    >>> import ctypes, numpy as np
    >>> host = HostTarget.detect(); m = ir.Module(name="g")
    >>> _ = define_gemm(m, "mm", "float64", False, False, host)
    >>> lib = compile_module(m, cache=None)
    >>> a, b = np.arange(6.0).reshape(2, 3), np.ones((3, 2)); c = np.empty((2, 2))
    >>> w = np.empty(workspace_elems(2, 2, 3, "float64", host))
    >>> P, L = ctypes.c_void_p, ctypes.c_int64
    >>> fn = ctypes.CFUNCTYPE(None, L, L, L, P, L, P, L, P, L, ctypes.c_int32, P)(lib.address("mm"))
    >>> fn(2, 2, 3, a.ctypes.data, 3, b.ctypes.data, 2, c.ctypes.data, 2, 0, w.ctypes.data)
    >>> c.tolist()
    [[3.0, 3.0], [12.0, 12.0]]
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir

from .builder import I1, I32, I64, float_type, for_range, gep, parallel_loop_md
from .gemm_kernel import VOID, Blocking, declare, define_microkernel, define_packer, imin

__all__ = ["define_gemm", "define_gemm_packed_b", "define_pack_b", "workspace_elems",
           "packed_b_elems", "aligned_empty", "Blocking", "BUFFER_ALIGN"]

#: Byte alignment at which vector loads and stores never straddle cache lines.
#: The kernels align their workspace themselves; a ``packedB`` (and B, C rows)
#: at any alignment is correct, but a misaligned packed B costs ~10-15% on AVX-512.
BUFFER_ALIGN = 64


def aligned_empty(n: int, dtype) -> np.ndarray:
    """``np.empty(n, dtype)`` starting on a :data:`BUFFER_ALIGN`-byte boundary (numpy only
    promises 16 bytes): packed weights and C rows that start mid cache line cost ~10%."""
    size = np.dtype(dtype).itemsize
    raw = np.empty(n * size + BUFFER_ALIGN, dtype=np.uint8)
    off = -raw.ctypes.data % BUFFER_ALIGN
    return raw[off:off + n * size].view(dtype)


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def _a_block_elems(M: int, K: int, bl: Blocking) -> int:
    return _round_up(_round_up(min(M, bl.mc), bl.mr) * min(K, bl.kc), 16)


def workspace_elems(M: int, N: int, K: int, dtype: str, host) -> int:
    """Elements of ``work`` that a product of this size needs (packed A and B blocks)."""
    bl = Blocking.for_host(dtype, host)
    if M <= 0 or N <= 0 or K <= 0:
        return 0
    return (_a_block_elems(M, K, bl) + _round_up(min(N, bl.nc), bl.nr) * min(K, bl.kc)
            + 2 * BUFFER_ALIGN // bl.esize)


def packed_b_elems(K: int, N: int, dtype: str, host) -> int:
    """Elements of the buffer that :func:`define_pack_b` fills for a ``K x N`` op(B)."""
    bl = Blocking.for_host(dtype, host)
    return _round_up(max(N, 0), bl.nr) * max(K, 0)


def define_pack_b(module: ir.Module, name: str, dtype: str, trans_b: bool, host) -> ir.Function:
    """``void name(i64 K, i64 N, T* B, i64 ldb, T* packed)``: pack op(B) (K x N) whole."""
    bl = Blocking.for_host(dtype, host)
    P = float_type(dtype).as_pointer()
    fn = ir.Function(module, ir.FunctionType(VOID, [I64, I64, P, I64, P]), name)
    K, N, B, ldb, out = fn.args
    for arg, nm in zip(fn.args, ("K", "N", "B", "ldb", "packed")):
        arg.name = nm
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    with b.if_then(b.and_(b.icmp_signed(">", K, I64(0)), b.icmp_signed(">", N, I64(0)))):
        b.call(define_packer(module, bl, bl.nr, not trans_b), [N, K, B, ldb, out])
    b.ret_void()
    return fn


def define_gemm(module: ir.Module, name: str, dtype: str, trans_a: bool, trans_b: bool,
                host) -> ir.Function:
    """``void name(i64 M, i64 N, i64 K, T* A, i64 lda, T* B, i64 ldb, T* C, i64 ldc,
    i32 accumulate, T* work)``."""
    return _define(module, name, dtype, trans_a, host, trans_b=trans_b)


def define_gemm_packed_b(module: ir.Module, name: str, dtype: str, trans_a: bool,
                         host) -> ir.Function:
    """``void name(i64 M, i64 N, i64 K, T* A, i64 lda, T* packedB, T* C, i64 ldc,
    i32 accumulate, T* work)`` with ``packedB`` from :func:`define_pack_b`."""
    return _define(module, name, dtype, trans_a, host, trans_b=None)


def _align(b: ir.IRBuilder, ptr, esize: int):
    """``ptr`` moved up to the next BUFFER_ALIGN-byte boundary (by whole elements)."""
    skip = b.and_(b.neg(b.ptrtoint(ptr, I64)), I64(BUFFER_ALIGN - 1))
    return gep(b, ptr, b.udiv(skip, I64(esize)))


def _balanced(b: ir.IRBuilder, total, block: int, multiple: int):
    """A step <= ``block`` (a multiple of ``multiple``) that cuts ``total`` into as
    few, and as even, pieces as ``block`` does: no thin last block."""
    pieces = b.sdiv(b.add(total, I64(block - 1)), I64(block))
    step = b.sdiv(b.add(total, b.sub(pieces, I64(1))), pieces)
    return b.mul(b.sdiv(b.add(step, I64(multiple - 1)), I64(multiple)), I64(multiple))


def _origin(b: ir.IRBuilder, base, r0, k0, stride, contiguous: bool):
    """Address of element (r0, k0) of a panel source (see ``define_packer``)."""
    off = b.add(r0, b.mul(k0, stride)) if contiguous else b.add(b.mul(r0, stride), k0)
    return gep(b, base, off)


#: Products of at most this depth skip packing: each row of C is updated by K vector passes.
SMALL_K = 4


def _rank_k(b, bl, M, N, K, A, lda, trans_a, B, ldb, C, ldc, acc_in):
    """``C[i, :] (+)= sum_k op(A)[i, k] * B[k, :]`` for ``1 <= K <= SMALL_K``: one vectorised
    pass over each row of C per depth, in the micro-kernel's order (``s = 0; s = fma(a_k,
    b_k, s)`` for k = 0, 1, ...; then ``C = s (+ C)``), so both paths round alike."""
    T = float_type(bl.dtype)
    fma = declare(b.module, f"llvm.fma.{'f32' if bl.esize == 4 else 'f64'}", ir.FunctionType(T, [T, T, T]))
    fn = b.function
    done = fn.append_basic_block("rank.done")
    sw = b.switch(K, done)
    for depth in range(1, SMALL_K + 1):
        b.position_at_end(fn.append_basic_block(f"rank.k{depth}"))
        sw.add_case(I64(depth), b.block)
        with for_range(b, M, name="ri") as i:
            row = gep(b, C, b.mul(i, ldc))
            a = [b.load(gep(b, A, b.add(b.mul(I64(k), lda), i) if trans_a else b.add(b.mul(i, lda), I64(k))))
                 for k in range(depth)]
            brows = [gep(b, B, b.mul(I64(k), ldb)) for k in range(depth)]
            group, loop_id = parallel_loop_md(b.module)    # C rows and B rows do not overlap
            with for_range(b, N, name="rj", loop_md=loop_id) as j:
                tagged = []
                s = ir.Constant(T, 0.0)
                for k in range(depth):
                    bv = b.load(gep(b, brows[k], j))
                    tagged.append(bv)
                    s = b.call(fma, [a[k], bv, s]) if bl.fma else b.fadd(b.fmul(a[k], bv), s)
                p = gep(b, row, j)
                old = b.load(p)
                tagged += [old, b.store(b.select(acc_in, b.fadd(s, old), s), p)]
                for inst in tagged:
                    inst.set_metadata("llvm.access.group", group)
        b.branch(done)
    b.position_at_end(done)


def _define(module, name, dtype, trans_a, host, trans_b):
    """The driver around the micro-kernels; ``trans_b`` None: B comes packed."""
    bl = Blocking.for_host(dtype, host)
    P = float_type(dtype).as_pointer()
    packed = trans_b is None
    names = ("M", "N", "K", "A", "lda") + (("packedB",) if packed else ("B", "ldb")) + (
        "C", "ldc", "accumulate", "work")
    types = {"A": P, "B": P, "packedB": P, "C": P, "work": P, "accumulate": I32}
    fn = ir.Function(module, ir.FunctionType(VOID, [types.get(n, I64) for n in names]), name)
    args = dict(zip(names, fn.args))
    for nm, arg in args.items():
        arg.name = nm
    M, N, K, A, lda, C, ldc, work = (args[n] for n in ("M", "N", "K", "A", "lda", "C", "ldc", "work"))
    B, ldb = args.get("B"), args.get("ldb")
    MR, NR = bl.mr, bl.nr
    fused = not packed and not trans_b      # B can be read in place (and packed on the fly)
    ukernels = [define_microkernel(module, bl, w) for w in range(1, bl.nrv + 1)]
    # fewer rows than MR (one sample, a small batch): kernels of 4 and 1 rows read A in place
    # (a 2-row kernel too cost 0.1 s more compile time per cell for little gain)
    few_rows = [r for r in (4, 1) if r < MR]
    rkernels = {r: [define_microkernel(module, bl, w, rows=r, strided_a=True) for w in range(1, bl.nrv + 1)]
                for r in few_rows}
    uk_copy_b = define_microkernel(module, bl, bl.nrv, copy_b=True) if fused else None
    pack_a = define_packer(module, bl, MR, trans_a)
    pack_b = None if packed else define_packer(module, bl, NR, not trans_b)

    b = ir.IRBuilder(fn.append_basic_block("entry"))
    acc_in = b.icmp_signed("!=", args["accumulate"], I32(0))
    with b.if_then(b.or_(b.icmp_signed("<=", M, I64(0)), b.icmp_signed("<=", N, I64(0))), likely=False):
        b.ret_void()
    with b.if_then(b.icmp_signed("<=", K, I64(0)), likely=False):   # C = 0 (+ C)
        with b.if_then(b.not_(acc_in)):
            with for_range(b, M, name="zi") as i:
                row = gep(b, C, b.mul(i, ldc))
                with for_range(b, N, name="zj") as j:
                    b.store(ir.Constant(P.pointee, 0.0), gep(b, row, j))
        b.ret_void()

    if fused:     # depth of a few (gradients over a small batch): rank-K updates of C's rows
        with b.if_then(b.icmp_signed("<=", K, I64(SMALL_K)), likely=False):
            _rank_k(b, bl, M, N, K, A, lda, trans_a, B, ldb, C, ldc, acc_in)
            b.ret_void()

    # work = [packed A block | packed B block], each aligned; sizes as in workspace_elems
    a_elems = b.mul(b.mul(b.sdiv(b.add(imin(b, M, I64(bl.mc)), I64(MR - 1)), I64(MR)), I64(MR)),
                    imin(b, K, I64(bl.kc)))
    Ap = _align(b, work, bl.esize)
    Bw = _align(b, gep(b, Ap, b.and_(b.add(a_elems, I64(15)), I64(-16))), bl.esize)
    # few rows of C: too little reuse to pay for packing B, every tile reads it in place
    direct = b.icmp_signed("<=", M, I64(bl.direct_m)) if fused else I1(0)
    few = b.icmp_signed("<", M, I64(MR))
    aks, ais = (lda, I64(1)) if trans_a else (I64(1), lda)   # A(i, k) = A[k*aks + i*ais]
    nul = ir.Constant(P, None)

    def panel(jc, pc, kc, acc, ic, mc, jr):
        """All tiles of C[ic:ic+mc, jc+jr : +NR] for depth block pc."""
        nr = imin(b, I64(NR), b.sub(b.sub(N, jc), jr))
        cblock = gep(b, C, b.add(b.mul(ic, ldc), b.add(jc, jr)))
        ir0, bstride = I64(0), I64(NR)
        if packed:
            bpanel = gep(b, args["packedB"], b.add(b.mul(b.add(jc, jr), K), b.mul(pc, I64(NR))))
        else:
            bpanel = packed_panel = gep(b, Bw, b.mul(jr, kc))
        if fused:
            whole = b.icmp_signed("==", nr, I64(NR))
            src = _origin(b, B, b.add(jc, jr), pc, ldb, True)
            in_place = b.and_(direct, whole)
            bpanel = b.select(in_place, src, packed_panel)
            bstride = b.select(in_place, ldb, bstride)
            # else the first tile of a whole panel reads B in place and packs it for the rest
            first = b.and_(b.and_(b.not_(direct), whole), b.icmp_signed("==", ic, I64(0)))
            with b.if_then(first):
                b.call(uk_copy_b, [kc, Ap, I64(0), I64(0), src, ldb, cblock, ldc, imin(b, I64(MR), mc), nr,
                                   acc, packed_panel])
            ir0 = b.select(first, I64(MR), ir0)
        # a ragged last panel runs a kernel only as wide as it needs
        done = fn.append_basic_block("uk.done")
        sw = b.switch(b.sdiv(b.add(nr, I64(bl.v - 1)), I64(bl.v)), done)
        for width, ukernel in enumerate(ukernels, 1):
            b.position_at_end(fn.append_basic_block(f"uk.w{width}"))
            sw.add_case(I64(width), b.block)
            with b.if_else(few, likely=False) as (then, otherwise):
                with then:       # M < MR: 4 rows if M has them, then one row at a time
                    def rows(r, r0):
                        b.call(rkernels[r][width - 1],
                               [kc, _origin(b, A, r0, pc, lda, trans_a), aks, ais, bpanel, bstride,
                                gep(b, cblock, b.mul(r0, ldc)), ldc, I64(r), nr, acc, nul])
                    four = I64(0)
                    if 4 in rkernels:
                        four = b.and_(M, I64(4))
                        with b.if_then(b.icmp_signed("!=", four, I64(0))):
                            rows(4, I64(0))
                    with for_range(b, M, start=four, name="r1") as r0:
                        rows(1, r0)
                with otherwise:
                    with for_range(b, mc, start=ir0, step=I64(MR), name="ir") as ir_:
                        b.call(ukernel, [kc, gep(b, Ap, b.mul(ir_, kc)), I64(0), I64(0), bpanel, bstride,
                                         gep(b, cblock, b.mul(ir_, ldc)), ldc,
                                         imin(b, I64(MR), b.sub(mc, ir_)), nr, acc, nul])
            b.branch(done)
        b.position_at_end(done)

    kstep, mstep = _balanced(b, K, bl.kc, bl.unroll), _balanced(b, M, bl.mc, MR)
    with for_range(b, N, step=I64(bl.nc), name="jc") as jc:
        nc = imin(b, I64(bl.nc), b.sub(N, jc))
        nfull = b.sub(nc, b.srem(nc, I64(NR)))
        with for_range(b, K, step=kstep, name="pc") as pc:
            kc = imin(b, kstep, b.sub(K, pc))
            acc = b.or_(acc_in, b.icmp_signed(">", pc, I64(0)))
            if fused:        # only a ragged last panel is packed up front
                with b.if_then(b.icmp_signed("<", nfull, nc)):
                    b.call(pack_b, [b.sub(nc, nfull), kc, _origin(b, B, b.add(jc, nfull), pc, ldb, True),
                                    ldb, gep(b, Bw, b.mul(nfull, kc))])
            elif not packed:
                b.call(pack_b, [nc, kc, _origin(b, B, jc, pc, ldb, False), ldb, Bw])
            with for_range(b, M, step=mstep, name="ic") as ic:
                mc = imin(b, mstep, b.sub(M, ic))
                with b.if_then(b.not_(few)):
                    b.call(pack_a, [mc, kc, _origin(b, A, ic, pc, lda, trans_a), lda, Ap])
                with for_range(b, nc, step=I64(NR), name="jr") as jr:
                    panel(jc, pc, kc, acc, ic, mc, jr)
    b.ret_void()
    return fn
