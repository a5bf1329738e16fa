"""What a probe of the command line and the inspection API found taken silently or ending in a
traceback: each is now one line naming the mistake (every case fails on the code before)."""
import numpy as np
import pytest
import sympy as sp

import rnncomp as rc
from rnncomp.cli import main
from rnncomp.errors import ArgumentError, CellError


@pytest.fixture
def files(tmp_path):
    stack = tmp_path / "stack.py"
    stack.write_text("import rnncomp as rc\nmodel = rc.Stack([rc.Bidirectional(rc.cells.gru(1, 8, 4)), "
                     "rc.cells.elman(8, 8, 1)])\n")
    broken = tmp_path / "broken.py"
    broken.write_text("import rnncomp as rc\nx = 1\nraise RuntimeError('boom in user file')\n")
    return stack, broken, tmp_path


@pytest.mark.parametrize("argv, message", [
    (["compile", "{stack}"], "compile writes one cell's code; stack\\(bidirectional\\(gru\\), elman\\) is a composition"),
    (["inspect", "gru", "--flow", "--svg", "{dir}/f.svg"], "--svg draws a graph; the --flow plot is written with --png"),
    (["train", "gru", "--task", "adding", "--T", "1"], "the adding task needs T >= 2"),
    (["inspect", ":cell"], "':cell' is neither a zoo cell .*, file.py\\[:name\\] nor module:name"),
    (["inspect", ".cells:x"], "'.cells:x' is neither a zoo cell"),
    (["compile", "{dir}/g.ckpt"], "g.ckpt' is neither a zoo cell"),
    (["inspect", "{broken}"], "broken.py, line 3: RuntimeError: boom in user file"),
    (["compile", "gru", "-o", "{dir}/no_such_dir/"], "give a file name, not a folder"),
    (["train", "gru", "--memory", "binomial:abc"], "binomial:S takes a whole number, got 'abc'"),
    (["train", "gru", "--memory", "binomial"], "binomial:S needs S, the number of checkpoint slots"),
    (["train", "gru", "--memory", "every:1.5"], "every:N takes a whole number, got '1.5'"),
    (["train", "gru", "--k2", "5"], "--k2 5 needs --k1"),
    (["compile", "gru", "--arch", "sm_90"], "--arch sm_90 is for --target ptx"),
    (["inspect", "gru", "--latex", "--markdown"], "--latex and --markdown: give one"),
    (["inspect", "gru", "--threads", "2"], "--threads is for --profile"),
    (["inspect", "gru", "--budget", "10MB"], "--budget is for --memory"),
    (["inspect", "gru", "--dot", "step", "--k", "3"], "--k is for --dot unfolded"),
    (["inspect", "gru", "--detail", "compact"], "--detail is for --dot, --png or --svg"),
    (["train", ""], "the cell is an empty name"),
])
def test_mistakes_are_one_line_refusals(argv, message, files):
    stack, broken, d = files
    argv = [a.format(stack=stack, broken=broken, dir=d) for a in argv]
    with pytest.raises(SystemExit, match=message) as e:
        main(argv)
    assert "\n" not in str(e.value.code)


def test_the_options_still_work_with_what_they_belong_to(capsys):
    assert main(["inspect", "elman", "--dot", "unfolded", "--k", "2"]) == 0
    assert main(["inspect", "elman", "--dot", "step", "--detail", "compact"]) == 0
    assert "digraph" in capsys.readouterr().out
    assert main(["inspect", "elman", "--memory", "--budget", "1MB", "--T", "50"]) == 0


COMP = rc.Stack([rc.cells.lstm(3, 4, 4), rc.cells.gru(4, 4, 2)])


@pytest.mark.parametrize("call", [
    lambda: rc.inspect.cost(COMP, 10, 2, "float32"),
    lambda: rc.inspect.gradient_flow(COMP, {}, np.ones((3, 2, 3)), np.ones((3, 2, 2))),
    lambda: __import__("rnncomp.inspect.memory", fromlist=["x"]).memory_report(COMP, 10, 2, "float32"),
    lambda: __import__("rnncomp.inspect.profile", fromlist=["x"]).profile(COMP, T=5, B=2),
], ids=["cost", "gradient_flow", "memory_report", "profile"])
def test_the_inspection_api_refuses_a_composition_by_name(call):
    with pytest.raises(CellError, match=r"looks at one cell; stack\(lstm, gru\) is a composition"):
        call()


def test_inspection_sizes_and_cells_are_checked():
    from rnncomp.inspect.memory import memory_report
    with pytest.raises(ArgumentError, match="memory_report: T must be a positive integer, got 0"):
        memory_report(rc.cells.gru(3, 4, 2), 0, 4, "float32", "1MB")
    with pytest.raises(ArgumentError, match="cost: T must be a positive integer, got 10.5"):
        rc.inspect.cost(rc.cells.gru(3, 4, 2), 10.5, 2)
    with pytest.raises(ArgumentError, match="cost: dtype must be float32 or float64, got float16"):
        rc.inspect.cost(rc.cells.gru(3, 4, 2), 10, 2, "float16")
    for f in (rc.compile, rc.explain):
        with pytest.raises(ArgumentError, match=r"the cell must be an rc.Cell or a composition .* got str; a zoo "
                                                r"cell by name is rc.cells.get\('gru'\)"):
            f("gru")
    with pytest.raises(ArgumentError, match="wrt= and d_outputs= shape the BPTT listing; algorithm='rtrl'"):
        rc.explain(rc.cells.gru(3, 4, 2), wrt=["x"], algorithm="rtrl")


def test_a_parameter_of_another_cell_is_named():
    other = rc.Cell("other")
    Wo = other.param("W", (4, 4))
    other.state("h", 4)
    cell = rc.Cell("mine")
    x, h = cell.input("x", 4), cell.state("h", 4)
    with pytest.raises(CellError, match=r"cell 'mine', update of state 'h': W @ \(...\) multiplies by 'W', which is "
                                        r"not a matrix parameter of cell 'mine' \(one of another cell\?\)"):
        cell.update(h, sp.tanh(Wo @ h + x))
    lone = rc.Cell("lone")
    W2 = lone.param("W", (4, 4))
    with pytest.raises(CellError, match=r"unknown symbol 'h' \(declared: W\); W is a parameter of cell 'lone': is "
                                        "the vector of another cell\\?"):
        W2 @ h


def test_a_cell_no_call_could_run_is_refused_when_compiled():
    # it compiled, and then no call could say T (no input or target to read it from)
    gen = rc.Cell("gen")
    h = gen.state("h", 4, init="learn")
    gen.update(h, sp.tanh(gen.param("U", (4, 4)) @ h))
    gen.loss(rc.vsum(h.new ** 2))
    with pytest.raises(CellError, match="cell 'gen' reads no input and no target, so a call could not say how "
                                        "many steps to run"):
        rc.compile(gen, backend="native")


def test_an_initialiser_of_the_wrong_shape_names_its_cell_and_parameter():
    c = rc.Cell("c")
    x, h = c.input("x", 4), c.state("h", 4)
    p = c.param("P", 4, init=lambda rng, shape: np.ones(3))
    c.update(h, h * p + x)
    with pytest.raises(CellError, match=r"cell 'c', parameter 'P': initialiser .* returned shape \(3,\), expected "
                                        r"\(4,\)"):
        c.init_params()


def test_the_cost_table_names_stored_values_as_the_listings_do():
    table = rc.inspect.cost(rc.cells.gru(3, 4, 2), 10, 2, "float32").table()
    stored = next(line for line in table.splitlines() if "stored for BPTT" in line)
    assert "a₁[t] (4)" in stored and "a4[t]" not in stored  # rc.explain's name for h[t-1]*r[t]
    assert "a₁[t] = h[t-1]*r[t]" in str(rc.explain(rc.cells.gru(3, 4, 2)))


def test_explain_of_a_cell_without_a_loss_seeds_its_outputs_cotangents():
    # it printed a backward step whose every adjoint is 0 (δ⁺h[T] = 0 and nothing else)
    c = rc.Cell("noloss")
    x, h = c.input("x", 2), c.state("h", 3)
    c.update(h, sp.tanh(c.param("W", (3, 2)) @ x + c.param("U", (3, 3)) @ h))
    c.output("y", c.param("V", (1, 3)) @ h.new)
    text = str(rc.explain(c))
    assert "δh[t] = δ⁺h[t] + Vᵀ·δyᵉˣᵗ[t]" in text and "∂L/∂V" in text
    assert text == str(rc.explain(c, d_outputs=True))


def test_a_reader_that_leaves_early_gets_no_message():
    """`rnncomp compile lstm | head -1`: stdout's reader closed before the listing was written.
    That printed "rnncomp: Broken pipe" (found by a newcomer's walk-through): now nothing, and
    exit status 1 as Python's docs advise (the command stopped there: `train | head -3` ends
    the training, which is no success)."""
    import os
    import subprocess
    import sys
    r, w = os.pipe()
    proc = subprocess.Popen([sys.executable, "-m", "rnncomp", "compile", "lstm"], stdout=w, stderr=subprocess.PIPE)
    os.close(w)
    os.close(r)  # the reader is gone before the child writes its first line
    err = proc.communicate(timeout=120)[1].decode()
    assert proc.returncode == 1 and err == "", (proc.returncode, err)


def test_a_text_that_is_not_utf8_is_refused_not_read_with_replacement(tmp_path):
    # latin-1 é, ï, à, ç were each read as U+FFFD: one letter for four, silently (found by a probe)
    f = tmp_path / "latin1.txt"
    f.write_bytes(("caf\xe9 na\xefve \xe0 la fa\xe7on " * 200).encode("latin-1"))
    with pytest.raises(SystemExit, match=r"latin1.txt is not UTF-8 text \(byte 0xe9 at offset 3\); convert it"):
        main(["train", "--task", str(f), "--T", "10", "--batch", "2", "--epochs", "0"])


def test_a_text_whose_one_hot_data_does_not_fit_says_so(tmp_path, monkeypatch):
    # a CJK text of 5,000 distinct characters ended in numpy's _ArrayMemoryError traceback
    # (300 KB of text: 11 GiB of one-hot rows; found by a probe)
    from rnncomp.train.text import CharVocab

    def no_memory(self, ids, dtype="float32"):
        raise MemoryError("Unable to allocate")
    monkeypatch.setattr(CharVocab, "one_hot", no_memory)
    f = tmp_path / "cjk.txt"
    f.write_text("".join(chr(0x4e00 + i % 50) for i in range(2000)), encoding="utf-8")
    with pytest.raises(SystemExit, match=r"has 50 distinct characters: as one-hot rows its 2000 characters take "
                                         r"0\.0 GiB .* train on a shorter text or one with fewer distinct"):
        main(["train", "--task", str(f), "--T", "10", "--batch", "2", "--epochs", "0"])


def test_a_text_task_refuses_a_cell_whose_loss_is_not_a_cross_entropy(tmp_path):
    # a squared-error cell of the text's sizes printed its loss as "0.318 bits per character" (found by a probe)
    f, cell = tmp_path / "t.txt", tmp_path / "mse.py"
    f.write_text("abcab cba " * 100, encoding="utf-8")
    cell.write_text("import sympy as sp, rnncomp as rc\ncell = rc.cells.elman(4, 3, 4)\n")
    with pytest.raises(SystemExit, match=r"the loss of cell 'elman' has no log in it .*rc.softmax_xent"):
        main(["train", str(cell), "--task", str(f), "--T", "5", "--batch", "2", "--epochs", "0"])


def test_resume_of_a_numpy_run_with_memory_is_refused_by_name(tmp_path):
    # --memory on --resume of a run saved on the numpy backend: TypeError "backend 'numpy' takes no
    # options" from rc.compile (the check assumed the saved backend was native; found by a probe)
    ckpt = str(tmp_path / "n.ckpt")
    assert main(["train", "elman", "--backend", "numpy", "--N", "8", "--T", "5", "--epochs", "1", "--save", ckpt]) == 0
    with pytest.raises(SystemExit, match=r"for the native backend; .*n.ckpt trains on the numpy backend "
                                         r"\(--backend native moves it\)"):
        main(["train", "--resume", ckpt, "--memory", "budget:1MB", "--epochs", "0"])
    assert main(["train", "--resume", ckpt, "--memory", "budget:1MB", "--backend", "native", "--epochs", "0"]) == 0


def test_a_text_of_one_character_prints_no_negative_zero(tmp_path, capsys):
    # its character-frequency baseline is -0 bits, printed "-0.000" (found by a probe)
    f = tmp_path / "a.txt"
    f.write_text("a" * 2000, encoding="utf-8")
    assert main(["train", "--task", str(f), "--T", "10", "--batch", "2", "--epochs", "0"]) == 0
    out = capsys.readouterr().out
    assert "character frequencies 0.000 bits" in out and "-0.000" not in out
