"""The native executor of UORO (issue #20): the rank-one estimate s̃ θ̃ᵀ carried, compiled.

One entry point, the time loop inside native code, for a window of T steps (the recursion
of :mod:`rnncomp.algorithms.uoro`, whose carry (s̃, θ̃) it updates in place):

    online(T, B, bufs, work)    t = 0 … T-1:
        forward step        h[t], ℓ[t] from h[t-1], x[t]                          (B rows)
        backward step 1     δ⁺h = 0, w = w[t]:  δh[t-1], g += Σ_b ∂(w·ℓ)/∂θ|immediate
        gradient            g += Σ_b (δh[t-1] · s̃[b]) θ̃[b]
        tangent step        ds = ∂h[t]/∂h[t-1] · s̃   (one direction, B rows)
        backward step 2     δ⁺h = ν[t], w = 0:  ν̃[b] = νᵀ ∂h[t]/∂θ|immediate, per sample
        ρ₀ = √((‖θ̃‖ + ε)/(‖ds‖ + ε)),  ρ₁ = √((‖ν̃‖ + ε)/(‖ν‖ + ε))     per sample
        s̃ ← ρ₀ ds + ρ₁ ν;   θ̃ ← θ̃/ρ₀ + ν̃/ρ₁;   h[t-1] ← h[t]

The random signs ν are drawn by the caller, from the algorithm's generator in the NumPy
executor's order (each step, each state, a (B, n) draw), so both executors take the same
draws and compute the same estimate.  The backward step is emitted once and run twice: its
seeds δ⁺h and w live in buffers filled before each run.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir

from ..autodiff import backward_step
from ..errors import CompileError
from ..forward_mode import tangent_step
from ..ir import LEAF_OPS, internal
from .llvm.builder import I64, alloca_once, for_range
from .llvm.exprgen import unsupported
from .llvm.jit import HostTarget
from .native_emit import Gen
from .native_online_emit import OnlineSlots, StepEmitter, compile_online, hash_programs, sources_hash
from .native_tangent_plan import FORWARD_OPS, WEIGHT, check

EPS = 1e-7   # as the NumPy executor's (rnncomp/algorithms/uoro.py)
W_IN = (internal("w in"), "t")   # the caller's (T, B) step weights (the backward reads WEIGHT)


class _Slots(OnlineSlots):
    """:class:`.native_online_emit.OnlineSlots` (the caller's weights at ``W_IN``), the backward
    step's seeds (w, δ⁺h: filled before each of its two runs), s̃ and θ̃ (the caller's, updated
    in place), the new s̃, the signs ν (the caller's) and ν̃."""

    def __init__(self, step, ts, bwd):
        super().__init__(step, (step.prog, bwd.prog, ts.prog), bwd, W_IN)
        self.w_in = self.weight
        self.wbuf = self.slot("w of the backward", "B", 1)
        self.place(WEIGHT, self.wbuf)
        self.carry = {s: self.slot(f"δ⁺{s}", "B", step.states[s]) for s in step.states}
        for s, key in bwd.carry_in.items():
            self.place(key, self.carry[s])
        self.s_tilde = {s: self.slot(f"s̃ {s}", "ext", n) for s, n in step.states.items()}
        for s, key in ts.state_seeds.items():
            self.place(key, self.s_tilde[s])
        self.s_new = {s: self.slot(f"new s̃ {s}", "B", n) for s, n in step.states.items()}
        self.nu = {s: self.slot(f"ν {s}", "ext", n, timed=True) for s, n in step.states.items()}
        for s, k in self.nu.items():
            self.place((internal(f"ν {s}"), "t"), k)
        self.theta = self.slot("θ̃", "ext", 0)
        self.nu_i = self.slot("ν̃", "B", self.P)


class UoroKernel(StepEmitter):
    """The compiled window of UORO for one cell (see the module docstring)."""

    def __init__(self, step, dtype, cache="default"):
        self.st, self.dtype = step, np.dtype(dtype)
        self.ts = tangent_step(step, params=())
        check(step, self.ts)
        self.bwd = backward_step(step)
        ops = sorted({n.op for n in self.bwd.prog.nodes.values() if n.op not in LEAF_OPS and n.op not in FORWARD_OPS})
        funcs = sorted({f for n in self.bwd.prog.nodes.values() if n.op == "ew" for f in unsupported(n.attrs["expr"])})
        if ops or funcs:
            raise CompileError(f"cell {step.name!r}: the native UORO executor has no code for "
                               f"{', '.join(ops + funcs)} in its backward step (use backend='numpy')")
        self.host = HostTarget.detect()
        self.plan = _Slots(step, self.ts, self.bwd)
        self.lib, self._fn = compile_online(step, self._description(), self._build, self.host, cache, "the UORO step")
        self._bufs, self._B = {}, None

    def _description(self) -> str:
        h = sources_hash()
        hash_programs(h, (self.st.prog, self.ts.prog, self.bwd.prog))
        h.update(repr((self.bwd.carry_out, self.bwd.grads, self.ts.out, self.st.loss_key, self.plan.L.slots,
                       str(self.dtype))).encode())
        return h.hexdigest()

    # ------------------------------------------------------------------ code generation
    def _build(self):
        module = ir.Module(name=f"rnncomp_uoro_{self.st.name}")
        module.triple = self.host.triple
        g = Gen(module, self.dtype, self.plan.L, self.host, "online")
        self._pack_weights(g)
        self._sqrt = module.declare_intrinsic("llvm.sqrt", [g.ty])
        P = self.plan
        with for_range(g.b, g.T, name="t") as t:
            self._program(g, self.st.prog, t)
            self._seeds(g, t, nu=False)
            self._program(g, self.bwd.prog, t)
            self._grad_terms(g, self.bwd, t, self._slot_ptr(g, P.grad), self._slot_ptr(g, P.tmp))
            self._estimate_gradient(g, t)
            self._program(g, self.ts.prog, t)
            self._seeds(g, t, nu=True)
            self._program(g, self.bwd.prog, t)
            self._fill(g, self._slot_ptr(g, P.nu_i), g.b.mul(g.B, I64(P.P)), 0.0)
            self._grad_terms(g, self.bwd, t, self._slot_ptr(g, P.nu_i), None, per_sample=True)
            self._update(g, t)
            for s, n in self.st.states.items():
                self._copy_state(g, s, n)
        g.b.ret_void()
        return module

    def _fill(self, g, ptr, count, value):
        with for_range(g.b, count, name="f") as i:
            g.b.store(ir.Constant(g.ty, value), g.b.gep(ptr, [i], inbounds=True))

    def _seeds(self, g, t, nu):
        """The backward's seeds: δ⁺h = 0, w = w[t] (the loss); or δ⁺h = ν[t], w = 0."""
        b, P = g.b, self.plan
        wbuf = self._slot_ptr(g, P.wbuf)
        if nu:
            self._fill(g, wbuf, g.B, 0.0)
        else:
            g.copy_loop(wbuf, g.ptr(W_IN, t), g.B)
        for s, n in self.st.states.items():
            dst = self._slot_ptr(g, P.carry[s])
            if nu:
                g.copy_loop(dst, g.ptr((internal(f"ν {s}"), "t"), t), b.mul(g.B, I64(n)))
            else:
                self._fill(g, dst, b.mul(g.B, I64(n)), 0.0)
        if not nu:  # the loss: Σ_b w·ℓ
            lossp, w, ell = self._slot_ptr(g, P.loss), g.ptr(W_IN, t), g.ptr(self.st.loss_key, t)
            with for_range(b, g.B, name="lb") as bi:
                x = b.fmul(b.load(b.gep(w, [bi])), b.load(b.gep(ell, [bi])))
                b.store(b.fadd(b.load(lossp), x), lossp)

    def _estimate_gradient(self, g, t):
        """g[k] += Σ_b c[b]·θ̃[b, k], c[b] = Σ_s δh[t-1][b]·s̃[b] (s̃, θ̃ still at t-1)."""
        b, P, ty = g.b, self.plan, g.ty
        grad, theta = self._slot_ptr(g, P.grad), self._slot_ptr(g, P.theta)
        with for_range(b, g.B, name="cb") as bi:
            c = ir.Constant(ty, 0.0)
            for s, n in self.st.states.items():
                key = self.bwd.carry_out[s]
                if key is None:
                    continue
                dl, st_ = g.ptr(key, t), self._slot_ptr(g, P.s_tilde[s])
                acc = self._dot(g, dl, st_, b.mul(bi, I64(n)), b.mul(bi, I64(n)), n)
                c = b.fadd(c, acc)
            with for_range(b, I64(P.P), name="ck") as k:
                at = b.gep(grad, [k])
                x = b.load(b.gep(theta, [b.add(b.mul(bi, I64(P.P)), k)]))
                b.store(b.fadd(b.load(at), b.fmul(c, x)), at)

    def _dot(self, g, a, c, off_a, off_c, n):
        """Σ_j a[off_a + j]·c[off_c + j] (a value)."""
        b = g.b
        acc = alloca_once(b, g.ty, "dot")
        b.store(ir.Constant(g.ty, 0.0), acc)
        with for_range(b, I64(n), name="dj") as j:
            x = b.fmul(b.load(b.gep(a, [b.add(off_a, j)])), b.load(b.gep(c, [b.add(off_c, j)])))
            b.store(b.fadd(b.load(acc), x), acc)
        return b.load(acc)

    def _update(self, g, t):
        """ρ₀, ρ₁ per sample; s̃ ← ρ₀ ds + ρ₁ ν (via new buffers: one state's ds may be another's s̃);
        θ̃ ← θ̃/ρ₀ + ν̃/ρ₁."""
        b, P, ty = g.b, self.plan, g.ty
        theta, nu_i = self._slot_ptr(g, P.theta), self._slot_ptr(g, P.nu_i)
        eps = ir.Constant(ty, EPS)
        with for_range(b, g.B, name="ub") as bi:
            rowp = b.mul(bi, I64(P.P))
            nt = self._dot(g, theta, theta, rowp, rowp, P.P)
            ni = self._dot(g, nu_i, nu_i, rowp, rowp, P.P)
            nd, nn = ir.Constant(ty, 0.0), ir.Constant(ty, 0.0)
            for s, n in self.st.states.items():
                rown = b.mul(bi, I64(n))
                nu = g.ptr((internal(f"ν {s}"), "t"), t)
                nn = b.fadd(nn, self._dot(g, nu, nu, rown, rown, n))
                if self.ts.out[s] is not None:
                    ds = g.ptr(self.ts.out[s], t)
                    nd = b.fadd(nd, self._dot(g, ds, ds, rown, rown, n))
            sq = lambda v: b.call(self._sqrt, [v])  # noqa: E731
            rho0 = sq(b.fdiv(b.fadd(sq(nt), eps), b.fadd(sq(nd), eps)))
            rho1 = sq(b.fdiv(b.fadd(sq(ni), eps), b.fadd(sq(nn), eps)))
            for s, n in self.st.states.items():
                rown = b.mul(bi, I64(n))
                nu, dst = g.ptr((internal(f"ν {s}"), "t"), t), self._slot_ptr(g, P.s_new[s])
                ds = None if self.ts.out[s] is None else g.ptr(self.ts.out[s], t)
                with for_range(b, I64(n), name="us") as j:
                    x = b.fmul(rho1, b.load(b.gep(nu, [b.add(rown, j)])))
                    if ds is not None:
                        x = b.fadd(b.fmul(rho0, b.load(b.gep(ds, [b.add(rown, j)]))), x)
                    b.store(x, b.gep(dst, [b.add(rown, j)]))
            with for_range(b, I64(P.P), name="uk") as k:
                at = b.gep(theta, [b.add(rowp, k)])
                x = b.fadd(b.fdiv(b.load(at), rho0), b.fdiv(b.load(b.gep(nu_i, [b.add(rowp, k)])), rho1))
                b.store(x, at)
        for s, n in self.st.states.items():
            g.copy_loop(self._slot_ptr(g, P.s_tilde[s]), self._slot_ptr(g, P.s_new[s]), b.mul(g.B, I64(n)))

    # ------------------------------------------------------------------ calls
    def run(self, params, states, seqs, w, s_tilde, theta, nu):
        """Run ``w.shape[0]`` steps; ``s_tilde`` {s: (B, n)} and ``theta`` (B, P) are updated in
        place; ``nu`` {s: (T, B, n)} the signs.  Returns (loss, g (P,), final states)."""
        T, B = w.shape
        dt, P = self.dtype, self.plan
        if self._B != B:
            (self._bufs, self._work), self._B = P.buffers(B, dt, self.host), B
        for a in [theta, *s_tilde.values()]:
            if a.dtype != dt or not a.flags.c_contiguous:
                raise CompileError(f"cell {self.st.name!r}: internal: UORO's carry is not a contiguous {dt} array")
        extra = {P.theta: theta, **{k: s_tilde[s] for s, k in P.s_tilde.items()},
                 **{k: np.ascontiguousarray(nu[s], dtype=dt) for s, k in P.nu.items()}}
        return P.call(self._fn, self._bufs, self._work, params, states, seqs, w, extra)
