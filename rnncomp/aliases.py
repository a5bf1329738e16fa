"""Readable names for the values the compiler generates: printing only, never a key.

Lowering and differentiation name their temporaries ``a7``, ``sigmoid8``, ``Abs9``, ``Σ5``,
``δa7``; those are keys of the IR (marked :func:`~rnncomp.ir.internal`) and stay so.  The
printers (the equation listing, its LaTeX, the graphs) show each one under an *alias*
chosen here from what the user wrote:

``pre(o)``     the pre-activation of ``o``: the argument of the function that computes
               ``o``, where ``o`` is the user's name of that value (GRU ``z = sigmoid(...)``
               gives ``pre(z)``) or, when the value has no name, the *gate* that the
               parameters of the argument spell (``Wo·x + Uo·h + bo``: the letter before
               ``o`` differs, the rest agrees, so ``pre(o)``);
``o``          an unnamed activation of such a gate (LSTM ``sigmoid(pre(o))``), when no
               declared name is ``o``;
``tanh(c)``    any other function of named values of the same step;
``Uo·h``       a product, ``h[2:5]`` a slice: what they compute, with aliased operands;
``a₁``, ``cat₁``, ``Σ₁``  the rest, numbered in program order (subscript digits: never a
               declared name);
``δpre(o)``    the adjoint of an aliased value.

An alias that a declared name or another alias already takes gets primes (``o′``), so a
listing never shows two values under one name.

    >>> import rnncomp as rc
    >>> fwd = forward_aliases(rc.cells.lstm(2, 3, 1))
    >>> sorted(fwd.values())
    ['Uf·h', 'Ug·h', 'Ui·h', 'Uo·h', 'V·h', 'Wf·x', 'Wg·x', 'Wi·x', 'Wo·x', 'a₁', 'f', 'g', 'i', 'o', 'pre(f)', 'pre(g)', 'pre(i)', 'pre(o)', 'tanh(c)']
"""
from __future__ import annotations

import re
from collections import defaultdict

import sympy as sp

from .ir import INTERNAL, display, placeholder

PRE = "pre"
# functions whose value on a gate's pre-activation is the gate itself (not Abs, Max, ...)
ACTIVATIONS = frozenset({"sigmoid", "tanh", "softsign", "softplus", "gelu", "exp", "atan", "erf"})
_SUB = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")
_GENERIC = re.compile(r"([^\W\d]+?)(\d+)(~\d+)?")
_IDENT = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def is_generated(key) -> bool:
    return key[0].endswith(INTERNAL)


def _call(node):
    """The sympy function of an ``ew`` node that applies one function to its arguments."""
    if node.op != "ew":
        return None
    e = node.attrs["expr"]
    if isinstance(e, (sp.Function, sp.Max, sp.Min)) and not isinstance(e, sp.Piecewise) and all(
            a.is_Number or a in {placeholder(i) for i in range(len(node.args))} for a in e.args):
        return e
    return None


def _gate_tag(prog, key):
    """``o`` when the parameters an affine node reads are ``Wo``, ``Uo``, ``bo`` (two or more,
    each one letter before a common name), else None."""
    node = prog.node(key)
    params = [a[0] for a in node.args if prog.node(a).op == "param"]
    for a in node.args:
        n = prog.node(a)
        if n.op == "matvec":
            params += [p for p, _, _ in n.attrs["terms"]]
    params = list(dict.fromkeys(params))
    tails = {p[1:].lstrip("_") for p in params}
    if len(params) >= 2 and len(tails) == 1 and _IDENT.fullmatch(next(iter(tails))):
        return next(iter(tails))
    return None


def _mat_label(terms) -> str:
    parts = []
    for p, tr, c in terms:
        m = p + ("ᵀ" if tr else "")
        c = sp.sympify(c)
        parts.append(m if c == 1 else f"-{m}" if c == -1 else f"{c}{m}")
    text = " + ".join(parts).replace("+ -", "- ")
    return text if len(terms) == 1 else f"({text})"


class _Namer:
    def __init__(self, taken):
        self.taken = set(taken)

    def claim(self, name: str) -> str:
        while name in self.taken:
            name += "′"
        self.taken.add(name)
        return name


def forward_aliases(cell) -> dict:
    """{generated key of the step program: its alias} (see the module docstring)."""
    prog = cell.step.prog
    namer = _Namer(set(cell.decls) | {display(k[0]) for k in prog.nodes if not is_generated(k)})
    alias: dict = {}
    name = lambda k: alias.get(k, display(k[0]))  # noqa: E731
    readers: dict = defaultdict(list)
    for key, node in prog.nodes.items():
        for a in dict.fromkeys(node.args):
            readers[a].append(key)
    pre: dict = {}   # the argument of a call -> what it is the pre-activation of
    for key, node in prog.nodes.items():
        f = _call(node)
        if f is None or len(node.args) != 1:
            continue
        (arg,) = node.args
        a = prog.node(arg)
        if arg in pre or not is_generated(arg) or a.op != "ew" or _call(a) is not None or arg[1] != key[1]:
            continue
        if not is_generated(key):
            pre[arg] = (display(key[0]), None)
        elif (tag := _gate_tag(prog, arg)) is not None and tag not in namer.taken:
            pre[arg] = (tag, key if type(f).__name__ in ACTIVATIONS else None)
        elif len(readers[key]) == 1 and not is_generated(readers[key][0]):
            pre[arg] = (display(readers[key][0][0]), None)   # h = h + 0.1*tanh(a): pre(h)
    gates = {}
    for arg, (g, gate_key) in pre.items():
        if f"{PRE}({g})" not in namer.taken:
            alias[arg] = namer.claim(f"{PRE}({g})")
            if gate_key is not None and g not in namer.taken:
                gates[gate_key] = g
    counters: dict = defaultdict(int)
    for key, node in prog.nodes.items():
        if not is_generated(key) or node.is_leaf or key in alias:
            continue
        if node.op == "ew" and node.attrs["expr"] == placeholder(0):
            alias[key] = name(node.args[0])   # a per-sample copy prints as what it copies
        elif key in gates:
            alias[key] = namer.claim(gates[key])
        elif node.op == "matvec":
            alias[key] = namer.claim(f"{_mat_label(node.attrs['terms'])}·{name(node.args[0])}")
        elif node.op == "mbcast":   # a row gate of a matrix: named after the gate, not its key
            alias[key] = namer.claim(f"by_rows({name(node.args[0])})")
        elif node.op == "slice":
            lo = node.attrs["lo"]
            alias[key] = namer.claim(f"{name(node.args[0])}[{lo}:{lo + node.size}]")
        elif (f := _call(node)) is not None and all(a[1] == key[1] for a in node.args):
            syms = {placeholder(i): sp.Symbol(name(a)) for i, a in enumerate(node.args)}
            alias[key] = namer.claim(sp.sstr(f.xreplace(syms)).replace(" ", ""))
        elif (m := _GENERIC.fullmatch(display(key[0]))) is not None:
            counters[m.group(1)] += 1
            alias[key] = namer.claim(m.group(1) + str(counters[m.group(1)]).translate(_SUB))
    return alias


def adjoint_alias(name: str) -> str:
    """``δh``, ``δpre(o)``, ``δ(Uo·h)``."""
    return f"δ{name}" if re.fullmatch(r"[^\W\d][\w′]*(\(.*\))?", name) else f"δ({name})"


def backward_aliases(bwd, fwd_alias: dict, taken=()) -> dict:
    """{backward key: alias}: the adjoint of an aliased forward value is δ(its alias); other
    generated backward names get the aliases of the forward names they are made of."""
    from .autodiff import adjoint_name
    owner: dict = {}
    for fk, bk in bwd.adjoints.items():   # several forward values may share one adjoint node
        base = re.sub(r"~\d+$", "", display(bk[0]))
        if bk not in owner or base == adjoint_name(fk[0]):
            owner[bk] = fk
    words = {display(k[0]): a for k, a in fwd_alias.items()}
    pattern = re.compile(r"(?<![A-Za-z0-9_])(" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
                         + r")(?![A-Za-z0-9_])") if words else None
    wanted = {}
    for bk, node in bwd.prog.nodes.items():
        if bk == bwd.weight:   # w[t], unless the cell declares a w
            wanted[bk] = display(bk[0])
        if not is_generated(bk) or node.is_leaf:
            continue
        fk = owner.get(bk)
        if fk is not None and (fk in fwd_alias or not is_generated(fk)):
            wanted[bk] = adjoint_alias(fwd_alias.get(fk, display(fk[0])))
        elif pattern is not None:
            text = re.sub(r"~\d+$", "", display(bk[0]))
            renamed = pattern.sub(lambda m: words[m.group(0)], text)
            if renamed != text:
                wanted[bk] = renamed
        if bk not in wanted and (m := re.fullmatch(r"(.*)~(\d+)", display(bk[0]))) is not None:
            wanted[bk] = m.group(1) + "′" * (int(m.group(2)) - 1)   # δbq~2, a second term of δbq: δbq′
    namer = _Namer(set(taken) | {display(k[0]) for k in bwd.prog.nodes if k not in wanted})
    first = sorted(wanted, key=lambda bk: bk in owner and is_generated(owner[bk]))  # δh before δpre(h)
    out, by_source = {}, {}
    for bk in first:   # δh[t] and δh[t-1]: one name at two times
        source = owner[bk][0] if bk in owner else bk[0]
        if source not in by_source:
            by_source[source] = namer.claim(wanted[bk])
        out[bk] = by_source[source]
    return out


def plain_aliases(progs, taken=()) -> dict:
    """{key: alias} for the generated counter names of ``progs`` (``w1`` → ``w₁``) and for the
    numbered repeats of a name (``δV~2`` → ``δV′``): programs with no gates to name them by."""
    namer, out, counters = _Namer(taken), {}, defaultdict(int)
    keys = [k for p in progs for k in p.nodes if is_generated(k)]
    namer.taken |= {display(k[0]) for k in keys if not re.search(r"~\d+$", display(k[0]))
                    and not _GENERIC.fullmatch(display(k[0]))}
    by_name = {}
    for k in sorted(dict.fromkeys(keys), key=lambda k: display(k[0]).startswith("δ")):   # w₁ before δw₁
        name = display(k[0])
        if (m := re.fullmatch(r"(.*)~(\d+)", name)) is not None:
            out[k] = namer.claim(m.group(1) + "′" * (int(m.group(2)) - 1))
        elif name.startswith("δ") and name[1:] in by_name:
            out[k] = namer.claim("δ" + by_name[name[1:]])
        elif (m := _GENERIC.fullmatch(name)) is not None and not name.startswith("δ"):
            counters[m.group(1)] += 1
            out[k] = by_name[name] = namer.claim(m.group(1) + str(counters[m.group(1)]).translate(_SUB))
    return out
