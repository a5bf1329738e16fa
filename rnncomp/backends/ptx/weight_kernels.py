"""The PTX kernels that run once per call over the weights, not per step: a stacked weight built
from its parts and a weight's transposed copy (before the time loop), and the parameter
gradients summed over every step and sample (after it, over T·B rows).

Each is a function of the cell's :class:`~.codegen.KernelSet` that adds one kernel to it and
returns its name, like the per-step kinds of :mod:`.codegen`; the launches that run them are
made by :mod:`.launches` (``stack_launch``, ``transpose_launch``) and :mod:`.plan` (gradients).
"""
from __future__ import annotations

from llvmlite import ir

from ..llvm.builder import I64, for_range
from .codegen import KernelSet
from .tiled import SPLIT_K, gemm


def stack_weight(ks: KernelSet, shapes, axis, doc="", terms=()) -> str:
    """Pass "stack": a stacked weight from its parts, pointers ``P_1 … P_k, out``.

    ``axis`` 0: rows stacked, ((R_i, C) → (ΣR, C)): part i is the contiguous block at
    Σ_{<i} R·C; 1: columns stacked ((R, C_i) → (R, ΣC)); "sum": Σ c·op(P_i) over ``terms``
    ((P, transposed, c), one per part).  One thread per element."""
    shapes = tuple(tuple(s) for s in shapes)
    if axis == "sum":
        return _sum_weight(ks, shapes, tuple(terms), doc)
    if axis == 0:
        total = sum(r * c for r, c in shapes)
        width = None
    else:
        width = sum(c for _, c in shapes)
        total = shapes[0][0] * width

    def body(g, gid, N, R, ptrs):
        b = g.b
        parts, out = ptrs[:-1], ptrs[-1]
        if axis == 0:
            pos, lo = gid, 0
        else:
            row, pos = g.divmod(gid, width)
            lo = 0
        res = g.local_acc()
        for p, (r_, c_) in zip(parts, shapes):
            n = r_ * c_ if axis == 0 else c_
            inside = b.and_(b.icmp_unsigned(">=", pos, I64(lo)), b.icmp_unsigned("<", pos, I64(lo + n)))
            with b.if_then(inside):
                idx = b.sub(pos, I64(lo))
                if axis == 1:
                    idx = b.add(b.mul(row, I64(c_)), idx)
                b.store(b.load(b.gep(p, [idx], inbounds=True)), res)
            lo += n
        b.store(b.load(res), b.gep(out, [gid], inbounds=True))
    return ks.add("stackw", len(shapes) + 1, body, fixed=total, doc=doc)


def _sum_weight(ks, shapes, terms, doc):
    m0, n0 = shapes[0]
    rows_, cols_ = (n0, m0) if terms[0][1] else (m0, n0)

    def body(g, gid, N, R, ptrs):
        b = g.b
        parts, out = ptrs[:-1], ptrs[-1]
        r, j = g.divmod(gid, cols_)
        acc = None
        for p, (_, tr, c) in zip(parts, terms):
            at = b.add(b.mul(j, I64(rows_)), r) if tr else b.add(b.mul(r, I64(cols_)), j)
            x = b.load(b.gep(p, [at], inbounds=True))
            x = x if c == 1 else b.fmul(x, g.const(float(c)))
            acc = x if acc is None else b.fadd(acc, x)
        b.store(acc, b.gep(out, [gid], inbounds=True))
    return ks.add("sumw", len(shapes) + 1, body, fixed=rows_ * cols_, doc=doc)


def transpose(ks: KernelSet, shape, doc="") -> str:
    """``out = Pᵀ`` for an ``(m, n)`` weight, pointers ``P, out`` (one thread per element).

    The persistent kernel reads a product's weight transposed, so that the threads of a
    warp (consecutive outputs) load consecutive addresses."""
    m_, n_ = (int(x) for x in shape)

    def body(g, gid, N, R, ptrs):
        b = g.b
        P, out = ptrs
        j, i = g.divmod(gid, m_)  # out[j, i] = P[i, j]
        src = b.add(b.mul(i, I64(n_)), j)
        b.store(b.load(b.gep(P, [src], inbounds=True)), b.gep(out, [gid], inbounds=True))
    return ks.add("transp", 2, body, fixed=m_ * n_, doc=doc)


def grad_batch(ks: KernelSet, n: int, doc="", ld=None) -> str:
    """grad[j] += Σ_rows src[row, j] over the launch's R rows (``ld``: row stride of src).

    Tiled mode: thread ``gid`` sums rows ``[c·SPLIT_K, (c+1)·SPLIT_K)`` of unit ``j``
    (``c, j = divmod(gid, n)``) and adds atomically; else one thread per unit (its sum over
    all rows in double: :meth:`.irgen.BodyGen.wide_acc`)."""
    split = SPLIT_K if ks.tiled else None
    ld = ld or n

    def body(g, gid, N, R, ptrs):
        b = g.b
        src, grad = ptrs
        if split:
            c, j = g.divmod(gid, n)
            lo = b.mul(c, I64(split))
            hi = b.add(lo, I64(split))
            hi = b.select(b.icmp_signed("<", hi, R), hi, R)
        else:
            j, lo, hi = gid, I64(0), R
        acc = g.local_acc() if split else g.wide_acc()  # one thread's T·B rows: summed in double
        ext = (lambda v: v) if split else g.widen
        with for_range(b, hi, start=lo, name="row") as row:
            x = b.load(b.gep(src, [b.add(b.mul(row, I64(ld)), j)], inbounds=True))
            b.store(b.fadd(b.load(acc), ext(x)), acc)
        gp = b.gep(grad, [j], inbounds=True)
        if split:
            b.atomic_rmw("fadd", gp, b.load(acc), "monotonic")
        else:
            b.store(g.narrow(b.fadd(g.widen(b.load(gp)), b.load(acc))), gp)
    if split:
        return ks.add("gradb", 2, body, size=lambda R: n * max(1, -(-R // split)), doc=doc)
    return ks.add("gradb", 2, body, fixed=n, doc=doc)


def grad_outer(ks: KernelSet, shape, n_g: int, n_v: int, c: float, tr: bool, doc="", ld_g=None, ld_v=None) -> str:
    """grad[r, col] += c · Σ_rows g[row, r] v[row, col] (transposed: v[row, r] g[row, col]).

    ``ld_g`` / ``ld_v``: row strides of g and v (pass "stack": members of wider rows).  Tiled:
    a split-K GEMM; else one thread per entry, its sum over all rows in double."""
    m_, n_ = shape
    c = float(c)
    n_g, n_v = ld_g or n_g, ld_v or n_v  # only the row strides matter below
    if ks.tiled:
        # grad[M=m_ × N=n_] += c · Aᵀ·B over K = R rows: A(i, k) = A[k·na + i], B(k, j) = B[k·nb + j]
        (ia, na), (ib, nb) = ((1, n_v), (0, n_g)) if tr else ((0, n_g), (1, n_v))
        tile = "large" if m_ * n_ >= 256 * 256 else "small"
        return gemm(ks, "grado", 3, tile, m_, n_, "R", [(ia, 1, na, ib, nb, 1, 1.0)], 2,
                          accumulate=True, c_out=c, split=SPLIT_K, doc=doc)

    def body(g, gid, N, R, ptrs):
        b = g.b
        gk, vk, grad = ptrs
        r, col = g.divmod(gid, n_)
        (A, na), (Bm, nb) = ((vk, n_v), (gk, n_g)) if tr else ((gk, n_g), (vk, n_v))
        acc = g.wide_acc()  # one thread sums all T·B rows: in double (a float32 product is exact there)
        with for_range(b, R, name="row") as row:
            x = g.widen(b.load(b.gep(A, [b.add(b.mul(row, I64(na)), r)], inbounds=True)))
            y = g.widen(b.load(b.gep(Bm, [b.add(b.mul(row, I64(nb)), col)], inbounds=True)))
            b.store(b.fadd(b.load(acc), b.fmul(x, y, flags=("contract",)), flags=("contract",)), acc)
        s = b.load(acc)
        if c != 1.0:
            s = b.fmul(s, ir.Constant(ir.DoubleType(), c))
        gp = b.gep(grad, [gid], inbounds=True)
        b.store(g.narrow(b.fadd(g.widen(b.load(gp)), s)), gp)
    return ks.add("grado", 3, body, fixed=m_ * n_, doc=doc)
