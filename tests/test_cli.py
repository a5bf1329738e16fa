"""The command line: the demo passes its own checks; inspect reads zoo cells and files."""
import textwrap

import pytest

from rnncomp.cli import main


def test_demo_succeeds(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "OK: worst relative error" in out
    assert "δh[t-1] =" in out
    assert "native backend" in out


def test_inspect_zoo_and_file(tmp_path, capsys):
    assert main(["inspect", "lstm", "--hidden", "4"]) == 0
    assert "backward step of 'lstm'" in capsys.readouterr().out
    f = tmp_path / "mycell.py"
    f.write_text(textwrap.dedent("""
        import sympy as sp, rnncomp as rc
        cell = rc.Cell("mine")
        x, h = cell.input("x", 2), cell.state("h", 3)
        cell.update(h, sp.tanh(cell.param("W", (3, 2)) @ x + h / 2))
        cell.loss(h.new ** 2)
    """))
    assert main(["inspect", str(f), "--latex"]) == 0
    assert r"\begin{aligned}" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="neither a zoo cell"):
        main(["inspect", "no_such_cell"])
