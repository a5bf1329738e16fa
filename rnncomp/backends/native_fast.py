"""The thin paths of ``NativeModel.loss_and_grad`` -- a training call whose memory schedule
keeps every step, so that one forward and one backward native call cover it (per batch
slice, when ``threads=`` splits the batch across cores) -- and of ``forward`` without targets
that one native call covers (one chunk of ``native_forward``; a settling network's
relaxation, inference): 32 µs against 234 through the general path for a 16-unit cell, B = 8,
T = 5 (a :class:`ForwardFrame`).

The general path (``NativeModel._loss_and_grad``) rebuilds, on every call, the list of
the call's buffers and their ctypes pointer array, runs the checkpoint plan and
validates through :func:`.validate.check_call`.  That is ~130 µs of Python, more than
three times the native work of a small Elman cell (B = 1, T = 100).  Here a
:class:`Frame` is kept per thread and per (T, B): the pooled buffers and a pointer array
that already holds their addresses.  A call checks the caller's arrays (dtype, shape,
contiguity; finiteness in one native call), writes their addresses, its step weights (a
mask's, or the frame's uniform ones) and fresh gradient arrays into the frame, and runs
the two entry points.

A frame remembers the caller's arrays of its last call (their addresses need no new
lookup when the same arrays come again): it holds a reference to them, so one batch's
inputs and targets per thread and shape stay alive until the next call of that shape.

Anything this path does not take -- a wrong, non-contiguous or non-finite array or mask,
an unknown name, a checkpointing schedule -- returns None, and the general path validates
the call and reports the problem.  ``tests/test_native_fast.py`` and the fuzzer check that
both paths agree bit for bit.
"""
from __future__ import annotations

import ctypes

import numpy as np

from ..errors import CallError
from . import native_forward
from .validate import Call, add_initial_state_grads, check_mask, step_weights, weighted_loss

#: Frames kept per thread (one per (T, B)); beyond this the cache starts afresh.
MAX_FRAMES = 16


class _Frames:
    """What both frames keep: the pooled buffers by slot and their pointer array, and the slots
    of the caller's arrays (``specs``: (name, slot, shape) of the parameters, then (name, slot,
    n) of the sequences), with the arrays of the last call (their addresses known)."""

    def _keep(self, model, arrays, T: int, B: int, specs):
        self.arrays = arrays  # keeps the pooled views (and so their addresses) alive
        self.ptrs = (ctypes.c_void_p * len(arrays))(*[None if a is None else a.ctypes.data for a in arrays])
        self.gen = model._pool.gen
        P = len(model._param_specs)
        sizes = [int(np.prod(shp)) for _, _, shp in specs[:P]] + [T * B * n for _, _, n in specs[P:]]
        self.slots = [k for _, k, _ in specs]
        self.check_ptrs = (ctypes.c_void_p * len(sizes))()  # what the finiteness check reads
        self.check_counts = (ctypes.c_int64 * len(sizes))(*sizes)
        self.last = [None] * len(sizes)

    def bind(self, model, arrays, check_finite) -> bool:
        """The caller's ``arrays`` (in ``specs`` order) into the pointer array; False where
        ``check_finite`` finds a NaN or infinity in them."""
        ptrs, last, check = self.ptrs, self.last, self.check_ptrs
        for i, (a, k) in enumerate(zip(arrays, self.slots)):
            if a is not last[i]:  # an array object's address never changes while it is held
                last[i] = a
                check[i] = ptrs[k] = a.ctypes.data
        return not (check_finite and model._first_nonfinite(len(arrays), check, self.check_counts) >= 0)


class Frame(_Frames):
    """One thread's buffers of a (T, B) training call and their pointer array."""

    def __init__(self, model, T: int, B: int, B_total: int):
        st = model.step
        arrays, states, fwd = model._pooled_buffers(T, B)
        # the step weights of a mean over the whole batch (B_total rows, of which B are here)
        self.ws = np.full((T, B), 1.0 / (T * B_total), dtype=model.dtype)
        model._bwd_arrays(arrays, T, B, self.ws)
        arrays[model.tmp_slot] = model._outer_tmp()
        self.work = model._work(T, B).ctypes.data
        self.flags = arrays[model.prologue_slot]
        self.states, self.loss = states, fwd[st.loss_key][:, :, 0]
        self.carry = {s_: arrays[model.bwd_slot[key][0]] for s_, key in model.bwd.carry_in.items()}
        # the caller's arrays: parameters then inputs/targets, as in model._param_specs, _io_specs
        self._keep(model, arrays, T, B, model._param_specs + model._io_specs)
        self.weight_slot = model.bwd_slot[model.bwd.weight][0]


def _frame(model, key, make):
    """This thread's frame ``key``: (T, B, B_total) of a training call's slice, ("forward", T, B)
    of a forward-only call; ``make()`` builds it."""
    pool = model._pool
    frames = getattr(pool, "frames", None)
    if frames is None:
        frames = pool.frames = {}
    fr = frames.get(key)
    if fr is not None and fr.gen == getattr(pool, "gen", -1):
        return fr
    if fr is not None or len(frames) >= MAX_FRAMES:  # buffers moved: every frame is stale
        frames.clear()
    fr = frames[key] = make()
    if fr.gen != pool.gen:  # building it grew the pool (the tmp or work buffer): rebuild once
        fr = frames[key] = make()
    return fr


class ForwardFrame(_Frames):
    """One thread's buffers of a forward-only (T, B) call and their pointer array: the
    forward's pooled buffers, scratch for the targets it does not read (as the general path's
    ``_buffers``), the outputs' and final states' views."""

    def __init__(self, model, T: int, B: int):
        st = model.step
        arrays, states, fwd = model._pooled_buffers(T, B)
        for name, n in st.targets.items():
            arrays[model.io_slot[name]] = model._scratch(f"io {name}", (T, B, n))
        self.work = model._work(T, B).ctypes.data
        self.flags, self.states = arrays[model.prologue_slot], states
        self.outs = {o: fwd[(o, "t")] if (o, "t") in fwd else states[o][1:] for o in st.outputs}
        self._keep(model, arrays, T, B, model._param_specs + [s for s in model._io_specs if s[0] in st.inputs])


def _ok(a, shape, dt) -> bool:
    return type(a) is np.ndarray and a.dtype == dt and a.shape == shape and a.flags.c_contiguous


def _all_finite(model, arrays) -> bool:
    """Every element of every array finite: one native call (``llvm/finite.py``)."""
    n = len(arrays)
    ptrs = (ctypes.c_void_p * n)(*[a.ctypes.data for a in arrays])
    counts = (ctypes.c_int64 * n)(*[a.size for a in arrays])
    return model._first_nonfinite(n, ptrs, counts) < 0


def _named(value, names):
    if isinstance(value, dict):
        return value
    if value is None:
        return {}
    return {names[0]: value} if len(names) == 1 else None


def _checked(model, params, inputs, targets, h0, with_targets=True):
    """(T, B, {name: input or target}, h0) where every array is exactly what the compiled
    code reads (dtype, shape, C order) and every name is known, the targets too if
    ``with_targets`` (else none given); None otherwise."""
    st, dt = model.step, model.dtype
    if type(params) is not dict or len(params) != len(model._param_specs):
        return None
    inputs, targets = _named(inputs, model._input_names), _named(targets, model._target_names)
    h0 = _named(h0, model._state_names)
    if inputs is None or targets is None or h0 is None or len(inputs) != len(st.inputs) \
            or len(targets) != (len(st.targets) if with_targets else 0):
        return None
    seq = model._input_names + (model._target_names if with_targets else [])
    if not seq:
        return None
    first = (inputs if st.inputs else targets).get(seq[0])
    shape = getattr(first, "shape", ())
    if len(shape) != 3 or shape[0] == 0 or shape[1] == 0:
        return None
    T, B = shape[0], shape[1]
    for name, _, shp in model._param_specs:
        if not _ok(params.get(name), shp, dt):
            return None
    io = {}
    for name, _, n in model._io_specs:
        if name in st.targets and not with_targets:
            continue
        a = io[name] = inputs.get(name) if name in st.inputs else targets.get(name)
        if not _ok(a, (T, B, n), dt):
            return None
    for name, a in h0.items():
        n = st.states.get(name)
        if n is None or not _ok(a, (B, n), dt):
            return None
    return T, B, io, h0


def forward(model, params, inputs, h0, check_finite):
    """(outputs, final states) as ``forward`` of a call without targets that one native call
    covers (one chunk: ``native_forward``), in this thread's frame; or None where the general
    path must take the call (it validates and reports)."""
    if model._reads_targets or not model._forward_fast_path:
        return None
    got = _checked(model, params, inputs, None, h0, with_targets=False)
    if got is None:
        return None
    T, B, io, h0 = got
    if native_forward.chunk_steps(model, T, B) < T:
        return None
    if check_finite and h0 and not _all_finite(model, list(h0.values())):
        return None
    fr = _frame(model, ("forward", T, B), lambda: ForwardFrame(model, T, B))
    if not fr.bind(model, [params[name] for name, _, _ in model._param_specs]
                   + [io[name] for name in model._input_names], check_finite):
        return None
    model._set_initial_states(fr.states, params, h0)
    fr.flags.fill(0)  # a new call: stacked and packed weights are rebuilt
    model._fwd(T, B, fr.ptrs, fr.work)
    return {o: v.copy() for o, v in fr.outs.items()}, {s_: buf[-1].copy() for s_, buf in fr.states.items()}


def loss_and_grad(model, params, inputs, targets, h0, mask, check_finite):
    """(loss, grads, final states) as ``NativeModel.loss_and_grad``, or None where the
    general path must take the call."""
    st, dt = model.step, model.dtype
    got = _checked(model, params, inputs, targets, h0)
    if got is None:
        return None
    T, B, io, h0 = got
    if not model._single_leaf(T, B):
        return None
    if check_finite and h0 and not _all_finite(model, list(h0.values())):
        return None  # the general path finds the element and reports it
    w = None  # the step weights of a mask (None: the frame's uniform ones)
    if mask is not None:
        try:
            w = step_weights(Call(T, B, {}, {}, {}, {}, check_mask(st.name, mask, T, B, dt)), dt)
        except CallError:
            return None  # the general path reports it
    parts = model._split(B)
    if len(parts) == 1:
        return _run(model, T, B, B, params, io, h0, w, check_finite)

    def part(sl):  # a batch slice on its own core: contiguous copies of its rows
        return _run(model, T, sl.stop - sl.start, B, params,
                    {k: np.ascontiguousarray(v[:, sl]) for k, v in io.items()},
                    {k: np.ascontiguousarray(v[sl]) for k, v in h0.items()},
                    None if w is None else np.ascontiguousarray(w[:, sl]), check_finite)

    # the other slices go to the pool; this thread runs the first one meanwhile
    futures = [model._executor().submit(part, sl) for sl in parts[1:]]
    results = [part(parts[0])] + [f.result() for f in futures]
    if any(r is None for r in results):
        return None
    return model._merge_slices(results)


def _run(model, T, B, B_total, params, io, h0, w, check_finite):
    """One forward and one backward native call on checked arrays, in this thread's frame,
    with step weights ``w`` (a mask's) or the frame's uniform ones (None if
    ``check_finite`` finds a NaN or infinity: the general path reports it)."""
    fr = _frame(model, (T, B, B_total), lambda: Frame(model, T, B, B_total))
    ptrs = fr.ptrs
    ws = fr.ws if w is None else w
    ptrs[fr.weight_slot] = ws.ctypes.data
    if not fr.bind(model, [params[name] for name, _, _ in model._param_specs]
                   + [io[name] for name, _, _ in model._io_specs], check_finite):
        return None
    # initial states, fresh gradient arrays, zeroed carries and prologue flags
    model._set_initial_states(fr.states, params, h0)
    arena, grads = model._new_grad_arena()
    base, size = arena.ctypes.data, arena.itemsize
    for _, k, at, _, _ in model._grad_specs:
        ptrs[k] = base + at * size
    for buf in fr.carry.values():
        buf.fill(0)
    fr.flags.fill(0)
    model._fwd(T, B, ptrs, fr.work)  # ctypes releases the GIL during each call
    loss = weighted_loss(ws, fr.loss)
    final = {s_: buf[-1].copy() for s_, buf in fr.states.items()}
    model._bwdfn(T, B, ptrs, fr.work)
    add_initial_state_grads(model.step, grads, fr.carry, h0)
    return loss, grads, final
