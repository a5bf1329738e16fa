"""Inspecting a cell's derived graphs: pictures, costs and gradient flow through time.

    >>> import rnncomp as rc
    >>> from rnncomp import inspect as ri
    >>> cell = rc.cells.elman(3, 4, 2)
    >>> ri.to_dot(cell, "gradient").startswith('digraph "elman gradient"')
    True
    >>> ri.cost(cell, T=10, B=2).forward["matvec"]   # 2·4·3 + 2·4·4 + 2·2·4
    72

* :func:`to_dot` / :func:`render` (:mod:`.dot`, :mod:`.draw`): the one-step, unfolded
  and gradient graphs as Graphviz DOT text, drawn by ``dot`` or, failing that, matplotlib;
* :func:`cost` (:mod:`.cost`): FLOPs forward and backward, stored activations, memory;
* :func:`gradient_flow` (:mod:`.flow`): ‖∂L/∂h[t]‖ and σmax(∂h[t]/∂h[t-1]) over t.
"""
from .cost import Cost, cost, cost_table
from .dot import KINDS, Graph, build, dot_text, to_dot
from .flow import Flow, flow_table, gradient_flow, plot_flow, random_problem, step_jacobian
from .draw import Picture, RenderError, available_engine, picture, render

__all__ = ["to_dot", "dot_text", "build", "Graph", "KINDS", "render", "available_engine", "RenderError",
           "picture", "Picture",
           "cost", "Cost", "cost_table", "gradient_flow", "Flow", "flow_table", "plot_flow",
           "random_problem", "step_jacobian"]
