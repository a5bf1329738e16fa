"""The closed set of IR operations and their properties.

Element-wise math of any kind is the single op ``ew`` (a sympy template);
everything structural has its own op.  Backends and passes look properties
up here; derivative rules live in :mod:`rnncomp.autodiff` (one table keyed by
op), forward rules in each backend's printer.

    >>> sorted(OPS)[:4]
    ['concat', 'ew', 'input', 'lse']
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OpInfo:
    name: str
    doc: str
    leaf: bool = False
    elementwise: bool = False
    linear: bool = False
    reduction: bool = False


OPS = {o.name: o for o in [
    OpInfo("input", "a per-step input x[t] (B, n)", leaf=True),
    OpInfo("target", "a per-step target (B, n)", leaf=True),
    OpInfo("param", "a shared parameter: (n,) vector or (m, n) matrix", leaf=True),
    OpInfo("state", "a state's previous value h[t-1] (B, n)", leaf=True),
    OpInfo("seed", "a value fed to a backward program: an adjoint arriving from t+1, a cost weight",
           leaf=True),
    OpInfo("ew", "element-wise sympy template over the arguments (size-1 arguments broadcast)",
           elementwise=True),
    OpInfo("matvec", "Σ c·P v or c·Pᵀ v over the terms (c, P, transposed)", linear=True),
    OpInfo("slice", "v[lo:lo+size]", linear=True),
    OpInfo("pad", "zeros of size `size` with v placed at lo (the adjoint of slice)", linear=True),
    OpInfo("concat", "[a; b; ...]", linear=True),
    OpInfo("sum", "Σ over units: (B, n) → (B, 1)", linear=True, reduction=True),
    OpInfo("lse", "stable log Σ exp over units: (B, n) → (B, 1)", reduction=True),
    # derived weights (rnncomp.weights): shared (m, n) arrays computed once per call
    OpInfo("wew", "element-wise sympy template over weight arrays, broadcasting (m, 1), (1, n), (1, 1)",
           elementwise=True),
    OpInfo("transpose", "Aᵀ of a weight array", linear=True),
    OpInfo("matmul", "A·B of two weight arrays"),
    # matrix states (rnncomp.matrix_dsl): per-sample (m, n) matrices flattened row-major (attrs shape)
    OpInfo("outer", "a bᵀ per sample: (B, m), (B, n) → (B, m·n)"),
    OpInfo("smatvec", "X v per sample (Xᵀ v with attrs transposed): (B, m·n), (B, n) → (B, m)"),
    OpInfo("mbcast", "a vector repeated along each row (attrs axis 1: (B, m) → (B, m·n)) or column (axis 0)",
           linear=True),
    OpInfo("mreduce", "Σ over each row (axis 1: (B, m·n) → (B, m)) or each column (axis 0: → (B, n))",
           linear=True, reduction=True),
    OpInfo("sumto", "Σ of an (m, n) array over the axes where `size` is 1: row/column sums, and the "
           "adjoint of broadcasting", linear=True, reduction=True),
]}


def info(op: str) -> OpInfo:
    try:
        return OPS[op]
    except KeyError:
        raise KeyError(f"unknown IR op {op!r}; known: {', '.join(sorted(OPS))}") from None
