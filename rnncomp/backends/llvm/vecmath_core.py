"""Typed emission context shared by the :mod:`vecmath` kernels.

:class:`Ctx` wraps an ``IRBuilder`` and one floating type (``float``,
``double`` or a vector of either) and offers the handful of operations the
elementary functions are written in: splatted constants, polynomial
evaluation, compares and selects, bit casts to the same-shaped integer type,
round-to-nearest by the 1.5*2^p "magic number" trick, scaling by 2^n, and
the few whitelisted intrinsics.

Fast-math: polynomial arithmetic carries only ``contract`` (lets the backend
fuse ``a*b+c`` into an FMA where the CPU has one; that never loses accuracy).
Operations whose exact rounding matters (Cody-Waite reductions with
non-exact products, error-free transforms, the magic-number rounding) use
the ``x*`` methods, which carry no flags at all.
"""
from __future__ import annotations

from llvmlite import ir

from ...errors import CompileError

CONTRACT = ("contract",)


class Ctx:
    """Emission helpers for one floating type ``ty`` (scalar or vector)."""

    def __init__(self, builder: ir.IRBuilder, ty):
        self.b = builder
        self.ty = ty
        if isinstance(ty, ir.VectorType):
            self.scalar, self.lanes = ty.element, ty.count
        else:
            self.scalar, self.lanes = ty, None
        if isinstance(self.scalar, ir.DoubleType):
            self.f64, self.nbits, self.mant, self.bias = True, 64, 52, 1023
        elif isinstance(self.scalar, ir.FloatType):
            self.f64, self.nbits, self.mant, self.bias = False, 32, 23, 127
        else:
            raise CompileError(f"vecmath: unsupported operand type {ty} (need float, double "
                               "or a vector of them)")
        self.ity = self._shape(ir.IntType(self.nbits))
        self.bty = self._shape(ir.IntType(1))

    # -- types and constants -------------------------------------------------
    def _shape(self, elt):
        return ir.VectorType(elt, self.lanes) if self.lanes else elt

    def sel64(self, d64, f32):
        """Pick the double or the float variant of a constant/coefficient set."""
        return d64 if self.f64 else f32

    def c(self, v):
        s = ir.Constant(self.scalar, float(v))
        return ir.Constant(self.ty, [s] * self.lanes) if self.lanes else s

    def ci(self, v):
        s = ir.Constant(ir.IntType(self.nbits), int(v))
        return ir.Constant(self.ity, [s] * self.lanes) if self.lanes else s

    # -- arithmetic (contractable) ---------------------------------------------
    def add(self, a, b):
        return self.b.fadd(a, b, flags=CONTRACT)

    def sub(self, a, b):
        return self.b.fsub(a, b, flags=CONTRACT)

    def mul(self, a, b):
        return self.b.fmul(a, b, flags=CONTRACT)

    def div(self, a, b):
        return self.b.fdiv(a, b)

    def neg(self, a):
        return self.b.fneg(a)

    def fma(self, a, b, c):
        """``a*b + c``, fused where the target has FMA."""
        return self.add(self.mul(a, b), c)

    def poly(self, x, coeffs):
        """Horner evaluation, highest degree first (Cephes ``polevl``)."""
        acc = self.c(coeffs[0])
        for k in coeffs[1:]:
            acc = self.fma(acc, x, self.c(k))
        return acc

    def poly1(self, x, coeffs):
        """Like :meth:`poly` with an implicit leading coefficient 1 (Cephes ``p1evl``)."""
        acc = self.add(x, self.c(coeffs[0]))
        for k in coeffs[1:]:
            acc = self.fma(acc, x, self.c(k))
        return acc

    # -- exact-rounding arithmetic (no fast-math flags) ------------------------
    def xadd(self, a, b):
        return self.b.fadd(a, b)

    def xsub(self, a, b):
        return self.b.fsub(a, b)

    def xmul(self, a, b):
        return self.b.fmul(a, b)

    # -- compares, selects ----------------------------------------------------
    def lt(self, a, b):
        return self.b.fcmp_ordered("<", a, b)

    def le(self, a, b):
        return self.b.fcmp_ordered("<=", a, b)

    def gt(self, a, b):
        return self.b.fcmp_ordered(">", a, b)

    def ge(self, a, b):
        return self.b.fcmp_ordered(">=", a, b)

    def eq(self, a, b):
        return self.b.fcmp_ordered("==", a, b)

    def ne(self, a, b):
        """Ordered not-equal: false when either side is NaN."""
        return self.b.fcmp_ordered("!=", a, b)

    def ult(self, a, b):
        """``a < b`` or unordered (true for NaN)."""
        return self.b.fcmp_unordered("<", a, b)

    def isnan(self, a):
        return self.b.fcmp_unordered("uno", a, a)

    def sel(self, cond, a, b):
        return self.b.select(cond, a, b)

    def and_(self, a, b):
        return self.b.and_(a, b)

    def or_(self, a, b):
        return self.b.or_(a, b)

    def not_(self, a):
        return self.b.not_(a)

    def clamp(self, x, lo, hi):
        """``x`` clamped into [lo, hi]; NaN maps to ``lo`` (callers fix NaN up afterwards)."""
        x = self.sel(self.ult(x, self.c(lo)), self.c(lo), x)
        return self.sel(self.gt(x, self.c(hi)), self.c(hi), x)

    def nan_through(self, x, res):
        """``res``, except NaN where ``x`` is NaN."""
        return self.sel(self.isnan(x), x, res)

    # -- intrinsics -------------------------------------------------------------
    def intrinsic(self, name, *args):
        mod = self.b.module
        suffix = (f"v{self.lanes}" if self.lanes else "") + ("f64" if self.f64 else "f32")
        full = f"{name}.{suffix}"
        fn = mod.globals.get(full)
        if fn is None:
            fn = ir.Function(mod, ir.FunctionType(self.ty, [self.ty] * len(args)), name=full)
        return self.b.call(fn, list(args))

    def abs(self, x):
        return self.intrinsic("llvm.fabs", x)

    def copysign(self, mag, sgn):
        return self.intrinsic("llvm.copysign", mag, sgn)

    def floor(self, x):
        return self.intrinsic("llvm.floor", x)

    # -- bits ---------------------------------------------------------------
    def bits(self, x):
        return self.b.bitcast(x, self.ity)

    def from_bits(self, i):
        return self.b.bitcast(i, self.ty)

    def sitofp(self, i):
        return self.b.sitofp(i, self.ty)

    def signbit(self, x):
        """True where the sign bit of ``x`` is set (also for -0 and negative NaN)."""
        return self.b.icmp_signed("<", self.bits(x), self.ci(0))

    def rint(self, x):
        """Round to nearest even for |x| < 2^(mant-1); returns (float, integer).

        ``x + 1.5*2^mant`` lands in a binade whose spacing is 1, so the sum is
        rounded to an integer; the integer is read off the low bits.  No
        ``fptosi`` (which is poison for NaN/inf): garbage in, garbage out,
        never undefined behaviour.
        """
        magic = self.c(1.5 * 2.0 ** self.mant)
        t = self.xadd(x, magic)
        q = self.xsub(t, magic)
        qi = self.b.sub(self.bits(t), self.bits(magic))
        return q, qi

    def pow2i(self, n):
        """2.0**n for integer vector ``n`` in the normal exponent range."""
        e = self.b.add(n, self.ci(self.bias))
        return self.from_bits(self.b.shl(e, self.ci(self.mant)))

    def ldexp(self, p, n):
        """``p * 2**n`` for |n| up to about 2*bias, in two exact-or-once-rounded steps.

        Splitting n keeps both factors normal, so overflow gives inf and
        gradual underflow rounds exactly once, into the denormal result.
        """
        n1 = self.b.ashr(n, self.ci(1))
        n2 = self.b.sub(n, n1)
        return self.xmul(self.xmul(p, self.pow2i(n1)), self.pow2i(n2))

    def to(self, x, ty):
        """fpext/fptrunc between float and double shapes."""
        target = ty.element if isinstance(ty, ir.VectorType) else ty
        if isinstance(target, ir.DoubleType) and not self.f64:
            return self.b.fpext(x, ty)
        if isinstance(target, ir.FloatType) and self.f64:
            return self.b.fptrunc(x, ty)
        return x

    def other(self):
        """A context of the same shape with the other precision (float <-> double)."""
        elt = ir.FloatType() if self.f64 else ir.DoubleType()
        return Ctx(self.b, ir.VectorType(elt, self.lanes) if self.lanes else elt)
