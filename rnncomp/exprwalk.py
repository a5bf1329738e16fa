"""Walking a sympy expression as the graph it is.

A sympy expression shares its sub-expressions: ``z = z + (-z + tanh(a*z + b))/10`` repeated
K times (an Euler-integrated cell) is K levels of one object each, but as a tree (what
``sp.preorder_traversal``, ``free_symbols`` and plain recursion walk) it has 2^K of them.
Every check of a declaration walks with :func:`distinct_subexpressions`, which visits each
distinct sub-expression once.

    >>> import sympy as sp
    >>> x, a = sp.symbols("x a")
    >>> z = x
    >>> for _ in range(30):
    ...     z = z + (-z + sp.tanh(a * z + 1)) / 10
    >>> sum(1 for _ in distinct_subexpressions(z))      # as a tree: more than 2**30
    678
"""
from __future__ import annotations

import hashlib

import sympy as sp


def distinct_subexpressions(expr, skip=()):
    """Each distinct sub-expression of ``expr`` once, parents before children, arguments in
    order (``sp.preorder_traversal``'s order, without the repeats); the arguments of a node
    of a type in ``skip`` are not entered."""
    seen, stack = set(), [expr]
    while stack:
        e = stack.pop()
        if e in seen:
            continue
        seen.add(e)
        yield e
        if isinstance(e, sp.Basic) and not isinstance(e, skip):
            stack.extend(reversed(e.args))


def free_symbols(expr) -> set:
    """``expr.free_symbols``, each distinct sub-expression visited once."""
    return {e for e in distinct_subexpressions(expr) if isinstance(e, sp.Symbol)}


def contains(expr, *types) -> bool:
    """Whether a sub-expression of ``expr`` (itself included) is of one of ``types`` (``expr.has``
    for types, each distinct sub-expression visited once)."""
    return any(isinstance(e, types) for e in distinct_subexpressions(expr))


def postorder(expr):
    """Each distinct sub-expression of ``expr`` once, every one after its arguments."""
    done, stack = set(), [(expr, False)]
    while stack:
        e, ready = stack.pop()
        if e in done:
            continue
        args = e.args if isinstance(e, sp.Basic) else ()
        if not ready and args:
            stack.append((e, True))
            stack.extend((a, False) for a in reversed(args) if a not in done)
            continue
        done.add(e)
        yield e


def tree_size(expr) -> int:
    """The number of nodes of ``expr`` as a tree (what a tree walk visits), counted on the graph."""
    size = {}
    for e in postorder(expr):
        size[e] = 1 + sum(size[a] for a in (e.args if isinstance(e, sp.Basic) else ()))
    return size[expr]


def replace(expr, mapping: dict):
    """``expr.xreplace(mapping)``, each distinct sub-expression rebuilt once."""
    new = {}
    for e in postorder(expr):
        args = e.args if isinstance(e, sp.Basic) else ()
        if e in mapping:
            new[e] = mapping[e]
        elif args:
            changed = tuple(new[a] for a in args)
            new[e] = e.func(*changed) if changed != args else e
        else:
            new[e] = e
    return new[expr]


def digest(expr) -> str:
    """A hex SHA-256 of ``expr``'s structure (each distinct sub-expression once: its type, and
    its ``srepr`` if an atom, else its arguments' numbers), equal exactly when the expressions
    are; linear in the graph where ``srepr``'s text is the size of the tree."""
    ids, h = {}, hashlib.sha256()
    for e in postorder(expr):
        args = e.args if isinstance(e, sp.Basic) else ()
        kind = f"{type(e).__module__}.{type(e).__qualname__}"
        body = " ".join(str(ids[a]) for a in args) if args else sp.srepr(e)
        h.update(f"{kind}({body})\n".encode())
        ids[e] = len(ids)
    return h.hexdigest()
