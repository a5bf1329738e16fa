"""``python -m rnncomp``: the ``rnncomp`` command.

The module runs :mod:`rnncomp.cli` as ``__main__`` (what ``python -m rnncomp.cli`` does) rather
than importing it, so that nothing in the package imports the command line: ``cli`` stays the top
of the import order (docs/architecture.md).
"""
import runpy

runpy.run_module("rnncomp.cli", run_name="__main__", alter_sys=True)
