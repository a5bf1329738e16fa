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

import sys

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


_LARGE = sp.Integer(10) ** 4


def _asinh(x):
    # log(|x| + √(x²+1)) loses relative accuracy near 0 (log of 1 + small: a series up to 0.1
    # was still 15 ulp off just above it); log1p(|x| + x²/(1 + √(x²+1))) is the same number,
    # accurate everywhere x² does not overflow (float32: |x| > 1.8e19).  For large |x|,
    # asinh(x) = ±(log |x| + log 2 + 1/(4x²) + O(x⁻⁴)), log 2 added outside the log: log(2|x|)
    # overflows where 2|x| does (float32: |x| > 1.7e38)
    a = sp.Abs(x)
    return sp.Piecewise((sp.sign(x) * (sp.log(a) + sp.log(2) + 1 / (4 * x ** 2)), a > _LARGE),
                        (sp.sign(x) * log1p(a + x ** 2 / (1 + sp.sqrt(x ** 2 + 1))), True))


def _acosh(x):
    # acosh(1 + t) = log1p(t + √(t(x + 1))) (t = x − 1 exact near 1, where log(1 + δ) is not);
    # x < 1: √ of a negative, NaN.  Large x: log x + log 2 − 1/(4x²), as asinh's
    t = x - 1
    return sp.Piecewise((sp.log(x) + sp.log(2) - 1 / (4 * x ** 2), x > _LARGE),
                        (log1p(t + sp.sqrt(t * (x + 1))), True))


def _atanh(x):
    # ½ log((1+x)/(1−x)) = ±½ log1p(2|x|/(1 − |x|)): accurate near 0, and near −1 too by the
    # symmetry (2x/(1 − x) there is −1 + δ, rounded); ±1 give ±inf, |x| > 1 NaN
    a = sp.Abs(x)
    return sp.sign(x) * log1p(2 * a / (1 - a)) / 2


#: Functions a target without them evaluates as these expressions of the functions it has
#: (the native and PTX printers: ``llvm/exprgen.py``; the NumPy oracle calls NumPy's own
#: np.tan, np.arcsinh, ..., so the fuzzer and the tests compare the two).  Their derivatives
#: are sympy's (1 + tan², 1/√(1 − x²), ...), written with the functions here too.
EVALUATED_AS = {
    sp.tan: lambda x: sp.sin(x) / sp.cos(x),
    sp.cot: lambda x: sp.cos(x) / sp.sin(x),
    sp.sec: lambda x: 1 / sp.cos(x),
    sp.csc: lambda x: 1 / sp.sin(x),
    sp.asin: lambda x: sp.atan(x / sp.sqrt((1 - x) * (1 + x))),       # ±1: x/0 = ±inf, atan ±π/2
    sp.acos: lambda x: 2 * sp.atan(sp.sqrt((1 - x) / (1 + x))),       # accurate near 1: no π/2 − asin
    sp.asinh: _asinh, sp.acosh: _acosh, sp.atanh: _atanh,
}

#: The classes of ``sympy.codegen.cfunctions`` (C's math functions) a cell may use: (the vector
#: math's name, or a rewrite as for :data:`EVALUATED_AS`).  Not its Cbrt, whose sympy derivative
#: 1/(3 x^(2/3)) is NaN for x < 0.  That module is not imported here (it adds ~9 ms to every
#: ``import rnncomp``): a cell holds its functions only once the user imported them, and
#: :func:`cfunction` finds them then.
_CFUNCTIONS = {
    "log1p": ("log1p", None), "expm1": ("expm1", None),   # log(1 + x), exp(x) − 1, accurate near 0
    "exp2": (None, lambda x: sp.Pow(2, x)),               # the vector pow: exp(x·log 2) would lose |x|·ε
    "log2": (None, lambda x: sp.log(x) / sp.log(2)),
    "log10": (None, lambda x: sp.log(x) / sp.log(10)),
}


def cfunction(func):
    """(vector-math name or None, rewrite or None) of a ``sympy.codegen.cfunctions`` class a
    cell may use, else None."""
    module, name = sys.modules.get("sympy.codegen.cfunctions"), getattr(func, "__name__", None)
    if module is None or name not in _CFUNCTIONS or getattr(module, name, None) is not func:
        return None
    return _CFUNCTIONS[name]


def cfunction_classes() -> dict:
    """{name: class} of the ``sympy.codegen.cfunctions`` classes a cell may use (imports that
    module: for reading a declaration back, ``serialize``)."""
    import sympy.codegen.cfunctions as module
    return {name: getattr(module, name) for name in _CFUNCTIONS}


def log1p(x):
    """``sympy.codegen.cfunctions.log1p(x)`` (imported on first use: see :func:`cfunction`)."""
    from sympy.codegen.cfunctions import log1p as f
    return f(x)

# The sympy function classes a cell may use element-wise.  Everything else
# (an undefined sp.Function, Integral, ...) is rejected at declaration with
# this list in the message.
SUPPORTED_FUNCTIONS: dict[type, str] = {
    sp.exp: "exp", sp.log: "log", sp.tanh: "tanh", sp.sinh: "sinh", sp.cosh: "cosh",
    sp.sin: "sin", sp.cos: "cos", sp.atan: "atan", sp.erf: "erf",
    sp.Abs: "Abs", sp.sign: "sign", sp.Max: "Max", sp.Min: "Min",
    sp.Piecewise: "Piecewise", sp.Heaviside: "Heaviside",
    sigmoid: "sigmoid", softplus: "softplus",
    **{f: f.__name__ for f in EVALUATED_AS},
    # piecewise constant: fine in a forward pass, an error where a gradient must flow
    sp.floor: "floor", sp.ceiling: "ceiling",
}


def supported_names() -> str:
    return ", ".join(sorted(SUPPORTED_FUNCTIONS.values())) + ", and from sympy.codegen.cfunctions " \
        + ", ".join(_CFUNCTIONS)
