"""The native CPU backend: forward and BPTT loops compiled with llvmlite for this host.

Three entry points per cell, each with the time loop inside native code (code size
does not grow with T; T and B are runtime arguments):

    forward (T, B, bufs, work)   t = 0 … T-1: every node of the step program
    backward(T, B, bufs, work)   t = T-1 … 0: every node of the backward step,
                                 parameter gradients accumulated, δ⁺ carried
    advance (T, B, bufs, work)   t = 0 … T-1: the states only (memory schedules,
                                 ``backends/checkpoint.py``)

``bufs`` is an array of pointers, one per value (see :mod:`rnncomp.passes.layout`); a value
of node ``(name, "t")`` at step t lives at ``bufs[slot] + (t + off)·B·n``.
Element-wise nodes are loops over batch × units printed by :mod:`.llvm.exprgen`
(vectorisable vector math); products call the generated GEMM kernels.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import threading

import numpy as np
import sympy as sp
from llvmlite import ir

from ..autodiff import LOSS_ONLY, backward_step
from ..errors import CompileError
from ..exprwalk import digest
from ..memory import schedule
from ..ir import LEAF_OPS, prune, state_independent
from ..passes.layout import PER_SAMPLE
from ..passes.prepare import prepare
from .validate import float_dtype, forward_targets
from .llvm.builder import I64, for_range
from .llvm.exprgen import unsupported
from .llvm.finite import define_first_nonfinite
from .llvm import kernel_library
from .llvm.jit import HostTarget, compile_keyed
from . import native_plan_cache as plan_cache
from .native_calls import NativeCalls
from .native_backward import NativeBackward, grads_outgrow_cache
from .native_vjp import NativeVjp
from .native_emit import Gen
from .native_nodes import ProgramCode
from .native_layout import NativeLayout
from .native_profile import define_tsc_reader, section
from ..initializers import specs as init_specs
from .base import BackendModel


class NativeModel(NativeLayout, NativeBackward, NativeCalls, NativeVjp, BackendModel):
    """``rc.compile(cell, backend="native")``: same interface as the NumPy model.

    This class compiles (passes, layout, code generation); calling it -- buffers, batch
    split, memory schedules, the entry points -- is :class:`.native_calls.NativeCalls`."""

    backend = "native"

    def __init__(self, cell, dtype="float64", *, cache="default", hoist=True, grad_after=None,
                 fuse=True, pack=True, stack=True, threads=None, memory="all", profile=False, _cot=LOSS_ONLY):
        self._cell, self._cot = cell, _cot  # _cot: the cotangents of a VJP variant (native_vjp.py)
        self._variants, self._vlock, self._spare = {}, threading.Lock(), []
        self.dtype = float_dtype(dtype)
        self.step = st = cell.step
        self._param_specs_init = init_specs(cell)
        self.cell_name = st.name
        self.host = HostTarget.detect()
        self._work_elems: dict = {}
        self._pool = threading.local()  # per-thread buffers: calls from several threads are safe
        if grad_after is None:  # see grads_outgrow_cache
            grad_after = grads_outgrow_cache(st.params, self.dtype)
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
        variant = _cot != LOSS_ONLY  # a VJP variant always has a backward (δh[0], ∂θ)
        # profile: cycle counters per part (native_profile.py); built afresh: work is counted in codegen
        self.profile_work = {} if profile else None
        self._cache, self._adv_lock = (None if profile else cache), threading.Lock()
        self._derive(cell, variant)
        self.lib = self._compile(self._object_key, self._build_module)
        proto = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_int64, ctypes.POINTER(ctypes.c_void_p),
                                 ctypes.c_void_p)
        self._fwd = proto(self.lib.address("forward"))
        self._bwdfn = proto(self.lib.address("backward")) if self.bwd is not None else None
        # what native_fast checks a call against
        self._first_nonfinite = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p)(
            self.lib.address("first_nonfinite"))
        self._fast_path = self.bwd is not None and not variant
        self._param_specs = [(p, self.param_slot[p], s if isinstance(s, tuple) else (s,))
                             for p, s in st.params.items()]
        self._io_specs = [(name, self.io_slot[name], n)
                          for name, n in list(st.inputs.items()) + list(st.targets.items())]
        self._input_names, self._target_names = list(st.inputs), list(st.targets)
        self._state_names = list(st.states)
        self._reads_targets = bool(forward_targets(st))  # its forward needs targets= (teacher forcing)
        self._forward_fast_path = not variant

    def _derive(self, cell, variant):
        """Everything code generation reads (backward step, passes, layout, the object's key):
        restored from the declaration cache when it holds this cell (native_plan_cache.py),
        else derived and stored there."""
        st = self.step
        options = (self.hoist, self.grad_after, self.fuse, self.pack, self.stack, self._cot)
        key = None if self._cache is None else plan_cache.declaration_key(cell, self.dtype, options, self.host)
        plan = None if key is None else plan_cache.load(self._cache, key, st)
        self._plan_restored = plan is not None  # for tests and inspection
        if plan is not None:
            self.__dict__.update(plan)
            return
        before = set(self.__dict__)
        self.bwd = backward_step(st, self._cot) if st.has_loss or variant else None
        self._transform()
        self._build_layout()
        self._plan()
        self._object_key = hashlib.sha256(self._cache_description().encode()).hexdigest()
        if key is not None:
            plan_cache.store(self._cache, key, {k: v for k, v in self.__dict__.items() if k not in before}, st)

    @property
    def _has_loss(self) -> bool:
        """Whether the programs compute the cell's loss (a VJP variant without targets does not)."""
        return self.step.has_loss and self._cot.loss

    # ------------------------------------------------------------------ passes (the layout: native_layout.py)
    def _transform(self):
        """The programs code is generated from: pruned, and with products stacked (pass "stack")."""
        prep = prepare(self.step, self.bwd, hoist=self.hoist, stack=self.stack)
        self.shapes, self.stacks, self.views = prep.shapes, prep.stacks, prep.views
        self._fwd_prog, self._bwd_prog = prep.fwd, prep.bwd

    # ------------------------------------------------------------------ code generation
    def _emit_program(self, g, prog, t, skip=(), only=None):
        """``prog`` at step ``t``, node by node (:mod:`.native_nodes`)."""
        ProgramCode(self, g, prog, t).emit(skip, only)

    def _compile(self, key, build):
        # unroll=False: the element-wise loops run over a constant number of units, and LLVM
        # unrolled them in full: 4x the code for no measurable speed (jit.optimize). The
        # products, where unrolling pays, are kernels compiled with the full pipeline
        try:
            return compile_keyed(key, build, unroll=False, cache=self._cache, host=self.host,
                                 link=kernel_library.link)
        except CompileError:
            raise
        except Exception as exc:  # noqa: BLE001 - any LLVM failure becomes a clear error
            raise CompileError(f"cell {self.step.name!r}: LLVM failed to compile: {exc}") from None

    def _build_module(self):
        module = ir.Module(name=f"rnncomp_{self.step.name}")
        module.triple = self.host.triple
        self._gen_forward(module)
        define_first_nonfinite(module, "first_nonfinite", str(self.dtype))  # native_fast's check
        if self.profile_work is not None:
            define_tsc_reader(module)
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
                lib = self._advlib = self._compile(self._object_key + "\nentry: advance", build)
            return lib

    def _cache_description(self) -> str:
        """Everything the generated code depends on: programs, layout, options, code version."""
        parts = [plan_cache.package_fingerprint(), str(self.dtype),
                 repr((self.hoist, self.grad_after, self.fuse, self.pack, self.stack, self.profile_work is not None)),
                 repr(self.stacks),
                 repr(self.layout.slots), repr(sorted(self.layout.where.items(), key=repr))]
        progs = [self._fwd_prog] + ([self._bwd_prog] if self.bwd else [])
        for prog in progs:
            for key, n in prog.nodes.items():
                attrs = {k: (digest(v) if isinstance(v, sp.Basic) else v) for k, v in n.attrs.items()}  # srepr: tree-sized
                parts.append(repr((key, n.op, n.args, n.size, sorted(attrs.items()))))
        if self.bwd:
            parts.append(repr((sorted(self.bwd.grads.items()), sorted(self.bwd.carry_out.items()), self._cot)))
        parts.append(repr(self.step.params))
        return "\n".join(parts)

    def _gen_forward(self, module):
        g = Gen(module, self.dtype, self.layout, self.host, "forward", self.profile_work)
        static = self._static()
        with section(g, "native total"):
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
        L = self.layout
        timed = {k for k in L.where if L.step_units(k) and k[1] == "t"}
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

    def _loop_terms(self, prog, static) -> set:
        """(param, transposed) of the products computed inside the time loop."""
        if not self.pack:
            return set()
        return {(p, tr) for k, n in prog.nodes.items() if n.op == "matvec" and k not in static
                and all(c == 1 for _, _, c in n.attrs["terms"]) for p, tr, _ in n.attrs["terms"]}

    # ------------------------------------------------------------------ inspection
    def ir(self) -> str:
        return self.lib.ir_text

    def asm(self) -> str:
        return self.lib.asm()

    def _gen_advance(self, module):
        """Entry point "advance" (T, B, bufs, work): t = 0 … T-1, the states only.

        The forward program pruned to the states (no outputs, no loss), hoisted and packed
        as in "forward".  Values that are neither states nor hoisted live in one step's rows
        (untimed: the same addresses every step, so they stay in cache)."""
        states = [(s, "t") for s in self.step.states]
        prog = prune(self._fwd_prog, states)
        static = self._static() & set(prog.nodes)
        L = self.layout
        timed_slots = {L.where[k].slot for k in static | set(states)}
        L = L.with_rows({L.where[k].slot for k, node in prog.nodes.items()
                         if node.op not in LEAF_OPS and k in L.where} - timed_slots, PER_SAMPLE)
        g = Gen(module, self.dtype, L, self.host, "advance")
        self._prologue(g, prog, static)
        if static:  # pass "hoist", as in "forward"
            per_step_B, g.B = g.B, g.b.mul(g.T, g.B)
            self._emit_program(g, prog, I64(0), only=static)
            g.B = per_step_B
        with for_range(g.b, g.T, name="t") as t:
            self._emit_program(g, prog, t, skip=static)
        g.b.ret_void()
