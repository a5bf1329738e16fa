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


def test_compile_writes_ptx_and_llvm(tmp_path, capsys):
    import shutil
    out = tmp_path / "cell.ptx"
    assert main(["compile", "elman", "--target", "ptx", "--arch", "sm_80", "-o", str(out)]) == 0
    text = out.read_text()
    assert ".entry" in text and ".target sm_80" in text
    assert main(["compile", "gru", "--emit", "ir", "--hidden", "4"]) == 0
    assert 'define void @"forward"' in capsys.readouterr().out
    if shutil.which("ptxas"):
        import subprocess
        r = subprocess.run(["ptxas", "--gpu-name", "sm_80", str(out), "-o", str(tmp_path / "a.o")],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


def test_train_save_and_resume(tmp_path, capsys):
    ckpt = str(tmp_path / "gru.ckpt")
    assert main(["train", "gru", "--epochs", "2", "--N", "32", "--T", "20", "--hidden", "8", "--save", ckpt]) == 0
    out = capsys.readouterr().out
    before = float(out.split("before: held-out loss ")[1].split()[0])
    after = float(out.split("after:  held-out loss ")[1].split()[0])
    assert after < before
    assert main(["train", "--resume", ckpt, "--epochs", "1", "--N", "32", "--T", "20", "--k1", "5", "--k2", "10"]) == 0
    assert "resumed" in capsys.readouterr().out
