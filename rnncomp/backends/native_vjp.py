"""Gradients in and out on the native backend: the hooks of :class:`.vjp.VjpMixin`.

A VJP call needs a backward program seeded differently from ``loss_and_grad``'s (the
outputs' cotangents in, the inputs' cotangents out, the loss only with targets), so
each :class:`~rnncomp.autodiff.Cotangents` gets a *variant*: the same cell compiled
with the same options and that backward (``NativeModel(..., _cot=cot)``), made on first
use and kept by the model (disk-cached like any other compile).

A forward kept for a later backward (``forward(..., keep=True)``) runs in a private pool
of buffers that no other call reuses, per batch slice; the backward reads them and
nothing is recomputed.  Under a ``memory=`` schedule that does not keep every step, the
kept forward runs in chunks of the plan's longest leaf (``native_forward``) and holds only
the call, and the backward runs the schedule's plan (which recomputes what it did not keep,
as in ``loss_and_grad``).

The kept buffers the backward reads back -- per batch slice, the states and the forward's
computed values (``NativeCalls._timed_forward_buffers``) -- can leave the kept forward
(``Kept.residuals``: views of them) and come back (``model.kept_from``): the backward then
runs on the caller's arrays in place, with the rest of its buffers from a spare pool.
"""
from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np

from . import native_forward
from .validate import add_initial_state_grads
from .vjp import VjpMixin

#: VJP variants kept per model (one per distinct set of cotangents); beyond, the oldest goes.
MAX_VARIANTS = 8
#: Private pools of freed kept forwards, kept for the next one (fresh pages cost more than
#: the math: a layer's forward/backward pair per training step reuses the same buffers).
MAX_SPARE_POOLS = 4


class _Part:
    """One batch slice of a kept forward."""

    def __init__(self, call, w, sl, pool, seg):
        self.call, self.w, self.sl, self.pool, self.seg = call, w, sl, pool, seg


class NativeVjp(VjpMixin):
    """Mixin of ``NativeModel``: ``vjp`` and ``forward(..., keep=True)``."""

    def _variant(self, cot):
        """The model compiled for the cotangents ``cot`` (made once, then kept)."""
        with self._vlock:
            variants = self._variants
            v = variants.get(cot)
            if v is None:
                if len(variants) >= MAX_VARIANTS:
                    variants.pop(next(iter(variants)))
                v = variants[cot] = type(self)(
                    self._cell, self.dtype, cache=self._cache, hoist=self.hoist, grad_after=self.grad_after,
                    fuse=self.fuse, pack=self.pack, stack=self.stack, threads=self.threads,
                    memory=self.memory, _cot=cot)
            if v.memory is not self.memory:  # model.memory was reassigned since
                v.memory = self.memory
            return v

    @contextmanager
    def _private(self, pool):
        """Run this thread's calls in ``pool`` (buffers owned by a kept forward)."""
        prev = getattr(self._pool, "private", None)
        self._pool.private = pool
        try:
            yield
        finally:
            self._pool.private = prev

    def _spare_pool(self):
        with self._vlock:
            return self._spare.pop() if self._spare else SimpleNamespace()

    def _vjp_release(self, state):
        v, parts = state
        with v._vlock:
            for p in parts:
                if p.pool is not None and len(v._spare) < MAX_SPARE_POOLS:
                    v._spare.append(p.pool)
                p.pool = p.seg = None

    def _map(self, fn, items):
        items = list(items)
        if len(items) == 1:
            return [fn(items[0])]
        return list(self._executor().map(fn, items))

    # ------------------------------------------------------------------ the hooks
    def _cuts(self, call, w):
        """(call, step weights, rows) of each batch slice a kept forward runs on its own thread."""
        from .native_calls import _slice_call

        split = self._split(call.B)
        return [(call, w, slice(0, call.B))] if len(split) == 1 else [
            (*_slice_call(call, w, sl), sl) for sl in split]

    def _vjp_forward(self, call, w, cot):
        v = self._variant(cot)
        cuts = v._cuts(call, w)
        keep_all = v._single_leaf(call.T, call.B)

        def one(cut):
            sub, ws, sl = cut
            if not keep_all:  # a schedule: only the outputs now (chunked), the plan at backward time
                return _Part(sub, ws, sl, None, None), native_forward.forward(v, sub, ws, call.B)
            pool = v._spare_pool()
            with v._private(pool):
                v._fresh_call()
                seg = v._seg_forward(sub, ws, 0, sub.T, sub.h0)
            outs = {o: (seg.fwd[(o, "t")] if (o, "t") in seg.fwd else seg.states[o][1:]).copy()
                    for o in v.step.outputs}
            return _Part(sub, ws, sl, pool, seg), (outs, seg.final, seg.loss)

        done = self._map(one, cuts)
        outs = {o: _cat([r[0][o] for _, r in done], 1) for o in v.step.outputs}
        final = {s: _cat([r[1][s] for _, r in done], 0) for s in v.step.states}
        loss = None if w is None else sum(r[2] for _, r in done)
        return (v, [p for p, _ in done]), outs, final, loss

    def _vjp_backward(self, state, d_out, d_fin):
        from .checkpoint import run

        v, parts = state
        st, dt = v.step, v.dtype

        def one(part):
            sub, sl = part.call, part.sl
            whole = sl.stop - sl.start == sub.B and len(parts) == 1
            cut = (lambda a, ax: a) if whole else (  # noqa: E731
                lambda a, ax: np.ascontiguousarray(a[:, sl] if ax == 1 else a[sl]))
            sub.d_out = {o: cut(a, 1) for o, a in d_out.items()}
            # written in full by the backward where a gradient reaches the input, else zeros
            sub.d_in = {x: (np.empty if v.bwd.input_adjoints[x] is not None else np.zeros)(
                (sub.T, sub.B, st.inputs[x]), dtype=dt) for x in v.bwd.cot.inputs}
            carry = {s: cut(a, 0) for s, a in d_fin.items()}
            grads = v._new_grads()
            if part.seg is not None:
                with v._private(part.pool):
                    carry = v._seg_backward(part.seg, carry, grads)
            else:
                v._fresh_call()
                _, carry, _ = run(v, sub, part.w, v.memory_plan(sub.T, self._batch(parts)), grads, carry)
            add_initial_state_grads(v.step, grads, carry, sub.h0)
            d_in, sub.d_out, sub.d_in = sub.d_in, None, None
            return grads, d_in, carry

        done = self._map(one, parts)
        grads = done[0][0]
        for r in done[1:]:
            for p, g in r[0].items():
                grads[p] += g
        d_in = {x: _cat([r[1][x] for r in done], 1) for x in v.bwd.cot.inputs}
        d_h0 = {s: _cat([r[2][s] for r in done], 0) for s in st.states}
        return grads, d_in, d_h0

    def _vjp_residual_shapes(self, T, B, cot):
        v = self._variant(cot)
        if not v._single_leaf(T, B):  # a schedule keeps the call only: nothing to export
            return []
        return [shape for sl in v._split(B) for _, _, shape in v._residual_buffers(T, sl.stop - sl.start)]

    def _residual_buffers(self, T, B):
        """(slot, pool name, shape) of the timed forward buffers the backward reads (of those
        the forward writes, ``_timed_forward_buffers``): what a kept forward exports."""
        read = self.__dict__.get("_read_slots")
        if read is None:
            where = self.layout.where
            read = self._read_slots = frozenset(where[k].slot for k in self._backward_keys() if k in where)
        return [b for b in self._timed_forward_buffers(T, B) if b[0] in read]

    def _vjp_export(self, state):
        v, parts = state
        return [p.seg.arrays[k] for p in parts if p.seg is not None
                for k, _, _ in v._residual_buffers(p.call.T, p.call.B)]

    def _vjp_adopt(self, call, w, cot, arrays):
        from .native_calls import _Seg

        v = self._variant(cot)
        cuts = v._cuts(call, w)
        if not v._single_leaf(call.T, call.B):  # a schedule: the plan at backward time, as when kept
            return v, [_Part(sub, ws, sl, None, None) for sub, ws, sl in cuts]
        parts, given = [], iter(arrays)
        for sub, ws, sl in cuts:
            timed = {k: next(given) for k, _, _ in v._residual_buffers(sub.T, sub.B)}
            pool = v._spare_pool()
            with v._private(pool):  # the given arrays are read in place by the backward, never written
                v._fresh_call()
                bufs, _, _ = v._seg_buffers(sub, ws, timed)
            seg = _Seg(0, sub.T, sub.T, sub.B, bufs, None, None, None, None, sub)
            parts.append(_Part(sub, ws, sl, pool, seg))
        return v, parts

    @staticmethod
    def _batch(parts):
        return sum(p.sl.stop - p.sl.start for p in parts)


def _cat(arrays, axis):
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=axis)
