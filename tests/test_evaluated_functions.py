"""Functions the native (and PTX) code evaluates as expressions of others (``functions.EVALUATED_AS``:
tan = sin/cos, asin, acos, asinh, acosh, atanh as log1p forms and asymptotic forms;
sympy.codegen.cfunctions' exp2, log2, log10), and that module's log1p and expm1, which
the vector math has.

References: mpmath at 40 digits (sympy's own arbitrary-precision library, independent of the
rewrites) for the values; central differences in float64 and the NumPy oracle (which calls
NumPy's np.tan, np.arcsinh, ... rather than the rewrites) for the gradients.  Tolerance of the
values: 8 units in the last place of the dtype (each rewrite is a few rounded operations; an
unguarded log(1 + δ) near asinh's 0 or acosh's 1 would be off by 1e4-1e9 units there).
"""
import mpmath as mp
import numpy as np
import pytest
import sympy as sp
from sympy.codegen.cfunctions import Cbrt, exp2, expm1, log1p, log2, log10

import rnncomp as rc
from rnncomp.functions import EVALUATED_AS

from gradcheck import check_grads, numpy_model, random_data

mp.mp.dps = 40
_TINY = np.geomspace(1e-12, 0.3, 120)
POINTS = {  # where each function is real and finite: both signs, near 0, near the domain's edges, large
    sp.tan: np.concatenate([np.linspace(-1.55, 1.55, 301), _TINY, -_TINY]),
    sp.cot: np.concatenate([np.linspace(0.01, 3.1, 301), _TINY, -_TINY]),
    sp.sec: np.concatenate([np.linspace(-1.55, 1.55, 301), _TINY]),
    sp.csc: np.concatenate([np.linspace(0.01, 3.1, 301), _TINY, -_TINY]),
    sp.asin: np.concatenate([np.linspace(-1, 1, 301), _TINY, -_TINY, 1 - _TINY, -1 + _TINY]),
    sp.acos: np.concatenate([np.linspace(-1, 1, 301), _TINY, -_TINY, 1 - _TINY, -1 + _TINY]),
    sp.asinh: np.concatenate([np.linspace(-20, 20, 301), _TINY, -_TINY, np.geomspace(1, 1e30, 80),
                              -np.geomspace(1, 1e30, 80)]),
    sp.acosh: np.concatenate([np.linspace(1, 20, 301), 1 + _TINY, np.geomspace(1, 1e30, 80)]),
    sp.atanh: np.concatenate([np.linspace(-0.999, 0.999, 301), _TINY, -_TINY, 1 - _TINY, -1 + _TINY]),
    exp2: np.concatenate([np.linspace(-120, 120, 301), _TINY, -_TINY]),
    log2: np.concatenate([np.linspace(0.01, 50, 301), _TINY, 1 + _TINY, np.geomspace(1, 1e30, 80)]),
    log10: np.concatenate([np.linspace(0.01, 50, 301), _TINY, 1 + _TINY, np.geomspace(1, 1e30, 80)]),
    # evaluated natively (vector math), not rewritten: accurate near 0 where log(1 + x), exp(x) − 1 are not
    log1p: np.concatenate([np.linspace(-0.99, 50, 301), _TINY, -_TINY, np.geomspace(1, 1e30, 80)]),
    expm1: np.concatenate([np.linspace(-50, 80, 301), _TINY, -_TINY]),
}
EXACT = {sp.tan: mp.tan, sp.cot: mp.cot, sp.sec: mp.sec, sp.csc: mp.csc, sp.asin: mp.asin, sp.acos: mp.acos,
         sp.asinh: mp.asinh, sp.acosh: mp.acosh, sp.atanh: mp.atanh, exp2: lambda v: mp.power(2, v),
         log2: lambda v: mp.log(v, 2), log10: mp.log10,
         log1p: mp.log1p, expm1: mp.expm1}


def _cell(f):
    c = rc.Cell(f"f_{f.__name__}")
    x, h = c.input("x", 1), c.state("h", 1)
    c.update(h, f(x))
    c.output("y", h.new)
    return c


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("f", list(POINTS), ids=lambda f: f.__name__)
def test_native_values_are_within_a_few_ulp_of_mpmath(f, dtype):
    assert set(EVALUATED_AS) <= set(POINTS)
    model = rc.compile(_cell(f), backend="native", dtype=dtype)
    x = POINTS[f].astype(dtype)
    with mp.workdps(40):
        exact = np.array([float(EXACT[f](mp.mpf(float(v)))) if abs(v) != 1 or f is not sp.atanh
                          else float(np.sign(v)) * np.inf for v in x])
    got = model.forward({}, {"x": x[:, None, None]})[0]["y"].ravel().astype(np.float64)
    finite = np.isfinite(exact) & (np.abs(exact) < np.finfo(dtype).max)
    np.testing.assert_array_equal(got[~finite], exact[~finite])  # atanh(±1) = ±inf
    ulp = np.spacing(np.abs(exact[finite]).astype(dtype)).astype(np.float64)
    err = np.abs(got[finite] - exact[finite]) / np.maximum(ulp, np.finfo(dtype).tiny)
    worst = int(np.argmax(err))
    assert err[worst] <= 8, f"{f.__name__}({x[finite][worst]!r}) = {got[finite][worst]!r}, " \
                            f"exact {exact[finite][worst]!r}: {err[worst]:.1f} ulp"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_past_the_series_and_near_the_largest_float(dtype):
    """asinh just above 0.1 (where its Taylor series gave way to log(|x| + √(x²+1)): 15 ulp),
    atanh at 0.1 to 0.3, and asinh, acosh of the largest floats (log(2|x|) overflowed: inf for
    float32 3e38): within 8 ulp of mpmath, as the test above asks of the whole range."""
    big = np.finfo(dtype).max
    cases = {sp.asinh: np.concatenate([np.linspace(0.1, 0.3, 2001), [big / 1.5, -big, 1e15]]),
             sp.acosh: np.array([big / 1.5, big, 1e15, 1.0499, 1.0501]),
             sp.atanh: np.linspace(0.1, 0.3, 2001)}
    for f, x in cases.items():
        model = rc.compile(_cell(f), backend="native", dtype=dtype)
        x = x.astype(dtype)
        got = model.forward({}, {"x": x[:, None, None]})[0]["y"].ravel().astype(np.float64)
        with mp.workdps(40):
            exact = np.array([float(getattr(mp, f.__name__)(mp.mpf(float(v)))) for v in x])
        err = np.abs(got - exact) / np.spacing(np.abs(exact).astype(dtype)).astype(np.float64)
        worst = int(np.argmax(err))
        assert err[worst] <= 8, f"{f.__name__}({x[worst]!r}) = {got[worst]!r}, exact {exact[worst]!r}: {err[worst]:.1f} ulp"


def test_outside_the_domain_is_nan_as_in_numpy():
    for f, bad in ((sp.asin, 1.5), (sp.acos, -1.5), (sp.acosh, 0.5), (sp.atanh, 2.0)):
        model = rc.compile(_cell(f), backend="native", dtype="float64")
        got = model.forward({}, {"x": np.full((1, 1, 1), bad)}, check_finite=False)[0]["y"]
        assert np.isnan(got).all(), (f, got)


def every_evaluated_function():
    """Each function of EVALUATED_AS on a pre-activation kept inside its domain."""
    cell = rc.Cell("evaluated")
    x, h = cell.input("x", 3), cell.state("h", 3)
    a = cell.param("W", (3, 3)) @ x + cell.param("U", (3, 3)) @ h
    s = sp.tanh(a)  # in (-1, 1)
    e = (sp.tan(s) / 3 + sp.cot(2 + s) / 4 + sp.sec(s) / 5 + sp.csc(2 + s) / 6 + sp.asin(0.9 * s)
         + sp.acos(0.9 * s) / 2 + sp.asinh(3 * a) / 3 + sp.acosh(2 + a ** 2) / 4 + sp.atanh(0.9 * s) / 2
         + exp2(s) / 5 + log2(2 + s) / 3 + log10(2 + s) + log1p(0.5 * s) + expm1(s) / 3)
    cell.update(h, sp.tanh(e))
    y = cell.output("y", cell.param("V", (2, 3)) @ h.new)
    cell.loss(rc.vsum((y - cell.target("t", 2)) ** 2) / 2)
    return cell


def test_gradients_through_every_evaluated_function():
    cell = every_evaluated_function()
    params, inputs, targets = random_data(cell, T=5, B=3, seed=4)
    oracle = numpy_model(cell)
    check_grads(oracle, params, inputs, targets)  # central differences, float64
    native = rc.compile(cell, backend="native", dtype="float64")
    l1, g1, _ = oracle.loss_and_grad(params, inputs, targets)
    l2, g2, _ = native.loss_and_grad(params, inputs, targets)
    assert l2 == pytest.approx(l1, rel=1e-13)
    for k in g1:  # NumPy's np.tan, np.arcsinh, ... against the rewrites: rounding only
        np.testing.assert_allclose(g2[k], g1[k], rtol=1e-11, atol=1e-13, err_msg=k)


@pytest.mark.parametrize("f", [sp.gamma, Cbrt], ids=lambda f: f.__name__)
def test_a_function_without_an_implementation_is_still_named(f):
    cell = rc.Cell("g")
    x, h = cell.input("x", 2), cell.state("h", 2)
    with pytest.raises(rc.CellError, match=rf"function '{f.__name__}' is not supported .*supported: .*asinh"):
        cell.update(h, f(x + h))


def test_the_ptx_code_computes_the_same_and_assembles():
    """The PTX backend prints through the same printer: its code run on the host (runner="host")
    equals the oracle, and ptxas (when installed) assembles it."""
    from rnncomp.backends.ptx.ptxgen import find_ptxas, ptxas
    cell = every_evaluated_function()
    params, inputs, targets = random_data(cell, T=5, B=3, seed=4)
    ptx = rc.compile(cell, backend="ptx", dtype="float64", runner="host")
    l1, g1, _ = numpy_model(cell).loss_and_grad(params, inputs, targets)
    l2, g2, _ = ptx.loss_and_grad(params, inputs, targets)
    assert l2 == pytest.approx(l1, rel=1e-13)
    for k in g1:
        np.testing.assert_allclose(g2[k], g1[k], rtol=1e-11, atol=1e-13, err_msg=k)
    if find_ptxas() is not None:
        ptxas(rc.compile(cell, backend="ptx", dtype="float32").ptx, "sm_90")


def test_latex_writes_the_trig_functions_as_latex_does():
    """In the backward listing too, where a value is named after its function (tan(a)[t]);
    asin, acos, asinh, ... stay sympy's \operatorname{asin} (LaTeX has no command for them)."""
    tex = rc.explain(every_evaluated_function()).latex()
    assert r"\tan" in tex and r"\sec" in tex
    assert not any(rf"\operatorname{{{f}}}" in tex for f in ("tan", "cot", "sec", "csc"))


def test_a_checkpoint_of_such_a_cell_loads_and_computes_the_same(tmp_path):
    """The declaration is stored as text: every function name must be readable back (log1p and
    the other sympy.codegen functions are no names of sympy's own namespace)."""
    cell = every_evaluated_function()
    params, inputs, targets = random_data(cell, T=5, B=3, seed=4)
    tr = rc.Trainer(cell, optimizer=rc.Adam(1e-2), dtype="float64")
    tr.fit(inputs, targets, epochs=1, batch_size=3, verbose=0)
    tr.save(tmp_path / "f.ckpt")
    back = rc.Trainer.load(tmp_path / "f.ckpt")
    assert str(back.cell) == str(tr.cell)
    assert back.evaluate(inputs, targets) == tr.evaluate(inputs, targets)
