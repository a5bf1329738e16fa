"""Emitting a step program (forward or backward: ew, matvec, slice, pad, concat, sum, lse) over
the rows of one step, for the native online executors (:mod:`.native_tangent`, RTRL and dense
SnAp; :mod:`.native_snap`, sparse SnAp).  A mixin: the class provides ``st`` (the step),
``plan.L`` (where values live, :class:`rnncomp.passes.layout.Layout`) and ``plan.state`` (the slot of
each state's h[t-1]).
"""
from __future__ import annotations

import copy
import ctypes
import hashlib

import numpy as np
import sympy as sp
from llvmlite import ir

from ..errors import CompileError
from ..forward_mode import is_tangent_param
from ..gradspec import Batch
from ..ir import LEAF_OPS
from ..passes.layout import Layout
from .llvm import gemm
from .llvm import kernel_library
from .llvm.builder import I64, for_range
from .llvm.jit import compile_keyed
from .native_nodes import NODE_CODE, Site
from .native_plan_cache import package_fingerprint
from .native_tangent_plan import SCRATCH, new_slot


class OnlineSlots:
    """Where the values of a native online kernel live (the part the kernels share): slots of
    the ``bufs`` pointer array with ``sizes[slot] = (rows, units)``, rows "B" (per sample),
    "1", or "ext" (the caller's array).  Parameters, inputs and targets, the caller's (T, B)
    step weights at ``weight_key``, h[t-1] of each state, every computed node of ``progs``,
    the product scratch, the gradient g, the loss, and the scratch of a scaled gradient term."""

    def __init__(self, step, progs, bwd, weight_key):
        self.step, self.L, self.sizes = step, Layout(), {}
        self._fixed_for, self._ptrs = None, None   # the pointer array of the last bufs (see call)
        self._last_put = {}   # slot -> (the array the last call passed, its address): see call
        self.param = {p: self.slot(f"param {p}", "ext", 0) for p in step.params}
        for p, k in self.param.items():
            self.place((p, None), k)
        self.io = {}
        for name, n in list(step.inputs.items()) + list(step.targets.items()):
            self.io[name] = k = self.slot(f"io {name}", "ext", n, timed=True)
            self.place((name, "t"), k)
        self.weight = self.slot("w", "ext", 1, timed=True)
        self.place(weight_key, self.weight)
        self.state = {s: self.slot(f"state {s}", "B", n) for s, n in step.states.items()}
        for s, k in self.state.items():
            self.place((s, "t-1"), k)
        for prog in progs:
            for key, node in prog.nodes.items():
                if node.op not in LEAF_OPS:
                    self.place(key, self.slot(f"value {key}", "B", node.size))
        maxn = max([n.size for prog in progs for n in prog.nodes.values() if isinstance(n.size, int)] + [1])
        self.place(SCRATCH, self.slot("scratch", "B", maxn))
        self.packed = {}   # (param, transposed) -> the slot of op(P) packed once per call (GEMM panels)
        for prog in progs:
            for node in prog.nodes.values():
                for p, tr, _ in node.attrs["terms"] if node.op == "matvec" else ():
                    if not is_tangent_param(p) and (p, tr) not in self.packed:
                        self.packed[(p, tr)] = self.slot(f"packed {p}{'ᵀ' if tr else ''}", "packed", 0)
        self.P = sum(int(np.prod(s)) for s in step.params.values())
        self.grad = self.slot("g", "1", self.P)
        self.loss = self.slot("loss", "1", 1)
        outer = [int(np.prod(step.params[p])) for p, specs in bwd.grads.items() for s_ in specs
                 if not isinstance(s_, Batch) and s_.c != 1]
        self.tmp = self.slot("gradient scratch", "1", max(outer + [1]))

    def slot(self, label, rows, units, timed=False):
        """A slot of ``units`` per row: ``rows`` "B" (per sample), "1" (shared) or "ext"
        (:func:`.native_tangent_plan.new_slot`)."""
        return new_slot(self.L, self.sizes, label, rows, units, timed)

    def place(self, key, k):
        if key in self.L.where:
            raise CompileError(f"cell {self.step.name!r}: internal: two values named {key!r} in the online step")
        self.L.place(key, k)

    def buffers(self, B, dtype, host, gemm_rows=0):
        """(the internal buffers for batch B, the products' workspace; ``gemm_rows``: the most
        rows of a product of the kernel's own beyond the step's, native_snap's dense blocks)."""
        rows = {"B": B, "1": 1}
        bufs = {k: np.zeros(rows[r] * max(u, 1), dtype=dtype) for k, (r, u) in self.sizes.items()
                if r not in ("ext", "packed")}
        for (p, tr), k in self.packed.items():   # op(P): K × N (aligned: the panels are read by vector loads)
            m_, n_ = self.step.params[p]
            bufs[k] = gemm.aligned_empty(gemm.packed_b_elems(*((m_, n_) if tr else (n_, m_)), str(dtype), host),
                                         dtype)
        S = max([n.size for n in self.step.prog.nodes.values() if isinstance(n.size, int)]
                + [d for s in self.step.params.values() if isinstance(s, tuple) for d in s] + [B, gemm_rows])
        return bufs, np.zeros(max(gemm.workspace_elems(S, S, S, str(dtype), host), 1), dtype=dtype)


    def call(self, fn, bufs, work, params, states, seqs, w, extra, fixed=None):
        """Run ``fn`` over the steps of ``w`` (T, B): the internal ``bufs``, the caller's
        parameters, sequences, weights and states, and ``extra`` {slot: array} (carries and
        tables, used in place: they must be contiguous).  ``fixed`` {slot: array}: arrays that
        live, unmoved, as long as ``bufs`` (index tables): their pointers, with those of ``bufs``,
        are written once per ``bufs`` (one pointer array kept, for the last ``bufs``).
        Returns (loss, g, final states)."""
        T, B = w.shape
        dt = work.dtype
        if self._fixed_for is not bufs:
            self._ptrs = (ctypes.c_void_p * len(self.L.slots))()
            for k, a in list(bufs.items()) + list((fixed or {}).items()):
                self._check_contiguous(k, a)
                self._ptrs[k] = a.ctypes.data
            self._fixed_for = bufs
        ptrs, last = self._ptrs, self._last_put

        def put(slot, a):   # the same array as the last call's (held here, so its data stays): no lookup
            if last.get(slot, (None,))[0] is not a:
                last[slot] = (a, a.ctypes.data)
            ptrs[slot] = last[slot][1]

        for k, a in extra.items():
            self._check_contiguous(k, a)
            put(k, a)
        for p, k in self.param.items():
            put(k, np.ascontiguousarray(params[p], dtype=dt))
        for name, k in self.io.items():
            put(k, np.ascontiguousarray(seqs[name], dtype=dt))
        put(self.weight, np.ascontiguousarray(w, dtype=dt))
        for s, k in self.state.items():
            bufs[k][:] = np.asarray(states[s], dtype=dt).ravel()
        bufs[self.grad][:] = 0
        bufs[self.loss][:] = 0
        fn(T, B, ptrs, work.ctypes.data)
        final = {s: bufs[k].reshape(B, n).copy() for (s, n), k in zip(self.step.states.items(), self.state.values())}
        return float(bufs[self.loss][0]), bufs[self.grad].copy(), final


    def _check_contiguous(self, k, a):
        if not a.flags.c_contiguous:
            raise CompileError(f"cell {self.step.name!r}: internal: {self.L.slots[k].label} is not contiguous")


def sources_hash():
    """A sha256 seeded with every rnncomp source (:func:`.native_plan_cache.package_fingerprint`),
    as the native model's object key is: a native online kernel's code also comes from modules
    no short list keeps up with (``functions.EVALUATED_AS`` through the printer, the matrix
    emitter, the op table), and an edit of one of those must not load the code it replaced."""
    return hashlib.sha256(package_fingerprint().encode())


def hash_programs(h, progs) -> None:
    """Add every node of ``progs`` (key, op, arguments, size, attributes) to the hash ``h``: the
    part of a native online kernel's cache key its programs make."""
    for prog in progs:
        for key, n in prog.nodes.items():
            attrs = {k: (sp.srepr(v) if isinstance(v, sp.Basic) else v) for k, v in n.attrs.items()}
            h.update(repr((key, n.op, n.args, n.size, sorted(attrs.items()))).encode())


def compile_online(step, description, build, host, cache, what):
    """(library, callable ``online(T, B, bufs, work)``) of a kernel, through the keyed cache;
    an LLVM failure becomes a :class:`CompileError` naming the cell."""
    try:
        lib = compile_keyed(description, build, cache=cache, host=host, link=kernel_library.link)
    except CompileError:
        raise
    except Exception as exc:  # noqa: BLE001 - any LLVM failure becomes a clear error
        raise CompileError(f"cell {step.name!r}: LLVM failed to compile {what}: {exc}") from None
    fn = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_int64, ctypes.POINTER(ctypes.c_void_p),
                          ctypes.c_void_p)(lib.address("online"))
    return lib, fn


class StepEmitter:
    """Program emission shared by the native online kernels."""

    def fork(self):
        """The same compiled kernel with buffers of its own, for another thread's share of a
        batch (:class:`rnncomp.algorithms.compiled.Native`)."""
        k = copy.copy(self)
        k._bufs, k._B = {}, None
        if isinstance(self.plan, OnlineSlots):  # the pointer array of the last buffers is per kernel
            k.plan = copy.copy(self.plan)
            k.plan._fixed_for, k.plan._ptrs, k.plan._last_put = None, None, {}
        return k

    def _slot_ptr(self, g, slot):
        return g.b.load(g.b.gep(g.bufs, [I64(slot)], inbounds=True))

    def _program(self, g, prog, t):
        """Every computed node of ``prog`` (the forward step, or a backward step) over g.B rows.
        Element-wise nodes wait while the nodes after them that do not read them go first, so
        that consecutive ones of one size run as one loop (:meth:`.native_emit.Gen.ew`: a value
        made earlier in the loop is taken from its register)."""
        pending = []

        def flush():
            while pending:
                size = pending[0][1].size
                n = next((i for i, (_, nd) in enumerate(pending) if nd.size != size), len(pending))
                g.ew([(key, node, g.ptr(key, t), [g.ptr(a, t) for a in node.args],
                       [(prog.node(a).size, a[1] is None, prog.node(a).size) for a in node.args], node.args)
                      for key, node in pending[:n]])
                del pending[:n]

        for key, node in prog.nodes.items():
            if node.op in LEAF_OPS:
                continue
            if node.op == "ew":
                pending.append((key, node))
                continue
            if any(a == k for a in node.args for k, _ in pending):
                flush()
            out, args = g.ptr(key, t), [g.ptr(a, t) for a in node.args]
            if node.op == "matvec":
                self._products(g, node, out, args[0], prog.node(node.args[0]).size, t)
            else:
                self._rows(g, prog, key, node, out, args)
        flush()

    def _rows(self, g, prog, key, node, out, args):
        """slice, pad, concat, sum, lse over g.B rows (the forward's B, the tangents' B·K): the
        native backend's code of the op (:data:`.native_nodes.NODE_CODE`)."""
        NODE_CODE[node.op](Site(g, prog), key, node, out, args)

    def _pack_weights(self, g):
        """Before the time loop: op(P) of every per-step product packed into GEMM panels, once
        per call (the weights are constant within it), as the native backend packs its
        recurrent weights (:meth:`.native_emit.Gen.pack_weights`)."""
        slots = self.plan.packed
        g.packed_pointers(slots, slots)
        g.pack_weights(slots, slots, self.st.params)

    def _products(self, g, node, out, v, n_in, t):
        """out (+)= Σ c·v·op(P)ᵀ over the terms that name a matrix (GEMMs over g.B rows; from
        op(P) packed before the loop where :meth:`_pack_weights` did)."""
        first = True
        for p, tr, c in node.attrs["terms"]:
            if is_tangent_param(p):
                continue
            m_, n_ = self.st.params[p]
            dst = out if c == 1 else g.ptr(SCRATCH, t)   # a scaled term goes through the scratch
            acc = 0 if first or c != 1 else 1
            if (p, tr) in g.packed:
                g.b.call(g.packed_gemm(), [g.B, I64(node.size), I64(n_in), v, I64(n_in), g.packed[(p, tr)],
                                           dst, I64(node.size), ir.IntType(32)(acc), g.work])
            else:
                g.call_gemm(g.B, I64(node.size), I64(n_in), v, I64(n_in), False, g.ptr((p, None), t), I64(n_),
                            not tr, dst, I64(node.size), acc)
            if c != 1:
                g.scaled_rows(out, dst, node.size, node.size, c, accumulate=not first)
            first = False
        return first  # True: nothing written yet

    def _grad_terms(self, g, bwd, t, grad, tmp, per_sample=False):
        """The backward step's parameter terms at ``t`` (``w`` is inside them) added into the flat
        ``grad``: summed over the batch (Batch sums, Outer products as GEMMs of depth B; ``tmp``
        holds a scaled one) or, ``per_sample``, into the rows of a (B, P) array."""
        b = g.b
        sizes = [int(np.prod(shape)) for shape in self.st.params.values()]
        P, off = sum(sizes), 0
        for (p, shape), size in zip(self.st.params.items(), sizes):
            for spec in bwd.grads.get(p, []):
                if isinstance(spec, Batch):
                    n_src, src = bwd.prog.node(spec.g).size, g.ptr(spec.g, t)
                    with for_range(b, g.B, name="gb") as bi:
                        row = b.gep(grad, [b.add(b.mul(bi, I64(P)), I64(off)) if per_sample else I64(off)])
                        with for_range(b, I64(size), name="gj") as j:
                            x = b.load(b.gep(src, [b.add(b.mul(bi, I64(n_src)), j if n_src > 1 else I64(0))]))
                            at = b.gep(row, [j])
                            b.store(b.fadd(b.load(at), x), at)
                    continue
                rows_, cols_ = shape
                A, V = g.ptr(spec.g, t), g.ptr(spec.v, t)
                first, second = (V, A) if spec.tr else (A, V)   # grad[i, j] += c · first[i] second[j]
                if per_sample:
                    self._outer_rows(g, grad, P, off, first, second, rows_, cols_, spec.c)
                    continue
                dst = b.gep(grad, [I64(off)])
                target = dst if spec.c == 1 else tmp
                g.call_gemm(I64(rows_), I64(cols_), g.B, first, I64(rows_), True, second, I64(cols_), False,
                            target, I64(cols_), 1 if spec.c == 1 else 0)
                if spec.c != 1:
                    g.copy_loop(dst, target, I64(size), scale=spec.c, accumulate=True)
            off += size

    def _outer_rows(self, g, grad, P, off, first, second, rows_, cols_, c):
        b = g.b
        with for_range(b, g.B, name="ob") as bi:
            row = b.gep(grad, [b.add(b.mul(bi, I64(P)), I64(off))])
            with for_range(b, I64(rows_), name="oi") as i:
                x = b.load(b.gep(first, [b.add(b.mul(bi, I64(rows_)), i)]))
                if c != 1:
                    x = b.fmul(x, ir.Constant(g.ty, float(c)))
                with for_range(b, I64(cols_), name="oj") as j:
                    y = b.load(b.gep(second, [b.add(b.mul(bi, I64(cols_)), j)]))
                    at = b.gep(row, [b.add(b.mul(i, I64(cols_)), j)])
                    b.store(b.fadd(b.load(at), b.fmul(x, y)), at)

    def _copy_state(self, g, s, n):
        new = g.ptr((s, "t"), I64(0))
        old = self._slot_ptr(g, self.plan.state[s])
        g.copy_loop(old, new, g.b.mul(g.B, I64(n)))
