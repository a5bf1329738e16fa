"""The PTX backend (GitHub issue #6): ``rc.compile(cell, backend="ptx", arch="sm_90")``.

codegen.py  kernels as LLVM IR (nvptx64 ``ptx_kernel`` entries, or host loops over the same bodies)
tiled.py    products through shared memory (block programs)
irgen.py    the NVPTX target, element types, body-emitter helpers
plan.py     device-memory layout and launch lists (hoisted products, per-step nodes, gradients;
            pass "stack" through rnncomp.passes.stack, shared with the native backend)
persistent.py  one launch per pass: all T steps in a kernel, a block (or cluster) per sample
ptxgen.py   LLVM IR → PTX (in a child process), ``ptxas`` checks
runtime.py  CUDA driver API via cuda-python; the host emulator
staging.py  a call's pinned host buffer: a region per array moved, the copies to and from the arena
device.py   calls on device arrays (__cuda_array_interface__) in and out: device-to-device copies
model.py    :class:`PtxModel`
"""
from .model import PtxModel
from .runtime import NO_GPU, NoGPUError

__all__ = ["PtxModel", "NoGPUError", "NO_GPU"]
