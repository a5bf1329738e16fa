"""``rnncomp inspect`` drawings of matrix-valued states (#19): one node per state and step,
labelled with the state's shape ``R^m×n`` (the IR keeps it as m·n units: the label once read
``R^16`` for a 4×4 state), in every view; vector states keep ``R^n``."""
import re

import pytest

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
