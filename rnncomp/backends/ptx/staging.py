"""The staging buffer of a PTX call: one pinned host buffer with a region per array a call
moves (parameters, initial states, inputs and targets, step weights and cotangents in;
final states, outputs, gradients, the cost, δh[0] and δx out), and the copies between its
regions and the device arena.

A :class:`~.model.PtxModel` call copies the caller's arrays into the regions, runs the
uploads, kernels and downloads as one sequence (one CUDA graph, prepared with the arena:
``PtxModel._fill_arena``), then copies the results out of the regions (docs/gpu.md, "A call").
"""
from __future__ import annotations

import numpy as np

from ...autodiff import LOSS_ONLY
from ..validate import forward_targets


def staging(model, a, addr, T, B):
    """A pinned host buffer with a region per array a call of (T, B) moves, and the copies
    (``a``: ``model``'s arena, which frees the buffer; ``addr(key, t)``: a value's device address).

    Returns ``((pointer, {name: array view}), (forward: uploads, downloads), (training:
    uploads, downloads))``.  A value that is a column range of wider rows is moved with its
    whole rows (``(T, B, ld)``) and the columns are picked on the host."""
    st, P, L, dt = model.step, model.plan, model.plan.layout, model.dtype
    isz = dt.itemsize
    regions = []  # (name, device address, shape)

    def region(name, ptr, shape):
        regions.append((name, ptr, tuple(int(x) for x in shape)))
        return ("h2d" if name[0] in ("param", "state", "io", "w", "cot", "dfinal") else "d2h", name)

    def rows_of(key, t, rows):
        col = L.where[key].col
        return addr(key, t) - col * isz, (rows, B, L.ld(key))

    ups = [region(("param", p), addr((p, None)), (L.slots[k].units,))
           for p, k in P.param_slot.items()]
    ups += [region(("state", s), addr((s, "t-1"), 0), (B, st.states[s])) for s in P.state_slot]
    io = {name: region(("io", name), addr((name, "t")), (T, B, (st.inputs | st.targets)[name]))
          for name in P.io_slot}
    finals = [region(("final", s), addr((s, "t-1"), T), (B, st.states[s])) for s in P.state_slot]
    outs = [region(("out", o), *rows_of((o, "t"), 0, T)) for o in st.outputs]
    train_up, train_down = [], []
    grad_slots = sorted(set(P.grad_slot.values())) if model.bwd is not None else []  # groups share one
    if model.bwd is not None:
        variant = model._cot != LOSS_ONLY
        train_up = [region(("w",), addr(model.bwd.weight), (T, B))]
        # a VJP variant: the outputs' cotangents, and δ⁺h[T] (row T of the carry) for every state
        train_up += [region(("cot", o), addr(k), (T, B, st.outputs[o])) for o, k in model.bwd.out_seeds.items()]
        train_up += [region(("dfinal", s), *rows_of(model.bwd.carry_in[s], T - 1, 1))
                     for s in st.states if variant]
        train_down = [region(("grad", k), a["base"] + a["offsets"][k], (L.slots[k].units,)) for k in grad_slots]
        if st.has_loss and model._cot.loss:
            train_down.append(region(("cost",), *rows_of(st.loss_key, 0, T)))
        train_down += [region(("dinit", s), *rows_of(model.bwd.carry_in[s], -1, 1))
                       for s, p in st.state_init.items() if p is not None or variant]
        train_down += [region(("dx", x), *rows_of(k, 0, T))
                       for x, k in model.bwd.input_adjoints.items() if k is not None]
    offs, pos = {}, 0
    for name, _, shape in regions:
        offs[name] = pos
        pos += -(-int(np.prod(shape)) * isz // 64) * 64
    ptr, raw = model.runner.alloc_host(max(pos, 1))
    a["stage_ptr"] = ptr  # freed with the arena, also if what follows fails
    views = {name: raw[offs[name]:offs[name] + int(np.prod(shape)) * isz].view(dt).reshape(shape)
             for name, _, shape in regions}
    dev = {name: d for name, d, _ in regions}
    a["stage_at"] = {name: (dev[name], ptr + offs[name]) for name in dev}  # device-resident calls (device.py)

    def ops(items):
        out = []
        for kind, name in items:
            n = views[name].nbytes
            out.append(("h2d", dev[name], ptr + offs[name], n) if kind == "h2d"
                       else ("d2h", ptr + offs[name], dev[name], n))
        return out

    targets = [k for k in P.io_slot if k in st.targets and k not in forward_targets(st)]  # read: zeros
    run = (ops(ups + [io[k] for k in P.io_slot if k not in targets])
           + [("memset", dev[("io", k)], views[("io", k)].nbytes) for k in targets],
           ops(finals + outs))
    grad_zero = [("memset", a["base"] + a["offsets"][k], L.slots[k].units * isz) for k in grad_slots]
    variant_outs = outs if model._cot != LOSS_ONLY else []  # a VJP variant's forward is this one
    train = (ops(ups + list(io.values()) + train_up) + grad_zero, ops(finals + variant_outs + train_down))
    return (ptr, views), run, train
