"""Device-resident calls under a ``memory=`` schedule: the checkpointing plan run on the device.

The host calls' plan executor (:mod:`.checkpoint`) keeps checkpoints and carried adjoints in
host memory; a call on device arrays (:mod:`.device`) keeps them on the device instead:

* ``advance a → b``: forward calls of at most the plan's longest leaf, each from the states
  the one before ended in (new DeviceArrays: a checkpoint is one such set of states);
* ``leaf a..b``: one forward + backward of the model whose backward takes a final-state
  cotangent (:func:`.checkpoint.leaf_model`), reading the call's arrays at step a (a window of
  a (T, B, n) device array is its address moved by a·B rows), the adjoints carried in from the
  leaf to its right and out to the one on its left; its parameter gradients are added onto
  the sum so far by the gradient kernels themselves (the sum is copied into the gradient slots
  before the backward, device to device), and its input cotangents are written into the
  call's (T, B, n) results at step a.

Leaves run right to left, as on the host, so the gradients are those of storing every step
up to float rounding (the same terms summed in another order).  What crosses to the host is
what a one-leaf call's does: step weights and per-step costs, a learned initial state's row.
"""
from __future__ import annotations

from ...autodiff import LOSS_ONLY
from ..checkpoint import walk
from .checkpoint import leaf_model
from .device import DeviceArray, _train, run_forward


def _window(m, ptr, a, B, states):
    """``ptr`` for steps a.. : sequences (inputs, targets, output cotangents) moved a·B rows,
    parameters as they are, the initial states from ``states`` ({state: address})."""
    st, isz = m.step, m.dtype.itemsize
    sizes = st.inputs | st.targets
    out = {}
    for key, at in ptr.items():
        kind, name = key
        if kind == "io":
            out[key] = at + a * B * sizes[name] * isz
        elif kind == "cot":
            out[key] = at + a * B * st.outputs[name] * isz
        elif kind == "param":
            out[key] = at
    out.update({("state", s): at for s, at in states.items()})
    return out


def _initial(ptr) -> dict:
    """{state: address} of the states the caller passed (the others: learned or zeros)."""
    return {name: at for (kind, name), at in ptr.items() if kind == "state"}


def _addresses(states) -> dict:
    return {s: (a.ptr if isinstance(a, DeviceArray) else a) for s, a in states.items()}


def _advance(model, ptr, a, b, B, chunk, states, waits, outs=None):
    """Forward calls of at most ``chunk`` steps over a..b from ``states``: the states at b (new
    DeviceArrays); ``waits()`` the producers' streams still to wait for; ``outs`` {output:
    DeviceArray (T, B, n)} receive their steps' outputs (None: not read out)."""
    st, isz = model.step, model.dtype.itemsize
    for s in range(a, b, chunk):
        e = min(s + chunk, b)
        at = None if outs is None else {o: outs[o].ptr + s * B * n * isz for o, n in st.outputs.items()}
        states = run_forward(model, e - s, B, _window(model, ptr, s, B, _addresses(states)), waits(), at)
    return states


def _once(streams):
    """A function giving ``streams`` on its first call and nothing after (waited for once)."""
    left = [set(streams)]
    return lambda: left.pop() if left else set()


def forward(model, T, B, ptr, streams):
    """``device_forward`` under a schedule: ({output: DeviceArray}, {state: DeviceArray}) from
    forward calls of at most the plan's longest leaf."""
    outs = {o: DeviceArray(model.runner, (T, B, n), model.dtype) for o, n in model.step.outputs.items()}
    chunk = max(1, model.memory_plan(T, B).max_leaf)
    return outs, _advance(model, ptr, 0, T, B, chunk, _initial(ptr), _once(streams), outs)


def train(m, T, B, ptr, streams, w, wrt=()):
    """``_train`` of ``m`` (the model, or a VJP variant) under its schedule's plan for (T, B):
    (loss or None, {param: DeviceArray}, {state: DeviceArray} final states ({} for a variant),
    {input in wrt: δx}, {state: δh0} of a variant, else {})."""
    st, isz = m.step, m.dtype.itemsize
    plan, lm = m.memory_plan(T, B), leaf_model(m)
    variant = m._cot != LOSS_ONLY   # a vjp: δh0 and no final states, as a one-leaf call
    chunk = max(1, plan.max_leaf)
    d_in = {x: DeviceArray(m.runner, (T, B, st.inputs[x]), m.dtype) for x in wrt}
    carry = {s: at for (kind, s), at in ptr.items() if kind == "dfinal"}   # δ⁺h[T]: none is zeros
    out = {"loss": None if w is None else 0.0, "grads": None, "carry": carry, "final": {}}
    waits = _once(streams)   # the producers' streams: waited for before the first call

    def advance(a, b, cur):
        return _advance(lm, ptr, a, b, B, chunk, cur, waits)

    def leaf(a, b, cur):
        sub = _window(lm, ptr, a, B, _addresses(cur))
        sub.update({("dfinal", s): at for s, at in _addresses(out["carry"]).items()})
        part, grads, fin, _, d_h0 = _train(lm, b - a, B, sub, waits(), None if w is None else w[a:b], wrt,
                                           grads_in=out["grads"],
                                           d_in_at={x: d.ptr + a * B * st.inputs[x] * isz for x, d in d_in.items()},
                                           want_final=b == T and not variant)
        if part is not None:
            out["loss"] += part
        out["grads"], out["carry"] = grads, d_h0
        if b == T:
            out["final"] = fin

    walk(plan, _initial(ptr), advance, leaf)
    return out["loss"], out["grads"], {} if variant else out["final"], d_in, out["carry"] if variant else {}
