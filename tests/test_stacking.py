"""Pass "stack": products sharing an operand (or summed) become one product.

The pass only regroups values, so with it on and off the native backend must give the
same loss and gradients up to float64 rounding of a different summation order (1e-12
relative to each gradient's largest entry), for every zoo cell, the custom cells and
cells written to hit the pass's edge cases.
"""
import re

import numpy as np
import pytest
import sympy as sp

import rnncomp as rc
from rnncomp.autodiff import Cotangents, backward_step
from rnncomp.passes.stacking import stack_products

from gradcheck import numpy_model, random_data
from test_custom_cells import CUSTOM


def _agree(cell, T=6, B=3, **opts):
    params, inputs, targets = random_data(cell, T=T, B=B, seed=4)
    ref = numpy_model(cell).loss_and_grad(params, inputs, targets)
    got = {}
    for stack in (True, False):
        m = rc.compile(cell, backend="native", cache=None, stack=stack, **opts)
        got[stack] = m.loss_and_grad(params, inputs, targets)
    for res in (got[True], got[False]):
        assert res[0] == pytest.approx(ref[0], rel=1e-12)
        for k in ref[1]:
            scale = np.abs(ref[1][k]).max() + 1e-300
            assert np.abs(res[1][k] - ref[1][k]).max() <= 1e-12 * scale, k
    return got


@pytest.mark.parametrize("name", sorted(rc.cells.ZOO))
@pytest.mark.parametrize("opts", [{}, {"grad_after": True}, {"hoist": False, "pack": False}, {"fuse": False}],
                         ids=["default", "grad_after", "no-hoist-pack", "unfused"])
def test_zoo_stack_on_off(name, opts):
    _agree(rc.cells.get(name)(3, 5, 2), **opts)


@pytest.mark.parametrize("make", CUSTOM, ids=lambda f: f.__name__)
def test_custom_cells_stack_on_off(make):
    _agree(make())


def test_lstm_groups_and_one_product_per_group():
    st = rc.cells.lstm(3, 4, 2).step
    res = stack_products(st.prog, st.params, keep=[(s, "t") for s in st.states] + [("y", "t"), st.loss_key])
    parts = sorted(s.parts for s in res.stacks.values())
    assert parts == [("Uf", "Ui", "Ug", "Uo"), ("Wf", "Wi", "Wg", "Wo")]
    products = [k for k, n in res.prog.nodes.items() if n.op == "matvec"]
    assert len(products) == 3  # [U]·h, [W]·x and V·h
    bwd = backward_step(st)
    res = stack_products(bwd.prog, st.params, keep=[k for k in bwd.carry_out.values() if k] + [bwd.weight])
    (stk,) = res.stacks.values()
    assert stk.axis == 0 and sorted(stk.parts) == ["Uf", "Ug", "Ui", "Uo"]
    # δh[t-1] = Σ Uᵢᵀ·δaᵢ is now one product, which writes δh[t-1] itself (no copy)
    node = res.prog.nodes[bwd.carry_out["h"]]
    assert node.op == "matvec" and res.prog.nodes[node.args[0]].op == "stackv"


def test_input_cotangents_read_the_same_stacked_adjoints():
    """With input cotangents, δx = Σ Wᵢᵀ·δaᵢ sums the same δaᵢ as δh[t-1]: one product of depth
    4H reading the same stacked whole (its weights stacked in the whole's column order), not
    four products and a sum; the native backward runs it after the loop over T·B rows."""
    cot = Cotangents(loss=True, outputs=("y",), inputs=("x",), final=True)
    m = rc.compile(rc.cells.lstm(3, 4, 2), backend="native", cache=None)._variant(cot)
    prog, bwd = m._bwd_prog, m.bwd
    dh, dx = (prog.nodes[k] for k in (bwd.carry_out["h"], bwd.input_adjoints["x"]))
    assert dh.op == dx.op == "matvec" and dh.args == dx.args and prog.nodes[dx.args[0]].op == "stackv"
    (w,), (u,) = ([m.stacks[p] for p, _, _ in n.attrs["terms"]] for n in (dx, dh))
    assert [p[1:] for p in w.parts] == [p[1:] for p in u.parts]  # column i: Wᵢ and Uᵢ of one gate
    assert sum(n.op == "matvec" for n in prog.nodes.values()) == 3  # Vᵀ·δy, [U]ᵀ·δA, [W]ᵀ·δA
    assert m.after == {bwd.input_adjoints["x"]}
    # the δA kept for δX serve the weight gradients after the loop too (no memory of their own)
    assert {p for p, _ in m.deferred} >= {"Wf", "Ui", "bo"}


@pytest.mark.parametrize("name", sorted(rc.cells.ZOO))
def test_zoo_vjp_stack_on_off(name):
    """Input cotangents, initial-state cotangents and gradients of a VJP with the pass on and
    off against the NumPy oracle, float64 (1e-12 of each array's largest entry: only the
    summation order differs)."""
    cell = rc.cells.get(name)(3, 5, 2)
    params, inputs, _ = random_data(cell, T=6, B=3, seed=4)
    rng = np.random.default_rng(5)
    d_out = {o: rng.standard_normal((6, 3, n)) for o, n in cell.step.outputs.items()}
    ref = numpy_model(cell).vjp(params, inputs, d_outputs=d_out)
    for stack in (True, False):
        got = rc.compile(cell, backend="native", cache=None, stack=stack).vjp(params, inputs, d_outputs=d_out)
        for kind in ("params", "inputs", "h0"):
            for k, want in getattr(ref, kind).items():
                err = np.abs(getattr(got, kind)[k] - want).max()
                assert err <= 1e-12 * (np.abs(want).max() + 1e-300), (stack, kind, k)


def test_gradients_of_a_group_are_accumulated_together():
    m = rc.compile(rc.cells.lstm(3, 5, 2), backend="native", cache=None)
    groups = {params for _, _, params, _ in m.grad_groups}
    assert {frozenset(p) for p in groups} == {frozenset({"Uf", "Ui", "Ug", "Uo"}),
                                             frozenset({"Wf", "Wi", "Wg", "Wo"}),
                                             frozenset({"bf", "bi", "bg", "bo"})}


def transposed_and_mixed():
    """Products with transposed weights stack by columns; a product read twice (not linear
    with coefficient 1) and a scaled product (0.5·Bm·g) stay out of the groups."""
    cell = rc.Cell("mixed")
    x = cell.input("x", 3)
    h = cell.state("h", 5)
    g = cell.state("g", 4)
    A, Bm, C = cell.param("A", (5, 5)), cell.param("Bm", (5, 4)), cell.param("C", (5, 5))
    D = cell.param("D", (4, 5))
    Wx = cell.param("Wx", (5, 3))
    a = A @ h
    cell.update(h, sp.tanh(a + C.T @ h + Wx @ x + 0.5 * (Bm @ g)) + a ** 2 / 10)
    cell.update(g, rc.functions.sigmoid(D @ h + Bm.T @ h))
    y = cell.output("y", cell.param("V", (2, 5)) @ h.new)
    cell.loss((y - cell.target("target", 2)) ** 2 / 2)
    return cell


def sum_of_products_forward():
    """Rule B in a forward step: U1·a + U2·b with a, b computed (a stackv whole)."""
    cell = rc.Cell("sum_of_products")
    x = cell.input("x", 3)
    h = cell.state("h", 6)
    a = sp.tanh(cell.param("Wa", (4, 3)) @ x)
    b = sp.tanh(cell.param("Wb", (5, 6)) @ h)
    cell.update(h, sp.tanh(cell.param("U1", (6, 4)) @ a + cell.param("U2", (6, 5)) @ b))
    y = cell.output("y", cell.param("V", (2, 6)) @ h.new)
    cell.loss((y - cell.target("target", 2)) ** 2 / 2)
    return cell


def test_transposed_and_mixed_products():
    cell = transposed_and_mixed()
    _agree(cell)
    m = rc.compile(cell, backend="native", cache=None)
    assert any(s.axis == 1 for s in m.stacks.values())  # Cᵀ·h and Bmᵀ·h: columns stacked


def test_sum_of_products_of_computed_operands_in_the_forward_step():
    cell = sum_of_products_forward()
    _agree(cell)
    m = rc.compile(cell, backend="native", cache=None)
    assert any(n.op == "stackv" for n in m._fwd_prog.nodes.values())


def test_fused_gate_loops_still_vectorise():
    """Regression: with the gates read from one stacked buffer, LLVM gave up vectorising the
    fused loop ("too many memory checks") and sigmoid ran scalar, 3× slower.  The element-wise
    loops now carry llvm.loop.parallel_accesses metadata."""
    m = rc.compile(rc.cells.lstm(64, 128, 4), backend="native", dtype="float32", cache=None)
    ir_text = m.lib.optimized_ir()
    fwd = ir_text[ir_text.index("define void @forward"):]
    fwd = fwd[:fwd.index("\n}\n")]
    assert re.search(r"fdiv [a-z ]*<\d+ x float>", fwd), "sigmoid's division is not vectorised"
    assert not re.search(r"fdiv [a-z ]*float ", fwd), "a scalar sigmoid loop remains"


def summed_weights():
    """Products of several matrices on one operand: W - Wᵀ (antisymmetric), U + 2A, -Cᵀ + B
    (transposed and scaled terms), one of them read inside the loop, one on the input."""
    c = rc.Cell("summed")
    x, h = c.input("x", 4), c.state("h", 4)
    W, U, A, Cm, Bm = (c.param(n, (4, 4)) for n in ("W", "U", "A", "C", "B"))
    c.update(h, sp.tanh((W - W.T) @ h + (U + 2 * A) @ x) + 0.5 * sp.tanh((Bm - Cm.T) @ h))
    c.loss(rc.vsum((h.new - c.target("t", 4)) ** 2))
    return c


def test_a_product_of_several_matrices_is_one_product_of_their_sum():
    """Rule C: Σ c·op(P)·v → (Σ c·op(P))·v with the sum built once per call; forward and
    backward (δh = (Wᵀ - W)·δa) each read one summed weight per product."""
    cell = summed_weights()
    res = stack_products(cell.step.prog, cell.step.params)
    sums = {s.name[:-1]: s.terms for s in res.stacks.values() if s.axis == "sum"}
    assert sums == {"(W - Wᵀ)": (("W", False, 1), ("W", True, -1)), "(2A + U)": (("A", False, 2), ("U", False, 1)),
                    "(B - Cᵀ)": (("B", False, 1), ("C", True, -1))}
    assert all(len(n.attrs["terms"]) == 1 for n in res.prog.nodes.values() if n.op == "matvec")
    _agree(cell)
    m = rc.compile(cell, backend="native", cache=None)
    assert sum(s.axis == "sum" for s in m.stacks.values()) >= 5   # the backward's transposed sums too
