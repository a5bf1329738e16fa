"""Printing an element-wise sympy template as LLVM IR (the native target's printer).

One ``_print_<Class>`` method per sympy node kind, after sympy's printers; the
values are llvmlite values, not text.  Elementary functions come from
:mod:`.vecmath` (pure arithmetic, so loops vectorise).  Anything this printer
cannot lower is collected and reported together as one ``CompileError``;
nothing is skipped silently.
"""
from __future__ import annotations

import sympy as sp
from llvmlite import ir

from ...errors import CompileError
from ...functions import EVALUATED_AS, SEQUENTIAL_DIVISIONS as SEQUENTIAL, cfunction, sigmoid, softplus
from . import vecmath

_VECMATH = {
    sp.exp: "exp", sp.log: "log", sp.tanh: "tanh", sp.sin: "sin", sp.cos: "cos", sp.atan: "atan",
    sp.erf: "erf", sigmoid: "sigmoid", softplus: "softplus", sp.Abs: "abs", sp.sign: "sign",
    sp.floor: "floor", sp.ceiling: "ceil",
}


def unsupported(template: sp.Expr) -> list[str]:
    """Names of the sub-expressions of ``template`` this printer cannot lower."""
    bad = []
    for e in sp.preorder_traversal(template):
        if isinstance(e, sp.Function) and not isinstance(e, sp.Piecewise) and e.func not in _VECMATH \
                and e.func not in EVALUATED_AS and cfunction(e.func) is None \
                and e.func not in (sp.sinh, sp.cosh, sp.Heaviside):
            bad.append(e.func.__name__)
    return sorted(set(bad))


class LLVMPrinter:
    """Emit ``template`` with ``builder``; ``args[i]`` is the value of placeholder ``_i``."""

    def __init__(self, builder: ir.IRBuilder, ty, args: dict):
        self.b, self.ty, self.args = builder, ty, args
        self.memo: dict = {}

    def const(self, v):
        return ir.Constant(self.ty, float(v))

    def emit_all(self, template: sp.Expr):
        """Print with common sub-expressions shared: sympy expressions are hash-consed, so
        :meth:`print`'s memo emits each distinct sub-expression once.  (``sp.cse`` before it
        took 60-85% of a cell's IR generation; with or without it, the zoo's cells optimise
        to the same number of instructions within 0.3%.)"""
        return self.print(template)

    def print(self, e):
        if e in self.args:
            return self.args[e]
        if e in self.memo:
            return self.memo[e]
        method = getattr(self, f"_print_{type(e).__name__}", None)
        if method is None:
            if e.is_Number:
                out = self.const(e)
            elif e.is_number and e.is_real and not isinstance(e, sp.Function):  # GoldenRatio, Catalan, ...
                out = self.const(sp.N(e, 30))
            elif isinstance(e, sp.Function) and e.func in _VECMATH:
                out = vecmath.emit(self.b, _VECMATH[e.func], [self.print(e.args[0])])
            elif isinstance(e, sp.Function) and e.func in EVALUATED_AS:  # tan = sin/cos, asinh, ...
                out = self.print(EVALUATED_AS[e.func](e.args[0]))
            elif isinstance(e, sp.Function) and (c := cfunction(e.func)) is not None:  # log1p, exp2, ...
                name, rewrite = c
                out = vecmath.emit(self.b, name, [self.print(e.args[0])]) if name else self.print(rewrite(e.args[0]))
            else:
                raise CompileError(f"native backend: cannot lower {type(e).__name__} ({e})")
        else:
            out = method(e)
        self.memo[e] = out
        return out

    def _fold(self, op, args):
        vals = [self.print(a) for a in args]
        out = vals[0]
        for v in vals[1:]:
            out = op(out, v, flags=("contract",))
        return out

    def _print_Add(self, e):
        return self._fold(self.b.fadd, e.args)

    def _print_Mul(self, e):
        """x·y⁻¹·z⁻² as x / y / z / z: the numerator divided by each factor of the denominator
        one after another (a power's base up to :data:`rnncomp.functions.SEQUENTIAL_DIVISIONS`
        times), never by their product, which overflows (or underflows) where the quotient does
        not: e/((1+e)·τ) at e = exp(86), τ = 100 is inf/inf in float32, e/(1+e)/τ is 0.01."""
        num, den = [], []
        for a in e.args:
            (den if a.is_Pow and a.exp.is_Number and a.exp < 0 else num).append(a)
        out = self._fold(self.b.fmul, num) if num else self.const(1)
        for a in den:
            if a.exp.is_Integer and a.exp >= -SEQUENTIAL:
                base = self.print(a.base)
                for _ in range(-int(a.exp)):
                    out = self.b.fdiv(out, base)
            else:
                out = self.b.fdiv(out, self.print(a.base ** (-a.exp)))
        return out

    def _print_Pow(self, e):
        base, p = e.base, e.exp
        if p.is_Integer:
            n = int(p)
            if -SEQUENTIAL <= n < 0:   # 1 / z / z …: see _print_Mul
                return self._print_Mul(sp.Mul(sp.Integer(1), e, evaluate=False))
            if n < 0:
                return self.b.fdiv(self.const(1), self._print_Pow(sp.Pow(base, -n, evaluate=False)))
            x, out = self.print(base), None
            sq = x
            while n:  # exponentiation by squaring
                if n & 1:
                    out = sq if out is None else self.b.fmul(out, sq)
                n >>= 1
                if n:
                    sq = self.b.fmul(sq, sq)
            return out if out is not None else self.const(1)
        if p == sp.Rational(1, 2):
            return vecmath.emit(self.b, "sqrt", [self.print(base)])
        if p == sp.Rational(-1, 2):
            return self.b.fdiv(self.const(1), vecmath.emit(self.b, "sqrt", [self.print(base)]))
        # (no base-E case: sympy makes E**p exp(p), printed through _VECMATH)
        return vecmath.emit(self.b, "pow", [self.print(base), self.print(p)])

    def _print_Exp1(self, e):
        return self.const(sp.E.evalf())

    def _print_Pi(self, e):
        return self.const(sp.pi.evalf())

    def _hyperbolic(self, x, odd: bool):
        """sinh (``odd``) or cosh of x without (e^x ∓ e^-x)/2's faults: that form loses every
        digit of sinh near 0 (1e-8 → 0 in float32) and overflows where e^x does, short of the
        result's own limit (sinh(89) = 2.2e38 → inf).  Below |x| = 1, from E = expm1(|x|):
        sinh = (E + E/(E+1))/2, cosh = 1 + E²/(2(E+1)); above, with h = e^(|x|/2):
        (h/2)·h ∓ 1/(2h²)."""
        b, half = self.b, self.const(0.5)
        a = vecmath.emit(b, "abs", [x])
        E = vecmath.emit(b, "expm1", [a])
        E1 = b.fadd(E, self.const(1))
        if odd:
            small = b.fmul(b.fadd(E, b.fdiv(E, E1)), half)
        else:
            small = b.fadd(self.const(1), b.fdiv(b.fmul(E, E), b.fmul(self.const(2), E1)))
        h = vecmath.emit(b, "exp", [b.fmul(a, half)])
        tail = b.fdiv(half, b.fmul(h, h))
        big = (b.fsub if odd else b.fadd)(b.fmul(b.fmul(h, half), h), tail)
        out = b.select(b.fcmp_ordered("<", a, self.const(1)), small, big)
        return vecmath.emit(b, "copysign", [out, x]) if odd else out

    def _print_sinh(self, e):
        return self._hyperbolic(self.print(e.args[0]), odd=True)

    def _print_cosh(self, e):
        return self._hyperbolic(self.print(e.args[0]), odd=False)

    def _print_Max(self, e):
        vals = [self.print(a) for a in e.args]
        out = vals[0]
        for v in vals[1:]:
            out = self.b.select(self.b.fcmp_ordered(">=", out, v), out, v)
        return out

    def _print_Min(self, e):
        vals = [self.print(a) for a in e.args]
        out = vals[0]
        for v in vals[1:]:
            out = self.b.select(self.b.fcmp_ordered("<=", out, v), out, v)
        return out

    def _print_Heaviside(self, e):
        x = self.print(e.args[0])
        half = e.args[1]  # the value at 0: sympy (>= 1.9) gives every Heaviside one, 1/2 by default
        pos = self.b.select(self.b.fcmp_ordered(">", x, self.const(0)), self.const(1), self.const(0))
        return self.b.select(self.b.fcmp_ordered("==", x, self.const(0)), self.print(half), pos)

    def _cond(self, c):
        # sympy's Piecewise drops a branch whose condition is false (even with evaluate=False)
        # and folds a false operand of And/Or/Not, so only true, the last branch's, arrives
        if c is sp.true:
            return ir.Constant(ir.IntType(1), 1)
        if isinstance(c, sp.core.relational.Relational):
            op = {"<": "<", ">": ">", "<=": "<=", ">=": ">=", "==": "==", "!=": "!="}[c.rel_op]
            return self.b.fcmp_ordered(op, self.print(c.lhs), self.print(c.rhs))
        if isinstance(c, sp.And):
            out = self._cond(c.args[0])
            for a in c.args[1:]:
                out = self.b.and_(out, self._cond(a))
            return out
        if isinstance(c, sp.Or):
            out = self._cond(c.args[0])
            for a in c.args[1:]:
                out = self.b.or_(out, self._cond(a))
            return out
        if isinstance(c, sp.Not):
            return self.b.not_(self._cond(c.args[0]))
        if isinstance(c, sp.logic.boolalg.BooleanFunction):  # Xor, Implies, Equivalent, ITE, Nand, Nor
            return self._cond(sp.logic.boolalg.to_nnf(c, simplify=False))  # in And, Or, Not
        raise CompileError(f"cannot compile the condition {c}")

    def _print_Piecewise(self, e):
        # evaluate every branch (no control flow: vectorisable), select from the last up
        out = self.const(float("nan"))
        for expr, cond in reversed(e.args):
            out = self.b.select(self._cond(cond), self.print(expr), out)
        return out
