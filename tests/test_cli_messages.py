"""The command line answers mistakes with a message naming the problem, never a traceback;
`rnncomp train --resume` continues the saved run; every task prints its trivial baseline
(issue #18)."""
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from rnncomp.cli import main

CUSTOM = textwrap.dedent("""
    import sympy as sp, rnncomp as rc
    cell = rc.Cell("mine")
    x, h = cell.input("x", 2), cell.state("h", 3)
    cell.update(h, sp.tanh(cell.param("W", (3, 2)) @ x + h / 2))
    y = cell.output("y", cell.param("V", (1, 3)) @ h.new)
    cell.loss((y - cell.target("t", 1)) ** 2 / 2)
""")


def test_bare_command_prints_help_and_version(capsys):
    assert main([]) == 0
    assert "usage: rnncomp" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    from rnncomp import __version__
    assert capsys.readouterr().out.strip() == f"rnncomp {__version__}"
    r = subprocess.run([sys.executable, "-m", "rnncomp", "--version"], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert r.returncode == 0 and r.stdout.strip() == f"rnncomp {__version__}"


@pytest.mark.parametrize("argv, message", [
    (["inspect", "nofile.py"], "no file nofile.py"),
    (["train", "--resume", "nofile.ckpt"], "nofile.ckpt: no such checkpoint file"),
    (["inspect", "lstm", "--png", "nodir/x.png"], "cannot write nodir/x.png: folder nodir does not exist"),
    (["train", "gru", "--save", "nodir/g.ckpt"], "cannot write nodir/g.ckpt"),
    (["compile", "lstm", "--target", "ptx", "--arch", "sm_50"], "arch sm_50 is too old"),
])
def test_mistakes_are_messages(argv, message):
    with pytest.raises(SystemExit, match=message):
        main(argv)


@pytest.mark.parametrize("argv, message", [
    (["train", "gru", "--T", "-5"], "--T: '-5' is not a positive integer"),
    (["train", "gru", "--T", "0"], "--T: '0' is not a positive integer"),      # was: silently 50
    (["train", "gru", "--batch", "0"], "--batch: '0' is not a positive integer"),
    (["train", "gru", "--hidden", "0"], "--hidden: '0' is not a positive integer"),  # was: silently 32
    (["train", "gru", "--lr", "0"], "--lr: '0' is not a positive number"),     # was: silently 1e-2
    (["train", "gru", "--epochs", "-1"], "--epochs: '-1' is not an integer >= 0"),
    (["inspect", "gru", "--T", "0", "--cost"], "--T: '0' is not a positive integer"),
])
def test_bad_numbers_are_refused_not_replaced(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_custom_cells_keep_their_sizes(tmp_path, monkeypatch, capsys):
    (tmp_path / "mymod_cli_cell.py").write_text(CUSTOM)
    monkeypatch.chdir(tmp_path)
    assert main(["inspect", "mymod_cli_cell:cell"]) == 0          # found in the current folder
    assert "backward step of 'mine'" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--hidden set the sizes of a zoo cell"):
        main(["inspect", "mymod_cli_cell.py", "--hidden", "8"])   # was: silently ignored
    with pytest.raises(SystemExit, match="--hidden sets the size of a zoo cell"):
        main(["train", "mymod_cli_cell.py", "--hidden", "8"])
    with pytest.raises(SystemExit, match=r"task sine needs a cell with one input of size 1 .* inputs \[2\]"):
        main(["train", "mymod_cli_cell.py", "--task", "sine"])


def test_a_cell_file_imports_its_neighbours(tmp_path, capsys):
    """`rnncomp inspect dir/FILE.py` runs FILE.py as `python dir/FILE.py` would: a helper module
    next to it imports (it was a ModuleNotFoundError: only `module:name` put a folder on the path)."""
    (tmp_path / "helper_cli_cell.py").write_text(CUSTOM)
    (tmp_path / "uses_helper.py").write_text("from helper_cli_cell import cell\n")
    assert main(["inspect", str(tmp_path / "uses_helper.py")]) == 0
    assert "backward step of 'mine'" in capsys.readouterr().out
    assert str(tmp_path) not in sys.path  # the folder is on the path only while the file runs


def test_resume_continues_the_saved_task_and_refuses_another_cell(tmp_path, capsys):
    ckpt = str(tmp_path / "gru.ckpt")
    assert main(["train", "gru", "--task", "adding", "--T", "12", "--N", "64", "--hidden", "6",
                 "--epochs", "1", "--save", ckpt]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", ckpt, "--epochs", "1"]) == 0      # was: a traceback
    out = capsys.readouterr().out
    assert "task adding (T=12)" in out and "on adding (T=12, 64 sequences)" in out
    with pytest.raises(SystemExit, match="holds cell 'gru', not 'lstm'"):
        main(["train", "lstm", "--resume", ckpt])                       # was: trained the GRU
    with pytest.raises(SystemExit, match="trained on 'adding', not 'sine'"):
        main(["train", "--resume", ckpt, "--task", "sine"])
    with pytest.raises(SystemExit, match="6 hidden units"):
        main(["train", "--resume", ckpt, "--hidden", "7"])


def test_the_readme_adding_command_beats_its_trivial_baseline(capsys):
    """The README's command ended at 0.082 against the always-1 baseline's 0.083 and said nothing."""
    from rnncomp.train.tasks import adding
    assert main(["train", "gru", "--task", "adding", "--T", "100", "--epochs", "5"]) == 0
    out = capsys.readouterr().out
    x, y, m = adding(T=100, N=4096, seed=0)                      # the command's data; an eighth held out
    yt, mt = y[:, :512, 0], m[:, :512]
    c = y[:, 512:, 0][m[:, 512:] > 0].mean()                     # the best constant guess (≈ 1)
    base = (((c - yt) ** 2 / 2) * mt).sum() / mt.sum()
    printed = float(out.split("trivial baseline (predicting the mean target): held-out loss ")[1].split()[0])
    assert printed == pytest.approx(base, abs=1e-5)
    after = float(out.split("after:  held-out loss ")[1].split()[0])
    assert after < 0.1 * base


def test_sine_and_text_print_their_baselines(tmp_path, capsys):
    from rnncomp.train.tasks import sine
    assert main(["train", "gru", "--epochs", "0"]) == 0
    out = capsys.readouterr().out
    x, y, _ = sine(T=50, N=256, seed=0)
    base = float(((x[:, :32] - y[:, :32]) ** 2).mean() / 2)     # repeat the current value
    printed = float(out.split("(repeating the current value): held-out loss ")[1].split()[0])
    assert printed == pytest.approx(base, abs=1e-5)
    text = tmp_path / "t.txt"
    text.write_text("abcabcabd" * 300)
    assert main(["train", "gru", "--task", str(text), "--epochs", "0", "--T", "10", "--batch", "4",
                 "--hidden", "4"]) == 0
    out = capsys.readouterr().out
    assert f"uniform {np.log2(4):.3f}" in out and "character frequencies" in out


def test_train_flags_reach_the_trainer_and_inspect_reads_the_checkpoint(tmp_path, capsys):
    import rnncomp as rc
    ckpt = str(tmp_path / "g.ckpt")
    assert main(["train", "gru", "--epochs", "1", "--N", "16", "--T", "10", "--hidden", "4", "--optimizer", "sgd",
                 "--clip", "0", "--memory", "every:3", "--dtype", "float64", "--threads", "1", "--save", ckpt]) == 0
    tr = rc.Trainer.load(ckpt)
    assert (type(tr.optimizer), tr.clip_norm, tr.dtype, tr.model.memory, tr.model.threads) == \
        (rc.SGD, None, np.float64, rc.Every(3), 1)
    capsys.readouterr()
    assert main(["inspect", ckpt]) == 0                            # its equations
    assert "backward step of 'gru'" in capsys.readouterr().out
    assert main(["inspect", ckpt, "--flow", "--T", "8"]) == 0      # its flow, with its parameters
    out = capsys.readouterr().out
    assert "trained parameters of" in out and "gradient flow through time of 'gru': T = 8" in out
    with pytest.raises(SystemExit, match="--lr: .* holds its optimizer"):
        main(["train", "--resume", ckpt, "--lr", "0.5"])          # was: silently ignored
    with pytest.raises(SystemExit, match="--memory 'most'"):
        main(["train", "gru", "--memory", "most"])
    with pytest.raises(SystemExit, match="--memory: cell 'gru': memory budget of 10 bytes is below the minimum"):
        main(["train", "gru", "--memory", "budget:10"])


MADE = {"stack.py": "import rnncomp as rc\nmodel = rc.Stack([rc.cells.gru(1, 8, 4), rc.cells.elman(4, 8, 1)])\n",
        "masked.py": CUSTOM.replace("2)", "1)").replace("@ x + h / 2", "@ x + cell.const('M', np.eye(3) / 2) @ h")
                                 .replace("import sympy", "import numpy as np, sympy"),
        "empty.txt": ""}
FAST = ["--epochs", "1", "--N", "32", "--T", "10"]


@pytest.mark.parametrize("argv, message", [
    (["train", "gru", "--k1", "5", "--k2", "2", *FAST], "--k1/--k2: Truncated(k1=5, k2=2): need integers k2 >= k1"),
    (["train", "gru", "--k1", "3", "--k2", "4", *FAST], "--k1/--k2: Truncated(k1=3, k2=4): k2 must be a multiple"),
    (["inspect", "gru", "--png", "graph.txt"], "--png graph.txt: the file name must end in .png"),
    (["inspect", "gru", "--svg", "graph.png"], "--svg graph.png: the file name must end in .svg"),  # was: a PNG
    (["inspect", "gru", "--flow", "--png", "flow.txt"], "--png flow.txt: the file name must end in .png"),
    (["train", "gru", "--plot", "curve.txt", *FAST], "--plot curve.txt: the file name must end in .png or .svg"),
    (["inspect", "gru", "--dot", "unfolded", "--detail", "compact"], "--dot/--detail: detail='compact' is drawn"),
    (["inspect", "gru", "--memory", "--budget", "1B"], "--budget: memory budget of 1 bytes is below the minimum"),
    (["train", "gru", "--memory", "budget:1B", *FAST], "--memory: cell 'gru': memory budget of 1 bytes is below"),
    (["train", "stack.py", "--memory", "budget:1B", *FAST], "--memory: cell 'gru': memory budget of 1 bytes is below"),
    (["train", "masked.py", "--memory", "budget:1B", *FAST], "--memory: cell 'mine': memory budget of 1 bytes is below"),
    (["train", "gru", "--task", "empty.txt"], "empty.txt has 0 characters"),
])
def test_an_option_the_library_refuses_is_named_without_a_traceback(argv, message, tmp_path, monkeypatch):
    """Raw ValueErrors from Truncated, render, the memory planner (on a Stack or a cell with
    constants, where the early check was skipped) and others (found by an adversarial probe)."""
    for name, text in MADE.items():
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(argv)
    said = str(e.value.code)
    assert said.startswith("rnncomp: ") and message in said and "\n" not in said
    assert not (tmp_path / argv[-1]).exists() or argv[-1] in MADE   # refused before any picture was drawn


@pytest.mark.parametrize("argv", [["train", "gru", "--seed", "-1"], ["train", "gru", "--clip", "nan"],
                                  ["inspect", "gru", "--flow", "--seed", "-1"]])
def test_bad_numbers_for_seed_and_clip_are_refused(argv, capsys):
    """--seed -1 ended in numpy's ValueError; --clip nan trained without clipping."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and f"{argv[-2]}: '{argv[-1]}' is not" in capsys.readouterr().err


def test_an_option_is_named_but_an_internal_error_keeps_its_traceback():
    from rnncomp.cli_common import option
    from rnncomp.errors import ArgumentError
    with pytest.raises(SystemExit, match="^rnncomp: --k1 5: too small$"):
        with option("--k1 5"):
            raise ArgumentError("too small")
    with pytest.raises(ValueError, match="a bug"):           # not the user's mistake: not reworded
        with option("--k1 5"):
            raise ValueError("a bug")


@pytest.mark.parametrize("argv, message", [
    (["train", "gru", "--N", "1"], "--N 1: the task holds out 1 of 1 sequences (an eighth, at least one) and "
                                   "trains on the rest: it needs --N 2 or more"),
    (["train", "gru", "--task", "adding", "--N", "1"], "--N 1: the task holds out"),
])
def test_a_split_with_nothing_to_train_on_is_refused(argv, message):
    """`train gru --N 1` trained on nothing, printed `loss nan` and exited 0 (found by an adversarial probe)."""
    with pytest.raises(SystemExit) as e:
        main(argv + ["--T", "10", "--epochs", "2"])
    said = str(e.value.code)
    assert said.startswith("rnncomp: --N 1: ") and message in said


def test_the_smallest_split_trains_and_a_text_without_held_out_windows_is_refused(tmp_path, capsys):
    assert main(["train", "gru", "--N", "2", "--T", "10", "--epochs", "1"]) == 0
    assert "loss nan" not in capsys.readouterr().out
    (tmp_path / "t.txt").write_text("abcd")
    with pytest.raises(SystemExit, match="t.txt has 4 characters, too few"):
        main(["train", "gru", "--task", str(tmp_path / "t.txt"), "--T", "1", "--batch", "1", "--epochs", "1"])


def test_resume_keeps_the_saved_seed_of_the_data(tmp_path, capsys):
    """--resume made its data with --seed's default 0 whatever seed the run was saved with."""
    ckpt = str(tmp_path / "s.ckpt")
    assert main(["train", "gru", "--seed", "3", "--N", "16", "--T", "10", "--hidden", "4", "--epochs", "1",
                 "--save", ckpt]) == 0
    after = capsys.readouterr().out.split("after:  held-out loss ")[1].split()[0]
    assert main(["train", "--resume", ckpt, "--epochs", "0"]) == 0
    assert capsys.readouterr().out.split("before: held-out loss ")[1].split()[0] == after


@pytest.mark.parametrize("spec, message", [
    ("two.py:nope", r"^rnncomp: two.py has no 'nope'; its cells: a, b$"),
    ("two.py", r"^rnncomp: 'two.py' must hold exactly one Cell, rc.Stack or rc.Bidirectional \(found 2: a, b\); "
               r"name one with two.py:NAME$"),
    ("rnncomp.cells:elman", r"^rnncomp: 'rnncomp.cells:elman' is a function, not a Cell, rc.Stack or "
                            r"rc.Bidirectional \(make the cell in a file, cell = elman\(...\), and give FILE.py\)$"),
    ("bad.py", r"^rnncomp: bad.py, line 2: '\(' was never closed$"),
])
def test_a_named_cell_that_is_not_there_or_a_file_that_does_not_parse_is_a_message(spec, message, tmp_path,
                                                                                     monkeypatch):
    """Found by an adversarial probe: FILE.py:NAME naming nothing said "found 0; name it with
    FILE.py:NAME" (it was named), and a syntax error in the file was a 27-line traceback."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "two.py").write_text("import rnncomp as rc\na = rc.cells.elman(2, 3, 1)\nb = rc.cells.gru(2, 3, 1)\n")
    (tmp_path / "bad.py").write_text("import rnncomp as rc\ncell = rc.cells.elman(2, 3, 1\n")
    with pytest.raises(SystemExit) as exc:
        main(["inspect", spec])
    assert re.match(message, str(exc.value)), str(exc.value)


def test_compile_refuses_emit_for_ptx_and_ends_its_text_with_a_newline(capsys):
    """Found by an adversarial probe: --emit asm with --target ptx was ignored without a word,
    and the IR written to stdout had no final newline."""
    with pytest.raises(SystemExit, match=r"--emit asm is for --target native; --target ptx writes PTX"):
        main(["compile", "elman", "--target", "ptx", "--emit", "asm"])
    assert main(["compile", "elman"]) == 0
    out = capsys.readouterr().out
    assert "define" in out and out.endswith("\n")


def test_sizes_given_to_a_factory_get_the_factorys_message_not_a_cells():
    """Found by an adversarial probe: with --hidden, module:factory said it "declares its own"
    sizes; without, that it is a function: now the same message, the one that is true."""
    for argv in (["inspect", "rnncomp.zoo_matrix:delta_rule", "--hidden", "5"],
                 ["inspect", "rnncomp.zoo_matrix:delta_rule"]):
        with pytest.raises(SystemExit, match=r"'rnncomp.zoo_matrix:delta_rule' is a function, not a Cell"):
            main(argv)


def test_ctrl_c_is_a_line_and_status_130_not_a_traceback(tmp_path):
    """A real SIGINT while a command runs (here: while it loads the user's cell file)."""
    import signal
    slow = tmp_path / "slow.py"
    slow.write_text("import sys, time\nimport rnncomp as rc\nprint('loading', file=sys.stderr, flush=True)\n"
                    "time.sleep(60)\ncell = rc.cells.elman(2, 3, 1)\n")
    proc = subprocess.Popen([sys.executable, "-m", "rnncomp", "inspect", f"{slow}:cell"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr.readline().strip() == "loading"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().endswith("rnncomp: interrupted")
