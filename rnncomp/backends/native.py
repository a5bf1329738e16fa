"""The native CPU backend: forward and BPTT loops compiled with llvmlite for this host.

Three entry points per cell, each with the time loop inside native code (code size
does not grow with T; T and B are runtime arguments):

    forward (T, B, bufs, work)   t = 0 … T-1: every node of the step program
    backward(T, B, bufs, work)   t = T-1 … 0: every node of the backward step,
                                 parameter gradients accumulated, δ⁺ carried
    advance (T, B, bufs, work)   t = 0 … T-1: the states only (memory schedules,
                                 ``backends/checkpoint.py``)

``bufs`` is an array of pointers, one per value (see :class:`Layout`); a value
of node ``(name, "t")`` at step t lives at ``bufs[slot] + (t + off)·B·n``.
Element-wise nodes are loops over batch × units printed by :mod:`.llvm.exprgen`
(vectorisable vector math); products call the generated GEMM kernels.
"""
from __future__ import annotations

import copy
import ctypes
import math
import functools
import os
import threading

import numpy as np
import sympy as sp
from llvmlite import ir

from ..autodiff import backward_step
from ..errors import CallError, CompileError
from ..memory import schedule
from ..ir import LEAF_OPS, prune, state_independent
from .stackplan import grad_groups, stack_step
from .llvm import gemm
from .llvm.builder import I64, for_range
from .llvm.exprgen import unsupported
from .llvm.finite import define_first_nonfinite
from .llvm.jit import HostTarget, compile_keyed
from . import native_fast
from .native_emit import _DT, Gen, Layout, units_of
from .validate import check_call, initial_states, step_weights

@functools.lru_cache(maxsize=1)
def _code_fingerprint() -> str:
    """A hash of the code generators' sources: cached objects never outlive a code change."""
    import hashlib
    import pathlib

    here = pathlib.Path(__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted([here / "native.py", here / "native_emit.py", here / "stackplan.py",
                     *(here / "llvm").glob("*.py"), here.parent / "ir.py", here.parent / "autodiff.py",
                     here.parent / "lower.py", here.parent / "stacking.py"]):
        h.update(f.read_bytes())
    return h.hexdigest()


class NativeModel:
    """``rc.compile(cell, backend="native")``: same interface as the NumPy model."""

    backend = "native"

    def __init__(self, cell, dtype="float64", *, cache="default", hoist=True, grad_after=False,
                 fuse=True, pack=True, stack=True, threads=None, memory="all"):
        self.dtype = np.dtype(dtype)
        if self.dtype not in _DT:
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        self.step = st = cell.step
        self.cell_name = st.name
        self.host = HostTarget.detect()
        self._work_elems: dict = {}
        self._pool = threading.local()  # per-thread buffers: calls from several threads are safe
        self.hoist, self.grad_after, self.fuse, self.pack, self.stack = hoist, grad_after, fuse, pack, stack
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"cell {st.name!r}: threads must be a positive integer or None (all cores), "
                             f"got {threads!r}")
        self.threads = threads if threads is not None else (os.cpu_count() or 1)
        self.memory = schedule(memory)
        self.min_batch_per_thread = 8  # below this a core's share is too small to pay for itself
        self._pool_exec = None
        bad = sorted({f for n in st.prog.nodes.values() if n.op == "ew" for f in unsupported(n.attrs["expr"])})
        if bad:
            raise CompileError(f"cell {st.name!r}: the native backend cannot lower {', '.join(bad)}")
        self.bwd = backward_step(st) if st.has_loss else None
        self._transform()
        self._build_layout()
        self._plan()
        self._cache, self._adv_lock = cache, threading.Lock()
        self.lib = self._compile(self._cache_description(), self._build_module)
        proto = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_int64, ctypes.POINTER(ctypes.c_void_p),
                                 ctypes.c_void_p)
        self._fwd = proto(self.lib.address("forward"))
        self._bwdfn = proto(self.lib.address("backward")) if self.bwd is not None else None
        # what native_fast checks a call against
        self._first_nonfinite = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p)(
            self.lib.address("first_nonfinite"))
        self._fast_path = self.bwd is not None
        self._param_specs = [(p, self.param_slot[p], s if isinstance(s, tuple) else (s,))
                             for p, s in st.params.items()]
        self._io_specs = [(name, self.io_slot[name], n)
                          for name, n in list(st.inputs.items()) + list(st.targets.items())]
        self._input_names, self._target_names = list(st.inputs), list(st.targets)
        self._state_names = list(st.states)

    # ------------------------------------------------------------------ layout
    def _transform(self):
        """The programs code is generated from: pruned, and with products stacked (pass "stack")."""
        st = self.step
        states = {(s, "t") for s in st.states}
        keep = states | {(o, "t") for o in st.outputs} | ({st.loss_key} if st.has_loss else set())
        fwd = prune(st.prog, keep)
        bprog = self.bwd.prog if self.bwd is not None else None
        self.shapes, self.stacks, self.views = dict(st.params), {}, {}
        if self.stack:
            hoistable = {k for k, n in fwd.nodes.items() if n.op not in LEAF_OPS and k not in states}
            static = state_independent(fwd, hoistable) if self.hoist else set()
            res = stack_step(st, self.bwd, fwd, static)
            fwd, bprog = res.fwd, res.bwd
            self.stacks.update(res.stacks)
            self.views.update(res.views)
            self.shapes.update({name: stk.shape for name, stk in self.stacks.items()})
        self._fwd_prog, self._bwd_prog = fwd, bprog

    def _build_layout(self):
        st, L = self.step, Layout()
        self.layout = L
        self.param_slot = {p: L.slot(f"param {p}") for p in st.params}
        for p, s in self.param_slot.items():
            L.place((p, None), s, 0, timed=False)
        self.stack_slot = {name: L.slot(f"stacked {name}") for name in self.stacks}
        for name, s in self.stack_slot.items():
            L.place((name, None), s, 0, timed=False)
        self.pack_slot = {(p, tr): L.slot(f"packed {p}{'ᵀ' if tr else ''}")
                          for p, shp in self.shapes.items() if isinstance(shp, tuple) for tr in (False, True)}
        self.state_slot = {}
        for s_, n in st.states.items():
            k = L.slot(f"state {s_}")
            self.state_slot[s_] = k
            L.place((s_, "t-1"), k, n, 0)
            L.place((s_, "t"), k, n, 1)
        self.io_slot = {}
        for name, n in list(st.inputs.items()) + list(st.targets.items()):
            k = L.slot(f"io {name}")
            self.io_slot[name] = k
            L.place((name, "t"), k, n, 0)
        # fwd_slot / bwd_slot: key → (slot, size) of every value; members of a stacked
        # product share their whole's slot, whose row width is slot_width[slot]
        self.slot_width, self.bwd_timed = {}, {}
        wholes = {w: width for w, _, width in self.views.values()}
        self.fwd_slot = {}
        fwd_nodes = dict(st.prog.nodes) | self._fwd_prog.nodes
        for key, node in fwd_nodes.items():
            if node.op in LEAF_OPS or key in L.where or key in self.views:
                continue
            k = L.slot(f"fwd {key}")
            if key in wholes:
                self.slot_width[k] = wholes[key]
                L.place(key, k, wholes[key], 0)
            else:
                self.fwd_slot[key] = (k, node.size)
                L.place(key, k, node.size, 0)
        for key, (w, col, width) in self.views.items():
            if key in fwd_nodes:
                k = L.where[w][0]
                self.fwd_slot[key] = (k, fwd_nodes[key].size)
                L.place(key, k, width, 0, col=col)
        self.bwd_slot = {}
        self.grad_slot = {}
        if self.bwd is not None:
            self._plan_deferred()
            bprog = self._bwd_prog
            members: dict = {}
            for key, (w, _, _) in self.views.items():
                members.setdefault(w, []).append(key)
            timed_of = lambda key: key == self.bwd.weight or key in self.deferred_keys  # noqa: E731
            for key, node in bprog.nodes.items():
                if key in self.views:
                    continue
                k = L.slot(f"bwd {key}")
                if key in wholes:  # a stacked slot keeps every step if any member must
                    timed = any(timed_of(m) for m in members[key])
                    self.slot_width[k], self.bwd_timed[k] = wholes[key], timed
                    L.place(key, k, wholes[key] if timed else 0, 0, timed=timed, ld=wholes[key])
                    continue
                timed = timed_of(key)
                self.bwd_slot[key] = (k, node.size)
                self.bwd_timed[k] = timed
                L.place(key, k, node.size if timed else 0, 0, timed=timed, ld=node.size)
            for key, (w, col, width) in self.views.items():
                if key in bprog.nodes:
                    k = L.where[w][0]
                    self.bwd_slot[key] = (k, bprog.nodes[key].size)
                    L.place(key, k, width if self.bwd_timed[k] else 0, 0, timed=self.bwd_timed[k],
                            col=col, ld=width)
            self.grad_slot = {p: L.slot(f"grad {p}") for p in st.params}
            self._plan_grad_groups()
            self.tmp_slot = L.slot("outer scratch")

    def _bwd_arrays(self, arrays, T, B, ws):
        """Backward buffers of one call: the step weights, then one scratch per slot."""
        for key, (k, n) in self.bwd_slot.items():
            if key == self.bwd.weight:
                arrays[k] = ws
            elif arrays[k] is None:
                width = self.slot_width.get(k, n)
                arrays[k] = self._scratch(f"bwd {k}", (T, B, width) if self.bwd_timed[k] else (B, width))

    # ------------------------------------------------------------------ code generation
    def _readers(self) -> set:
        """Values read from memory outside the program that computes them (by the backward
        step, the gradient specs, the carried adjoints, or the caller)."""
        st, bwd = self.step, self.bwd
        keys = {(s, t) for s in st.states for t in ("t", "t-1")} | {(o, "t") for o in st.outputs}
        keys |= {st.loss_key} if st.has_loss else set()
        if bwd is not None:
            keys |= set(bwd.prog.external) | {bwd.weight} | set(bwd.carry_in.values())
            keys |= {k for k in bwd.carry_out.values() if k is not None}
            keys |= {k for specs in bwd.grads.values() for sp_ in specs
                     for k in (sp_[1:2] if sp_[0] == "batch" else sp_[1:3])}
        return keys

    def _emit_program(self, g, prog, t, skip=(), only=None):
        run, L = [], self.layout
        ld = lambda k: L.ld(k, prog.node(k).size)  # noqa: E731 - row stride of a value
        uses: dict = {}
        for key, node in prog.nodes.items():
            for a in node.args:
                uses.setdefault(a, set()).add(key)
        readers = self._readers()

        def flush(run):
            # a value consumed only later in its own fused loop lives in a register: no store
            mine = {item[0] for item in run}
            nostore = {k for k in mine if k not in readers and uses.get(k, set()) <= mine}
            g.ew(run, nostore if self.fuse else set())
        for key, node in prog.nodes.items():
            if node.op in LEAF_OPS or key in skip or (only is not None and key not in only):
                continue
            if node.op in ("view", "stackv"):  # pass "stack": members live inside the whole
                continue
            out = g.ptr(key, t)
            args = [g.ptr(a, t) for a in node.args]
            if node.op == "ew":
                units = [(units_of(prog.node(a)), prog.node(a).op == "param", ld(a)) for a in node.args]
                if run and (not self.fuse or run[0][1].size != node.size):
                    flush(run)
                    run = []
                run.append((key, node, out, args, units, node.args))
                continue
            if run:
                flush(run)
                run = []
            if node.op == "matvec":
                terms = node.attrs["terms"]
                v = node.args[0]
                n_in = prog.node(v).size
                if all(c == 1 for _, _, c in terms):
                    g.matvec(node, out, args[0], n_in, [g.ptr((p, None), t) for p, _, _ in terms],
                             [self.shapes[p] for p, _, _ in terms], ld(v), ld(key))
                else:  # c·(v @ op(P)): one product per term into scratch, scaled and added
                    tmp = g.ptr(self._scratch_key, t)
                    for i, (p, tr, c) in enumerate(terms):
                        one = type(node)(node.op, node.args, node.size, {"terms": ((p, tr, 1),)})
                        g.matvec(one, tmp, args[0], n_in, [g.ptr((p, None), t)], [self.shapes[p]], ld(v))
                        g.scaled_rows(out, tmp, node.size, ld(key), c, accumulate=i > 0)
            elif node.op in ("slice", "pad"):
                g.rows(out, node.size, args[0], prog.node(node.args[0]).size, node.attrs["lo"], node.op,
                       ld(key), ld(node.args[0]))
            elif node.op == "concat":
                lo = 0
                for a, p in zip(node.args, args):
                    n = prog.node(a).size
                    g.rows(out, node.size, p, n, lo, "part", ld(key), ld(a))
                    lo += n
            elif node.op in ("sum", "lse"):
                g.reduce(out, args[0], prog.node(node.args[0]).size, node.op == "lse", ld(key), ld(node.args[0]))
            else:
                raise CompileError(f"native backend: no code for op {node.op!r}")
        if run:
            flush(run)

    @property
    def _scratch_key(self):
        return ("__scratch", None)

    def _plan(self):
        st = self.step
        self.scratch_units = max([n.size for n in st.prog.nodes.values() if isinstance(n.size, int)] +
                                 ([n.size for n in self.bwd.prog.nodes.values()] if self.bwd else []) + [1])
        k = self.layout.slot("scratch")
        self.layout.place(self._scratch_key, k, 0, timed=False)
        self.scratch_slot = k
        self.prologue_slot = self.layout.slot("prologue flags")

    def _compile(self, key, build):
        try:
            return compile_keyed(key, build, cache=self._cache, host=self.host)
        except CompileError:
            raise
        except Exception as exc:  # noqa: BLE001 - any LLVM failure becomes a clear error
            raise CompileError(f"cell {self.step.name!r}: LLVM failed to compile: {exc}") from None

    def _build_module(self):
        module = ir.Module(name=f"rnncomp_{self.step.name}")
        module.triple = self.host.triple
        self._gen_forward(module)
        define_first_nonfinite(module, "first_nonfinite", str(self.dtype))  # native_fast's check
        if self.bwd is not None:
            self._gen_backward(module)
        return module

    def _advance_lib(self):
        """The module of the "advance" entry (memory schedules: the state chain only),
        compiled on first use: most models never checkpoint, and it costs ~30% of a compile."""
        with self._adv_lock:
            lib = self.__dict__.get("_advlib")
            if lib is None:
                def build():
                    module = ir.Module(name=f"rnncomp_{self.step.name}_advance")
                    module.triple = self.host.triple
                    self._gen_advance(module)
                    return module
                lib = self._advlib = self._compile(self._cache_description() + "\nentry: advance", build)
            return lib

    def _cache_description(self) -> str:
        """Everything the generated code depends on: programs, layout, options, code version."""
        parts = [_code_fingerprint(), str(self.dtype),
                 repr((self.hoist, self.grad_after, self.fuse, self.pack, self.stack)), repr(self.stacks),
                 repr(self.layout.slots), repr(sorted(self.layout.where.items(), key=repr))]
        progs = [self._fwd_prog] + ([self._bwd_prog] if self.bwd else [])
        for prog in progs:
            for key, n in prog.nodes.items():
                attrs = {k: (sp.srepr(v) if isinstance(v, sp.Basic) else v) for k, v in n.attrs.items()}
                parts.append(repr((key, n.op, n.args, n.size, sorted(attrs.items()))))
        if self.bwd:
            parts.append(repr((sorted(self.bwd.grads.items()), sorted(self.bwd.carry_out.items()))))
        parts.append(repr(self.step.params))
        return "\n".join(parts)

    def _gen_forward(self, module):
        st = self.step
        g = Gen(module, self.dtype, self.layout, self.host, "forward")
        static = self._static()
        self._prologue(g, self._fwd_prog, static)
        if static:
            # pass "hoist": values that do not depend on any state (all U·x[t]) are computed
            # for every step at once before the loop: their (T, B, n) buffers are contiguous,
            # so one product with T·B rows replaces T products with B rows
            per_step_B, g.B = g.B, g.b.mul(g.T, g.B)
            self._emit_program(g, self._fwd_prog, I64(0), only=static)
            g.B = per_step_B
        with for_range(g.b, g.T, name="t") as t:
            self._emit_program(g, self._fwd_prog, t, skip=static)
        g.b.ret_void()

    def _static(self) -> set:
        """Pass "hoist": forward values that depend on no state (computed before the loop)."""
        if not self.hoist:
            return set()
        timed = {k for k, w in self.layout.where.items() if w[3] and w[1] and k[1] == "t"}
        states = {(s, "t") for s in self.step.states}
        return state_independent(self._fwd_prog, timed - states)

    PROLOGUE_FLAG = {"forward": 0, "backward": 1, "advance": 2}

    def _prologue(self, g, prog, static):
        """Before the loop: stacked weights built, loop weights packed -- once per training
        call, not once per native call: a checkpointing schedule runs many segments on the
        same parameters.  ``bufs[prologue slot][entry]`` is 0 until it has run (the caller
        zeroes the flags whenever the parameters may have changed, see :meth:`_fresh_call`)."""
        b, terms = g.b, self._loop_terms(prog, static)
        g.packed_pointers(terms, self.pack_slot)
        flags = b.load(b.gep(g.bufs, [I64(self.prologue_slot)]))
        flag = b.gep(flags, [I64(self.PROLOGUE_FLAG[g.fn.name])])
        with b.if_then(b.fcmp_ordered("==", b.load(flag), ir.Constant(g.ty, 0.0))):
            g.build_stacks(self.stacks, self.shapes)
            g.pack_weights(terms, self.pack_slot, self.shapes)
            b.store(ir.Constant(g.ty, 1.0), flag)

    def _fresh_call(self):
        """A new call with (possibly) new parameters: stacked and packed weights are rebuilt."""
        self._scratch("prologue flags", (len(self.PROLOGUE_FLAG),))[:] = 0

    def _loop_terms(self, prog, static) -> set:
        """(param, transposed) of the products computed inside the time loop."""
        if not self.pack:
            return set()
        return {(p, tr) for k, n in prog.nodes.items() if n.op == "matvec" and k not in static
                and all(c == 1 for _, _, c in n.attrs["terms"]) for p, tr, _ in n.attrs["terms"]}

    def _gen_backward(self, module):
        bwd, st = self.bwd, self.step
        g = Gen(module, self.dtype, self.layout, self.host, "backward")
        b = g.b
        self._prologue(g, self._bwd_prog, set())
        with for_range(b, g.T, name="s") as s:
            t = b.sub(b.sub(g.T, I64(1)), s)  # t = T-1 … 0
            self._emit_program(g, self._bwd_prog, t)
            self._emit_grads(g, t, deferred=False)
            for s_, k in bwd.carry_out.items():
                dst = g.ptr(bwd.carry_in[s_], t)
                n = st.states[s_]
                if k is None:
                    with for_range(b, b.mul(g.B, I64(n)), name="zc") as z:
                        b.store(ir.Constant(g.ty, 0.0), b.gep(dst, [z]))
                else:
                    g.copy_loop(dst, g.ptr(k, t), b.mul(g.B, I64(n)))
        if self.deferred:
            # pass "grad_after": Σ_t δa[t]ᵀ v[t] as ONE product with T·B rows of depth, after the
            # loop, instead of T products of depth B (the δ values were kept for every step)
            per_step_B, g.B = g.B, b.mul(g.T, g.B)
            self._emit_grads(g, I64(0), deferred=True)
            g.B = per_step_B
        b.ret_void()

    def _plan_deferred(self):
        """Gradient specs whose operands can be kept for all steps (no carried seed among them)."""
        bwd = self.bwd
        self.deferred, self.deferred_keys = set(), set()
        if not self.grad_after:
            return
        for p, specs in bwd.grads.items():
            for i, spec in enumerate(specs):
                keys = [spec[1]] if spec[0] == "batch" else [spec[1], spec[2]]
                mine = [k for k in keys if k in bwd.prog.nodes]
                if all(bwd.prog.nodes[k].op != "seed" or k == bwd.weight for k in mine):
                    self.deferred.add((p, i))
                    self.deferred_keys.update(k for k in mine if bwd.prog.nodes[k].op != "seed")

    def _plan_grad_groups(self):
        """Pass "stack", gradients: when the members of a stacked value are each the δ of one
        parameter's only gradient spec, with the same other operand (W_i: δa_iᵀ·x, b_i: Σ δa_i),
        the parameters' gradients are laid out side by side (:meth:`_new_grads`) and
        accumulated by ONE product (or one row loop) over the whole (``stackplan.grad_groups``)."""
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

    def _new_grads(self) -> dict:
        """Zeroed gradient arrays laid out as :meth:`_plan_grad_arena` says."""
        arena = gemm.aligned_empty(self._grad_elems, self.dtype)
        arena.fill(0)
        grads = {p: arena[at:at + n].reshape(shape) for p, _, at, n, shape in self._grad_specs}
        return {p: grads[p] for p in self.step.params}

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

    def _emit_grads(self, g, t, deferred: bool):
        """Accumulate the parameter-gradient specs (the deferred ones, or the others) at ``t``."""
        bwd, st, b = self.bwd, self.step, g.b
        for w, kind, params, dfr in self.grad_groups:
            if dfr != deferred:
                continue
            grad = b.load(b.gep(g.bufs, [I64(self.grad_slot[params[0]])]))
            width = self.slot_width[self.layout.where[w][0]]
            whole = g.ptr(w, t)
            if kind[0] == "batch":  # Σ_b δ[b, :] for all members at once
                with for_range(b, g.B, name="gb") as bi:
                    g.copy_loop(grad, b.gep(whole, [b.mul(bi, I64(width))]), I64(width), accumulate=True)
                continue
            vk = kind[1]
            cols_ = st.params[params[0]][1]
            # [grad P_1; …; grad P_k] += δ_wholeᵀ · v: one product of width·cols
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
                if spec[0] == "batch":
                    src = g.ptr(spec[1], t)
                    n = shape if isinstance(shape, int) else 1
                    ld = self.layout.ld(spec[1], n)
                    with for_range(b, g.B, name="gb") as bi:
                        g.copy_loop(grad, b.gep(src, [b.mul(bi, I64(ld))]), I64(n), accumulate=True)
                    continue
                _, gk, vk, c, tr = spec
                A, V = g.ptr(gk, t), g.ptr(vk, t)
                rows_, cols_ = shape
                # grad[m, n] += c · gᵀ v  (or c · vᵀ g when the term was transposed); depth = rows of g
                (first, n1), (second, n2) = ((V, vk), (A, gk)) if tr else ((A, gk), (V, vk))
                ld1, ld2 = self.layout.ld(n1, rows_), self.layout.ld(n2, cols_)
                if c == 1:
                    g.call_gemm(I64(rows_), I64(cols_), g.B, first, I64(ld1), True,
                                second, I64(ld2), False, grad, I64(cols_), 1)
                else:
                    tmp = b.load(b.gep(g.bufs, [I64(self.tmp_slot)]))
                    g.call_gemm(I64(rows_), I64(cols_), g.B, first, I64(ld1), True,
                                second, I64(ld2), False, tmp, I64(cols_), 0)
                    g.copy_loop(grad, tmp, I64(rows_ * cols_), scale=c, accumulate=True)

    # ------------------------------------------------------------------ running
    def ir(self) -> str:
        return self.lib.ir_text

    def asm(self) -> str:
        return self.lib.asm()

    def _buffers(self, call, keep_bwd):
        st = self.step
        arrays, states, fwd = self._pooled_buffers(call.T, call.B)
        for p, k in self.param_slot.items():
            arrays[k] = call.params[p]
        init = initial_states(st, call, self.dtype)
        for s_, buf in states.items():
            buf[0] = init[s_]
        for name, k in self.io_slot.items():
            arrays[k] = call.inputs.get(name, call.targets.get(name))
            if arrays[k] is None:  # forward without targets: never read
                arrays[k] = self._scratch(f"io {name}", (call.T, call.B, (st.inputs | st.targets)[name]))
        return arrays, states, fwd

    def _pooled_buffers(self, T, B):
        """The buffers of a (T, B) call that come from this thread's pool (everything but the
        parameters, inputs and targets, whose slots stay None): the arrays by slot, the state
        buffers (T+1, B, n) and the kept forward values by key."""
        st = self.step
        arrays = [None] * len(self.layout.slots)
        states = {}
        for s_, k in self.state_slot.items():
            arrays[k] = states[s_] = self._scratch(f"state {s_}", (T + 1, B, st.states[s_]))
        fwd = {}
        for key, (k, n) in self.fwd_slot.items():  # computed values: never a state or io slot
            if arrays[k] is None:  # the first member of a stacked whole
                arrays[k] = self._scratch(k, (T, B, self.slot_width.get(k, n)))
            col = self.layout.where[key][4]
            fwd[key] = arrays[k][:, :, col:col + n]
        for k, width in self.slot_width.items():
            if arrays[k] is None and k not in self.bwd_timed:  # a forward whole
                arrays[k] = self._scratch(k, (T, B, width))
        for name, k in self.stack_slot.items():
            arrays[k] = self._scratch(f"stacked {name}", (math.prod(self.shapes[name]),))
        for (p, tr), k in self.pack_slot.items():
            arrays[k] = self._scratch(f"packed {p} {tr}", (self._packed_elems(p, tr),))
        # hoisted products use T·B rows
        arrays[self.scratch_slot] = self._scratch("scratch", (T * B * self.scratch_units,))
        arrays[self.prologue_slot] = self._scratch("prologue flags", (len(self.PROLOGUE_FLAG),))
        return arrays, states, fwd

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
        pool = getattr(self._pool, "bufs", None)
        if pool is None:
            pool = self._pool.bufs = {}
            self._pool.views, self._pool.ptrs, self._pool.gen = {}, {}, 0
        views = self._pool.views
        v = views.get((name, shape))
        if v is not None:  # the same view object every call: its address is known (see _run)
            return v
        size = math.prod(shape)
        a = pool.get(name)
        if a is None or a.size < size:  # grow only: a shorter segment reuses a prefix
            a = pool[name] = gemm.aligned_empty(size, self.dtype)
            self._pool.gen += 1  # addresses changed: cached call frames are stale (native_fast)
            for k in [k for k in views if k[0] == name]:  # views of the old buffer: forget them
                self._pool.ptrs.pop(id(views.pop(k)), None)
        if len(views) > 512:  # many (T, B) shapes: start afresh rather than grow without bound
            views.clear()
            self._pool.ptrs.clear()
            self._pool.gen += 1
        v = views[(name, shape)] = a[:size].reshape(shape)
        self._pool.ptrs[id(v)] = v.ctypes.data
        return v

    def _run(self, fn, arrays, T, B):
        if fn is self._bwdfn:
            self._check_grad_arena(arrays)
        known = getattr(self._pool, "ptrs", {})  # pooled views (alive in the pool: ids are stable)
        ptrs = (ctypes.c_void_p * len(arrays))(*[None if a is None else known.get(id(a)) or a.ctypes.data
                                                 for a in arrays])
        work = self._work(T, B)
        fn(T, B, ptrs, work.ctypes.data)  # ctypes releases the GIL during the call

    def forward(self, params, inputs, h0=None, *, check_finite=True):
        call = check_call(self.step, self.dtype, params, inputs, None, h0, check_finite=check_finite)
        arrays, states, fwd = self._buffers(call, False)
        self._fresh_call()
        self._run(self._fwd, arrays, call.T, call.B)
        outs = {}
        for o, n in self.step.outputs.items():
            key = (o, "t")
            outs[o] = (fwd[key] if key in fwd else states[o][1:]).copy()
        return outs, {s: states[s][-1].copy() for s in self.step.states}

    def loss_and_grad(self, params, inputs, targets=None, h0=None, mask=None, *, check_finite=True):
        """Loss (masked mean of the per-step costs), gradients of every parameter, final states.

        With ``threads > 1`` the batch is split into independent slices run on separate cores
        for the whole sequence (each in its own native call, GIL released); their gradients
        and loss terms are summed (the step weights are the global ones)."""
        st, dt = self.step, self.dtype
        if self.bwd is None:
            raise CallError(f"cell {st.name!r} has no loss (declare one with cell.loss)")
        if self._fast_path:  # one native call pair, its buffers cached (backends/native_fast.py)
            out = native_fast.loss_and_grad(self, params, inputs, targets, h0, mask, check_finite)
            if out is not None:
                return out
        call = check_call(st, dt, params, inputs, targets, h0, mask, need_targets=True,
                          check_finite=check_finite)
        w = np.ascontiguousarray(step_weights(call, dt))
        parts = self._split(call.B)
        if len(parts) == 1:
            return self._loss_and_grad(call, w)
        results = list(self._executor().map(lambda sl: self._loss_and_grad(*_slice_call(call, w, sl), call.B),
                                            parts))
        loss = sum(r[0] for r in results)
        grads = {p: sum(r[1][p] for r in results) for p in st.params}
        final = {s: np.concatenate([r[2][s] for r in results]) for s in st.states}
        return loss, grads, final

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

        st, dt = self.step, self.dtype
        grads = self._new_grads()
        self._fresh_call()
        plan = self.memory_plan(call.T, B_total or call.B)
        loss, carry, final = run(self, call, w, plan, grads)
        for s_, p in st.state_init.items():
            if p is not None and s_ not in call.h0:
                grads[p] += carry[s_].sum(axis=0)
        return loss, grads, final

    def _segment(self, call, w, a, b, h0, carry, grads, backward):
        """Steps a..b-1 from states ``h0``; the backward steps start from adjoints ``carry``."""
        from .validate import Call

        st, dt = self.step, self.dtype
        if a == 0 and b == call.T:
            sub, ws = call, w
        else:
            sub = Call(b - a, call.B, call.params, {k: v[a:b] for k, v in call.inputs.items()},
                       {k: v[a:b] for k, v in call.targets.items()}, h0, None)
            ws = w[a:b]
        T, B = sub.T, sub.B
        arrays, states, fwd = self._buffers(sub, True)
        self._bwd_arrays(arrays, T, B, ws)
        for s_, key in self.bwd.carry_in.items():  # δ⁺h entering the segment's last step
            buf = arrays[self.bwd_slot[key][0]]
            buf[...] = 0 if carry is None else carry[s_]
        for p, k in self.grad_slot.items():
            arrays[k] = grads[p]  # the native code accumulates into these
        big = max([int(np.prod(s)) for s in st.params.values() if isinstance(s, tuple)] + [1])
        arrays[self.tmp_slot] = self._scratch("outer tmp", (big,))
        self._run(self._fwd, arrays, T, B)
        loss = float((ws * fwd[st.loss_key][:, :, 0]).sum(dtype=np.float64))
        final = {s: states[s][-1].copy() for s in st.states}
        if not backward:
            return loss, None, final
        self._run(self._bwdfn, arrays, T, B)
        carry = {s_: arrays[self.bwd_slot[key][0]].copy() for s_, key in self.bwd.carry_in.items()}
        return loss, carry, final

    def activation_bytes(self, T: int, B: int) -> int:
        """Bytes of the per-step buffers a training call of (T, B) keeps, under ``memory=``:
        the longest leaf's activations and the checkpoints held at once (``schedules.Footprint``)."""
        from .checkpoint import footprint

        return self.memory_plan(T, B).memory(footprint(self, B))

    def memory_plan(self, T: int, B: int):
        """The checkpointing plan (``rnncomp.schedules.Plan``) of ``memory=`` for a call of (T, B)."""
        from ..schedules import make_plan
        from .checkpoint import footprint

        plans = self.__dict__.setdefault("_plans", {})
        key = (T, B)
        if key not in plans:
            if len(plans) > 64:
                plans.clear()
            plans[key] = make_plan(self.memory, T, footprint(self, B))
        return plans[key]

    def _advance_entry(self):
        """The compiled "advance" entry point (ctypes), made on first use."""
        fn = self.__dict__.get("_advfn")
        if fn is None:
            proto = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_int64, ctypes.POINTER(ctypes.c_void_p),
                                     ctypes.c_void_p)
            fn = self._advfn = proto(self._advance_lib().address("advance"))
        return fn

    def _gen_advance(self, module):
        """Entry point "advance" (T, B, bufs, work): t = 0 … T-1, the states only.

        The forward program pruned to the states (no outputs, no loss), hoisted and packed
        as in "forward".  Values that are neither states nor hoisted live in one step's rows
        (untimed: the same addresses every step, so they stay in cache)."""
        states = [(s, "t") for s in self.step.states]
        prog = prune(self._fwd_prog, states)
        static = self._static() & set(prog.nodes)
        L = copy.copy(self.layout)
        L.where = dict(self.layout.where)
        timed_slots = {L.where[k][0] for k in static | set(states)}
        for key, node in prog.nodes.items():
            w = L.where.get(key)
            if node.op in LEAF_OPS or w is None or w[0] in timed_slots:
                continue
            L.where[key] = w[:3] + (False,) + w[4:]  # (slot, units, off, timed=False, ...)
        g = Gen(module, self.dtype, L, self.host, "advance")
        self._prologue(g, prog, static)
        if static:  # pass "hoist", as in "forward"
            per_step_B, g.B = g.B, g.b.mul(g.T, g.B)
            self._emit_program(g, prog, I64(0), only=static)
            g.B = per_step_B
        with for_range(g.b, g.T, name="t") as t:
            self._emit_program(g, prog, t, skip=static)
        g.b.ret_void()

def _slice_call(call, w, sl):
    """The sub-problem of batch rows ``sl`` (contiguous copies) and its global step weights."""
    from .validate import Call

    cut = lambda d: {k: np.ascontiguousarray(v[:, sl]) for k, v in d.items()}  # noqa: E731
    sub = Call(call.T, sl.stop - sl.start, call.params, cut(call.inputs), cut(call.targets),
               {k: np.ascontiguousarray(v[sl]) for k, v in call.h0.items()},
               None if call.mask is None else np.ascontiguousarray(call.mask[:, sl]))
    return sub, np.ascontiguousarray(w[:, sl])
