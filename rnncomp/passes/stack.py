"""Pass "stack" (:mod:`rnncomp.passes.stacking`) over a cell's step, as the compiled backends consume it.

Shared by the native CPU backend and the PTX backend, so both stack the same products and
group the same gradients:

* :func:`stack_step`: the forward and backward programs of a step with products stacked,
  the stacked weights (:class:`~rnncomp.passes.stacking.Stacked`) and the views
  (``member key → (whole key, column, whole width)``);
* :func:`grad_groups`: where the members of a stacked value are each the δ of one
  parameter's only gradient spec with the same other operand (``W_i``: ``δa_iᵀ·x``,
  ``b_i``: ``Σ δa_i``), the parameters whose gradients are laid out side by side and
  accumulated by ONE product (or one row sum) over the whole.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import CompileError
from ..gradspec import Batch
from ..ir import Program
from .cotangents_after import for_backward
from .stacking import stack_products


@dataclass
class StackedStep:
    fwd: Program
    bwd: Program | None
    stacks: dict = field(default_factory=dict)   # name -> Stacked
    views: dict = field(default_factory=dict)    # member key -> (whole key, column, whole width)


def stack_step(step, bwd, fwd: Program, keep: set, static=frozenset()) -> StackedStep:
    """Stack the products of the (pruned) forward program ``fwd`` and of ``bwd.prog``.

    ``keep``: the forward keys kept as dense values of their own (:func:`.prepare.keep_set`);
    ``static``: forward keys hoisted out of the time loop (a group never mixes phases)."""
    res = stack_products(fwd, step.params, keep=keep, static=static)
    out = StackedStep(res.prog, None, dict(res.stacks), dict(res.views))
    if bwd is not None:
        bprog = bwd.prog
        bkeep = {k for k in bwd.carry_out.values() if k is not None} | {bwd.weight}
        bkeep |= {k for k in bwd.input_adjoints.values() if k is not None}  # read by the caller
        # a product that only the inputs' cotangents read runs after the loop: never stacked
        # with one the loop needs (pass "cotangents after the loop")
        rb = stack_products(bprog, step.params, keep=bkeep, static=for_backward(bwd)[0])
        if set(rb.prog.nodes) & set(out.fwd.nodes) - set(bprog.nodes):
            raise CompileError(f"cell {step.name!r}: internal: stacked keys collide")
        out.bwd = rb.prog
        out.stacks.update(rb.stacks)
        out.views.update(rb.views)
    return out


def grad_groups(bwd, prog: Program, views: dict, deferred=None) -> list:
    """``[(whole key, kind, params, deferred)]``: ``kind`` ``("batch",)`` or ``("outer", v)``;
    ``params`` in column order of the whole (their gradients are stacked by rows in that order).

    ``prog``: the stacked backward program; ``deferred``: the ``(param, spec index)`` summed
    after the time loop (None: all of them); a group never mixes deferred and per-step specs."""
    groups, grouped = [], set()
    members: dict = {}
    for key, (w, col, _) in views.items():
        if key in prog.nodes:
            members.setdefault(w, []).append((col, key))
    owner = {}  # δ key → [(param, spec)] of single-spec parameters reading it
    for p, specs in bwd.grads.items():
        if len(specs) == 1 and (isinstance(specs[0], Batch) or (specs[0].c == 1 and not specs[0].tr)):
            owner.setdefault(specs[0].g, []).append((p, specs[0]))
    for w, cols in members.items():
        keys = [k for _, k in sorted(cols)]
        by_kind: dict = {}
        for k in keys:
            for p, spec in owner.get(k, []):
                kind = ("batch",) if isinstance(spec, Batch) else ("outer", spec.v)
                by_kind.setdefault(kind, {})[k] = p
        for kind, of in by_kind.items():
            params = [of.get(k) for k in keys]
            dfr = {True if deferred is None else (p, 0) in deferred for p in params if p is not None}
            if None in params or len(set(params)) != len(params) or len(dfr) != 1 or grouped & set(params):
                continue
            groups.append((w, kind, tuple(params), dfr.pop()))
            grouped.update(params)
    return groups
