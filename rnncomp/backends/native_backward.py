"""The native backend's backward entry point and its parameter gradients.

    backward(T, B, bufs, work)   t = T-1 … 0: the backward step f̄, the per-step gradient
                                 products, δ⁺ carried; then, over T·B rows, the values that
                                 only the inputs' cotangents read (pass "cotangents after the
                                 loop") and the gradients of pass "grad_after"

:class:`NativeBackward` is the part of ``NativeModel`` (``backends/native.py``) that plans
where gradients accumulate (groups of stacked parameters, one arena) and emits the
backward entry point, and decides by default whether gradients accumulate per step or after
the loop (:func:`grads_outgrow_cache`).
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir

from ..gradspec import Batch
from ..ir import LEAF_OPS
from ..passes.cotangents_after import for_backward
from .llvm.builder import I64, for_range
from .native_emit import Gen
from .native_profile import section
from ..passes.stack import grad_groups


#: Parameter gradients larger than this (bytes, all matrices together) are accumulated after the
#: backward loop (pass "grad_after") unless ``grad_after=`` says otherwise; see grads_outgrow_cache.
GRAD_AFTER_BYTES = 1 << 20


def grads_outgrow_cache(params: dict, dtype) -> bool:
    """Whether the matrix gradients outgrow a core's L2 (1-2 MiB on the x86 cores measured), where
    products per step -- each of depth B, reading and writing all of every gradient -- stream them
    from L3 at every step.  Measured (float32, one core, Zen 4): LSTM H=512 B=32 T=50 1.27x faster
    with one product of depth T*B after the loop, H=256 1.03x; H=128 and GRU H=128 2-4% slower
    (δ and the operands kept for every step cost more traffic than the small products save)."""
    size = np.dtype(dtype).itemsize
    elems = sum(math.prod(s) for s in params.values() if isinstance(s, tuple) and len(s) >= 2)
    return elems * size > GRAD_AFTER_BYTES


class NativeBackward:
    """Mixin of ``NativeModel``: the backward entry point and the gradient plan."""

    def _gen_backward(self, module):
        g = Gen(module, self.dtype, self.layout, self.host, "backward", self.profile_work)
        with section(g, "native total"):
            self._backward_body(g)
        g.b.ret_void()

    def _backward_body(self, g):
        bwd, st, b = self.bwd, self.step, g.b
        self._prologue(g, self._bwd_prog, set())
        with for_range(b, g.T, name="s") as s:
            t = b.sub(b.sub(g.T, I64(1)), s)  # t = T-1 … 0
            self._emit_program(g, self._bwd_prog, t, skip=self.after)
            self._emit_grads(g, t, deferred=False)
            for s_, k in bwd.carry_out.items():
                dst = g.ptr(bwd.carry_in[s_], t)
                n = st.states[s_]
                if k is None:
                    with for_range(b, b.mul(g.B, I64(n)), name="zc") as z:
                        b.store(ir.Constant(g.ty, 0.0), b.gep(dst, [z]))
                else:
                    g.copy_loop(dst, g.ptr(k, t), b.mul(g.B, I64(n)))
        if self.after:
            # pass "cotangents after the loop" (the transpose of "hoist"): δx[t] = Wᵀ·δa[t]
            # for every step as one product with T·B rows
            per_step_B, g.B = g.B, b.mul(g.T, g.B)
            self._emit_program(g, self._bwd_prog, I64(0), only=self.after)
            g.B = per_step_B
        if self.deferred:
            # pass "grad_after": Σ_t δa[t]ᵀ v[t] as ONE product with T·B rows of depth, after the
            # loop, instead of T products of depth B (the δ values were kept for every step)
            per_step_B, g.B = g.B, b.mul(g.T, g.B)
            self._emit_grads(g, I64(0), deferred=True)
            g.B = per_step_B

    def _backward_keys(self) -> set:
        """Every value whose address the backward entry takes (what :meth:`_backward_body`
        emits reads or writes): the nodes of the backward program and their arguments, the
        operands of the gradient products and the carried adjoints.  Which forward buffers a
        kept forward must hand its backward (``native_vjp.py``) follows from it; a test checks
        it against the addresses the code generator asks for."""
        bwd, keys = self.bwd, set()
        for key, node in self._bwd_prog.nodes.items():
            if node.op not in LEAF_OPS and node.op not in ("view", "stackv"):
                keys.add(key)
                keys.update(node.args)
                if node.op == "matvec":  # its parameters, and scratch for scaled terms
                    keys.update((p, None) for p, _, _ in node.attrs["terms"])
                    keys.add(self._scratch_key)
        for w, kind, _, _ in self.grad_groups:
            keys.add(w)
            if kind[0] != "batch":
                keys.add(kind[1])
        for p, specs in bwd.grads.items():
            if p not in self.grouped_params:
                keys.update(k for spec in specs for k in spec.reads)
        keys.update(bwd.carry_in.values())
        keys.update(k for k in bwd.carry_out.values() if k is not None)
        return keys

    def _plan_deferred(self):
        """Gradient specs whose operands can be kept for all steps (no carried seed among them)."""
        bwd = self.bwd
        self.deferred, self.deferred_keys = set(), set()
        self.after = set()
        if self.hoist and bwd.cot.inputs:
            self.after, keep = for_backward(bwd, self._bwd_prog, self._readers() - self._timed_seeds())
            wholes = {}
            for key, (w, _, _) in self.views.items():
                wholes.setdefault(w, []).append(key)
            timed = keep | self.after  # both exist for every step now
            self.deferred_keys |= timed | {m for k in timed for m in wholes.get(k, ())}
        # without grad_after, only the specs whose δ values are kept for every step anyway (for
        # the inputs' cotangents, or the caller's) are summed after the loop: it costs no memory
        free = None if self.grad_after else set(self.deferred_keys)
        timed = self._timed_seeds()
        for p, specs in bwd.grads.items():
            for i, spec in enumerate(specs):
                mine = [k for k in spec.reads if k in bwd.prog.nodes]
                if free is not None and not all(k in free or k in timed for k in mine):
                    continue
                if all(bwd.prog.nodes[k].op != "seed" or k in timed for k in mine):
                    self.deferred.add((p, i))
                    self.deferred_keys.update(k for k in mine if bwd.prog.nodes[k].op != "seed")

    def _plan_grad_groups(self):
        """Pass "stack", gradients: when the members of a stacked value are each the δ of one
        parameter's only gradient spec, with the same other operand (W_i: δa_iᵀ·x, b_i: Σ δa_i),
        the parameters' gradients are laid out side by side (:meth:`_new_grads`) and
        accumulated by ONE product (or one row loop) over the whole (``passes.stack.grad_groups``)."""
        self.grad_groups = grad_groups(self.bwd, self._bwd_prog, self.views, self.deferred)
        self.grouped_params = {p for _, _, params, _ in self.grad_groups for p in params}
        self._plan_grad_arena()

    def _plan_grad_arena(self):
        """Where each gradient lives in one arena: the parameters of a gradient group are
        adjacent.  ``_grad_specs``: (param, slot, offset, elements, shape) in arena order."""
        st, order = self.step, []
        for _, _, params, _ in self.grad_groups:
            order += params
        order += [p for p in st.params if p not in self.grouped_params]
        self._grad_specs, at = [], 0
        for p in order:
            shape = st.params[p] if isinstance(st.params[p], tuple) else (st.params[p],)
            n = math.prod(shape)
            self._grad_specs.append((p, self.grad_slot[p], at, n, shape))
            at += n
        self._grad_elems = at

    def _emit_grads(self, g, t, deferred: bool):
        """Accumulate the parameter-gradient specs (the deferred ones, or the others) at ``t``."""
        bwd, st, b = self.bwd, self.step, g.b
        for w, kind, params, dfr in self.grad_groups:
            if dfr != deferred:
                continue
            grad = b.load(b.gep(g.bufs, [I64(self.grad_slot[params[0]])]))
            width = self.slot_width[self.layout.where[w].slot]
            whole = g.ptr(w, t)
            if kind[0] == "batch":  # Σ_b δ[b, :] for all members at once
                g.add_batch_sums(grad, whole, width, width)
                continue
            vk = kind[1]
            cols_ = st.params[params[0]][1]
            # [grad P_1; …; grad P_k] += δ_wholeᵀ · v: one product of width·cols
            with section(g, "gradient products", 2.0 * width * cols_):
                g.call_gemm(I64(width), I64(cols_), g.B, whole, I64(width), True,
                            g.ptr(vk, t), I64(self.layout.ld(vk, cols_)), False, grad, I64(cols_), 1)
        for p, specs in bwd.grads.items():
            if p in self.grouped_params:
                continue
            grad = b.load(b.gep(g.bufs, [I64(self.grad_slot[p])]))
            shape = st.params[p]
            for i, spec in enumerate(specs):
                if ((p, i) in self.deferred) != deferred:
                    continue
                if isinstance(spec, Batch):
                    src = g.ptr(spec.g, t)
                    n = shape if isinstance(shape, int) else 1
                    ld = self.layout.ld(spec.g, n)
                    g.add_batch_sums(grad, src, n, ld)
                    continue
                gk, vk, c, tr = spec.g, spec.v, spec.c, spec.tr
                A, V = g.ptr(gk, t), g.ptr(vk, t)
                rows_, cols_ = shape
                # grad[m, n] += c · gᵀ v  (or c · vᵀ g when the term was transposed); depth = rows of g
                (first, n1), (second, n2) = ((V, vk), (A, gk)) if tr else ((A, gk), (V, vk))
                ld1, ld2 = self.layout.ld(n1, rows_), self.layout.ld(n2, cols_)
                with section(g, "gradient products", 2.0 * rows_ * cols_):
                    if c == 1:
                        g.call_gemm(I64(rows_), I64(cols_), g.B, first, I64(ld1), True,
                                    second, I64(ld2), False, grad, I64(cols_), 1)
                    else:
                        tmp = b.load(b.gep(g.bufs, [I64(self.tmp_slot)]))
                        g.call_gemm(I64(rows_), I64(cols_), g.B, first, I64(ld1), True,
                                    second, I64(ld2), False, tmp, I64(cols_), 0)
                        g.copy_loop(grad, tmp, I64(rows_ * cols_), scale=c, accumulate=True)
