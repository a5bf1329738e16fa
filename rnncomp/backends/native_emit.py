"""Code emission for the native backend: the per-step body of an entry point
(:class:`Gen`): element-wise runs, products, slices, reductions, stacked weights, packed
panels, each value addressed through the :class:`rnncomp.passes.layout.Layout`.

:mod:`.native` decides *what* is computed where (passes, layout, entry points);
this module turns one node at one step into LLVM IR.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir

from ..errors import CompileError
from ..ir import placeholder
from .llvm import kernel_library
from .llvm import vecmath
from .llvm.builder import I64, alloca_once, float_type, for_range, parallel_loop_md
from .llvm.exprgen import LLVMPrinter
from .native_matrix import MatrixEmitter

class Gen:
    """Generates one entry point: the per-step body for a program, inside a time loop."""

    def __init__(self, module, dtype, layout, host, name, profile=None):
        self.m, self.dtype, self.L, self.host = module, np.dtype(dtype), layout, host
        self.profile = profile  # a profiled build: {part: work per row} (native_profile.py)
        self.ty = float_type(self.dtype)
        self.pty = self.ty.as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [I64, I64, self.pty.as_pointer(), self.pty])
        self.fn = ir.Function(module, fnty, name)
        self.T, self.B, self.bufs, self.work = self.fn.args
        self.B_step = self.B
        self.packed: dict = {}
        self.b = ir.IRBuilder(self.fn.append_basic_block("entry"))
        self.gemms: dict = {}

    # ------------------------------------------------------------------ addressing
    def ptr(self, key, t):
        L = self.L
        slot, off, col = L.where[key]
        units = L.step_units(key)
        b = self.b
        base = b.load(b.gep(self.bufs, [I64(slot)], inbounds=True))
        if col:
            base = b.gep(base, [I64(col)], inbounds=True)
        if units == 0:
            return base
        step = b.add(t, I64(off)) if off else t
        # addresses advance by the per-step batch even while self.B spans T·B rows
        return b.gep(base, [b.mul(b.mul(step, self.B_step), I64(units))], inbounds=True)

    def gemm_fn(self, trans_a, trans_b):
        k = (trans_a, trans_b)
        if k not in self.gemms:
            self.gemms[k] = kernel_library.declare(self.m, "gemm", str(self.dtype), k, self.host)
        return self.gemms[k]

    def call_gemm(self, M, N, K, A, lda, trans_a, Bm, ldb, trans_b, C, ldc, acc):
        f = self.gemm_fn(trans_a, trans_b)
        self.b.call(f, [M, N, K, A, lda, Bm, ldb, C, ldc, ir.IntType(32)(acc), self.work])

    # ------------------------------------------------------------------ node kinds
    def ew(self, items, nostore=frozenset()):
        """One loop over batch × units computing a run of element-wise nodes of one size.

        ``items``: (key, node, out, arg pointers, arg (units, shared, row stride), arg keys).
        A value produced earlier in the run is taken from its register, not reloaded."""
        b, n = self.b, items[0][1].size
        # every (b, j) reads and writes its own elements: the j loop is parallel
        group, loop_id = parallel_loop_md(self.m)
        tag = lambda inst: inst.set_metadata("llvm.access.group", group)  # noqa: E731
        with for_range(b, self.B, name="b") as bi:
            with for_range(b, I64(n), name="j", loop_md=loop_id) as j:
                here = {}
                for key, node, out, args, arg_units, arg_keys in items:
                    vals = {}
                    for i, (p, (units, shared, ld), ak) in enumerate(zip(args, arg_units, arg_keys)):
                        if ak in here:
                            vals[placeholder(i)] = here[ak]
                            continue
                        if shared:
                            idx = j if units > 1 else I64(0)
                        elif units > 1:
                            idx = b.add(b.mul(bi, I64(ld)), j)
                        else:
                            idx = b.mul(bi, I64(ld)) if ld != 1 else bi
                        vals[placeholder(i)] = ld = b.load(b.gep(p, [idx], inbounds=True))
                        tag(ld)
                    v = LLVMPrinter(b, self.ty, vals).emit_all(node.attrs["expr"])
                    if key not in nostore:
                        ld_out = self.L.ld(key, n)
                        tag(b.store(v, b.gep(out, [b.add(b.mul(bi, I64(ld_out)), j)], inbounds=True)))
                    here[key] = v

    def matvec(self, node, out, v, n_in, params, shapes, lda=None, ldc=None):
        lda, ldc = lda or n_in, ldc or node.size
        for i, ((p, tr, c), P, shape) in enumerate(zip(node.attrs["terms"], params, shapes)):
            m_, n_ = shape
            # y[B, rows] (+)= v[B, cols] @ op(P): P is (m_, n_); untransposed: v @ Pᵀ
            if c != 1:
                raise CompileError("internal: scaled terms are lowered before code generation")
            if (p, tr) in self.packed:  # recurrent weights: packed once before the time loop
                f = self.packed_gemm()
                self.b.call(f, [self.B, I64(node.size), I64(n_in), v, I64(lda), self.packed[(p, tr)],
                                out, I64(ldc), ir.IntType(32)(1 if i else 0), self.work])
                continue
            self.call_gemm(self.B, I64(node.size), I64(n_in), v, I64(lda), False,
                           P, I64(n_), not tr, out, I64(ldc), 1 if i else 0)

    def packed_gemm(self):
        return kernel_library.declare(self.m, "gemm_packed_b", str(self.dtype), (False,), self.host)

    def packed_pointers(self, terms, slots):
        """Where op(P) of each packed (param, transposed) lives (loaded where it dominates
        every use: the packing itself may be skipped, see ``NativeModel._prologue``)."""
        b = self.b
        for (p, tr), slot in slots.items():
            if (p, tr) in terms:
                self.packed[(p, tr)] = b.load(b.gep(self.bufs, [I64(slot)]))

    def pack_weights(self, terms, slots, shapes):
        """Pack op(P) of each (param, transposed) into the buffer of :meth:`packed_pointers`."""
        b = self.b
        for (p, tr), slot in slots.items():
            if (p, tr) not in terms:
                continue
            m_, n_ = shapes[p]
            K, N = (m_, n_) if tr else (n_, m_)
            f = kernel_library.declare(self.m, "pack_b", str(self.dtype), (not tr,), self.host)
            src = b.load(b.gep(self.bufs, [I64(self.L.where[(p, None)].slot)]))
            b.call(f, [I64(K), I64(N), src, I64(n_), self.packed[(p, tr)]])

    def build_stacks(self, stacks, shapes):
        """Pass "stack": fill each stacked weight from its parameters (once per call)."""
        b = self.b
        for stk in stacks.values():
            dst = b.load(b.gep(self.bufs, [I64(self.L.where[(stk.name, None)].slot)]))
            if stk.axis == "sum":   # Σ c·op(P): row r, column j of every term added in turn
                self._sum_weights(dst, stk)
                continue
            at = 0
            for p in stk.parts:
                src = b.load(b.gep(self.bufs, [I64(self.L.where[(p, None)].slot)]))
                rows_, cols_ = shapes[p]
                if stk.axis == 0:  # rows stacked: each part is one contiguous block
                    self.copy_loop(b.gep(dst, [I64(at * cols_)]), src, I64(rows_ * cols_))
                    at += rows_
                else:  # columns stacked: row r of part i lands at r·ΣC + offset
                    with for_range(b, I64(rows_), name="sr") as r:
                        self.copy_loop(b.gep(dst, [b.add(b.mul(r, I64(stk.shape[1])), I64(at))]),
                                       b.gep(src, [b.mul(r, I64(cols_))]), I64(cols_))
                    at += cols_

    def _sum_weights(self, dst, stk):
        """dst = Σ c·op(P) over a summed weight's terms (an untransposed P is one flat run)."""
        b = self.b
        rows_, cols_ = stk.shape
        for i, (p, tr, c) in enumerate(stk.terms):
            src = b.load(b.gep(self.bufs, [I64(self.L.where[(p, None)].slot)]))
            if not tr:
                self.copy_loop(dst, src, I64(rows_ * cols_), scale=None if c == 1 else c, accumulate=i > 0)
                continue
            with for_range(b, I64(rows_), name="wr") as r:
                with for_range(b, I64(cols_), name="wc") as j:
                    x = b.load(b.gep(src, [b.add(b.mul(j, I64(rows_)), r)], inbounds=True))
                    x = x if c == 1 else b.fmul(x, ir.Constant(self.ty, float(c)))
                    out = b.gep(dst, [b.add(b.mul(r, I64(cols_)), j)], inbounds=True)
                    b.store(x if i == 0 else b.fadd(b.load(out), x), out)

    def scaled_rows(self, out, tmp, n, ld_out, scale, accumulate):
        """out[b, :n] (+)= scale · tmp[b, :n] for every row (``out`` may be strided)."""
        b = self.b
        with for_range(b, self.B, name="sb") as bi:
            self.copy_loop(b.gep(out, [b.mul(bi, I64(ld_out))]), b.gep(tmp, [b.mul(bi, I64(n))]),
                           I64(n), scale=scale, accumulate=accumulate)

    def add_batch_sums(self, dst, src, n, ld):
        """dst[:n] += Σ over the batch rows (``self.B``: T·B after the loop) of src[b, :n] (row stride ``ld``)."""
        MatrixEmitter(self.b, self.ty, self.dtype.itemsize).add_column_sums(dst, src, self.B, n, ld)

    def copy_loop(self, dst, src, count, scale=None, accumulate=False):
        b = self.b
        with for_range(b, count, name="k") as k:
            v = b.load(b.gep(src, [k], inbounds=True))
            if scale is not None:
                v = b.fmul(v, ir.Constant(self.ty, float(scale)))
            if accumulate:
                v = b.fadd(b.load(b.gep(dst, [k], inbounds=True)), v)
            b.store(v, b.gep(dst, [k], inbounds=True))

    def rows(self, out, n_out, v, n_in, lo, mode, ld_out=None, ld_in=None):
        """slice (mode 'slice'), pad ('pad'), or a concat part ('part')."""
        b = self.b
        ld_out, ld_in = ld_out or n_out, ld_in or n_in
        with for_range(b, self.B, name="b") as bi:
            if mode == "pad":
                with for_range(b, I64(n_out), name="z") as z:
                    b.store(ir.Constant(self.ty, 0.0), b.gep(out, [b.add(b.mul(bi, I64(ld_out)), z)]))
            count = n_out if mode == "slice" else n_in
            with for_range(b, I64(count), name="j") as j:
                if mode == "slice":
                    src = b.add(b.mul(bi, I64(ld_in)), b.add(j, I64(lo)))
                    dst = b.add(b.mul(bi, I64(ld_out)), j)
                else:
                    src = b.add(b.mul(bi, I64(ld_in)), j)
                    dst = b.add(b.mul(bi, I64(ld_out)), b.add(j, I64(lo)))
                b.store(b.load(b.gep(v, [src])), b.gep(out, [dst]))

    def matrix(self, node, out, args, ld_out, ld_args):
        """A matrix-state op (:mod:`rnncomp.matrix_dsl`; (m, n) flattened row-major) for every
        sample, as vector code over the contiguous rows (:mod:`.native_matrix`)."""
        b, em = self.b, MatrixEmitter(self.b, self.ty, self.dtype.itemsize)
        with for_range(b, self.B, name="mb") as r:
            o = b.gep(out, [b.mul(r, I64(ld_out))], inbounds=True)
            a = [b.gep(p, [b.mul(r, I64(ld))], inbounds=True) for p, ld in zip(args, ld_args)]
            em.emit(node.op, o, a, node.attrs["shape"], node.attrs.get("axis", 1), node.attrs.get("transposed", False))

    def reduce(self, out, v, n, lse, ld_out, ld_in=None):
        """Σ_j v[b, j] (a row sum of a 1 × n matrix: vector lanes, :mod:`.native_matrix`) or,
        ``lse``, the stable log Σ exp of ``vecmath.emit_row_reduce`` (shared with PTX)."""
        b = self.b
        em = MatrixEmitter(b, self.ty, self.dtype.itemsize)
        acc = alloca_once(b, self.ty, "acc")
        mx = alloca_once(b, self.ty, "max")
        with for_range(b, self.B, name="b") as bi:
            row = b.gep(v, [b.mul(bi, I64(ld_in or n))])
            dst = b.gep(out, [b.mul(bi, I64(ld_out)) if ld_out != 1 else bi])
            if lse:
                b.store(vecmath.emit_row_reduce(b, row, n, lse, acc, mx), dst)
            else:
                em.row_sums(dst, [row], 1, n)


def units_of(node):
    return node.size if isinstance(node.size, int) else 0
