"""``memory=`` on the PTX backend: a checkpointing plan run as a sequence of device calls.

    footprint(model, B)                            bytes of a state and of one step of the arena
    train(model, call, w, d_out, d_fin, plan)      the plan's actions → what ``_train`` returns
    forward(model, call, chunk)                    outputs and final states, ``chunk`` steps a call

A PTX model owns one device arena sized for one call's (T, B) (:mod:`.model`): every buffer
a forward + backward of T steps writes.  Under a schedule (:mod:`rnncomp.schedules`) a
training call runs the plan's actions on the host side:

* ``advance a → b``: forward calls of at most the plan's longest leaf, each from the
  states the one before ended in (the states come back to the host: B × Σ state sizes);
* ``store`` / ``restore`` / ``free``: checkpoints, kept in host memory;
* ``leaf a..b``: one forward + backward sequence over steps a..b from the current states,
  with the adjoints carried in from step b (``d_final`` of the VJP variant that has one)
  and out at step a, and the outputs' cotangents and step weights of those steps.

So the device holds one leaf's arena: ``activation_bytes`` (the plan's memory of
:func:`footprint`) instead of T steps.  Leaves run right to left, their parameter
gradients summed on the host in that order, so the gradients equal storing all to float
rounding (another order of the same sum), as on the native backend.  An arena (and its
CUDA graphs) is made per call length; under a schedule the model keeps two (``_get_arena``):
the plans' leaves and advances have at most two lengths, the longest leaf and the rest, so
from the second call on a plan makes none.
"""
from __future__ import annotations

from dataclasses import replace

from ...schedules import Footprint
from ..checkpoint import put_steps, walk
from ..validate import add_initial_state_grads, initial_states


def footprint(model, B: int) -> Footprint:
    """One set of states, and what one more step adds to the arena, in bytes at batch ``B``."""
    isz = model.dtype.itemsize
    slots = model.plan.layout.slots
    step = sum(s.elems(2, B) - s.elems(1, B) for s in slots) * isz
    return Footprint(state=sum(model.step.states.values()) * B * isz, step=step, B=B)


def leaf_model(model):
    """The model whose backward takes a final-state cotangent (δ⁺h at a leaf's end) and
    returns the initial states' (δh at its start): ``model`` itself or its VJP variant."""
    return model if model._cot.final else model._variant(replace(model._cot, final=True))


def train(model, call, w, d_out, d_fin, plan, outputs=None):
    """Run ``plan`` for ``call``: (loss or None, grads, final states, {input: δx}, {state: δh[0]});
    ``outputs``: a dict that receives the outputs of every step (leaf by leaf)."""
    st, T = model.step, call.T
    lm = leaf_model(model)
    out = {"loss": None if w is None else 0.0, "grads": None, "carry": d_fin or {}, "final": None}
    d_in = {}

    def leaf(a, b, cur):
        sub, cot = call.window(a, b, cur), {o: v[a:b] for o, v in (d_out or {}).items()}
        with lm._lock:  # the outputs are read from the arena's staging buffer
            part, g, fin, dx, out["carry"] = lm._train_locked(sub, None if w is None else w[a:b], cot, out["carry"])
            if outputs is not None:
                put_steps(outputs, lm._downloaded_outputs(), a, b, T)
        if part is not None and out["loss"] is not None:
            out["loss"] += part
        if out["grads"] is None:
            out["grads"] = g
        else:
            for p, v in g.items():
                out["grads"][p] += v
        put_steps(d_in, dx, a, b, T)
        if b == T:
            out["final"] = fin

    chunk = max(1, plan.max_leaf)
    walk(plan, initial_states(st, call, model.dtype),
         lambda a, b, cur: forward(lm, call.window(a, b, cur), chunk, outputs=False)[1], leaf)
    add_initial_state_grads(st, out["grads"], out["carry"], call.h0)
    return out["loss"], out["grads"], out["final"], d_in, out["carry"]


def forward(model, call, chunk: int, outputs: bool = True):
    """(outputs, final states) of ``call`` in calls of at most ``chunk`` steps."""
    T = call.T
    if chunk >= T:
        with model._lock:
            return model._forward_locked(call)
    outs, h0 = {}, call.h0
    for a in range(0, T, chunk):
        b = min(a + chunk, T)
        with model._lock:
            part, h0 = model._forward_locked(call.window(a, b, h0))
        if outputs:
            put_steps(outs, part, a, b, T)
    return outs, h0
