"""The closed set of IR operations and their properties.

Element-wise math of any kind is the single op ``ew`` (a sympy template);
everything structural has its own op.  The package asks its properties here (a leaf? a
name of memory?), and :func:`rnncomp.ir.verify` rejects a node whose op is not listed or
has the wrong number of arguments.  The tables keyed by op read this set: derivative rules
(:data:`rnncomp.autodiff.RULES`), tangent rules (:data:`rnncomp.forward_mode.JVP_RULES`),
printing (:data:`rnncomp.equations.EXPRS`), costs (:data:`rnncomp.inspect.cost.FLOPS`) and
each backend's printer; ``tests/test_ops.py`` holds each table to the ops it must cover.

    >>> sorted(OPS)[:4]
    ['concat', 'ew', 'input', 'lse']
    >>> OPS["matvec"].linear, OPS["seed"].leaf, sorted(MEMORY)
    (True, True, ['stackv', 'view'])
    >>> info("conv")
    Traceback (most recent call last):
    ...
    rnncomp.errors.IRError: unknown IR op 'conv'; known: concat, ew, input, ...
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import IRError

ANY = None  # the arity of an op over any number of arguments


@dataclass(frozen=True)
class OpInfo:
    name: str
    doc: str
    leaf: bool = False
    elementwise: bool = False
    linear: bool = False
    reduction: bool = False
    memory: bool = False  # a name of memory (pass "stack"): computed by its operands, no code of its own
    matrix: bool = False  # an op of matrix states (per-sample m·n units): some executors have no plan for it
    arity: int | None = 1  # arguments a node of this op reads (ANY: any number)


OPS = {o.name: o for o in [
    OpInfo("input", "a per-step input x[t] (B, n)", leaf=True, arity=0),
    OpInfo("target", "a per-step target (B, n)", leaf=True, arity=0),
    OpInfo("param", "a shared parameter: (n,) vector or (m, n) matrix", leaf=True, arity=0),
    OpInfo("state", "a state's previous value h[t-1] (B, n)", leaf=True, arity=0),
    OpInfo("seed", "a value fed to a backward program: an adjoint arriving from t+1, a cost weight",
           leaf=True, arity=0),
    OpInfo("ew", "element-wise sympy template over the arguments (size-1 arguments broadcast)",
           elementwise=True, arity=ANY),
    OpInfo("matvec", "Σ c·P v or c·Pᵀ v over the terms (c, P, transposed)", linear=True),
    OpInfo("slice", "v[lo:lo+size]", linear=True),
    OpInfo("pad", "zeros of size `size` with v placed at lo (the adjoint of slice)", linear=True),
    OpInfo("concat", "[a; b; ...]", linear=True, arity=ANY),
    OpInfo("sum", "Σ over units: (B, n) → (B, 1)", linear=True, reduction=True),
    OpInfo("lse", "stable log Σ exp over units: (B, n) → (B, 1)", reduction=True),
    # derived weights (rnncomp.weights): shared (m, n) arrays computed once per call
    OpInfo("wew", "element-wise sympy template over weight arrays, broadcasting (m, 1), (1, n), (1, 1)",
           elementwise=True, arity=ANY),
    OpInfo("transpose", "Aᵀ of a weight array", linear=True),
    OpInfo("matmul", "A·B of two weight arrays", arity=2),
    # matrix states (rnncomp.matrix_dsl): per-sample (m, n) matrices flattened row-major (attrs shape)
    OpInfo("outer", "a bᵀ per sample: (B, m), (B, n) → (B, m·n)", matrix=True, arity=2),
    OpInfo("smatvec", "X v per sample (Xᵀ v with attrs transposed): (B, m·n), (B, n) → (B, m)",
           matrix=True, arity=2),
    OpInfo("mbcast", "a vector repeated along each row (attrs axis 1: (B, m) → (B, m·n)) or column (axis 0)",
           linear=True, matrix=True),
    OpInfo("mreduce", "Σ over each row (axis 1: (B, m·n) → (B, m)) or each column (axis 0: → (B, n))",
           linear=True, reduction=True, matrix=True),
    OpInfo("sumto", "Σ of an (m, n) array over the axes where `size` is 1: row/column sums, and the "
           "adjoint of broadcasting", linear=True, reduction=True),
    # pass "stack" (rnncomp.passes.stacking): names of memory inside a stacked whole
    OpInfo("view", "a member of a stacked value: columns lo:lo+size of its whole", memory=True),
    OpInfo("stackv", "the whole of a stacked value: its members side by side", memory=True, arity=ANY),
]}

LEAF = frozenset(o for o, i in OPS.items() if i.leaf)
ELEMENTWISE = frozenset(o for o, i in OPS.items() if i.elementwise)
MEMORY = frozenset(o for o, i in OPS.items() if i.memory)
MATRIX = frozenset(o for o, i in OPS.items() if i.matrix)


def matrix_ops(prog) -> list:
    """The matrix-state ops (:data:`MATRIX`) a program's nodes use, sorted (empty: none)."""
    return sorted({n.op for n in prog.nodes.values()} & MATRIX)



def info(op: str) -> OpInfo:
    """The properties of ``op``, or an :class:`~rnncomp.errors.IRError` naming it."""
    try:
        return OPS[op]
    except KeyError:
        raise IRError(f"unknown IR op {op!r}; known: {', '.join(sorted(OPS))}") from None
