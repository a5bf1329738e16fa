"""Pass "stack": products that share an operand, or that are summed, become ONE product.

A gated cell computes several products per step with the same operand (LSTM: Uf·h,
Ui·h, Ug·h, Uo·h) and, in its backward step, sums products of different operands
(δh[t-1] = Ufᵀ·δa1 + Uiᵀ·δa3 + …).  Small products waste a kernel's time on its edges;
stacking the weights turns k products of width H into one of width k·H:

* **shared operand** (rule A): ``P₁·v, …, P_k·v`` → one product ``[P₁; …; P_k]·v``; each
  original value becomes a ``view`` of a column range of the stacked result;
* **sum of products** (rule B): an element-wise node adding ``P₁·d₁ + … + P_k·d_k``
  (coefficient 1) reads one product ``[P₁ … P_k]·[d₁; …; d_k]``; the operands ``d_i``
  are written side by side (a ``stackv`` pseudo-node names the whole) and the other
  terms become 0 in the template; a node that was nothing but that sum becomes the product
  itself (no copy).  A second sum over the same operands (LSTM's input cotangent
  ``Σ Wᵢᵀ·δaᵢ`` next to ``δh[t-1] = Σ Uᵢᵀ·δaᵢ``) reads the same whole.

The stacked weight is a :class:`Stacked` parameter that a backend builds once per call
from the real parameters (rows or columns concatenated).  Values are unchanged, only
grouped, so the parameter-gradient specs of the backward step are untouched: they read
the same keys, now laid out with a row stride (:attr:`Result.views`).

This is an IR → IR rewrite any backend can consume; a backend that lays values out
densely can ignore it.  The NumPy oracle runs the un-stacked program.

    >>> import rnncomp as rc
    >>> st = rc.cells.lstm(3, 4, 2).step
    >>> res = stack_products(st.prog, st.params, keep=[(s, "t") for s in st.states])
    >>> [(s.parts, s.axis, s.shape) for s in res.stacks.values()]     # doctest: +NORMALIZE_WHITESPACE
    [(('Uf', 'Ui', 'Ug', 'Uo'), 0, (16, 4)), (('Wf', 'Wi', 'Wg', 'Wo'), 0, (16, 3))]
"""
from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

from ..ir import Node, Program, internal, placeholder
from ..ops import MEMORY


@dataclass(frozen=True)
class Stacked:
    """A weight built from parameters: ``axis`` 0 stacks rows ((R_i, C) → (ΣR, C)),
    1 stacks columns ((R, C_i) → (R, ΣC)); ``axis`` "sum" adds them, Σ c·op(P) over
    ``terms`` ((P, transposed, c): antisymmetric W - Wᵀ, or W + U on the same operand)."""

    name: str
    parts: tuple
    axis: object
    shape: tuple
    terms: tuple = ()


@dataclass
class Result:
    prog: Program
    stacks: dict = field(default_factory=dict)  # name -> Stacked
    views: dict = field(default_factory=dict)   # member key -> (whole key, column, whole size)


def _single_term(node, params):
    """The one term (P, transposed, 1) of a product of a parameter (not of a summed weight:
    stacks are never stacked again)."""
    terms = node.attrs.get("terms", ()) if node.op == "matvec" else ()
    if len(terms) == 1 and terms[0][2] == 1 and terms[0][0] in params:
        return terms[0]
    return None


def _uses(prog: Program) -> dict:
    uses: dict = {}
    for key, node in prog.nodes.items():
        for a in node.args:
            uses.setdefault(a, []).append(key)
    return uses


def stack_products(prog: Program, params: dict, keep=(), static=frozenset()) -> Result:
    """Apply rules C, A then B to ``prog``.  ``keep``: keys that must stay dense values of
    their own (states, outputs, carried adjoints); ``static``: keys hoisted out of the time
    loop (a group never mixes hoisted and looped products)."""
    res = Result(prog)
    res.prog = _summed_weights(res, prog, params)
    res.prog = _shared_operand(res, res.prog, params, set(keep), set(static))
    res.prog = _summed_products(res, res.prog, params, set(keep))
    return res


def _stack_name(base, res):
    """``base`` as an internal name no stack of ``res`` has yet (``base~2``, … after the first)."""
    name, i = internal(base), 1
    while name in res.stacks:
        i += 1
        name = internal(f"{base}~{i}")
    return name


def _new_stack(res, params, parts, axis):
    shapes = [params[p] for p in parts]
    if axis == 0:
        shape = (sum(s[0] for s in shapes), shapes[0][1])
    else:
        shape = (shapes[0][0], sum(s[1] for s in shapes))
    st = Stacked(_stack_name(f"[{(';' if axis == 0 else ' ').join(parts)}]", res), tuple(parts), axis, shape)
    res.stacks[st.name] = st
    return st


def _summed_weights(res, prog, params):
    """Rule C: one product with several matrices, Σ c_i·op(P_i)·v → (Σ c_i·op(P_i))·v, the sum
    a weight built once per call (one product a step instead of k)."""
    out, changed = Program(external=prog.external, name=prog.name, _next=dict(prog._next)), False
    for key, node in prog.nodes.items():
        terms = node.attrs.get("terms", ()) if node.op == "matvec" else ()
        if len(terms) >= 2 and all(p in params and isinstance(params[p], tuple) for p, _, _ in terms):
            shapes = {params[p][::-1] if tr else params[p] for p, tr, _ in terms}
            if len(shapes) == 1:
                label = "".join(f"{' - ' if c < 0 and k else '-' if c < 0 else ' + ' if k else ''}"
                                f"{'' if abs(c) == 1 else abs(c)}{p}{'ᵀ' if tr else ''}"
                                for k, (p, tr, c) in enumerate(terms))
                name = _stack_name(f"({label})", res)
                res.stacks[name] = Stacked(name, tuple(p for p, _, _ in terms), "sum", shapes.pop(), tuple(terms))
                node, changed = Node("matvec", node.args, node.size, {**node.attrs, "terms": ((name, False, 1),)}), True
        out.add(key, node)
    return out if changed else prog


def _shared_operand(res, prog, params, keep, static):
    """Rule A: P_i·v (same v, same transposition, same phase) → one product and views."""
    groups: dict = {}
    for key, node in prog.nodes.items():
        term = _single_term(node, params)
        if term is None or key in keep:
            continue
        groups.setdefault((node.args[0], term[1], key in static), []).append(key)
    groups = {g: ks for g, ks in groups.items() if len(ks) >= 2}
    if not groups:
        return prog
    first = {ks[0]: (g, ks) for g, ks in groups.items()}
    member = {k for ks in groups.values() for k in ks}
    out = Program(external=prog.external, name=prog.name, _next=dict(prog._next))
    for key, node in prog.nodes.items():
        if key in first:
            (v, tr, _), ks = first[key]
            parts = [_single_term(prog.nodes[k], params)[0] for k in ks]
            # v·op(P_i)ᵀ side by side: untransposed P_i stack by rows, transposed by columns
            st = _new_stack(res, params, parts, 0 if not tr else 1)
            width = sum(prog.nodes[k].size for k in ks)
            whole = out.fresh(f"{st.name}·{v[0]}", key[1])
            out.add(whole, Node("matvec", (v,), width, {"terms": ((st.name, tr, 1),)}))
            col = 0
            for k in ks:
                n = prog.nodes[k].size
                out.add(k, Node("view", (whole,), n, {"lo": col}))
                res.views[k] = (whole, col, width)
                col += n
        elif key not in member:
            out.add(key, node)
    return out


def _linear_unit(expr, ph) -> bool:
    """``expr`` is ``ph + (terms free of ph)``."""
    try:
        return sp.diff(expr, ph) == 1
    except Exception:  # noqa: BLE001 - a template sympy cannot differentiate is just not stacked
        return False


def _only_sum(expr, n) -> bool:
    """``expr`` is ``_0 + … + _{n-1}`` and nothing else."""
    return sp.expand(expr - sum(placeholder(i) for i in range(n))) == 0


def _summed_products(res, prog, params, keep):
    """Rule B: an ew node adding P_i·d_i (coefficient 1, each product read only there).

    A second sum over the same operands (LSTM: δh[t-1] = Σ U_iᵀ·δa_i and δx = Σ W_iᵀ·δa_i)
    reads the same side-by-side whole: its weights are stacked in the whole's column order."""
    uses = _uses(prog)
    # a value lives in one place: never in two groups, nor a stacked product's whole
    taken: set = set(res.views) | {w for w, _, _ in res.views.values()}
    order = {k: i for i, k in enumerate(prog.nodes)}
    plans, groups = [], {}  # groups: frozenset of operands → the first plan's operands, in order
    for key, node in prog.nodes.items():
        if node.op != "ew":
            continue
        by_tr: dict = {}
        for i, a in enumerate(node.args):
            m = prog.nodes.get(a)
            term = None if m is None else _single_term(m, params)
            if term is None or a in keep or uses.get(a) != [key] or node.args.count(a) != 1:
                continue
            d = m.args[0]
            dn = prog.nodes.get(d)
            if dn is None or dn.is_leaf or dn.op in MEMORY or d in keep:
                continue
            if not _linear_unit(node.attrs["expr"], placeholder(i)):
                continue
            by_tr.setdefault(term[1], []).append((i, a, d))
        for tr, items in by_tr.items():
            operands = [d for _, _, d in items]
            if len(items) < 2 or len(set(operands)) != len(operands):
                continue
            same = groups.get(frozenset(operands))
            if same is not None:  # the whole exists: reorder to its columns
                at = {d: j for j, d in enumerate(same)}
                plans.append((key, tr, sorted(items, key=lambda it: at[it[2]]), same))
                break
            if taken & set(operands):
                continue
            plans.append((key, tr, items, None))
            groups[frozenset(operands)] = tuple(operands)
            taken.update(operands)
            break  # one group per node: the other products stay as they are
    if not plans:
        return prog
    by_node = {p[0]: p for p in plans}
    last = lambda p: max((a for _, a, _ in p[2]), key=order.__getitem__)  # noqa: E731
    last_member = {last(p): p for p in plans}
    # the whole is named where the first of the products reading it is computed
    whole_at = {}
    for p in plans:
        ops = p[3] or tuple(d for _, _, d in p[2])
        if ops not in whole_at or order[last(p)] < order[whole_at[ops]]:
            whole_at[ops] = last(p)
    whole_of = {}
    dropped = {a for p in plans for _, a, _ in p[2]}
    # a sum of nothing but the group (δx = Σ Wᵢᵀ·δaᵢ): the product writes the sum's own value
    direct = {p[0] for p in plans if len(p[2]) == len(prog.nodes[p[0]].args)
              and _only_sum(prog.nodes[p[0]].attrs["expr"], len(p[2]))}
    out, made = Program(external=prog.external, name=prog.name, _next=dict(prog._next)), {}
    for key, node in prog.nodes.items():
        for ops in [o for o, k in whole_at.items() if k == key]:
            whole = out.fresh("[" + ",".join(d[0] for d in ops) + "]", key[1])
            whole_of[ops] = whole
            width = sum(prog.node(d).size for d in ops)
            out.add(whole, Node("stackv", ops, width))
            col = 0
            for d in ops:
                n = prog.node(d).size
                res.views[d] = (whole, col, width)
                col += n
        if key in last_member:
            e_key, tr, items, same = last_member[key]
            parts = [_single_term(prog.nodes[a], params)[0] for _, a, _ in items]
            # Σ d_i·op(P_i)ᵀ = [d_1 … d_k]·[op(P_1)ᵀ; …]: op(P_i) side by side in columns
            st = _new_stack(res, params, parts, 1 if not tr else 0)
            whole = whole_of[same or tuple(d for _, _, d in items)]
            product = Node("matvec", (whole,), prog.nodes[e_key].size, {"terms": ((st.name, tr, 1),)})
            if e_key in direct:
                made[e_key] = product
            else:  # the first product's key now holds the whole sum
                out.add(items[0][1], product)
        if key in direct:
            out.add(key, made.pop(key))
        elif key in last_member:
            pass
        elif key in by_node:
            _, _, items, _ = by_node[key]
            gone = {i for i, _, _ in items[1:]}
            args, subs = [], {}
            for i, a in enumerate(node.args):
                if i in gone:
                    subs[placeholder(i)] = sp.Integer(0)
                else:
                    subs[placeholder(i)] = placeholder(len(args))
                    args.append(a)
            expr = node.attrs["expr"].xreplace(subs)
            out.add(key, Node("ew", tuple(args), node.size, {**node.attrs, "expr": expr}))
        elif key not in dropped:
            out.add(key, node)
    return out
