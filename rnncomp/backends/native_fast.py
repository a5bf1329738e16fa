"""The thin path of ``NativeModel.loss_and_grad``: a training call that one forward and one
backward native call cover (the batch is not split across threads, and the memory
schedule keeps every step).

The general path (``NativeModel._loss_and_grad``) rebuilds, on every call, the list of
the call's buffers and their ctypes pointer array, runs the checkpoint plan and
validates through :func:`.validate.check_call`.  That is ~130 µs of Python, more than
three times the native work of a small Elman cell (B = 1, T = 100).  Here a
:class:`Frame` is kept per thread and per (T, B): the pooled buffers and a pointer array
that already holds their addresses.  A call checks the caller's arrays (dtype, shape,
contiguity, finiteness), writes their addresses and those of fresh gradient arrays into
the frame, and runs the two entry points.

Anything this path does not take -- a mask, a wrong, non-contiguous or non-finite
array, an unknown name -- returns None, and the general path validates the call and
reports the problem.  ``tests/test_native_fast.py`` checks that both paths agree.
"""
from __future__ import annotations

import ctypes

import numpy as np

#: Frames kept per thread (one per (T, B)); beyond this the cache starts afresh.
MAX_FRAMES = 16


class Frame:
    """One thread's buffers of a (T, B) training call and their pointer array."""

    def __init__(self, model, T: int, B: int):
        st = model.step
        arrays, states, fwd = model._pooled_buffers(T, B)
        self.ws = np.full((T, B), 1.0 / (T * B), dtype=model.dtype)  # step weights, no mask
        model._bwd_arrays(arrays, T, B, self.ws)
        big = max([int(np.prod(s)) for s in st.params.values() if isinstance(s, tuple)] + [1])
        arrays[model.tmp_slot] = model._scratch("outer tmp", (big,))
        self.work = model._work(T, B).ctypes.data
        self.flags = arrays[model.prologue_slot]
        self.states, self.loss = states, fwd[st.loss_key][:, :, 0]
        self.carry = {s_: arrays[model.bwd_slot[key][0]] for s_, key in model.bwd.carry_in.items()}
        self.arrays = arrays  # keeps the pooled views (and so their addresses) alive
        self.ptrs = (ctypes.c_void_p * len(arrays))(*[None if a is None else a.ctypes.data for a in arrays])
        self.gen = model._pool.gen


def _frame(model, T, B):
    pool = model._pool
    frames = getattr(pool, "frames", None)
    if frames is None:
        frames = pool.frames = {}
    fr = frames.get((T, B))
    if fr is not None and fr.gen == getattr(pool, "gen", -1):
        return fr
    if fr is not None or len(frames) >= MAX_FRAMES:  # buffers moved: every frame is stale
        frames.clear()
    fr = frames[(T, B)] = Frame(model, T, B)
    if fr.gen != pool.gen:  # building it grew the pool (the tmp or work buffer): rebuild once
        fr = frames[(T, B)] = Frame(model, T, B)
    return fr


def _ok(a, shape, dt, check_finite) -> bool:
    return (type(a) is np.ndarray and a.dtype == dt and a.shape == shape and a.flags.c_contiguous
            and (not check_finite or bool(np.isfinite(a).all())))


def _named(value, names):
    if isinstance(value, dict):
        return value
    if value is None:
        return {}
    return {names[0]: value} if len(names) == 1 else None


def loss_and_grad(model, params, inputs, targets, h0, mask, check_finite):
    """(loss, grads, final states) as ``NativeModel.loss_and_grad``, or None where the
    general path must take the call."""
    st, dt = model.step, model.dtype
    if mask is not None or type(params) is not dict or len(params) != len(model._param_specs):
        return None
    inputs, targets = _named(inputs, model._input_names), _named(targets, model._target_names)
    h0 = _named(h0, model._state_names)
    if inputs is None or targets is None or h0 is None or len(inputs) != len(st.inputs) \
            or len(targets) != len(st.targets):
        return None
    seq = model._input_names + model._target_names
    if not seq:
        return None
    first = (inputs if st.inputs else targets).get(seq[0])
    shape = getattr(first, "shape", ())
    if len(shape) != 3 or shape[0] == 0 or shape[1] == 0:
        return None
    T, B = shape[0], shape[1]
    if len(model._split(B)) != 1 or not model._single_leaf(T, B):
        return None
    fr = _frame(model, T, B)
    ptrs = fr.ptrs
    for name, k, shp in model._param_specs:
        a = params.get(name)
        if not _ok(a, shp, dt, check_finite):
            return None
        ptrs[k] = a.ctypes.data
    for name, k, n in model._io_specs:
        a = inputs.get(name) if name in st.inputs else targets.get(name)
        if not _ok(a, (T, B, n), dt, check_finite):
            return None
        ptrs[k] = a.ctypes.data
    for name, a in h0.items():
        n = st.states.get(name)
        if n is None or not _ok(a, (B, n), dt, check_finite):
            return None
    # initial states, fresh gradient arrays, zeroed carries and prologue flags
    for s_, buf in fr.states.items():
        a = h0.get(s_)
        if a is not None:
            buf[0] = a
        elif st.state_init[s_] is not None:
            buf[0] = params[st.state_init[s_]]
        else:
            buf[0] = 0
    arena = np.zeros(model._grad_elems, dtype=dt)
    base, size = arena.ctypes.data, dt.itemsize
    grads = {}
    for p, k, at, n, shp in model._grad_specs:
        grads[p] = arena[at:at + n].reshape(shp)
        ptrs[k] = base + at * size
    for buf in fr.carry.values():
        buf.fill(0)
    fr.flags.fill(0)
    model._fwd(T, B, ptrs, fr.work)  # ctypes releases the GIL during each call
    loss = float((fr.ws * fr.loss).sum(dtype=np.float64))
    final = {s_: buf[-1].copy() for s_, buf in fr.states.items()}
    model._bwdfn(T, B, ptrs, fr.work)
    for s_, p in st.state_init.items():
        if p is not None and s_ not in h0:
            grads[p] += fr.carry[s_].sum(axis=0)
    return loss, {p: grads[p] for p in st.params}, final
