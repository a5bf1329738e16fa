"""Vectorisable elementary functions emitted as plain LLVM IR.

A call to libm (``expf``) or to ``llvm.exp``/``llvm.tanh`` inside a loop is not
widened by LLVM's loop vectoriser (it stays one scalar libm call per lane).
So every function here is emitted inline as straight-line IR: range
reduction, Cephes-style polynomial/rational approximations, integer bit
manipulation through ``bitcast`` and ``select`` for the special cases.  The
only calls emitted are to intrinsics that lower to instructions:
``llvm.fabs``, ``llvm.sqrt``, ``llvm.floor``, ``llvm.ceil``,
``llvm.copysign``, ``llvm.maxnum``, ``llvm.minnum``.  Arithmetic carries only
the ``contract`` fast-math flag (FMA fusion), never ``nnan``/``ninf``/``fast``,
so NaN, inf, signed zeros and denormals are handled exactly as documented.

    >>> from llvmlite import ir
    >>> m = ir.Module(); f32 = ir.FloatType()
    >>> fn = ir.Function(m, ir.FunctionType(f32, [f32]), "e")
    >>> b = ir.IRBuilder(fn.append_basic_block())
    >>> _ = b.ret(emit(b, "exp", [fn.args[0]]))
    >>> "tanh" in SUPPORTED
    True

``emit(builder, name, args)``: ``args`` are ``float``/``double`` values or
vectors of them (all the same type); the result has that type.  Float uses
float approximations, double uses the Cephes double ones.

Accuracy (max error in ulps of the correctly rounded result; "bound" is what
``tests/llvm/test_vecmath.py`` asserts, "measured" the maximum found: all 2^32
float32 inputs, ~10^8 random float64 inputs against an 80-bit reference; see
``docs/vecmath.md`` for methods and special values):

=========  =========  =========  ==============================================
function   float32    float64    notes
           bound/max  bound/max
=========  =========  =========  ==============================================
exp        1.5 / 1.01 1.5 / 0.98 overflow to inf, gradual underflow
expm1      1.5 / 1.01 1.5 / 1.13 relative accuracy near 0, -1 below -64
log        1 / 0.83   1.5 / 0.93 log(0) = -inf, log(<0) = NaN, denormal inputs
log1p      1 / 0.90   1.5 / 1.00 log1p(-1) = -inf
tanh       1.5 / 1.07 1.5 / 1.07 tanh(tiny) = x, +-1 for large |x|
sigmoid    2 / 1.48   2 / 1.49   sigmoid(-100) is the (denormal) exact value
softplus   2 / 1.71   2.5 / 1.81 softplus(100) = 100, softplus(-100) ~ e^-100
sin, cos   1 / 0.85   1 / 0.81   |x| <= 1e7 (float) / 1.6e6 (double); inf -> NaN
atan       1.5 / 1.27 1.5 / 0.90 atan(+-inf) = +-pi/2
erf        2 / 1.44   2 / 1.57   erf saturates to +-1
sqrt       0.5        0.5        ``llvm.sqrt`` (correctly rounded)
pow        1 / 0.50   2 / 1.45   C99 special cases, negative x with integer y
=========  =========  =========  ==============================================

Measured on an FMA host (the backend fuses the ``contract`` operations); a
host without FMA rounds those steps twice (the tests allow one more ulp there).

abs, floor, ceil, copysign are exact; ``max``/``min`` follow IEEE maxNum /
minNum (``llvm.maxnum``/``llvm.minnum``: a NaN operand is ignored, like
``np.fmax``); ``sign`` is -1/0/+1 and keeps -0 and NaN.
"""
from __future__ import annotations

from llvmlite import ir

from ...errors import CompileError
from .builder import for_range
from .vecmath_core import Ctx
from .vecmath_explog import (emit_exp, emit_expm1, emit_log, emit_log1p, emit_pow, emit_sigmoid,
                             emit_softplus, emit_tanh)
from .vecmath_trig import emit_atan, emit_cos, emit_erf, emit_sin

__all__ = ["SUPPORTED", "ARITY", "emit"]


def _sign(c: Ctx, x):
    one = c.c(1.0)
    zero = c.c(0.0)
    return c.sel(c.gt(x, zero), one, c.sel(c.lt(x, zero), c.neg(one), x))


_UNARY = {
    "exp": emit_exp, "expm1": emit_expm1, "log": emit_log, "log1p": emit_log1p,
    "tanh": emit_tanh, "sigmoid": emit_sigmoid, "softplus": emit_softplus,
    "sin": emit_sin, "cos": emit_cos, "atan": emit_atan, "erf": emit_erf,
    "sqrt": lambda c, x: c.intrinsic("llvm.sqrt", x),
    "abs": lambda c, x: c.abs(x),
    "floor": lambda c, x: c.floor(x),
    "ceil": lambda c, x: c.intrinsic("llvm.ceil", x),
    "sign": _sign,
}
_BINARY = {
    "pow": emit_pow,
    "copysign": lambda c, x, y: c.copysign(x, y),
    "max": lambda c, x, y: c.intrinsic("llvm.maxnum", x, y),
    "min": lambda c, x, y: c.intrinsic("llvm.minnum", x, y),
}

SUPPORTED: frozenset[str] = frozenset(_UNARY) | frozenset(_BINARY)
#: number of arguments each function takes
ARITY: dict[str, int] = {**{n: 1 for n in _UNARY}, **{n: 2 for n in _BINARY}}


def emit(builder: ir.IRBuilder, name: str, args: list[ir.Value]) -> ir.Value:
    """Emit ``name(*args)`` at the builder's position; returns a value of the args' type."""
    if name not in SUPPORTED:
        raise CompileError(f"vecmath: unsupported function {name!r}; supported: "
                           f"{', '.join(sorted(SUPPORTED))}")
    args = list(args)
    if len(args) != ARITY[name]:
        raise CompileError(f"vecmath: {name} takes {ARITY[name]} argument(s), got {len(args)}")
    ty = args[0].type
    if any(a.type != ty for a in args):
        raise CompileError(f"vecmath: {name} arguments must share one type, got "
                           f"{', '.join(str(a.type) for a in args)}")
    try:
        c = Ctx(builder, ty)
    except CompileError as exc:
        raise CompileError(f"vecmath: {name}: {exc}") from None
    fn = _UNARY.get(name) or _BINARY[name]
    return fn(c, *args)


def emit_row_reduce(b: ir.IRBuilder, row, n: int, lse: bool, acc, mx) -> ir.Value:
    """``Σ_j row[j]`` over ``n`` elements at ``row`` or, ``lse``, the stable ``log Σ_j exp``
    (shifted by the row's maximum; a row of -inf gives -inf, not NaN).  ``acc`` and ``mx``
    are scalar allocas (``mx`` is read only for ``lse``).  Shared by the native and PTX
    backends (one thread per row there, a loop over rows here)."""
    ty = row.type.pointee
    m = None
    if lse:
        b.store(ir.Constant(ty, float("-inf")), mx)
        with for_range(b, ir.IntType(64)(n), name="j") as j:
            x = b.load(b.gep(row, [j], inbounds=True))
            cur = b.load(mx)
            b.store(b.select(b.fcmp_ordered(">", x, cur), x, cur), mx)
        m = b.load(mx)
        m = b.select(b.fcmp_ordered("==", m, ir.Constant(ty, float("-inf"))), ir.Constant(ty, 0.0), m)
    b.store(ir.Constant(ty, 0.0), acc)
    with for_range(b, ir.IntType(64)(n), name="j") as j:
        x = b.load(b.gep(row, [j], inbounds=True))
        if lse:
            x = emit(b, "exp", [b.fsub(x, m)])
        b.store(b.fadd(b.load(acc), x), acc)
    r = b.load(acc)
    return b.fadd(m, emit(b, "log", [r])) if lse else r
