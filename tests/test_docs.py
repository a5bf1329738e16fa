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


# the adapters' doctests need their framework: test_torch.py and test_jax.py run them
NEEDS_A_FRAMEWORK = {"rnncomp.torch", "rnncomp.jax", "rnncomp.jax_kept", "rnncomp.jax_ffi"}


def _modules_with_examples():
    """Every module of rnncomp whose source has a ``>>>`` example (found, not listed: a module
    whose examples no test ran had one that no longer ran as written)."""
    found = []
    for path in sorted((ROOT / "rnncomp").rglob("*.py")):
        if ">>>" in path.read_text(encoding="utf-8"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            mod = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            if mod not in NEEDS_A_FRAMEWORK:
                found.append(mod)
    return found


@pytest.mark.parametrize("mod", _modules_with_examples())
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
