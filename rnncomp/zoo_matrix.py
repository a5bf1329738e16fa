"""Recurrences with matrix-valued states, and the diagonal linear recurrence, in the DSL.

Each factory takes ``(n_in, n_hidden, n_out, loss="mse")`` like :mod:`rnncomp.cells`; every
backend runs them.  They are kept out of ``rc.cells.ZOO``, whose sweeps include sizes and
checks (PTX products without register spills at 64 → 256 in float64) that these cells' wide
stacked input products do not meet; tests/test_matrix_states.py checks them on each backend.

    >>> sorted(MATRIX_ZOO)
    ['delta_rule', 'diag_linear', 'fast_weights', 'mlstm']
"""
from __future__ import annotations

import sympy as sp

from .cell import Cell
from .cells import _head
from .dsl import softmax_xent, vsum
from .functions import sigmoid, softplus
from .matrix_dsl import outer


def mlstm(n_in, n_hidden, n_out, loss="mse", dk=None) -> Cell:
    """mLSTM (xLSTM, Beck et al. 2024), one head: a (n_hidden × dk) matrix memory with
    exponential input gate, sigmoid forget gate, normaliser state n and stabiliser state m:

        m[t] = max(log σ(f̃) + m[t-1], ĩ),   i = exp(ĩ − m[t]),   f = exp(log σ(f̃) + m[t-1] − m[t])
        C[t] = f C[t-1] + i v kᵀ,   n[t] = f n[t-1] + i k,   h = o ⊙ C[t] q / max(|n[t]ᵀ q|, exp(−m[t]))
    """
    dk = dk or n_hidden
    cell = Cell("mlstm")
    x = cell.input("x", n_in)
    C, n, m = cell.state("C", (n_hidden, dk)), cell.state("n", dk), cell.state("m", 1)

    def lin(name, rows, init=None):
        return cell.param(f"W{name}", (rows, n_in)) @ x + cell.param(f"b{name}", rows, init=init)

    q, k, v = lin("q", dk), lin("k", dk) / sp.sqrt(dk), lin("v", n_hidden)
    i_raw, f_raw = lin("i", 1), lin("f", 1, init=("constant", 3.0))
    o = sigmoid(lin("o", n_hidden))
    log_f = -softplus(-f_raw)
    cell.update(m, sp.Max(log_f + m, i_raw))
    i = cell.define("i", sp.exp(i_raw - m.new))
    f = cell.define("f", sp.exp(log_f + m - m.new))
    cell.update(C, f * C + i * outer(v, k))
    cell.update(n, f * n + i * k)
    h = cell.define("h", o * (C.new @ q) / sp.Max(sp.Abs(vsum(n.new * q)), sp.exp(-m.new)))
    _head(cell, h, n_hidden, n_out, loss)
    return cell


def fast_weights(n_in, n_hidden, n_out, loss="mse", decay=0.9, rate=0.5) -> Cell:
    """Fast weights (Ba et al. 2016), one inner step: A[t] = λ A[t-1] + η h[t-1] h[t-1]ᵀ,
    h[t] = tanh(W h[t-1] + U x[t] + A[t] h̃), h̃ = tanh(W h[t-1] + U x[t])."""
    cell = Cell("fast_weights")
    x, h = cell.input("x", n_in), cell.state("h", n_hidden)
    A = cell.state("A", (n_hidden, n_hidden))
    z = cell.define("z", cell.param("W", (n_hidden, n_hidden)) @ h + cell.param("U", (n_hidden, n_in)) @ x
                    + cell.param("b", n_hidden))
    cell.update(A, decay * A + rate * outer(h, h))
    cell.update(h, sp.tanh(z + A.new @ sp.tanh(z)))
    _head(cell, h.new, n_hidden, n_out, loss)
    return cell


def delta_rule(n_in, n_hidden, n_out, loss="mse", dk=None) -> Cell:
    """The delta rule (DeltaNet; Schlag et al. 2021, Yang et al. 2024): with a unit key k and
    a write strength β = σ(w·x), C[t] = C[t-1] − β (C[t-1] k − v) kᵀ; read-out C[t] q."""
    dk = dk or n_hidden
    cell = Cell("delta_rule")
    x = cell.input("x", n_in)
    C = cell.state("C", (n_hidden, dk))
    kr = cell.param("Wk", (dk, n_in)) @ x
    k = cell.define("k", kr / sp.sqrt(vsum(kr ** 2) + 1e-6))
    v, q = cell.param("Wv", (n_hidden, n_in)) @ x, cell.param("Wq", (dk, n_in)) @ x
    beta = sigmoid(cell.param("Wb", (1, n_in)) @ x + cell.param("bb", 1))
    cell.update(C, C - beta * outer(C @ k - v, k))
    _head(cell, C.new @ q, n_hidden, n_out, loss)
    return cell


def diag_linear(n_in, n_hidden, n_out, loss="mse") -> Cell:
    """A diagonal linear recurrence (LRU, Orvieto et al. 2023, real-valued; the element-wise
    a ⊙ h + B x of Mamba-style models): a = exp(−exp(ν)) ∈ (0, 1),
    h[t] = a ⊙ h[t-1] + sqrt(1 − a²) ⊙ B x[t], y = C h + D x.

    1 − a² is written −expm1(−2·exp(ν)): as 1 − a², it cancels where a is near 1 (a rounds to 1
    in float32 once exp(ν) < 6e-8, and the ν gradient of the square root is then inf)."""
    from sympy.codegen.cfunctions import expm1
    cell = Cell("diag_linear")
    x, h = cell.input("x", n_in), cell.state("h", n_hidden)
    rate = sp.exp(cell.param("nu", n_hidden, init=("uniform", 1.0)))
    a = sp.exp(-rate)
    cell.update(h, a * h + sp.sqrt(-expm1(-2 * rate)) * (cell.param("B", (n_hidden, n_in)) @ x))
    y = cell.output("y", cell.param("C", (n_out, n_hidden)) @ h.new + cell.param("D", (n_out, n_in)) @ x)
    t = cell.target("target", n_out)
    if loss not in ("mse", "xent"):
        raise ValueError(f"loss must be 'mse' or 'xent', got {loss!r}")
    cell.loss((y - t) ** 2 / 2 if loss == "mse" else softmax_xent(y, t))
    return cell


MATRIX_ZOO = {f.__name__: f for f in (mlstm, fast_weights, delta_rule, diag_linear)}
