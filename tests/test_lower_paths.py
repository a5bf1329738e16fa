"""Lowering paths no zoo cell takes, each against a forward written by hand in NumPy.

Found by mutation (docs/reliability.md, ``lower`` #47, #53, #56, and in round three #12 of
``mshape``, in round four #1 of ``_copy``): a constant read directly in the step (not only inside
a derived weight), a per-step scalar assigned to a vector, a reduction of an outer product, two
parameter vectors read by structural ops (each its own per-sample copy), and the size of every
leaf (``ir.verify`` now refuses a node without one).  References: the loss of a
NumPy loop written here (float64, equal within 1e-12 relative: the same operations in another
order) and, for the gradients, central differences of that hand-written loss (step 1e-6:
truncation ~1e-12, rounding ~1e-10 relative, checked at 1e-7), so nothing of rnncomp's
differentiation is its own reference.  The native backend is compared with the NumPy one.
"""
import numpy as np
import pytest
import sympy as sp

import rnncomp as rc
from rnncomp.errors import IRError, ShapeError
from rnncomp.ir import Node, Program, verify
from rnncomp.lower import lower

T, B = 5, 3
K = np.array([[0.5, -0.2, 0.0], [0.1, 0.3, -0.4], [0.0, 0.2, 0.6]])
C = np.array([0.2, -0.5, 0.9])


def _cell(name, update, **params):
    """x ∈ R², h ∈ R³ with ``update(cell, x, h, params)``, y = h[t], ℓ = ‖y − t‖²/2."""
    cell = rc.Cell(name)
    x, h = cell.input("x", 2), cell.state("h", 3)
    cell.update(h, update(cell, x, h, {k: cell.param(k, shape) for k, shape in params.items()}))
    y, t = cell.output("y", h.new), cell.target("t", 3)
    cell.loss((y - t) ** 2 / 2)
    return cell


def _loop(step):
    """The cells' loss written by hand: ``step(p, x_t, h)`` is h[t]; the mean over T and B."""
    def loss_of(p, x, tg):
        h, loss = np.zeros((x.shape[1], 3)), 0.0
        for s in range(x.shape[0]):
            h = step(p, x[s], h)
            loss += ((h - tg[s]) ** 2 / 2).sum()
        return loss / (x.shape[0] * x.shape[1])
    return loss_of


def const_cell():
    """h[t] = tanh(W x + K h[t-1] + c ⊙ h[t-1]): K and c are constants read by the update itself."""
    return _cell("const_read", lambda cell, x, h, p: sp.tanh(p["W"] @ x + cell.const("K", K) @ h
                                                             + cell.const("c", C) * h), W=(3, 2))


const_by_hand = _loop(lambda p, x, h: np.tanh(x @ p["W"].T + h @ K.T + C * h))


def scalar_cell():
    """h[t] = Σ_j tanh(W x + A h[t-1])_j in every unit: a per-step scalar (a sum node) assigned to
    a vector state, which lowering broadcasts through a node of its own."""
    return _cell("scalar_to_vector", lambda cell, x, h, p: rc.vsum(sp.tanh(p["W"] @ x + p["A"] @ h)),
                 W=(4, 2), A=(4, 3))


scalar_by_hand = _loop(lambda p, x, h: np.tanh(x @ p["W"].T + h @ p["A"].T).sum(1, keepdims=True) * np.ones(3))


def outer_cell():
    """h[t] = tanh(W x + rowsum((A h[t-1]) xᵀ)): a reduction read straight off an outer product
    (its matrix shape is the outer node's own, not an operand's)."""
    return _cell("outer_reduced", lambda cell, x, h, p: sp.tanh(p["W"] @ x + rc.rowsum(rc.outer(p["A"] @ h, x))),
                 W=(3, 2), A=(3, 3))


outer_by_hand = _loop(lambda p, x, h: np.tanh(x @ p["W"].T + (h @ p["A"].T) * x.sum(1, keepdims=True)))


def shared_vectors_cell():
    """h[t] = tanh(W x + concat(b1, b2) ⊙ h[t-1] + Σ b1): two parameter vectors read by structural
    ops, each through a per-sample copy of its own (b1's made once, read twice)."""
    return _cell("shared_vectors", lambda cell, x, h, p: sp.tanh(p["W"] @ x + rc.concat(p["b1"], p["b2"]) * h
                                                                 + rc.vsum(p["b1"])),
                 W=(3, 2), b1=2, b2=1)


shared_vectors_by_hand = _loop(lambda p, x, h: np.tanh(x @ p["W"].T + np.concatenate([p["b1"], p["b2"]]) * h
                                                       + p["b1"].sum()))


def transposed_cell():
    """h[t] = tanh(Vᵀ x + U h[t-1]) with V ∈ R^{2×3}: a transposed product of a non-square
    parameter has the size of V's columns (a square one cannot tell rows from columns)."""
    return _cell("transposed", lambda cell, x, h, p: sp.tanh(p["V"].T @ x + p["U"] @ h), V=(2, 3), U=(3, 3))


transposed_by_hand = _loop(lambda p, x, h: np.tanh(x @ p["V"] + h @ p["U"].T))


def _data(cell, seed=0):
    rng = np.random.default_rng(seed)
    params = {k: rng.normal(0, 0.5, v.shape) for k, v in cell.init_params(seed).items()}
    return params, {"x": rng.normal(0, 0.7, (T, B, 2))}, {"t": rng.normal(0, 0.5, (T, B, 3))}


def _central(by_hand, params, x, tg, eps=1e-6):
    g = {}
    for k, v in params.items():
        g[k] = np.zeros_like(v)
        for i in np.ndindex(v.shape):
            up, down = ({**params, k: v.copy()} for _ in range(2))
            up[k][i] += eps
            down[k][i] -= eps
            g[k][i] = (by_hand(up, x, tg) - by_hand(down, x, tg)) / (2 * eps)
    return g


@pytest.mark.parametrize("make, by_hand", [(const_cell, const_by_hand), (scalar_cell, scalar_by_hand),
                                           (outer_cell, outer_by_hand),
                                           (shared_vectors_cell, shared_vectors_by_hand),
                                           (transposed_cell, transposed_by_hand)])
@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_against_the_hand_written_loop(make, by_hand, backend):
    cell = make()
    params, x, tg = _data(cell)
    loss, grads, _ = rc.compile(cell, backend=backend).loss_and_grad(params, x, tg["t"])
    assert loss == pytest.approx(by_hand(params, x["x"], tg["t"]), rel=1e-12)
    ref = _central(by_hand, params, x["x"], tg["t"])
    for k in params:
        scale = np.abs(ref[k]).max()
        assert np.abs(grads[k] - ref[k]).max() <= 1e-7 * scale, k


def test_the_scalar_is_broadcast_by_a_node_of_its_own():
    nodes = scalar_cell().step.prog.nodes
    (arg,) = nodes[("h", "t")].args
    assert nodes[("h", "t")].size == 3 and arg[0].startswith("h·b") and arg[1] == "t"
    assert nodes[arg].op == "sum" and nodes[arg].size == 1


def test_a_constant_read_by_the_step_is_a_leaf_of_its_program():
    st = const_cell().step
    assert st.derived == {"K": (3, 3), "c": 3} and not {"K", "c"} & set(st.params)
    assert st.prog.nodes[("K", None)].size == (3, 3) and st.prog.nodes[("c", None)].size == 3


def test_every_leaf_has_a_size():
    """A leaf without a size (or with a zero one) is a compiler bug: ir.verify names it."""
    for bad in (None, 0, (3, 0), "3"):
        prog = Program({("W", None): Node("param", (), bad)}, name="p")
        with pytest.raises(IRError, match=r"p: W .*param.* size"):
            verify(prog)


def test_a_derived_weights_leaf_has_its_shape():
    cell = rc.Cell("derived_leaf")
    x, h = cell.input("x", 2), cell.state("h", 3)
    E = cell.weight("E", sp.exp(cell.param("W", (3, 3))))
    cell.update(h, sp.tanh(E @ h + cell.param("U", (3, 2)) @ x))
    cell.loss(cell.output("y", h.new) ** 2)
    st = cell.step
    assert st.derived == {"E": (3, 3)} and st.prog.nodes[("E", None)].size == (3, 3)


def test_lowering_refuses_operands_of_different_sizes_itself():
    """``cell.update`` refuses ``h + a·x`` for h ∈ R³, x ∈ R² (test_errors.py); lowering checks
    again, so a cell changed behind the DSL's back (here: ``cell.updates`` written directly) gets
    the same kind of named error, listing every operand that is not a scalar, never a program
    that reads past the end of a vector."""
    cell = rc.Cell("bypass")
    x, a, h = cell.input("x", 2), cell.input("a", 1), cell.state("h", 3)
    cell.updates["h"] = sp.tanh(h + a * x) + 1
    with pytest.raises(ShapeError) as err:
        lower(cell)
    assert str(err.value) == ("cell 'bypass', update of state 'h': element-wise operands of different sizes "
                              "(x[t]: 2, h[t-1]: 3) in a*x + h")


@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_a_declaration_equal_to_a_lowered_sub_expression_gets_its_own_value(backend):
    """An output that repeats a product the update already lowered (``W x``), and one equal to
    the update's whole gate: each declaration is a value of its own, equal to the hand-written
    one (lowering reuses a lowered sub-expression only where no declaration is being defined)."""
    cell = rc.Cell("repeated")
    x, h = cell.input("x", 2), cell.state("h", 3)
    W, U = cell.param("W", (3, 2)), cell.param("U", (3, 3))
    cell.update(h, sp.tanh(W @ x + U @ h))
    cell.output("wx", W @ x)
    cell.output("g", sp.tanh(W @ x + U @ h))
    params, xs, _ = _data(cell)
    outs, final = rc.compile(cell, backend=backend).forward(params, xs)
    hh = np.zeros((B, 3))
    for s in range(T):
        np.testing.assert_allclose(outs["wx"][s], xs["x"][s] @ params["W"].T, rtol=1e-12)
        hh = np.tanh(xs["x"][s] @ params["W"].T + hh @ params["U"].T)
        np.testing.assert_allclose(outs["g"][s], hh, rtol=1e-12)
    np.testing.assert_allclose(final["h"], hh, rtol=1e-12)


def test_a_repeated_product_or_function_is_lowered_once():
    """``W x`` read four times (in one update and by an output), ``U h`` three times and
    ``tanh(W x + U h)`` twice: one node each, so the compiled step runs each GEMM and each
    activation once."""
    cell = rc.Cell("shared_products")
    x, h = cell.input("x", 2), cell.state("h", 3)
    W, U = cell.param("W", (3, 2)), cell.param("U", (3, 3))
    cell.update(h, sp.tanh(W @ x + U @ h) * rc.sigmoid(W @ x - U @ h) + sp.tanh(W @ x + U @ h) ** 3)
    cell.output("y", (W @ x) ** 2)
    nodes = cell.step.prog.nodes.values()
    products = [n for n in nodes if n.op == "matvec"]
    assert sorted(t[0][0] for n in products for t in [n.attrs["terms"]]) == ["U", "W"], products
    tanhs = [n for n in nodes if n.op == "ew" and n.attrs["expr"].has(sp.tanh)]
    assert len(tanhs) == 1, tanhs
