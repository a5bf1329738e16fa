"""Builder idioms over llvmlite's ``IRBuilder``: loops, entry-block allocas, branches.

Every code generator in rnncomp uses these instead of wiring basic blocks by
hand (after numba's ``cgutils``).

    >>> from llvmlite import ir
    >>> m = ir.Module(); i64 = ir.IntType(64)
    >>> f = ir.Function(m, ir.FunctionType(i64, [i64]), "tri")
    >>> b = ir.IRBuilder(f.append_basic_block("entry"))
    >>> acc = alloca_once(b, i64, "acc"); _ = b.store(i64(0), acc)
    >>> with for_range(b, f.args[0]) as i:
    ...     _ = b.store(b.add(b.load(acc), i), acc)
    >>> _ = b.ret(b.load(acc))
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
from llvmlite import ir

I64 = ir.IntType(64)
I32 = ir.IntType(32)
I1 = ir.IntType(1)
FLOAT_TYPES = {np.dtype("float32"): ir.FloatType(), np.dtype("float64"): ir.DoubleType()}


def float_type(dtype, what: str = "dtype") -> ir.Type:
    """The LLVM type of a float32 or float64 value (``dtype``: a name or a NumPy dtype)."""
    try:
        return FLOAT_TYPES[np.dtype(dtype)]
    except (TypeError, KeyError):
        raise ValueError(f"{what} must be float32 or float64, got {dtype}") from None


def alloca_once(builder: ir.IRBuilder, ty, name: str = "", size=None):
    """An ``alloca`` placed in the function's entry block, so loops do not grow the stack."""
    with builder.goto_entry_block():
        return builder.alloca(ty, size=size, name=name)


def parallel_loop_md(module: ir.Module):
    """(access group, loop id) metadata asserting that the memory accesses tagged with the
    group carry no dependence between iterations of the loop (``llvm.loop.parallel_accesses``).

    The vectoriser then needs no runtime overlap checks (a fused element-wise run reads and
    writes many buffers; without the promise, every row's loop compares their addresses first:
    ``test_native_emit.py::test_ew_run_over_many_buffers_is_vectorised``)."""
    group = _DistinctMD(module, [], name=str(len(module.metadata)))  # an empty, distinct node
    par = module.add_metadata([ir.MetaDataString(module, "llvm.loop.parallel_accesses"), group])
    loop_id = _DistinctMD(module, [], name=str(len(module.metadata)))
    loop_id.operands = (loop_id, par)  # a loop id refers to itself first
    return group, loop_id


class _DistinctMD(ir.values.MDValue):
    """A metadata node printed ``distinct !{...}`` (never merged with an equal one)."""

    def descr(self, buf):
        buf.append("distinct ")
        super().descr(buf)

    def __hash__(self):  # operands may refer to the node itself
        return id(self)

    def __eq__(self, other):
        return self is other


@contextmanager
def for_range(builder: ir.IRBuilder, count, start=None, step=None, name: str = "i", loop_md=None):
    """``for (i = start; i < count; i += step)``; yields ``i`` (an i64 value).

    The loop variable is a phi node, so LLVM sees a canonical counted loop and can
    vectorise it.  ``loop_md``: a loop id (see :func:`parallel_loop_md`) put on the latch.
    """
    ty = count.type
    start = ty(0) if start is None else start
    step = ty(1) if step is None else step
    pre = builder.block
    fn = pre.function
    cond_bb = fn.append_basic_block(f"{name}.cond")
    body_bb = fn.append_basic_block(f"{name}.body")
    end_bb = fn.append_basic_block(f"{name}.end")
    builder.branch(cond_bb)
    builder.position_at_end(cond_bb)
    idx = builder.phi(ty, name=name)
    idx.add_incoming(start, pre)
    builder.cbranch(builder.icmp_signed("<", idx, count), body_bb, end_bb)
    builder.position_at_end(body_bb)
    yield idx
    nxt = builder.add(idx, step, name=f"{name}.next", flags=("nsw",))
    idx.add_incoming(nxt, builder.block)
    latch = builder.branch(cond_bb)
    if loop_md is not None:
        latch.set_metadata("llvm.loop", loop_md)
    builder.position_at_end(end_bb)


@contextmanager
def if_then(builder: ir.IRBuilder, pred, likely: bool | None = None):
    """``if (pred) { ... }`` with an optional branch-weight hint."""
    with builder.if_then(pred, likely=likely):
        yield


def gep(builder: ir.IRBuilder, ptr, *indices, name: str = ""):
    """Pointer arithmetic on element pointers: ``ptr + i``."""
    return builder.gep(ptr, [i if isinstance(i, ir.Value) else I64(i) for i in indices],
                       inbounds=True, name=name)
