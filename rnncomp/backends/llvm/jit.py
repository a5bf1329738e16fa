"""Turning an llvmlite ``ir.Module`` into callable native code for this CPU.

Owns: LLVM initialisation, the host target machine, the optimisation pipeline
(new pass manager, O3, loop + SLP vectorisation; loop unrolling optional, see
:func:`optimize`), object emission, the on-disk object cache (each folder bounded:
:data:`MAX_ENTRIES`, the least recently used removed) and loading objects into an MCJIT
engine.  No global engines: every
``NativeLibrary`` owns its engine and keeps it alive as long as it is referenced.

    >>> from llvmlite import ir
    >>> m = ir.Module(name="demo")
    >>> f = ir.Function(m, ir.FunctionType(ir.DoubleType(), [ir.DoubleType()]), "twice")
    >>> b = ir.IRBuilder(f.append_basic_block())
    >>> _ = b.ret(b.fadd(f.args[0], f.args[0]))
    >>> import ctypes
    >>> lib = compile_module(m, cache=None)
    >>> ctypes.CFUNCTYPE(ctypes.c_double, ctypes.c_double)(lib.address("twice"))(1.5)
    3.0
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass

import llvmlite
import llvmlite.binding as llvm

from ...errors import CompileError

_init_lock = threading.Lock()
_initialized = False


def _ensure_init() -> None:
    global _initialized
    with _init_lock:
        if not _initialized:
            llvm.initialize_native_target()
            llvm.initialize_native_asmprinter()
            _initialized = True


@dataclass(frozen=True)
class HostTarget:
    """The CPU we compile for: its triple, name and feature string."""

    triple: str
    cpu: str
    features: str

    @classmethod
    def detect(cls) -> "HostTarget":
        _ensure_init()
        features = llvm.get_host_cpu_features().flatten()
        if "+avx512f" in features.split(","):
            # LLVM's tuning for AVX-512 chips keeps loops at 256 bits; our vector math and
            # element-wise loops measured 10-45% faster with 512-bit vectors here
            features += ",-prefer-256-bit"
        return cls(llvm.get_process_triple(), llvm.get_host_cpu_name(), features)

    def has(self, feature: str) -> bool:
        return f"+{feature}" in self.features.split(",")

    def machine(self, opt: int = 3):
        target = llvm.Target.from_triple(self.triple)
        return target.create_target_machine(cpu=self.cpu, features=self.features,
                                            opt=opt, reloc="default", codemodel="jitdefault")


def default_cache_dir() -> str:
    """``$RNNCOMP_CACHE_DIR`` if set, else the platform cache directory."""
    env = os.environ.get("RNNCOMP_CACHE_DIR")
    if env:
        return os.path.expanduser(env)
    import platformdirs  # honours XDG_CACHE_HOME on Linux; the right place on macOS and Windows

    return platformdirs.user_cache_dir("rnncomp", appauthor=False)


def optimize(mod, tm, level: int = 3, unroll: bool = True) -> None:
    """Run the new pass manager's O``level`` pipeline with loop and SLP vectorisation.

    ``unroll=False`` turns off loop unrolling and interleaving.  A cell's element-wise loops
    run over a compile-time number of units, so after vectorisation LLVM unrolled each one,
    inlined vector math and all, completely: 4x the code and 2-3x the optimisation and code
    generation time of an LSTM, for no speed we could measure (docs/architecture.md,
    "Compile time")."""
    pto = llvm.PipelineTuningOptions(speed_level=level)
    pto.loop_interleaving = unroll
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pto.loop_unrolling = unroll
    run_default_pipeline(mod, tm, pto)


def run_default_pipeline(mod, tm, pto) -> None:
    """Run the default per-module pipeline of ``pto`` on ``mod``, then free the pass manager.

    llvmlite (0.45 to 0.50 at least) never frees a ``ModulePassManager``: the class lists
    ``ffi.ObjectRef`` before ``NewPassManager``, so ObjectRef's empty ``_dispose`` hides the one
    that deletes it, and every pass of the O3 pipeline leaks with the maps it grew on the module
    (~150 kB per cell compiled, ~290 kB for an LSTM H=64: a process that compiled 400 cells held
    110 MB more). So it is freed here, by its own C entry point when llvmlite would not."""
    pb = llvm.create_pass_builder(tm, pto)
    pm = pb.getModulePassManager()
    try:
        pm.run(mod, pb)
    finally:
        free_pass_manager(pm)


def free_pass_manager(pm) -> None:
    """Delete an llvmlite ``ModulePassManager`` now (see :func:`run_default_pipeline`)."""
    from llvmlite.binding import ffi

    if pm.closed:
        return
    if type(pm)._dispose is ffi.ObjectRef._dispose:  # llvmlite's no-op: delete it ourselves
        ffi.lib.LLVMPY_DisposeNewModulePassManger(pm)
        pm.detach()
    else:  # an llvmlite whose close() deletes it
        pm.close()


def parse_and_verify(ir_module) -> "llvm.ModuleRef":
    _ensure_init()
    text = str(ir_module)
    try:
        mod = llvm.parse_assembly(text)
        mod.verify()
    except RuntimeError as exc:  # llvmlite reports parse/verify failures this way
        raise CompileError(f"LLVM rejected the generated module {ir_module.name!r}: {exc}") from None
    return mod


class NativeLibrary:
    """Compiled object code loaded into its own MCJIT engine."""

    def __init__(self, obj: bytes, ir_text: str | None, host: HostTarget, optimized_ir: str | None,
                 rebuild=None, unroll: bool = True):
        _ensure_init()
        self._ir_text, self._rebuild, self._unroll = ir_text, rebuild, unroll
        self._optimized_ir = optimized_ir
        self.host = host
        self._object = obj
        tm = host.machine()
        backing = llvm.parse_assembly("")
        backing.triple = host.triple
        self._engine = llvm.create_mcjit_compiler(backing, tm)
        self._engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
        self._engine.finalize_object()

    @property
    def unroll(self) -> bool:
        """Whether the pipeline that optimised it unrolled and interleaved loops (:func:`optimize`)."""
        return self._unroll

    @property
    def ir_text(self) -> str:
        """The LLVM IR (regenerated on demand when the object came from the cache)."""
        if self._ir_text is None:
            self._ir_text = str(self._rebuild())
        return self._ir_text

    def address(self, name: str) -> int:
        addr = self._engine.get_function_address(name)
        if not addr:
            raise CompileError(f"compiled library has no function {name!r}")
        return addr

    def global_address(self, name: str) -> int:
        """Address of global variable ``name`` of the library."""
        addr = self._engine.get_global_value_address(name)
        if not addr:
            raise CompileError(f"compiled library has no global {name!r}")
        return addr

    def asm(self) -> str:
        """Assembly of the (optimised) module, for inspection."""
        mod = llvm.parse_assembly(self._optimized_ir or self.ir_text)
        return self.host.machine().emit_assembly(mod)

    def optimized_ir(self) -> str:
        if self._optimized_ir is None:
            mod = llvm.parse_assembly(self.ir_text)
            tm = self.host.machine()
            optimize(mod, tm, unroll=self._unroll)
            self._optimized_ir = str(mod)
        return self._optimized_ir


def _cache_key(ir_text: str, host: HostTarget, level: int, unroll: bool = True) -> str:
    h = hashlib.sha256()
    pipeline = str(level) if unroll else f"{level} no-unroll"  # unchanged keys for the default
    for part in (ir_text, host.triple, host.cpu, host.features, pipeline, llvmlite.__version__,
                 ".".join(map(str, llvm.llvm_version_info))):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


#: entries one cache folder (``obj/``, ``plan/``, ``kernels/obj/``) keeps: a write past it
#: removes the least recently used quarter. Unbounded, a machine's cache held every cell ever
#: compiled under every rnncomp source (each edit changes every key): 14,600 files, 180 MB
MAX_ENTRIES = 2000
_STALE_TMP_S = 3600  # a temporary file this old was left by a writer that was killed


def _read_cache(path: str) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    # object files are ELF/Mach-O/COFF; a truncated file is rejected and rebuilt
    digest, _, payload = data.partition(b"\n")
    if not payload or hashlib.sha256(payload).hexdigest().encode() != digest:
        return None
    try:
        os.utime(path)  # its time is its last use: what _prune keeps
    except OSError:
        pass  # a read-only cache is still read
    return payload


def _prune(folder: str, keep: int = MAX_ENTRIES) -> None:
    """Remove the least recently used entries of ``folder`` down to ``keep * 3 // 4`` when it
    holds more than ``keep``, and temporary files of killed writers. Another process reading an
    entry removed here either has it open (and reads it whole) or misses and compiles it."""
    now, entries = time.time(), []
    try:
        with os.scandir(folder) as it:
            for e in it:
                if e.is_file(follow_symlinks=False):
                    entries.append((e.stat().st_mtime, e.name, e.path))
    except OSError:
        return
    stale = [e for e in entries if e[1].startswith(".tmp-") and now - e[0] > _STALE_TMP_S]
    entries = sorted(e for e in entries if not e[1].startswith(".tmp-"))
    for _, _, path in stale + (entries[:len(entries) - keep * 3 // 4] if len(entries) > keep else []):
        try:
            os.unlink(path)
        except OSError:
            pass


def _write_cache(path: str, obj: bytes, warn: bool = True) -> bool:
    """Install ``obj`` at ``path`` atomically; False (and, if ``warn``, a RuntimeWarning
    naming the directory) when the cache cannot be written."""
    tmp = None
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(hashlib.sha256(obj).hexdigest().encode() + b"\n" + obj)
        os.replace(tmp, path)  # atomic: concurrent writers each install a complete file
        _prune(os.path.dirname(path))
        return True
    except OSError as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if not warn:
            return False
        warnings.warn(f"rnncomp: cannot write to the compile cache {os.path.dirname(os.path.dirname(path))!r} "
                      f"({exc.strerror or exc}); compiled without caching. Pass cache=None, or set "
                      "RNNCOMP_CACHE_DIR to a writable directory", RuntimeWarning, stacklevel=2)
        return False


def _cache_dir(cache) -> str:
    if cache == "default":
        return default_cache_dir()
    if not isinstance(cache, (str, os.PathLike)) or not os.fspath(cache):
        raise CompileError(f"cache must be a directory (a str or path), 'default' or None, got {cache!r}")
    return os.path.expanduser(os.fspath(cache))  # "~/x" is the home's x, not ./~/x


def compile_keyed(key: str, build, *, level: int = 3, unroll: bool = True, cache: str | None = "default",
                  host: HostTarget | None = None, link=None) -> NativeLibrary:
    """Like :func:`compile_module`, but looks the cache up by ``key`` (a description of what
    ``build()`` would generate) *before* generating any IR: a warm compile skips codegen.

    ``link(obj, host, cache)``, if given, runs before the object is loaded: it makes the
    symbols the object refers to resolvable (see :mod:`.kernel_library`)."""
    host = host or HostTarget.detect()
    path = None
    if cache is not None:
        path = os.path.join(_cache_dir(cache), "obj", "k-" + _cache_key(key, host, level, unroll) + ".o")
        obj = _read_cache(path)
        if obj is not None:
            if link is not None:
                link(obj, host, cache)
            return NativeLibrary(obj, None, host, None, rebuild=build, unroll=unroll)
    lib = compile_module(build(), level=level, unroll=unroll, cache=None, host=host,  # kernels keep `cache`
                         link=None if link is None else (lambda obj, h, _: link(obj, h, cache)))
    if path is not None:
        _write_cache(path, lib._object)
    return lib


def compile_module(ir_module, *, level: int = 3, unroll: bool = True, cache: str | None = "default",
                   host: HostTarget | None = None, link=None) -> NativeLibrary:
    """Verify, optimise and compile ``ir_module`` for the host; load it.

    ``level`` and ``unroll``: the optimisation pipeline (:func:`optimize`).
    ``cache``: a directory for object files, ``"default"`` for
    :func:`default_cache_dir`, or ``None`` to compile without a cache.  An
    unwritable cache directory only costs the cache, never the compile.
    """
    host = host or HostTarget.detect()
    ir_text = str(ir_module)
    path = None
    if cache is not None:
        path = os.path.join(_cache_dir(cache), "obj", _cache_key(ir_text, host, level, unroll) + ".o")
        obj = _read_cache(path)
        if obj is not None:
            if link is not None:
                link(obj, host, cache)
            return NativeLibrary(obj, ir_text, host, None, unroll=unroll)
    mod = parse_and_verify(ir_module)
    tm = host.machine()
    if level > 0:
        optimize(mod, tm, level, unroll)
    obj = tm.emit_object(mod)
    if path is not None:
        _write_cache(path, obj)
    if link is not None:
        link(obj, host, cache)
    return NativeLibrary(obj, ir_text, host, str(mod) if level > 0 else None, unroll=unroll)
