"""Generated matrix products: ``C[M,N] = op(A)[M,K] @ op(B)[K,N] (+ C)``, row-major.

Every kernel is built with the llvmlite builder for the detected host and
compiled with the rest of a module by :func:`.jit.compile_module`; it runs on one
thread (callers split M or N across threads themselves).

Blocking (after Goto & van de Geijn / BLIS), with ``V`` elements per vector
register (AVX-512: 16 float32 / 8 float64, AVX2: 8 / 4, otherwise 4 / 2)::

    for jc in 0..N step NC:                   # B block (KC x NC)
      for pc in 0..K step KC:                 # depth block; C += from the 2nd on
        pack op(B)[pc:pc+kc, jc:jc+nc] into NR-column panels   (skipped: see below)
        for ic in 0..M step MC:               # A block (MC x KC), lives in L2
          pack op(A)[ic:ic+mc, pc:pc+kc] into MR-row panels
          for jr in 0..nc step NR:            # B micro-panel (KC x NR), lives in L1
            for ir in 0..mc step MR:
              micro-kernel: C[MR x NR] (+)= A panel @ B micro-panel

The micro-kernel (:func:`.gemm_kernel.define_microkernel`) keeps ``MR x NR/V``
vector accumulators in registers (AVX-512: 8 x 3 zmm, AVX2: 4 x 3 ymm); per ``k``
it loads ``NR/V`` vectors of B, broadcasts ``MR`` elements of A and issues
``MR*NR/V`` ``llvm.fma`` calls; the k loop is unrolled 4 times.  Packed panels
are zero-padded, so edge tiles compute a whole tile and only the store is
narrowed (through a stack tile).  KC is chosen so a B micro-panel fills about
half of L1, MC so an A block fills about a third of L2.

B is not packed on every call where that does not pay:

* :func:`define_pack_b` packs the whole op(B) once (recurrent weights: once per
  sequence) into the panel layout that :func:`define_gemm_packed_b` reads;
* an unpacked, non-transposed B is read in place (row stride ``ldb``) when
  ``M`` is small (per-time-step products), packing only a ragged last panel.

``work`` (see :func:`workspace_elems`) holds the packed A block followed by the
packed B block; it needs no particular alignment.

    >>> from llvmlite import ir
    >>> from .jit import HostTarget, compile_module
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

from llvmlite import ir

from .builder import I1, I32, I64, for_range, gep
from .gemm_kernel import VOID, Blocking, define_microkernel, define_packer, imin, scalar_type

__all__ = ["define_gemm", "define_gemm_packed_b", "define_pack_b", "workspace_elems",
           "packed_b_elems", "Blocking"]


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def _a_block_elems(M: int, K: int, bl: Blocking) -> int:
    return _round_up(_round_up(min(M, bl.mc), bl.mr) * min(K, bl.kc), 16)


def workspace_elems(M: int, N: int, K: int, dtype: str, host) -> int:
    """Elements of ``work`` that a product of this size needs (packed A and B blocks)."""
    bl = Blocking.for_host(dtype, host)
    if M <= 0 or N <= 0 or K <= 0:
        return 0
    return _a_block_elems(M, K, bl) + _round_up(min(N, bl.nc), bl.nr) * min(K, bl.kc)


def packed_b_elems(K: int, N: int, dtype: str, host) -> int:
    """Elements of the buffer that :func:`define_pack_b` fills for a ``K x N`` op(B)."""
    bl = Blocking.for_host(dtype, host)
    return _round_up(max(N, 0), bl.nr) * max(K, 0)


def define_pack_b(module: ir.Module, name: str, dtype: str, trans_b: bool, host) -> ir.Function:
    """``void name(i64 K, i64 N, T* B, i64 ldb, T* packed)``: pack op(B) (K x N) whole."""
    bl = Blocking.for_host(dtype, host)
    P = scalar_type(dtype).as_pointer()
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


def _origin(b: ir.IRBuilder, base, r0, k0, stride, contiguous: bool):
    """Address of element (r0, k0) of a panel source (see ``define_packer``)."""
    off = b.add(r0, b.mul(k0, stride)) if contiguous else b.add(b.mul(r0, stride), k0)
    return gep(b, base, off)


def _define(module, name, dtype, trans_a, host, trans_b):
    bl = Blocking.for_host(dtype, host)
    P = scalar_type(dtype).as_pointer()
    packed = trans_b is None
    if packed:
        names = ("M", "N", "K", "A", "lda", "packedB", "C", "ldc", "accumulate", "work")
    else:
        names = ("M", "N", "K", "A", "lda", "B", "ldb", "C", "ldc", "accumulate", "work")
    types = {"A": P, "B": P, "packedB": P, "C": P, "work": P, "accumulate": I32}
    fn = ir.Function(module, ir.FunctionType(VOID, [types.get(n, I64) for n in names]), name)
    args = dict(zip(names, fn.args))
    for nm, arg in args.items():
        arg.name = nm
    M, N, K, A, lda, C, ldc, work = (args[n] for n in ("M", "N", "K", "A", "lda", "C", "ldc", "work"))
    MR, NR = bl.mr, bl.nr
    ukernels = [define_microkernel(module, bl, w) for w in range(1, bl.nrv + 1)]
    fused_b = not packed and not trans_b     # B can be read in place (and packed on the fly)
    uk_copy_b = define_microkernel(module, bl, bl.nrv, copy_b=True) if fused_b else None
    pack_a = define_packer(module, bl, MR, trans_a)
    pack_b = None if packed else define_packer(module, bl, NR, not trans_b)

    b = ir.IRBuilder(fn.append_basic_block("entry"))
    acc_in = b.icmp_signed("!=", args["accumulate"], I32(0))
    empty = b.or_(b.icmp_signed("<=", M, I64(0)), b.icmp_signed("<=", N, I64(0)))
    with b.if_then(empty, likely=False):
        b.ret_void()
    with b.if_then(b.icmp_signed("<=", K, I64(0)), likely=False):   # C = 0 (+ C)
        with b.if_then(b.not_(acc_in)):
            zero = ir.Constant(P.pointee, 0.0)
            with for_range(b, M, name="zi") as i:
                row = gep(b, C, b.mul(i, ldc))
                with for_range(b, N, name="zj") as j:
                    b.store(zero, gep(b, row, j))
        b.ret_void()

    # work = [packed A block | packed B block]; sizes as in workspace_elems
    a_elems = b.mul(b.mul(b.sdiv(b.add(imin(b, M, I64(bl.mc)), I64(MR - 1)), I64(MR)), I64(MR)),
                    imin(b, K, I64(bl.kc)))
    Ap = work
    Bw = gep(b, work, b.and_(b.add(a_elems, I64(15)), I64(-16)))
    null = ir.Constant(P, None)
    direct = b.icmp_signed("<=", M, I64(bl.direct_m)) if fused_b else I1(0)  # few rows: B in place
    if fused_b:
        B, ldb = args["B"], args["ldb"]

    def a_at(r0, k0):
        return _origin(b, A, r0, k0, lda, trans_a)

    with for_range(b, N, step=I64(bl.nc), name="jc") as jc:
        nc = imin(b, I64(bl.nc), b.sub(N, jc))
        nfull = b.sub(nc, b.srem(nc, I64(NR)))
        with for_range(b, K, step=I64(bl.kc), name="pc") as pc:
            kc = imin(b, I64(bl.kc), b.sub(K, pc))
            acc = b.or_(acc_in, b.icmp_signed(">", pc, I64(0)))
            if fused_b:      # only the ragged last panel is packed up front
                with b.if_then(b.icmp_signed("<", nfull, nc)):
                    b.call(pack_b, [b.sub(nc, nfull), kc, _origin(b, B, b.add(jc, nfull), pc, ldb, True),
                                    ldb, gep(b, Bw, b.mul(nfull, kc))])
            elif not packed:
                b.call(pack_b, [nc, kc, _origin(b, args["B"], jc, pc, args["ldb"], False), args["ldb"], Bw])
            with for_range(b, M, step=I64(bl.mc), name="ic") as ic:
                mc = imin(b, I64(bl.mc), b.sub(M, ic))
                b.call(pack_a, [mc, kc, a_at(ic, pc), lda, Ap])
                with for_range(b, nc, step=I64(NR), name="jr") as jr:
                    nr = imin(b, I64(NR), b.sub(nc, jr))
                    cblock = gep(b, C, b.add(b.mul(ic, ldc), b.add(jc, jr)))
                    bstride = I64(NR)
                    if packed:
                        bpanel = gep(b, args["packedB"], b.add(b.mul(b.add(jc, jr), K), b.mul(pc, I64(NR))))
                    else:
                        bpanel = packed_panel = gep(b, Bw, b.mul(jr, kc))
                    if fused_b:
                        whole = b.icmp_signed("==", nr, I64(NR))
                        src = _origin(b, B, b.add(jc, jr), pc, ldb, True)
                        in_place = b.and_(direct, whole)
                        bpanel = b.select(in_place, src, packed_panel)
                        bstride = b.select(in_place, ldb, bstride)
                    ir0 = I64(0)
                    if fused_b:      # first tile of each later whole panel packs B
                        first_b = b.and_(b.and_(b.not_(direct), whole), b.icmp_signed("==", ic, I64(0)))
                        with b.if_then(first_b):
                            b.call(uk_copy_b, [kc, Ap, src, ldb, cblock, ldc, imin(b, I64(MR), mc), nr,
                                               acc, packed_panel])
                        ir0 = b.select(first_b, I64(MR), ir0)
                    # the rest; a ragged last panel runs the kernel only as wide as it needs
                    nvec = b.sdiv(b.add(nr, I64(bl.v - 1)), I64(bl.v))
                    done = fn.append_basic_block("uk.done")
                    sw = b.switch(nvec, done)
                    for width, ukernel in enumerate(ukernels, 1):
                        b.position_at_end(fn.append_basic_block(f"uk.w{width}"))
                        sw.add_case(I64(width), b.block)
                        with for_range(b, mc, start=ir0, step=I64(MR), name="ir") as ir_:
                            mr = imin(b, I64(MR), b.sub(mc, ir_))
                            b.call(ukernel, [kc, gep(b, Ap, b.mul(ir_, kc)), bpanel, bstride,
                                             gep(b, cblock, b.mul(ir_, ldc)), ldc, mr, nr, acc, null])
                        b.branch(done)
                    b.position_at_end(done)
    b.ret_void()
    return fn
