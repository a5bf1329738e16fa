"""Kernels for the PTX backend: one LLVM module per cell, emitted with llvmlite's IR builder.

Every kernel is written once as a *body* ``body(gid, N, R, p0, p1, ...)``: the work
of one thread ``gid`` out of ``N`` (``R`` is the number of rows the launch covers:
the batch B, or T·B for hoisted products and parameter gradients).  Two wrappers
call the same body:

* ``nvptx``: a ``ptx_kernel`` entry ``k(N, R, p...)`` with
  ``gid = ctaid.x · ntid.x + tid.x`` (the calling convention matters: without
  it LLVM 22 emits a ``.func`` nobody can launch);
* ``host``: a plain function ``k(N, R, p...)`` that loops ``gid = 0 … N-1``.
  Compiled for this CPU, it runs the *same* indexing and math as the GPU
  kernels, so the host semantics check (``runner="host"``) catches indexing
  bugs without a GPU.

Element-wise math is printed by :class:`..llvm.exprgen.LLVMPrinter` (vector math
from :mod:`..llvm.vecmath`: straight-line arithmetic, no libm calls, no
``llvm.exp``/``llvm.tanh`` intrinsics, which NVPTX cannot select without ``afn``).

Products are a simple correct kernel: one thread per output element, a dot
product over the inner dimension (no shared-memory tiling yet; see docs/gpu.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import sympy as sp
from llvmlite import ir

from ...ir import placeholder
from ..llvm import vecmath
from ..llvm.builder import I64, for_range
from ..llvm.exprgen import LLVMPrinter

I32 = ir.IntType(32)
DTYPES = {np.dtype("float64"): ir.DoubleType(), np.dtype("float32"): ir.FloatType()}
NVPTX_TRIPLE = "nvptx64-nvidia-cuda"
NVPTX_DATALAYOUT = "e-p6:32:32-i64:64-i128:128-v16:16-v32:32-n16:32:64"


@dataclass
class Kernel:
    """One kernel: ``name``, how many pointer arguments, the thread count and its body.

    Threads: ``N = rows · per_row`` when ``fixed`` is None, else ``N = fixed``.
    ``body(gen, gid, N, R, ptrs)`` emits the work of thread ``gid``.
    """

    name: str
    kind: str
    nptr: int
    per_row: int = 1
    fixed: int | None = None
    body: object = None
    doc: str = ""
    attrs: dict = field(default_factory=dict)

    def threads(self, rows: int) -> int:
        return self.fixed if self.fixed is not None else rows * self.per_row


class KernelSet:
    """The kernels of one cell, in definition order (names are unique)."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        self.ty = DTYPES[self.dtype]
        self.kernels: dict[str, Kernel] = {}

    def add(self, kind: str, nptr: int, body, per_row=1, fixed=None, doc="") -> str:
        name = f"k{len(self.kernels)}_{kind}"
        self.kernels[name] = Kernel(name, kind, nptr, per_row, fixed, body, doc)
        return name

    # ------------------------------------------------------------------ kernel kinds
    def ew(self, template: sp.Expr, n: int, arg_units, doc="") -> str:
        """out[b, j] = template(args): ``arg_units[i] = (units, shared)`` per argument."""
        arg_units = tuple(arg_units)

        def body(g, gid, N, R, ptrs):
            b = g.b
            out, args = ptrs[-1], ptrs[:-1]
            bi, j = g.divmod(gid, n)
            vals = {}
            for i, (p, (units, shared)) in enumerate(zip(args, arg_units)):
                if shared:
                    idx = j if units > 1 else I64(0)
                else:
                    idx = b.add(b.mul(bi, I64(units)), j) if units > 1 else bi
                vals[placeholder(i)] = b.load(b.gep(p, [idx], inbounds=True))
            v = LLVMPrinter(b, g.ty, vals).emit_all(template)
            b.store(v, b.gep(out, [gid], inbounds=True))
        return self.add("ew", len(arg_units) + 1, body, per_row=n, doc=doc)

    def matvec(self, n_in: int, n_out: int, terms, shapes, doc="") -> str:
        """out[b, r] = Σ_terms c · (P v[b])[r] (or Pᵀ): pointers v, P_1 … P_k, out."""
        terms = tuple((bool(tr), float(c)) for _, tr, c in terms)
        shapes = tuple(shapes)

        def body(g, gid, N, R, ptrs):
            b = g.b
            v, Ps, out = ptrs[0], ptrs[1:-1], ptrs[-1]
            bi, r = g.divmod(gid, n_out)
            vrow = b.gep(v, [b.mul(bi, I64(n_in))], inbounds=True)
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
            b.store(total, b.gep(out, [gid], inbounds=True))
        return self.add("matvec", len(terms) + 2, body, per_row=n_out, doc=doc)

    def slice(self, n_in: int, n_out: int, lo: int, doc="") -> str:
        def body(g, gid, N, R, ptrs):
            b = g.b
            v, out = ptrs
            bi, j = g.divmod(gid, n_out)
            src = b.add(b.mul(bi, I64(n_in)), b.add(j, I64(lo)))
            b.store(b.load(b.gep(v, [src], inbounds=True)), b.gep(out, [gid], inbounds=True))
        return self.add("slice", 2, body, per_row=n_out, doc=doc)

    def concat(self, parts, n_out: int, doc="") -> str:
        """parts: ``(units, shared)`` per argument; also serves ``pad`` (one part at ``lo``)."""
        parts = tuple(parts)
        return self._place(parts, [sum(u for u, _ in parts[:i]) for i in range(len(parts))], n_out,
                           "concat", doc)

    def pad(self, n_in: int, n_out: int, lo: int, doc="") -> str:
        return self._place(((n_in, False),), [lo], n_out, "pad", doc)

    def _place(self, parts, los, n_out, kind, doc):
        def body(g, gid, N, R, ptrs):
            b = g.b
            out, args = ptrs[-1], ptrs[:-1]
            bi, j = g.divmod(gid, n_out)
            res = g.local_acc()
            for p, (units, shared), lo in zip(args, parts, los):
                inside = b.and_(b.icmp_signed(">=", j, I64(lo)), b.icmp_signed("<", j, I64(lo + units)))
                with b.if_then(inside):
                    jj = b.sub(j, I64(lo))
                    if shared:
                        idx = jj
                    else:
                        idx = b.add(b.mul(bi, I64(units)), jj) if units > 1 else bi
                    b.store(b.load(b.gep(p, [idx], inbounds=True)), res)
            b.store(b.load(res), b.gep(out, [gid], inbounds=True))
        return self.add(kind, len(parts) + 1, body, per_row=n_out, doc=doc)

    def reduce(self, n: int, lse: bool, doc="") -> str:
        """out[b] = Σ_j v[b, j] or the stable log Σ exp (one thread per row)."""
        def body(g, gid, N, R, ptrs):
            b = g.b
            v, out = ptrs
            row = b.gep(v, [b.mul(gid, I64(n))], inbounds=True)
            m = None
            if lse:
                mx = g.local_acc(float("-inf"))
                with for_range(b, I64(n), name="j") as j:
                    x = b.load(b.gep(row, [j], inbounds=True))
                    cur = b.load(mx)
                    b.store(b.select(b.fcmp_ordered(">", x, cur), x, cur), mx)
                m = b.load(mx)
                m = b.select(b.fcmp_ordered("==", m, g.const(float("-inf"))), g.const(0.0), m)
            acc = g.local_acc()
            with for_range(b, I64(n), name="j") as j:
                x = b.load(b.gep(row, [j], inbounds=True))
                if lse:
                    x = vecmath.emit(b, "exp", [b.fsub(x, m)])
                b.store(b.fadd(b.load(acc), x), acc)
            r = b.load(acc)
            if lse:
                r = b.fadd(m, vecmath.emit(b, "log", [r]))
            b.store(r, b.gep(out, [gid], inbounds=True))
        return self.add("lse" if lse else "sum", 2, body, per_row=1, doc=doc)

    def copy(self, n: int, doc="") -> str:
        def body(g, gid, N, R, ptrs):
            b = g.b
            src, dst = ptrs
            b.store(b.load(b.gep(src, [gid], inbounds=True)), b.gep(dst, [gid], inbounds=True))
        return self.add("copy", 2, body, per_row=n, doc=doc)

    def grad_batch(self, n: int, doc="") -> str:
        """grad[j] += Σ_rows src[row, j] over the launch's R rows (one thread per unit)."""
        def body(g, gid, N, R, ptrs):
            b = g.b
            src, grad = ptrs
            acc = g.local_acc()
            with for_range(b, R, name="row") as row:
                x = b.load(b.gep(src, [b.add(b.mul(row, I64(n)), gid)], inbounds=True))
                b.store(b.fadd(b.load(acc), x), acc)
            gp = b.gep(grad, [gid], inbounds=True)
            b.store(b.fadd(b.load(gp), b.load(acc)), gp)
        return self.add("gradb", 2, body, fixed=n, doc=doc)

    def grad_outer(self, shape, n_g: int, n_v: int, c: float, tr: bool, doc="") -> str:
        """grad[r, col] += c · Σ_rows g[row, r] v[row, col] (transposed: v[row, r] g[row, col])."""
        m_, n_ = shape
        c = float(c)

        def body(g, gid, N, R, ptrs):
            b = g.b
            gk, vk, grad = ptrs
            r, col = g.divmod(gid, n_)
            (A, na), (Bm, nb) = ((vk, n_v), (gk, n_g)) if tr else ((gk, n_g), (vk, n_v))
            acc = g.local_acc()
            with for_range(b, R, name="row") as row:
                x = b.load(b.gep(A, [b.add(b.mul(row, I64(na)), r)], inbounds=True))
                y = b.load(b.gep(Bm, [b.add(b.mul(row, I64(nb)), col)], inbounds=True))
                b.store(b.fadd(b.load(acc), b.fmul(x, y, flags=("contract",)), flags=("contract",)), acc)
            s = b.load(acc)
            if c != 1.0:
                s = b.fmul(s, g.const(c))
            gp = b.gep(grad, [gid], inbounds=True)
            b.store(b.fadd(b.load(gp), s), gp)
        return self.add("grado", 3, body, fixed=m_ * n_, doc=doc)


# ----------------------------------------------------------------------------- module emission
class _BodyGen:
    """What a body emitter gets: the builder, the element type and small helpers."""

    def __init__(self, builder, ty, fn):
        self.b, self.ty, self.fn = builder, ty, fn

    def const(self, v):
        return ir.Constant(self.ty, float(v))

    def local_acc(self, init=0.0):
        b = self.b
        with b.goto_entry_block():
            p = b.alloca(self.ty)
        b.store(self.const(init), p)
        return p

    def divmod(self, gid, n: int):
        if n == 1:
            return gid, I64(0)
        return self.b.udiv(gid, I64(n)), self.b.urem(gid, I64(n))


def _sreg(module, name):
    fn = module.globals.get(name)
    if fn is None:
        fn = ir.Function(module, ir.FunctionType(I32, []), name)
    return fn


def emit_module(kernels: KernelSet, target: str, name: str = "rnncomp", host_triple: str | None = None):
    """One ``ir.Module`` with every kernel, for ``target`` ``"nvptx"`` or ``"host"``."""
    ty, pty = kernels.ty, kernels.ty.as_pointer()
    m = ir.Module(name=name)
    if target == "nvptx":
        m.triple = NVPTX_TRIPLE
        m.data_layout = NVPTX_DATALAYOUT
    elif target == "host":
        if host_triple:
            m.triple = host_triple
    else:
        raise ValueError(f"target must be 'nvptx' or 'host', got {target!r}")
    for k in kernels.kernels.values():
        body = ir.Function(m, ir.FunctionType(ir.VoidType(), [I64, I64, I64] + [pty] * k.nptr),
                           f"{k.name}_body")
        body.linkage = "internal"
        body.attributes.add("alwaysinline")
        entry = body.append_basic_block("entry")
        work = body.append_basic_block("work")
        done = body.append_basic_block("done")
        b = ir.IRBuilder(entry)
        gid, N, R = body.args[:3]
        b.cbranch(b.icmp_unsigned("<", gid, N), work, done)
        b.position_at_end(work)
        k.body(_BodyGen(b, ty, body), gid, N, R, list(body.args[3:]))
        b.branch(done)
        b.position_at_end(done)
        b.ret_void()
        wrapper = ir.Function(m, ir.FunctionType(ir.VoidType(), [I64, I64] + [pty] * k.nptr), k.name)
        wb = ir.IRBuilder(wrapper.append_basic_block("entry"))
        N_, R_, ptrs = wrapper.args[0], wrapper.args[1], list(wrapper.args[2:])
        if target == "nvptx":
            wrapper.calling_convention = "ptx_kernel"
            tid = wb.zext(wb.call(_sreg(m, "llvm.nvvm.read.ptx.sreg.tid.x"), []), I64)
            ctaid = wb.zext(wb.call(_sreg(m, "llvm.nvvm.read.ptx.sreg.ctaid.x"), []), I64)
            ntid = wb.zext(wb.call(_sreg(m, "llvm.nvvm.read.ptx.sreg.ntid.x"), []), I64)
            wb.call(body, [wb.add(wb.mul(ctaid, ntid), tid), N_, R_] + ptrs)
        else:
            with for_range(wb, N_, name="gid") as g_:
                wb.call(body, [g_, N_, R_] + ptrs)
        wb.ret_void()
    return m

