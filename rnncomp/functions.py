"""Element-wise functions a cell may use, as sympy objects.

Activations are sympy expressions or sympy functions with their derivative
(``fdiff``) defined the sympy way; the compiler has no table of activations.
``sigmoid`` and ``softplus`` are sympy ``Function`` classes (not expanded to
``exp``) so that their derivatives reuse the forward value
(σ' = σ(1 − σ)) and every backend can evaluate them in a numerically stable
way; each also rewrites to ``exp``/``log`` for targets without them.

    >>> import sympy as sp
    >>> z = sp.Symbol("z", real=True)
    >>> sp.diff(sigmoid(z), z)
    (1 - sigmoid(z))*sigmoid(z)
    >>> sp.diff(softplus(z), z)
    sigmoid(z)
    >>> relu(z)
    Max(0, z)
"""
from __future__ import annotations

import sympy as sp

#: every printer divides by a denominator's base one time after another, up to this power:
#: x/z/z, not x/z**2, which overflows (or underflows) where z² does and x/z/z does not
#: (float32: the derivative of e/(1+e) at e = exp(60), -e/(1+e)**2 + 1/(1+e), is ~0)
SEQUENTIAL_DIVISIONS = 4


class sigmoid(sp.Function):
    """The logistic function 1 / (1 + e^−x)."""

    is_real = True

    @classmethod
    def eval(cls, x):
        if x.is_Number:
            return 1 / (1 + sp.exp(-x))
        return None

    def fdiff(self, argindex=1):
        s = sigmoid(self.args[0])
        return s * (1 - s)

    def _eval_rewrite_as_exp(self, x, **kwargs):
        return 1 / (1 + sp.exp(-x))

    def _latex(self, printer, exp=None):
        head = r"\sigma" if exp is None else r"\sigma^{%s}" % exp
        return r"%s\left(%s\right)" % (head, printer._print(self.args[0]))


class softplus(sp.Function):
    """log(1 + e^x), evaluated stably by every backend."""

    is_real = True

    @classmethod
    def eval(cls, x):
        if x.is_Number:
            return sp.log(1 + sp.exp(x))
        return None

    def fdiff(self, argindex=1):
        return sigmoid(self.args[0])

    def _eval_rewrite_as_exp(self, x, **kwargs):
        return sp.log(1 + sp.exp(x))


def relu(z):
    """max(0, z); its derivative is the Heaviside step, 0 at z = 0 (see ``derivatives.partials``)."""
    return sp.Max(0, z)


def softsign(z):
    """z / (1 + |z|)."""
    return z / (1 + sp.Abs(z))


def hard_sigmoid(z):
    """Piecewise-linear sigmoid: clip(z/4 + 1/2, 0, 1)."""
    return sp.Piecewise((0, z < -2), (1, z > 2), (z / 4 + sp.Rational(1, 2), True))


def gelu(z):
    """z Φ(z), the Gaussian error linear unit (exact, through erf)."""
    return z * (1 + sp.erf(z / sp.sqrt(2))) / 2


def swish(z):
    """z σ(z)."""
    return z * sigmoid(z)


# The sympy function classes a cell may use element-wise.  Everything else
# (an undefined sp.Function, Integral, ...) is rejected at declaration with
# this list in the message.
SUPPORTED_FUNCTIONS: dict[type, str] = {
    sp.exp: "exp", sp.log: "log", sp.tanh: "tanh", sp.sinh: "sinh", sp.cosh: "cosh",
    sp.sin: "sin", sp.cos: "cos", sp.atan: "atan", sp.erf: "erf",
    sp.Abs: "Abs", sp.sign: "sign", sp.Max: "Max", sp.Min: "Min",
    sp.Piecewise: "Piecewise", sp.Heaviside: "Heaviside",
    sigmoid: "sigmoid", softplus: "softplus",
    # piecewise constant: fine in a forward pass, an error where a gradient must flow
    sp.floor: "floor", sp.ceiling: "ceiling",
}


def supported_names() -> str:
    return ", ".join(sorted(SUPPORTED_FUNCTIONS.values()))
