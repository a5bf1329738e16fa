"""The docs' code blocks run, and the module doctests pass."""
import doctest
import importlib
import pathlib
import re
import shlex
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


DOCS = ["README.md", "examples/README.md"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))


def _blocks(lang: str):
    """(file, number, code) of every fenced block of ``lang`` in the docs, indented ones
    (inside a list) dedented."""
    out = []
    for doc in DOCS:
        text = (ROOT / doc).read_text()
        found = re.findall(r"^([ \t]*)```" + lang + r"\n(.*?)^\1```", text, re.S | re.M)
        out += [(doc, i + 1, textwrap.dedent(code)) for i, (_, code) in enumerate(found)]
    return out


PYTHON_BLOCKS = _blocks("python")


def test_the_docs_have_python_blocks():
    assert {doc for doc, _, _ in PYTHON_BLOCKS} >= {"README.md", "docs/dsl.md", "docs/memory.md"}


@pytest.mark.parametrize("doc, n, code", PYTHON_BLOCKS, ids=[f"{d}#{n}" for d, n, _ in PYTHON_BLOCKS])
def test_every_python_block_runs_by_itself(doc, n, code, tmp_path, monkeypatch):
    """Each block is complete, as a reader would paste it: a fresh namespace, an empty folder.
    (README's 'Run it' block failed: cell.init_params() is float64, the model float32.)"""
    for framework in ("torch", "jax"):  # optional: pip install 'rnncomp[torch,jax]' (the test extra has them)
        if re.search(rf"^\s*(import|from) {framework}\b", code, re.M):
            pytest.importorskip(framework, reason=f"{doc} block {n} needs {framework}")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{doc} block {n}", "exec"), {"__name__": "__docs__"})  # noqa: S102 - our own docs


def _commands():
    """Every ``rnncomp SUBCOMMAND ...`` the docs show, in inline code or in blocks."""
    out = []
    for doc in DOCS:
        text = (ROOT / doc).read_text()
        spans = re.findall(r"`(rnncomp (?:demo|inspect|compile|train)[^`]*)`", text)
        spans += [line.strip() for code in re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
                  for line in code.splitlines() if re.match(r"\s*rnncomp (demo|inspect|compile|train)", line)]
        out += [(doc, c.split("&&")[0].split("#")[0].strip()) for c in spans]
    return out


COMMANDS = _commands()


@pytest.mark.parametrize("doc, command", COMMANDS, ids=[c for _, c in COMMANDS])
def test_every_documented_command_is_accepted(doc, command):
    """The flags the docs name exist and take the values shown (the commands that train
    are run by test_cli_messages; here they are parsed)."""
    from rnncomp.cli import build_parser
    argv = shlex.split(command)[1:]
    placeholders = {"CELL": "lstm", "FILE": "f.txt", "KIND": "step", "F": "f", "F.png": "f.png", "K": "3"}
    argv = [placeholders.get(a, a) for a in argv if not (a.startswith("[") or a.endswith("]") or a == "...")]
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{doc}: `{command}` is not accepted by rnncomp (exit {exc.code})")


@pytest.mark.parametrize("mod", ["rnncomp.dsl", "rnncomp.atoms", "rnncomp.cell_check", "rnncomp.equations", "rnncomp.functions", "rnncomp.graph", "rnncomp.ops",
                                 "rnncomp.cells", "rnncomp.printing", "rnncomp.latex", "rnncomp.show", "rnncomp.train.checkpoint",
                                 "rnncomp.train.lr_schedules", "rnncomp.backends.llvm.jit",
                                 "rnncomp.backends.llvm.builder", "rnncomp.backends.llvm.gemm",
                                 "rnncomp.backends.llvm.finite", "rnncomp.memory", "rnncomp.passes.stacking",
                                 "rnncomp.schedules", "rnncomp.inspect.memory", "rnncomp.passes.cotangents_after",
                                 "rnncomp.backends.vjp", "rnncomp.backends.base", "rnncomp.passes.prepare", "rnncomp.passes.layout",
                                 "rnncomp.backends.llvm.update_kernel",
                                 "rnncomp.train.optim", "rnncomp.train.trainer", "rnncomp.train.truncated", "rnncomp.train.tasks",
                                 "rnncomp.train.data", "rnncomp.train.plot", "rnncomp.train.text",
                                 "rnncomp.train.distributed", "rnncomp.train.resume", "rnncomp.cell_views", "rnncomp.serialize", "rnncomp.cli_common", "rnncomp.backends.ptx.layout",
                                 "rnncomp.backends.llvm.kernel_library", "rnncomp.backends.native_profile",
                                 "rnncomp.inspect.peak", "rnncomp.inspect.profile",
                                 "rnncomp.compose.stack", "rnncomp.compose.bidirectional",
                                 "rnncomp.compose.model", "rnncomp.compose.explain", "rnncomp.compose.draw", "rnncomp.gradspec",
                                 "rnncomp.algorithms.saving", "rnncomp.algorithms.fixed_point", "rnncomp.train.progress",
                                 "rnncomp.algorithms.compiled", "rnncomp.derivatives",
                                 "rnncomp.algorithms.sparse_plan", "rnncomp.algorithms.sparse_fuse",
                                 "rnncomp.algorithms.sparse_blocks"])
def test_doctests(mod):
    result = doctest.testmod(importlib.import_module(mod), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0


def test_the_rtrl_memory_sample_shows_what_it_prints():
    """docs/algorithms.md showed '32 × 330506 × 512 values = 41313.2 MiB' for an LSTM of
    331,274 parameters (found by an adversarial probe).  Each '...'-separated piece of the
    comment must appear, in order, in the message the sample prints."""
    import numpy as np
    import rnncomp as rc
    from rnncomp.algorithms import sequence_grad
    text = (ROOT / "docs/algorithms.md").read_text()
    shown = re.search(r"print\(e\)\s+# (cell 'lstm': RTRL's sensitivity .*)", text).group(1)
    cell = rc.cells.lstm(64, 256, 10)
    with pytest.raises(rc.SensitivityMemoryError) as err:
        sequence_grad(rc.RTRL(), cell, cell.init_params(0), {"x": np.zeros((2, 32, 64))},
                      {"target": np.zeros((2, 32, 10))})
    printed, at = str(err.value), 0
    for piece in (p.strip(" ,") for p in shown.split("...")):
        at = printed.find(piece, at)
        assert at >= 0, (piece, printed)
