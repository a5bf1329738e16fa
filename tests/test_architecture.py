"""The direction of imports inside the package (docs/architecture.md): the declaration
imports nothing of the compiler, no backend imports train/ or inspect/, only the command's
entry points import the CLI, ``import rnncomp`` loads no LLVM (nor does a training call on the
NumPy oracle), and the shared passes (``passes/``) import no backend.  Imports are read from
the source (ast), lazy ones inside functions included."""
import ast
import pathlib
import subprocess
import sys

import pytest

PKG = pathlib.Path(__file__).resolve().parent.parent / "rnncomp"


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), path


def _imports(name, path):
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            out |= {mod} | {f"{mod}.{a.name}" for a in node.names}
    return out


IMPORTS = {name: _imports(name, path) for name, path in _modules()}


def _reaching(modules, targets):
    return {m: sorted(i for i in IMPORTS[m] if any(i == t or i.startswith(t + ".") for t in targets))
            for m in modules}


def test_the_imports_are_read():
    assert "rnncomp.lower" in IMPORTS["rnncomp.cell_views"]          # a relative import, resolved
    assert "rnncomp.train.checkpoint" in IMPORTS["rnncomp.train.resume"]


@pytest.mark.parametrize("decl", ["dsl", "atoms", "cell", "cell_check", "functions", "errors", "initializers"])
def test_the_declaration_imports_nothing_of_the_compiler(decl):
    above = [f"rnncomp.{m}" for m in ("lower", "graph", "autodiff", "printing", "backends", "train",
                                      "inspect", "cli", "compile", "passes", "stacking", "schedules")]
    assert _reaching([f"rnncomp.{decl}"], above) == {f"rnncomp.{decl}": []}


def test_no_backend_imports_train_or_inspect():
    backends = [m for m in IMPORTS if m.startswith("rnncomp.backends")]
    assert {m: v for m, v in _reaching(backends, ["rnncomp.train", "rnncomp.inspect"]).items() if v} == {}


def test_nothing_imports_the_cli():
    # __main__ runs it with runpy (python -m rnncomp), so no module of the package imports it
    others = [m for m in IMPORTS if m != "rnncomp.cli"]
    assert {m: v for m, v in _reaching(others, ["rnncomp.cli"]).items() if v} == {}


def test_import_rnncomp_loads_no_llvm():
    r = subprocess.run([sys.executable, "-c", "import sys, rnncomp; print('llvmlite' in sys.modules)"],
                       capture_output=True, text=True, cwd=PKG.parent)
    assert r.stdout.strip() == "False", r.stderr[-500:]


def test_the_passes_import_no_backend():
    passes = [m for m in IMPORTS if m.startswith("rnncomp.passes")]
    assert {m: v for m, v in _reaching(passes, ["rnncomp.backends"]).items() if v} == {}


def test_the_oracle_and_the_contract_load_no_llvm():
    code = ("import sys, numpy as np, rnncomp as rc, rnncomp.backends.base, rnncomp.passes.prepare\n"
            "cell = rc.cells.lstm(2, 3, 1)\n"
            "m = rc.compile(cell, backend='numpy')\n"
            "m.loss_and_grad(m.init_params(0), {'x': np.ones((4, 2, 2))}, {'target': np.zeros((4, 2, 1))})\n"
            "print(sorted(m for m in sys.modules if m.startswith(('llvmlite', 'rnncomp.backends.llvm'))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PKG.parent)
    assert r.stdout.strip() == "[]", r.stdout[-500:] + r.stderr[-500:]
