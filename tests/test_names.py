"""A user's names never meet the compiler's: renaming a cell's declarations changes no number.

Every name the compiler generates (temporaries ``a1``, ``tanh2``, ``cat3``, ``lse4``..., the
step weight ``w``, adjoints, stacks, views, scratch) carries ``ir.INTERNAL``, a character the
DSL's name grammar forbids; these tests declare inputs, targets, outputs, definitions,
states and parameters under exactly those names (issue #22: an input named ``w`` gave wrong
gradients, a definition named ``a1`` was replaced by the temporary ``a1``) and compare every
backend against the same cell under plain names.
"""
import numpy as np
import pytest
import sympy as sp

import rnncomp as rc
from rnncomp.ir import INTERNAL, display

from gradcheck import random_data

ROLES = ("x", "h", "g", "W", "U", "b", "V", "c", "d", "y", "tgt")
PLAIN = {r: r for r in ROLES}
# every role under a name the passes generate (or used to: the weight w, temporaries of each
# kind), and names of the generated code's loop variables
CLASHING = [
    dict(x="w", h="a2", g="tanh2", W="a1", U="cat1", b="lse1", V="M", c="sigmoid1", d="a5",
         y="cat3", tgt="t"),
    dict(x="a2", h="w", g="cat3", W="W", U="U", b="b", V="V", c="c", d="a1", y="lse4", tgt="T"),
    dict(x="x", h="h", g="g", W="Max1", U="B", b="a5", V="f1", c="w", d="sigmoid1", y="a2", tgt="lse4"),
]


def named_cell(n):
    """Elman-like, with a learned state, a definition, a slice, a concat, a logsumexp."""
    c = rc.Cell("names")
    x, h, g = c.input(n["x"], 3), c.state(n["h"], 4), c.state(n["g"], 2, init="learn")
    W, U, b = c.param(n["W"], (4, 3)), c.param(n["U"], (4, 4)), c.param(n["b"], 4)
    V, c0 = c.param(n["V"], (2, 6)), c.param(n["c"], 2)
    a = c.define(n["d"], W @ x + U @ h + b)
    c.update(h, sp.tanh(a))
    c.update(g, rc.sigmoid(rc.vslice(h.new, 0, 2)) * g + c0)
    y = c.output(n["y"], V @ rc.concat(h.new, sp.tanh(g.new)))
    t = c.target(n["tgt"], 2)
    c.loss((y - t) ** 2 / 2 + rc.logsumexp(h.new) / 8)
    return c


def _renamed(n):
    """Parameter, input, target, output and state names of ``n``'s cell, keyed by role."""
    out = {r: n[r] for r in ROLES}
    out["g_0"] = n["g"] + "_0"
    return out


def _data(T=4, B=3):
    ref = named_cell(PLAIN)
    params, inputs, targets = random_data(ref, T, B, seed=5)
    h0 = {"h": np.random.default_rng(6).normal(size=(B, 4))}
    return params, inputs, targets, h0


def _run(model, n, data, mask=None):
    params, inputs, targets, h0 = data
    r = _renamed(n)
    p = {r[k]: v for k, v in params.items()}
    loss, grads, final = model.loss_and_grad(p, {r["x"]: inputs["x"]}, {r["tgt"]: targets["tgt"]},
                                             h0={r["h"]: h0["h"]}, mask=mask)
    outs, fstate = model.forward(p, {r["x"]: inputs["x"]}, h0={r["h"]: h0["h"]})
    back = {v: k for k, v in r.items()}
    return (loss, {back[k]: v for k, v in grads.items()}, {back[k]: v for k, v in final.items()},
            {back[k]: v for k, v in outs.items()}, {back[k]: v for k, v in fstate.items()})


def _same(a, b, rtol):
    la, ga, fa, oa, sa = a
    lb, gb, fb, ob, sb = b
    assert la == pytest.approx(lb, rel=rtol, abs=0)
    for want, got in ((ga, gb), (fa, fb), (oa, ob), (sa, sb)):
        assert want.keys() == got.keys()
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=rtol * np.abs(want[k]).max(), err_msg=k)


def test_the_clashing_names_are_the_ones_the_passes_generate():
    """The names above are what the lowering and the backward step name their values (shown
    without the mark): otherwise this file would test nothing."""
    ref = named_cell(PLAIN)
    from rnncomp.autodiff import backward_step
    generated = {display(k[0]) for k in ref.step.prog.nodes if INTERNAL in k[0]}
    generated |= {display(k[0]) for k in backward_step(ref.step).prog.nodes if INTERNAL in k[0]}
    chosen = {v for n in CLASHING for v in n.values()}
    assert {"a2", "sigmoid1", "cat3", "lse4", "a5", "w"} <= generated & chosen, sorted(generated)


@pytest.mark.parametrize("backend", ["numpy", "native"])
@pytest.mark.parametrize("which", range(len(CLASHING)))
def test_renaming_changes_no_number(backend, which):
    data = _data()
    ref = _run(rc.compile(named_cell(PLAIN), backend="numpy"), PLAIN, data)
    n = CLASHING[which]
    _same(ref, _run(rc.compile(named_cell(n), backend=backend), n, data), 1e-12)
    mask = np.array([[1, 0, 1], [1, 1, 0], [0, 1, 1], [1, 1, 1]], float)
    ref_m = _run(rc.compile(named_cell(PLAIN), backend="numpy"), PLAIN, data, mask)
    _same(ref_m, _run(rc.compile(named_cell(n), backend=backend), n, data, mask), 1e-12)


@pytest.mark.parametrize("persistent", [False, True], ids=["steps", "persistent"])
def test_renaming_changes_no_number_ptx_host(persistent):
    data = _data()
    ref = _run(rc.compile(named_cell(PLAIN), backend="numpy"), PLAIN, data)
    n = CLASHING[0]
    model = rc.compile(named_cell(n), backend="ptx", runner="host", persistent=persistent)
    _same(ref, _run(model, n, data), 1e-12)


def test_unrolled_walk_and_oracle_agree_under_clashing_names():
    from rnncomp.backends.numpy import unrolled_loss_and_grad
    params, inputs, targets, h0 = _data()
    n = CLASHING[0]
    r, cell = _renamed(n), named_cell(n)
    p = {r[k]: v for k, v in params.items()}
    args = (p, {r["x"]: inputs["x"]}, {r["tgt"]: targets["tgt"]})
    l1, g1, f1 = rc.compile(cell, backend="numpy").loss_and_grad(*args)
    l2, g2, f2 = unrolled_loss_and_grad(cell, *args)
    assert l1 == pytest.approx(l2, rel=1e-12)
    for k in g1:
        np.testing.assert_allclose(g2[k], g1[k], rtol=1e-11, atol=1e-13, err_msg=k)


def test_issue_examples_input_w_define_a1_output_tanh2():
    """The three reports of issue #22, against the same cell under plain names."""
    def cell(xn, dn, yn):
        c = rc.Cell("e")
        x, h = c.input(xn, 3), c.state("h", 4)
        a = c.define(dn, c.param("W", (4, 3)) @ x + c.param("U", (4, 4)) @ h + c.param("b", 4))
        c.update(h, sp.tanh(a))
        y = c.output(yn, sp.tanh(c.param("V", (2, 4)) @ h.new))
        c.loss((y - c.target("target", 2)) ** 2 / 2)
        return c
    ref = cell("x", "d", "y")
    params, inputs, targets = random_data(ref, 5, 2, seed=1)
    want = rc.compile(ref, backend="numpy").loss_and_grad(params, inputs, targets)
    want_out = rc.compile(ref, backend="numpy").forward(params, inputs)[0]["y"]
    for backend in ("numpy", "native"):
        m = rc.compile(cell("w", "a1", "tanh2"), backend=backend)
        loss, grads, final = m.loss_and_grad(params, {"w": inputs["x"]}, targets)
        assert loss == pytest.approx(want[0], rel=1e-12)
        for k in grads:
            np.testing.assert_allclose(grads[k], want[1][k], rtol=1e-11, atol=1e-14, err_msg=k)
        np.testing.assert_allclose(final["h"], want[2]["h"], rtol=1e-12)
        np.testing.assert_allclose(m.forward(params, {"w": inputs["x"]})[0]["tanh2"], want_out, rtol=1e-12)


def test_printed_equations_show_no_mark_and_keep_user_and_generated_values_apart():
    n = CLASHING[1]  # a definition named a1 next to the generated temporary a1
    text = str(rc.explain(named_cell(n)))
    assert INTERNAL not in text
    assert "a1[t]" in text and "δ" in text
    latex = rc.explain(named_cell(n)).latex()
    assert INTERNAL not in latex
    cost = rc.inspect.cost(named_cell(n))
    plain = rc.inspect.cost(named_cell(PLAIN))
    assert cost.stored_units == plain.stored_units and len(cost.stored) == len(plain.stored)
