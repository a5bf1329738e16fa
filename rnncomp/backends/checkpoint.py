"""Running a checkpointing plan (:mod:`rnncomp.schedules`) on the native backend.

    footprint(model, B)                  the exact bytes of a state and of a step's activations
    walk(plan, h0, advance, leaf)        a plan's actions and checkpoints (every backend's executor)
    run(model, call, w, plan, grads)     the plan's actions, in order → loss, δh[0], final states
    advance(model, call, a, b, h0, n)    states a → b with the "advance" entry point (states
                                         only, no output or loss), n steps per native call

A leaf is ``model._segment(..., backward=True)``: forward a..b keeping every activation,
then the backward steps b-1 … a.  Leaves run right to left and each step belongs to one
leaf, so the parameter gradients are accumulated in the same order as storing all (bit
for bit); the loss is summed leaf by leaf (equal to float rounding).

Memory: every buffer comes from the model's per-thread pool, reused for the whole call.
An advance of n ≤ (longest leaf) steps uses prefixes of the buffers of the longest leaf
(its hoisted products and states; the other values live in one step's rows), so a plan
takes ``Footprint.memory(longest leaf, checkpoints held)`` bytes of per-step buffers.
"""
from __future__ import annotations

import numpy as np

from ..errors import ArgumentError
from ..ir import LEAF_OPS
from ..schedules import Footprint, make_plan
from .validate import initial_states


def footprint(model, B: int) -> Footprint:
    """Bytes of one set of states and of one step's full activations, at batch size ``B``.

    A step's activations are the rows of every buffer the forward program writes (a
    stacked product's whole slot counted once), the states, the backward values kept for
    every step (``bwd_timed``: the δ of the gradients summed after the loop, the outputs'
    cotangents, ...) and the scratch of scaled products over all steps' rows: every buffer
    whose size grows with T (an adversarial probe measured 23 % more than the forward
    values alone for an LSTM H=256)."""
    L, size = model.layout, model.dtype.itemsize
    states = sum(model.step.states.values())
    state_slots = set(model.state_slot.values())
    widths = {}
    for key, node in model._fwd_prog.nodes.items():
        w = L.where.get(key)
        if node.op in LEAF_OPS or w is None or not L.step_units(key) or w.slot in state_slots \
                or w.slot in widths:
            continue  # an input or parameter, a shared value, a state, or a slot already counted
        widths[w.slot] = model.slot_width.get(w.slot, node.size)
    for key, (k, n) in getattr(model, "bwd_slot", {}).items():  # as NativeCalls._bwd_arrays allocates them
        if model.bwd_timed.get(k) and key != model.bwd.weight and k not in widths:
            widths[k] = model.slot_width.get(k, n)
    scratch = getattr(model, "scratch_units", 0)
    return Footprint(state=states * B * size, step=(sum(widths.values()) + states + scratch) * B * size, B=B)


def planned(step, memory, T: int, fp: Footprint):
    """``make_plan`` of a cell's model: a budget it cannot meet names the cell (the planner is
    pure and knows no names; a composition adds the layer around it)."""
    try:
        return make_plan(memory, T, fp)
    except ArgumentError as exc:
        raise ArgumentError(f"cell {step.name!r}: {exc}") from None


def put_steps(dest: dict, part: dict, a: int, b: int, T: int) -> None:
    """Write the (b-a, ...) arrays of ``part`` into steps a..b of ``dest``'s (T, ...) arrays
    (made on first use): a chunk's or a leaf's outputs, input cotangents."""
    for k, v in part.items():
        dest.setdefault(k, np.empty((T,) + v.shape[1:], v.dtype))[a:b] = v


def walk(plan, h0: dict, advance, leaf) -> None:
    """Run ``plan``'s actions from the states ``h0``: ``advance(a, b, states)`` returns the
    states at b, ``leaf(a, b, states)`` runs a leaf (right to left); the checkpoints are kept
    here.  The plan executor of every backend (native: :func:`run`; PTX: ``ptx/checkpoint.py``)."""
    ckpt = {0: h0}
    cur = h0
    for act in plan.actions:
        op = act[0]
        if op == "advance":
            cur = advance(act[1], act[2], cur)
        elif op == "store":
            ckpt[act[1]] = cur
        elif op == "restore":
            cur = ckpt[act[1]]
        elif op == "free":
            del ckpt[act[1]]
        elif op == "leaf":
            leaf(act[1], act[2], cur)
            cur = None
        else:
            raise ValueError(f"unknown plan action {act!r}")


def run(model, call, w, plan, grads, carry=None):
    """Execute ``plan`` for one batch slice; gradients accumulate into ``grads``; ``carry``:
    the cotangents of the final states (None: 0).

    Returns (loss, adjoints of the initial states, final states)."""
    T = call.T
    out = {"loss": 0.0, "carry": carry, "final": None}
    chunk = max(1, plan.max_leaf)

    def leaf(a, b, cur):
        h0 = call.h0 if a == 0 and b == T else cur
        part, out["carry"], fin = model._segment(call, w, a, b, h0, out["carry"], grads, backward=True)
        out["loss"] = None if part is None else out["loss"] + part
        if b == T:
            out["final"] = fin

    walk(plan, initial_states(model.step, call, model.dtype),
         lambda a, b, cur: advance(model, call, a, b, cur, chunk), leaf)
    return out["loss"], out["carry"], out["final"]


def advance(model, call, a: int, b: int, h0: dict, chunk: int) -> dict:
    """The states at step b from the states ``h0`` at step a (copies)."""
    fn, st = model._advance_entry(), model.step
    for lo in range(a, b, chunk):
        hi = min(lo + chunk, b)
        arrays, states, _ = model._buffers(call.window(lo, hi, h0), False)
        model._run(fn, arrays, hi - lo, call.B)
        h0 = {s: states[s][-1].copy() for s in st.states}
    return h0
