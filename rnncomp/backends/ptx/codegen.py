"""Kernels for the PTX backend: what each kind of kernel computes, written with llvmlite's IR builder.

Every kernel is written once as a *body* ``body(gid, N, R, p0, p1, ...)``: the work
of one thread ``gid`` out of ``N`` (``R`` is the number of rows the launch covers:
the batch B, or T·B for hoisted products and parameter gradients).  :mod:`.emit` wraps
the bodies of a :class:`KernelSet` into one LLVM module, as GPU kernels or as host loops.

Element-wise math is printed by :class:`..llvm.exprgen.LLVMPrinter` (vector math
from :mod:`..llvm.vecmath`: straight-line arithmetic, no libm calls, no
``llvm.exp``/``llvm.tanh`` intrinsics, which NVPTX cannot select without ``afn``).

Products (the per-step ``U·h``, the hoisted ``W·x`` over T·B rows and the
parameter-gradient ``δᵀv`` over T·B rows) are **tiled** through shared memory
(:mod:`.tiled`); the simple kernel (one thread per output element) stays as
``tiled=False``, and the persistent kernel (:mod:`.persistent`) inlines simple kernels.

Element-wise nodes are fused: one kernel computes a run of element-wise nodes of
one size (values produced earlier in the run come from registers), see
:meth:`KernelSet.ew_run` and :func:`.launches.fusion_groups`.

Every kernel kind takes the row stride of its per-sample pointers (``ld``, default: the
value's size): with pass "stack" a value may be a column range of a wider row (a member of a
stacked product, or an operand written side by side for one summed product).
The kernels that run once per call over the weights (stacked and transposed weights, the
parameter gradients over T·B rows) are :mod:`.weight_kernels`.
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from ...ir import placeholder
from ..llvm import vecmath
from ..llvm.builder import I64, float_type, for_range
from ..llvm.exprgen import LLVMPrinter
from ..validate import float_dtype
from .irgen import NVPTX_DATALAYOUT, NVPTX_TRIPLE, sreg
from .tiled import Tiled, gemm

__all__ = ["Kernel", "KernelSet", "NVPTX_TRIPLE", "NVPTX_DATALAYOUT", "Tiled", "sreg"]


@dataclass
class Kernel:
    """One kernel: ``name``, how many pointer arguments, its launch size and its body.

    ``size(R)`` is the launch's ``N`` for ``R`` rows: the thread count of a simple kernel
    (``block`` None: the runner's block size), or the block count of a tiled one (``block``
    threads each; ``body`` is then a :class:`Tiled`).  A simple ``body(gen, gid, N, R, ptrs)``
    emits the work of thread ``gid``.
    """

    name: str
    kind: str
    nptr: int
    size: object
    body: object = None
    doc: str = ""
    block: int | None = None
    per_row: int | None = None  # a simple kernel of ``rows · per_row`` threads (one per element)
    entry: bool = True           # False: only its body is emitted (inlined into a persistent kernel)

    def threads(self, rows: int) -> int:
        """The ``N`` argument of a launch over ``rows`` rows (threads, or blocks if tiled)."""
        return int(self.size(rows))


class KernelSet:
    """The kernels of one cell, in definition order (names are unique)."""

    def __init__(self, dtype, tiled=True):
        self.dtype = float_dtype(dtype)
        self.ty = float_type(self.dtype)
        self.tiled = tiled
        self.kernels: dict[str, Kernel] = {}

    def add(self, kind: str, nptr: int, body, per_row=1, fixed=None, doc="", size=None, block=None) -> str:
        name = f"k{len(self.kernels)}_{kind}"
        rowwise = size is None and fixed is None and not isinstance(body, Tiled)
        if size is None:
            size = (lambda R, f=fixed: f) if fixed is not None else (lambda R, n=per_row: R * n)
        self.kernels[name] = Kernel(name, kind, nptr, size, body, doc, block, per_row if rowwise else None)
        return name

    # ------------------------------------------------------------------ kernel kinds
    def ew(self, template: sp.Expr, n: int, arg_units, out_ld=None, doc="") -> str:
        """out[b, j] = template(args): ``arg_units[i] = (units, shared[, row stride])`` per argument."""
        arg_units = tuple(arg_units)
        return self.ew_run([(template, [("ext", i) for i in range(len(arg_units))])], n, arg_units,
                           out_lds=None if out_ld is None else (out_ld,), doc=doc)

    def ew_run(self, items, n: int, ext_units, out_lds=None, doc="") -> str:
        """A fused run of element-wise nodes of size ``n``: pointers ``ext…, out_1 … out_k``.

        ``items[q] = (template, refs)``, ``refs[i]`` = ``("ext", e)`` (loaded from external
        pointer ``e``, ``ext_units[e] = (units, shared[, row stride])``) or ``("reg", r)``
        (the value of item ``r < q``, from its register).  Every item's value is also stored,
        row b of output q at ``out_q + b·out_lds[q]`` (pass "stack": a member of a wider row).
        """
        items = tuple((t, tuple(refs)) for t, refs in items)
        ext_units = tuple(_with_ld(u) for u in ext_units)
        out_lds = tuple(out_lds) if out_lds is not None else (n,) * len(items)
        n_ext = len(ext_units)

        def body(g, gid, N, R, ptrs):
            b = g.b
            exts, outs = ptrs[:n_ext], ptrs[n_ext:]
            bi, j = g.divmod(gid, n)
            loaded, here = {}, []
            for q, (template, refs) in enumerate(items):
                vals = {}
                for i, (src, e) in enumerate(refs):
                    if src == "reg":
                        vals[placeholder(i)] = here[e]
                        continue
                    if e not in loaded:
                        units, shared, ld = ext_units[e]
                        if shared:
                            idx = j if units > 1 else I64(0)
                        else:
                            idx = g.row_index(bi, j if units > 1 else None, ld)
                        loaded[e] = b.load(b.gep(exts[e], [idx], inbounds=True))
                    vals[placeholder(i)] = loaded[e]
                v = LLVMPrinter(b, g.ty, vals).emit_all(template)
                oidx = gid if out_lds[q] == n else g.row_index(bi, j if n > 1 else None, out_lds[q])
                b.store(v, b.gep(outs[q], [oidx], inbounds=True))
                here.append(v)
        return self.add("ew", n_ext + len(items), body, per_row=n, doc=doc)

    def matvec(self, n_in: int, n_out: int, terms, shapes, doc="", tile="small", lda=None, ldc=None) -> str:
        """out[b, r] = Σ_terms c · (P v[b])[r] (or Pᵀ): pointers v, P_1 … P_k, out.

        ``lda`` / ``ldc``: row strides of v and out (default n_in / n_out)."""
        terms = tuple((bool(tr), float(c)) for _, tr, c in terms)
        shapes = tuple(shapes)
        lda, ldc = lda or n_in, ldc or n_out
        if self.tiled:
            # C[R × n_out] = v[R × n_in] · op(P): A(i, k) = v[i·lda + k]; B(k, j) = P[j, k] or P[k, j]
            gterms = [(0, lda, 1, 1 + q, n_ if tr else 1, 1 if tr else n_, c)
                      for q, ((tr, c), (m_, n_)) in enumerate(zip(terms, shapes))]
            return gemm(self, "matvec", len(terms) + 2, tile, "R", n_out, n_in, gterms, len(terms) + 1,
                              accumulate=False, c_out=1.0, ldc=ldc, doc=doc)

        def body(g, gid, N, R, ptrs):
            b = g.b
            v, Ps, out = ptrs[0], ptrs[1:-1], ptrs[-1]
            bi, r = g.divmod(gid, n_out)
            vrow = b.gep(v, [b.mul(bi, I64(lda))], inbounds=True)
            total = None
            for (tr, c), P, (m_, n_) in zip(terms, Ps, shapes):
                acc = g.local_acc()
                with for_range(b, I64(n_in), name="k") as k:
                    # untransposed: P[r, k] (P is n_out × n_in); transposed: P[k, r]
                    idx = b.add(b.mul(k, I64(n_)), r) if tr else b.add(b.mul(r, I64(n_)), k)
                    x = b.load(b.gep(vrow, [k], inbounds=True))
                    p = b.load(b.gep(P, [idx], inbounds=True))
                    b.store(b.fadd(b.load(acc), b.fmul(x, p, flags=("contract",)), flags=("contract",)), acc)
                y = b.load(acc)
                if c != 1.0:
                    y = b.fmul(y, g.const(c))
                total = y if total is None else b.fadd(total, y)
            oidx = gid if ldc == n_out else g.row_index(bi, r if n_out > 1 else None, ldc)
            b.store(total, b.gep(out, [oidx], inbounds=True))
        return self.add("matvec", len(terms) + 2, body, per_row=n_out, doc=doc)

    def matvec_part(self, n_in: int, n_out: int, S: int, terms, shapes, doc="", lda=None) -> str:
        """Split-k partial sums of a product whose terms read their weight transposed (``P[k, r]``):
        ``part[b, s, r] = Σ_terms c · Σ_{k in chunk s} P[k, r] v[b, k]`` for the S chunks of
        ``⌈n_in / S⌉`` (pointers v, P_1 … P_k, part).  The persistent kernel's threads then
        share ``n_out · S`` elements instead of ``n_out`` serial sums of length ``n_in``."""
        terms = tuple(float(c) for _, tr, c in terms if tr) if all(tr for _, tr, _ in terms) else None
        if terms is None:
            raise ValueError("matvec_part: every term must read its weight transposed")
        shapes, lda, kc = tuple(shapes), lda or n_in, -(-n_in // S)

        def body(g, gid, N, R, ptrs):
            b = g.b
            v, Ps, part = ptrs[0], ptrs[1:-1], ptrs[-1]
            bi, q = g.divmod(gid, n_out * S)
            s_, r = b.udiv(q, I64(n_out)), b.urem(q, I64(n_out))
            k0 = b.mul(s_, I64(kc))
            k1 = b.add(k0, I64(kc))
            k1 = b.select(b.icmp_signed("<", k1, I64(n_in)), k1, I64(n_in))
            vrow = b.gep(v, [b.mul(bi, I64(lda))], inbounds=True)
            total = None
            for c, P, (_, n_) in zip(terms, Ps, shapes):
                acc = g.local_acc()
                with for_range(b, k1, start=k0, name="k") as k:
                    x = b.load(b.gep(vrow, [k], inbounds=True))
                    p = b.load(b.gep(P, [b.add(b.mul(k, I64(n_)), r)], inbounds=True))
                    b.store(b.fadd(b.load(acc), b.fmul(x, p, flags=("contract",)), flags=("contract",)), acc)
                y = b.load(acc)
                if c != 1.0:
                    y = b.fmul(y, g.const(c))
                total = y if total is None else b.fadd(total, y)
            b.store(total, b.gep(part, [gid], inbounds=True))
        return self.add("mvpart", len(terms) + 2, body, per_row=n_out * S, doc=doc)

    def part_sum(self, n_out: int, S: int, doc="", ldc=None) -> str:
        """``out[b, r] = Σ_s part[b, s, r]`` (pointers part, out): the second half of a split-k product."""
        ldc = ldc or n_out

        def body(g, gid, N, R, ptrs):
            b = g.b
            part, out = ptrs
            bi, r = g.divmod(gid, n_out)
            row = b.gep(part, [b.add(b.mul(bi, I64(n_out * S)), r)], inbounds=True)
            total = b.load(row)
            for s_ in range(1, S):  # in chunk order: the partial sums' rounding is fixed
                total = b.fadd(total, b.load(b.gep(row, [I64(s_ * n_out)], inbounds=True)))
            oidx = gid if ldc == n_out else g.row_index(bi, r if n_out > 1 else None, ldc)
            b.store(total, b.gep(out, [oidx], inbounds=True))
        return self.add("mvsum", 2, body, per_row=n_out, doc=doc)

    def slice(self, n_in: int, n_out: int, lo: int, doc="", ld_in=None, ld_out=None) -> str:
        ld_in, ld_out = ld_in or n_in, ld_out or n_out

        def body(g, gid, N, R, ptrs):
            b = g.b
            v, out = ptrs
            bi, j = g.divmod(gid, n_out)
            src = b.add(b.mul(bi, I64(ld_in)), b.add(j, I64(lo)))
            dst = gid if ld_out == n_out else g.row_index(bi, j, ld_out)
            b.store(b.load(b.gep(v, [src], inbounds=True)), b.gep(out, [dst], inbounds=True))
        return self.add("slice", 2, body, per_row=n_out, doc=doc)

    def concat(self, parts, n_out: int, doc="", ld_out=None) -> str:
        """parts: ``(units, shared[, row stride])`` per argument; also serves ``pad`` (one part at ``lo``)."""
        parts = tuple(_with_ld(p) for p in parts)
        return self._place(parts, [sum(p[0] for p in parts[:i]) for i in range(len(parts))], n_out,
                           "concat", doc, ld_out)

    def pad(self, n_in: int, n_out: int, lo: int, doc="", ld_in=None, ld_out=None) -> str:
        return self._place(((n_in, False, ld_in or n_in),), [lo], n_out, "pad", doc, ld_out)

    def _place(self, parts, los, n_out, kind, doc, ld_out=None):
        ld_out = ld_out or n_out

        def body(g, gid, N, R, ptrs):
            b = g.b
            out, args = ptrs[-1], ptrs[:-1]
            bi, j = g.divmod(gid, n_out)
            res = g.local_acc()
            for p, (units, shared, ld), lo in zip(args, parts, los):
                inside = b.and_(b.icmp_signed(">=", j, I64(lo)), b.icmp_signed("<", j, I64(lo + units)))
                with b.if_then(inside):
                    jj = b.sub(j, I64(lo))
                    if shared:
                        idx = jj
                    else:
                        idx = g.row_index(bi, jj if units > 1 else None, ld)
                    b.store(b.load(b.gep(p, [idx], inbounds=True)), res)
            dst = gid if ld_out == n_out else g.row_index(bi, j, ld_out)
            b.store(b.load(res), b.gep(out, [dst], inbounds=True))
        return self.add(kind, len(parts) + 1, body, per_row=n_out, doc=doc)

    def reduce(self, n: int, lse: bool, doc="", ld_in=None, ld_out=1) -> str:
        """out[b] = Σ_j v[b, j] or the stable log Σ exp (one thread per row)."""
        ld_in = ld_in or n

        def body(g, gid, N, R, ptrs):
            b = g.b
            v, out = ptrs
            row = b.gep(v, [b.mul(gid, I64(ld_in))], inbounds=True)
            r = vecmath.emit_row_reduce(b, row, n, lse, g.local_acc(), g.local_acc(float("-inf")))
            b.store(r, b.gep(out, [g.row_index(gid, None, ld_out)], inbounds=True))
        return self.add("lse" if lse else "sum", 2, body, per_row=1, doc=doc)

    def matrix(self, op: str, shape, size: int, ld_args, axis=1, transposed=False, doc="", ld_out=None) -> str:
        """A matrix-state op (:mod:`rnncomp.matrix_dsl`; (m, n) row-major per sample), one thread
        per output element: ``outer`` o[i·n+j] = a[i]·c[j], ``mbcast`` o[i·n+j] = v[i] (axis 1)
        or v[j]; ``smatvec`` o[i] = Σ_j X[i·n+j]·v[j] (transposed: o[j] = Σ_i X[i·n+j]·u[i]),
        ``mreduce`` the same sums without the vector (axis 1: over each row)."""
        (m, n), ld_args, ld_out = shape, tuple(ld_args), ld_out or size
        along_rows = not transposed if op == "smatvec" else axis == 1   # a sum over j in row e

        element = MATRIX_ELEMENT[op]

        def body(g, gid, N, R, ptrs):
            b = g.b
            *args, out = ptrs
            bi, e = g.divmod(gid, size)
            rows = [b.gep(p, [b.mul(bi, I64(ld))], inbounds=True) for p, ld in zip(args, ld_args)]
            v = element(g, rows, e, m, n, axis, along_rows)
            b.store(v, b.gep(out, [g.row_index(bi, e, ld_out)], inbounds=True))
        return self.add(op, len(ld_args) + 1, body, per_row=size, doc=doc)

    def copy(self, n: int, doc="", ld_src=None, ld_dst=None) -> str:
        ld_src, ld_dst = ld_src or n, ld_dst or n

        def body(g, gid, N, R, ptrs):
            b = g.b
            src, dst = ptrs
            bi, j = g.divmod(gid, n)
            s_ = gid if ld_src == n else g.row_index(bi, j, ld_src)
            d_ = gid if ld_dst == n else g.row_index(bi, j, ld_dst)
            b.store(b.load(b.gep(src, [s_], inbounds=True)), b.gep(dst, [d_], inbounds=True))
        return self.add("copy", 2, body, per_row=n, doc=doc)

def _with_ld(u):
    """``(units, shared)`` or ``(units, shared, row stride)`` → the triple (stride default: units)."""
    return (u[0], u[1], u[2] if len(u) > 2 and u[2] else u[0])


def _at(b, p, k):
    return b.load(b.gep(p, [k], inbounds=True))


def _outer(g, rows, e, m, n, axis, along_rows):        # o[i·n+j] = a[i]·c[j]
    i, j = g.divmod(e, n)
    return g.b.fmul(_at(g.b, rows[0], i), _at(g.b, rows[1], j))


def _bcast(g, rows, e, m, n, axis, along_rows):        # o[i·n+j] = v[i] (axis 1) or v[j]
    i, j = g.divmod(e, n)
    return _at(g.b, rows[0], i if axis == 1 else j)


def _sums(g, rows, e, m, n, along_rows, vec):
    """Σ over row e (``along_rows``) or column e of X, or of X ⊙ v (``vec``: smatvec)."""
    b, acc = g.b, g.local_acc()
    with for_range(b, I64(n if along_rows else m), name="k") as k:
        x = _at(b, rows[0], b.add(b.mul(e, I64(n)), k) if along_rows else b.add(b.mul(k, I64(n)), e))
        if vec is not None:
            x = b.fmul(x, _at(b, vec, k))
        b.store(b.fadd(b.load(acc), x), acc)
    return b.load(acc)


def _smatvec(g, rows, e, m, n, axis, along_rows):      # o[i] = Σ_j X[i·n+j]·v[j] (or Xᵀ u)
    return _sums(g, rows, e, m, n, along_rows, rows[1])


def _mreduce(g, rows, e, m, n, axis, along_rows):      # o[i] = Σ_j X[i·n+j] (or over columns)
    return _sums(g, rows, e, m, n, along_rows, None)


#: one output element of a matrix-state op, by op (:meth:`KernelSet.matrix`)
MATRIX_ELEMENT = {"outer": _outer, "mbcast": _bcast, "smatvec": _smatvec, "mreduce": _mreduce}
