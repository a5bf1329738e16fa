"""From scheduled nodes to kernel launches, for the PTX backend's :mod:`.plan`.

:func:`fusion_groups` schedules a program's nodes (any topological order of a step
computes the same values, every key has its own slot) so that products and other
non-element-wise nodes come as early as they are ready and the element-wise nodes of one
size form long runs, each fused into one kernel (``fuse=False``: one kernel per node, in
program order).  :func:`group_launch` asks the :class:`~.codegen.KernelSet` for the kernel
of one group and returns the :class:`Launch` that runs it: its arguments as keys, which the
layout resolves at the launch's step.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...errors import CompileError
from ...ir import internal, key_str
from ...ops import OPS
from ...passes.layout import MEMORY_OPS, PER_SAMPLE
from .codegen import KernelSet
from .weight_kernels import stack_weight, transpose


FREE_OPS = MEMORY_OPS  # pass "stack": names of memory, no kernel


@dataclass
class Launch:
    kernel: str
    args: tuple          # keys, resolved by the layout at the launch's step
    rows: str = "B"      # "B" or "TB"
    note: str = ""
    computes: tuple = ()  # the node keys this launch computes (a fused run: several)


def _units(node):
    return node.size if isinstance(node.size, int) else 0


def split_factor(n_in: int, n_out: int) -> int:
    """Chunks of a split-k product in the persistent kernel: about 16 products a partial sum,
    at most 1024 partial sums a sample and 64 chunks; 1 (no split) below 4 chunks."""
    S = min(-(-n_in // 16), max(1, 1024 // max(n_out, 1)), 64)
    return S if S >= 4 else 1


def transpose_launch(ks, p, name, shapes) -> Launch:
    kernel = transpose(ks, shapes[p], doc=f"{name} ← {p}ᵀ")
    return Launch(kernel, ((p, None), (name, None)), note=f"transpose {p}", computes=((name, None),))


def stack_launch(ks, stk, params) -> Launch:
    """One launch that builds a stacked weight from its parts (once per call)."""
    name = stack_weight(ks, [params[p] for p in stk.parts], stk.axis, doc=f"{stk.name} ← {', '.join(stk.parts)}",
                        terms=stk.terms)
    return Launch(name, tuple((p, None) for p in stk.parts) + ((stk.name, None),),
                  note=f"stack {stk.name}", computes=((stk.name, None),))


def resolve_args(prog, key, order, alias=()):
    """The keys of ``order`` that ``key``'s arguments stand for (through views and stackv, and
    through copy nodes placed on their argument: ``alias``, see :func:`_aliases`)."""
    out = []
    for a in prog.nodes[key].args:
        if a in order:
            out.append(a)
            continue
        node = prog.nodes.get(a)
        if node is not None and (node.op in FREE_OPS or a in alias):
            out += resolve_args(prog, a, order, alias)
    return out


def fusion_groups(prog, keys, fuse, alias=()):
    """Schedule ``keys`` (non-leaf nodes, in program order) into launch groups.

    A group is ``[key]`` or a run of element-wise keys (``OPS[op].elementwise``) of one size (fused into one kernel).
    List scheduling: a ready non-element-wise node is emitted first (products start as
    early as possible); otherwise the earliest ready element-wise node opens a run, which
    takes every element-wise node of its size that is or becomes ready.  A view or stackv
    argument (pass "stack") stands for the keys that write its memory."""
    if not fuse:
        return [[k] for k in keys]
    order = {k: i for i, k in enumerate(keys)}
    deps = {k: set(resolve_args(prog, k, order, alias)) for k in keys}
    users = {k: [] for k in keys}
    for k in keys:
        for a in deps[k]:
            users[a].append(k)
    wait = {k: len(d) for k, d in deps.items()}
    ready = [k for k in keys if not wait[k]]
    out = []

    def take(k):
        ready.remove(k)
        for u in users[k]:
            wait[u] -= 1
            if not wait[u]:
                ready.append(u)
        ready.sort(key=order.__getitem__)

    while ready:
        other = [k for k in ready if not OPS[prog.nodes[k].op].elementwise]
        if other:
            take(other[0])
            out.append([other[0]])
            continue
        run = [ready[0]]
        n = prog.nodes[run[0]].size
        take(run[0])
        while True:
            nxt = next((k for k in ready if OPS[prog.nodes[k].op].elementwise and prog.nodes[k].size == n), None)
            if nxt is None:
                break
            take(nxt)
            run.append(nxt)
        out.append(run)
    assert sum(map(len, out)) == len(keys), "internal: cycle in a step program"
    return out


def _arg_units(prog, L, a):
    node = prog.node(a)
    shared = node.op == "param"
    return (_units(node), shared, None if shared else L.ld(a))


def group_launch(ks: KernelSet, prog, group, rows, L, shapes, tr_weight=None):
    if len(group) == 1:
        launch = _node_launch(ks, prog, group[0], prog.nodes[group[0]], rows, L, shapes, tr_weight)
    else:  # a fused run of element-wise nodes of one size
        inside = {k: q for q, k in enumerate(group)}
        ext, ext_units, items = [], [], []
        for k in group:
            node = prog.nodes[k]
            refs = []
            for a in node.args:
                if a in inside:
                    refs.append(("reg", inside[a]))
                    continue
                if a not in ext:
                    ext.append(a)
                    ext_units.append(_arg_units(prog, L, a))
                refs.append(("ext", ext.index(a)))
            items.append((node.attrs["expr"], refs))
        doc = "; ".join(f"{key_str(k)} = {prog.nodes[k].attrs['expr']}" for k in group)
        name = ks.ew_run(items, prog.nodes[group[0]].size, ext_units, out_lds=[L.ld(k) for k in group], doc=doc)
        launch = Launch(name, tuple(ext) + tuple(group), note=", ".join(key_str(k) for k in group))
    if isinstance(launch, tuple):  # a split-k product: the partial sums compute no node
        for x in launch:
            x.rows = rows
        return launch
    launch.rows = rows
    launch.computes = tuple(group)
    return launch


def _node_launch(ks: KernelSet, prog, key, node, rows, L, shapes, tr_weight=None) -> Launch:
    launch = NODE_LAUNCH.get(node.op)
    if launch is None:
        raise CompileError(f"ptx backend: no kernel for op {node.op!r} ({key_str(key)})")
    return launch(_Site(ks, prog, key, node, rows, L, shapes, tr_weight))


@dataclass
class _Site:
    """What a node's launch is made from (the arguments of :data:`NODE_LAUNCH`'s entries)."""

    ks: KernelSet
    prog: object
    key: tuple
    node: object
    rows: str
    L: object
    shapes: dict
    tr_weight: object

    @property
    def doc(self):
        return key_str(self.key)

    def size(self, a):
        return self.prog.node(a).size

    def one(self, name) -> Launch:  # a kernel over (arguments..., out)
        return Launch(name, tuple(self.node.args) + (self.key,), note=self.doc)


def _ew(x):
    node = x.node
    units = [_arg_units(x.prog, x.L, a) for a in node.args]
    return x.one(x.ks.ew(node.attrs["expr"], node.size, units, out_ld=x.L.ld(x.key),
                         doc=f"{x.doc} = {node.attrs['expr']}"))


def _matvec(x):
    ks, node, L, key, doc, shapes = x.ks, x.node, x.L, x.key, x.doc, x.shapes
    terms = node.attrs["terms"]
    if x.tr_weight is not None:  # out[r] = Σ P[r, k] v[k] reads Pᵀ[k, r]: coalesced over r
        terms = tuple((p, tr, c) if tr else (x.tr_weight(p), True, c) for p, tr, c in terms)
    v = node.args[0]
    n_in = x.size(v)
    S = split_factor(n_in, node.size) if x.tr_weight is not None else 1
    if S > 1:  # persistent kernel: n_out·S partial sums, then n_out sums of S (two kernels)
        scratch = (internal("partial sums"), key)
        L.place(scratch, L.slot(f"partial sums {doc}", node.size * S, PER_SAMPLE))
        part = ks.matvec_part(n_in, node.size, S, terms, [shapes[p] for p, _, _ in terms],
                              doc=f"{doc}: {S} partial sums", lda=L.ld(v))
        total = ks.part_sum(node.size, S, doc=f"{doc} = Σ of {S} partial sums", ldc=L.ld(key))
        weights = tuple((p, None) for p, _, _ in terms)
        return (Launch(part, (v,) + weights + (scratch,), note=f"{doc} (partial)"),
                Launch(total, (scratch, key), note=doc, computes=(key,)))
    name = ks.matvec(n_in, node.size, terms, [shapes[p] for p, _, _ in terms], doc=doc,
                     tile="large" if x.rows == "TB" else "small", lda=L.ld(v), ldc=L.ld(key))
    return Launch(name, (v,) + tuple((p, None) for p, _, _ in terms) + (key,), note=doc)


def _slice_or_pad(x):
    node, a = x.node, x.node.args[0]
    kernel = x.ks.slice if node.op == "slice" else x.ks.pad
    return x.one(kernel(x.size(a), node.size, node.attrs["lo"], doc=x.doc, ld_in=x.L.ld(a), ld_out=x.L.ld(x.key)))


def _concat(x):
    parts = [_arg_units(x.prog, x.L, a) for a in x.node.args]
    return x.one(x.ks.concat(parts, x.node.size, doc=x.doc, ld_out=x.L.ld(x.key)))


def _reduce(x):  # sum, lse
    a = x.node.args[0]
    return x.one(x.ks.reduce(x.size(a), x.node.op == "lse", doc=x.doc, ld_in=x.L.ld(a), ld_out=x.L.ld(x.key)))


def _matrix(x):  # matrix states
    node = x.node
    return x.one(x.ks.matrix(node.op, node.attrs["shape"], node.size, [x.L.ld(a) for a in node.args],
                             node.attrs.get("axis", 1), node.attrs.get("transposed", False), doc=x.doc,
                             ld_out=x.L.ld(x.key)))


NODE_LAUNCH = {
    "ew": _ew,
    "matvec": _matvec,
    "slice": _slice_or_pad, "pad": _slice_or_pad,
    "concat": _concat,
    "sum": _reduce, "lse": _reduce,
    "outer": _matrix, "smatvec": _matrix, "mbcast": _matrix, "mreduce": _matrix,
}
