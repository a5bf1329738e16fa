"""Calling a compiled native model: buffers, the batch split across threads, memory
schedules and the entry points (``forward``, ``backward``, ``advance``).

:class:`NativeCalls` is the half of ``NativeModel`` that runs; the other half
(``backends/native.py``) compiles.  Buffers come from a per-thread pool (fresh pages
cost more than the math); :mod:`.native_fast` is the thin path of a training call that
one forward and one backward cover, the general path (``_loss_and_grad`` →
``backends/checkpoint.py``) runs any memory schedule.
"""
from __future__ import annotations

import ctypes
import math

import numpy as np

from ..errors import CompileError
from ..memory import schedule
from . import native_fast, native_forward
from .llvm import gemm
from .validate import add_initial_state_grads, weighted_loss


class NativeCalls:
    """Mixin of ``NativeModel``: everything that runs the compiled entry points."""

    def _bwd_arrays(self, arrays, T, B, ws):
        """Backward buffers of one call: the step weights, then one scratch per slot."""
        for key, (k, n) in self.bwd_slot.items():
            if key == self.bwd.weight:
                arrays[k] = ws
            elif arrays[k] is None:
                width = self.slot_width.get(k, n)
                arrays[k] = self._scratch(f"bwd {k}", (T, B, width) if self.bwd_timed[k] else (B, width))

    def _fresh_call(self):
        """A new call with (possibly) new parameters: stacked and packed weights are rebuilt."""
        self._scratch("prologue flags", (len(self.PROLOGUE_FLAG),))[:] = 0

    def _new_grads(self) -> dict:
        """Zeroed gradient arrays laid out as :meth:`_plan_grad_arena` says."""
        return self._new_grad_arena()[1]

    def _new_grad_arena(self):
        """(the arena, its gradient views by parameter, in ``step.params`` order)."""
        arena = gemm.aligned_empty(self._grad_elems, self.dtype)
        arena.fill(0)
        grads = {p: arena[at:at + n].reshape(shape) for p, _, at, n, shape in self._grad_specs}
        return arena, {p: grads[p] for p in self.step.params}

    def _set_initial_states(self, states, params, h0):
        """Row 0 of each state buffer: ``h0``'s array, the learned initial state, or 0."""
        for s_, buf in states.items():
            a = h0.get(s_)
            p = self.step.state_init[s_]
            buf[0] = a if a is not None else params[p] if p is not None else 0

    def _outer_tmp(self):
        """The scratch of scaled gradient products (``c != 1``): the largest matrix parameter."""
        big = max([math.prod(s) for s in self.step.params.values() if isinstance(s, tuple)] + [1])
        return self._scratch("outer tmp", (big,))

    def _merge_slices(self, results):
        """One result from the batch slices' (loss, grads, final states): losses and
        gradients summed (the step weights were the whole batch's), states stacked."""
        grads = results[0][1]
        for r in results[1:]:
            for p, g in r[1].items():
                grads[p] += g
        return (sum(r[0] for r in results), grads,
                {s_: np.concatenate([r[2][s_] for r in results]) for s_ in self.step.states})

    def _check_grad_arena(self, arrays):
        """The native code writes a group's gradients through its first parameter's buffer."""
        for _, _, params, _ in self.grad_groups:
            first = arrays[self.grad_slot[params[0]]]
            at = first.ctypes.data
            for p in params:
                a = arrays[self.grad_slot[p]]
                if a.ctypes.data != at or not a.flags.c_contiguous:
                    raise CompileError(f"cell {self.step.name!r}: internal: gradients of {params} "
                                       "are not adjacent (allocate them with _new_grads)")
                at += a.nbytes

    def _buffers(self, call, keep_bwd, timed=None):
        """The buffers of a call: pooled, and the call's parameters and inputs; ``timed``:
        {slot: array} of timed forward buffers of a forward that already ran (a state's has
        h0 in its row 0), used in place and never written."""
        st = self.step
        timed = timed or {}
        arrays, states, fwd = self._pooled_buffers(call.T, call.B, timed)
        for p, k in self.param_slot.items():
            arrays[k] = call.params[p]
        self._set_initial_states({s_: a for s_, a in states.items() if self.state_slot[s_] not in timed},
                                 call.params, call.h0)
        for name, k in self.io_slot.items():
            arrays[k] = call.inputs.get(name, call.targets.get(name))
            if arrays[k] is None:  # forward without targets: never read
                arrays[k] = self._scratch(f"io {name}", (call.T, call.B, (st.inputs | st.targets)[name]))
        return arrays, states, fwd

    def _pooled_buffers(self, T, B, timed=None):
        """The buffers of a (T, B) call that come from this thread's pool (everything but the
        parameters, inputs and targets, whose slots stay None, and the timed forward buffers
        that ``timed`` {slot: array} gives): the arrays by slot, the state buffers (T+1, B, n)
        and the kept forward values by key."""
        arrays, timed = [None] * len(self.layout.slots), timed or {}
        for k, name, shape in self._timed_forward_buffers(T, B):
            arrays[k] = timed[k] if k in timed else self._scratch(name, shape)
        states = {s_: arrays[k] for s_, k in self.state_slot.items()}
        fwd = {}
        for key, (k, n) in self.fwd_slot.items():
            col = self.layout.where[key].col
            fwd[key] = arrays[k][:, :, col:col + n]
        for name, k in self.stack_slot.items():
            arrays[k] = self._scratch(f"stacked {name}", (math.prod(self.shapes[name]),))
        for (p, tr), k in self.pack_slot.items():
            arrays[k] = self._scratch(f"packed {p} {tr}", (self._packed_elems(p, tr),))
        # hoisted products use T·B rows
        arrays[self.scratch_slot] = self._scratch("scratch", (T * B * self.scratch_units,))
        arrays[self.prologue_slot] = self._scratch("prologue flags", (len(self.PROLOGUE_FLAG),))
        return arrays, states, fwd

    def _timed_forward_buffers(self, T, B) -> list:
        """(slot, pool name, shape) of the buffers the forward writes for every step -- the
        states (T+1 rows: row 0 is h0) and the computed values (T rows; a stacked whole is one
        slot) -- which are what a backward reads back."""
        st, out, seen = self.step, [], set()
        for s_, k in self.state_slot.items():
            out.append((k, f"state {s_}", (T + 1, B, st.states[s_])))
        for _, (k, n) in self.fwd_slot.items():  # computed values: never a state or io slot
            if k not in seen:  # the first member of a stacked whole
                seen.add(k)
                out.append((k, k, (T, B, self.slot_width.get(k, n))))
        for k, width in self.slot_width.items():
            if k not in seen and k not in self.bwd_timed:  # a forward whole
                seen.add(k)
                out.append((k, k, (T, B, width)))
        return out

    def _packed_elems(self, p, tr) -> int:
        cache = self.__dict__.setdefault("_packed_sizes", {})
        if (p, tr) not in cache:
            m_, n_ = self.shapes[p]
            K, N = (m_, n_) if tr else (n_, m_)
            cache[(p, tr)] = gemm.packed_b_elems(K, N, str(self.dtype), self.host)
        return cache[(p, tr)]

    def _work(self, T, B):
        """GEMM packing workspace: a bound over every product shape of this cell.

        Rows go up to T·B (hoisted products), and so does depth (gradients after the loop)."""
        key = (T, B)
        n = self._work_elems.get(key)
        if n is None:
            S = max([x.size for x in self.step.prog.nodes.values() if isinstance(x.size, int)]
                    + [d for s in self.shapes.values() if isinstance(s, tuple) for d in s]
                    + [self.scratch_units])
            n = gemm.workspace_elems(max(T * B, S), S, max(T * B, S), str(self.dtype), self.host)
            if len(self._work_elems) > 64:
                self._work_elems.clear()
            self._work_elems[key] = n
        return self._scratch("gemm work", (max(n, 1),))

    def _scratch(self, name, shape) -> np.ndarray:
        """A buffer reused across calls of this thread (fresh pages cost more than the math:
        the kernel zero-fills every newly mapped page).  Never returned to the caller."""
        owner = self._current_pool()
        pool = getattr(owner, "bufs", None)
        if pool is None:
            pool = owner.bufs = {}
            owner.views, owner.ptrs, owner.gen = {}, {}, 0
        views = owner.views
        v = views.get((name, shape))
        if v is not None:  # the same view object every call: its address is known (see _run)
            return v
        size = math.prod(shape)
        a = pool.get(name)
        if a is None or a.size < size:  # grow only: a shorter segment reuses a prefix
            a = pool[name] = gemm.aligned_empty(size, self.dtype)
            owner.gen += 1  # addresses changed: cached call frames are stale (native_fast)
            for k in [k for k in views if k[0] == name]:  # views of the old buffer: forget them
                owner.ptrs.pop(id(views.pop(k)), None)
        if len(views) > 512:  # many (T, B) shapes: start afresh rather than grow without bound
            views.clear()
            owner.ptrs.clear()
            owner.gen += 1
        v = views[(name, shape)] = a[:size].reshape(shape)
        owner.ptrs[id(v)] = v.ctypes.data
        return v

    def _current_pool(self):
        """Where :meth:`_scratch` takes buffers: this thread's pool, or the private pool of a
        forward kept for a later backward (``native_vjp.py``), which no other call reuses."""
        return getattr(self._pool, "private", None) or self._pool

    def _run(self, fn, arrays, T, B):
        if fn is self._bwdfn:
            self._check_grad_arena(arrays)
        known = getattr(self._current_pool(), "ptrs", {})  # pooled views (alive in the pool: ids are stable)
        ptrs = (ctypes.c_void_p * len(arrays))(*[None if a is None else known.get(id(a)) or a.ctypes.data
                                                 for a in arrays])
        work = self._work(T, B)
        fn(T, B, ptrs, work.ctypes.data)  # ctypes releases the GIL during the call

    def _forward_call(self, call):
        """Forward only: in chunks of steps, one chunk's buffers (``native_forward``)."""
        outs, final, _ = native_forward.forward(self, call)
        return outs, final

    def _forward_fast(self, params, inputs, h0, check_finite):
        """One native forward call, its buffers cached (backends/native_fast.py), or None."""
        return native_fast.forward(self, params, inputs, h0, check_finite)

    def _loss_and_grad_fast(self, params, inputs, targets, h0, mask, check_finite):
        """One native call pair, its buffers cached (backends/native_fast.py), or None."""
        if not self._fast_path:
            return None
        return native_fast.loss_and_grad(self, params, inputs, targets, h0, mask, check_finite)

    def _loss_and_grad_call(self, call, w):
        """With ``threads > 1`` the batch is split into independent slices run on separate cores
        for the whole sequence (each in its own native call, GIL released); their gradients
        and loss terms are summed (the step weights are the global ones)."""
        parts = self._split(call.B)
        if len(parts) == 1:
            return self._loss_and_grad(call, w)
        return self._merge_slices(list(self._executor().map(
            lambda sl: self._loss_and_grad(*_slice_call(call, w, sl), call.B), parts)))

    @property
    def memory(self):
        """The activation-memory schedule (``memory=`` of :func:`rnncomp.compile`).  It only
        decides which steps' buffers a training call keeps, not the code: assigning a new one
        (``model.memory = rc.Every(10)``) takes effect at the next call, with no recompile."""
        return self._memory

    @memory.setter
    def memory(self, value):
        self._memory = schedule(value)
        self.__dict__.pop("_plans", None)
        self.__dict__.pop("_chunks", None)  # native_forward.chunk_steps
        self._leaf_only = {}

    def _single_leaf(self, T, B) -> bool:
        """Whether ``memory=`` keeps every step of a (T, B) call: one forward, one backward."""
        one = self._leaf_only.get((T, B))
        if one is None:
            if len(self._leaf_only) > 64:
                self._leaf_only.clear()
            acts = self.memory_plan(T, B).actions
            one = self._leaf_only[(T, B)] = [a[0] for a in acts] == ["leaf"] and acts[0][1:3] == (0, T)
        return one

    def _split(self, B):
        n = min(self.threads, B // self.min_batch_per_thread) if self.threads > 1 else 1
        if n <= 1:
            return [slice(0, B)]
        edges = np.linspace(0, B, n + 1).round().astype(int)
        return [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]

    def _executor(self):
        if self._pool_exec is None:
            from concurrent.futures import ThreadPoolExecutor
            self._pool_exec = ThreadPoolExecutor(self.threads, thread_name_prefix="rnncomp")
        return self._pool_exec

    def _loss_and_grad(self, call, w, B_total=None):
        """One batch slice: the plan of ``memory=`` for the whole batch (``B_total`` rows), run on
        this slice (a slice takes its share of a ``Budget``: sizes are proportional to B)."""
        from .checkpoint import run

        grads = self._new_grads()
        self._fresh_call()
        plan = self.memory_plan(call.T, B_total or call.B)
        loss, carry, final = run(self, call, w, plan, grads)
        add_initial_state_grads(self.step, grads, carry, call.h0)
        return loss, grads, final

    def _segment(self, call, w, a, b, h0, carry, grads, backward):
        """Steps a..b-1 from states ``h0``; the backward steps start from adjoints ``carry``."""
        seg = self._seg_forward(call, w, a, b, h0)
        if not backward:
            return seg.loss, None, seg.final
        return seg.loss, self._seg_backward(seg, carry, grads), seg.final

    def _seg_forward(self, call, w, a, b, h0):
        """The forward of steps a..b-1 into buffers the backward of those steps reads."""
        st = self.step
        if a == 0 and b == call.T:
            sub, ws = call, w
        else:
            sub, ws = call.window(a, b, h0), None if w is None else w[a:b]
        T, B = sub.T, sub.B
        arrays, states, fwd = self._seg_buffers(sub, ws)
        self._run(self._fwd, arrays, T, B)
        loss = weighted_loss(ws, fwd[st.loss_key][:, :, 0]) if self._has_loss else None
        final = {s: states[s][-1].copy() for s in st.states}
        return _Seg(a, b, T, B, arrays, states, fwd, loss, final, call)

    def _seg_buffers(self, sub, ws, timed=None):
        """The buffers of a segment's forward and backward: (arrays by slot, states, fwd);
        ``timed``: as for :meth:`_buffers`."""
        arrays, states, fwd = self._buffers(sub, True, timed)
        self._bwd_arrays(arrays, sub.T, sub.B, ws if ws is not None else self._zero_weights(sub.T, sub.B))
        arrays[self.tmp_slot] = self._outer_tmp()
        return arrays, states, fwd

    def _zero_weights(self, T, B):
        ws = self._scratch("zero weights", (T, B))
        ws[...] = 0
        return ws

    def _seg_backward(self, seg, carry, grads):
        """Backward steps b-1 … a of a segment's forward; returns the adjoints carried out."""
        arrays, d_out = seg.arrays, seg.call.d_out or {}
        for o, key in self.bwd.out_seeds.items():  # the outputs' cotangents (VJP), missing ones 0
            slot = self.bwd_slot[key][0]
            if o in d_out:
                arrays[slot] = d_out[o][seg.a:seg.b]
            else:
                arrays[slot] = self._scratch(f"zero cotangent {o}", (seg.T, seg.B, self.step.outputs[o]))
                arrays[slot][...] = 0
        for s_, key in self.bwd.carry_in.items():  # δ⁺h entering the segment's last step
            buf = arrays[self.bwd_slot[key][0]]
            buf[...] = 0 if carry is None or s_ not in carry else carry[s_]
        for p, k in self.grad_slot.items():
            arrays[k] = grads[p]  # the native code accumulates into these
        d_in, copy_out = seg.call.d_in or {}, []
        for x, key in self.bwd.input_adjoints.items():  # the inputs' cotangents of these steps
            if x not in d_in or key is None:
                continue
            slot, n = self.bwd_slot[key]
            if self.slot_width.get(slot, n) == n:  # a slot of its own: written in place
                arrays[slot] = d_in[x][seg.a:seg.b]
            else:
                copy_out.append((x, slot, self.layout.where[key].col, n))
        self._run(self._bwdfn, arrays, seg.T, seg.B)
        for x, slot, col, n in copy_out:
            d_in[x][seg.a:seg.b] = arrays[slot][:, :, col:col + n]
        return {s_: arrays[self.bwd_slot[key][0]].copy() for s_, key in self.bwd.carry_in.items()}

    def activation_bytes(self, T: int, B: int) -> int:
        """Bytes of the per-step buffers a training call of (T, B) keeps, under ``memory=``:
        the longest leaf's activations and the checkpoints held at once (``schedules.Footprint``)."""
        from .checkpoint import footprint

        return self.memory_plan(T, B).memory(footprint(self, B))

    def memory_plan(self, T: int, B: int):
        """The checkpointing plan (``rnncomp.schedules.Plan``) of ``memory=`` for a call of (T, B)."""
        from .checkpoint import footprint, planned

        plans = self.__dict__.setdefault("_plans", {})
        key = (T, B)
        if key not in plans:
            if len(plans) > 64:
                plans.clear()
            plans[key] = planned(self.step, self.memory, T, footprint(self, B))
        return plans[key]

    def _advance_entry(self):
        """The compiled "advance" entry point (ctypes), made on first use."""
        fn = self.__dict__.get("_advfn")
        if fn is None:
            proto = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_int64, ctypes.POINTER(ctypes.c_void_p),
                                     ctypes.c_void_p)
            fn = self._advfn = proto(self._advance_lib().address("advance"))
        return fn


class _Seg:
    """The forward of one segment (steps a..b-1) and the buffers its backward reads."""

    def __init__(self, a, b, T, B, arrays, states, fwd, loss, final, call):
        self.a, self.b, self.T, self.B = a, b, T, B
        self.arrays, self.states, self.fwd = arrays, states, fwd
        self.loss, self.final, self.call = loss, final, call


def _slice_call(call, w, sl):
    """The sub-problem of batch rows ``sl`` (contiguous copies) and its global step weights."""
    from .validate import Call

    cut = lambda d: {k: np.ascontiguousarray(v[:, sl]) for k, v in d.items()}  # noqa: E731
    sub = Call(call.T, sl.stop - sl.start, call.params, cut(call.inputs), cut(call.targets),
               {k: np.ascontiguousarray(v[sl]) for k, v in call.h0.items()},
               None if call.mask is None else np.ascontiguousarray(call.mask[:, sl]))
    return sub, None if w is None else np.ascontiguousarray(w[:, sl])
