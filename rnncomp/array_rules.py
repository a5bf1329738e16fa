"""VJP rules of the ops over arrays, entries of :data:`rnncomp.autodiff.RULES` (one table).

Derived weights (:mod:`rnncomp.weights`, shared (m, n) arrays at time None): ``transpose``,
``matmul``, ``sumto``.  Matrix states (:mod:`rnncomp.matrix_dsl`, per-sample (m, n) matrices
kept flattened row-major, m·n units): ``outer``, ``smatvec``, ``mbcast``, ``mreduce``.  Each rule
reads like the calculus in its comment and emits the ops of the same family.
"""
from __future__ import annotations

from .ir import Node, display, placeholder


def _vjp_transpose(ctx, key, node, g, active):
    n = ctx.fwd.node(node.args[0]).size
    ctx.contribute(node.args[0], placeholder(0), (ctx.emit(f"δ{display(key[0])}ᵀ", None, Node("transpose", (g,), n)),), n)


def _vjp_matmul(ctx, key, node, g, active):  # C = A·B: δA = δC·Bᵀ, δB = Aᵀ·δC
    for i, (a, o) in enumerate(zip(node.args, node.args[::-1])):
        if a in active:
            on = ctx.fwd.node(o)
            if on.op == "transpose":  # (Xᵀ)ᵀ is X: no second transpose (it printed as δD·Xᵀᵀ)
                t = on.args[0]
            else:
                t = ctx.emit(f"{display(o[0])}ᵀ", None, Node("transpose", (o,), on.size[::-1]))
            d = ctx.emit(f"δ{display(a[0])}·part", None, Node("matmul", (g, t) if i == 0 else (t, g), ctx.fwd.node(a).size))
            ctx.contribute(a, placeholder(0), (d,), ctx.fwd.node(a).size)


def _vjp_sumto(ctx, key, node, g, active):  # a sum over the axes where the result has size 1: δ broadcast back
    ctx.contribute(node.args[0], placeholder(0), (g,), ctx.fwd.node(node.args[0]).size)



def _vjp_outer(ctx, key, node, g, active):  # O = a bᵀ: δa = δO·b, δb = δOᵀ·a
    for x, other, tr in zip(node.args, node.args[::-1], (False, True)):
        if x in active:
            n = ctx.fwd.node(x).size
            d = ctx.emit(f"δ{display(x[0])}·part", key[1], Node("smatvec", (g, other), n, {"shape": node.attrs["shape"], "transposed": tr}))
            ctx.contribute(x, placeholder(0), (d,), n)


def _vjp_smatvec(ctx, key, node, g, active):  # y = X v: δX = δy vᵀ, δv = Xᵀ δy; y = Xᵀ u: δX = u δyᵀ, δu = X δy
    (X, v), shape, tr = node.args, node.attrs["shape"], node.attrs["transposed"]
    if X in active:
        d = ctx.emit(f"δ{display(X[0])}·part", key[1], Node("outer", (v, g) if tr else (g, v), shape[0] * shape[1], {"shape": shape}))
        ctx.contribute(X, placeholder(0), (d,), shape[0] * shape[1])
    if v in active:
        n = ctx.fwd.node(v).size
        d = ctx.emit(f"δ{display(v[0])}·part", key[1], Node("smatvec", (X, g), n, {"shape": shape, "transposed": not tr}))
        ctx.contribute(v, placeholder(0), (d,), n)


def _vjp_mbcast(ctx, key, node, g, active):  # X = v along rows (axis 1) or columns: δv = Σ of δX over that axis
    n = ctx.fwd.node(node.args[0]).size
    d = ctx.emit(f"Σδ{display(key[0])}", key[1], Node("mreduce", (g,), n, dict(node.attrs)))
    ctx.contribute(node.args[0], placeholder(0), (d,), n)


def _vjp_mreduce(ctx, key, node, g, active):  # r = Σ of X over rows or columns: δX = δr broadcast back
    n = ctx.fwd.node(node.args[0]).size
    d = ctx.emit(f"{display(key[0])}·δ", key[1], Node("mbcast", (g,), n, dict(node.attrs)))
    ctx.contribute(node.args[0], placeholder(0), (d,), n)


ARRAY_RULES = {
    "transpose": _vjp_transpose,
    "matmul": _vjp_matmul,
    "sumto": _vjp_sumto,
    "outer": _vjp_outer,
    "smatvec": _vjp_smatvec,
    "mbcast": _vjp_mbcast,
    "mreduce": _vjp_mreduce,
}
