"""The persistent kernel: a whole pass of T steps in one launch, one block per sample.

The recurrence couples the units of one sample across steps, never two samples: every
per-step kernel of the plan (products, element-wise runs, slices, row sums, carry
copies) computes row b of its output from row b of its inputs and from parameters.
So a block that owns a set of batch rows can run all T steps of those rows alone:

    for t in 0 … T-1 (the backward pass: T-1 … 0):
        for each launch of the step, in plan order:
            threads of the block share the elements of the block's rows
            barrier (the block's threads see each other's writes)

No grid-wide barrier and no cooperative launch are needed: blocks never wait for each
other, and any number of them may run at once.  One launch replaces T × (launches per
step) launches, and with them the GPU's gap between kernels.  The step kernels are the
plan's *simple* kernels (one thread per element), whose bodies are inlined here; the
products read their weight transposed (:func:`.weight_kernels.transpose`, once per
call) so that the threads of a warp read consecutive addresses.  Hoisted products and
parameter gradients stay tiled GEMM launches before and after the loop.

A value's address at step t is its address at step 0 plus ``t · B · units`` elements
(:func:`.layout.address`), so the kernel takes each distinct value's step-0 pointer
and its ``units`` (0 for parameters).  Signature: ``k(N blocks, R = B, T, p_1 … p_k)``.
On the host runner a block is a loop over its elements, which is exact: no two blocks
touch the same row.
"""
from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

from ...errors import CompileError
from ...ir import internal
from ..llvm.builder import I64, for_range
from .irgen import sreg
from .tiled import Tiled

T_KEY = (internal("T"), None)  # the launch argument that stands for the sequence length
MAX_POINTERS = 480     # CUDA kernel parameters: 4 KiB, 8 bytes a pointer


@dataclass
class Persistent:
    """``steps``: ``(kernel name, elements per row, argument indices)`` in launch order;
    ``strides[i]``: elements per row of pointer i (0: not per step); ``reverse``: t runs
    T-1 … 0.  The block size is chosen per launch (``ntid.x``): see :func:`pick_block`."""

    steps: tuple
    strides: tuple
    reverse: bool
    clusters: bool = False  # sm_90+: a sample's elements may be shared by a cluster of blocks

    @property
    def width(self) -> int:
        """The most elements per row of one of the step's kernels (the work a block shares)."""
        return max((n for _, n, _ in self.steps), default=1)


def pick_block(width: int, rows: int, sms: int, occupancy) -> int:
    """Threads per block for a persistent launch over ``rows`` samples (one block each).

    The widest block that still lets every block be resident at once (no second wave):
    one thread per element of the widest kernel, at most 1024, else the next smaller of
    512, 256, 128, 64 for which ``occupancy(threads)`` blocks per multiprocessor times
    ``sms`` cover ``rows``; if none does, 256.  (Measured on an H100: LSTM H=512 B=64 runs
    faster with 512 threads than 256, LSTM H=128 B=512 slower: 3 blocks of 512 fit a
    multiprocessor, so 512 rows need a second wave.)"""
    top = min(1024, max(64, -(-width // 32) * 32))
    for nt in sorted({top} | {c for c in (512, 256, 128, 64) if c < top}, reverse=True):
        per_sm = occupancy(nt)
        if per_sm >= 1 and rows <= per_sm * sms:
            return nt
    return min(256, top)


def pick_cluster(width: int, rows: int, sms: int) -> int:
    """Blocks per sample (a thread-block cluster, sm_90+) when the batch leaves multiprocessors idle.

    The largest of 8, 4, 2 with ``rows · C ≤ sms`` that leaves each block at least 1024
    elements of the widest kernel; else 1.  Each block of a cluster then reads 1/C of the
    weights of a product, but every kernel of a step ends with a cluster barrier instead of
    ``bar.sync``.  Measured on an H100 (float32, kernels alone): LSTM H=512 B=64 1.07× faster
    with C=2 (2048 elements: 1024 a block), but GRU H=512 (1536), LSTM H=256 (1024) 1.05×
    slower, and LSTM H=128 B=32 (C=4), GRU H=128, LSTM H=64 B=8 1.2–1.6× slower."""
    for c in (8, 4, 2):
        if rows * c <= sms and width >= 1024 * c:
            return c
    return 1


def loop_launch(ks, layout, launches, reverse: bool, where: str, launch_cls, required=True, clusters=False):
    """One persistent launch that runs ``launches`` (one step's, in order) for every step.

    None (and the launches stay as they are) when the kernel would take more pointers than
    CUDA allows and ``required`` is False; with ``required`` that is an error."""
    keys, steps, computes = [], [], []
    for x in launches:
        for a in x.args:
            if a not in keys:
                keys.append(a)
    if len(keys) > MAX_POINTERS:
        if not required:
            return None
        raise CompileError(f"{where}: the persistent kernel would take {len(keys)} pointers, more than "
                           f"{MAX_POINTERS} (CUDA's 4 KiB of kernel parameters); compile with persistent=False")
    for x in launches:
        k = ks.kernels[x.kernel]
        if k.per_row is None or isinstance(k.body, Tiled):
            raise CompileError(f"{where}: internal: the persistent kernel needs a row-wise kernel, got "
                               f"{k.name} ({k.doc})")
        steps.append((x.kernel, k.per_row, tuple(keys.index(a) for a in x.args)))
        computes += list(x.computes)
    for x in launches:
        ks.kernels[x.kernel].entry = False
    strides = [layout.step_units(a) for a in keys]
    doc = f"{'backward' if reverse else 'forward'} pass, all steps: {len(steps)} kernels per step inlined"
    name = ks.add("loop", len(keys) + 1, Persistent(tuple(steps), tuple(strides), reverse, clusters),
                  size=lambda R: R, doc=doc)
    return launch_cls(name, (T_KEY,) + tuple(keys), rows="B", note=doc, computes=tuple(computes))


def emit_persistent(m, k, ty, pty, target):
    """``k(N, R, T, ptrs…)``: block ``bid`` owns rows ``[bid·rb, min((bid+1)·rb, R))``,
    ``rb = ⌈R / N⌉``; nvptx: ``tid.x`` walks the elements with stride ``ntid.x`` and
    ``llvm.nvvm.barrier0`` ends each kernel; host: a loop over blocks, then elements.

    With ``clusters`` (sm_90+), ``bid`` is the cluster's index and the ``C`` blocks of a
    cluster share the elements (thread ``rank·ntid + tid``, stride ``C·ntid``); a kernel then
    ends with the cluster barrier (``barrier.cluster.arrive`` / ``wait``: release and acquire
    at cluster scope, so the next kernel's reads see every block's writes), or ``bar.sync``
    when the launch has no clusters (``C`` = 1, a uniform branch)."""
    prog: Persistent = k.body
    fn = ir.Function(m, ir.FunctionType(ir.VoidType(), [I64, I64, I64] + [pty] * (k.nptr - 1)), k.name)
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    N, R, T, ptrs = fn.args[0], fn.args[1], fn.args[2], list(fn.args[3:])
    bodies = []
    for name, _, _ in prog.steps:
        body = m.globals.get(f"{name}_body")
        if body is None:
            raise CompileError(f"internal: kernel body {name}_body is not emitted before {k.name}")
        bodies.append(body)
    nvptx = target == "nvptx"
    rb = b.udiv(b.add(R, b.sub(N, I64(1))), N)

    def block(bid, tid, step):
        r0 = b.mul(bid, rb)
        r1 = b.add(r0, rb)
        r1 = b.select(b.icmp_signed("<", r1, R), r1, R)
        with for_range(b, T, name="s") as s:
            t = b.sub(b.sub(T, I64(1)), s) if prog.reverse else s
            tR = b.mul(t, R)
            for (name, n, idx), body in zip(prog.steps, bodies):
                args = []
                for i in idx:
                    st = prog.strides[i]
                    args.append(ptrs[i] if not st else b.gep(ptrs[i], [b.mul(tR, I64(st))], inbounds=True))
                lo = b.mul(r0, I64(n))
                if tid is not None:
                    lo = b.add(lo, tid)
                with for_range(b, b.mul(r1, I64(n)), start=lo, step=step, name="e") as e:
                    b.call(body, [e, b.mul(R, I64(n)), R] + args)
                if nvptx:
                    sync()

    if nvptx:
        fn.calling_convention = "ptx_kernel"
        barrier = m.globals.get("llvm.nvvm.barrier0") or ir.Function(
            m, ir.FunctionType(ir.VoidType(), []), "llvm.nvvm.barrier0")
        void = ir.FunctionType(ir.VoidType(), [])
        reg = lambda name: b.zext(b.call(sreg(m, f"llvm.nvvm.read.ptx.sreg.{name}"), []), I64)  # noqa: E731
        tid, ntid = reg("tid.x"), reg("ntid.x")
        if not prog.clusters:
            def sync():
                b.call(barrier, [])
            block(reg("ctaid.x"), tid, ntid)
        else:
            arrive = m.globals.get("llvm.nvvm.barrier.cluster.arrive") or ir.Function(
                m, void, "llvm.nvvm.barrier.cluster.arrive")
            wait = m.globals.get("llvm.nvvm.barrier.cluster.wait") or ir.Function(
                m, void, "llvm.nvvm.barrier.cluster.wait")
            ncta = reg("cluster.nctarank")
            alone = b.icmp_unsigned("==", ncta, I64(1))

            def sync():
                with b.if_else(alone) as (one, many):
                    with one:
                        b.call(barrier, [])
                    with many:
                        b.call(arrive, [])
                        b.call(wait, [])
            block(reg("clusterid.x"), b.add(b.mul(reg("cluster.ctarank"), ntid), tid), b.mul(ncta, ntid))
    else:
        with for_range(b, N, name="bid") as bid_:
            block(bid_, None, I64(1))
    b.ret_void()
