"""The native (LLVM) backend against the NumPy oracle: zoo, custom and random cells, both dtypes.

float64 agrees to ~1e-12 relative (the same arithmetic in another order, plus vector-math
functions within 2 ulp).  float32: 1e-4 relative to each gradient's largest entry, from
float32 rounding accumulated over the steps (the oracle runs in float64 here).
"""
import numpy as np
import sympy as sp
import pytest
from hypothesis import given, settings, strategies as st

import rnncomp as rc

from gradcheck import mask_and_h0, numpy_model, random_data
from test_custom_cells import CUSTOM, jordan_with_xent
from test_random_cells import random_cells


def compare(cell, T=5, B=3, seed=0, dtype="float64", targets=None, **kw):
    params, inputs, tg = random_data(cell, T=T, B=B, seed=seed)
    tg = targets or tg
    l1, g1, h1 = numpy_model(cell).loss_and_grad(params, inputs, tg, **kw)
    cast = lambda d: {k: v.astype(dtype) for k, v in d.items()}  # noqa: E731
    model = rc.compile(cell, backend="native", dtype=dtype, cache=None)
    l2, g2, h2 = model.loss_and_grad(cast(params), cast(inputs), cast(tg), **kw)
    rtol = 1e-11 if dtype == "float64" else 1e-4
    assert l2 == pytest.approx(l1, rel=rtol)
    for k in g1:
        scale = np.abs(g1[k]).max() + 1e-6
        assert np.abs(g2[k] - g1[k]).max() <= rtol * scale, k
    for s in h1:
        np.testing.assert_allclose(h2[s], h1[s], rtol=rtol, atol=rtol)
    outs1, _ = numpy_model(cell).forward(params, inputs)
    outs2, _ = model.forward(cast(params), cast(inputs))
    for o in outs1:
        np.testing.assert_allclose(outs2[o], outs1[o], rtol=rtol, atol=rtol)


@pytest.mark.parametrize("name", sorted(rc.cells.ZOO))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_zoo_matches_oracle(name, dtype):
    compare(rc.cells.get(name)(3, 5, 2), dtype=dtype)


@pytest.mark.parametrize("make", CUSTOM, ids=lambda f: f.__name__)
def test_custom_cells_match_oracle(make):
    cell = make()
    targets = None
    if make is jordan_with_xent:
        targets = {"t": np.eye(4)[np.random.default_rng(1).integers(0, 4, (5, 3))]}
    compare(cell, targets=targets)


def test_odd_sizes_masks_and_states():
    cell = rc.cells.lstm(7, 13, 3)  # sizes that are not multiples of the SIMD width
    T, B = 9, 5
    mask, h0 = mask_and_h0(cell, T, B)
    compare(cell, T=T, B=B, mask=mask, h0=h0)


def test_one_compile_serves_every_T_and_B():
    cell = rc.cells.gru(3, 4, 2)
    model = rc.compile(cell, backend="native", cache=None)
    oracle = numpy_model(cell)
    for T, B in [(1, 1), (17, 2), (3, 33)]:
        params, inputs, targets = random_data(cell, T=T, B=B, seed=T)
        l1, _, _ = oracle.loss_and_grad(params, inputs, targets)
        l2, _, _ = model.loss_and_grad(params, inputs, targets)
        assert l2 == pytest.approx(l1, rel=1e-12)


@settings(max_examples=15, deadline=None)
@given(random_cells(), st.integers(1, 4), st.integers(1, 3), st.integers(0, 2 ** 16))
def test_random_cells_match_oracle(cell, T, B, seed):
    compare(cell, T=T, B=B, seed=seed)


def test_product_kernel_uses_packed_fma():
    host = rc.backends.llvm.jit.HostTarget.detect()
    if not (host.has("avx2") and host.has("fma")):
        pytest.skip("host has no AVX2+FMA")
    asm = rc.compile(rc.cells.elman(64, 64, 8), backend="native", dtype="float32", cache=None).asm()
    assert "vfmadd" in asm and ("ymm" in asm or "zmm" in asm)


def test_errors_before_native_code_runs():
    cell = rc.cells.elman(3, 4, 2)
    model = rc.compile(cell, backend="native", cache=None)
    params, inputs, targets = random_data(cell)
    with pytest.raises(rc.CallError, match=r"inputs\['x'\] has shape"):
        model.loss_and_grad(params, np.zeros((3, 2, 9)), targets)
    with pytest.raises(rc.CallError, match="dtype float32"):
        model.forward({k: v.astype(np.float32) for k, v in params.items()}, inputs)


@pytest.mark.parametrize("name", ["lstm", "gru", "jordan", "antisymmetric", "indrnn"])
@pytest.mark.parametrize("switch", ["hoist", "grad_after", "fuse", "pack", "stack"])
def test_passes_on_and_off_agree(name, switch):
    cell = rc.cells.get(name)(3, 6, 2)
    params, inputs, targets = random_data(cell, T=7, B=3)
    on = rc.compile(cell, backend="native", cache=None, **{switch: True}).loss_and_grad(params, inputs, targets)
    off = rc.compile(cell, backend="native", cache=None, **{switch: False}).loss_and_grad(
        params, inputs, targets)
    assert on[0] == pytest.approx(off[0], rel=1e-13)
    for k in on[1]:
        np.testing.assert_allclose(on[1][k], off[1][k], rtol=1e-12, atol=1e-15)


def test_hoisting_keeps_readers_of_an_input_driven_state_in_the_loop():
    """Regression (found by the random-cell test): h[t] = tanh(M x[t]) depends on no state,
    but it lives in the state buffer and is computed in the loop; y[t] = V h[t] must follow it."""
    cell = rc.Cell("input_driven")
    x, h = cell.input("x", 1), cell.state("h", 1)
    cell.update(h, sp.tanh(cell.param("M", (1, 1)) @ x))
    y = cell.output("y", cell.param("V", (2, 1)) @ h.new)
    cell.loss((y - cell.target("t", 2)) ** 2 / 2)
    compare(cell, T=3, B=2)


def test_calls_from_several_threads_at_once():
    """Buffers are per thread: concurrent calls on different arrays give the sequential answers."""
    from concurrent.futures import ThreadPoolExecutor

    cell = rc.cells.gru(3, 8, 2)
    model = rc.compile(cell, backend="native", cache=None)
    data = [random_data(cell, T=6 + i, B=2 + i, seed=i) for i in range(4)]
    expected = [model.loss_and_grad(*d) for d in data]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda d: model.loss_and_grad(*d), data * 3))
    for i, (loss, grads, _) in enumerate(got):
        ref_loss, ref_grads, _ = expected[i % 4]
        assert loss == ref_loss
        for k in grads:
            np.testing.assert_array_equal(grads[k], ref_grads[k])


def test_batch_split_across_threads_matches_one_thread():
    cell = rc.cells.lstm(3, 8, 2)
    params, inputs, targets = random_data(cell, T=6, B=19, seed=4)
    mask = np.ones((6, 19))
    mask[:, 3] = 0
    one = rc.compile(cell, backend="native", cache=None, threads=1)
    two = rc.compile(cell, backend="native", cache=None, threads=2)
    two.min_batch_per_thread = 4  # force a split at this small size
    assert len(two._split(19)) == 2
    l1, g1, h1 = one.loss_and_grad(params, inputs, targets, mask=mask)
    l2, g2, h2 = two.loss_and_grad(params, inputs, targets, mask=mask)
    assert l2 == pytest.approx(l1, rel=1e-13)
    for k in g1:
        np.testing.assert_allclose(g2[k], g1[k], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(h2["h"], h1["h"], rtol=1e-14)


def test_compile_cache_hit_and_truncated_file(tmp_path):
    import glob
    import time

    cell = rc.cells.gru(3, 5, 2)
    params, inputs, targets = random_data(cell)
    ref = numpy_model(cell).loss_and_grad(params, inputs, targets)[0]
    cold = rc.compile(cell, backend="native", cache=str(tmp_path))
    files = glob.glob(str(tmp_path / "obj" / "*.o"))
    assert len(files) == 1
    t0 = time.perf_counter()
    warm = rc.compile(rc.cells.gru(3, 5, 2), backend="native", cache=str(tmp_path))
    assert time.perf_counter() - t0 < 0.5  # generous: a hit skips code generation and LLVM
    assert warm.loss_and_grad(params, inputs, targets)[0] == pytest.approx(ref, rel=1e-12)
    assert "define void" in warm.ir()  # IR regenerated on demand for inspection
    with open(files[0], "r+b") as fh:  # a crash mid-write elsewhere: truncated file
        fh.truncate(100)
    again = rc.compile(rc.cells.gru(3, 5, 2), backend="native", cache=str(tmp_path))
    assert again.loss_and_grad(params, inputs, targets)[0] == pytest.approx(ref, rel=1e-12)
    assert cold.loss_and_grad(params, inputs, targets)[0] == pytest.approx(ref, rel=1e-12)


def test_unwritable_cache_directory_still_compiles(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    model = rc.compile(rc.cells.elman(2, 3, 1), backend="native", cache=str(blocker / "sub"))
    params, inputs, targets = random_data(rc.cells.elman(2, 3, 1))
    assert np.isfinite(model.loss_and_grad(params, inputs, targets)[0])


def _compare_update(name, update, n=3):
    """A cell h[t] = tanh(update(a, x)), a = W x + U h[t-1] (x ∈ R³, h ∈ R^n), a linear read-out
    and a squared loss, compared with the oracle: a test of how the LLVM printer writes ``update``."""
    cell = rc.Cell(name)
    x, h = cell.input("x", 3), cell.state("h", n)
    a = cell.param("W", (n, 3)) @ x + cell.param("U", (n, n)) @ h
    cell.update(h, sp.tanh(update(a, x)))
    y = cell.output("y", cell.param("V", (2, n)) @ h.new)
    cell.loss((y - cell.target("t", 2)) ** 2 / 2)
    compare(cell)


def test_a_product_of_reciprocals_matches_oracle():
    # 1/((2 + a²)(3 + a²)) is, to sympy, a product with nothing but reciprocal factors: the
    # LLVM printer's product with an empty numerator (1 / the product of the denominators)
    _compare_update("reciprocals", lambda a, x: a + 1 / ((2 + a ** 2) * (3 + a ** 2)))


def test_piecewise_on_equalities_matches_oracle():
    # Piecewise conditions with == and != (on floor(2x), an integer: exact): the LLVM printer's
    # comparison table, every relation of which a cell may use (floor(2x) is
    # 0 for 31 % of the entries of the test data and 1 for 20 %: both branches of both taken)
    _compare_update("eq_ne", lambda a, x: sp.Piecewise((a, sp.Ne(sp.floor(2 * x), 0)), (a / 2, True))
                    + sp.Piecewise((a / 3, sp.Eq(sp.floor(2 * x), 1)), (0, True)))


@pytest.mark.parametrize("logic", ["Xor", "Implies", "Equivalent", "ITE"])
def test_conditions_of_any_boolean_function_match_oracle(logic):
    # found by a probe (2026-12-07): Xor, Implies, Equivalent and ITE ran on the oracle, and the
    # native and PTX printers refused them ("cannot lower the condition (_3 > 0) ^ ..."); the
    # printer now writes them in And/Or/Not (sympy's to_nnf); both outcomes are taken on the data
    make = {"Xor": lambda p, q: sp.Xor(p, q), "Implies": lambda p, q: sp.Implies(p, q),
            "Equivalent": lambda p, q: sp.Equivalent(p, q), "ITE": lambda p, q: sp.ITE(p, q, sp.Not(q))}[logic]
    _compare_update(f"cond_{logic}", lambda a, x: sp.Piecewise((a, make(x > 0, a > 0.1)), (a / 2, True)))


def test_named_constants_match_oracle():
    # found by the same probe: GoldenRatio, EulerGamma, Catalan (sympy's NumberSymbols) ran on the
    # oracle and were "cannot lower GoldenRatio" on native and PTX; any real constant now prints
    # as its value
    _compare_update("constants", lambda a, x: sp.GoldenRatio * a + sp.EulerGamma * a ** 2 / 4 + sp.Catalan * x)


def test_integer_and_half_powers_match_oracle():
    # the LLVM printer writes x**n by repeated squaring (n with several set bits: 3, 5, 6, 7),
    # x**-n as 1/x**n and x**(±1/2) through sqrt; their derivatives (5a⁴, −3(2 + a²)⁻⁴·2a, …) too
    _compare_update("powers", lambda a, x: a ** 3 / 3 + a ** 5 / 10 + a ** 6 / 20 + a ** 7 / 40 + (2 + a ** 2) ** -3
                    + (1 + a ** 2) ** sp.Rational(-1, 2) + sp.sqrt(3 + a ** 2) / 4, n=4)
