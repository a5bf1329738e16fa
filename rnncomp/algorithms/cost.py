"""What each gradient algorithm costs for one cell: FLOPs per sample per step, memory, bias.

Counted from the derived programs with the rules of :mod:`rnncomp.inspect.cost`:

* BPTT: forward + backward step; memory the activations stored over T steps;
* RTRL: forward + the tangent step over P directions (``U·∂h`` is 2·m·n·P, ``∂U·h`` writes m·n
  entries); memory n_s·P per sample, whatever T;
* SnAp-n: what the native sparse executor runs, the chain rule folded per unit
  (:mod:`.sparse_fold`): forward + a backward step (∂ℓ/∂θ, ∂ℓ/∂s[t-1]) + the entries of the
  state Jacobian the pattern links (2 per entry and term of :mod:`.restricted`'s plans) + the
  immediate term's coefficient per unit (the tangent program over one direction per
  parameter: an upper bound) + per stored entry, 2 per stored entry of its column (D·J), 2
  where the immediate term reaches it (coefficient · the weight's input) and 2 for the gather
  δs·J; memory nnz(M_n).  (The NumPy executor runs the immediate term over as many directions
  as columns share a unit: more.)  A cell with matrix states has no sparse plan: ``rc.SnAp``
  runs the dense executor, RTRL + P·n_s for the mask, RTRL's memory;
* UORO: forward + the tangent step over 1 direction + two backward steps + 6(n_s + P);
  memory n_s + P per sample.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..forward_mode import is_tangent_param, tangent_step
from ..ops import matrix_ops
from ..inspect.cost import FLOPS, _bytes, _si, cost, template_ops
from ..show import TextShown
from .restricted import RestrictedJacobian
from .pattern import entry_classes, pattern_classes, reach

PATTERN_LIMIT = 20_000_000  # (classes of entries)·n_s up to which the cost table derives SnAp's patterns


def _tangent_matvec(prog, node, K):
    """A product's tangent: a parameter's tangent term is one pass, a state's runs over K directions."""
    n_in = prog.node(node.args[0]).size
    return sum(node.size * n_in * (1 if is_tangent_param(name) else 2 * K) for name, _, _ in node.attrs["terms"])


def _per_direction(prog, node, K):
    """An op whose tangent is the op itself on one tangent argument: the forward's FLOPs, K times."""
    return FLOPS[node.op](prog, node)[1] * K


TANGENT_FLOPS = {  # op -> (prog, node, K) -> FLOPs per sample over K directions; other ops move data
    "matvec": _tangent_matvec,
    "ew": lambda prog, node, K: template_ops(node.attrs["expr"]) * node.size * K,
    "sum": lambda prog, node, K: prog.node(node.args[0]).size * K,
    # matrix states: ∂a bᵀ, ∂X v, X ∂v, Σ rows of ∂X (mbcast moves data)
    **{op: _per_direction for op in ("outer", "smatvec", "mreduce")},
}


def tangent_flops(ts, K: int) -> int:
    """FLOPs per sample of a tangent program run over K directions."""
    total = 0
    for node in ts.prog.nodes.values():
        rule = TANGENT_FLOPS.get(node.op)
        if rule is not None:
            total += rule(ts.prog, node, K)
    return total


@dataclass(repr=False)
class AlgorithmCosts(TextShown):
    cell: str
    T: int
    B: int
    dtype: str
    rows: list = field(default_factory=list)  # dicts: algorithm, flops (per sample per step), memory (bytes), exact

    def as_dict(self) -> dict:
        return {"cell": self.cell, "T": self.T, "B": self.B, "dtype": self.dtype, "algorithms": list(self.rows)}

    def table(self) -> str:
        out = [f"gradient algorithms for {self.cell!r}: T = {self.T}, B = {self.B}, {self.dtype}",
               f"  {'algorithm':<10}{'FLOPs/sample/step':>20}{'sequence FLOPs':>16}{'memory':>12}  gradient"]
        for r in self.rows:
            if r["flops"] is None:
                out.append(f"  {r['algorithm']:<10}{'-':>20}{'-':>16}{'-':>12}  {r['exact']}")
                continue
            out.append(f"  {r['algorithm']:<10}{r['flops']:>20,}{_si(r['flops'] * self.T * self.B, 'FLOP'):>16}"
                       f"{_bytes(r['memory']):>12}  {r['exact']}")
        return "\n".join(out)

    def _text(self) -> str:
        return self.table()

    def __str__(self) -> str:
        return self.table()


def algorithm_costs(cell, T: int = 1000, B: int = 32, dtype="float32", snap=(1, 2),
                    pattern_limit: int = PATTERN_LIMIT) -> AlgorithmCosts:
    """FLOPs and memory of BPTT, RTRL, SnAp-n (each n in ``snap``) and UORO for ``cell``
    (SnAp's rows only while K·n_s ≤ ``pattern_limit``, K the classes of entries whose seeds
    reach the same units: :func:`.pattern.entry_classes`)."""
    c = cost(cell, T, B, dtype)
    st, item = cell.step, c.itemsize
    P, N = c.n_params, sum(st.states.values())
    fwd, bwd = c.forward_flops, c.backward_flops
    out = AlgorithmCosts(st.name, c.T, c.B, c.dtype)
    out.rows.append({"algorithm": "BPTT", "flops": fwd + bwd, "memory": c.memory["activations"],
                     "exact": "exact (memory grows with T)"})
    full = tangent_step(st)
    rtrl = {"algorithm": "RTRL", "flops": fwd + tangent_flops(full, P), "memory": B * P * N * item,
            "exact": "exact, online"}
    out.rows.append(rtrl)
    imm_ts = tangent_step(st, states=False)
    if snap:
        classes = dirs, index = entry_classes(st, full)   # the patterns per class of entries (pattern.py)
        w = np.bincount(index, minlength=dirs.K).astype(np.int64)   # entries per class
    if snap and dirs.K * N > pattern_limit:  # P·n_s booleans per tangent node, K of them per class
        out.rows += [{"algorithm": f"SnAp-{n}", "flops": None, "memory": None,
                      "exact": f"not counted: its pattern has {dirs.K:,} classes of entries × n_s = {N:,}"}
                     for n in snap]
        snap = ()
    elif snap:
        flat = lambda m: np.concatenate([m[s] for s in st.states], axis=1)  # noqa: E731  (K, N)
        reachable = int(w @ flat(pattern_classes(st, None, full, classes)[0]).sum(axis=1))
        # the entries the immediate term reaches, from J[t-1] = 0
        imm = flat(reach(full, dirs, {s: np.zeros((dirs.K, k), dtype=bool) for s, k in st.states.items()}))
    for n in snap:
        m = flat(pattern_classes(st, n, full, classes)[0])          # (K, N), class k standing for w[k] entries
        per_col = m.sum(axis=1).astype(np.int64)
        exact = "exact (RTRL's pattern)" if int(w @ per_col) == reachable else "biased, online"
        if matrix_ops(st.prog):  # rc.SnAp runs the dense executor: RTRL's step and J, then the mask
            out.rows.append({"algorithm": f"SnAp-{n}", "flops": rtrl["flops"] + P * N, "memory": rtrl["memory"],
                             "exact": f"{exact}; dense executor: matrix states"})
            continue
        mf = m.astype(np.float32)
        linked = np.nonzero((mf.T @ (mf * w[:, None].astype(np.float32))) > 0)  # D[u, v] SnAp reads
        jac = RestrictedJacobian(st, *linked).flops()
        kept = int(w @ per_col)
        entries = 2 * int(w @ per_col ** 2) + 2 * int(w @ (m & imm).sum(axis=1)) + 2 * kept
        flops = fwd + bwd + jac + tangent_flops(imm_ts, len(st.params)) + entries
        out.rows.append({"algorithm": f"SnAp-{n}", "flops": flops, "memory": B * kept * item, "exact": exact})
    out.rows.append({"algorithm": "UORO", "flops": fwd + tangent_flops(tangent_step(st, params=()), 1) + 2 * bwd
                     + 6 * (N + P), "memory": B * (N + P) * item, "exact": "unbiased, noisy, online"})
    return out

