"""Matrix states beside derived weights, and products read through other products (#19).

Cells a researcher writes when the two features meet: a memory S[t] = λS[t-1] + v kᵀ whose
key is read through a derived weight (``k = tanh(exp(A) @ x)``) and whose value goes through
a plain matrix (``W @ k``).  Gradients against central finite differences in float64
(tests/gradcheck.py: rtol 1e-6 / atol 1e-8, its docstring says why), the native backend
against the NumPy oracle.
"""
import numpy as np
import pytest
import sympy as sp

import rnncomp as rc
from gradcheck import assert_matches_oracle, check_grads, random_data

T, B = 4, 3


def memory_with_derived_keys():
    """k = tanh((P*Q) @ x) and v = (W - Wᵀ) @ h + E @ k, E = exp(A)/4 a named derived weight."""
    cell = rc.Cell("derived_keys")
    x, h = cell.input("x", 3), cell.state("h", 3)
    S = cell.state("S", (3, 3))
    W, A = cell.param("W", (3, 3)), cell.param("A", (3, 3))
    P, Q = cell.param("P", (3, 3)), cell.param("Q", (3, 3))
    k = sp.tanh((P * Q) @ x)
    v = (W - W.T) @ h + cell.weight("E", sp.exp(A) / 4) @ k
    cell.update(S, 0.9 * S + rc.outer(v, k))
    cell.update(h, sp.tanh((W @ W.T / 3) @ h + W @ (S.new @ k)))
    y = cell.output("y", cell.param("V", (2, 3)) @ h.new)
    cell.loss((y - cell.target("t", 2)) ** 2 / 2)
    return cell


@pytest.mark.parametrize("form", ["W @ sp.tanh(sp.exp(A) @ x)", "W @ (rc.weight(sp.exp(A)) @ x)",
                                  "rc.weight(sp.exp(W)) @ sp.tanh((A * A) @ x) + W @ h"])
def test_a_matrix_times_a_vector_read_through_a_derived_weight(form):
    """A vector that contains a derived weight's product (exp(A) @ x) is a vector: the matrix
    on its left multiplies it.  It was taken for a matrix (it reads the matrix atoms of
    exp(A)), so ``W @ tanh(exp(A) @ x)`` was a CellError "WMatVec ... cannot be part of a
    weight expression" (found by a probe, s21)."""
    cell = rc.Cell("read_through")
    x, h = cell.input("x", 3), cell.state("h", 3)
    W, A = cell.param("W", (3, 3)), cell.param("A", (3, 3), init=("normal", 0.3))
    cell.update(h, sp.tanh(eval(form, {"sp": sp, "rc": rc, "W": W, "A": A, "x": x, "h": h}) / 2))
    cell.loss(rc.vsum(cell.output("y", h.new) ** 2))
    params, xs, ts = random_data(cell, T, B)
    check_grads(rc.compile(cell), params, xs, ts)


def test_memory_with_derived_keys():
    cell = memory_with_derived_keys()
    params, xs, ts = random_data(cell, T, B)
    check_grads(rc.compile(cell), params, xs, ts)
    pytest.importorskip("llvmlite")
    assert_matches_oracle(cell, "native", T, B)
