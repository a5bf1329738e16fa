"""Differential fuzzing of derived weights and matrix-valued states (issue #19).

Random cells from ``fuzzgen.array_cells``: a vector state h whose update reads derived weights
(a constant 0/1 mask ``W * K``, a learned mask, ``exp(W)``, weight normalisation by rows or
columns, ``W − Wᵀ``, ``W Wᵀ``, products of two or three parameters; some named with
``cell.weight``, the others named by the cell), and/or a matrix state C of shape (p, q) with
p, q ∈ {1, 2, 3, 4, 5, 7} updated by a gated outer-product write (a gate per row or one
scalar), the delta rule ``C − β (C v/q − u) vᵀ`` or ``tanh(C/2 + u vᵀ)``, read as ``C @ v``,
``Cᵀ @ u``, ``rowsum(C)/q`` or ``colsum(C ⊙ C)/p`` (from C[t-1] or C[t], in h's update and/or
in an output); C is updated before or after h.  Names are drawn from ``fuzzgen.NAME_POOL``.

Each example runs ``test_fuzz.check_cell`` with the native model "on" only (one compile):
check 0 (the cell rebuilt under other names, constants and derived weights included: 1e-11),
check 1 (rolled vs unrolled BPTT: 1e-11), check 2 (oracle vs central finite differences in
float64: ``gradcheck`` rtol 1e-6 / atol 1e-8, its docstring says why), check 3 (native
float64 with every optimisation on, 2 threads, from the renamed cell, vs oracle: 1e-10
relative; general vs thin call path bit for bit; a memory schedule vs every step stored).
The tolerances and their reasons are those of ``tests/test_fuzz.py``.  ``test_fuzz_arrays_long``
(``pytest -m fuzz``, ``HYPOTHESIS_PROFILE=long``) adds checks 4–5 (all off, float32) and, for
cells without a matrix state, check 6 (PTX on its host runner).
"""
from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
from hypothesis import given, settings

import rnncomp as rc
from rnncomp.backends.numpy import unrolled_loss_and_grad, unrolled_vjp

from fuzzgen import SIZES, array_cells, calls
from gradcheck import random_data
from test_fuzz import check_cell

ARRAYS_CI_EXAMPLES = 8  # ~2–3 s each on this 2-core machine: one native compile dominates


@settings(max_examples=ARRAYS_CI_EXAMPLES)
@given(array_cells(), calls(max_T=5, max_B=3))
def test_fuzz_arrays_ci(cell, call):
    T, B, seed, mask, h0, _ = call
    check_cell(cell, T, B, seed, mask, h0, native=("on",))


# ----------------------------------------------------------------------------- regressions
def _masked_cell():
    """Minimised from test_fuzz_arrays_ci: a constant mask and a cell-named derived weight."""
    cell = rc.Cell("masked")
    x, h = cell.input("x", 2), cell.state("h", 3, init="learn")
    W, K = cell.param("W", (3, 3)), cell.const("K", np.tril(np.ones((3, 3))))
    cell.update(h, sp.tanh((W * K) @ h + sp.exp(cell.param("U", (3, 2))) @ x / 2))
    y = cell.output("y", cell.param("V", (2, 3)) @ h.new)
    cell.loss((y - cell.target("t", 2)) ** 2 / 2)
    return cell


def test_unrolled_references_read_derived_weights():
    """Found by this fuzzer: the unrolled references (``unrolled_loss_and_grad``: check 1;
    ``unrolled_vjp``) raised KeyError on the derived weight's name; they now run the plain cell
    over the expanded parameters and chain the gradients back, as ``rc.compile`` does.  Rolled
    (the oracle) vs unrolled: 1e-11 (the same float64 arithmetic in another order)."""
    cell = _masked_cell()
    params, inputs, targets = random_data(cell, T=4, B=2)
    oracle = rc.compile(cell)
    loss, grads, final = oracle.loss_and_grad(params, inputs, targets)
    loss_u, grads_u, final_u = unrolled_loss_and_grad(cell, params, inputs, targets)
    assert abs(loss_u - loss) <= 1e-11 * abs(loss)
    assert sorted(grads_u) == sorted(params) == ["U", "V", "W", "h_0"]
    for k in grads:
        np.testing.assert_allclose(grads_u[k], grads[k], rtol=1e-11, atol=1e-14, err_msg=k)
    np.testing.assert_allclose(final_u["h"], final["h"], rtol=1e-11, atol=1e-14)
    d_out = {"y": np.random.default_rng(5).normal(size=(4, 2, 2))}
    ref = oracle.vjp(params, inputs, d_outputs=d_out)
    _, g_u, d_in, _ = unrolled_vjp(cell, params, inputs, d_outputs=d_out)
    for k in ref.params:
        np.testing.assert_allclose(g_u[k], ref.params[k], rtol=1e-11, atol=1e-14, err_msg=k)
    np.testing.assert_allclose(d_in["x"], ref.inputs["x"], rtol=1e-11, atol=1e-14)


@pytest.mark.fuzz
@given(array_cells(sizes=SIZES), calls(max_T=12, max_B=6))
def test_fuzz_arrays_long(cell, call):
    """Every native model of ``check_cell`` (all on, all off, float32), and the PTX backend on
    its host runner."""
    T, B, seed, mask, h0, opts = call
    check_cell(cell, T, B, seed, mask, h0, opts, native=("on", "off", "f32", "ptx"))
