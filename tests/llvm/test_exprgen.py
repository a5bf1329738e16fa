"""The LLVM expression printer (``rnncomp.backends.llvm.exprgen``) on its own, against sympy.

Each template is printed into a loop kernel ``void f(i64 n, T* x, T* y, T* out)`` (the
placeholders bound to the loaded values, as the native and PTX emitters bind theirs), compiled
for the host and run on a grid of points that holds the edge cases of every construct: zeros
(Heaviside's value at 0, sign, floor), ties x == y (Max, Min, Eq, Ne, <=) and both signs.  The
reference is sympy itself: the template with the point substituted and evaluated to 30 digits.

Tolerance, float64: |got − ref| ≤ 1e-13 (1 + |ref|): vecmath's functions are within 2.5 ulp
(tests/llvm/test_vecmath.py), a template chains a few of them and sinh/cosh are printed as
(e^x ∓ e^−x)/2, whose cancellation near 0 costs absolute, not relative, accuracy; a wrong
branch, constant, operator or exponent is off by far more than that on some point of the grid.
"""
from __future__ import annotations

import ctypes
import itertools

import numpy as np
import pytest
import sympy as sp
from llvmlite import ir

from rnncomp.backends.llvm.builder import for_range, gep
from rnncomp.backends.llvm.exprgen import LLVMPrinter, unsupported
from rnncomp.backends.llvm.jit import compile_module
from rnncomp.errors import CompileError
from rnncomp.functions import SUPPORTED_FUNCTIONS, sigmoid, softplus

x, y = sp.symbols("x y", real=True)
XS = [-2.5, -1.0, -0.25, 0.0, 0.25, 1.0, 2.5]
YS = [-1.0, 0.0, 0.25, 1.5]
GRID = np.array(list(itertools.product(XS, YS)))  # holds x == y at -1, 0 and 0.25
POS = 2 + x ** 2  # a base that is never 0 or negative

TEMPLATES = {
    # arithmetic: sums, products, quotients (a product of nothing but reciprocals too)
    "add_mul": 3 * x + x * y - sp.Rational(1, 3),
    "quotient": x / POS,
    "reciprocals": 1 / (POS * (3 + y ** 2)),
    "memo": sp.exp(x) + sp.exp(x) * y,
    # integer powers by squaring, negative powers, square roots and general powers
    **{f"pow{n}": x ** n for n in (2, 3, 4, 5, 6, 7, 8, 11)},
    "pow_neg3": POS ** -3,
    "pow_neg1": POS ** -1 * y,
    "pow_neg2": POS ** -2,
    "quotient_sq": x * y / (POS ** 2 * (3 + y ** 2) ** 3 * (1 + x ** 2)),   # divided one time after another
    "pow_neg5": POS ** -5,    # past SEQUENTIAL_DIVISIONS: one division by the power
    "sqrt": POS ** sp.Rational(1, 2),
    "rsqrt": POS ** sp.Rational(-1, 2),
    "pow_3_2": POS ** sp.Rational(3, 2),
    "pow_var": POS ** y,
    "exp_var": sp.E ** (x * y),
    "constants": sp.pi * x + sp.E * y,
    # every function the DSL admits (functions.SUPPORTED_FUNCTIONS)
    "exp": sp.exp(x), "log": sp.log(POS), "tanh": sp.tanh(x), "sinh": sp.sinh(x), "cosh": sp.cosh(x),
    "sin": sp.sin(x), "cos": sp.cos(x), "atan": sp.atan(x), "erf": sp.erf(x), "abs": sp.Abs(x - y),
    "sign": sp.sign(x), "sigmoid": sigmoid(x), "softplus": softplus(x),
    "floor": sp.floor(x), "ceiling": sp.ceiling(x),
    "max2": sp.Max(x, y), "min2": sp.Min(x, y),
    "max3": sp.Max(x, y, sp.Rational(1, 2)), "min3": sp.Min(x, y, -sp.Rational(1, 2)),
    "heaviside_half": sp.Heaviside(x), "heaviside_0": sp.Heaviside(x, 0),
    "heaviside_1": sp.Heaviside(x, 1), "heaviside_var": sp.Heaviside(x, y),
    # conditions: every relation, And, Or, Not; a Piecewise with and without a True branch
    **{f"pw_{name}": sp.Piecewise((x + 10, rel(x, y)), (y - 10, True))
       for name, rel in [("lt", sp.Lt), ("gt", sp.Gt), ("le", sp.Le), ("ge", sp.Ge), ("eq", sp.Eq),
                         ("ne", sp.Ne)]},
    "pw_and": sp.Piecewise((1, sp.And(x > -1, y < 1, x < 2)), (2, True)),
    "pw_or": sp.Piecewise((1, sp.Or(x > 1, y < 0, sp.Eq(x, 0))), (2, True)),
    "pw_not": sp.Piecewise((x, sp.Not(sp.And(x > 0, y > 0))), (-x, True)),
    "pw_three": sp.Piecewise((0, x < -2), (1, x > 2), (x / 4 + sp.Rational(1, 2), True)),
    # any other boolean function, through And/Or/Not (sympy's to_nnf)
    "pw_xor": sp.Piecewise((x, sp.Xor(x > 0, y > 0)), (y, True)),
    "pw_implies": sp.Piecewise((x, sp.Implies(x > 0, y > 0)), (y, True)),
    "pw_equivalent": sp.Piecewise((x, sp.Equivalent(x > 0, y > 0)), (y, True)),
    "pw_ite": sp.Piecewise((x, sp.ITE(x > 0, y > 0, y < -1)), (y, True)),
    # real constants that are not numbers: sympy's NumberSymbols, by value
    "golden_catalan": sp.GoldenRatio * x + sp.Catalan - sp.EulerGamma * y,
}


GELU_MAX = x * (1 + sp.erf(x / sp.sqrt(2))) / 2 + sp.Max(x, y)  # the float32 kernel's template
E = sp.exp(x)
QUOTIENT = E * (-E / (1 + E) ** 2 + 1 / (1 + E))  # d/dx of e/(1+e), e = exp(x), as sympy writes it


def _reference(e, px, py):
    v = e.subs({x: sp.Float(px, 30), y: sp.Float(py, 30)}).evalf(30)
    return float(v) if v.is_real else float("nan")


def _kernel(m, T, name, template):
    fn = ir.Function(m, ir.FunctionType(ir.VoidType(), [ir.IntType(64)] + [T.as_pointer()] * 3), name=name)
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    n, px, py, out = fn.args
    with for_range(b, n) as i:
        args = {x: b.load(gep(b, px, i)), y: b.load(gep(b, py, i))}
        b.store(LLVMPrinter(b, T, args).emit_all(template), gep(b, out, i))
    b.ret_void()


@pytest.fixture(scope="module")
def lib():
    m = ir.Module(name="exprgen_test")
    names = {}
    for k, (key, e) in enumerate(sorted(TEMPLATES.items())):
        names[key] = f"t{k}_f64"
        _kernel(m, ir.DoubleType(), names[key], e)
    _kernel(m, ir.FloatType(), "gelu_f32", GELU_MAX)
    _kernel(m, ir.FloatType(), "quotient_f32", QUOTIENT)
    for f in (sp.sinh, sp.cosh):
        _kernel(m, ir.FloatType(), f"{f.__name__}_f32", f(x))
        _kernel(m, ir.DoubleType(), f"{f.__name__}_f64", f(x))
    return compile_module(m, cache=None), names


def _run(lib, name, dtype, px=GRID[:, 0], py=GRID[:, 1]):
    """Kernel ``name`` of ``lib`` over the points (px, py) (the grid unless given)."""
    px, py = (np.ascontiguousarray(a, dtype=dtype) for a in (px, py))
    out = np.full(px.size, -12345.0, dtype=dtype)
    f = ctypes.CFUNCTYPE(None, ctypes.c_int64, *[ctypes.c_void_p] * 3)(lib.address(name))
    f(px.size, px.ctypes.data, py.ctypes.data, out.ctypes.data)
    return out


@pytest.mark.parametrize("key", sorted(TEMPLATES))
def test_template_matches_sympy(lib, key):
    library, names = lib
    got = _run(library, names[key], np.float64)
    ref = np.array([_reference(TEMPLATES[key], px, py) for px, py in GRID])
    assert np.isfinite(ref).all(), key  # the grid stays where every template is real and finite
    err = np.abs(got - ref) / (1 + np.abs(ref))
    worst = int(np.argmax(err))
    assert err[worst] <= 1e-13, (key, GRID[worst], got[worst], ref[worst])


def test_float32_kernel_uses_the_float_type(lib):
    library, _ = lib
    got = _run(library, "gelu_f32", np.float32)
    ref = np.array([_reference(GELU_MAX, float(np.float32(px)), float(np.float32(py))) for px, py in GRID])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=2e-6, atol=2e-7)  # a few float32 ulps


def test_float32_quotient_derivative_does_not_overflow(lib):
    """σ'(x) written by hand, e·(-e/(1+e)² + 1/(1+e)): at x = 60 in float32, (1+e)² overflows,
    and x/(1+e)**2 printed as one division gave e·(0 + 1/(1+e)) = 1.  Divided one time after
    another, (e/(1+e))/(1+e) stays finite and the result is the true ~0 (8.7e-27).  At x = ±2 it
    is σ'(x) to a few float32 ulps."""
    library, _ = lib
    got = _run(library, "quotient_f32", np.float32, np.array([60.0, 2.0, -2.0]), np.zeros(3))
    assert abs(got[0]) <= 1e-6, got[0]
    ref = [_reference(QUOTIENT, v, 0.0) for v in (2.0, -2.0)]
    np.testing.assert_allclose(got[1:], ref, rtol=1e-6)


@pytest.mark.parametrize("name", ["sinh", "cosh"])
@pytest.mark.parametrize("dtype, points", [
    (np.float32, [1e-8, -1e-7, 0.3, 0.999, 1.0, 1.001, 5.0, 20.0, 88.5, 89.0, -89.0, 0.0]),
    (np.float64, [1e-17, 1e-300, -0.3, 0.999, 1.0, 1.001, 30.0, 709.0, 710.0, -710.0])])
def test_hyperbolic_functions_near_zero_and_near_the_range(lib, name, dtype, points):
    """sinh and cosh within 2 ulp of the true value (30 digits) from 1e-300 to the edge of the
    dtype's range.  Printed as (e^x ∓ e^-x)/2 they lost every digit near 0 (sinh(1e-8) = 0 in
    float32, sinh(1e-17) = 0 in float64) and overflowed where e^x does, short of the result's
    own limit (sinh(89) = 2.2e38 → inf in float32, sinh(710) in float64); found by a probe."""
    library, _ = lib
    got = _run(library, f"{name}_{'f32' if dtype == np.float32 else 'f64'}", dtype, np.array(points), np.zeros(len(points)))
    ref = np.array([_reference(getattr(sp, name)(x), v, 0.0) for v in points]).astype(dtype)
    assert np.isfinite(ref).all() and np.isfinite(got).all(), (got, ref)
    ulps = np.abs(got.astype(np.float64) - ref) / np.spacing(np.abs(ref)).astype(np.float64)
    assert ulps.max() <= 2, dict(zip(points, ulps))


def test_square_roots_are_correctly_rounded():
    """x^(1/2) and x^(-1/2) are the hardware square root (correctly rounded, docs/vecmath.md's
    0.5 ulp), not ``pow``: bit for bit NumPy's sqrt and 1/sqrt over 4096 positive values."""
    m = ir.Module(name="exprgen_sqrt")
    _kernel(m, ir.DoubleType(), "sqrt", x ** sp.Rational(1, 2))
    _kernel(m, ir.DoubleType(), "rsqrt", x ** sp.Rational(-1, 2))
    library = compile_module(m, cache=None)
    v = np.exp(np.random.default_rng(3).uniform(-30, 30, 4096))
    for name, want in (("sqrt", np.sqrt(v)), ("rsqrt", 1 / np.sqrt(v))):
        np.testing.assert_array_equal(_run(library, name, np.float64, v, v), want, err_msg=name)


def test_piecewise_with_no_branch_true_is_nan(lib):
    m = ir.Module(name="exprgen_nan")
    _kernel(m, ir.DoubleType(), "pw", sp.Piecewise((x, x > 0), (y, x < -1)))
    got = _run(compile_module(m, cache=None), "pw", np.float64)
    px, py = GRID[:, 0], GRID[:, 1]
    want = np.where(px > 0, px, np.where(px < -1, py, np.nan))
    np.testing.assert_array_equal(got, want)  # NaN where no condition holds, as sympy's nan


def test_every_function_the_dsl_admits_is_lowered():
    for f in SUPPORTED_FUNCTIONS:
        if f is sp.Piecewise:
            e = sp.Piecewise((x, x > 0), (y, True))
        elif f in (sp.Max, sp.Min):
            e = f(x, y)
        else:
            e = f(x)
        assert unsupported(e + y) == [], f


def test_unsupported_names_each_function_once_sorted():
    e = sp.gamma(x) + sp.besselj(0, x) * sp.gamma(y) + sp.tanh(sp.loggamma(x))
    assert unsupported(e) == ["besselj", "gamma", "loggamma"]


@pytest.mark.parametrize("template, match", [
    (sp.gamma(x) + 1, r"cannot lower gamma \(gamma\(x\)\)"),
    (sp.Piecewise((x, sp.Q.positive(x)), (y, True)), r"cannot compile the condition Q.positive\(x\)"),
])
def test_what_cannot_be_lowered_is_a_compile_error(template, match):
    m = ir.Module(name="exprgen_bad")
    with pytest.raises(CompileError, match=match):
        _kernel(m, ir.DoubleType(), "bad", template)
