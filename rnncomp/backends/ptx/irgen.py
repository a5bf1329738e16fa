"""Small shared pieces of the PTX backend's LLVM IR generation: the NVPTX target
(element types: :func:`..llvm.builder.float_type`), what a kernel body emitter gets (:class:`BodyGen`) and special registers."""
from __future__ import annotations

from llvmlite import ir

from ..llvm.builder import I64

I32 = ir.IntType(32)
NVPTX_TRIPLE = "nvptx64-nvidia-cuda"
NVPTX_DATALAYOUT = "e-p6:32:32-i64:64-i128:128-v16:16-v32:32-n16:32:64"


class BodyGen:
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

    def wide_acc(self):
        """An accumulator for a long serial sum (a thread's T·B rows): double where the
        kernel's type is float, whose running sum of T·B terms would lose up to T·B·2⁻²⁴
        (1e-2 relative at T = B = 2,000).  Add :meth:`widen` values; :meth:`narrow` the sum."""
        b, wide = self.b, ir.DoubleType()
        with b.goto_entry_block():
            p = b.alloca(wide)
        b.store(ir.Constant(wide, 0.0), p)
        return p

    def widen(self, v):
        return v if isinstance(self.ty, ir.DoubleType) else self.b.fpext(v, ir.DoubleType())

    def narrow(self, v):
        return v if isinstance(self.ty, ir.DoubleType) else self.b.fptrunc(v, self.ty)

    def divmod(self, gid, n: int):
        if n == 1:
            return gid, I64(0)
        return self.b.udiv(gid, I64(n)), self.b.urem(gid, I64(n))

    def row_index(self, row, j, ld: int):
        """``row·ld + j`` (``j`` None: column 0)."""
        b = self.b
        base = row if ld == 1 else b.mul(row, I64(ld))
        return base if j is None else b.add(base, j)


def sreg(module, name):
    fn = module.globals.get(name)
    if fn is None:
        fn = ir.Function(module, ir.FunctionType(I32, []), name)
    return fn
