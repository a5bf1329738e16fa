"""SnAp-n (Menick et al. 2021): RTRL keeping only the sensitivities n steps of the cell reach.

The pattern comes from the symbolic step, not from the user: :func:`pattern` pushes a
boolean "may be nonzero" through the tangent program (one rule per tangent op, the
structure of :mod:`rnncomp.forward_mode`'s JVP rules), so ``M[u, k]`` says whether
parameter entry k can reach state unit u within n steps from J[0] = 0.  SnAp keeps

    J[t] = M ⊙ (∂h[t]/∂h[t-1] · J[t-1] + ∂h[t]/∂θ|immediate)

Two executors of the same recursion:

* dense (``sparse=False``): the RTRL step on every column, then the mask (the reference);
* sparse: only the entries of M stored.  Per step the state Jacobian D[t] (n_s directions
  of the tangent step), the immediate term with parameter columns that touch disjoint units
  sharing one direction (a greedy colouring), and Σ_v D[u, v]·J[v, k] over the pairs (u, v)
  of the same column k only (a gather and one bincount).

With an element-wise (diagonal) recurrence SnAp-1 *is* RTRL: nothing outside M1 is ever
reached.  Otherwise it is biased and cheaper: memory nnz(M) instead of n_s·P.
"""
from __future__ import annotations

import numpy as np

from ..autodiff import backward_step
from ..backends.numpy import run_program
from ..forward_mode import is_tangent_param, tangent_of, tangent_step
from .base import Algorithm, check_memory
from .rtrl import DEFAULT_MAX_BYTES
from .rtrl import _Prepared as _RtrlPrepared
from .tangents import Directions, run_tangents


class SnAp(Algorithm):
    """``rc.SnAp(n=1, sparse="auto")``: SnAp-n; ``sparse=True`` stores only the kept entries,
    ``False`` runs the dense reference; "auto" is sparse while under a quarter of RTRL's entries
    are kept (past that, the dense GEMMs beat the gathers)."""

    def __init__(self, n: int = 1, sparse="auto", max_bytes: int | None = DEFAULT_MAX_BYTES):
        if not (isinstance(n, int) and n >= 1):
            raise ValueError(f"SnAp(n={n!r}): n must be a positive integer (SnAp-1, SnAp-2, ...)")
        if sparse not in (True, False, "auto"):
            raise ValueError(f"SnAp(sparse={sparse!r}): True, False or 'auto'")
        self.n, self.sparse, self.max_bytes = n, sparse, max_bytes

    @property
    def name(self) -> str:
        return f"SnAp-{self.n}"

    def __repr__(self) -> str:
        return f"rc.SnAp({self.n}{'' if self.sparse == 'auto' else f', sparse={self.sparse}'})"

    def prepare(self, step):
        sparse = self.sparse
        if sparse == "auto":
            kept = sum(int(v.sum()) for v in pattern(step, self.n).values())
            total = sum(int(np.prod(s)) for s in step.params.values()) * sum(step.states.values())
            sparse = kept * 4 < total
        return (_Sparse if sparse else _Dense)(step, self.n, self.max_bytes)


# ----------------------------------------------------------------------------- the pattern
def _struct_matvec(node, vals, dirs, tprog):
    out = np.zeros((dirs.K, node.size), dtype=bool)
    for name, tr, _ in node.attrs["terms"]:
        if is_tangent_param(name):
            col = dirs.column.get(tangent_of(name))
            if col is not None:
                rows, cols = np.nonzero(col >= 0)
                out[col[rows, cols], cols if tr else rows] = True
        elif node.args[0] in tprog.nodes:
            out |= vals[0].any(axis=1, keepdims=True)  # a dense matrix: every unit
    return out


def _struct_concat(node, vals, dirs, tprog):
    return np.concatenate([np.broadcast_to(v, (dirs.K, v.shape[1])) for v in vals], axis=1)


def _struct_pad(node, vals, dirs, tprog):
    out = np.zeros((dirs.K, node.size), dtype=bool)
    out[:, node.attrs["lo"]:node.attrs["lo"] + vals[0].shape[1]] = vals[0]
    return out


STRUCTURE = {  # tangent op -> the pattern of its value from its tangent arguments' patterns
    "ew": lambda node, vals, dirs, tprog: np.logical_or.reduce(
        [np.broadcast_to(v, (dirs.K, node.size)) for v in vals] or [np.zeros((dirs.K, node.size), bool)]),
    "matvec": _struct_matvec,
    "slice": lambda node, vals, dirs, tprog: vals[0][:, node.attrs["lo"]:node.attrs["lo"] + node.size],
    "pad": _struct_pad,
    "concat": _struct_concat,
    "sum": lambda node, vals, dirs, tprog: vals[0].any(axis=1, keepdims=True),
}


def _reach(ts, dirs, before: dict) -> dict:
    """{state: (K, n) pattern of ∂h[t]} from the patterns ``before`` of ∂h[t-1]."""
    pat = {}
    for key, node in ts.prog.nodes.items():
        if node.op == "seed":
            s = next((s for s, k in ts.state_seeds.items() if k == key), None)
            if s is not None:
                pat[key] = before[s]
            else:
                col = dirs.column.get(tangent_of(key[0]))
                v = np.zeros((dirs.K, node.size), dtype=bool)
                if col is not None:
                    v[col, np.arange(node.size)] = True
                pat[key] = v
            continue
        vals = [pat[a] for a in node.args if a in ts.prog.nodes]
        pat[key] = STRUCTURE[node.op](node, vals, dirs, ts.prog)
    return {s: (np.zeros_like(before[s]) if k is None else np.broadcast_to(pat[k], before[s].shape).copy())
            for s, k in ts.out.items()}


def pattern(step, n: int | None = 1, ts=None) -> dict:
    """SnAp-n's pattern ``{state: (P, n_state) bool}``: which parameter entries (rows, in the
    flat parameter order) may reach which units of each state within n steps from J[0] = 0
    (a learned initial state's own entries start on the diagonal).  ``n=None``: in any number
    of steps (the entries of RTRL's sensitivity that can ever be nonzero)."""
    ts = ts or tangent_step(step)
    dirs = Directions.dense(step)
    m = {s: np.zeros((dirs.K, k), dtype=bool) for s, k in step.states.items()}
    for s, p in step.state_init.items():
        if p is not None:
            m[s][dirs.column[p], np.arange(step.states[s])] = True
    i = 0
    while n is None or i < n:
        new = {s: m[s] | v for s, v in _reach(ts, dirs, m).items()}
        if n is None and all((new[s] == m[s]).all() for s in m):
            break
        m, i = new, i + 1
    return m


# ----------------------------------------------------------------------------- dense reference
class _Dense(_RtrlPrepared):
    def __init__(self, step, n, max_bytes):
        super().__init__(step, max_bytes)
        self.mask = pattern(step, n, self.ts)

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
        self.st, self.max_bytes = step, max_bytes
        ts = tangent_step(step)
        self.layout = Directions.dense(step)
        mask = pattern(step, n, ts)
        offs = np.cumsum([0] + list(step.states.values()))
        self.state_off = dict(zip(step.states, offs[:-1]))
        self.N = int(offs[-1])
        full = np.concatenate([mask[s] for s in step.states], axis=1)  # (P, N)
        self.col, self.row = np.nonzero(full)                          # the stored entries, by column
        self.nnz = len(self.col)
        # pairs (e_out, e_in) of entries in the same column: J[u, k] += D[u, v]·J[v, k]
        starts = np.searchsorted(self.col, np.arange(self.layout.K + 1))
        e_out, e_in = [], []
        for k in range(self.layout.K):
            idx = np.arange(starts[k], starts[k + 1])
            if len(idx):
                e_out.append(np.repeat(idx, len(idx)))
                e_in.append(np.tile(idx, len(idx)))
        self.e_out = np.concatenate(e_out) if e_out else np.zeros(0, int)
        self.e_in = np.concatenate(e_in) if e_in else np.zeros(0, int)
        # the immediate term: parameter columns with disjoint units share one direction
        zero = {s: np.zeros((self.layout.K, k), dtype=bool) for s, k in step.states.items()}
        imm = np.concatenate([_reach(ts, self.layout, zero)[s] for s in step.states], axis=1)
        colour = colouring(imm)
        self.imm_ts = tangent_step(step, states=False)
        self.imm_dirs = Directions(int(colour.max()) + 1 if self.nnz and colour.max() >= 0 else 0,
                                   {p: colour[o:o + self.layout.sizes[p]].reshape(np.shape(self.layout.column[p]))
                                    for p, o in self.layout.offsets.items()},
                                   self.layout.offsets, self.layout.sizes)
        self.imm_colour = np.where(imm[self.col, self.row], colour[self.col], -1)
        self.jac_ts = tangent_step(step, params=())
        self.bwd = backward_step(step)

    def begin(self, params, states, learned, B, dtype):
        check_memory("SnAp's sensitivity entries (batch × stored entries)", self.st.name,
                     (B, self.nnz), np.dtype(dtype).itemsize, self.max_bytes)
        J = np.zeros((B, self.nnz), dtype=dtype)
        for s in learned:  # ∂h[0]/∂h₀ = I, on the diagonal the pattern holds
            col = self.layout.column[self.st.state_init[s]]
            hit = np.isin(self.col, col) & (self.row - self.state_off[s] == self.col - col[0])
            J[:, hit] = 1
        return J

    def _jacobian(self, env, B, dtype):
        """D[b, u, v] = ∂h[t]_u/∂h[t-1]_v over all state units, and ∂ℓ[t]/∂h[t-1] (B, N)."""
        ts, N = self.jac_ts, self.N
        seeds = {}
        for s, n in self.st.states.items():
            e = np.zeros((1, N, n), dtype=dtype)
            e[0, self.state_off[s] + np.arange(n), np.arange(n)] = 1
            seeds[ts.state_seeds[s]] = e
        tan = run_tangents(ts.prog, env, seeds, Directions(N, {}, {}, {}), B, dtype)
        D = np.zeros((B, N, N), dtype=dtype)
        for s, n in self.st.states.items():
            if ts.out[s] is not None:
                o = self.state_off[s]
                D[:, o:o + n, :] = np.broadcast_to(tan[ts.out[s]], (B, N, n)).transpose(0, 2, 1)
        dl = np.zeros((B, N), dtype=dtype) if ts.loss is None else np.broadcast_to(tan[ts.loss][..., 0], (B, N))
        return D, dl

    def step(self, env, w, J):
        B, dt = len(w), J.dtype
        D, dl = self._jacobian(env, B, dt)
        g = np.zeros(self.layout.K, dtype=dt)
        g += np.bincount(self.col, weights=(w[:, None] * dl[:, self.row] * J).sum(axis=0), minlength=self.layout.K)
        g += self._direct_loss_grad(env, w, B, dt)
        prod = D[:, self.row[self.e_out], self.row[self.e_in]] * J[:, self.e_in]
        flat = (np.arange(B)[:, None] * self.nnz + self.e_out[None, :]).ravel()
        new = np.bincount(flat, weights=prod.ravel(), minlength=B * self.nnz).reshape(B, self.nnz).astype(dt)
        if self.imm_dirs.K:
            tan = run_tangents(self.imm_ts.prog, env, {}, self.imm_dirs, B, dt)
            imm = np.zeros((B, self.imm_dirs.K, self.N), dtype=dt)
            for s, n in self.st.states.items():
                k = self.imm_ts.out[s]
                if k is not None:
                    o = self.state_off[s]
                    imm[:, :, o:o + n] = tan[k]
            has = self.imm_colour >= 0
            new[:, has] += imm[:, self.imm_colour[has], self.row[has]]
        return g, new

    def _direct_loss_grad(self, env, w, B, dt):
        """Σ_b w[b]·∂ℓ[t]/∂θ|immediate: the backward step with δ⁺h[t] = 0."""
        from ..backends.numpy import accumulate_grads
        bwd, e = self.bwd, dict(env)
        for s, n in self.st.states.items():
            e[bwd.carry_in[s]] = np.zeros((B, n), dtype=dt)
        e[bwd.weight] = w[:, None]
        run_program(bwd.prog, e, B, dt)
        grads = {p: np.zeros(s if isinstance(s, tuple) else (s,), dtype=dt) for p, s in self.st.params.items()}
        accumulate_grads(grads, bwd.grads, e)
        return np.concatenate([grads[p].ravel() for p in self.st.params])
