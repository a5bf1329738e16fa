"""The matrix-state ops of the native backend (:mod:`rnncomp.matrix_dsl`) as vector code.

Each sample's (m, n) matrix is a row-major block of m·n units, so every op below walks the
contiguous rows in explicit vectors of ``W`` lanes (a scalar tail when ``n`` is not a multiple
of ``W``) and never stores to memory inside a reduction:

- ``outer``   o[i, :] = a[i] · c[:]                    (a splat times each chunk of c)
- ``mbcast``  o[i, :] = v[i]  (rows)  or  v[:]  (columns)
- ``smatvec`` o[i] = Σ_j X[i, j] v[j]: one vector accumulator per row, summed across lanes
  by halving shuffles; transposed, o[j] = Σ_i X[i, j] u[i]: one vector accumulator per
  chunk of columns, carried down the rows in a register
- ``mreduce`` the same two walks with v ≡ 1 (row sums and column sums).

These are the per-sample products of a matrix *state* (every sample has its own X), so there
is no shared operand to hand to a GEMM: each X is read once and the ops are bound by that
read, which the vectors stream.  The lanes change the order of the sums (as the GEMM kernels
do); the tests compare against the NumPy oracle with the dtype's tolerances.
"""
from __future__ import annotations

from llvmlite import ir

from ..errors import CompileError
from .llvm.builder import I64, I32, alloca_once, for_range
from .llvm.gemm_kernel import load_vec, splat, store_vec

#: bytes of one vector: a 512-bit register (LLVM splits it on narrower machines)
VECTOR_BYTES = 64
#: column chunks summed together down the rows (their accumulators stay in registers)
GROUP = 8
#: vector chunks of a row written out in line; a loop over chunks beyond
UNROLL = 16

#: (op, axis, transposed) → the method of :class:`MatrixEmitter` that emits it
KINDS = {("outer", 1, False): "outer", ("mbcast", 1, False): "bcast_rows", ("mbcast", 0, False): "bcast_columns",
         ("smatvec", 1, False): "matvec", ("smatvec", 1, True): "matvec_t",
         ("mreduce", 1, False): "row_sums", ("mreduce", 0, False): "column_sums"}


class MatrixEmitter:
    """Emits one matrix op for one sample: ``o``, ``args`` point at that sample's rows."""

    def __init__(self, b: ir.IRBuilder, ty: ir.Type, itemsize: int):
        self.b, self.ty, self.es = b, ty, itemsize
        self.W = VECTOR_BYTES // itemsize
        self.vt = ir.VectorType(ty, self.W)

    def emit(self, op, o, args, shape, axis=1, transposed=False):
        """One op (``axis``: mbcast/mreduce's; ``transposed``: smatvec's) into ``o``."""
        kind = KINDS.get((op, axis if op in ("mbcast", "mreduce") else 1, bool(transposed)))
        if kind is None:
            raise CompileError(f"native backend: no matrix code for op {op!r} (axis {axis}, transposed {transposed})")
        getattr(self, kind)(o, args, *shape)

    def outer(self, o, args, m, n):
        self._rows(o, m, n, lambda i: self._at(args[0], i), lambda j, w: self._load(args[1], j, w))

    def bcast_rows(self, o, args, m, n):
        self._rows(o, m, n, lambda i: self._at(args[0], i), None)

    def bcast_columns(self, o, args, m, n):
        self._rows(o, m, n, None, lambda j, w: self._load(args[0], j, w))

    def matvec(self, o, args, m, n):
        self._row_dots(o, args[0], args[1], m, n)

    def matvec_t(self, o, args, m, n):
        self._column_dots(o, args[0], args[1], m, n)

    def row_sums(self, o, args, m, n):
        self._row_dots(o, args[0], None, m, n)

    def column_sums(self, o, args, m, n):
        self._column_dots(o, args[0], None, m, n)

    # ------------------------------------------------------------------ helpers
    def _chunks(self, n):
        """(start, width) of each vector chunk and, scalar, of the tail."""
        full = n - n % self.W
        return [(j, self.W) for j in range(0, full, self.W)] + [(j, 1) for j in range(full, n)]

    def _at(self, p, i):
        return self.b.load(self.b.gep(p, [i], inbounds=True))

    def _load(self, p, j, w):
        at = self.b.gep(p, [j], inbounds=True)
        return load_vec(self.b, at, w, self.es) if w > 1 else self.b.load(at)

    def _store(self, v, p, j):
        at = self.b.gep(p, [j], inbounds=True)
        if isinstance(v.type, ir.VectorType):
            store_vec(self.b, v, at, self.es)
        else:
            self.b.store(v, at)

    def _splat(self, x, w):
        return splat(self.b, x, w) if w > 1 else x

    def _over_row(self, n, body):
        """``body(j, w)`` for each chunk of a row: unrolled up to ``UNROLL`` vectors, a loop
        beyond (code size stays bounded for wide matrices), then the scalar tail."""
        b, full = self.b, n // self.W
        if full <= UNROLL:
            for k in range(full):
                body(I64(k * self.W), self.W)
        else:
            with for_range(b, I64(full), name="mk") as k:
                body(b.mul(k, I64(self.W)), self.W)
        for j in range(full * self.W, n):
            body(I64(j), 1)

    def _rows(self, o, m, n, row_factor, column):
        """o[i, j] = row_factor(i) · column(j), either side absent meaning 1 (not both)."""
        b = self.b
        with for_range(b, I64(m), name="mi") as i:
            r = row_factor(i) if row_factor is not None else None
            base = b.mul(i, I64(n))

            def chunk(j, w):
                if column is None:
                    v = self._splat(r, w)
                else:
                    v = column(j, w)
                    if r is not None:
                        v = b.fmul(self._splat(r, w), v)
                self._store(v, o, b.add(base, j))
            self._over_row(n, chunk)

    def _row_dots(self, o, X, v, m, n):
        """o[i] = Σ_j X[i, j] · v[j] (v None: 1): the row's vector chunks into one vector
        accumulator, its lanes summed at the end of the row."""
        b = self.b
        vacc = alloca_once(b, self.vt, "rowacc")  # registers after mem2reg
        sacc = alloca_once(b, self.ty, "rowtail")
        with for_range(b, I64(m), name="mi") as i:
            base = b.mul(i, I64(n))
            b.store(ir.Constant(self.vt, None), vacc)
            b.store(ir.Constant(self.ty, None), sacc)

            def chunk(j, w):
                x = self._load(X, b.add(base, j), w)
                if v is not None:
                    x = b.fmul(x, self._load(v, j, w), flags=("contract",))
                acc = vacc if w > 1 else sacc
                b.store(b.fadd(b.load(acc), x, flags=("contract",)), acc)
            self._over_row(n, chunk)
            s = b.fadd(self._hsum(b.load(vacc)), b.load(sacc))
            b.store(s, b.gep(o, [i], inbounds=True))

    def _column_dots(self, o, X, u, m, n):
        """o[j] = Σ_i X[i, j] · u[i] (u None: 1): a group of column chunks at a time, each chunk's
        accumulator carried down the rows in a register (independent chains, so the adds overlap)."""
        chunks, scale = self._chunks(n), None if u is None else (lambda i: self._at(u, i))
        for g in range(0, len(chunks), GROUP):
            group = chunks[g:g + GROUP]
            accs = self._down_columns(X, I64(m), I64(n), group, [self.vt if w > 1 else self.ty for _, w in group],
                                      scale)
            for acc, (j, _) in zip(accs, group):
                self._store(self.b.load(acc), o, I64(j))

    def add_column_sums(self, o, X, rows, n, ld):
        """o[j] += Σ_{i < rows} X[i·ld + j] for j < n (``rows`` known at run time): a parameter's
        gradient summed over a step's batch, or over all T·B rows after the loop.  Each chunk's
        sum is carried down the rows in double and rounded to ``o``'s type once: in float32 a
        sum run in float32 over 10⁷ rows (T = 5000, B = 2048) stalls once it is large beside each
        row's term, and came out 1.4 % off (a product's depth-B sums lose nothing like that)."""
        b, chunks = self.b, self._chunks(n)
        wide = ir.DoubleType()
        for g in range(0, len(chunks), GROUP):
            group = chunks[g:g + GROUP]
            accs = self._down_columns(X, rows, I64(ld), group, [ir.VectorType(wide, w) if w > 1 else wide
                                                                for _, w in group])
            for acc, (j, w) in zip(accs, group):
                old = self._load(o, I64(j), w)
                s = b.fadd(b.fpext(old, acc.type.pointee) if old.type != acc.type.pointee else old, b.load(acc))
                self._store(b.fptrunc(s, old.type) if s.type != old.type else s, o, I64(j))

    def _down_columns(self, X, rows, ld, group, types, scale=None):
        """Accumulators (of ``types``, one per column chunk (j, w) of ``group``) holding
        Σ_{i < rows} X[i·ld + j : j + w] · scale(i) (``scale`` None: 1), each carried down the
        rows in a register: independent chains, so the adds overlap; a narrower X is widened."""
        b = self.b
        accs = [alloca_once(b, t, "colacc") for t in types]  # registers after mem2reg
        for acc, t in zip(accs, types):
            b.store(ir.Constant(t, None), acc)
        with for_range(b, rows, name="mi") as i:
            base = b.mul(i, ld)
            s = scale(i) if scale is not None else None
            for acc, t, (j, w) in zip(accs, types, group):
                x = self._load(X, b.add(base, I64(j)), w)
                if s is not None:
                    x = b.fmul(x, self._splat(s, w), flags=("contract",))
                if x.type != t:
                    x = b.fpext(x, t)
                b.store(b.fadd(b.load(acc), x, flags=("contract",)), acc)
        return accs

    def _hsum(self, v):
        """Σ of the lanes of ``v`` by halving: a fixed order, the same for every row."""
        b, w = self.b, v.type.count
        while w > 1:
            h = w // 2
            lo = b.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, h), list(range(h))))
            hi = b.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, h), list(range(h, w))))
            v, w = b.fadd(lo, hi), h
        return b.extract_element(v, I32(0)) if isinstance(v.type, ir.VectorType) else v
