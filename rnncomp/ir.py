"""The intermediate representation every stage reads: keys, nodes and programs.

A *program* is an ordered dict of nodes, in topological order.  A node is keyed
by ``(name, time)``: ``time`` is ``None`` for parameters, ``"t"``/``"t-1"`` in a
one-step program (the cell), and an integer in an unfolded program.  Renaming
``"t" → s`` and ``"t-1" → s-1`` is all that unfolding does, so the state node
``("h", "t")`` of step s is the ``("h", "t-1")`` read by step s+1.

Names: a user's name is ASCII letters, digits and '_' (``dsl._NAME``); every name the
compiler makes (temporaries, adjoints, the step weight, stacks, views, scratch) ends with
:data:`INTERNAL`, which that grammar forbids, so a user's value and a generated one never
share a key.  Make such names with :func:`internal`; printers show them without the mark.

Values are per sample (a ``(B, n)`` array at run time, ``size == n``) except
parameter leaves, which are shared: vectors ``(n,)`` and matrices ``(m, n)``.
Element-wise nodes hold a sympy *template* over placeholders ``_0, _1, ...``
standing for their arguments, so one template serves every step of an
unfolded graph and its derivatives are derived once.
"""
from __future__ import annotations

import numbers

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Hashable

import sympy as sp
from sympy.printing.precedence import PRECEDENCE

from .errors import IRError
from .ops import LEAF, OPS

Key = tuple  # (name: str, time: None | str | int)

LEAF_OPS = LEAF  # the leaf ops of rnncomp.ops.OPS (values read from outside a program)


@lru_cache(maxsize=None)
def placeholder(i: int) -> sp.Symbol:
    """The i-th argument of an element-wise template."""
    return sp.Symbol(f"_{i}", real=True)


INTERNAL = "%"  # the mark of a generated name: not a character a declared name may contain


def internal(name: str) -> str:
    """The name of a compiler-generated value: ``name`` with the :data:`INTERNAL` mark (once)."""
    return name if name.endswith(INTERNAL) else name + INTERNAL


def display(name: str) -> str:
    """A name as printed: generated names without their mark (printing only, never a key)."""
    return name.replace(INTERNAL, "")


def time_label(t) -> str:
    if t is None:
        return ""
    return f"[{t}]"


def key_str(key: Key) -> str:
    name, t = key
    return f"{display(name)}{time_label(t)}"


def readable(prog, key: Key, depth: int = 6) -> str:
    """``key``'s value in the names a user declared: a generated element-wise value is its
    expression with its arguments written the same way (``depth`` levels deep), any other
    generated value (a product, a slice) its name; for error messages."""
    def expr_of(k, d):
        node = prog.nodes.get(k)
        if node is not None and k[0].endswith(INTERNAL) and d and node.op == "ew":
            return node.attrs["expr"].xreplace({placeholder(i): expr_of(a, d - 1) for i, a in enumerate(node.args)})
        return sp.Symbol(key_str(k))
    return str(expr_of(key, depth))


class NodeSym(sp.Symbol):
    """A sympy symbol that stands for a node's value in printed equations.

    Its sympy name keeps the mark of a generated name (so a user's ``a1`` and a temporary
    ``a1`` stay two symbols); it prints without it."""

    def __new__(cls, key: Key):
        name, t = key
        obj = sp.Symbol.__new__(cls, f"{name}{time_label(t)}", real=True)
        return obj

    @property
    def key(self) -> Key:
        name = self.name
        if name.endswith("]"):
            base, _, t = name[:-1].rpartition("[")
            return (base, int(t) if t.lstrip("-").isdigit() else t)
        return (name, None)

    def _sympystr(self, printer):
        return display(self.name)

    @property
    def precedence(self) -> int:
        """A name that reads as a product (``W·∂h[t]``, ``v1·v1ᵀ``: a value named after what it
        computes) is grouped where it is a factor, a divisor or a base, as the product itself
        is (:data:`rnncomp.atoms.GROUPED`, the precedence of ``+``); any other name is an atom."""
        depth = 0
        for ch in self.name:
            depth += (ch in "([") - (ch in ")]")
            if ch == "·" and depth == 0:
                return PRECEDENCE["Add"]
        return PRECEDENCE["Atom"]

    def _latex(self, printer):
        from .latex import node_latex
        return node_latex(*self.key)


@dataclass
class Node:
    """One operation; ``args`` are keys of other nodes (or of external values)."""

    op: str
    args: tuple = ()
    size: Any = 1  # int for per-sample vectors, (m, n) for matrix parameters
    attrs: dict = field(default_factory=dict)

    @property
    def is_leaf(self) -> bool:
        return self.op in LEAF_OPS

    @property
    def batched(self) -> bool:
        return self.op != "param"


@dataclass
class Program:
    """Nodes in topological order, plus the sizes of values it reads from outside."""

    nodes: dict = field(default_factory=dict)
    external: dict = field(default_factory=dict)  # key -> Node of another program
    name: str = ""
    _next: dict = field(default_factory=dict, repr=False, compare=False)

    def add(self, key: Key, node: Node) -> Key:
        if key in self.nodes:
            raise ValueError(f"program {self.name!r}: node {key_str(key)} defined twice")
        self.nodes[key] = node
        return key

    def node(self, key: Key) -> Node:
        n = self.nodes.get(key)
        return n if n is not None else self.external[key]

    def fresh(self, name: str, t: Hashable) -> Key:
        """A key ``(name, t)`` for a generated value, not used yet: the name is marked
        :func:`internal` (``name~2``, ``name~3`` ... on collision)."""
        name = internal(name)
        key, i = (name, t), self._next.get((name, t), 1)
        while key in self.nodes or key in self.external:
            i += 1
            key = (internal(f"{display(name)}~{i}"), t)
        self._next[(name, t)] = i
        return key

    def __len__(self) -> int:
        return len(self.nodes)

    def leaves(self, op: str | None = None):
        return [k for k, n in self.nodes.items() if n.is_leaf and (op is None or n.op == op)]


def verify(prog: Program) -> None:
    """Check the IR invariants: every op in :data:`rnncomp.ops.OPS` with its number of
    arguments, args defined before use, sizes consistent.  A broken one is an
    :class:`~rnncomp.errors.IRError` naming the program and the node."""
    seen = set(prog.external)
    for key, node in prog.nodes.items():
        op = OPS.get(node.op)
        if op is None:
            raise IRError(f"{prog.name}: {key_str(key)} has op {node.op!r}, which is not an IR op "
                          f"(rnncomp.ops.OPS: {', '.join(sorted(OPS))})")
        if op.arity is not None and len(node.args) != op.arity:
            raise IRError(f"{prog.name}: {key_str(key)} ({node.op}) reads {len(node.args)} argument(s); "
                          f"{node.op} takes {op.arity}")
        for a in node.args:
            if a not in seen:
                raise IRError(f"{prog.name}: {key_str(key)} reads {key_str(a)} before it is defined")
        if not _valid_size(node):
            raise IRError(f"{prog.name}: {key_str(key)} ({node.op}) has size {node.size!r}; a value has a "
                          "positive integer size (a parameter leaf: its shape, a tuple of them)")
        if node.op == "ew":
            tmpl = node.attrs["expr"]
            used = {s for s in tmpl.free_symbols if s.name.startswith("_")}
            allowed = {placeholder(i) for i in range(len(node.args))}
            if not used <= allowed:
                raise IRError(f"{prog.name}: {key_str(key)} template uses unbound {used - allowed}")
            for a in node.args:
                s = prog.node(a).size
                if isinstance(s, tuple) or s not in (1, node.size):
                    raise IRError(f"{prog.name}: {key_str(key)} size {node.size} reads {key_str(a)} of size {s}")
        seen.add(key)


def _valid_size(node: Node) -> bool:
    s = node.size
    dims = s if node.op == "param" and isinstance(s, tuple) and s else (s,)
    return all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= 1 for d in dims)


def prune(prog: Program, keep) -> Program:
    """The sub-program that computes ``keep`` (leaves it needs included), in the same order."""
    need = set(keep)
    for key in reversed(list(prog.nodes)):
        if key in need:
            need.update(prog.nodes[key].args)
            if prog.nodes[key].op == "matvec":
                need.update((p, None) for p, _, _ in prog.nodes[key].attrs["terms"])
    return Program({k: n for k, n in prog.nodes.items() if k in need}, dict(prog.external), prog.name)


def eliminate_aliases(prog: Program, keep=()):
    """Drop ``ew`` nodes that only copy another value of the same size (template ``_0``),
    except those in ``keep`` (values a caller reads step by step, which need a node of their own).

    Returns the new program and ``{dropped key: key it copied}``; readers are rewired.
    """
    alias: dict = {}
    out = Program(external=prog.external, name=prog.name)
    for key, node in prog.nodes.items():
        args = tuple(alias.get(a, a) for a in node.args)
        if (key not in keep and node.op == "ew" and len(args) == 1 and node.attrs["expr"] == placeholder(0)
                and _size_of(prog, args[0]) == node.size):
            alias[key] = args[0]
            continue
        out.add(key, node if args == node.args else Node(node.op, args, node.size, node.attrs))
    return out, alias


def _size_of(prog, key):
    n = prog.nodes.get(key) or prog.external.get(key)
    return None if n is None else n.size


def state_independent(prog: Program, hoistable) -> set:
    """Non-leaf nodes in ``hoistable`` that depend on no state (only inputs, targets, parameters).

    A node outside ``hoistable`` stays in the time loop, and so does everything reading it.
    """
    dynamic, static = set(), set()
    for key, node in prog.nodes.items():
        if node.op == "state" or any(a in dynamic for a in node.args):
            dynamic.add(key)
        elif node.op in LEAF_OPS:
            continue
        elif key in hoistable:
            static.add(key)
        else:
            dynamic.add(key)
    return static
