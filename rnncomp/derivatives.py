"""Symbolic partial derivatives of element-wise templates, with one convention at kinks.

The scalar calculus that both modes share: :func:`partials` gives ∂template/∂_i for each
argument of an ``ew``/``wew`` template (the reverse walk, :mod:`rnncomp.autodiff`, multiplies
them by the adjoint; the tangent walk, :mod:`rnncomp.forward_mode`, by the tangent), and
:func:`nondiff_name` names the function a gradient cannot flow through.

    >>> import sympy as sp
    >>> from rnncomp.ir import placeholder
    >>> partials(sp.tanh(placeholder(0)), 1)    # tanh' = 1 − y², y = _1 the forward value
    (1 - _1**2,)
"""
from __future__ import annotations

from functools import lru_cache

import sympy as sp

from .exprwalk import replace, tree_size
from .ir import placeholder


# Derivatives at a kink (one convention for every backend: they all print these templates).
# Each is one of the two one-sided derivatives, so a gradient at a kink is a gradient of one
# of the pieces that meet there:
#   Max(a, b, ...)  the derivative of the FIRST argument (in sympy's order) attaining the max;
#                   sympy lists numbers first, so relu'(0) = Max(0, z)'(0) = 0;
#   Min(a, b, ...)  likewise the first argument attaining the min (Min(0, z)'(0) = 0);
#   Abs(a)          +1 at a = 0 for a as sympy stores it (sympy writes |x − p| as |p − x|);
#   Piecewise       the derivative of the piece whose condition selects the point (the first
#                   true condition, as in the forward pass);
#   Heaviside, sign 0 everywhere (their DiracDelta is dropped); floor, ceiling: no derivative.
# An indicator "a_i is the first extreme" is Π_{j<i} H(a_i − a_j, 0) · Π_{j>i} H(a_i − a_j, 1),
# with Heaviside's second argument its value at 0.
def _first_extreme(args, i, sign):
    ind = sp.S.One
    for j, b in enumerate(args):
        if j != i:
            ind *= sp.Heaviside(sign * (args[i] - b), 0 if j < i else 1)
    return ind


class _KinkMax(sp.Function):
    def fdiff(self, argindex=1):
        return _first_extreme(self.args, argindex - 1, 1)


class _KinkMin(sp.Function):
    def fdiff(self, argindex=1):
        return _first_extreme(self.args, argindex - 1, -1)


class _KinkAbs(sp.Function):
    def fdiff(self, argindex=1):
        return 2 * sp.Heaviside(self.args[0], 1) - 1


_KINKS = ((sp.Max, _KinkMax), (sp.Min, _KinkMin), (sp.Abs, _KinkAbs))


def _diff(template: sp.Expr, x) -> sp.Expr:
    """sympy's derivative with the kink convention above."""
    if not template.has(sp.Max, sp.Min, sp.Abs):
        return sp.diff(template, x)
    for f, k in _KINKS:
        template = template.replace(f, lambda *a, k=k: k(*a))
    d = sp.diff(template, x)
    for f, k in _KINKS:
        d = d.replace(k, lambda *a, f=f: f(*a))
    return d


#: the largest template (as a tree) whose derivative sympy's ``subs`` rewrites in the forward value
SUBS_TREE_LIMIT = 2000


@lru_cache(maxsize=4096)
def partials(template: sp.Expr, nargs: int) -> tuple:
    """∂template/∂_i for each argument, as templates over ``_0.._{n-1}`` and ``_n`` = the
    forward value (substituted where the derivative repeats it, e.g. tanh' = 1 − y²).

    Almost-everywhere derivatives: at a kink, one of the one-sided derivatives (the
    convention above); DiracDelta (from sign, Heaviside) is 0.
    Returns ``None`` in a slot whose derivative sympy cannot express.
    """
    y = placeholder(nargs)
    out = []
    for i in range(nargs):
        d = _diff(template, placeholder(i))
        if d.has(sp.DiracDelta):
            d = d.replace(sp.DiracDelta, lambda *a: sp.S.Zero)
        if d.has(sp.Derivative) or d.has(sp.Subs):
            out.append(None)
            continue
        if not template.is_Symbol and not template.is_Number:
            # sympy's subs also matches parts of products and sums, but walks the tree (its
            # powsimp): on a template that shares sub-expressions deeply (2^K paths) only the
            # whole template is replaced, each distinct sub-expression once
            d = d.subs(template, y) if tree_size(template) <= SUBS_TREE_LIMIT else replace(d, {template: y})
        out.append(d)
    return tuple(out)


def nondiff_name(template: sp.Expr) -> str:
    """The function in ``template`` that has no derivative: judged on the function alone, so
    in tanh(floor(x) + x) it is floor, not the tanh whose derivative contains floor's."""
    for f in sp.preorder_traversal(template):
        if isinstance(f, sp.Function) and not isinstance(f, sp.Piecewise):
            # only the arguments that vary: Heaviside(x, 1/2) has a derivative in x, none in
            # its constant value at 0, and is not the function to name
            xs = [sp.Symbol(f"u{i}", real=True) if a.free_symbols else a for i, a in enumerate(f.args)]
            g = f.func(*xs)
            if any(sp.diff(g, x).has(sp.Derivative) for x, a in zip(xs, f.args) if a.free_symbols):
                return f.func.__name__
    return str(template)
