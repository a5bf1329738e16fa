"""Property-based: random cells from the DSL, gradients vs finite differences and the unrolled graph."""
import numpy as np
import pytest
import sympy as sp
from hypothesis import given, strategies as st

import rnncomp as rc
from rnncomp.backends.numpy import unrolled_loss_and_grad

from gradcheck import assert_grads_close, check_grads, numpy_model, random_data

UNARY = [sp.tanh, rc.sigmoid, sp.sin, rc.softsign, rc.softplus, sp.atan, lambda z: sp.exp(-z ** 2),
         lambda z: z ** 2 / 4, lambda z: sp.sqrt(1 + z ** 2), rc.gelu]
BINARY = [lambda a, b: a + b, lambda a, b: a * b, lambda a, b: a - b / 2]


@st.composite
def expressions(draw, leaves, depth=3):
    if depth == 0 or draw(st.booleans()):
        return draw(st.sampled_from(leaves))
    if draw(st.booleans()):
        return draw(st.sampled_from(UNARY))(draw(expressions(leaves, depth - 1)))
    return draw(st.sampled_from(BINARY))(draw(expressions(leaves, depth - 1)),
                                         draw(expressions(leaves, depth - 1)))


@st.composite
def random_cells(draw):
    cell = rc.Cell("random")
    n_states = draw(st.integers(1, 2))
    xs = [cell.input(f"x{i}", draw(st.integers(1, 3))) for i in range(draw(st.integers(1, 2)))]
    hs = [cell.state(f"h{i}", draw(st.integers(1, 4))) for i in range(n_states)]
    scale = cell.param("a", 1, init=("constant", 0.7))
    for i, h in enumerate(hs):
        n = cell.decls[h.name].shape
        srcs = xs + hs + ([hs[0].new] if i > 0 else [])  # a later state may read an earlier new one
        terms = [cell.param(f"M{i}_{j}", (n, cell.decls[s.name.replace('.new', '')].shape)) @ s
                 for j, s in enumerate(draw(st.lists(st.sampled_from(srcs), min_size=1, max_size=3, unique=True)))]
        leaves = terms + [h, cell.param(f"b{i}", n), scale]
        cell.update(h, sp.tanh(draw(expressions(leaves))))
    last = hs[-1].new
    y = cell.output("y", cell.param("V", (2, cell.decls[hs[-1].name].shape)) @ last)
    t = cell.target("t", 2)
    cell.loss(draw(st.sampled_from([(y - t) ** 2 / 2, rc.softmax_xent(y, t), sp.log(1 + (y - t) ** 2)])))
    return cell


@given(random_cells(), st.integers(1, 4), st.integers(1, 3), st.integers(0, 2 ** 16))
def test_random_cell_gradients(cell, T, B, seed):
    params, inputs, targets = random_data(cell, T=T, B=B, seed=seed)
    model = numpy_model(cell)
    check_grads(model, params, inputs, targets, seed=seed)
    l1, g1, _ = model.loss_and_grad(params, inputs, targets)
    l2, g2, _ = unrolled_loss_and_grad(cell, params, inputs, targets)
    assert l1 == pytest.approx(l2, rel=1e-12)
    assert_grads_close(g1, g2, rtol=1e-11, atol=1e-13)
