"""Tiled products for the PTX backend: a block program through shared memory.

A block of 256 threads computes a TM×TN output tile through shared memory
(``addrspace(3)`` arrays, ``llvm.nvvm.barrier0`` between the load and the multiply
phases), each thread a RM×RN register block (:data:`TILES`).  Gradient products also
split the T·B rows over blocks (``atomicrmw fadd`` into the gradient).  A tiled kernel
is a *block program* (:class:`Tiled`: per-thread phases separated by barriers, in
uniform loops); the host wrapper emulates a block by running every phase as a loop
over the 256 thread ids (a barrier is the end of such a loop; per-thread accumulators
live in a 256 × RM·RN array), which is exact for race-free phases.
"""
from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

from ..llvm.builder import I64, alloca_once, for_range
from .irgen import I32, BodyGen, sreg

# (TM, TN, RM, RN, TK): output tile TM×TN per block, RM×RN per thread, TK-deep k slices
TILES = {"small": (32, 32, 2, 2, 32), "large": (64, 64, 4, 4, 16)}
PAD = 1          # shared-memory row padding (bank conflicts of the transposing loads)
SPLIT_K = 256    # rows of T·B per block in the gradient products and batch sums


@dataclass
class Tiled:
    """A block program: ``nt`` threads, ``n_acc`` per-thread accumulators, shared arrays.

    ``setup(g, bid, R, ptrs) -> ctx`` emits the block-uniform values; ``steps`` is a list of
    ``("thread", fn(g, ctx, tid, acc))``, ``("barrier",)`` and
    ``("loop", count(g, ctx), var, steps)`` (uniform loops; ``ctx[var]`` is the index).
    """

    nt: int
    n_acc: int
    smem: tuple
    setup: object
    steps: list


def gemm(ks, kind, nptr, tile, M, N, K, terms, out, accumulate, c_out, split=None, doc="", ldc=None):
    """A tiled product ``out[M × N] (+)= c_out · Σ_terms A_t · (c_t B_t)`` (``M``/``K``: int or "R").

    ``terms``: ``(a_ptr, sai, sak, b_ptr, sbk, sbj, c_t)``: A(i, k) = a[i·sai + k·sak],
    B(k, j) = b[k·sbk + j·sbj].  ``split``: K (= R) is cut into chunks of that many rows,
    one block per chunk, adding atomically (``accumulate`` must be set).  ``ldc``: the row
    stride of out (default N)."""
    TM, TN, RM, RN, TK = TILES[tile]
    ldc = ldc or N
    if isinstance(K, int):  # a short inner dimension: a shallower k slice (fewer wasted FMAs)
        while TK > 1 and TK // 2 >= K:
            TK //= 2
    TMT, TNT = TM // RM, TN // RN
    NT = TMT * TNT
    NBN = -(-N // TN)
    assert not split or (isinstance(M, int) and K == "R" and accumulate)
    LA, LB = TM + PAD, TN + PAD  # shared row lengths: As[kk·LA + i], Bs[kk·LB + j]

    def nblocks(R):
        m = M if isinstance(M, int) else R
        k = K if isinstance(K, int) else R
        return max(1, NBN * -(-m // TM) * (-(-k // split) if split else 1))

    def setup(g, bid, R, ptrs):
        b = g.b
        Mv = I64(M) if isinstance(M, int) else R
        Kv = I64(K) if isinstance(K, int) else R
        tn, r = b.urem(bid, I64(NBN)), b.udiv(bid, I64(NBN))
        if split:
            nbm = I64(-(-M // TM))
            tm, ks = b.urem(r, nbm), b.udiv(r, nbm)
            k0 = b.mul(ks, I64(split))
            k1 = b.add(k0, I64(split))
            k1 = b.select(b.icmp_signed("<", k1, Kv), k1, Kv)
        else:
            tm, k0, k1 = r, I64(0), Kv
        ntile = b.udiv(b.add(b.sub(k1, k0), I64(TK - 1)), I64(TK))
        return {"M": Mv, "k0": k0, "k1": k1, "ntile": ntile, "row0": b.mul(tm, I64(TM)),
                "col0": b.mul(tn, I64(TN)), "ptrs": ptrs}

    def init(g, ctx, tid, acc):
        for q in range(RM * RN):
            g.b.store(g.const(0.0), g.b.gep(acc, [I64(q)], inbounds=True))

    def load_tile(g, ctx, tid, kb, ptr, s_outer, s_k, lim_outer, origin, T_outer, L, sm, scale):
        """Copy a T_outer × TK slice (outer index o, k index kk) into sm[kk·L + o], zeros outside."""
        b = g.b
        total = T_outer * TK
        for s_ in range(-(-total // NT)):
            e = b.add(tid, I64(s_ * NT))
            if s_k == 1:  # k contiguous in memory: consecutive threads walk k
                kk, o = b.urem(e, I64(TK)), b.udiv(e, I64(TK))
            else:
                o, kk = b.urem(e, I64(T_outer)), b.udiv(e, I64(T_outer))
            go, gk = b.add(origin, o), b.add(kb, kk)
            ok = b.and_(b.icmp_signed("<", go, lim_outer), b.icmp_signed("<", gk, ctx["k1"]))
            partial = (s_ + 1) * NT > total  # the last pass: threads past the slice store nothing
            if partial:
                inside = b.icmp_unsigned("<", e, I64(total))
                ok = b.and_(ok, inside)
            idx = b.add(b.mul(go, I64(s_outer)), b.mul(gk, I64(s_k)))
            idx = b.select(ok, idx, I64(0))
            x = b.load(b.gep(ptr, [idx], inbounds=True))
            if scale != 1.0:
                x = b.fmul(x, g.const(scale))
            x = b.select(ok, x, g.const(0.0))
            if partial:
                with b.if_then(inside):
                    b.store(x, b.gep(sm, [b.add(b.mul(kk, I64(L)), o)], inbounds=True))
            else:
                b.store(x, b.gep(sm, [b.add(b.mul(kk, I64(L)), o)], inbounds=True))

    def loader(term, var):
        ia, sai, sak, ib, sbk, sbj, ct = term

        def load(g, ctx, tid, acc):
            b = g.b
            kb = b.add(ctx["k0"], b.mul(ctx[var], I64(TK)))
            P = ctx["ptrs"]
            load_tile(g, ctx, tid, kb, P[ia], sai, sak, ctx["M"], ctx["row0"], TM, LA, g.smem[0], 1.0)
            load_tile(g, ctx, tid, kb, P[ib], sbj, sbk, I64(N), ctx["col0"], TN, LB, g.smem[1], ct)
        return load

    def compute(g, ctx, tid, acc):
        b = g.b
        ty, tx = b.udiv(tid, I64(TNT)), b.urem(tid, I64(TNT))
        accs = [b.load(b.gep(acc, [I64(q)], inbounds=True)) for q in range(RM * RN)]
        fl = ("contract",)
        for kk in range(TK):
            a = [b.load(b.gep(g.smem[0], [b.add(ty, I64(kk * LA + ii * TMT))], inbounds=True))
                 for ii in range(RM)]
            w = [b.load(b.gep(g.smem[1], [b.add(tx, I64(kk * LB + jj * TNT))], inbounds=True))
                 for jj in range(RN)]
            accs = [b.fadd(accs[ii * RN + jj], b.fmul(a[ii], w[jj], flags=fl), flags=fl)
                    for ii in range(RM) for jj in range(RN)]
        for q, v in enumerate(accs):
            b.store(v, b.gep(acc, [I64(q)], inbounds=True))

    def store(g, ctx, tid, acc):
        b = g.b
        ty, tx = b.udiv(tid, I64(TNT)), b.urem(tid, I64(TNT))
        optr = ctx["ptrs"][out]
        for ii in range(RM):
            row = b.add(ctx["row0"], b.add(ty, I64(ii * TMT)))
            for jj in range(RN):
                col = b.add(ctx["col0"], b.add(tx, I64(jj * TNT)))
                ok = b.and_(b.icmp_signed("<", row, ctx["M"]), b.icmp_signed("<", col, I64(N)))
                with b.if_then(ok):
                    v = b.load(b.gep(acc, [I64(ii * RN + jj)], inbounds=True))
                    if c_out != 1.0:
                        v = b.fmul(v, g.const(c_out))
                    p = b.gep(optr, [b.add(b.mul(row, I64(ldc)), col)], inbounds=True)
                    if accumulate:
                        b.atomic_rmw("fadd", p, v, "monotonic")
                    else:
                        b.store(v, p)

    steps = [("thread", init)]
    for q, term in enumerate(terms):
        var = f"kt{q}"
        steps.append(("loop", lambda g, ctx: ctx["ntile"], var,
                      [("thread", loader(term, var)), ("barrier",), ("thread", compute), ("barrier",)]))
    steps.append(("thread", store))
    prog = Tiled(NT, RM * RN, (TK * LA, TK * LB), setup, steps)
    return ks.add(kind, nptr, prog, size=nblocks, block=NT,
                    doc=f"{doc} [tiled {TM}×{TN}/{RM}×{RN}, k {TK}{', split ' + str(split) if split else ''}]")


def emit_tiled(m, k, ty, pty, target):
    """A :class:`Tiled` block program as ``k(N blocks, R, ptrs…)``.

    nvptx: one thread of block ``ctaid.x`` (``tid.x`` < ``nt``), shared arrays in
    ``addrspace(3)``, ``llvm.nvvm.barrier0`` at each barrier, the accumulators in an
    ``[n_acc]`` alloca that SROA turns into registers.  host: a loop over the N blocks;
    each ``thread`` phase is a loop over the ``nt`` thread ids (a barrier separates two such
    loops), the accumulators of all threads in an ``[nt · n_acc]`` array.
    """
    prog: Tiled = k.body
    fn = ir.Function(m, ir.FunctionType(ir.VoidType(), [I64, I64] + [pty] * k.nptr), k.name)
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    N, R, ptrs = fn.args[0], fn.args[1], list(fn.args[2:])
    g = BodyGen(b, ty, fn)
    smem = []
    for i, n in enumerate(prog.smem):
        arr = ir.ArrayType(ty, n)
        gv = ir.GlobalVariable(m, arr, f"{k.name}_smem{i}", addrspace=3 if target == "nvptx" else 0)
        gv.linkage = "internal"
        gv.initializer = ir.Constant(arr, ir.Undefined if target == "nvptx" else None)
        gv.align = 16
        smem.append(gv)
    nvptx = target == "nvptx"
    if nvptx:
        fn.calling_convention = "ptx_kernel"
        acc = alloca_once(b, ir.ArrayType(ty, prog.n_acc), "acc")
        tid = b.zext(b.call(sreg(m, "llvm.nvvm.read.ptx.sreg.tid.x"), []), I64)
        bid = b.zext(b.call(sreg(m, "llvm.nvvm.read.ptx.sreg.ctaid.x"), []), I64)
        barrier = m.globals.get("llvm.nvvm.barrier0") or ir.Function(
            m, ir.FunctionType(ir.VoidType(), []), "llvm.nvvm.barrier0")
        g.smem = [b.gep(gv, [I32(0), I32(0)], inbounds=True) for gv in smem]
        acc0 = b.gep(acc, [I32(0), I32(0)], inbounds=True)
    else:
        acc = alloca_once(b, ir.ArrayType(ty, prog.n_acc * prog.nt), "acc")
        g.smem = [b.gep(gv, [I32(0), I32(0)], inbounds=True) for gv in smem]
        acc0 = b.gep(acc, [I32(0), I32(0)], inbounds=True)

    def emit(steps, ctx, tid):
        for st in steps:
            if st[0] == "thread":
                if nvptx:
                    st[1](g, ctx, tid, acc0)
                else:
                    with for_range(b, I64(prog.nt), name="tid") as t:
                        st[1](g, ctx, t, b.gep(acc0, [b.mul(t, I64(prog.n_acc))], inbounds=True))
            elif st[0] == "barrier":
                if nvptx:
                    b.call(barrier, [])
            elif st[0] == "loop":
                _, count, var, body = st
                with for_range(b, count(g, ctx), name=var) as v:
                    emit(body, {**ctx, var: v}, tid)
            else:
                raise ValueError(f"unknown block-program step {st[0]!r}")

    if nvptx:
        with b.if_then(b.icmp_unsigned("<", tid, I64(prog.nt))):  # uniform: the block is nt wide
            emit(prog.steps, prog.setup(g, bid, R, ptrs), tid)
    else:
        with for_range(b, N, name="bid") as bid_:
            emit(prog.steps, prog.setup(g, bid_, R, ptrs), None)
    b.ret_void()
