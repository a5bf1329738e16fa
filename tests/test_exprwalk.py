"""Expressions walked as the graphs they are (``rnncomp/exprwalk.py``).

Found by a probe (2026-12-07): a cell integrated with K explicit Euler sub-steps,
``z = z + (-z + tanh(a*z + Wx))/10``, reads z twice per sub-step, so the expression is K
levels of one object each but 2^K paths.  Declaring it walked every path (the checks with
``sp.preorder_traversal``, ``free_symbols`` and ``has``, ``size_of`` and lowering's ``split``
by recursion) and the native plan cache keyed it by its ``srepr`` text: K = 16 took 18 s to
declare and 25 s to compile.  Each of those now visits a distinct sub-expression once; the
counts below are what a regression would change (a tree walk makes thousands of visits).
"""
from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import rnncomp as rc
from rnncomp import cell_check, lower
from rnncomp.exprwalk import contains, digest, distinct_subexpressions, free_symbols


def euler_cell(K, define=False):
    c = rc.Cell("ctrnn")
    x, h = c.input("x", 3), c.state("h", 4)
    drive = c.define("drive", c.param("W", (4, 3)) @ x)
    a = c.param("a", 4)
    z = h
    for k in range(K):
        z = z + sp.Rational(1, 10) * (-z + sp.tanh(a * z + drive))
        if define:
            z = c.define(f"z{k}", z)
    c.update(h, z)
    c.loss((c.output("y", c.param("V", (2, 4)) @ h.new) - c.target("t", 2)) ** 2)
    return c, z


def test_distinct_subexpressions_is_preorder_without_repeats():
    x, y = sp.symbols("x y")
    e = sp.sin(x + y) * sp.cos(x + y) + sp.exp(sp.sin(x + y))
    want = list(dict.fromkeys(sp.preorder_traversal(e)))
    assert list(distinct_subexpressions(e)) == want
    assert free_symbols(e) == e.free_symbols
    assert contains(e, sp.exp) and not contains(e, sp.tanh)


def test_digest_is_equal_exactly_when_the_expressions_are():
    x = sp.Symbol("x")
    a = sp.tanh(x) + sp.Float("0.1", 53) * x
    assert digest(a) == digest(sp.tanh(x) + sp.Float("0.1", 53) * x)
    for other in (sp.tanh(x) + sp.Float("0.1", 20) * x,       # another precision
                  sp.tanh(x) + sp.Rational(1, 10) * x,        # another number
                  sp.tanh(sp.Symbol("x", positive=True)) + sp.Float("0.1", 53) * x,  # assumptions
                  sp.tanh(rc.dsl.Vec("x")) + sp.Float("0.1", 53) * x):              # a DSL vector
        assert digest(other) != digest(a)


def test_a_deeply_shared_expression_is_declared_and_lowered_once_per_node(monkeypatch):
    K = 12
    _, z = euler_cell(K)
    distinct = sum(1 for _ in distinct_subexpressions(z))
    assert distinct < 400  # the graph: linear in K (a tree walk: tens of thousands)
    calls = {"size": 0, "split": 0}

    def counting(name, fn):
        def wrapped(*a, **kw):
            calls[name] += 1
            return fn(*a, **kw)
        return wrapped

    monkeypatch.setattr(cell_check, "_size", counting("size", cell_check._size))
    monkeypatch.setattr(lower._Lowerer, "_split", counting("split", lower._Lowerer._split))
    cell, _ = euler_cell(K)
    cell.step
    assert 0 < calls["size"] <= 2 * distinct and 0 < calls["split"] <= 2 * distinct


def test_the_shared_form_computes_what_the_defined_form_computes():
    """The same cell written with a define per sub-step (which the probe found fast) gives the
    same loss and gradients; native against the oracle; and the native plan key is linear."""
    from rnncomp.backends.native_plan_cache import declaration_key
    from rnncomp.backends.llvm.jit import HostTarget
    shared, _ = euler_cell(10)
    defined, _ = euler_cell(10, define=True)
    rng = np.random.default_rng(0)
    params = shared.init_params(seed=1)
    x, t = rng.normal(size=(6, 2, 3)), rng.normal(size=(6, 2, 2))
    want = rc.compile(defined, backend="numpy").loss_and_grad(params, x, t)
    for backend in ("numpy", "native"):
        got = rc.compile(shared, backend=backend).loss_and_grad(params, x, t)
        assert got[0] == pytest.approx(want[0], rel=1e-12)
        for p in params:
            np.testing.assert_allclose(got[1][p], want[1][p], rtol=1e-10, atol=1e-13)
    host = HostTarget.detect()
    assert declaration_key(euler_cell(10)[0], "float64", (), host) == declaration_key(shared, "float64", (), host)
    assert declaration_key(euler_cell(9)[0], "float64", (), host) != declaration_key(shared, "float64", (), host)


def test_a_shared_expression_is_written_once_per_node_and_read_back(tmp_path):
    """Checkpoints and pickles write each expression as text: ``srepr``'s grew with the paths
    (K = 14: 2 MB and 5 s for one update), so a shared sub-expression is now written once and
    named where it recurs (``serialize.expression_text``); ordinary cells keep plain srepr."""
    import json
    import pickle
    from rnncomp.errors import CheckpointError
    from rnncomp.serialize import cell_from_dict, cell_to_dict
    cell, _ = euler_cell(12)
    d = cell_to_dict(cell)
    text = json.dumps(d)
    assert isinstance(d["updates"]["h"], dict) and len(text) < 10_000  # srepr: 516,000 characters
    again = cell_from_dict(json.loads(text))
    assert again.updates["h"] == cell.updates["h"] and again.loss_expr == cell.loss_expr
    assert isinstance(cell_to_dict(rc.cells.lstm(3, 4, 2))["updates"]["h"], str)
    model = rc.compile(cell, backend="numpy")
    params = cell.init_params(seed=0)
    x, t = np.ones((3, 2, 3)), np.zeros((3, 2, 2))
    assert pickle.loads(pickle.dumps(model)).loss_and_grad(params, x, t)[0] == model.loss_and_grad(params, x, t)[0]
    tr = rc.Trainer(cell, rc.SGD(0.1), backend="numpy")
    tr.save(tmp_path / "c.ckpt")
    assert rc.Trainer.load(tmp_path / "c.ckpt").model.step.prog.nodes.keys() == tr.model.step.prog.nodes.keys()
    for damage, why in [(lambda let: let[0].__setitem__(0, "os"), r"a shared name 'os'"),
                        (lambda let: let[0].pop(), r"a 'let' item .* is not \[name, text\]"),
                        (lambda let: let[0].append("x"), r"a 'let' item .* is not \[name, text\]")]:
        bad = json.loads(text)
        damage(bad["updates"]["h"]["let"])
        with pytest.raises(CheckpointError, match=f"unreadable expression \\({why}"):
            cell_from_dict(bad)
    bad = json.loads(text)
    bad["updates"]["h"]["let"] = "xy"
    with pytest.raises(CheckpointError, match="unreadable expression"):
        cell_from_dict(bad)


def test_sharing_outside_function_calls_is_templated_once_per_node(monkeypatch):
    """z = (z + x)(z - x)/4, K times: no function call, so lowering's split makes no nodes and
    the whole update is one element-wise template whose tree has 2^K paths.  Its atoms and
    placeholders are found per distinct sub-expression (the review of session 16 found
    ``templated`` still walking the tree).  (Differentiating it is still slow: sympy's own
    ``diff`` of such a product, K = 12: ~7 s for the native compile.)"""
    from rnncomp.exprwalk import tree_size
    K = 14
    c = rc.Cell("poly")
    x, h = c.input("x", 3), c.state("h", 3)
    z = h
    for _ in range(K):
        z = (z + x) * (z - x) / 4
    c.update(h, z)
    c.loss(h.new ** 2)
    assert tree_size(z) > 2 ** K
    seen = {"n": 0}
    real = lower.distinct_subexpressions

    def counting(*a, **kw):
        for e in real(*a, **kw):
            seen["n"] += 1
            yield e

    monkeypatch.setattr(lower, "distinct_subexpressions", counting)
    c.step
    assert 0 < seen["n"] <= 10 * sum(1 for _ in distinct_subexpressions(z))
