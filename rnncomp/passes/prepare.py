"""Preparing a step for code generation: the programs every compiled backend starts from.

    prepare(step, bwd, hoist, stack) → Prepared(fwd, bwd, stacks, views, shapes)

1. keep: the forward values every consumer needs as dense values of their own (the
   states, the outputs, the loss unless a VJP variant has no targets): :func:`keep_set`;
2. prune the forward program to what they read (``ir.prune``);
3. pass "stack" (``stack=True``, :mod:`.stack`): products sharing an operand, or summed,
   regrouped into one product with a stacked weight, never across the hoisting line
   (``hoist=True``: :func:`hoisted`, the values that read no state).

The native backend (``backends/native.py``) and the PTX plan (``backends/ptx/plan.py``)
both consume a :class:`Prepared`; the NumPy oracle and the call checks read
:func:`keep_set` to prune what a plain forward runs.

    >>> import rnncomp as rc
    >>> from rnncomp.autodiff import LOSS_ONLY, backward_step
    >>> step = rc.cells.lstm(2, 3, 1).step
    >>> p = prepare(step, backward_step(step, LOSS_ONLY), hoist=True, stack=True)
    >>> [(name, p.shapes[name]) for name in p.stacks if name.startswith("[Uf")]
    [('[Uf;Ui;Ug;Uo]%', (12, 3))]
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..ir import LEAF_OPS, Program, prune, state_independent
from .stack import stack_step


@dataclass
class Prepared:
    fwd: Program                # the forward program code is generated from (pruned, stacked)
    bwd: Program | None         # the backward step's program (stacked), None without a backward
    stacks: dict = field(default_factory=dict)   # pass "stack": name -> Stacked
    views: dict = field(default_factory=dict)    # member key -> (whole key, column, whole width)
    shapes: dict = field(default_factory=dict)   # every weight's shape: parameters and stacked weights


def keep_set(step, loss=True) -> set:
    """Forward keys every consumer must keep as dense values of their own: the states, the
    outputs and, when the cell has one and ``loss``, the loss (``loss=False``: a plain
    forward, or a VJP variant without targets, which never computes the loss)."""
    keep = {(s, "t") for s in step.states} | {(o, "t") for o in step.outputs}
    return keep | ({step.loss_key} if step.has_loss and loss else set())


def hoisted(step, prog: Program) -> set:
    """Pass "hoist": the computed values of ``prog`` that read no state, however indirectly
    (all ``W·x[t]``): computed for every step at once before the time loop."""
    states = {(s, "t") for s in step.states}
    return state_independent(prog, {k for k, n in prog.nodes.items() if n.op not in LEAF_OPS and k not in states})


def prepare(step, bwd, hoist=True, stack=True) -> Prepared:
    """The programs of ``step`` (and of its backward step ``bwd``, or None) as the compiled
    backends generate code from them (module docstring)."""
    keep = keep_set(step, bwd is None or bwd.cot.loss)
    fwd = prune(step.prog, keep)
    out = Prepared(fwd, bwd.prog if bwd is not None else None, shapes=dict(step.params))
    if stack:
        res = stack_step(step, bwd, fwd, keep, hoisted(step, fwd) if hoist else set())
        out.fwd, out.bwd, out.stacks, out.views = res.fwd, res.bwd, dict(res.stacks), dict(res.views)
        out.shapes.update({name: stk.shape for name, stk in out.stacks.items()})
    return out
