"""Plugs the compiler's views of a declared :class:`~rnncomp.cell.Cell` into it: its
lowered step (:mod:`.lower`), its graph (:mod:`.graph`), its equations as text and LaTeX
(:mod:`.printing`).

The declaration imports nothing above it; it calls these through ``Cell.compiler``, set
here once.  ``rnncomp/__init__.py`` imports this module, and every import of a module of
the package runs ``rnncomp/__init__.py`` first, so a cell always finds them.

    >>> import rnncomp as rc
    >>> cell = rc.cells.elman(1, 2, 1)
    >>> cell.step.name, cell.graph.number_of_nodes() > 0, str(cell).splitlines()[0]
    ('elman', True, "cell 'elman'")
"""
from __future__ import annotations

from .cell import Cell, CompilerViews
from .graph import step_graph
from .lower import lower
from .printing import cell_latex, cell_text

Cell.compiler = CompilerViews(lower=lower, graph=step_graph, text=cell_text, latex=cell_latex)
