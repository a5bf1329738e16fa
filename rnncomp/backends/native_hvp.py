"""Hessian-vector products of an energy, compiled: what recurrent backprop and BPTT through the
descent of ``rc.compile_fixed_point(cell, energy=E, backend="native")`` iterate (issue #20).

One entry point, one evaluation over the B rows of a batch (T = 1):

    step program        E's cell at the states s: its values
    backward step       ∂E/∂s (weight 1 per sample, δ⁺s = 0) and the values its parameter terms read
    tangent program     their tangents along μ (``rnncomp.forward_mode.jvp`` of the two above):
                        H μ is the tangent of ∂E/∂s, and μᵀ ∂²E/∂s∂θ is read off the tangents of
                        the parameter terms' factors

The three programs are those of the NumPy executor (:class:`rnncomp.algorithms.energy._Part`),
emitted by the online executors' step emitter (:mod:`.native_online_emit`: element-wise runs,
GEMMs, matrix-state ops); the per-parameter sums over the batch of the mixed terms are the
NumPy executor's code on the values this kernel leaves in its buffers (``values``).
"""
from __future__ import annotations

import threading

import numpy as np
from llvmlite import ir

from ..errors import CompileError
from ..ir import LEAF_OPS
from .llvm.builder import for_range
from .llvm.exprgen import unsupported
from .llvm.jit import HostTarget
from .native_emit import Gen
from .native_online_emit import OnlineSlots, StepEmitter, compile_online, hash_programs, sources_hash
from .native_tangent_plan import FORWARD_OPS, TANGENT_OPS


class _Slots(OnlineSlots):
    """:class:`.native_online_emit.OnlineSlots` for the three programs, the backward step's
    carried seeds δ⁺s (0) and the direction μ of each state (filled per call)."""

    def __init__(self, step, bwd, hvp):
        super().__init__(step, (step.prog, bwd.prog, hvp.prog), bwd, bwd.weight)
        self.carry = {s: self.slot(f"δ⁺{s}", "B", n) for s, n in step.states.items()}
        for s, key in bwd.carry_in.items():
            self.place(key, self.carry[s])
        self.mu = {}
        for s, n in step.states.items():
            seed = hvp.tangents.get((s, "t-1"))
            if seed is not None:
                self.mu[s] = k = self.slot(f"μ {s}", "B", n)
                self.place(seed, k)


class HvpKernel(StepEmitter):
    """The compiled evaluation (see the module docstring) of E's cell ``step`` with its
    backward step ``bwd`` and the tangent program ``hvp`` (seeds on the states)."""

    def __init__(self, step, bwd, hvp, dtype, cache="default"):
        self.st, self.bwd, self.hvp, self.dtype = step, bwd, hvp, np.dtype(dtype)
        progs = (step.prog, bwd.prog, hvp.prog)
        allowed = set(FORWARD_OPS) | set(TANGENT_OPS)
        ops = sorted({n.op for p in progs for n in p.nodes.values() if n.op not in LEAF_OPS and n.op not in allowed})
        funcs = sorted({f for p in progs for n in p.nodes.values() if n.op == "ew" for f in unsupported(n.attrs["expr"])})
        if ops or funcs:
            raise CompileError(f"cell {step.name!r}: the native Hessian-vector product has no code for "
                               f"{', '.join(ops + funcs)} (use backend='numpy')")
        self.host = HostTarget.detect()
        self.plan = _Slots(step, bwd, hvp)
        self.lib, self._fn = compile_online(step, self._description(), self._build, self.host, cache,
                                            "the Hessian-vector product")
        self._bufs, self._B = {}, None
        self.lock = threading.Lock()  # one set of buffers: a caller holds it while it reads them

    def _description(self) -> str:
        h = sources_hash()
        hash_programs(h, (self.st.prog, self.bwd.prog, self.hvp.prog))
        h.update(repr((self.plan.L.slots, str(self.dtype))).encode())
        return h.hexdigest()

    def _build(self):
        module = ir.Module(name=f"rnncomp_hvp_{self.st.name}")
        module.triple = self.host.triple
        g = Gen(module, self.dtype, self.plan.L, self.host, "online")
        with for_range(g.b, g.T, name="t") as t:
            for prog in (self.st.prog, self.bwd.prog, self.hvp.prog):
                self._program(g, prog, t)
        g.b.ret_void()
        return module

    def values(self, params, states, seqs, mu, B):
        """Evaluate at ``states`` along ``mu`` {state: (B, n)}: a function of a key giving its
        value, (B, n) for a value of a sample, as the NumPy executor's env holds it (views of
        the kernel's buffers: call and read with :attr:`lock` held)."""
        dt, P = self.dtype, self.plan
        if self._B != B:
            (self._bufs, self._work), self._B = P.buffers(B, dt, self.host), B
        for s, k in P.mu.items():
            self._bufs[k][:] = np.asarray(mu[s], dtype=dt).ravel()
        seqs = {k: np.asarray(v, dtype=dt)[:1] for k, v in seqs.items()}
        P.call(self._fn, self._bufs, self._work, params, states, seqs, np.ones((1, B), dtype=dt), {})
        where = P.L.where

        def value(key):
            if key[1] is None:
                return np.asarray(params[key[0]], dtype=dt)
            if key[0] in P.io and key[1] == "t":
                return seqs[key[0]][0]
            if key == self.bwd.weight:
                return np.ones((B, 1), dtype=dt)
            w = where[key]
            rows, units = P.sizes[w.slot]
            if rows != "B":
                raise CompileError(f"cell {self.st.name!r}: internal: {key!r} is not a per-sample value")
            return self._bufs[w.slot].reshape(B, units)[:, w.col:w.col + self.hvp.prog.node(key).size]

        return value
