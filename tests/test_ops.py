"""The op table (rnncomp/ops.py) is the live one: every op the lowering, the derivative rules,
the tangent rules and the passes emit is listed there, ``ir.verify`` rejects any other, and each
table keyed by op covers the ops it must (a missing entry fails here, not as a KeyError in a
user's call)."""
import ast
import pathlib

import pytest
import sympy as sp

import rnncomp as rc
from rnncomp import zoo_matrix
from rnncomp.autodiff import LOSS_ONLY, RULES, Cotangents, backward_step
from rnncomp.equations import EXPRS, node_expr
from rnncomp.errors import CompileError, IRError
from rnncomp.forward_mode import JVP_RULES, TANGENT_OPS, tangent_step
from rnncomp.graph import unfold_program
from rnncomp.inspect.cost import FLOPS
from rnncomp.ir import Node, Program, verify
from rnncomp.lower import NAMED_TEMPS, NUMBERED_TEMPS
from rnncomp.ops import LEAF, MEMORY, OPS, info
from rnncomp.passes.prepare import prepare
from rnncomp.weights import DerivedWeights

PKG = pathlib.Path(rc.__file__).resolve().parent
COMPUTED = set(OPS) - LEAF - MEMORY   # ops with a value of their own to compute


def structural_cell():
    """Slices, a concatenation, a row sum and a softmax cross-entropy (logsumexp)."""
    cell = rc.Cell("structural")
    x, h, t = cell.input("x", 3), cell.state("h", 4), cell.target("t", 3)
    W, U = cell.param("W", (4, 4)), cell.param("U", (4, 3))
    a = cell.define("a", sp.tanh(W @ h + U @ x))
    cell.update(h, rc.concat(rc.vslice(a, 0, 2), rc.vslice(a, 2, 4) * rc.vsum(a)))
    y = cell.output("y", cell.param("V", (3, 4)) @ h.new)
    cell.loss(rc.softmax_xent(y, t))
    return cell


def derived_weight_cell():
    """A named derived weight, a masked one, a transpose and a product of parameters."""
    cell = rc.Cell("derived")
    x, h, t = cell.input("x", 3), cell.state("h", 4), cell.target("t", 1)
    W, U = cell.param("W", (4, 4)), cell.param("U", (4, 3))
    M = cell.const("M", [[1.0 if i >= j else 0.0 for j in range(4)] for i in range(4)])
    P = cell.weight("P", W @ W.T / 4)
    cell.update(h, sp.tanh(P @ h + (W * M) @ h + (U / rc.norm(U, axis=0)) @ x))
    y = cell.output("y", cell.param("V", (1, 4)) @ h.new)
    cell.loss((y - t) ** 2)
    return cell


def gated_matrix_cell():
    """A matrix state scaled row by row by a gate (mbcast) and read out by row and column sums
    (mreduce)."""
    cell = rc.Cell("gated_matrix")
    k, v, t = cell.input("k", 3), cell.input("v", 2), cell.target("t", 1)
    C = cell.state("C", (2, 3))
    g = sp.tanh(cell.param("G", (2, 3)) @ k)
    cell.update(C, g * C + rc.outer(v, k))
    y = cell.output("y", rc.vsum(rc.rowsum(C.new)) + rc.vsum(rc.colsum(C.new)))
    cell.loss((y - t) ** 2)
    return cell


CELLS = {**{n: (lambda f=f: f(3, 4, 2)) for n, f in rc.cells.ZOO.items()},
         **{f.__name__: (lambda f=f: f(3, 4, 2)) for f in (zoo_matrix.mlstm, zoo_matrix.fast_weights,
                                                           zoo_matrix.delta_rule, zoo_matrix.diag_linear)},
         "structural": structural_cell, "derived": derived_weight_cell, "gated_matrix": gated_matrix_cell}


def _programs(cell):
    """Every program the compiler makes of ``cell``: the step, its backward steps (a plain loss;
    a VJP with every cotangent), the tangent step, the programs pass "stack" gives the compiled
    backends, an unfolded step, and the derived weights' forward and reverse programs."""
    step = cell.step
    full = backward_step(step, Cotangents(loss=True, outputs=tuple(step.outputs), inputs=tuple(step.inputs),
                                          final=True))
    out = {"step": step.prog, "backward": backward_step(step, LOSS_ONLY).prog, "vjp": full.prog,
           "tangent": tangent_step(step).prog, "unfolded": unfold_program(step, 2)}
    plain = step
    if step.derived:   # the compiled backends take the plain cell, its derived weights computed apart
        d = DerivedWeights(cell)
        out.update({"weights": d.prog, "weights reverse": d.rev.prog})
        plain = d.plain.step
    prepared = prepare(plain, backward_step(plain, full.cot))
    out.update({"stacked forward": prepared.fwd, "stacked backward": prepared.bwd})
    return out


@pytest.fixture(scope="module")
def programs():
    return {(c, p): prog for c, make in CELLS.items() for p, prog in _programs(make()).items()}


def _ops(progs):
    return {n.op for prog in progs for n in prog.nodes.values()}


def test_every_program_the_compiler_makes_verifies_and_uses_only_listed_ops(programs):
    for (cell, what), prog in programs.items():
        if what.startswith("weights"):   # arrays, not per-sample vectors: verify's size rules are not theirs
            assert all(n.op in OPS and OPS[n.op].arity in (None, len(n.args)) for n in prog.nodes.values())
        else:
            verify(prog)   # ops in OPS, their arity, arguments defined first, sizes
    seen = _ops(programs.values())
    assert seen <= set(OPS)
    # the zoo reaches every op, so the checks below are not vacuous
    assert seen == set(OPS)


def _literal_ops():
    """Op names written in the package's source: ``Node("op", ...)`` and ``x.op == "op"``,
    ``x.op in ("op", ...)`` (a misspelt op there is a branch never taken)."""
    out = set()
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "Node"
                    and node.args and isinstance(node.args[0], ast.Constant)):
                out.add((path.name, node.args[0].value))
            elif (isinstance(node, ast.Compare) and isinstance(node.left, ast.Attribute)
                  and node.left.attr == "op"):
                for c in node.comparators:
                    consts = c.elts if isinstance(c, (ast.Tuple, ast.List, ast.Set)) else [c]
                    out |= {(path.name, e.value) for e in consts if isinstance(e, ast.Constant)}
    return out


def test_every_op_named_in_the_source_is_listed():
    found = _literal_ops()
    assert len(found) > 50   # the scan reads the source
    assert sorted((f, op) for f, op in found if op not in OPS) == []


def test_the_rule_tables_cover_every_computed_op():
    assert set(RULES) == COMPUTED            # derivatives (autodiff.RULES)
    assert set(JVP_RULES) == COMPUTED        # tangents (forward_mode.JVP_RULES)
    assert set(TANGENT_OPS) <= COMPUTED


def test_the_printing_and_cost_tables_cover_every_op():
    assert set(EXPRS) == set(OPS)
    assert set(FLOPS) == set(OPS)


def test_the_lowering_names_every_value_it_generates(programs):
    named, numbered = set(NAMED_TEMPS), set(NUMBERED_TEMPS)
    assert not named & numbered and (named | numbered) <= COMPUTED
    made = _ops(prog for (_, what), prog in programs.items() if what == "step") - LEAF
    # the step's other ops are made under a key the lowering chooses itself (a matrix
    # state's broadcast, the per-sample copy of a parameter)
    assert made - named - numbered <= {"mbcast"}


def test_the_properties_are_read_from_the_table():
    assert LEAF == {"input", "target", "param", "state", "seed"}
    assert MEMORY == {"view", "stackv"}
    assert Node("seed", (), 3).is_leaf and not Node("view", (("w", "t"),), 3).is_leaf
    assert info("matvec").linear and info("sumto").reduction and not info("lse").linear


def _prog(*nodes):
    p = Program(name="p")
    for key, node in nodes:
        p.add(key, node)
    return p


def test_verify_names_an_op_outside_the_table():
    p = _prog((("x", "t"), Node("input", (), 2)), (("y", "t"), Node("conv", (("x", "t"),), 2)))
    with pytest.raises(IRError, match=r"p: y\[t\] has op 'conv', which is not an IR op"):
        verify(p)
    with pytest.raises(IRError, match="no printing rule"):
        node_expr(p, ("y", "t"))
    assert issubclass(IRError, CompileError) and issubclass(IRError, AssertionError)


def test_verify_names_a_node_with_the_wrong_number_of_arguments():
    p = _prog((("x", "t"), Node("input", (), 2)),
              (("y", "t"), Node("outer", (("x", "t"),), 4, {"shape": (2, 2)})))
    with pytest.raises(IRError, match=r"y\[t\] \(outer\) reads 1 argument\(s\); outer takes 2"):
        verify(p)


def test_info_names_an_unknown_op():
    with pytest.raises(IRError, match="unknown IR op 'conv'; known: concat, ew"):
        info("conv")
