"""The native executor of sparse SnAp-n (issue #20): only the kept sensitivity entries, compiled.

One entry point, the time loop inside native code, for a window of T steps:

    online(T, B, bufs, work)    t = 0 … T-1:
        forward step      h[t], ℓ[t] from h[t-1], x[t]                         (B rows)
        backward step     δh[t-1] = ∂(w·ℓ[t])/∂h[t-1], g += ∂(w·ℓ[t])/∂θ|immediate   (δ⁺h[t] = 0)
        gather            g[k] += Σ_b Σ_{u: (u,k) kept} δh[t-1][b, u] · J[b, (u,k)]
                          (done by the sweep's run that loads J, where it can: :mod:`.native_snap_sweep`)
        sweep             each tangent node's entries (:mod:`rnncomp.algorithms.sparse_plan`), nodes
                          with the same entries fused (:mod:`rnncomp.algorithms.sparse_fuse`):
                          y[b, yp[i]] += coefficient · x[b, xp[i]]
        scatter           J[b, e] = the state tangent's entry e (0 where never reached; written by
                          the sweep where they are a range of J);  h[t-1] ← h[t]

Storage per sample: the stored entries and the entries of each node the code stores (read
outside its run; the others live in registers).  For SnAp-1 a weight W[i, j] reaches unit i
only, so each node holds about one entry per parameter entry: the sweep is O(B·|θ|)
element-wise work, the backward step a BPTT step's.  The index tables are arrays of the
kernel (``bufs`` slots, not constants in the code), only those the code reads, int32 where
every index fits (issue #20: they were ~47× the carry of one sample); a ``mat``
term's coefficients Σ c·P[yu, xu] are gathered once per window (θ is constant within it).
J is kept state by state (``SparsePlan(by_state=True)``: each state's entries a range), in a
buffer of the kernel filled from and emptied into the caller's (the NumPy executor's order)
once per call.
"""
from __future__ import annotations

import copy

import numpy as np
import sympy as sp
from llvmlite import ir

from ..autodiff import backward_step
from ..errors import CompileError
from ..algorithms.sparse_blocks import dense_blocks
from ..algorithms import sparse_fold
from ..algorithms.sparse_fuse import Run, contiguous, fuse, row_groups
from ..algorithms.restricted import narrow
from ..ir import LEAF_OPS
from .llvm.builder import I64, for_range, parallel_loop_md
from .llvm.exprgen import unsupported
from .llvm.jit import HostTarget
from .native_emit import Gen
from .native_online_emit import OnlineSlots, StepEmitter, compile_online, sources_hash
from .native_snap_sweep import SweepEmitter, no_tag
from .native_tangent_plan import FORWARD_OPS, WEIGHT, check


class _Slots(OnlineSlots):
    """:class:`.native_online_emit.OnlineSlots`, the backward step's zero seeds δ⁺h[t], the
    carried entries J, each tangent node's entries and the index tables ("ext": made once)."""

    def __init__(self, step, bwd, sp_plan):
        super().__init__(step, (step.prog, bwd.prog), bwd, WEIGHT)
        for s, key in bwd.carry_in.items():  # δ⁺h[t] = 0: a buffer never written
            self.place(key, self.slot(f"zero {s}", "B", step.states[s]))
        # J in the plan's order: the caller's array itself, or (the plan's order differs from the
        # caller's, the NumPy executor's) a buffer of the kernel filled and emptied once per call
        self.permuted = not np.array_equal(sp_plan.perm, np.arange(len(sp_plan.perm)))
        self.J = self.slot("J", "B", sp_plan.nnz) if self.permuted else self.slot("J", "ext", 0)
        self.J_caller = self.slot("J caller", "ext", 0) if self.permuted else self.J
        self.entries = {}   # node -> the slot of its entries, where the code stores them (SparseKernel._make_tables)
        self.tables = {}   # slot -> int64 or float array, made once

    def table(self, label, array, dtype=None):
        """A slot holding ``array``: an index table as int32 where its values fit (the code loads
        each table as its own width), else int64; ``dtype``: a float table's."""
        k = self.slot(label, "ext", 0)
        a = np.asarray(array)
        self.tables[k] = np.ascontiguousarray(a, dtype=dtype) if dtype is not None else \
            np.ascontiguousarray(narrow(a if a.dtype in (np.int32, np.int64) else a.astype(np.int64)))
        return k


class SparseKernel(SweepEmitter, StepEmitter):
    """The compiled window of sparse SnAp for one cell (see the module docstring)."""

    #: fold each run's chain rule per unit where it can (:mod:`rnncomp.algorithms.sparse_fold`);
    #: False emits every node of a run per entry (the tests check both against NumPy)
    fold = True

    def __init__(self, step, sp_plan, dtype, cache="default"):
        self.st, self.sp, self.dtype = step, sp_plan, np.dtype(dtype)
        check(step, sp_plan.ts)
        self.bwd = bwd = backward_step(step)
        self._check_backward()
        self.host = HostTarget.detect()
        self.plan = _Slots(step, bwd, sp_plan)
        self._make_tables()
        self.lib, self._fn = compile_online(step, self._description(), self._build, self.host, cache,
                                            "the sparse SnAp step")
        # the plan's per-entry arrays (a few index arrays per tangent node and term, ~40× the carry
        # of one sample) are not needed once the code is built: the kernel keeps the tables it reads
        self.nnz, self.sp = sp_plan.nnz, None
        self._bufs, self._B = {}, None

    def _check_backward(self):
        prog = self.bwd.prog
        ops = sorted({n.op for n in prog.nodes.values() if n.op not in LEAF_OPS and n.op not in FORWARD_OPS})
        funcs = sorted({f for n in prog.nodes.values() if n.op == "ew" for f in unsupported(n.attrs["expr"])}
                       | {f for terms in self.sp.terms.values() for tm in terms if tm.kind == "ew"
                          for f in unsupported(tm.expr)})
        if ops or funcs:
            raise CompileError(f"cell {self.st.name!r}: the native sparse SnAp executor has no code for "
                               f"{', '.join(ops + funcs)} in its backward step (use backend='numpy')")

    # ------------------------------------------------------------------ index tables
    def _make_tables(self):
        P, sp_ = self.plan, self.sp
        self.steps = fuse(sp_, [s for s in self.st.states if self.bwd.carry_out[s] is not None])
        self.run_keys = {k for r in self.steps if isinstance(r, Run) for k in r.keys}
        self._dense_blocks()
        sp_ = self.sp
        # a buffer for the entries of the nodes stored (read outside their run, copied to J) and the
        # general ones only: a run keeps the others in registers (LSTM SnAp-1: none is stored)
        stored = {k for r in self.steps if isinstance(r, Run) for k, keep in zip(r.keys, r.store) if keep}
        for key in sp_.order:
            if key in stored or key in self.steps:
                P.entries[key] = P.slot(f"entries {key}", "B", len(sp_.entries[key][0]))
        self.perm_slot = P.table("J order", sp_.perm) if P.permuted else None
        self.run_pieces = {id(r): tuple(P.table(f"piece {w} {r.keys[0]}", a) for w, a in zip(("starts", "units", "dirs"),
                                                                                           r.pieces[1:]))
                           for r in self.steps if isinstance(r, Run)}
        fused = {s for r in self.steps if isinstance(r, Run) for s in r.gather if s is not None}
        fused |= {f.inline[3] for r in self.steps if isinstance(r, Run) for ts in r.terms for f in ts
                  if f.inline and f.inline[0] == "J" and f.inline[3] is not None}   # gathered as J is read
        self.inline_slots = {id(f): P.table(f"inline starts {key} {f.term}", f.inline[2])   # v's start per piece
                             for r in self.steps if isinstance(r, Run) for key, ts in zip(r.keys, r.terms)
                             for f in ts if f.inline and f.inline[0] == "inject"}
        self.term_slots = {}   # (node, i) -> {"yp": slot, "xp": slot, "units"/"coef"/"matw": slot}
        self.coef_slots = {}   # (node, i) -> the slot of an ew term's coefficient per (sample, unit), unless constant
        self.matw = {}         # slot -> [(param, flat positions' table, c, n)]: Σ c·P[yu, xu], once per call
        self.rows_of = {}      # (node, i) -> slots of a mat term's (ys, lo, xs): see _row_sums
        # a run reads a term at its entry (no yp) with the piece's unit (no units), x at x0 + e, in a
        # register or computed in place where it can (no xp): only the tables the code reads are made
        # (and a run's per-entry weights only where a segment that reads them is not folded)
        in_run = {(k, f.term): (f, r) for r in self.steps if isinstance(r, Run) for k, ts in zip(r.keys, r.terms)
                  for f in ts}
        self._fold_of = {id(r): sparse_fold.fold(sp_, r) for r in self.steps if isinstance(r, Run)} if self.fold else {}
        general_keys = {k for k in self.steps if not isinstance(k, Run)}
        for key in sp_.order:
            for i, tm in enumerate(sp_.terms[key]):
                (f, r), s = in_run.get((key, i), (None, None)), {}
                general = key in general_keys
                self.term_slots[(key, i)] = s
                if not general and (f is None or tm.kind == "mat" and self._folded_only(f, r)):
                    continue   # never read: a node computed in place, a term of no entry, folded weights
                rows = row_groups(tm.yp, tm.xp) if general and tm.kind == "mat" else None
                if general and rows is None:
                    s["yp"] = P.table(f"yp {key} {i}", tm.yp)
                if (general and rows is None or f is not None and f.x0 is None and not f.reg and not f.inline) \
                        and tm.kind != "one":
                    s["xp"] = P.table(f"xp {key} {i}", tm.xp)
                if tm.kind == "ew" and not tm.expr.is_Number:   # a constant coefficient is in the code
                    if general:
                        s["units"] = P.table(f"units {key} {i}", tm.units)
                    self.coef_slots[(key, i)] = P.slot(f"dcoef {key} {i}", "B", sp_.ts.prog.nodes[key].size)
                elif tm.kind == "inject":
                    s["coef"] = P.table(f"coef {key} {i}", tm.coef, self.dtype)
                elif tm.kind == "mat":
                    s["matw"] = P.slot(f"matw {key} {i}", "1", len(tm.yp))
                    yu, xu, mterms = tm.coef   # Σ c·P[yu, xu] (P transposed: P[xu, yu]) from flat P
                    self.matw[s["matw"]] = [(p, P.table(f"matw at {key} {i} {p}", np.ravel_multi_index(
                        (xu, yu) if tr else (yu, xu), self.st.params[p])), float(c), len(yu)) for p, tr, c in mterms]
                    if rows is not None:
                        self.rows_of[(key, i)] = tuple(P.table(f"{what} {key} {i}", a)
                                                       for what, a in zip(("rows y", "rows lo", "rows x"), rows))
        self._folds()
        # an index table that counts up by one is a start instead (a plain, vectorisable loop)
        pos = lambda label, a: ("+", contiguous(a)) if contiguous(a) is not None else ("[]", P.table(label, a))  # noqa: E731,E501
        direct = {k for r in self.steps if isinstance(r, Run) for k, d0 in zip(r.keys, r.to_j) if d0 is not None}
        self.out_slots = [(k, pos(f"out src {k}", src), pos(f"out dst {k}", dst), len(src))
                          for k, src, dst in sp_.out if k not in direct]
        hit = np.zeros(sp_.nnz, dtype=bool)
        for _, _, dst in sp_.out:
            hit[dst] = True
        self.unreached = (pos("unreached", np.nonzero(~hit)[0]), int((~hit).sum()))   # J's entries left 0
        self.gather = []       # per state with a δh[t-1]: (its key, n, stored, unit, column, count, distinct)
        for s, n in self.st.states.items():
            key = self.bwd.carry_out[s]
            if key is None or s in fused:   # gathered by the run that reads its seed
                continue
            o = sp_.state_off[s]
            e = np.nonzero((sp_.row >= o) & (sp_.row < o + n))[0]
            u, k = sp_.row[e] - o, sp_.col[e]
            self.gather.append((key, n, pos(f"gather e {s}", e), pos(f"gather u {s}", u), pos(f"gather k {s}", k),
                                len(e), len(np.unique(k)) == len(e)))

    def _folded_only(self, f, run):
        """Whether every segment of ``run`` that FusedTerm ``f`` writes is folded (reads f's x alone)."""
        fold = self._fold_of.get(id(run))
        return fold is not None and all(fold.segments[si] is not None for si, (s0, s1) in enumerate(run.segments())
                                        if f.y0 <= s0 and s1 <= f.y0 + f.n)

    def _folds(self):
        """``folds`` {id(run): (its :class:`.sparse_fold.Fold`, an F slot per coefficient,
        {symbol: its slot})}: the runs with a segment whose chain rule folds per unit (a
        weight symbol's per-unit sums Σ c·P[yu, xu] are made once per call, as ``matw``)."""
        self.folds, P = {}, self.plan
        if not self.fold:
            return
        for ri, r in enumerate(s for s in self.steps if isinstance(s, Run)):
            f = self._fold_of[id(r)]
            if all(s is None for s in f.segments):
                continue
            slots = {}
            for sym, src in f.symbols.items():
                if src[0] == "ew":
                    slots[sym] = self.coef_slots[src[1:]]
                    continue
                slots[sym] = P.slot(f"fold w {ri} {sym}", "1", f.units)
                self.matw[slots[sym]] = [(p, P.table(f"fold w at {ri} {sym} {p}", flat), c, f.units)
                                         for p, _, c, flat in src[3]]
            self.folds[id(r)] = (f, [P.slot(f"fold {ri} {i}", "B", f.units) for i in range(len(f.coefs))], slots)

    def _dense_blocks(self):
        """``blocks`` {(node, i): [(y0, x0, count)]}: the GEMMs of each general node's mat term
        (:func:`.sparse_blocks.dense_blocks`); where there are any, ``sp`` becomes the kernel's
        own copy of the plan whose such terms hold the other pairs only."""
        self.blocks, terms = {}, dict(self.sp.terms)
        for key in (s for s in self.steps if not isinstance(s, Run)):
            terms[key] = list(terms[key])
            for i, tm in enumerate(terms[key]):
                if tm.kind == "mat":
                    found, terms[key][i] = dense_blocks(self.sp, key, tm)
                    if found:
                        self.blocks[(key, i)] = found
        if self.blocks:
            self.sp = copy.copy(self.sp)
            self.sp.terms = terms
        self.gemm_rows = max([c for found in self.blocks.values() for _, _, c in found] + [0])

    def _description(self) -> str:
        h = sources_hash()
        h.update(repr([s.describe() if isinstance(s, Run) else s for s in self.steps]).encode())
        h.update(repr((self.out_slots, self.unreached, self.gather, sorted(self.rows_of), sorted(self.blocks.items()),
                       self.fold, [f.describe() for s in self.steps if id(s) in self.folds
                                   for f in self.folds[id(s)][:1]])).encode())
        for k in sorted(self.plan.tables):
            h.update(repr((k, self.plan.L.slots[k], self.plan.tables[k].dtype.str, len(self.plan.tables[k]))).encode())
        for prog in (self.st.prog, self.sp.ts.prog, self.bwd.prog):
            for key, n in prog.nodes.items():
                attrs = {k: (sp.srepr(v) if isinstance(v, sp.Basic) else v) for k, v in n.attrs.items()}
                h.update(repr((key, n.op, n.args, n.size, sorted(attrs.items()))).encode())
        h.update(repr((self.bwd.carry_out, self.bwd.grads, self.st.loss_key, self.plan.L.slots,
                       [(k, tm.kind, tm.arg, sp.srepr(tm.expr) if tm.expr is not None else None)
                        for k in self.sp.order for tm in self.sp.terms[k]], str(self.dtype))).encode())
        return h.hexdigest()

    # ------------------------------------------------------------------ code generation
    def _build(self):
        module = ir.Module(name=f"rnncomp_snap_{self.st.name}")
        module.triple = self.host.triple
        g = Gen(module, self.dtype, self.plan.L, self.host, "online")
        self._pack_weights(g)
        self._mat_weights(g)
        if self.plan.permuted:
            self._permute(g, into_plan=True)
        with for_range(g.b, g.T, name="t") as t:
            self._program(g, self.st.prog, t)
            self._loss(g, t)
            self._program(g, self.bwd.prog, t)
            self._grad_terms(g, self.bwd, t, self._slot_ptr(g, self.plan.grad), self._slot_ptr(g, self.plan.tmp))
            self._gather(g, t)
            self._sweep(g, t)
            self._scatter(g)
            for s, n in self.st.states.items():
                self._copy_state(g, s, n)
        if self.plan.permuted:
            self._permute(g, into_plan=False)
        g.b.ret_void()
        return module

    def _mat_weights(self, g):
        """Before the time loop (θ is constant within a call): each ``mat`` term's coefficients
        w[i] = Σ c·P[flat[i]] (:meth:`.SparsePlan.mat_weights`)."""
        b = g.b
        for slot, picks in self.matw.items():
            w = self._slot_ptr(g, slot)
            for j, (p, at_slot, c, n) in enumerate(picks):
                src, at = g.ptr((p, None), I64(0)), self._tab(g, at_slot)
                with for_range(b, I64(n), name="mw") as i:
                    x = b.load(b.gep(src, [self._at(g, at, i)], inbounds=True))
                    x = x if c == 1 else b.fmul(x, ir.Constant(g.ty, c))
                    dst = b.gep(w, [i], inbounds=True)
                    b.store(x if j == 0 else b.fadd(b.load(dst), x), dst)

    def _permute(self, g, into_plan):
        """J (plan's order)[b, i] = J (caller's)[b, perm[i]], or back."""
        b, nnz = g.b, self.sp.nnz
        mine, theirs = (self._slot_ptr(g, k) for k in (self.plan.J, self.plan.J_caller))
        perm = self._tab(g, self.perm_slot)
        group, loop_id = parallel_loop_md(g.m)
        tag = lambda inst: inst.set_metadata("llvm.access.group", group) or inst  # noqa: E731
        with for_range(b, g.B, name="pb") as bi:
            row = b.mul(bi, I64(nnz))
            with for_range(b, I64(nnz), name="pi", loop_md=loop_id) as i:
                a = b.gep(mine, [b.add(row, i)], inbounds=True)
                c = b.gep(theirs, [b.add(row, self._at(g, perm, i, tag))], inbounds=True)
                src, dst = (c, a) if into_plan else (a, c)
                tag(b.store(tag(b.load(src)), dst))

    def _loss(self, g, t):
        b = g.b
        lossp, w, ell = self._slot_ptr(g, self.plan.loss), g.ptr(WEIGHT, t), g.ptr(self.st.loss_key, t)
        with for_range(b, g.B, name="lb") as bi:
            b.store(b.fadd(b.load(lossp), b.fmul(self._at(g, w, bi), self._at(g, ell, bi))), lossp)

    def _index(self, g, spec):
        """k -> the k-th position of an index table ("[]", slot) or a range ("+", start)."""
        b = g.b
        if spec[0] == "+":
            return lambda k, tag: b.add(k, I64(spec[1])) if spec[1] else k
        p = self._tab(g, spec[1])
        return lambda k, tag: self._at(g, p, k, tag)

    def _gather(self, g, t):
        """g[k] += Σ_b δh[t-1][b, u]·J[b, (u, k)] over the stored entries (J still J[t-1]) of the
        states no run gathers as it reads them (:func:`.sparse_fuse._gathers`); the loop over
        entries is parallel where no parameter entry k comes twice."""
        b, nnz = g.b, self.sp.nnz
        grad, J = self._slot_ptr(g, self.plan.grad), self._slot_ptr(g, self.plan.J)
        for key, n, es, us, ks, count, distinct in self.gather:
            dl, e, u, k = g.ptr(key, t), self._index(g, es), self._index(g, us), self._index(g, ks)
            group, loop_id = parallel_loop_md(g.m) if distinct else (None, None)
            tag = (lambda inst: inst.set_metadata("llvm.access.group", group) or inst) if distinct else no_tag
            with for_range(b, g.B, name="qb") as bi:
                with for_range(b, I64(count), name="qi", loop_md=loop_id) as i:
                    x = self._at(g, dl, b.add(b.mul(bi, I64(n)), u(i, tag)), tag)
                    j = self._at(g, J, b.add(b.mul(bi, I64(nnz)), e(i, tag)), tag)
                    at = b.gep(grad, [k(i, tag)], inbounds=True)
                    tag(b.store(b.fadd(tag(b.load(at)), b.fmul(x, j)), at))

    def _scatter(self, g):
        """J[b, e] = the output entries (0 where never reached); every entry written once."""
        b, nnz = g.b, self.sp.nnz
        J = self._slot_ptr(g, self.plan.J)
        spec, count = self.unreached
        copies = [(None, None, spec, count)] + [(key, src, dst, count) for key, src, dst, count in self.out_slots]
        for key, src_s, dst_s, count in copies:
            if not count:
                continue
            ny = len(self.sp.entries[key][0]) if key is not None else 0
            y = self._slot_ptr(g, self.plan.entries[key]) if key is not None else None
            src, dst = (self._index(g, src_s) if key is not None else None), self._index(g, dst_s)
            group, loop_id = parallel_loop_md(g.m)
            tag = lambda inst: inst.set_metadata("llvm.access.group", group) or inst  # noqa: E731
            with for_range(b, g.B, name="ob") as bi:
                with for_range(b, I64(count), name="oi", loop_md=loop_id) as i:
                    x = ir.Constant(g.ty, 0.0) if y is None else \
                        self._at(g, y, b.add(b.mul(bi, I64(ny)), src(i, tag)), tag)
                    tag(b.store(x, b.gep(J, [b.add(b.mul(bi, I64(nnz)), dst(i, tag))], inbounds=True)))

    # ------------------------------------------------------------------ calls
    def run(self, params, states, seqs, w, J):
        """Run ``w.shape[0]`` steps from ``states`` {s: (B, n)} with the carried ``J`` (B, nnz, in
        the NumPy executor's order: :class:`.SparsePlan`'s ``perm``), updated in place; ``seqs`` {input/target: (T, B, n)}.  Returns (loss, g (P,), final states)."""
        T, B = w.shape
        dt, P = self.dtype, self.plan
        if J.dtype != dt or not J.flags.c_contiguous or J.shape != (B, self.nnz):
            raise CompileError(f"cell {self.st.name!r}: internal: the carried SnAp entries are not a "
                               f"contiguous {dt} ({B}, {self.nnz}) array")
        if self._B != B:
            (self._bufs, self._work), self._B = P.buffers(B, dt, self.host, self.gemm_rows), B
        return P.call(self._fn, self._bufs, self._work, params, states, seqs, w, {P.J_caller: J}, fixed=P.tables)
