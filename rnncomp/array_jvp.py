"""JVP rules of the ops over arrays, entries of :data:`rnncomp.forward_mode.JVP_RULES` (one
table), next to their VJP rules in :mod:`rnncomp.array_rules`.

Every one of these ops is linear in each argument, so each rule is the product rule:
``∂(A·B) = ∂A·B + A·∂B``, ``∂(a bᵀ) = ∂a bᵀ + a ∂bᵀ``, ``∂(X v) = ∂X v + X ∂v``; a linear op
of one argument (transpose, sumto, mbcast, mreduce) applies itself to the tangent. ``wew`` (an
element-wise expression over weights that broadcast) is differentiated like ``ew``.
"""
from __future__ import annotations

import sympy as sp

from .derivatives import partials
from .errors import DifferentiationError
from .ir import Node, display, key_str, placeholder


def _sum(ctx, key, node, parts):
    """The tangent of ``key`` as the sum of ``parts`` (a ``wew`` for the weights at time None)."""
    if not parts or len(parts) == 1 or key[1] is not None:
        return ctx.add(key, node, parts)
    return ctx.emit(f"∂{display(key[0])}·sum", None,
                    Node("wew", tuple(parts), node.size, {"expr": sp.Add(*map(placeholder, range(len(parts))))}))


def _linear(ctx, key, node):
    """One argument, linear in it: the same op on the tangent."""
    (a,) = node.args
    if ctx.tan(a) is None:
        return None
    return ctx.emit(f"∂{display(key[0])}", key[1], Node(node.op, (ctx.tan(a),), node.size, dict(node.attrs)))


def _bilinear(ctx, key, node):
    """Two arguments, linear in each: op(∂a, b) + op(a, ∂b)."""
    a, b = node.args
    parts = []
    if ctx.tan(a) is not None:
        parts.append(ctx.emit(f"∂{display(a[0])}·{display(b[0])}", key[1],
                              Node(node.op, (ctx.tan(a), b), node.size, dict(node.attrs))))
    if ctx.tan(b) is not None:
        parts.append(ctx.emit(f"{display(a[0])}·∂{display(b[0])}", key[1],
                              Node(node.op, (a, ctx.tan(b)), node.size, dict(node.attrs))))
    return _sum(ctx, key, node, parts)


def _jvp_wew(ctx, key, node):
    tans = [ctx.tan(a) for a in node.args]
    if not any(t is not None for t in tans):
        return None
    ds = partials(node.attrs["expr"], len(node.args))
    args, terms = list(node.args) + [key], []
    for i, (a, ta) in enumerate(zip(node.args, tans)):
        if ta is None:
            continue
        if ds[i] is None:
            raise DifferentiationError(f"{ctx.where}: {key_str(key)} = {node.attrs['expr']} has no derivative "
                                       f"in its argument {key_str(a)}, but a tangent flows through it")
        if ds[i] != 0:
            args.append(ta)
            terms.append(ds[i] * placeholder(len(args) - 1))
    if not terms:
        return None
    return ctx.emit(f"∂{display(key[0])}", key[1], Node("wew", tuple(args), node.size, {"expr": sp.Add(*terms)}))


ARRAY_JVP_RULES = {
    "transpose": _linear,
    "sumto": _linear,
    "mbcast": _linear,
    "mreduce": _linear,
    "matmul": _bilinear,
    "outer": _bilinear,
    "smatvec": _bilinear,
    "wew": _jvp_wew,
}
