"""The native executor of the online sensitivity recursion (RTRL, dense SnAp; issue #20).

One entry point, the time loop inside native code, for a window of T steps:

    online(T, B, bufs, work)    t = 0 … T-1:
        forward step          h[t], ℓ[t] from h[t-1], x[t]                 (B rows)
        tangent step          ∂h[t] = ḟ(values at t, ∂h[t-1], ∂θ)          (B·K rows)
        loss  += Σ_b w[t,b]·ℓ[t,b];   g[k] += Σ_b w[t,b]·∂ℓ[t][b,k]
        J[s]   = ∂h[t] (⊙ mask[s]: SnAp's pattern);   h[t-1] ← h[t]

The tangent program is :func:`rnncomp.forward_mode.tangent_step`'s, printed by the same
element-wise emitter as the forward (:class:`.native_emit.Gen`, :mod:`.llvm.exprgen`).  Its
values are ``(B, K, n)`` rows, one per sample and direction (``K``: one direction per
parameter entry, the flat parameter order); a product ``P·∂v`` is one GEMM of the kernel
library over all B·K rows, ``∂P·v`` writes ``v`` into the directions of P's entries (a
scatter).  A forward value read by a tangent node is broadcast over the directions; a
vector parameter's seed ``∂b`` is a constant ``(K, n)`` table (made ``(B, K, n)`` where a
product or a copy reads it).  Tangent buffers are reused once their last reader has run.

Matrix states (:mod:`rnncomp.matrix_dsl`): their ops run on :mod:`.native_matrix`'s vector
code, a sample's (m, n) block at a time -- in the tangent program over B·K rows, the product
rule's forward factor of ``outer`` / ``smatvec`` read once per sample for its K directions.
What is not compiled raises :class:`CompileError` naming the cell and the ops: products of a
parameter vector.
"""
from __future__ import annotations

import ctypes

import numpy as np
import sympy as sp
from llvmlite import ir

from ..errors import CompileError
from ..forward_mode import is_tangent_param, tangent_of
from ..ir import placeholder
from .llvm import gemm
from .llvm.builder import I64, for_range, parallel_loop_md
from .llvm.exprgen import LLVMPrinter
from .llvm.jit import HostTarget
from .native_emit import Gen
from .native_matrix import MatrixEmitter
from .native_online_emit import StepEmitter, compile_online, sources_hash
from .native_tangent_plan import WEIGHT, Plan, check

class OnlineKernel(StepEmitter):
    """The compiled window of the sensitivity recursion of one cell (see the module docstring).

    ``mask``: SnAp's pattern ``{state: (K, n) bool}`` applied to J every step (None: RTRL)."""

    def __init__(self, step, ts, dirs, dtype, mask=None, cache="default"):
        self.st, self.ts, self.dtype, self.K = step, ts, np.dtype(dtype), dirs.K
        check(step, ts)
        if any(not np.array_equal(np.ravel(dirs.column.get(p, -1)), np.arange(o, o + dirs.sizes[p]))
               for p, o in dirs.offsets.items()):
            raise CompileError(f"cell {step.name!r}: the native online executor takes one direction per "
                               "parameter entry (RTRL's, dense SnAp's) only")
        self.dirs, self.host = dirs, HostTarget.detect()
        self.plan = Plan(step, ts, self.K, mask is not None)
        self.mask = {s: np.ascontiguousarray(m, dtype=self.dtype) for s, m in (mask or {}).items()}
        self.lib, self._fn = compile_online(step, self._description(), self._build, self.host, cache,
                                            "the online step")
        self._bufs, self._B = {}, None

    # ------------------------------------------------------------------ code generation
    def _description(self) -> str:
        h = sources_hash()
        parts = [h.hexdigest(), str(self.dtype), str(self.K), repr(sorted(self.mask)), repr(self.st.params)]
        for prog in (self.st.prog, self.ts.prog):
            for key, n in prog.nodes.items():
                attrs = {k: (sp.srepr(v) if isinstance(v, sp.Basic) else v) for k, v in n.attrs.items()}
                parts.append(repr((key, n.op, n.args, n.size, sorted(attrs.items()))))
        parts.append(repr((self.ts.out, self.ts.loss, self.st.loss_key, self.plan.L.slots)))
        return "\n".join(parts)

    def _build(self):
        module = ir.Module(name=f"rnncomp_online_{self.st.name}")
        module.triple = self.host.triple
        g = Gen(module, self.dtype, self.plan.L, self.host, "online")
        b = g.b
        self.BK = b.mul(g.B, I64(self.K))
        with for_range(b, g.T, name="t") as t:
            self._program(g, self.st.prog, t)
            self._tangents(g, t)
            self._accumulate(g, t)
            self._carry(g)
        b.ret_void()
        return module

    def _tangents(self, g, t):
        prog, B = self.ts.prog, g.B
        run = []
        for key, node in prog.nodes.items():
            if node.op == "seed" or key in self.plan.inline:
                continue
            if node.op == "ew":
                if run and run[0][1].size != node.size:
                    self._tangent_ew(g, run, t)
                    run = []
                run.append((key, node))
                continue
            if run:
                self._tangent_ew(g, run, t)
                run = []
            out = g.ptr(key, t)
            args = [self._full(g, a, t) for a in node.args]
            g.B = self.BK
            try:
                if node.op in ("outer", "smatvec"):
                    g.B = B
                    self._matrix_bilinear(g, key, node, out, args)
                elif node.op == "matvec":
                    if any(not is_tangent_param(p) for p, _, _ in node.attrs["terms"]):
                        empty = self._products(g, node, out, args[0], prog.node(node.args[0]).size, t)
                    else:
                        empty = True
                    g.B = B
                    self._inject(g, node, out, g.ptr(node.args[0], t), empty)
                else:
                    self._rows(g, prog, key, node, out, args)
            finally:
                g.B = B
        if run:
            self._tangent_ew(g, run, t)

    def _matrix_bilinear(self, g, key, node, out, args):
        """``outer`` / ``smatvec`` of the tangent program, one term of the product rule: one
        factor a tangent (a row per sample and direction), the other a forward value (a row
        per sample, read for each of its K directions) or a parameter (one row)."""
        b, K, tp = g.b, self.K, self.ts.prog
        em = MatrixEmitter(b, g.ty, self.dtype.itemsize)
        kinds = []
        for a in node.args:
            kind = "tan" if a in self.plan.seed_full else self._kind(a)
            if kind in ("inline", "seed"):  # the plan gives such readers a buffer of B·K rows
                raise CompileError(f"cell {self.st.name!r}: internal: a matrix op reads {a!r} as {kind}")
            units = tp.nodes[a].size if a in tp.nodes else self.st.prog.node(a).size
            kinds.append((kind, g.L.ld(a, units)))
        with for_range(b, g.B, name="mb") as bi:
            with for_range(b, I64(K), name="mk") as k:
                row = b.add(b.mul(bi, I64(K)), k)
                at = {"tan": row, "fwd": bi, "param": I64(0)}
                o = b.gep(out, [b.mul(row, I64(g.L.ld(key, node.size)))], inbounds=True)
                ptrs = [b.gep(p, [b.mul(at[kind], I64(ld))], inbounds=True) for p, (kind, ld) in zip(args, kinds)]
                em.emit(node.op, o, ptrs, node.attrs["shape"], node.attrs.get("axis", 1),
                        node.attrs.get("transposed", False))

    def _full(self, g, key, t):
        """A tangent argument as B·K rows (a parameter's seed: its (B, K, n) copy)."""
        full = self.plan.seed_full.get(key)
        return self._slot_ptr(g, full) if full is not None else g.ptr(key, t)

    def _kind(self, key):
        """How a tangent node reads ``key``: "tan" (B·K rows), "seed" (K rows), "inline" (∂P·v
        computed in place), "fwd" (B rows), "param"."""
        if key in self.ts.prog.nodes:
            if key in self.plan.inline:
                return "inline"
            return "seed" if key in self.plan.seed_shared else "tan"
        return "param" if key[1] is None else "fwd"

    def _tangent_ew(self, g, run, t):
        """A run of element-wise tangent nodes of one size in one loop over samples × directions
        × units; forward values broadcast over directions; a value produced earlier in the run
        is taken from its register, and stored only where something outside the run reads it."""
        b, K, n = g.b, self.K, run[0][1].size
        tp = self.ts.prog
        mine = {key for key, _ in run}
        outside = set(self.plan.keep)
        for key, node in tp.nodes.items():
            if key not in mine:
                outside.update(node.args)
        group, loop_id = parallel_loop_md(g.m)
        tag = lambda inst: inst.set_metadata("llvm.access.group", group)  # noqa: E731
        ptrs = {a: g.ptr(a, t) for _, node in run for a in node.args if a not in mine and self._kind(a) != "inline"}
        outs = {key: g.ptr(key, t) for key, _ in run}
        with for_range(b, g.B, name="b") as bi:
            with for_range(b, I64(K), name="k") as k:
                row = b.add(b.mul(bi, I64(K)), k)
                with for_range(b, I64(n), name="j", loop_md=loop_id) as j:
                    here = {}
                    for key, node in run:
                        vals = {}
                        for i, a in enumerate(node.args):
                            if a in here:
                                vals[placeholder(i)] = here[a]
                                continue
                            kind = self._kind(a)
                            units = tp.nodes[a].size if a in tp.nodes else self.st.prog.node(a).size
                            if kind == "inline":
                                vals[placeholder(i)] = here[a] = self._inline(g, tp.nodes[a], bi, k, j, t)
                                continue
                            r = {"tan": row, "seed": k, "fwd": bi, "param": None}[kind]
                            col = j if units > 1 else I64(0)
                            idx = col if r is None else b.add(b.mul(r, I64(units)), col)
                            ld = b.load(b.gep(ptrs[a], [idx], inbounds=True))
                            tag(ld)
                            vals[placeholder(i)] = here[a] = ld
                        v = here[key] = LLVMPrinter(b, g.ty, vals).emit_all(node.attrs["expr"])
                        if key in outside:
                            tag(b.store(v, b.gep(outs[key], [b.add(b.mul(row, I64(n)), j)], inbounds=True)))

    def _inline(self, g, node, bi, k, j, t):
        """Entry (b, k, j) of ``∂P·v`` = Σ c·v[b, src] over the terms whose direction k is the
        entry P[i, jj] with unit j (i untransposed, jj transposed; src the other index)."""
        b, zero = g.b, ir.Constant(g.ty, 0.0)
        v = g.ptr(node.args[0], t)
        shared = node.args[0][1] is None
        acc = zero
        for p, tr, c in node.attrs["terms"]:
            m_, n_ = self.st.params[tangent_of(p)]
            kk = b.sub(k, I64(self.dirs.offsets[tangent_of(p)]))
            inside = b.icmp_unsigned("<", kk, I64(m_ * n_))
            kk = b.select(inside, kk, I64(0))  # never an address outside v
            i, jj = b.udiv(kk, I64(n_)), b.urem(kk, I64(n_))
            unit, src = (jj, i) if tr else (i, jj)
            at = src if shared else b.add(b.mul(bi, I64(m_ if tr else n_)), src)
            x = b.load(b.gep(v, [at], inbounds=True))
            if c != 1:
                x = b.fmul(x, ir.Constant(g.ty, float(c)))
            hit = b.and_(inside, b.icmp_unsigned("==", unit, j))
            acc = b.fadd(acc, b.select(hit, x, zero))
        return acc

    def _inject(self, g, node, out, v, empty):
        """out[b, col(i, j), unit] += c·v[b, src] for each term ``∂P·v`` (P (m, n): unit i, src j;
        transposed: unit j, src i); ``empty``: nothing written to ``out`` yet (zeroed first)."""
        b, K, n = g.b, self.K, node.size
        terms = [(tangent_of(p), tr, c) for p, tr, c in node.attrs["terms"] if is_tangent_param(p)]
        if not terms:
            return
        if empty:
            with for_range(b, b.mul(self.BK, I64(n)), name="z") as z:
                b.store(ir.Constant(g.ty, 0.0), b.gep(out, [z], inbounds=True))
        shared = node.args[0][1] is None
        for p, tr, c in terms:
            m_, n_ = self.st.params[p]
            off = self.dirs.offsets[p]
            with for_range(b, g.B, name="ib") as bi:
                with for_range(b, I64(m_), name="ii") as i:
                    with for_range(b, I64(n_), name="ij") as j:
                        unit, src = (j, i) if tr else (i, j)
                        at = I64(0) if shared else b.mul(bi, I64(m_ if tr else n_))
                        x = b.load(b.gep(v, [b.add(at, src)], inbounds=True))
                        if c != 1:
                            x = b.fmul(x, ir.Constant(g.ty, float(c)))
                        col = b.add(I64(off), b.add(b.mul(i, I64(n_)), j))
                        dst = b.gep(out, [b.add(b.mul(b.add(b.mul(bi, I64(K)), col), I64(n)), unit)], inbounds=True)
                        b.store(b.fadd(b.load(dst), x), dst)

    def _accumulate(self, g, t):
        """loss += Σ_b w·ℓ;  g[k] += Σ_b w[b]·∂ℓ[b, k]."""
        b, K = g.b, self.K
        w = g.ptr(WEIGHT, t)
        lossp = self._slot_ptr(g, self.plan.loss)
        ell = g.ptr(self.st.loss_key, t)
        with for_range(b, g.B, name="lb") as bi:
            wb = b.load(b.gep(w, [bi], inbounds=True))
            b.store(b.fadd(b.load(lossp), b.fmul(wb, b.load(b.gep(ell, [bi], inbounds=True)))), lossp)
            if self.ts.loss is not None:  # else no tangent reaches the loss: ∂ℓ = 0
                dl = g.ptr(self.ts.loss, t)
                grad = self._slot_ptr(g, self.plan.grad)
                with for_range(b, I64(K), name="gk") as k:
                    dst = b.gep(grad, [k], inbounds=True)
                    x = b.load(b.gep(dl, [b.add(b.mul(bi, I64(K)), k)], inbounds=True))
                    b.store(b.fadd(b.load(dst), b.fmul(wb, x)), dst)

    def _carry(self, g):
        """J[s] ← ∂h[t] (⊙ mask), h[t-1] ← h[t]."""
        b, K = g.b, self.K
        for s, n in self.st.states.items():
            if s in self.plan.aliased:  # ∂h[t] was written into J
                self._copy_state(g, s, n)
                continue
            J = self._slot_ptr(g, self.plan.L.where[self.ts.state_seeds[s]].slot)
            key = self.ts.out[s]
            src = None if key is None else g.ptr(key, I64(0))
            shared = key in self.plan.seed_shared
            mask = self._slot_ptr(g, self.plan.mask[s]) if self.plan.mask else None
            with for_range(b, self.BK, name="cr") as r:
                kk = b.srem(r, I64(K))
                with for_range(b, I64(n), name="cj") as j:
                    at = b.add(b.mul(r, I64(n)), j)
                    if src is None:
                        x = ir.Constant(g.ty, 0.0)
                    else:
                        x = b.load(b.gep(src, [b.add(b.mul(kk, I64(n)), j) if shared else at], inbounds=True))
                    if mask is not None:
                        x = b.fmul(x, b.load(b.gep(mask, [b.add(b.mul(kk, I64(n)), j)], inbounds=True)))
                    b.store(x, b.gep(J, [at], inbounds=True))
            self._copy_state(g, s, n)

    # ------------------------------------------------------------------ calls
    def _workspace(self, B) -> int:
        """Elements of the GEMM workspace for batch B."""
        S = max([n.size for n in self.st.prog.nodes.values() if isinstance(n.size, int)]
                + [d for s in self.st.params.values() if isinstance(s, tuple) for d in s])
        return max(gemm.workspace_elems(B * self.K, S, S, str(self.dtype), self.host), 1)

    def buffer_bytes(self, B) -> int:
        """Bytes of the working buffers :meth:`_buffers` makes for batch B (the tangent step's
        values over B·K directions: several times the sensitivity J itself)."""
        rows = {"B": B, "BK": B * self.K, "K": self.K, "1": 1}
        n = sum(rows[r] * max(u, 1) for r, u in self.plan.sizes.values() if r != "ext")
        return (n + self._workspace(B)) * np.dtype(self.dtype).itemsize

    def _buffers(self, B):
        """The internal buffers for batch B (made once per B, reused by every window)."""
        if self._B == B:
            return self._bufs
        rows = {"B": B, "BK": B * self.K, "K": self.K, "1": 1}
        bufs = {k: np.zeros(rows[r] * max(u, 1), dtype=self.dtype)
                for k, (r, u) in self.plan.sizes.items() if r != "ext"}
        for sk, k in self.plan.seed_shared.items():
            p = tangent_of(sk[0])
            n = self.ts.prog.nodes[sk].size
            table = np.zeros((self.K, n), dtype=self.dtype)
            table[self.dirs.offsets[p] + np.arange(n), np.arange(n)] = 1
            bufs[k][:] = table.ravel()
            if sk in self.plan.seed_full:
                bufs[self.plan.seed_full[sk]][:] = np.broadcast_to(table, (B, self.K, n)).ravel()
        for s, k in self.plan.mask.items():
            bufs[k][:] = self.mask[s].ravel()
        self._work = np.zeros(self._workspace(B), dtype=self.dtype)
        self._bufs, self._B = bufs, B
        return bufs

    def run(self, params, states, seqs, w, J):
        """Run ``w.shape[0]`` steps. ``params`` {name: array}, ``states`` {s: (B, n)}, ``seqs``
        {input/target: (T, B, n)}, ``w`` (T, B), ``J`` {s: (B, K, n)} (the carry, updated in place).
        Returns (loss, g (K,), final states)."""
        T, B = w.shape
        dt = self.dtype
        bufs = self._buffers(B)
        keep = {}
        ptrs = (ctypes.c_void_p * len(self.plan.L.slots))()

        def put(slot, a):
            a = np.ascontiguousarray(a, dtype=dt)
            keep[slot] = a
            ptrs[slot] = a.ctypes.data

        for k, a in bufs.items():
            ptrs[k] = a.ctypes.data
        for p, k in self.plan.param.items():
            put(k, params[p])
        for name, k in self.plan.io.items():
            put(k, seqs[name])
        put(self.plan.weight, w)
        for s, k in self.plan.state.items():
            bufs[k][:] = np.asarray(states[s], dtype=dt).ravel()
        for s in self.st.states:
            slot = self.plan.L.where[self.ts.state_seeds[s]].slot
            if J[s].dtype != dt or not J[s].flags.c_contiguous:
                raise CompileError(f"cell {self.st.name!r}: internal: the carried J[{s!r}] is not a "
                                   f"contiguous {dt} array")
            ptrs[slot] = J[s].ctypes.data
        bufs[self.plan.grad][:] = 0
        bufs[self.plan.loss][:] = 0
        self._fn(T, B, ptrs, self._work.ctypes.data)
        final = {s: bufs[k].reshape(B, n).copy() for (s, n), k in zip(self.st.states.items(), self.plan.state.values())}
        return float(bufs[self.plan.loss][0]), bufs[self.plan.grad].copy(), final
