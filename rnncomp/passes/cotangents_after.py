"""Pass "cotangents after the loop": the transpose of hoisting.

Hoisting computes the forward values that read no state (``W·x[t]``) for all steps at once
before the loop.  Its transpose: the backward values that only feed the inputs'
cotangents (``δx[t] = Wᵀ·δa[t]``) are read by nothing inside the loop, so they can be
computed for all steps at once *after* the loop, as one product over T·B rows, provided
what they read is kept for every step (``δa[t]`` then gets a (T, B, n) buffer, as under
``grad_after``).

    after_loop(prog, outs, inside, timed) → (keys computed after the loop, keys to keep for every step)

``outs``: the input-cotangent keys; ``inside``: keys read inside the loop by other means
(gradient specs, carried adjoints, ...); ``timed``: leaves the backward already has for
every step (the step weights, the outputs' cotangents).  A key reading a leaf outside
``timed`` (a carried adjoint δ⁺h[t], which exists for one step at a time) stays in the loop.

    >>> from rnncomp.ir import Node, Program
    >>> p = Program()
    >>> _ = p.add(("d", "t"), Node("seed", (), 3))
    >>> _ = p.add(("a", "t"), Node("ew", (("d", "t"),), 3))
    >>> _ = p.add(("x", "t"), Node("matvec", (("a", "t"),), 2, {"terms": (("W", True, 1),)}))
    >>> after, keep = after_loop(p, {("x", "t")}, set(), {("d", "t")})
    >>> sorted(after), keep
    ([('a', 't'), ('x', 't')], set())
"""
from __future__ import annotations

from ..ir import LEAF_OPS

MEMORY_OPS = ("view", "stackv")  # pass "stack": names of memory, computed by their operands


def after_loop(prog, outs, inside, timed):
    consumers: dict = {}
    for key, node in prog.nodes.items():
        for a in node.args:
            consumers.setdefault(a, set()).add(key)
    after = set()
    for key in reversed(list(prog.nodes)):  # a key goes after the loop if all its readers do
        node = prog.nodes[key]
        if node.op in LEAF_OPS or node.op in MEMORY_OPS or key in inside:
            continue
        if key in outs or (consumers.get(key) and consumers[key] <= after):
            after.add(key)
    while True:  # ... and if what it reads exists for every step
        bad = {k for k in after for a in prog.nodes[k].args
               if a in prog.nodes and prog.nodes[a].op in LEAF_OPS and a not in timed}
        bad |= {k for k in after if k not in outs and not consumers[k] <= after - bad}
        if not bad:
            break
        after -= bad
    keep = {a for k in after for a in prog.nodes[k].args
            if a in prog.nodes and a not in after and prog.nodes[a].op not in LEAF_OPS}
    return after, keep


def for_backward(bwd, prog=None, inside=()):
    """:func:`after_loop` for a derived backward step (``prog``: its program after other
    passes; default ``bwd.prog``): the outputs are its inputs' cotangents, what the
    gradients and the carried adjoints read stays inside, the step weights and the
    outputs' cotangents exist for every step."""
    outs = {k for k in bwd.input_adjoints.values() if k is not None}
    if not outs:
        return set(), set()
    inside = set(inside) | {k for k in bwd.carry_out.values() if k is not None}
    inside |= {k for specs in bwd.grads.values() for s in specs for k in s.reads}
    return after_loop(bwd.prog if prog is None else prog, outs, inside - outs,
                      {bwd.weight} | set(bwd.out_seeds.values()))
