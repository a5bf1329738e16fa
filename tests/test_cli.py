"""The command line: the demo passes its own checks; inspect reads zoo cells and files."""
import textwrap

import numpy as np
import pytest

from rnncomp.cli import main
from rnncomp.train import Truncated


def test_demo_succeeds(capsys):
    import pathlib
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "OK: worst relative error" in out
    assert "δh[t-1] =" in out
    assert "native backend" in out
    losses = [float(line.split("training loss ")[1].split()[0]) for line in out.splitlines()
              if "training loss" in line]
    assert len(losses) == 8 and losses[-1] < 0.1 * losses[0]  # the loss falls
    assert "NumPy reference" in out
    png = pathlib.Path(out.split("learning curve: ")[1].split()[0])
    ckpt = pathlib.Path(out.split("checkpoint: ")[1].split()[0])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and ckpt.exists()
    # the printed resume command continues the demo's run on the demo's data: the held-out loss
    # it starts from is the demo's last one (it said "no task recorded" and trained on other
    # data; found by an adversarial probe)
    resume = out.split("(resume: ")[1].split(")")[0].split()
    assert resume[:3] == ["rnncomp", "train", "--resume"] and main(resume[1:] + ["--epochs", "0"]) == 0
    again = capsys.readouterr().out
    assert "task sine (T=50)" in again and "on sine (T=50, 576 sequences)" in again
    last = out.split("held-out ")[-1].split()[0]
    assert again.split("before: held-out loss ")[1].split()[0] == last


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


def test_resume_continues_with_the_saved_batch_and_shuffle_and_takes_k1(tmp_path, capsys):
    # --resume trained on with --batch 32 whatever the run had used, from the shuffle of epoch 1,
    # and ignored --k1/--k2 (found by a probe): now 2 + 2 epochs are 4 epochs bit for bit
    from rnncomp.train import Trainer
    a, b = str(tmp_path / "a.ckpt"), str(tmp_path / "b.ckpt")
    run = ["train", "gru", "--N", "24", "--T", "10", "--hidden", "4", "--batch", "7", "--dtype", "float64"]
    assert main(run + ["--epochs", "2", "--save", a]) == 0
    assert main(["train", "--resume", a, "--epochs", "2"]) == 0
    assert main(run + ["--epochs", "4", "--save", b]) == 0
    ta, tb = Trainer.load(a), Trainer.load(b)
    assert ta.step_count == tb.step_count == 12 and ta.info == tb.info
    np.testing.assert_array_equal(ta.flat, tb.flat)
    assert ta.bptt is None
    assert main(["train", "--resume", a, "--epochs", "0", "--k1", "5", "--k2", "10"]) == 0
    assert Trainer.load(a).bptt == Truncated(5, 10)
    assert main(["train", "--resume", a, "--epochs", "0"]) == 0  # kept when not given again
    assert Trainer.load(a).bptt == Truncated(5, 10)
    capsys.readouterr()


def test_train_save_and_resume(tmp_path, capsys):
    ckpt = str(tmp_path / "gru.ckpt")
    assert main(["train", "gru", "--epochs", "2", "--N", "32", "--T", "20", "--hidden", "8", "--save", ckpt]) == 0
    out = capsys.readouterr().out
    before = float(out.split("before: held-out loss ")[1].split()[0])
    after = float(out.split("after:  held-out loss ")[1].split()[0])
    assert after < before
    from rnncomp.train import Trainer
    saved = Trainer.load(ckpt).step_count
    assert main(["train", "--resume", ckpt, "--epochs", "1", "--N", "32", "--T", "20", "--k1", "5", "--k2", "10"]) == 0
    out = capsys.readouterr().out
    assert "resumed" in out and f"continue: rnncomp train --resume {ckpt}" in out
    # the continued run is saved back where it came from (it was lost without --save)
    assert Trainer.load(ckpt).step_count > saved


def test_inspect_memory_prints_the_chosen_schedule(capsys):
    assert main(["inspect", "lstm", "--memory", "--T", "1000", "--B", "32", "--budget", "1MB"]) == 0
    out = capsys.readouterr().out
    assert "T=1000, B=32, float32" in out
    for name in ("store all", "Every(√T)", "Budget(1000000)", "recomputed", "predicted"):
        assert name in out
    used = int(out.split("  uses ")[1].split()[0])
    assert used <= 1_000_000
    assert "first actions: advance 0→" in out
    with pytest.raises(SystemExit, match=r"below the minimum for T=1000, B=32: \d+ bytes"):
        main(["inspect", "gru", "--memory", "--budget", "100"])


def test_train_default_task_just_works(capsys):
    assert main(["train", "gru", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "on sine (T=50, 256 sequences)" in out and "after:  held-out loss" in out


def test_train_charlm_on_a_text_file(tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat. " * 200)
    ckpt, png = str(tmp_path / "c.ckpt"), tmp_path / "curve.png"
    argv = ["train", "gru", "--task", str(text), "--epochs", "3", "--hidden", "16", "--T", "20",
            "--batch", "8", "--lr", "0.02", "--save", ckpt, "--plot", str(png)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    before = float(out.split("before: held-out ")[1].split()[0])
    after = float(out.split("after:  held-out ")[1].split()[0])
    assert after < before - 1.0  # bits per character
    assert "sample: the" in out and png.read_bytes()[:4] == b"\x89PNG"
    assert main(["train", "--resume", ckpt, "--task", str(text), "--epochs", "1", "--T", "20", "--batch", "8"]) == 0
    assert "resumed" in capsys.readouterr().out
    other = tmp_path / "other.txt"
    other.write_text("0123456789" * 100)
    with pytest.raises(SystemExit, match="needs one input and one target of size 10"):
        main(["train", "--resume", ckpt, "--task", str(other), "--T", "20", "--batch", "8"])


def test_train_charlm_reads_the_shipped_text(capsys):
    assert main(["train", "gru", "--task", "charlm", "--epochs", "0", "--hidden", "8"]) == 0
    out = capsys.readouterr().out
    assert "Pride and Prejudice" in out and "74 distinct" in out and "(uniform: 6.209)" in out
    with pytest.raises(SystemExit, match="sine, adding, charlm or a text file"):
        main(["train", "gru", "--task", "no_such_file.txt"])


def test_inspect_memory_columns_line_up_with_a_long_plan_name(capsys):
    """A Budget plan's long name pushed the rest of its row out of line (a newcomer's find):
    every row's memory column ends where the header's does."""
    assert main(["inspect", "lstm", "--memory", "--budget", "10MB"]) == 0
    lines = capsys.readouterr().out.splitlines()
    head = next(ln for ln in lines if ln.lstrip().startswith("schedule"))
    end = head.index("memory") + len("memory")
    rows = [ln for ln in lines[lines.index(head) + 1:] if "MiB" in ln or "KiB" in ln][:3]
    assert len(rows) == 3 and all(ln[:end].endswith("iB") for ln in rows), (head, rows)


def test_resume_of_a_read_only_checkpoint_asks_for_save_before_training(tmp_path, monkeypatch):
    """--resume F saves back to F: a read-only F (a shared model) would train an epoch and then
    fail on 'Permission denied' (found by the review); it is refused first, naming --save."""
    import os
    import pytest
    from rnncomp import cli_train
    ckpt = str(tmp_path / "gru.ckpt")
    assert main(["train", "gru", "--epochs", "1", "--N", "32", "--T", "10", "--hidden", "4", "--save", ckpt]) == 0
    real = os.access
    monkeypatch.setattr(cli_train.os, "access", lambda p, mode: False if p == ckpt else real(p, mode))
    with pytest.raises(SystemExit, match="read-only here: give --save FILE"):
        main(["train", "--resume", ckpt, "--epochs", "1"])
    assert main(["train", "--resume", ckpt, "--epochs", "1", "--save", str(tmp_path / "other.ckpt")]) == 0
