"""A generated check that arrays hold only finite numbers (no NaN, no ±inf).

``i64 name(i64 n, T** arrays, i64* counts)`` returns the index of the first of the ``n``
arrays with a non-finite element, or -1.  An element is non-finite when all its exponent
bits are set; the test is integer arithmetic with an OR reduction, which LLVM vectorises
(a float comparison reduction would need fast-math flags).  numpy's
``np.isfinite(a).all()`` costs ~1 µs of call overhead per array and makes a boolean
temporary; the native training path checks all its arrays in one call.

    >>> from llvmlite import ir
    >>> import ctypes, numpy as np
    >>> from rnncomp.backends.llvm.jit import compile_module
    >>> m = ir.Module(name="f"); _ = define_first_nonfinite(m, "first_bad", "float64")
    >>> lib = compile_module(m, cache=None)
    >>> fn = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p)(
    ...     lib.address("first_bad"))
    >>> a, b = np.ones(5), np.array([1.0, np.inf])
    >>> ptrs = (ctypes.c_void_p * 2)(a.ctypes.data, b.ctypes.data); counts = (ctypes.c_int64 * 2)(5, 2)
    >>> fn(2, ptrs, counts), fn(1, ptrs, counts)
    (1, -1)
"""
from __future__ import annotations

from llvmlite import ir

from .builder import I64, float_type, for_range, gep


def define_first_nonfinite(module: ir.Module, name: str, dtype: str) -> ir.Function:
    T = float_type(dtype)
    bits = 32 if dtype == "float32" else 64
    IT = ir.IntType(bits)
    exp = IT(0x7F800000 if bits == 32 else 0x7FF0000000000000)
    fn = ir.Function(module, ir.FunctionType(I64, [I64, T.as_pointer().as_pointer(), I64.as_pointer()]), name)
    n, arrays, counts = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    bad = b.alloca(IT, name="bad")
    with for_range(b, n, name="a") as i:
        base = b.bitcast(b.load(gep(b, arrays, i)), IT.as_pointer())
        b.store(IT(0), bad)
        with for_range(b, b.load(gep(b, counts, i)), name="e") as j:
            x = b.load(gep(b, base, j))
            hit = b.zext(b.icmp_unsigned("==", b.and_(x, exp), exp), IT)
            b.store(b.or_(b.load(bad), hit), bad)
        with b.if_then(b.icmp_unsigned("!=", b.load(bad), IT(0)), likely=False):
            b.ret(i)
    b.ret(I64(-1))
    return fn
