"""Compositions of cells: ``rc.Stack`` (layers one above the other) and ``rc.Bidirectional``
(a layer run forward and backward in time).  ``rc.compile`` compiles each cell inside for
its backend and chains their calls through the VJP entry points (docs/dsl.md, "Stacked and
bidirectional models")."""
from .bidirectional import Bidirectional
from .layers import Composition
from .stack import Stack

__all__ = ["Stack", "Bidirectional", "Composition"]
