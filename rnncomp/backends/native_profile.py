"""Where a native training step spends its time: cycle counters in a profiled build.

Owns: the parts a step is split into (:data:`PARTS`), the code that times a part (a
``llvm.readcyclecounter`` before and after it, the difference added atomically to the part's
counter in the module global ``rnncomp_profile``), the work each part does per row (one
sample at one step), and reading and clearing the counters of a compiled library.

Only a model compiled with ``profile=True`` carries counters (they cost a few cycles per part
per step); every other build is unchanged. The report, with rates against the machine's
limits, is :func:`rnncomp.inspect.profile.profile`.

    >>> PARTS[:3]
    ('step products', 'hoisted products', 'gradient products')
"""
from __future__ import annotations

import contextlib
import ctypes

from llvmlite import ir

#: the parts of a native call; "native total" is each entry point's whole body
PARTS = ("step products", "hoisted products", "gradient products", "element-wise", "matrix ops",
         "native total")
#: what the work of a part counts: FLOPs for products, bytes read and written otherwise
UNITS = {"step products": "flop", "hoisted products": "flop", "gradient products": "flop",
         "element-wise": "byte", "matrix ops": "byte", "native total": "flop"}
_GLOBAL = "rnncomp_profile"
_I64 = ir.IntType(64)


def _counters(module: ir.Module):
    g = module.globals.get(_GLOBAL)
    if g is None:
        g = ir.GlobalVariable(module, ir.ArrayType(_I64, len(PARTS)), _GLOBAL)
        g.initializer = ir.Constant(ir.ArrayType(_I64, len(PARTS)), [0] * len(PARTS))
    return g


def _tsc(b: ir.IRBuilder):
    fn = b.module.globals.get("llvm.readcyclecounter")
    if fn is None:
        fn = ir.Function(b.module, ir.FunctionType(_I64, []), "llvm.readcyclecounter")
    return b.call(fn, [])


@contextlib.contextmanager
def section(g, part: str, work_per_row: float = 0.0):
    """Time the code ``g`` emits inside the block as ``part`` (when ``g.profile`` is a dict)
    and count ``work_per_row`` units of work for each (step, sample) row it covers."""
    if g.profile is None:
        yield
        return
    b = g.b
    t0 = _tsc(b)
    yield
    dt = b.sub(_tsc(b), t0)
    slot = b.gep(_counters(g.m), [_I64(0), _I64(PARTS.index(part))], inbounds=True)
    b.atomic_rmw("add", slot, dt, "monotonic")
    g.profile[part] = g.profile.get(part, 0.0) + work_per_row


def ew_bytes(run, mine, nostore, itemsize: int) -> int:
    """Bytes per row an element-wise run reads (its arguments from memory) and writes."""
    loaded = {a: u for *_, units, keys in run for a, (u, shared, _) in zip(keys, units) if not shared}
    return itemsize * (sum(u for a, u in loaded.items() if a not in mine)
                       + sum(it[1].size for it in run if it[0] not in nostore))


def define_tsc_reader(module: ir.Module) -> None:
    """``i64 rnncomp_profile_tsc()``: the cycle counter, to convert counts to seconds."""
    fn = ir.Function(module, ir.FunctionType(_I64, []), "rnncomp_profile_tsc")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    b.ret(_tsc(b))
    _counters(module)


def counters(lib) -> dict:
    """{part: counted ticks} of a profiled library (see :func:`clear`)."""
    arr = (ctypes.c_int64 * len(PARTS)).from_address(lib.global_address(_GLOBAL))
    return dict(zip(PARTS, list(arr)))


def clear(lib) -> None:
    arr = (ctypes.c_int64 * len(PARTS)).from_address(lib.global_address(_GLOBAL))
    ctypes.memset(arr, 0, ctypes.sizeof(arr))


def tsc(lib) -> int:
    return ctypes.CFUNCTYPE(ctypes.c_int64)(lib.address("rnncomp_profile_tsc"))()
