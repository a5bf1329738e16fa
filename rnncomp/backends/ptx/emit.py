"""One LLVM module from a :class:`~.codegen.KernelSet`: every kernel's body wrapped for a target.

The same body ``body(gid, N, R, p...)`` is called by one of two wrappers:

* ``nvptx``: a ``ptx_kernel`` entry ``k(N, R, p...)`` with
  ``gid = ctaid.x · ntid.x + tid.x`` (the calling convention matters: without
  it LLVM 22 emits a ``.func`` nobody can launch);
* ``host``: a plain function ``k(N, R, p...)`` that loops ``gid = 0 … N-1``.
  Compiled for this CPU, it runs the *same* indexing and math as the GPU
  kernels, so the host semantics check (``runner="host"``) catches indexing
  bugs without a GPU.

Tiled products (:mod:`.tiled`) and the persistent kernel (:mod:`.persistent`) emit their own.
"""
from __future__ import annotations

from llvmlite import ir

from ..llvm.builder import I64, for_range
from .codegen import KernelSet
from .irgen import NVPTX_DATALAYOUT, NVPTX_TRIPLE, BodyGen, sreg
from .tiled import Tiled, emit_tiled


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
    from .persistent import Persistent, emit_persistent
    for k in kernels.kernels.values():
        if isinstance(k.body, Tiled):
            emit_tiled(m, k, ty, pty, target)
            continue
        if isinstance(k.body, Persistent):
            emit_persistent(m, k, ty, pty, target)
            continue
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
        k.body(BodyGen(b, ty, body), gid, N, R, list(body.args[3:]))
        b.branch(done)
        b.position_at_end(done)
        b.ret_void()
        if not k.entry:
            continue
        wrapper = ir.Function(m, ir.FunctionType(ir.VoidType(), [I64, I64] + [pty] * k.nptr), k.name)
        wb = ir.IRBuilder(wrapper.append_basic_block("entry"))
        N_, R_, ptrs = wrapper.args[0], wrapper.args[1], list(wrapper.args[2:])
        if target == "nvptx":
            wrapper.calling_convention = "ptx_kernel"
            tid = wb.zext(wb.call(sreg(m, "llvm.nvvm.read.ptx.sreg.tid.x"), []), I64)
            ctaid = wb.zext(wb.call(sreg(m, "llvm.nvvm.read.ptx.sreg.ctaid.x"), []), I64)
            ntid = wb.zext(wb.call(sreg(m, "llvm.nvvm.read.ptx.sreg.ntid.x"), []), I64)
            wb.call(body, [wb.add(wb.mul(ctaid, ntid), tid), N_, R_] + ptrs)
        else:
            with for_range(wb, N_, name="gid") as g_:
                wb.call(body, [g_, N_, R_] + ptrs)
        wb.ret_void()
    return m
