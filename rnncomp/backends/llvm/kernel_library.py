"""The matrix-product kernels as one library of the process, linked by name into every cell.

Owns: which kernels exist (:data:`SIGNATURES`), their symbol names, building each one once
per process (and once per machine, through the object cache), and resolving a cell's
references to them when the cell's object is loaded.

Why: the products (:mod:`.gemm`) are the same for every cell of a dtype on a host, and
compiling them was ~80% of a cell's cold compile (an LSTM: 1.7 s of 2.2 s). A cell's module
now only *declares* the products it calls (:func:`declare`); :func:`link` finds those names
in the cell's object code and loads the kernels before the object is loaded, building any
kernel this process has not built yet (from the disk cache when it holds one). The kernels'
addresses are registered with LLVM's process symbol table (``llvm.add_symbol``), so the
cell's object resolves them like any library function. A kernel's name carries a hash of the
host and of the kernel generator's sources: two hosts or two versions never share a symbol.

    >>> from llvmlite import ir
    >>> from .jit import HostTarget
    >>> m = ir.Module(name="uses_a_product")
    >>> f = declare(m, "gemm", "float64", (False, True), HostTarget.detect())
    >>> f.is_declaration, f.name.startswith("rnncomp_k_gemm_float64_01_")
    (True, True)
"""
from __future__ import annotations

import functools
import hashlib
import os
import pathlib
import re
import threading

import llvmlite.binding as llvm
from llvmlite import ir

from . import gemm
from ...errors import CompileError
from .builder import I64
from .jit import HostTarget, NativeLibrary, _cache_dir, compile_keyed

_I32, _VOID = ir.IntType(32), ir.VoidType()


def _signature(kind: str, dtype: str) -> ir.FunctionType:
    P = (ir.FloatType() if dtype == "float32" else ir.DoubleType()).as_pointer()
    return {
        # void (M, N, K, A, lda, B, ldb, C, ldc, accumulate, work)
        "gemm": ir.FunctionType(_VOID, [I64, I64, I64, P, I64, P, I64, P, I64, _I32, P]),
        # void (M, N, K, A, lda, packedB, C, ldc, accumulate, work)
        "gemm_packed_b": ir.FunctionType(_VOID, [I64, I64, I64, P, I64, P, P, I64, _I32, P]),
        # void (K, N, B, ldb, packed)
        "pack_b": ir.FunctionType(_VOID, [I64, I64, P, I64, P]),
    }[kind]


#: kind -> (number of boolean flags, the generator that defines it under a given name)
SIGNATURES = {
    "gemm": (2, lambda m, name, dt, fl, host: gemm.define_gemm(m, name, dt, fl[0], fl[1], host)),
    "gemm_packed_b": (1, lambda m, name, dt, fl, host: gemm.define_gemm_packed_b(m, name, dt, fl[0], host)),
    "pack_b": (1, lambda m, name, dt, fl, host: gemm.define_pack_b(m, name, dt, fl[0], host)),
}

_NAME = re.compile(rb"rnncomp_k_(gemm_packed_b|gemm|pack_b)_(float32|float64)_([01]+)_([0-9a-f]{16})")
_lock = threading.Lock()
_loaded: dict[str, NativeLibrary] = {}      # symbol -> the library that defines it (kept alive)


@functools.lru_cache(maxsize=1)
def _sources_hash() -> str:
    here = pathlib.Path(__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(here.glob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def _tag(host: HostTarget) -> str:
    h = hashlib.sha256("\0".join((host.triple, host.cpu, host.features, _sources_hash())).encode())
    return h.hexdigest()[:16]


def symbol(kind: str, dtype: str, flags: tuple, host: HostTarget) -> str:
    """The process-wide name of one kernel."""
    nflags, _ = SIGNATURES[kind]
    if len(flags) != nflags:
        raise ValueError(f"kernel {kind!r} takes {nflags} flag(s), got {flags!r}")
    return f"rnncomp_k_{kind}_{dtype}_{''.join(str(int(bool(f))) for f in flags)}_{_tag(host)}"


def declare(module: ir.Module, kind: str, dtype: str, flags: tuple, host: HostTarget) -> ir.Function:
    """Declare kernel ``kind`` (see :data:`SIGNATURES`) in ``module``; :func:`link` supplies it."""
    name = symbol(kind, dtype, flags, host)
    existing = module.globals.get(name)
    return existing or ir.Function(module, _signature(kind, dtype), name)


def _build(name: str, kind: str, dtype: str, flags: tuple, host: HostTarget, cache) -> NativeLibrary:
    def build():
        m = ir.Module(name=name)
        m.triple = host.triple
        fn = SIGNATURES[kind][1](m, name, dtype, flags, host)
        if fn.function_type != _signature(kind, dtype):   # the declaration would call it wrongly
            raise AssertionError(f"kernel {kind}: generated {fn.function_type}, declared "
                                 f"{_signature(kind, dtype)}")
        return m
    # beside the cells' objects, in a folder of their own: <cache>/kernels/obj/
    kcache = None if cache is None else os.path.join(_cache_dir(cache), "kernels")
    return compile_keyed("kernel " + name, build, cache=kcache, host=host)


def link(obj: bytes, host: HostTarget, cache) -> None:
    """Make every kernel that object code ``obj`` refers to resolvable (building it if needed)."""
    wanted = sorted({m.group(0).decode() for m in _NAME.finditer(obj)})
    with _lock:
        for name in wanted:
            if name in _loaded:
                continue
            kind, dtype, bits, tag = _NAME.fullmatch(name.encode()).groups()
            if tag.decode() != _tag(host):   # cannot happen: the object's cache key holds both
                raise CompileError(f"internal: object code refers to kernel {name} of another host "
                                   "or rnncomp version")
            flags = tuple(c == ord("1") for c in bits)
            lib = _build(name, kind.decode(), dtype.decode(), flags, host, cache)
            llvm.add_symbol(name, lib.address(name))
            _loaded[name] = lib
