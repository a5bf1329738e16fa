"""The sweep of the native sparse SnAp executor (:mod:`.native_snap`, issue #20): each tangent
node's kept entries, term by term, as :func:`rnncomp.algorithms.sparse_fuse.fuse` groups them.

    coefficients   c[b, j] = ∂expr/∂x at (b, unit j), per element-wise term: once per unit,
                   not once per entry (SnAp-1 holds about |θ|/n entries per unit)
    run            for each segment [s0, s1), for each piece of it (one unit u, the directions
                   counting up from k0; a diagonal piece: u counting up with them), for b (the
                   piece's tables read once for the batch), for e in it (the inner, contiguous
                   loop, marked parallel: it writes only entry e of nodes nothing in it reads back):
                       v[node] = Σ_terms coefficient · x     (x a register, x0 + i, or xp[i];
                                                              the coefficient c[b, u] a scalar)
                       stored, and/or written to J[b, d0 + e]; a state's seed also gathers
                       g[k0 + e] += δh[b, u]·v
                   a folded segment (:mod:`rnncomp.algorithms.sparse_fold`): only the nodes
                   stored, written to J or gathered, v = Σ F[b, u]·x, the F made per (sample,
                   unit) before the run
    general        y zeroed, then per term:  y[b, yp[i]] += coefficient · x[b, xp[i]]
                   (a mat term: its dense blocks as GEMMs, :mod:`rnncomp.algorithms.sparse_blocks`,
                   the rest one dot product per y entry over a contiguous run of x)

Every pointer is loaded before the loops (a store through a float pointer may alias the
``bufs`` array as far as LLVM knows).  A mixin of :class:`.native_snap.SparseKernel`: it
provides ``sp`` (the plan), ``st``, ``plan`` (slots), ``term_slots``, ``coef_slots``, ``blocks`` and ``steps``.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir

from ..algorithms.sparse_fuse import Run
from ..ir import placeholder
from .llvm.builder import I32, I64, alloca_once, for_range, parallel_loop_md
from .llvm.exprgen import LLVMPrinter


def no_tag(inst):
    return inst


class SweepEmitter:
    """Code of the sweep (see the module docstring)."""

    def _tab(self, g, slot, int_table=True):
        """A table's pointer: an index table's as i32 or i64, its width (:meth:`_Slots.table`)."""
        p = self._slot_ptr(g, slot)
        if not int_table:
            return p
        return g.b.bitcast(p, (I32 if self.plan.tables[slot].dtype.itemsize == 4 else I64).as_pointer())

    def _at(self, g, p, i, tag=no_tag):
        """p[i]; an i32 index widened to i64 (every index is ≥ 0)."""
        v = tag(g.b.load(g.b.gep(p, [i], inbounds=True)))
        return g.b.zext(v, I64) if v.type == I32 else v

    def _sweep(self, g, t):
        self._coefficients(g, t)
        self._fold_coefficients(g)
        for s in self.steps:
            if isinstance(s, Run):
                self._run(g, s, t)
            else:
                self._general(g, s, t)

    # ------------------------------------------------------------------ coefficients per unit
    def _coefficients(self, g, t):
        b, nodes = g.b, self.sp.ts.prog.nodes
        for (key, i), slot in self.coef_slots.items():
            node, tm = nodes[key], self.sp.terms[key][i]
            fwd = {a: (g.ptr(a, t), self.st.prog.node(a).size, a[1] is None) for a in node.args if a not in nodes}
            out, n = self._slot_ptr(g, slot), node.size
            group, loop_id = parallel_loop_md(g.m)
            tag = lambda inst: inst.set_metadata("llvm.access.group", group) or inst  # noqa: E731
            with for_range(b, g.B, name="cb") as bi:
                with for_range(b, I64(n), name="cj", loop_md=loop_id) as j:
                    v = self._coefficient(g, node, tm, fwd, bi, j, tag)
                    tag(b.store(v, b.gep(out, [b.add(b.mul(bi, I64(n)), j)], inbounds=True)))

    def _fold_coefficients(self, g):
        """Each folded run's F[b, u] (:mod:`rnncomp.algorithms.sparse_fold`), from the element-wise
        coefficients c[b, u] and the per-unit weight sums of this step, once per (sample, unit)."""
        b, nodes = g.b, self.sp.ts.prog.nodes
        for fold, slots, syms in self.folds.values():
            U = fold.units
            outs = [self._slot_ptr(g, s) for s in slots]
            srcs = {sym: (self._slot_ptr(g, syms[sym]), nodes[src[1]].size if src[0] == "ew" else None)
                    for sym, src in fold.symbols.items()}
            group, loop_id = parallel_loop_md(g.m)
            tag = lambda inst: inst.set_metadata("llvm.access.group", group) or inst  # noqa: E731
            with for_range(b, g.B, name="fb") as bi:
                with for_range(b, I64(U), name="fu", loop_md=loop_id) as u:
                    vals = {}
                    for sym, (p, n) in srcs.items():   # c[b, u] (a node of one unit: c[b, 0]), or w[u]
                        at = u if n is None else b.add(b.mul(bi, I64(n)), u if n > 1 else I64(0))
                        vals[sym] = self._at(g, p, at, tag)
                    printer = LLVMPrinter(b, g.ty, vals)
                    for out, expr in zip(outs, fold.coefs):
                        tag(b.store(printer.print(expr), b.gep(out, [b.add(b.mul(bi, I64(U)), u)], inbounds=True)))

    def _coefficient(self, g, node, tm, fwd, bi, unit, tag):
        """∂expr/∂x at sample ``bi``, unit ``unit``: the forward arguments loaded there (tangent
        arguments are 0: the expression is linear in them, the coefficient does not read them)."""
        b, vals = g.b, {}
        for i, a in enumerate(node.args):
            if a not in fwd:
                vals[placeholder(i)] = ir.Constant(g.ty, 0.0)
                continue
            p, n, shared = fwd[a]
            col = unit if n > 1 else I64(0)
            vals[placeholder(i)] = self._at(g, p, col if shared else b.add(b.mul(bi, I64(n)), col), tag)
        return LLVMPrinter(b, g.ty, vals).emit_all(tm.expr)

    # ------------------------------------------------------------------ one term
    def _source(self, g, tm, t):
        """(pointer, row stride) of what a term reads: J, a tangent node's entries, a forward value."""
        if tm.arg == "J":
            return self._slot_ptr(g, self.plan.J), self.sp.nnz
        if tm.kind == "inject":
            return g.ptr(tm.arg, t), (0 if tm.arg[1] is None else self.st.prog.node(tm.arg).size)
        return self._slot_ptr(g, self.plan.entries[tm.arg]), len(self.sp.entries[tm.arg][0])

    def _reader(self, g, key, i, t, x0=None, reg=False, inline=None, raw=False):
        """A function (b, i, registers, tag) -> coefficient · x of term ``i`` of ``key`` at sample
        b and index i of the term's tables; its pointers loaded here, before any loop.
        ``inline``: a function giving x (a leaf node computed in place, :meth:`_inline_x`);
        ``raw``: x alone (a folded run's coefficients are elsewhere)."""
        b, tm, slots = g.b, self.sp.terms[key][i], self.term_slots[(key, i)]
        if tm.kind == "one":
            return lambda bi, k, regs, tag, unit=None: ir.Constant(g.ty, 1.0)
        src, nx = (None, 0) if reg or inline else self._source(g, tm, t)
        xp = None if reg or inline or x0 is not None else self._tab(g, slots["xp"])
        const = float(tm.expr) if tm.kind == "ew" and tm.expr.is_Number else None
        if tm.kind == "ew" and const is None:
            coef, n = self._slot_ptr(g, self.coef_slots[(key, i)]), self.sp.ts.prog.nodes[key].size
            units = self._tab(g, slots["units"]) if "units" in slots else None   # a run's: the piece's unit
        elif tm.kind in ("inject", "mat"):   # absent where only folded segments read x (raw)
            what = "coef" if tm.kind == "inject" else "matw"
            coef = self._tab(g, slots[what], False) if what in slots else None

        def read(bi, k, regs, tag, unit=None):
            if inline:
                x = inline(bi, k, regs, tag)
            elif reg:
                x = regs[tm.arg]
            else:
                xi = b.add(I64(x0), k) if x0 is not None else self._at(g, xp, k, tag)
                x = self._at(g, src, b.add(b.mul(bi, I64(nx)), xi) if nx else xi, tag)
            if raw:
                return x
            if const is not None:
                return x if const == 1 else b.fmul(x, ir.Constant(g.ty, const))
            if tm.kind == "ew":
                unit = self._at(g, units, k, tag) if unit is None else unit
                return b.fmul(x, self._at(g, coef, b.add(b.mul(bi, I64(n)), unit), tag))
            if tm.kind in ("inject", "mat"):
                assert coef is not None, f"internal: term {i} of {key} has no coefficients"
                return b.fmul(x, self._at(g, coef, k, tag))
            return x
        return read

    def _inline_x(self, g, f, t):
        """x of a FusedTerm whose leaf node the run computes itself
        (:func:`rnncomp.algorithms.sparse_fuse._inline`): 1, or c·v[b, shift + e] with the
        piece's shift (v's start over the piece, less the piece's first entry) in ``regs``, or
        c·v[b, shift] in a segment where v's entry stays over each piece."""
        b, (kind, arg) = g.b, f.inline[:2]
        if kind == "one":
            return lambda bi, k, regs, tag: ir.Constant(g.ty, 1.0)
        if kind == "J":
            return self._seed_x(g, f, t)
        tm = self.sp.terms[arg][0]
        src, nx = self._source(g, tm, t)
        c = float(tm.coef[0])   # one coefficient (sparse_fuse._inline)

        def read(bi, k, regs, tag):
            xi = regs["shift"][id(f)]
            xi = b.add(xi, regs["e"]) if f.inline[3][regs["segment"]] else xi
            x = self._at(g, src, b.add(b.mul(bi, I64(nx)), xi) if nx else xi, tag)
            return x if c == 1 else b.fmul(x, ir.Constant(g.ty, c))
        return read

    def _seed_x(self, g, f, t):
        """x of a FusedTerm reading a state's seed in J itself (sparse_fuse._inline_seeds):
        J[b, j0 + x0 + (e - y0)]; the term that carries the state's gather also adds
        δs[b, u]·x to g[k0 + e] (``regs``: the piece's k0, the entry's unit)."""
        b, (_, _, j0, state) = g.b, f.inline
        J, nnz = self._slot_ptr(g, self.plan.J), self.sp.nnz
        if state is not None:
            delta, n_s = g.ptr(self.bwd.carry_out[state], t), self.st.states[state]
            grad = self._slot_ptr(g, self.plan.grad)

        def read(bi, k, regs, tag):
            x = self._at(g, J, b.add(b.mul(bi, I64(nnz)), b.add(I64(j0 + f.x0), k)), tag)
            if state is not None:
                d = self._at(g, delta, b.add(b.mul(bi, I64(n_s)), regs["unit"]), tag)
                at = b.gep(grad, [b.add(regs["k0"], regs["e"])], inbounds=True)
                tag(b.store(b.fadd(tag(b.load(at)), b.fmul(d, x)), at))
            return x
        return read

    # ------------------------------------------------------------------ a fused run
    def _run(self, g, run, t):
        """Every node of ``run``, one loop over its entries per segment (module docstring); a
        folded segment computes only the nodes it writes, Σ F[b, u]·x (:meth:`_folded`)."""
        b = g.b
        inline = lambda f: f.inline and self._inline_x(g, f, t)  # noqa: E731
        readers = [[(f, self._reader(g, key, f.term, t, f.x0, f.reg, inline(f))) for f in terms]
                   for key, terms in zip(run.keys, run.terms)]
        fold, fslots, _ = self.folds.get(id(run), (None, (), None))
        if fold is not None:
            raws = [[self._reader(g, key, f.term, t, f.x0, f.reg, inline(f), raw=True) for f in terms]
                    for key, terms in zip(run.keys, run.terms)]
            fptr = [self._slot_ptr(g, s) for s in fslots]
        injected = [(f, self._tab(g, self.inline_slots[id(f)])) for ts in run.terms for f in ts
                    if f.inline and f.inline[0] == "inject"]
        outs = [self._slot_ptr(g, self.plan.entries[key]) if keep else None for key, keep in zip(run.keys, run.store)]
        J = self._slot_ptr(g, self.plan.J) if any(d is not None for d in run.to_j) else None
        starts, units, dirs = (self._tab(g, k) for k in self.run_pieces[id(run)])
        grad = self._slot_ptr(g, self.plan.grad)
        deltas = [None if s is None else (g.ptr(self.bwd.carry_out[s], t), self.st.states[s]) for s in run.gather]
        for si, ((s0, s1), (p0, p1), diag) in enumerate(zip(run.segments(), run.pieces[0], run.diag)):
            folded = fold is not None and fold.segments[si] is not None
            group, loop_id = parallel_loop_md(g.m)
            tag = lambda inst: inst.set_metadata("llvm.access.group", group) or inst  # noqa: E731
            with for_range(b, I64(p1), start=I64(p0), name="rp") as p:
                lo, hi, unit = self._at(g, starts, p), self._at(g, starts, b.add(p, I64(1))), self._at(g, units, p)
                k0 = b.sub(self._at(g, dirs, p), lo)    # the gradient entry of entry e: k0 + e
                with for_range(b, g.B, name="rb") as bi:
                    row, jrow = b.mul(bi, I64(run.ny)), b.mul(bi, I64(self.sp.nnz))
                    delta_at = lambda u: [None if d is None else self._at(g, d[0], b.add(b.mul(bi, I64(d[1])), u), tag)  # noqa: E731,E501
                                          for d in deltas]
                    F_at = lambda u: {i: self._at(g, fp, b.add(b.mul(bi, I64(fold.units)), u), tag)  # noqa: E731
                                      for i, fp in enumerate(fptr)}
                    dl, F = (None, None) if diag else (delta_at(unit), folded and F_at(unit))
                    shift = {id(f): (b.sub(self._at(g, at, p), lo) if f.inline[3][si] else self._at(g, at, p))
                             for f, at in injected if f.inline[3][si] is not None}   # v at shift (+ e)
                    with for_range(b, hi, start=lo, name="re", loop_md=loop_id) as e:
                        u_e = b.add(unit, b.sub(e, lo)) if diag else unit   # a diagonal piece's unit counts up
                        regs = {"shift": shift, "e": e, "segment": si, "k0": k0, "unit": u_e}
                        at = lambda f: b.sub(e, I64(f.y0)) if f.y0 else e  # noqa: E731
                        if folded:
                            vals = self._folded(g, run, fold.segments[si], raws, (s0, s1),
                                                lambda f, read: read(bi, at(f), regs, tag, u_e),
                                                F_at(u_e) if diag else F)
                        else:
                            vals = {}
                            for j, (key, terms) in enumerate(zip(run.keys, readers)):
                                v = None
                                for f, read in terms:
                                    if f.y0 <= s0 and s1 <= f.y0 + f.n:
                                        x = read(bi, at(f), regs, tag, u_e)
                                        v = x if v is None else b.fadd(v, x)
                                vals[j] = regs[key] = ir.Constant(g.ty, 0.0) if v is None else v
                        dl_e = delta_at(u_e) if diag else dl
                        for j, v in vals.items():
                            out, d0, delta = outs[j], run.to_j[j], dl_e[j]
                            if out is not None:
                                tag(b.store(v, b.gep(out, [b.add(row, e)], inbounds=True)))
                            if d0 is not None and s1 <= run.j_count[j]:   # J's entries, written here, not by the scatter
                                tag(b.store(v, b.gep(J, [b.add(b.add(jrow, e), I64(d0))], inbounds=True)))
                            if delta is not None:   # the gather: g[k] += δh[b, u]·J[t-1][b, (u, k)]
                                at_g = b.gep(grad, [b.add(k0, e)], inbounds=True)
                                tag(b.store(b.fadd(tag(b.load(at_g)), b.fmul(delta, v)), at_g))

    def _folded(self, g, run, written, raws, seg, read, F):
        """{node index: its value at this entry} for the nodes a folded segment writes: Σ F·x over
        what the segment reads (``read(f, raw reader)``: x at this entry), F a number or ``F[i]``.
        Every x that gathers as it is read (a state's seed in J) is read, used or not."""
        b, (s0, s1) = g.b, seg
        xs = {}
        for j, (terms, raw) in enumerate(zip(run.terms, raws)):
            for pos, (f, r) in enumerate(zip(terms, raw)):
                if f.y0 <= s0 and s1 <= f.y0 + f.n and f.inline and f.inline[0] == "J" and f.inline[3] is not None:
                    xs[(j, pos)] = read(f, r)
        out = {}
        for j, combo in written:
            v = None
            for beta, c in combo:
                if beta == "one":
                    x = ir.Constant(g.ty, 1.0)
                else:
                    if beta not in xs:
                        xs[beta] = read(run.terms[beta[0]][beta[1]], raws[beta[0]][beta[1]])
                    x = xs[beta]
                c = F[c] if isinstance(c, int) else (None if c == 1 else ir.Constant(g.ty, c))
                x = x if c is None else (c if beta == "one" else b.fmul(c, x))
                v = x if v is None else b.fadd(v, x)
            out[j] = ir.Constant(g.ty, 0.0) if v is None else v
        return out

    # ------------------------------------------------------------------ a general node
    def _general(self, g, key, t):
        """A node whose terms write scattered entries: zeroed, then each term added."""
        b, ny = g.b, len(self.sp.entries[key][0])
        y = self._slot_ptr(g, self.plan.entries[key])
        with for_range(b, b.mul(g.B, I64(ny)), name="z") as z:
            b.store(ir.Constant(g.ty, 0.0), b.gep(y, [z], inbounds=True))
        for i, tm in enumerate(self.sp.terms[key]):
            if (key, i) in self.blocks:
                self._blocks(g, key, i, t, y, ny)
            if not len(tm.yp):
                continue
            if (key, i) in self.rows_of:
                self._row_sums(g, key, i, t, y, ny)
                continue
            read, yp = self._reader(g, key, i, t), self._tab(g, self.term_slots[(key, i)]["yp"])
            with for_range(b, g.B, name="sb") as bi:
                with for_range(b, I64(len(tm.yp)), name="si") as k:
                    at = b.gep(y, [b.add(b.mul(bi, I64(ny)), self._at(g, yp, k))], inbounds=True)
                    b.store(b.fadd(b.load(at), read(bi, k, {}, no_tag)), at)

    def _blocks(self, g, key, i, t, y, ny):
        """The dense blocks of a ``mat`` term (:mod:`rnncomp.algorithms.sparse_blocks`): per
        sample and block, y[y0 + j·m + u] += Σ_v P[u, v]·x[x0 + j·n + v] as one GEMM of
        ``count`` rows against op(P)."""
        b, tm = g.b, self.sp.terms[key][i]
        (p, tr, _), = tm.coef[2]
        src, nx = self._source(g, tm, t)
        m, n, cols = self.sp.ts.prog.nodes[key].size, self.sp.ts.prog.nodes[tm.arg].size, self.st.params[p][1]
        P = g.ptr((p, None), t)
        with for_range(b, g.B, name="kb") as bi:
            for y0, x0, count in self.blocks[(key, i)]:
                out = b.gep(y, [b.add(b.mul(bi, I64(ny)), I64(y0))], inbounds=True)
                x = b.gep(src, [b.add(b.mul(bi, I64(nx)), I64(x0))], inbounds=True)
                g.call_gemm(I64(count), I64(m), I64(n), x, I64(n), False, P, I64(cols), not tr, out, I64(m), 1)

    def _row_sums(self, g, key, i, t, y, ny):
        """A ``mat`` term whose pairs come grouped by y entry, each group reading a contiguous
        run of x: y[b, ys[r]] += Σ_j w[j]·x[b, xs[r] + j - lo[r]], j = lo[r] … lo[r+1] - 1
        (a dot product per y entry; its sum is reassociated, so it vectorises)."""
        b, tm = g.b, self.sp.terms[key][i]
        ys, lo, xs = (self._tab(g, k) for k in self.rows_of[(key, i)])
        w = self._tab(g, self.term_slots[(key, i)]["matw"], False)
        src, nx = self._source(g, tm, t)
        acc = alloca_once(b, g.ty, "acc")
        fast = ("reassoc", "nsz")
        with for_range(b, g.B, name="mb") as bi:
            x = b.gep(src, [b.mul(bi, I64(nx))], inbounds=True)
            with for_range(b, I64(len(np.unique(tm.yp))), name="mr") as r:
                j0, j1 = self._at(g, lo, r), self._at(g, lo, b.add(r, I64(1)))
                shift = b.sub(self._at(g, xs, r), j0)
                b.store(ir.Constant(g.ty, 0.0), acc)
                with for_range(b, j1, start=j0, name="mj") as j:
                    v = b.fmul(self._at(g, w, j), self._at(g, x, b.add(shift, j)))
                    b.store(b.fadd(b.load(acc), v, flags=fast), acc)
                at = b.gep(y, [b.add(b.mul(bi, I64(ny)), self._at(g, ys, r))], inbounds=True)
                b.store(b.fadd(b.load(at), b.load(acc)), at)
