"""A ratio of exponentials written by hand, as the logistic function it is (at lowering).

``e/(1 + e)`` with ``e = exp(u)`` is σ(u), bounded, but sympy evaluates ``(e/(1 + e))**2`` to
``exp(2*u)/(exp(u) + 1)**2`` as the user writes it, and in float32 ``exp(2u)`` and the
square overflow from u ≈ 44 (``exp(u)`` from 89): inf/inf, a NaN, where the value is ~1 (and
the derivative of ``1/(1 + exp(-u))``, ``exp(-u)/(1 + exp(-u))**2``, is NaN for u ≲ -44).
:func:`logistic_form` writes each such factor as powers of σ, which every backend evaluates
stably and whose derivative reuses its value (σ' = σ(1 − σ)):

    exp(m·b) · (1 + exp(b))^-k  =  σ(b)^m · σ(-b)^(k-m)      (0 ≤ m ≤ k, rational)

(e^b/(1 + e^b) = σ(b), 1/(1 + e^b) = σ(-b)).  A hand-written ``log(1 + exp(b))`` is
softplus(b) and ``log σ(b)`` is −softplus(−b): as written, ``exp(b)`` overflows float32 from
b ≈ 89 and the log is inf (``b·σ(b) − log(1 + exp(b))``, ≈ 0, came out −inf and a tanh of it
−1), its derivative ``exp(b)/(1 + exp(b))`` inf/inf; σ(b) underflows from b ≈ −104 and
``log σ(b)`` is −inf where it is ≈ b.  Both sides are the same function, so only the
rounding differs; an exponential the denominator does not bound (m > k: ``exp(3b)``, or not a
multiple of b) stays as written, beside σ(-b)^k.  :mod:`rnncomp.lower` applies it to every
element-wise expression of a cell, so the IR, the backward step and every backend see σ; the
cell's own text keeps what the user wrote.

A product of exponentials is one exponential of the summed exponents (:func:`exp_products`):
``exp(2u)·exp(-exp(u))`` (a Gumbel density squared) is inf·0 = NaN in float32 from u ≈ 44, where
``exp(2u - exp(u))`` is 0; the backward step, derived from the lowered form, then multiplies
no overflowed factor either.

    >>> import sympy as sp
    >>> u = sp.Symbol("u", real=True)
    >>> e = sp.exp(u)
    >>> (e / (1 + e)) ** 2, logistic_form((e / (1 + e)) ** 2)
    (exp(2*u)/(exp(u) + 1)**2, sigmoid(u)**2)
    >>> logistic_form(1 / (1 + sp.exp(-u))), logistic_form(e / (1 + e) ** 3)
    (sigmoid(u), sigmoid(-u)**2*sigmoid(u))
    >>> logistic_form(sp.log(1 + e)), logistic_form(sp.log(1 / (1 + sp.exp(-u))))
    (softplus(u), -softplus(-u))
    >>> exp_products(e * sp.exp(-e)), exp_products(sp.exp(2 * u) * sp.exp(-e) * sp.tanh(u))
    (exp(u - exp(u)), exp(2*u - exp(u))*tanh(u))
"""
from __future__ import annotations

import sympy as sp

from .functions import sigmoid, softplus


def logistic_form(e):
    """``e`` with every factor ``exp(m·b)·(1 + exp(b))^-k`` (0 ≤ m ≤ k) as ``σ(b)^m·σ(-b)^(k-m)``,
    and ``log(1 + exp(b))`` as softplus(b), ``log σ(b)`` as −softplus(−b)."""
    if not isinstance(e, sp.Expr) or not e.has(sp.exp, sigmoid):
        return e
    if e.func is sp.log:
        a = logistic_form(e.args[0])
        if a.func is sigmoid:
            return -softplus(-a.args[0])
        b = _one_plus_exp(a)
        return sp.log(a) if b is None else softplus(b)
    factors = sp.Mul.make_args(e) if e.is_Mul or e.is_Pow else (e,)
    bases = [_logistic_base(f) for f in factors]
    if not any(bases):
        args = [logistic_form(a) for a in e.args]
        return e.func(*args) if args != list(e.args) else e
    rest = [f for f, bk in zip(factors, bases) if bk is None]
    out = []
    for b, k in filter(None, bases):   # each denominator takes the first exponential it bounds
        num = next((g for g in rest if g.func is sp.exp and _multiple(g.args[0], b, k) is not None), None)
        m = sp.Integer(0) if num is None else _multiple(num.args[0], b, k)
        if num is not None:
            rest.remove(num)
        b = logistic_form(b)
        out.append(sigmoid(b) ** m * sigmoid(-b) ** (k - m))
    return sp.Mul(*[logistic_form(f) for f in rest], *out)


def _one_plus_exp(a):
    """b where ``a`` is ``1 + exp(b)``, else None."""
    if a.is_Add and len(a.args) == 2:
        one, other = sorted(a.args, key=lambda x: not x.is_Number)
        if one == 1 and other.func is sp.exp:
            return other.args[0]
    return None


def _logistic_base(f):
    """(b, k) where ``f`` is ``(1 + exp(b))**-k`` with k > 0 rational, else None."""
    if not (f.is_Pow and f.exp.is_Rational and f.exp < 0):
        return None
    b = _one_plus_exp(f.base)
    return None if b is None else (b, -f.exp)


def _multiple(a, b, k):
    """m where ``a`` is m·``b`` with 0 < m ≤ k rational, else None."""
    m = sp.cancel(a / b)
    return m if m.is_Rational and 0 < m <= k else None


def exp_products(e):
    """``e`` with every product of two or more exponentials ``exp(a)·exp(b)·…`` (a factor may be a
    power of one) as the one exponential ``exp(a + b + …)``: bounded where the factors are not."""
    if not isinstance(e, sp.Expr) or not e.args or not e.has(sp.exp):
        return e
    args = [exp_products(a) for a in e.args]
    e = e.func(*args) if args != list(e.args) else e
    if not e.is_Mul:
        return e
    exps = [f for f in e.args if _exponent(f) is not None]
    if len(exps) < 2:
        return e
    rest = [f for f in e.args if _exponent(f) is None]
    return sp.Mul(*rest, sp.exp(sp.Add(*[_exponent(f) for f in exps])))


def _exponent(f):
    """a where ``f`` is ``exp(a)`` or ``exp(b)**r`` (a = r·b, r rational), else None."""
    if f.func is sp.exp:
        return f.args[0]
    if f.is_Pow and f.base.func is sp.exp and f.exp.is_Rational:
        return f.exp * f.base.args[0]
    return None
