"""Running the PTX kernels: the CUDA driver API through ``cuda-python``, or a host emulator.

Both runners have one interface (``alloc``, ``alloc_host``, ``free``, ``free_host``, ``zero``,
``prepare``, ``execute``, ``run_copies``, ``sync``; copies are operations of a prepared sequence,
or of one call's own: ``run_copies``), so :class:`~.model.PtxModel` drives either with the
same launch plan:

* :class:`CudaRunner`: ``from cuda.bindings import driver`` (``cuda.cuda`` in
  cuda-python < 12.6); PTX loaded with ``cuModuleLoadData`` (the driver JITs it
  for the GPU present), one arena per (T, B) from ``cuMemAlloc``, kernels
  launched with ``cuLaunchKernel`` on one stream.  Every call's status is
  checked; a failure raises :class:`~rnncomp.errors.CompileError` naming the call.
* :class:`HostRunner`: the same kernel bodies compiled for this CPU (each
  wrapper loops over the thread index): the host semantics check.

With ``persistent=False`` the time loop runs on the host: one launch per plan group per
step (T × kernels launches per pass); by default one persistent launch per pass runs all
steps (:mod:`.persistent`), its block and cluster size chosen here per (T, B).  A call's
sequence (uploads from a pinned staging buffer, memsets, launches, downloads) is prepared
once per (T, B) and, with ``graphs=True`` (default), captured into one CUDA graph and
replayed with one ``cuGraphLaunch``.
"""
from __future__ import annotations

import ctypes
import functools

import numpy as np

from ...errors import CompileError
from .persistent import pick_block, pick_cluster

# the copy operations a prepared sequence (or a call's own copies, ``run_copies``) may hold besides
# launches; "rows": ("rows", dst, dst pitch, src, src pitch, bytes per row, rows), device to device
COPIES = ("h2d", "d2h", "memset", "rows")
NO_GPU = "no CUDA GPU/driver found: backend='ptx' can compile (model.ptx) but not run here"


class NoGPUError(CompileError):
    """No usable CUDA driver, cuda-python or GPU in this process."""


def import_driver():
    """The cuda-python driver module (new and old layouts), or raise :class:`NoGPUError`."""
    try:
        from cuda.bindings import driver  # cuda-python >= 12.6
        return driver
    except ImportError:
        pass
    try:
        from cuda import cuda as driver  # older cuda-python
        return driver
    except ImportError:
        raise NoGPUError(f"{NO_GPU} (cuda-python is not installed: pip install cuda-python)") from None


def cuda_available() -> bool:
    """True when cuda-python imports, the driver initialises and sees at least one GPU."""
    try:
        drv = import_driver()
        if drv.cuInit(0)[0] != drv.CUresult.CUDA_SUCCESS:
            return False
        err, n = drv.cuDeviceGetCount()
        return err == drv.CUresult.CUDA_SUCCESS and n > 0
    except Exception:  # noqa: BLE001 - any failure means: no usable GPU
        return False


def _in_context(method):
    """Run a :class:`CudaRunner` method with the runner's (primary) context current on the calling
    thread, and the thread's own current context again after.  The driver keeps a current context
    per thread: a call may come from a thread that never used this runner (a thread pool,
    PyTorch's autograd thread, a DeviceArray collected there), where copies, launches and frees
    fail with CUDA_ERROR_INVALID_CONTEXT without it; and the CUDA runtime (PyTorch's) reads its
    current device from it, so a context left current would move PyTorch's current device to the
    model's on that thread (a model on ``device=1`` called while PyTorch's device is 0)."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        prev = self._check(self.drv.cuCtxGetCurrent(), "cuCtxGetCurrent")
        if prev is not None and int(prev) == int(self.ctx):   # nested, or the thread's own already
            return method(self, *args, **kwargs)
        self._check(self.drv.cuCtxSetCurrent(self.ctx), "cuCtxSetCurrent")
        try:
            return method(self, *args, **kwargs)
        finally:
            self._check(self.drv.cuCtxSetCurrent(prev), "cuCtxSetCurrent (the thread's own context again)")
    return run


class CudaRunner:
    """Loads the PTX once and launches its kernels on its device's primary context, made current
    for each call and the calling thread's own restored after (:func:`_in_context`)."""

    def __init__(self, ptx: str, kernel_names, device: int = 0, block: int = 256, graphs: bool = True,
                 blocks=None, loops=None, loop_block=None, loop_cluster=None):
        self.drv = drv = import_driver()
        self.block = block
        self.blocks = dict(blocks or {})  # tiled kernels: fixed block size, N is the block count
        self.loops = dict(loops or {})    # persistent kernels: name -> (widest row, clusters allowed)
        self.loop_block, self.loop_cluster = loop_block, loop_cluster
        self.graphs = graphs
        try:
            err = drv.cuInit(0)[0]
        except Exception as exc:  # noqa: BLE001 - cuda-python present, the driver library not
            raise NoGPUError(f"{NO_GPU} (cuda-python cannot load the driver: {exc})") from None
        if err != drv.CUresult.CUDA_SUCCESS:
            raise NoGPUError(f"{NO_GPU} (cuInit failed: {self._name(err)})")
        n = self._check(drv.cuDeviceGetCount(), "cuDeviceGetCount")
        if n == 0:
            raise NoGPUError(f"{NO_GPU} (cuDeviceGetCount = 0)")
        self.dev = self._check(drv.cuDeviceGet(device), "cuDeviceGet")
        self.ctx = self._check(drv.cuDevicePrimaryCtxRetain(self.dev), "cuDevicePrimaryCtxRetain")
        self._load(ptx, kernel_names)

    @_in_context
    def _load(self, ptx, kernel_names):
        """The stream, the module (the driver's JIT of the PTX) and its kernels."""
        drv = self.drv
        self.stream = self._check(drv.cuStreamCreate(0), "cuStreamCreate")
        self._image = np.frombuffer(ptx.encode() + b"\0", dtype=np.uint8)
        try:
            self.module = self._check(drv.cuModuleLoadData(self._image.ctypes.data),
                                      "cuModuleLoadData (the driver's JIT of the PTX)")
        except CompileError as exc:
            ver = drv.cuDriverGetVersion()
            raise CompileError(f"{exc}; driver version {ver[1] if len(ver) > 1 else '?'}: an older driver "
                               f"may need an older PTX ISA (features='+ptx80' or '+ptx78')") from None
        self.fns = {k: self._check(drv.cuModuleGetFunction(self.module, k.encode()), f"cuModuleGetFunction({k})")
                    for k in kernel_names}
        self._allocs = []
        self._host = []
        attr = drv.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT
        self.sms = self._check(drv.cuDeviceGetAttribute(attr, self.dev), "cuDeviceGetAttribute")

    # ------------------------------------------------------------------ status checks
    def _name(self, err):
        try:
            r = self.drv.cuGetErrorName(err)
            return f"{r[1].decode() if isinstance(r[1], bytes) else r[1]} ({int(err)})"
        except Exception:  # noqa: BLE001 - best effort naming
            return str(err)

    def _check(self, result, call):
        if not isinstance(result, tuple):
            result = (result,)
        err, rest = result[0], result[1:]
        if err != self.drv.CUresult.CUDA_SUCCESS:
            raise CompileError(f"CUDA driver call {call} failed: {self._name(err)}")
        if not rest:
            return None
        return rest[0] if len(rest) == 1 else rest

    # ------------------------------------------------------------------ memory
    @_in_context
    def alloc(self, nbytes: int) -> int:
        p = self._check(self.drv.cuMemAlloc(max(int(nbytes), 1)), f"cuMemAlloc({nbytes} bytes)")
        self._allocs.append(p)
        return int(p)

    @_in_context
    def free(self, ptr: int):
        for i, p in enumerate(self._allocs):
            if int(p) == ptr:
                self._check(self.drv.cuMemFree(p), "cuMemFree")
                del self._allocs[i]
                return

    @_in_context
    def alloc_host(self, nbytes: int):
        """Pinned (page-locked) host memory: ``(address, uint8 array over it)``; copies from and
        to it can be captured into a CUDA graph."""
        p = int(self._check(self.drv.cuMemHostAlloc(max(int(nbytes), 1), 0), f"cuMemHostAlloc({nbytes} bytes)"))
        self._host.append(p)
        arr = np.ctypeslib.as_array((ctypes.c_uint8 * max(int(nbytes), 1)).from_address(p))
        return p, arr

    @_in_context
    def free_host(self, ptr: int):
        if ptr in self._host:
            self.sync()
            self._check(self.drv.cuMemFreeHost(ptr), "cuMemFreeHost")
            self._host.remove(ptr)

    @_in_context
    def zero(self, ptr: int, nbytes: int):
        self._check(self.drv.cuMemsetD8Async(ptr, 0, nbytes, self.stream), "cuMemsetD8Async")

    @_in_context
    def sync(self):
        self._check(self.drv.cuStreamSynchronize(self.stream), "cuStreamSynchronize (a kernel failed?)")

    @_in_context
    def wait_for(self, streams):
        """Wait until the work queued on ``streams`` (handles a device array's producer exports with
        ``__cuda_array_interface__``: 1 the legacy default stream, 2 per-thread) is done; None:
        every stream of the device (memory of a freed array another stream may still read)."""
        if streams is None:
            self._check(self.drv.cuCtxSynchronize(), "cuCtxSynchronize")
            return
        for h in streams:
            self._check(self.drv.cuStreamSynchronize(self.drv.CUstream(h)), f"cuStreamSynchronize({h})")

    # ------------------------------------------------------------------ launches
    def _loop_shape(self, name, R):
        """``(C blocks per sample, threads per block)`` of a persistent launch over R samples."""
        width, clusters = self.loops[name]
        C = 1
        if clusters:
            C = int(self.loop_cluster) if self.loop_cluster else pick_cluster(width, R, self.sms)
        if self.loop_block:
            return C, int(self.loop_block)
        fn, drv = self.fns[name], self.drv

        def occupancy(nt):
            return self._check(drv.cuOccupancyMaxActiveBlocksPerMultiprocessor(fn, nt, 0),
                               f"cuOccupancyMaxActiveBlocksPerMultiprocessor({name})")
        return C, pick_block(-(-width // C), R * C, self.sms, occupancy)

    def _cluster_config(self, grid, blk, C):
        """A ``CUlaunchConfig`` for ``cuLaunchKernelEx`` with a cluster of C blocks."""
        drv = self.drv
        attr = drv.CUlaunchAttribute()
        attr.id = drv.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION
        attr.value.clusterDim.x, attr.value.clusterDim.y, attr.value.clusterDim.z = C, 1, 1
        cfg = drv.CUlaunchConfig()
        cfg.gridDimX, cfg.gridDimY, cfg.gridDimZ = grid, 1, 1
        cfg.blockDimX, cfg.blockDimY, cfg.blockDimZ = blk, 1, 1
        cfg.sharedMemBytes = 0
        cfg.hStream = self.stream
        cfg.attrs = [attr]
        cfg.numAttrs = 1
        return cfg

    @_in_context
    def prepare(self, launches):
        """``launches``: [(kernel name, N, R rows, [pointer ints])] and copies → a replayable sequence.

        ``N`` is the thread count, or the block count of a tiled or persistent kernel (``blocks[name]``
        threads; a persistent kernel's block size is chosen here, :func:`.persistent.pick_block`).
        Copies: ``("h2d", device, host, bytes)``, ``("d2h", host, device, bytes)``, ``("memset",
        device, bytes)`` (host memory from :meth:`alloc_host`)."""
        seq = []
        for op in launches:
            if op[0] in COPIES:
                seq.append(op)
                continue
            name, N, R, ptrs = op
            vals = [ctypes.c_int64(N), ctypes.c_int64(R)] + [ctypes.c_void_p(p) for p in ptrs]
            arr = (ctypes.c_void_p * len(vals))(*[ctypes.addressof(v) for v in vals])
            cfg = None
            if name in self.loops:
                C, blk = self._loop_shape(name, R)
                grid = max(1, N) * C
                if C > 1:
                    cfg = self._cluster_config(grid, blk, C)
            elif name in self.blocks:
                grid, blk = max(1, N), self.blocks[name]
            else:
                grid, blk = max(1, -(-N // self.block)), self.block
            seq.append((self.fns[name], name, grid, blk, vals, arr, cfg))
        prepared = {"seq": seq, "graph": None}
        if self.graphs:
            prepared["graph"] = self._capture(seq)
        return prepared

    def _launch_all(self, seq):
        drv, st = self.drv, self.stream
        ok = drv.CUresult.CUDA_SUCCESS
        for op in seq:
            if op[0] in COPIES:
                self._copy(op)
                continue
            fn, name, grid, blk, _vals, arr, cfg = op
            if cfg is None:
                err = drv.cuLaunchKernel(fn, grid, 1, 1, blk, 1, 1, 0, st, ctypes.addressof(arr), 0)[0]
            else:
                err = drv.cuLaunchKernelEx(cfg, fn, ctypes.addressof(arr), 0)[0]
            if err != ok:
                call = "cuLaunchKernel" if cfg is None else "cuLaunchKernelEx (a cluster launch)"
                raise CompileError(f"CUDA driver call {call}({name}, grid={grid}, block={blk}) "
                                   f"failed: {self._name(err)}")

    def _copy(self, op):
        drv, st = self.drv, self.stream
        if op[0] == "h2d":
            self._check(drv.cuMemcpyHtoDAsync(op[1], op[2], op[3], st), "cuMemcpyHtoDAsync")
        elif op[0] == "d2h":
            self._check(drv.cuMemcpyDtoHAsync(op[1], op[2], op[3], st), "cuMemcpyDtoHAsync")
        elif op[0] == "rows" and op[2] == op[4] == op[5]:   # contiguous: one plain copy, any size
            self._check(drv.cuMemcpyDtoDAsync(op[1], op[3], op[5] * op[6], st), "cuMemcpyDtoDAsync")
        elif op[0] == "rows":
            self._check(drv.cuMemcpy2DAsync(self._rows(op), st), "cuMemcpy2DAsync (device to device)")
        else:
            self._check(drv.cuMemsetD8Async(op[1], 0, op[2], st), "cuMemsetD8Async")

    def _rows(self, op):
        """The CUDA_MEMCPY2D of a "rows" copy: ``rows`` rows of ``width`` bytes, device to device."""
        _, dst, dpitch, src, spitch, width, rows = op
        drv, c = self.drv, self.drv.CUDA_MEMCPY2D()
        c.srcMemoryType = c.dstMemoryType = drv.CUmemorytype.CU_MEMORYTYPE_DEVICE
        c.srcDevice, c.srcPitch, c.dstDevice, c.dstPitch = src, spitch, dst, dpitch
        c.WidthInBytes, c.Height = width, rows
        return c

    @_in_context
    def run_copies(self, ops):
        """Copies of one call (device addresses that change from call to call: never in a graph),
        on the stream the prepared sequences run on, in order with them."""
        for op in ops:
            self._copy(op)

    def _capture(self, seq):
        """Record ``seq`` into a CUDA graph; None (plain launches) if capture is unavailable."""
        drv = self.drv
        try:
            mode = drv.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL
            self._check(drv.cuStreamBeginCapture(self.stream, mode), "cuStreamBeginCapture")
            try:
                self._launch_all(seq)
            finally:
                graph = self._check(drv.cuStreamEndCapture(self.stream), "cuStreamEndCapture")
            try:
                exe = self._check(drv.cuGraphInstantiate(graph, 0), "cuGraphInstantiate")
            except TypeError:  # cuda-python 11.x signature
                exe = self._check(drv.cuGraphInstantiate(graph, 0, 0), "cuGraphInstantiate")
            return (graph, exe)
        except CompileError:
            self.graphs = False
            return None

    @_in_context
    def execute(self, prepared):
        if prepared["graph"] is not None:
            self._check(self.drv.cuGraphLaunch(prepared["graph"][1], self.stream), "cuGraphLaunch")
        else:
            self._launch_all(prepared["seq"])

    @_in_context
    def release(self, prepared):
        if prepared and prepared.get("graph") is not None:
            graph, exe = prepared["graph"]
            self.drv.cuGraphExecDestroy(exe)
            self.drv.cuGraphDestroy(graph)


class HostRunner:
    """The same kernels compiled for this CPU (one loop over the thread index per launch)."""

    def __init__(self, kernels):
        from ..llvm.jit import HostTarget, compile_module
        from .emit import emit_module

        host = HostTarget.detect()
        module = emit_module(kernels, "host", name="rnncomp_ptx_host", host_triple=host.triple)
        self.ir = str(module)
        # unroll=False, as the native backend's cell code: with loop interleaving, LLVM 22 took
        # time exponential in the depth of a parameter-only chain that a kernel recomputes per
        # element (asin(0.9·tanh(p)): 25 s; a fuzzed cell's: > 12 min; docs/gpu.md)
        self.lib = compile_module(module, cache=None, host=host, unroll=False)
        self.fns = {}
        for k in kernels.kernels.values():
            if not k.entry:
                continue
            proto = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_int64, *([ctypes.c_void_p] * k.nptr))
            self.fns[k.name] = proto(self.lib.address(k.name))
        self._arrays = {}

    def alloc(self, nbytes: int) -> int:
        a = np.zeros(max(int(nbytes), 1) + 64, dtype=np.uint8)
        p = a.ctypes.data
        p_al = (p + 63) // 64 * 64
        self._arrays[p_al] = a
        return p_al

    def free(self, ptr: int):
        self._arrays.pop(ptr, None)

    def alloc_host(self, nbytes: int):
        p = self.alloc(nbytes)
        return p, self._arrays[p][p - self._arrays[p].ctypes.data:][:max(int(nbytes), 1)]

    free_host = free

    def zero(self, ptr: int, nbytes: int):
        ctypes.memset(ptr, 0, nbytes)

    def sync(self):
        pass

    def wait_for(self, streams):
        pass

    def prepare(self, launches):
        return [op if op[0] in COPIES else (self.fns[op[0]], *op[1:]) for op in launches]

    def execute(self, prepared):
        for op in prepared:
            if op[0] == "h2d" or op[0] == "d2h":
                ctypes.memmove(op[1], op[2], op[3])
            elif op[0] == "memset":
                ctypes.memset(op[1], 0, op[2])
            elif op[0] == "rows":
                _, dst, dpitch, src, spitch, width, rows = op
                if width > min(dpitch, spitch):   # cuMemcpy2DAsync refuses it (CUDA_ERROR_INVALID_VALUE)
                    raise CompileError(f"internal: a 'rows' copy of {width} bytes a row with pitches "
                                       f"{dpitch} and {spitch}: a pitch below the row width")
                if dpitch == spitch == width:
                    ctypes.memmove(dst, src, width * rows)
                else:
                    _pitched(dst, dpitch, rows, width)[...] = _pitched(src, spitch, rows, width)
            else:
                fn, N, R, ptrs = op
                fn(N, R, *ptrs)

    run_copies = execute

    def release(self, prepared):
        pass


def _pitched(ptr: int, pitch: int, rows: int, width: int) -> np.ndarray:
    """(rows, width) bytes at ``ptr``, ``pitch`` bytes from row to row (host memory)."""
    if rows == 0 or width == 0:
        return np.empty((rows, width), np.uint8)
    buf = (ctypes.c_uint8 * ((rows - 1) * pitch + width)).from_address(ptr)
    return np.lib.stride_tricks.as_strided(np.frombuffer(buf, np.uint8), (rows, width), (pitch, 1))
