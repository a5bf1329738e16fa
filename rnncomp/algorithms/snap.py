"""SnAp-n (Menick et al. 2021): RTRL keeping only the sensitivities n steps of the cell reach.

The pattern comes from the symbolic step, not from the user (:func:`.pattern.pattern`):
``M[u, k]`` says whether parameter entry k can reach state unit u within n steps from
J[0] = 0.  SnAp keeps

    J[t] = M ⊙ (∂h[t]/∂h[t-1] · J[t-1] + ∂h[t]/∂θ|immediate)

Two executors of the same recursion:

* dense (``sparse=False``): the RTRL step on every column, then the mask (the reference);
* sparse: only the entries of M stored.  Per step the entries D[u, v] of the state Jacobian
  that M links (:mod:`.restricted`: forward mode computing only those), the immediate term
  with parameter columns that touch disjoint units sharing one direction (a greedy
  colouring), ∂ℓ/∂h[t-1] and ∂ℓ/∂θ from the backward step, and Σ_v D[u, v]·J[v, k] over the
  pairs (u, v) of the same column k only (a gather and one bincount).

With an element-wise (diagonal) recurrence SnAp-1 *is* RTRL: nothing outside M1 is ever
reached.  Otherwise it is biased and cheaper: memory nnz(M) instead of n_s·P.
"""
from __future__ import annotations

from functools import cached_property

import numpy as np

from ..autodiff import backward_step
from ..checks import count
from ..backends.numpy import run_program
from ..forward_mode import tangent_step
from ..ops import matrix_ops
from .base import Algorithm, check_memory
from .pattern import entry_classes, group_pairs, kept_count, pattern, pattern_classes, reach, stored_entries
from .restricted import RestrictedJacobian
from .rtrl import DEFAULT_MAX_BYTES, checked_bytes
from .rtrl import _Prepared as _RtrlPrepared
from .tangents import Directions, run_tangents


class SnAp(Algorithm):
    """``rc.SnAp(n=1, sparse="auto")``: SnAp-n; ``sparse=True`` stores only the kept entries,
    ``False`` runs the dense reference; "auto" is sparse while under a quarter of RTRL's entries
    are kept (past that, the dense GEMMs beat the gathers)."""

    def __init__(self, n: int = 1, sparse="auto", max_bytes: int | None = DEFAULT_MAX_BYTES):
        count(f"SnAp(n={n!r})", "n", n, hint="SnAp-1, SnAp-2, ...")
        if sparse not in (True, False, "auto"):
            raise ValueError(f"SnAp(sparse={sparse!r}): True, False or 'auto'")
        self.n, self.sparse, self.max_bytes = n, sparse, checked_bytes(f"SnAp({n})", max_bytes)

    @property
    def name(self) -> str:
        return f"SnAp-{self.n}"

    def __repr__(self) -> str:
        return f"rc.SnAp({self.n}{'' if self.sparse == 'auto' else f', sparse={self.sparse}'})"

    def prepare(self, step):
        sparse = self.sparse
        matrix = matrix_ops(step.prog)
        if matrix and sparse is True:
            raise NotImplementedError(
                f"rc.SnAp({self.n}, sparse=True): cell {step.name!r} has matrix states (ops {', '.join(matrix)}), "
                "which the sparse executor (algorithms/restricted.py) has no plan for yet; sparse=False or "
                "'auto' runs the dense executor with the same pattern")
        if matrix:
            sparse = False
        elif sparse == "auto":
            kept = kept_count(*pattern_classes(step, self.n))
            total = sum(int(np.prod(s)) for s in step.params.values()) * sum(step.states.values())
            sparse = kept * 4 < total
        return (_Sparse if sparse else _Dense)(step, self.n, self.max_bytes)


# ----------------------------------------------------------------------------- dense reference
class _Dense(_RtrlPrepared):
    def __init__(self, step, n, max_bytes):
        super().__init__(step, max_bytes)
        self.mask = pattern(step, n, self.ts)
        kept = sum(int(m.sum()) for m in self.mask.values())
        self.what = (f"rc.SnAp({n}) keeps {kept:,} of RTRL's {self.dirs.K * sum(step.states.values()):,} "
                     "entries per sample here, so it runs the dense executor, whose sensitivity ∂state/∂θ")

    def begin(self, params, states, learned, B, dtype):
        return {s: J * self.mask[s] for s, J in super().begin(params, states, learned, B, dtype).items()}

    def step(self, env, w, J):
        g, new = super().step(env, w, J)
        return g, {s: v * self.mask[s] for s, v in new.items()}


# ----------------------------------------------------------------------------- sparse
def colouring(support: np.ndarray) -> np.ndarray:
    """A colour per column of ``support`` (K, N) such that columns of one colour touch disjoint
    rows (greedy, in column order); a column touching nothing gets -1."""
    K, N = support.shape
    colour = np.full(K, -1)
    used = np.zeros((0, N), dtype=bool)
    for k in range(K):
        rows = support[k]
        if not rows.any():
            continue
        free = np.nonzero(~used[:, rows].any(axis=1))[0]
        c = int(free[0]) if len(free) else len(used)
        if c == len(used):
            used = np.vstack([used, np.zeros((1, N), dtype=bool)])
        used[c] |= rows
        colour[k] = c
    return colour


class _Sparse:
    def __init__(self, step, n, max_bytes):
        self.st, self.max_bytes, self.n = step, max_bytes, n
        ts = tangent_step(step)
        self.layout = Directions.dense(step)
        offs = np.cumsum([0] + list(step.states.values()))
        self.state_off = dict(zip(step.states, offs[:-1]))
        self.N = int(offs[-1])
        # the stored entries, by column: np.nonzero of the (P, N) pattern, without making it
        self.pattern = pattern_classes(step, n, ts)   # (per class, index): the native plan's too
        self.col, self.row = stored_entries(*self.pattern, step.states)
        self.nnz = len(self.col)
        self.ts, self.bwd = ts, backward_step(step)

    @cached_property
    def _tables(self):
        """What the NumPy step reads, made on its first step (the native executor, which has a
        plan of its own, begins here and never steps: an LSTM with 128 units took 5 s for them)."""
        step, ts = self.st, self.ts
        # pairs (e_out, e_in) of entries in the same column: J[u, k] += D[u, v]·J[v, k]
        e_out, e_in = group_pairs(self.col, self.col)
        # the entries D[u, v] those pairs read, computed alone (restricted.py)
        q, q_of_pair = np.unique(self.row[e_out] * self.N + self.row[e_in], return_inverse=True)
        jac = RestrictedJacobian(step, q // self.N, q % self.N)
        # the immediate term: parameter columns with disjoint units share one direction
        dirs, classes = entry_classes(step, ts)
        zero = {s: np.zeros((dirs.K, k), dtype=bool) for s, k in step.states.items()}
        imm = np.concatenate([reach(ts, dirs, zero)[s] for s in step.states], axis=1)[classes]
        colour = colouring(imm)
        imm_dirs = Directions(int(colour.max()) + 1 if self.nnz and colour.max() >= 0 else 0,
                              {p: colour[o:o + self.layout.sizes[p]].reshape(np.shape(self.layout.column[p]))
                               for p, o in self.layout.offsets.items()},
                              self.layout.offsets, self.layout.sizes)
        imm_colour = np.where(imm[self.col, self.row], colour[self.col], -1)
        return e_out, e_in, q_of_pair.reshape(-1), jac, tangent_step(step, states=False), imm_dirs, imm_colour

    def begin(self, params, states, learned, B, dtype):
        check_memory("SnAp's sensitivity entries (batch × stored entries)", self.st.name,
                     (B, self.nnz), np.dtype(dtype).itemsize, self.max_bytes)
        J = np.zeros((B, self.nnz), dtype=dtype)
        for s in learned:  # ∂h[0]/∂h₀ = I, on the diagonal the pattern holds
            col = self.layout.column[self.st.state_init[s]]
            hit = np.isin(self.col, col) & (self.row - self.state_off[s] == self.col - col[0])
            J[:, hit] = 1
        return J

    def step(self, env, w, J):
        B, dt = len(w), J.dtype
        e_out, e_in, q_of_pair, jac, imm_ts, imm_dirs, imm_colour = self._tables
        direct, dl = self._loss_grads(env, w, B, dt)
        g = direct + np.bincount(self.col, weights=(dl[:, self.row] * J).sum(axis=0), minlength=self.layout.K)
        prod = jac.evaluate(env, B, dt)[:, q_of_pair] * J[:, e_in]
        flat = (np.arange(B)[:, None] * self.nnz + e_out[None, :]).ravel()
        new = np.bincount(flat, weights=prod.ravel(), minlength=B * self.nnz).reshape(B, self.nnz).astype(dt)
        if imm_dirs.K:
            tan = run_tangents(imm_ts.prog, env, {}, imm_dirs, B, dt)
            imm = np.zeros((B, imm_dirs.K, self.N), dtype=dt)
            for s, n in self.st.states.items():
                k = imm_ts.out[s]
                if k is not None:
                    o = self.state_off[s]
                    imm[:, :, o:o + n] = tan[k]
            has = imm_colour >= 0
            new[:, has] += imm[:, imm_colour[has], self.row[has]]
        return g, new

    def _loss_grads(self, env, w, B, dt):
        """Σ_b w[b]·∂ℓ[t]/∂θ|immediate (flat) and w[b]·∂ℓ[t]/∂h[t-1] (B, n_s): the backward
        step with δ⁺h[t] = 0."""
        from ..backends.numpy import accumulate_grads
        bwd, e = self.bwd, dict(env)
        for s, n in self.st.states.items():
            e[bwd.carry_in[s]] = np.zeros((B, n), dtype=dt)
        e[bwd.weight] = w[:, None]
        run_program(bwd.prog, e, B, dt)
        grads = {p: np.zeros(s if isinstance(s, tuple) else (s,), dtype=dt) for p, s in self.st.params.items()}
        accumulate_grads(grads, bwd.grads, e)
        dl = np.zeros((B, self.N), dtype=dt)
        for s, n in self.st.states.items():
            if bwd.carry_out[s] is not None:
                dl[:, self.state_off[s]:self.state_off[s] + n] = e[bwd.carry_out[s]]
        return np.concatenate([grads[p].ravel() for p in self.st.params] or [np.zeros(0, dt)]), dl  # none: P = 0
