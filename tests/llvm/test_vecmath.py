"""Accuracy, special values and vectorisation of ``rnncomp.backends.llvm.vecmath``.

One module per dtype holds a loop kernel ``void vm_<name>(i64 n, T* x[, T* y], T* out)``
for every function (scalar ``emit`` inside ``for_range``, widened by LLVM), plus a few
kernels that call ``emit`` on ``<8 x T>`` values directly.  References: float64 numpy for
float32 results, ``np.longdouble`` (x87 80-bit) for float64 results where numpy has it.
"""
from __future__ import annotations

import ctypes
import math
import re

import numpy as np
import pytest
from llvmlite import ir

from rnncomp.backends.llvm.builder import for_range, gep
from rnncomp.backends.llvm.jit import HostTarget, compile_module
from rnncomp.backends.llvm.vecmath import ARITY, SUPPORTED, emit
from rnncomp.errors import CompileError

DTYPES = {"float32": (np.float32, ir.FloatType), "float64": (np.float64, ir.DoubleType)}
VEC_LANES = 8
VEC_FUNCS = ["exp", "tanh", "sigmoid", "log", "sin", "pow", "erf", "softplus"]

# documented bounds (ulp); keep in sync with docs/vecmath.md and the vecmath docstring.
# Measured on an FMA host; without FMA the fused steps round twice: allow one ulp more.
BOUNDS = {
    "float32": dict(exp=1.5, expm1=1.5, log=1, log1p=1, tanh=1.5, sigmoid=2, softplus=2, sin=1,
                    cos=1, atan=1.5, erf=2, sqrt=0.5, pow=1),
    "float64": dict(exp=1.5, expm1=1.5, log=1.5, log1p=1.5, tanh=1.5, sigmoid=2, softplus=2.5,
                    sin=1, cos=1, atan=1.5, erf=2, sqrt=0.5, pow=2),
}
SLACK = 0.0 if HostTarget.detect().has("fma") else 1.0


# ----------------------------------------------------------------------------- kernels
def _kernel(m, T, name, nargs):
    fn = ir.Function(m, ir.FunctionType(ir.VoidType(), [ir.IntType(64)]
                                        + [T.as_pointer()] * (nargs + 1)), name=f"vm_{name}")
    for a in fn.args[1:]:
        a.add_attribute("noalias")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    n, *ptrs = fn.args
    with for_range(b, n) as i:
        vals = [b.load(gep(b, p, i)) for p in ptrs[:-1]]
        b.store(emit(b, name, vals), gep(b, ptrs[-1], i))
    b.ret_void()


def _vec_kernel(m, T, name, nargs):
    """Same contract, but emit() sees <8 x T> values; n must be a multiple of 8."""
    V = ir.VectorType(T, VEC_LANES)
    fn = ir.Function(m, ir.FunctionType(ir.VoidType(), [ir.IntType(64)]
                                        + [T.as_pointer()] * (nargs + 1)), name=f"vv_{name}")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    n, *ptrs = fn.args
    vptrs = [b.bitcast(p, V.as_pointer()) for p in ptrs]
    chunks = b.sdiv(n, ir.IntType(64)(VEC_LANES))
    with for_range(b, chunks) as i:
        align = 8 if isinstance(T, ir.DoubleType) else 4     # numpy only aligns elements
        vals = [b.load(gep(b, p, i), align=align) for p in vptrs[:-1]]
        b.store(emit(b, name, vals), gep(b, vptrs[-1], i), align=align)
    b.ret_void()


class Lib:
    def __init__(self, dtype):
        self.np_t, T = DTYPES[dtype]
        m = ir.Module(name=f"vecmath_test_{dtype}")
        for name in sorted(SUPPORTED):
            _kernel(m, T(), name, ARITY[name])
        for name in VEC_FUNCS:
            _vec_kernel(m, T(), name, ARITY[name])
        self.lib = compile_module(m, cache=None)
        self._fns = {}

    def __call__(self, name, *args, prefix="vm"):
        assert len(args) == ARITY[name], name
        key = (prefix, name)
        if key not in self._fns:
            ptr = ctypes.c_void_p
            self._fns[key] = ctypes.CFUNCTYPE(None, ctypes.c_int64, *[ptr] * (len(args) + 1))(
                self.lib.address(f"{prefix}_{name}"))
        arrs = [np.ascontiguousarray(a, dtype=self.np_t) for a in np.broadcast_arrays(*args)]
        out = np.empty_like(arrs[0])
        self._fns[key](out.size, *[a.ctypes.data for a in arrs], out.ctypes.data)
        return out


@pytest.fixture(scope="module")
def libs():
    """``libs(dtype)``: the compiled module for dtype (all functions), built once per module."""
    cache: dict[str, Lib] = {}

    def get(dtype: str) -> Lib:
        if dtype not in cache:
            cache[dtype] = Lib(dtype)
        return cache[dtype]
    return get


# ----------------------------------------------------------------------------- references
LD = np.longdouble
HAVE_LD = np.finfo(LD).nmant >= 63          # x87 extended: a true reference for float64
PI_LD = np.arccos(LD(-1))


def _erf_ld(x):
    """erf in long double: (2/sqrt(pi)) e^-x^2 sum 2^n x^(2n+1)/(2n+1)!! (no cancellation)."""
    x = np.asarray(x, dtype=LD)
    ax = np.abs(x)
    out = np.where(np.isnan(x), x, np.sign(x)).astype(LD)
    m = ax <= 6.5                                # erf(6.5) = 1 - 4e-20: rounds to 1
    a = ax[m]
    a2 = a * a
    term, acc = a.copy(), a.copy()
    for n in range(1, 400):
        term = term * (2 * a2) / (2 * n + 1)
        acc += term
        if np.all(term <= acc * LD(2.0 ** -70)):
            break
    out[m] = np.copysign(2 / np.sqrt(PI_LD) * np.exp(-a2) * acc, x[m])
    return out


def _erf64(x):
    try:
        from scipy.special import erf
        return erf(np.asarray(x, dtype=np.float64))
    except ImportError:  # pragma: no cover
        return np.vectorize(math.erf, otypes=[np.float64])(x)


def _sigmoid(x):
    z = np.exp(-np.abs(x))
    return np.where(x < 0, z, 1) / (1 + z)


REF = {
    "exp": np.exp, "expm1": np.expm1, "log": np.log, "log1p": np.log1p, "tanh": np.tanh,
    "sigmoid": _sigmoid, "softplus": lambda x: np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x))),
    "sin": np.sin, "cos": np.cos, "atan": np.arctan, "sqrt": np.sqrt, "pow": np.power,
}


def reference(name, dtype, *args):
    """Reference values one precision up: float64 for float32, long double for float64."""
    hi = LD if (dtype == "float64" and HAVE_LD) else np.float64
    with np.errstate(all="ignore"):
        if name == "erf":
            return _erf_ld(args[0]) if hi is LD else _erf64(args[0])
        return REF[name](*[np.asarray(a, dtype=hi) for a in args])


def ulp_error(got, ref, np_t):
    """|got - ref| in ulps of ref rounded to np_t; non-finite values must match exactly."""
    with np.errstate(all="ignore"):
        ref_r = ref.astype(np_t)
        err = np.abs(got.astype(ref.dtype) - ref) / np.abs(np.spacing(ref_r)).astype(ref.dtype)
        special = ~np.isfinite(ref_r) | ~np.isfinite(got)
        same = (got == ref_r) | (np.isnan(got) & np.isnan(ref_r))
        return np.where(special, np.where(same, 0.0, np.inf), err)


def max_ulp(got, ref, np_t, *args):
    err = ulp_error(got, ref, np_t)
    i = int(np.argmax(err))
    return float(err[i]), [float(a.flat[i]) for a in args], float(got.flat[i]), float(ref.flat[i])


# ----------------------------------------------------------------------------- inputs
SIN_RANGE = {"float32": 1e7, "float64": 1.6e6}     # documented accurate range of sin/cos
DOMAIN = {  # where each function is not saturated: swept densely (linear)
    "exp": (-110, 92), "expm1": (-3, 3), "log": (0, 4), "log1p": (-1, 3), "tanh": (-10, 10),
    "sigmoid": (-110, 40), "softplus": (-110, 110), "atan": (-6, 6), "erf": (-7, 7),
    "sqrt": (0, 4), "sin": (-10, 10), "cos": (-10, 10),
}


def specials(np_t):
    fi = np.finfo(np_t)
    v = [0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, 0.5, 2.0, fi.smallest_subnormal,
         fi.smallest_normal, fi.smallest_normal * (1 - fi.eps), fi.max, fi.eps, fi.eps / 4,
         88.72283, 88.72284, 89.0, -87.33654, -103.97208, -104.0, 709.78, 709.79, -745.13,
         -745.14, -708.4, 1e-30, 1e-300, 0.625, 0.66, 2.414213562373095, 0.4142135623730950,
         np.pi, np.pi / 2, np.pi / 4, 1e4, 2e4, -100.0, 100.0, 20.0, 10.0, 9.0, 6.0, 4.0]
    with np.errstate(over="ignore"):
        v = np.array(v, dtype=np.float64).astype(np_t)
    return np.concatenate([v, -v])


def sweep(name, dtype, seed=0):
    np_t = DTYPES[dtype][0]
    n = 1_000_000 if dtype == "float32" else 250_000
    rng = np.random.default_rng(seed)
    if dtype == "float32":      # uniform over bit patterns: every exponent, denormals, both signs
        bits = rng.integers(0, 2 ** 32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    else:
        bits = rng.integers(0, 2 ** 64, n, dtype=np.uint64).view(np.float64)
    bits = bits[np.isfinite(bits)]
    lo, hi = DOMAIN.get(name, (-5, 5))
    dense = np.linspace(lo, hi, n)
    logs = np.geomspace(1e-40 if dtype == "float32" else 1e-300, 1e4, n // 4)
    xs = np.concatenate([specials(np_t), bits, dense.astype(np_t), logs.astype(np_t),
                         -logs.astype(np_t)]).astype(np_t)
    if name in ("sin", "cos"):
        xs = xs[~(np.abs(xs) > SIN_RANGE[dtype])]
        kmax = int(SIN_RANGE[dtype] / (np.pi / 2))                  # near multiples of pi/2
        k = np.unique(np.concatenate([np.arange(1, 20000), rng.integers(1, kmax, 200_000)]))
        near = (k.astype(LD) * (PI_LD / 2)).astype(np_t)
        xs = np.concatenate([xs, near, np.nextafter(near, np_t(0)),
                             np.nextafter(near, np_t(np.inf)), -near])
    return xs


POW_CASES = 300_000


def pow_inputs(dtype, seed=1):
    np_t = DTYPES[dtype][0]
    rng = np.random.default_rng(seed)
    n = POW_CASES if dtype == "float32" else POW_CASES // 3
    lim = 30 if dtype == "float32" else 300
    x = np.exp(rng.uniform(-lim * 1.5, lim * 1.5, n)) * rng.choice([-1, 1], n)
    y = rng.uniform(-1, 1, n) * lim / np.maximum(np.abs(np.log(np.abs(x))), 1e-3)
    y = np.where(x < 0, np.round(y), y)                              # negative x: integer y
    near1 = 1 + rng.uniform(-1e-3, 1e-3, n // 4)                     # large y on |x| ~ 1
    ynear = rng.uniform(-1, 1, n // 4) * (lim / 2e-3)
    sv = specials(np_t)
    gx, gy = np.meshgrid(sv, np.concatenate([sv, [3.0, -3.0, 0.5, -0.5, 2.0, -2.0]]))
    x = np.concatenate([x, near1, gx.ravel()]).astype(np_t)
    y = np.concatenate([y, ynear, gy.ravel()]).astype(np_t)
    return x, y


# ----------------------------------------------------------------------------- tests
ACCURACY = sorted(BOUNDS["float32"])


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("name", ACCURACY)
def test_accuracy_sweep(name, dtype, libs):
    if dtype == "float64" and not HAVE_LD:
        pytest.skip("float64 accuracy needs an 80-bit long double reference")
    lib = libs(dtype)
    np_t = lib.np_t
    if name == "pow":
        x, y = pow_inputs(dtype)
        got = lib("pow", x, y)
        err, where, g, r = max_ulp(got, reference("pow", dtype, x, y), np_t, x, y)
    else:
        x = sweep(name, dtype)
        got = lib(name, x)
        err, where, g, r = max_ulp(got, reference(name, dtype, x), np_t, x)
    assert err <= BOUNDS[dtype][name] + SLACK, \
        f"{name}/{dtype}: {err:.3f} ulp at {where}: got {g!r}, want {r!r}"


def _check(lib, name, xs, want, *, rel=None, ulps=None, ys=None):
    np_t = lib.np_t
    xs = np.array(xs, dtype=np.float64).astype(np_t)
    args = (xs,) if ys is None else (xs, np.array(ys, dtype=np.float64).astype(np_t))
    got = lib(name, *args)
    want = np.array(want, dtype=np.float64)
    for g, w, x in zip(got, want, xs):
        if ulps is not None:
            assert abs(g - w) <= ulps * abs(np.spacing(np_t(w))), f"{name}({x}) = {g}, want {w}"
        elif rel is not None and np.isfinite(w) and w != 0:
            assert abs(g - w) <= rel * abs(w), f"{name}({x}) = {g}, want {w}"
        elif np.isnan(w):
            assert np.isnan(g), f"{name}({x}) = {g}, want nan"
        else:
            assert g == np_t(w) and np.signbit(g) == np.signbit(w), \
                f"{name}({x}) = {g!r}, want {w!r}"


def test_special_values_float32(libs):
    lib, inf, nan = libs("float32"), np.inf, np.nan
    tiny = float(np.finfo(np.float32).smallest_subnormal)
    _check(lib, "exp", [89, 88.8, -104, -inf, inf, nan, -0.0, 0.0],
           [inf, inf, 0, 0, inf, nan, 1, 1])
    near = np.float32([88.72, -103, -87.4]).astype(np.float64)
    _check(lib, "exp", near, np.exp(near), ulps=1)
    assert 0 < lib("exp", np.array([-103.9], np.float32))[0] < 1e-44          # denormal result
    _check(lib, "expm1", [-0.0, 0.0, tiny, -inf, inf, nan, -100, 100],
           [-0.0, 0, tiny, -1, inf, nan, -1, inf])
    _check(lib, "log", [0, -0.0, -1, -inf, inf, nan, 1], [-inf, -inf, nan, nan, inf, nan, 0])
    small = np.float32([tiny, 3 * tiny, 1e-40]).astype(np.float64)
    _check(lib, "log", small, np.log(small), ulps=1)
    _check(lib, "log1p", [-1, -2, -0.0, tiny, inf, nan], [-inf, nan, -0.0, tiny, inf, nan])
    _check(lib, "tanh", [inf, -inf, -0.0, 0.0, nan, 30, -30, tiny, -1e-20],
           [1, -1, -0.0, 0.0, nan, 1, -1, tiny, -1e-20])
    _check(lib, "tanh", [1e-4, -3e-3], np.tanh([1e-4, -3e-3]), rel=1.2e-7)
    _check(lib, "sigmoid", [inf, -inf, nan, 0, 100], [1, 0, nan, 0.5, 1])
    _check(lib, "sigmoid", [-100, -90, -20], _sigmoid(np.array([-100.0, -90, -20])), rel=2e-2)
    _check(lib, "softplus", [100, 1e30, inf, -inf, nan], [100, 1e30, inf, 0, nan])
    _check(lib, "softplus", [-100, -80, -20], np.exp([-100.0, -80, -20]), rel=1e-1)
    _check(lib, "softplus", [-80, -20], np.log1p(np.exp([-80.0, -20])), rel=3e-7)
    _check(lib, "sin", [inf, -inf, nan, -0.0, 0.0], [nan, nan, nan, -0.0, 0.0])
    _check(lib, "cos", [inf, -inf, nan, 0.0], [nan, nan, nan, 1.0])
    _check(lib, "atan", [inf, -inf, -0.0, nan], np.arctan(np.float32([inf, -inf, -0.0, nan])))
    _check(lib, "erf", [inf, -inf, -0.0, nan, 5, -5], [1, -1, -0.0, nan, 1, -1])
    _check(lib, "sqrt", [-1, -0.0, inf, nan], [nan, -0.0, inf, nan])


def test_special_values_float64(libs):
    lib, inf, nan = libs("float64"), np.inf, np.nan
    _check(lib, "exp", [710, 709.8, -746, -inf, inf, nan], [inf, inf, 0, 0, inf, nan])
    assert 0 < lib("exp", np.array([-745.0]))[0] < 1e-320                      # denormal result
    _check(lib, "log", [0, -1, inf, nan], [-inf, nan, inf, nan])
    _check(lib, "log", [5e-324, 1e-310], np.log([5e-324, 1e-310]), ulps=1)
    _check(lib, "tanh", [inf, -inf, -0.0, 5e-324, 40], [1, -1, -0.0, 5e-324, 1])
    _check(lib, "sigmoid", [-700, -740], _sigmoid(np.array([-700.0, -740])), rel=1e-2)
    _check(lib, "softplus", [800, -700], [800, np.exp(-700)], rel=1e-15)
    _check(lib, "expm1", [-0.0, 1e-300, -800, 800], [-0.0, 1e-300, -1, inf])


def test_pow_special_cases(libs):
    """C99 Annex F pow on all pairs of special values, against numpy (libm) in float64."""
    for dtype in DTYPES:
        lib = libs(dtype)
        np_t = lib.np_t
        sv = np.concatenate([specials(np_t), np_t([3, -3, 0.5, -0.5, 2, -2, 1e-3])])
        x, y = (a.ravel() for a in np.meshgrid(sv, sv))
        got = lib("pow", x, y)
        with np.errstate(all="ignore"):
            want = np.power(x.astype(np.float64), y.astype(np.float64)).astype(np_t)
        # special arguments give exact results (including the sign of zero/inf)
        sx = (np.abs(x) == 1) | (x == 0) | np.isinf(x) | np.isnan(x)
        sy = (y == 0) | np.isinf(y) | np.isnan(y)
        exact = sx | sy
        bad = exact & ~((got == want) & (np.signbit(got) == np.signbit(want))
                        | np.isnan(got) & np.isnan(want))
        assert not bad.any(), list(zip(x[bad][:5], y[bad][:5], got[bad][:5], want[bad][:5]))
        # the rest (overflow, underflow, negative bases with integer exponents) within bounds
        err = ulp_error(got[~exact], reference("pow", dtype, x[~exact], y[~exact]), np_t)
        i = err.argmax()
        assert err[i] <= BOUNDS[dtype]["pow"] + SLACK, (x[~exact][i], y[~exact][i], err[i])


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_sin_cos_outside_range(dtype, libs):
    """Beyond the documented range results stay bounded; inf gives NaN."""
    lib = libs(dtype)
    x = np.geomspace(SIN_RANGE[dtype], np.finfo(lib.np_t).max / 2, 10_000).astype(lib.np_t)
    for name in ("sin", "cos"):
        got = lib(name, np.concatenate([x, -x]))
        assert np.all(np.abs(got) <= 1.0000001), name


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_exact_functions(dtype, libs):
    lib = libs(dtype)
    np_t = lib.np_t
    rng = np.random.default_rng(3)
    x = np.concatenate([specials(np_t), rng.normal(0, 10, 5000).astype(np_t)])
    y = np.concatenate([specials(np_t)[::-1], rng.normal(0, 10, 5000).astype(np_t)])

    def same(a, b):
        return np.all((a == b) | (np.isnan(a) & np.isnan(b)))
    assert same(lib("abs", x), np.abs(x))
    assert same(lib("floor", x), np.floor(x))
    assert same(lib("ceil", x), np.ceil(x))
    assert same(lib("copysign", x, y), np.copysign(x, y))
    s = lib("sign", x)
    assert same(s, np.sign(x)) and np.all(np.signbit(s[x == 0]) == np.signbit(x[x == 0]))
    assert same(lib("max", x, y), np.fmax(x, y))
    assert same(lib("min", x, y), np.fmin(x, y))


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("name", VEC_FUNCS)
def test_vector_operands(name, dtype, libs):
    """emit() on <8 x T> values gives the same results as the auto-vectorised scalar kernel."""
    lib = libs(dtype)
    rng = np.random.default_rng(4)
    n = 8 * 4096
    x = (rng.standard_normal(n) * 20).astype(lib.np_t)
    x[:16] = specials(lib.np_t)[:16]
    args = (np.abs(x), x / 10) if name == "pow" else (x,)
    a, b = lib(name, *args), lib(name, *args, prefix="vv")
    np.testing.assert_array_max_ulp(a, b, maxulp=1)
    assert np.array_equal(np.isnan(a), np.isnan(b))


ALLOWED = {"llvm.fabs", "llvm.sqrt", "llvm.floor", "llvm.ceil", "llvm.rint", "llvm.trunc",
           "llvm.copysign", "llvm.maxnum", "llvm.minnum", "llvm.fma"}
# what LLVM's own canonicalisation may introduce; each lowers to instructions, none to libm
CANONICAL = {"llvm.smin", "llvm.smax", "llvm.umin", "llvm.umax", "llvm.is.fpclass",
             "llvm.fmuladd", "llvm.abs"}


def _function_ir(text, fname):
    m = re.search(r'define [^\n]*@"?%s"?\(.*?\n}\n' % re.escape(fname), text, re.S)
    assert m, fname
    return m.group(0)


def _callees(body):
    names = re.findall(r"call [^@]*@\"?([\w.]+)", body)
    return {re.sub(r"\.(v\d+)?[if]\d+$", "", c) for c in names}


def test_emitted_ir_calls_only_allowed_intrinsics(libs):
    for dtype in DTYPES:
        lib = libs(dtype)
        assert _callees(lib.lib.ir_text) <= ALLOWED, dtype
        for flag in (" fast ", " nnan ", " ninf ", " reassoc ", " afn ", " arcp "):
            assert flag not in lib.lib.ir_text, flag
        assert _callees(lib.lib.optimized_ir()) <= ALLOWED | CANONICAL, dtype
        assert not re.search(r"\bcall[lq]?\b", lib.lib.asm()), "libcall in generated code"


@pytest.mark.parametrize("name", ["exp", "tanh", "sigmoid"])
def test_float32_loop_is_vectorised(name, libs):
    host = HostTarget.detect()
    body = _function_ir(libs("float32").lib.optimized_ir(), f"vm_{name}")
    wide = ["<8 x float>", "<16 x float>"] if host.has("avx2") or host.has("avx512f") \
        else ["<4 x float>"]
    assert any(w in body for w in wide), f"vm_{name} not vectorised"
    ops = re.findall(r"= (fmul|fadd|fsub|fdiv|select)[^<]*(<\d+ x float>)", body)
    assert len(ops) > 20, f"vm_{name}: too few vector operations"
    assert _callees(body) <= ALLOWED, _callees(body)


def test_unknown_function_raises():
    m = ir.Module()
    fn = ir.Function(m, ir.FunctionType(ir.FloatType(), [ir.FloatType()]), "f")
    b = ir.IRBuilder(fn.append_basic_block())
    with pytest.raises(CompileError, match="frobnicate") as ei:
        emit(b, "frobnicate", [fn.args[0]])
    assert "tanh" in str(ei.value) and "sigmoid" in str(ei.value)
    with pytest.raises(CompileError, match="pow"):
        emit(b, "pow", [fn.args[0]])
    with pytest.raises(CompileError, match="exp"):
        emit(b, "exp", [ir.Constant(ir.IntType(32), 1)])


def test_supported_names():
    assert SUPPORTED == {"exp", "expm1", "log", "log1p", "tanh", "sigmoid", "softplus", "sin",
                         "cos", "atan", "erf", "sqrt", "pow", "abs", "floor", "ceil", "sign",
                         "copysign", "max", "min"}
