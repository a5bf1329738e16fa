"""``rnncomp inspect`` drawings of matrix-valued states (#19): one node per state and step,
labelled with the state's shape ``R^m×n`` (the IR keeps it as m·n units: the label once read
``R^16`` for a 4×4 state), in every view; vector states keep ``R^n``.  ``--cost`` of every
matrix zoo cell: each gradient algorithm's FLOPs and memory, SnAp's as the dense executor's."""
import re

import numpy as np
import pytest

from rnncomp.errors import CompileError
from rnncomp.inspect import to_dot
from rnncomp.zoo_matrix import MATRIX_ZOO

VIEWS = [("step", "full", "t-1"), ("unfolded", "full", "0"), ("gradient", "full", "t-1"),
         ("step", "compact", "t-1"), ("gradient", "compact", "t-1")]


@pytest.mark.parametrize("name", sorted(MATRIX_ZOO))
@pytest.mark.parametrize("kind,detail,t", VIEWS)
def test_a_matrix_state_is_one_node_labelled_with_its_shape(name, kind, detail, t):
    cell = MATRIX_ZOO[name](3, 4, 2, **({"dk": 5} if name in ("mlstm", "delta_rule") else {}))
    dot = to_dot(cell, kind, k=2, detail=detail)
    for s in cell.step.states:
        d = cell.decls[s].shape
        want = f"{d[0]}×{d[1]}" if isinstance(d, tuple) else str(d)
        labels = re.findall(rf'label="{re.escape(s)}\[{t}\]\\n∈ R\^([0-9×]+)"', dot)
        assert labels == [want], (s, labels)


@pytest.mark.parametrize("detail", ["full", "compact"])
def test_the_carried_adjoint_of_a_matrix_state_has_its_shape(detail):
    dot = to_dot(MATRIX_ZOO["fast_weights"](3, 4, 2), "gradient", detail=detail)
    assert 'label="δ⁺A[t]\\n∈ R^4×4"' in dot and "R^16" not in dot


def test_cli_prints_and_draws_a_matrix_state_cell_from_a_file(tmp_path, capsys):
    """``rnncomp inspect mymodel.py`` (the way a user reaches the drawings): equations with the
    matrix state's shape and its update at matrix level, and the DOT with one node for C[t-1]."""
    from rnncomp.cli import main
    f = tmp_path / "mymodel.py"
    f.write_text("from rnncomp.zoo_matrix import delta_rule\ncell = delta_rule(3, 4, 2, dk=5)\n")
    assert main(["inspect", str(f)]) == 0
    out = capsys.readouterr().out
    assert "states:  C ∈ R^4×5 (C[0] = 0)" in out and "C[t] = C[t-1] - " in out and "δC[t-1] =" in out
    assert main(["inspect", str(f), "--dot", "step"]) == 0
    dot = capsys.readouterr().out
    assert re.findall(r'label="C\[t-1\]\\n∈ R\^([0-9×]+)"', dot) == ["4×5"]
    with pytest.raises(SystemExit, match=r"mlstm is a factory of rnncomp.zoo_matrix: write `from rnncomp.zoo_matrix "
                                         r"import mlstm`"):
        main(["inspect", "mlstm"])  # the zoo name alone: where to find it


# ----------------------------------------------------------------------------- --cost
@pytest.mark.parametrize("name", sorted(MATRIX_ZOO))
def test_algorithm_costs_of_every_matrix_zoo_cell(name):
    """Found by an adversarial probe: a raw KeyError from SnAp's sparse plan (algorithms/restricted.py,
    which has none for matrix ops).  A matrix-state cell's SnAp runs the dense executor
    (docs/algorithms.md, ``rc.SnAp`` picks it): RTRL's work and memory, then the pattern's mask."""
    from rnncomp.algorithms.cost import algorithm_costs
    cell = MATRIX_ZOO[name](3, 4, 2)
    c = algorithm_costs(cell, T=10, B=2, dtype="float64")
    rows = {r["algorithm"]: r for r in c.rows}
    assert list(rows) == ["BPTT", "RTRL", "SnAp-1", "SnAp-2", "UORO"]
    assert all(r["flops"] > 0 and r["memory"] > 0 for r in rows.values())
    P, N = sum(v.size for v in cell.init_params(0).values()), sum(cell.step.states.values())
    assert rows["RTRL"]["memory"] == 2 * P * N * 8
    matrix = any(isinstance(d.shape, tuple) for d in map(cell.decls.get, cell.step.states))
    for n in ("SnAp-1", "SnAp-2"):
        if matrix:
            assert rows[n]["memory"] == rows["RTRL"]["memory"]  # the dense executor's J
            assert rows[n]["flops"] == rows["RTRL"]["flops"] + P * N  # and its mask
            assert "dense executor: matrix states" in rows[n]["exact"]
        else:
            assert rows[n]["memory"] < rows["RTRL"]["memory"]
    assert "  SnAp-1" in c.table()


def test_rtrl_cost_counts_the_tangents_of_matrix_products():
    """Each direction of the delta rule's tangent step runs four X·v products (∂C·k, C·∂k, ∂C·q,
    C·∂q: 2·m·dk each) and two outer products (∂a kᵀ, a ∂kᵀ: m·dk each); they were once free."""
    from rnncomp.algorithms.cost import TANGENT_FLOPS
    from rnncomp.forward_mode import tangent_step
    from rnncomp.ops import MATRIX
    m, dk, K = 4, 5, 7
    prog = tangent_step(MATRIX_ZOO["delta_rule"](3, m, 2, dk=dk).step).prog
    counted = sum(TANGENT_FLOPS.get(n.op, lambda *a: 0)(prog, n, K) for n in prog.nodes.values() if n.op in MATRIX)
    assert counted == K * (4 * 2 * m * dk + 2 * m * dk)


def test_cli_cost_of_a_matrix_state_cell_from_a_file(tmp_path, capsys):
    from rnncomp.cli import main
    f = tmp_path / "m.py"
    f.write_text("from rnncomp.zoo_matrix import delta_rule\ncell = delta_rule(3, 4, 2)\n")
    assert main(["inspect", str(f), "--cost", "--T", "10", "--B", "2"]) == 0
    out = capsys.readouterr().out
    assert "gradient algorithms for 'delta_rule': T = 10, B = 2, float32" in out
    for name in ("BPTT", "RTRL", "SnAp-1", "SnAp-2", "UORO"):
        assert f"\n  {name} " in out


def test_the_sparse_jacobian_of_a_matrix_state_cell_is_a_named_error():
    from rnncomp.algorithms.restricted import RestrictedJacobian
    step = MATRIX_ZOO["fast_weights"](3, 4, 2).step
    with pytest.raises(CompileError, match=r"cell 'fast_weights' has matrix states \(ops outer, smatvec\)"):
        RestrictedJacobian(step, np.arange(4), np.arange(4))


@pytest.mark.parametrize("name", sorted(MATRIX_ZOO))
def test_the_latex_of_a_matrix_cell_shows_the_maths_not_the_atoms(name):
    """Found by an adversarial probe: the LaTeX printed sympy's reading of the internal atoms,
    ``\\vec{SMat}(C, k, 0)``, ``\\operatorname{Outer}``, ``MReduce(C, 0)``, a transpose flag as
    an argument.  Each atom now prints as the listing writes it (C·k, a·bᵀ, colsum(C))."""
    import rnncomp as rc
    e = rc.explain(MATRIX_ZOO[name](3, 4, 2))
    tex = e.latex()
    for atom in ("SMat", "Outer", "MReduce", "SumTo", "Bcast", "by_rows", "Σ_"):
        assert atom not in tex, (atom, tex[:300])
    text = str(e)
    if "colsum(" in text or "rowsum(" in text:
        assert r"\operatorname{colsum}" in tex or r"\operatorname{rowsum}" in tex
    if "ᵀ" in text:
        assert r"^{\top}" in tex


def test_the_latex_of_a_row_gate_escapes_its_operator_name():
    """Found by an adversarial probe: a row-gated state's listing named a value
    ``\\operatorname{by_rows}(…)``: in math mode "by" with a subscript "r", then "ows"."""
    import sympy as sp
    import rnncomp as rc
    cell = rc.Cell("gate")
    x, C = cell.input("x", 3), cell.state("C", (2, 3))
    cell.update(C, rc.sigmoid(cell.param("Wg", (2, 3)) @ x) * C + rc.outer(cell.param("Wv", (2, 3)) @ x, x))
    cell.loss(rc.vsum(cell.output("y", C.new @ x) ** 2))
    tex = rc.explain(cell).latex()
    assert r"\operatorname{by\_rows}" in tex and not re.search(r"\\operatorname\{[^}]*[^\\]_", tex)
