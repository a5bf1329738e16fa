"""Forward-only calls on the native backend -- ``forward`` without ``keep`` (inference,
``Trainer.predict``/``evaluate``) and the forward that a kept forward under a ``memory=``
schedule runs -- in chunks of steps, each chunk from the final states of the one before.

A forward that no backward reads needs one chunk's buffers, not every step's: the chunk
is the memory plan's longest leaf (under a schedule, what fits its budget; store-all: T)
and at most :data:`CHUNK_BYTES` of per-step buffers.  Every step computes what it
computes in one call over all steps (the hoisted products go row by row), so outputs and
final states are bit for bit a single call's; a loss is summed chunk by chunk (equal to
float rounding, as a schedule's).
"""
from __future__ import annotations

import numpy as np

from .checkpoint import footprint, put_steps
from .validate import weighted_loss

#: The most bytes of per-step buffers one chunk of a forward-only call takes (a chunk is at
#: least one step).  64 MiB: an LSTM H=128 at B=32 computes ~5,000 steps per chunk.
CHUNK_BYTES = 64 << 20


def chunk_steps(model, T: int, B: int) -> int:
    """Steps per chunk of a forward-only call of (T, B) (``B``: the batch the memory plan is for;
    kept per shape until ``model.memory`` changes, like the plans)."""
    chunks = model.__dict__.setdefault("_chunks", {})
    key = (T, B, CHUNK_BYTES)
    n = chunks.get(key)
    if n is None:
        if len(chunks) > 64:
            chunks.clear()
        fp = footprint(model, B)
        plan = model.memory_plan(T, B)
        # a forward holds no checkpoints: the plan's whole memory goes to one chunk's steps
        fits = max(plan.max_leaf, plan.memory(fp) // max(fp.step, 1)) if plan.max_leaf < T else T
        n = chunks[key] = max(1, min(T, fits, CHUNK_BYTES // max(fp.step, 1)))
    return n


def forward(model, call, ws=None, B_plan=None):
    """(outputs {name: (T, B, n)}, final states, loss or None) of ``call`` in this thread's pool;
    ``ws``: step weights (T, B) for the loss; ``B_plan``: the batch the plan is for (a slice's
    share of a budget; default the call's)."""
    st, T = model.step, call.T
    chunk = chunk_steps(model, T, B_plan or call.B)
    outs, h0, loss = {}, call.h0, None if ws is None else 0.0
    for a in range(0, T, chunk):
        b = min(a + chunk, T)
        whole = b - a == T
        sub = call if whole else call.window(a, b, h0)
        arrays, states, fwd = model._buffers(sub, False)
        if a == 0:  # the weights are stacked and packed once: every chunk reads the same
            model._fresh_call()
        model._run(model._fwd, arrays, sub.T, sub.B)
        for o in st.outputs:
            v = fwd[(o, "t")] if (o, "t") in fwd else states[o][1:]
            if whole:
                outs[o] = v.copy()
            else:
                put_steps(outs, {o: v}, a, b, T)
        if ws is not None:
            loss += weighted_loss(ws[a:b], fwd[st.loss_key][:, :, 0])
        h0 = {s: states[s][-1].copy() for s in st.states}
    return outs, h0, loss
