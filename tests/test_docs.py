"""The docs' code blocks run, and the module doctests pass."""
import doctest
import importlib
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("doc", ["docs/dsl.md", "docs/vjp.md"])
def test_markdown_python_blocks_run(doc):
    text = (ROOT / doc).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks
    ns = {}
    for block in blocks:
        exec(compile(block, doc, "exec"), ns)  # noqa: S102 - our own documentation


@pytest.mark.parametrize("mod", ["rnncomp.dsl", "rnncomp.functions", "rnncomp.graph", "rnncomp.ops",
                                 "rnncomp.cells", "rnncomp.printing", "rnncomp.backends.llvm.jit",
                                 "rnncomp.backends.llvm.builder", "rnncomp.backends.llvm.gemm",
                                 "rnncomp.backends.llvm.finite", "rnncomp.memory", "rnncomp.stacking",
                                 "rnncomp.schedules", "rnncomp.inspect.memory", "rnncomp.passes.cotangents_after",
                                 "rnncomp.backends.vjp",
                                 "rnncomp.train.optim", "rnncomp.train.trainer", "rnncomp.train.tasks",
                                 "rnncomp.train.data", "rnncomp.train.plot", "rnncomp.train.text",
                                 "rnncomp.train.distributed"])
def test_doctests(mod):
    result = doctest.testmod(importlib.import_module(mod), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0
