"""The cell zoo, each written in the DSL with nothing special-cased in the compiler.

Every factory takes ``(n_in, n_hidden, n_out=None, loss="mse")``: ``n_out``
defaults to ``n_hidden`` (what a layer of a stack reads on), and ``loss="xent"``
uses softmax cross-entropy against a one-hot (or probability) target.

    >>> sorted(ZOO)
    ['antisymmetric', 'elman', 'gru', 'indrnn', 'jordan', 'lstm', 'mgu', 'softsign_lstm']
"""
from __future__ import annotations

import sympy as sp

from .cell import Cell
from .checks import a_function
from .dsl import softmax_xent
from .functions import relu, sigmoid, softsign


def _head(cell, h_new, n_hidden, n_out, loss):
    """A linear read-out y = V h + c and the per-step loss."""
    n_out = n_hidden if n_out is None else n_out
    y = cell.output("y", cell.param("V", (n_out, n_hidden)) @ h_new + cell.param("by", n_out))
    t = cell.target("target", n_out)
    if loss == "mse":
        cell.loss((y - t) ** 2 / 2)
    elif loss == "xent":
        cell.loss(softmax_xent(y, t))
    else:
        raise ValueError(f"loss must be 'mse' or 'xent', got {loss!r}")
    return y


def _affine(cell, gate, x, h, n_in, n_hidden):
    W = cell.param(f"W{gate}", (n_hidden, n_in))
    U = cell.param(f"U{gate}", (n_hidden, n_hidden))
    b = cell.param(f"b{gate}", n_hidden)
    return W @ x + U @ h + b


def elman(n_in, n_hidden, n_out=None, loss="mse", activation=sp.tanh) -> Cell:
    """Elman (1990): h[t] = tanh(W x[t] + U h[t-1] + b)."""
    a_function("rc.cells.elman", "activation", activation, "of a sympy expression (sp.tanh, rc.relu)")
    cell = Cell("elman")
    x, h = cell.input("x", n_in), cell.state("h", n_hidden)
    cell.update(h, activation(_affine(cell, "", x, h, n_in, n_hidden)))
    _head(cell, h.new, n_hidden, n_out, loss)
    return cell


def jordan(n_in, n_hidden, n_out=None, loss="mse") -> Cell:
    """Jordan (1986): the hidden layer reads the previous *output*, fed back as a state."""
    n_out = n_hidden if n_out is None else n_out
    cell = Cell("jordan")
    x, s = cell.input("x", n_in), cell.state("s", n_out)
    W, U, b = cell.param("W", (n_hidden, n_in)), cell.param("U", (n_hidden, n_out)), cell.param("b", n_hidden)
    h = cell.define("h", sp.tanh(W @ x + U @ s + b))
    y = _head(cell, h, n_hidden, n_out, loss)
    cell.update(s, y)
    return cell


def gru(n_in, n_hidden, n_out=None, loss="mse") -> Cell:
    """GRU (Cho et al. 2014)."""
    cell = Cell("gru")
    x, h = cell.input("x", n_in), cell.state("h", n_hidden)
    z = cell.define("z", sigmoid(_affine(cell, "z", x, h, n_in, n_hidden)))
    r = cell.define("r", sigmoid(_affine(cell, "r", x, h, n_in, n_hidden)))
    Wn, Un, bn = cell.param("Wn", (n_hidden, n_in)), cell.param("Un", (n_hidden, n_hidden)), cell.param("bn", n_hidden)
    n = cell.define("n", sp.tanh(Wn @ x + Un @ (r * h) + bn))
    cell.update(h, (1 - z) * n + z * h)
    _head(cell, h.new, n_hidden, n_out, loss)
    return cell


def lstm(n_in, n_hidden, n_out=None, loss="mse", gate=sigmoid, squash=sp.tanh, name="lstm") -> Cell:
    """LSTM (Hochreiter & Schmidhuber 1997, with forget gate, Gers et al. 2000)."""
    for option, f in (("gate", gate), ("squash", squash)):  # "'str' object is not callable" before
        a_function("rc.cells.lstm", option, f, "of a sympy expression (rc.sigmoid, sp.tanh)")
    cell = Cell(name)
    x = cell.input("x", n_in)
    h, c = cell.state("h", n_hidden), cell.state("c", n_hidden)
    i = gate(_affine(cell, "i", x, h, n_in, n_hidden))
    W, U = cell.param("Wf", (n_hidden, n_in)), cell.param("Uf", (n_hidden, n_hidden))
    f = gate(W @ x + U @ h + cell.param("bf", n_hidden, init="ones"))
    g = squash(_affine(cell, "g", x, h, n_in, n_hidden))
    o = gate(_affine(cell, "o", x, h, n_in, n_hidden))
    cell.update(c, f * c + i * g)
    cell.update(h, o * squash(c.new))
    _head(cell, h.new, n_hidden, n_out, loss)
    return cell


def softsign_lstm(n_in, n_hidden, n_out=None, loss="mse") -> Cell:
    """An LSTM whose gates are softsign-based, (1 + softsign)/2: built into no framework."""
    return lstm(n_in, n_hidden, n_out, loss, gate=lambda z: (1 + softsign(z)) / 2,
                squash=softsign, name="softsign_lstm")


def mgu(n_in, n_hidden, n_out=None, loss="mse") -> Cell:
    """Minimal gated unit (Zhou et al. 2016): one forget gate."""
    cell = Cell("mgu")
    x, h = cell.input("x", n_in), cell.state("h", n_hidden)
    f = cell.define("f", sigmoid(_affine(cell, "f", x, h, n_in, n_hidden)))
    Wn, Un, bn = cell.param("Wn", (n_hidden, n_in)), cell.param("Un", (n_hidden, n_hidden)), cell.param("bn", n_hidden)
    n = sp.tanh(Wn @ x + Un @ (f * h) + bn)
    cell.update(h, (1 - f) * h + f * n)
    _head(cell, h.new, n_hidden, n_out, loss)
    return cell


def indrnn(n_in, n_hidden, n_out=None, loss="mse") -> Cell:
    """IndRNN (Li et al. 2018): h[t] = relu(W x[t] + u ⊙ h[t-1] + b), an element-wise recurrence."""
    cell = Cell("indrnn")
    x, h = cell.input("x", n_in), cell.state("h", n_hidden)
    W, b = cell.param("W", (n_hidden, n_in)), cell.param("b", n_hidden)
    u = cell.param("u", n_hidden, init=("uniform", 1.0))
    cell.update(h, relu(W @ x + u * h + b))
    _head(cell, h.new, n_hidden, n_out, loss)
    return cell


def antisymmetric(n_in, n_hidden, n_out=None, loss="mse", eps=0.1, gamma=0.01) -> Cell:
    """AntisymmetricRNN (Chang et al. 2019): h += ε tanh((W − Wᵀ − γI) h + V x + b)."""
    cell = Cell("antisymmetric")
    x, h = cell.input("x", n_in), cell.state("h", n_hidden)
    W, Vx, b = cell.param("W", (n_hidden, n_hidden)), cell.param("Vx", (n_hidden, n_in)), cell.param("b", n_hidden)
    cell.update(h, h + eps * sp.tanh((W - W.T) @ h - gamma * h + Vx @ x + b))
    _head(cell, h.new, n_hidden, n_out, loss)
    return cell


ZOO = {f.__name__: f for f in (elman, jordan, gru, lstm, softsign_lstm, mgu, indrnn, antisymmetric)}


def get(name: str):
    try:
        return ZOO[name]
    except KeyError:
        raise KeyError(f"no cell {name!r} in rnncomp.cells; known: {', '.join(sorted(ZOO))} (the matrix-state "
                       "cells are in rnncomp.zoo_matrix.MATRIX_ZOO)") from None
