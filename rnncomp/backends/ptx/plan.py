"""The launch plan: where every value lives in device memory and which kernels run when.

A cell compiles to a :class:`~.codegen.KernelSet` and four launch lists:

    fwd_static  once, rows T·B: forward nodes that read no state (all W·x[t]), hoisted
    fwd_step    every t = 0 … T-1, rows B
    bwd_step    every t = T-1 … 0, rows B (the backward step f̄, then carry copies)
    bwd_grads   once, rows T·B: parameter gradients summed over every step and sample

Nodes are scheduled (any topological order of a step computes the same values, every
key has its own slot) so that products and other non-element-wise nodes come as early as
they are ready and the element-wise nodes of one size form long runs, each fused into one
kernel (:func:`_groups`; ``fuse=False``: one kernel per node, in program order).

Every backward value keeps one row block per step (``(T, B, n)``), which is what
lets the gradient kernels run once over T·B rows instead of T times over B.
The adjoint carried from t+1 needs no copy: ``δ⁺h`` at t reads row t+1 of the
buffer of ``δh[t-1]`` (row T stays zero), except when that adjoint is itself a seed.

A value ``key`` at step t is at ``base[slot] + (t + off)·B·units`` elements
(parameters and gradients: ``base[slot]``), see :meth:`Layout.address`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...errors import CompileError
from ...ir import LEAF_OPS, key_str, prune, state_independent
from ..llvm.exprgen import unsupported
from .codegen import KernelSet


@dataclass
class Slot:
    label: str
    units: int          # elements per row (per sample), or total elements if shared
    extra_rows: int     # rows T + extra_rows (timed); -1: shared (no rows)

    def elems(self, T: int, B: int) -> int:
        return self.units if self.extra_rows < 0 else (T + self.extra_rows) * B * self.units


@dataclass
class Launch:
    kernel: str
    args: tuple          # keys, resolved by the layout at the launch's step
    rows: str = "B"      # "B" or "TB"
    note: str = ""
    computes: tuple = ()  # the node keys this launch computes (a fused run: several)


class Layout:
    def __init__(self):
        self.slots: list[Slot] = []
        self.where: dict = {}

    def slot(self, label, units, extra_rows=0) -> int:
        self.slots.append(Slot(label, units, extra_rows))
        return len(self.slots) - 1

    def place(self, key, slot, off=0):
        self.where[key] = (slot, off)

    def offsets(self, T, B, itemsize, align=256):
        """Byte offset of every slot in one arena, and the arena's size."""
        out, pos = [], 0
        for s in self.slots:
            out.append(pos)
            pos += -(-max(s.elems(T, B), 1) * itemsize // align) * align
        return out, pos

    def address(self, key, t, base, offsets, B, itemsize):
        slot, off = self.where[key]
        s = self.slots[slot]
        a = base + offsets[slot]
        if s.extra_rows >= 0:
            a += (t + off) * B * s.units * itemsize
        return a


def _units(node):
    return node.size if isinstance(node.size, int) else 0


@dataclass
class Plan:
    kernels: KernelSet
    layout: Layout
    fwd_static: list = field(default_factory=list)
    fwd_step: list = field(default_factory=list)
    bwd_step: list = field(default_factory=list)
    bwd_grads: list = field(default_factory=list)
    param_slot: dict = field(default_factory=dict)
    grad_slot: dict = field(default_factory=dict)
    state_slot: dict = field(default_factory=dict)
    io_slot: dict = field(default_factory=dict)
    fwd_slot: dict = field(default_factory=dict)
    weight_slot: int | None = None
    carry_slot: dict = field(default_factory=dict)   # state -> slot whose row 0 is δh[-1]

    def summary(self) -> str:
        ks = self.kernels.kernels
        return (f"{len(ks)} kernels; launches: {len(self.fwd_static)} hoisted, {len(self.fwd_step)} per "
                f"forward step, {len(self.bwd_step)} per backward step, {len(self.bwd_grads)} gradient")


def build_plan(step, bwd, dtype, hoist=True, fuse=True, tiled=True) -> Plan:
    """Kernels and launch lists for a lowered cell (``bwd`` None: forward only)."""
    bad = sorted({f for prog in [step.prog] + ([bwd.prog] if bwd else [])
                  for n in prog.nodes.values() if n.op == "ew" for f in unsupported(n.attrs["expr"])})
    if bad:
        raise CompileError(f"cell {step.name!r}: the ptx backend cannot lower {', '.join(bad)}")
    ks, L = KernelSet(dtype, tiled=tiled), Layout()
    plan = Plan(ks, L)
    for p, shape in step.params.items():
        plan.param_slot[p] = k = L.slot(f"param {p}", int(np.prod(shape)), -1)
        L.place((p, None), k)
    for s, n in step.states.items():
        plan.state_slot[s] = k = L.slot(f"state {s}", n, 1)
        L.place((s, "t-1"), k, 0)
        L.place((s, "t"), k, 1)
    for name, n in list(step.inputs.items()) + list(step.targets.items()):
        plan.io_slot[name] = k = L.slot(f"io {name}", n, 0)
        L.place((name, "t"), k, 0)
    for key, node in step.prog.nodes.items():
        if node.op in LEAF_OPS or key in L.where:
            continue
        plan.fwd_slot[key] = k = L.slot(f"fwd {key_str(key)}", node.size, 0)
        L.place(key, k, 0)

    fwd = prune(step.prog, [(s, "t") for s in step.states] + [(o, "t") for o in step.outputs]
                + ([step.loss_key] if step.has_loss else []))
    static = state_independent(fwd, plan.fwd_slot) if hoist else set()
    todo = [k for k, n in fwd.nodes.items() if n.op not in LEAF_OPS]
    for group in _groups(fwd, [k for k in todo if k in static], fuse):
        plan.fwd_static.append(_group_launch(ks, fwd, group, "TB"))
    for group in _groups(fwd, [k for k in todo if k not in static], fuse):
        plan.fwd_step.append(_group_launch(ks, fwd, group, "B"))
    if bwd is None:
        return plan

    # backward values: one row block per step; δh[t-1] buffers get a zero row T for δ⁺h
    carried = {}
    for s, k in bwd.carry_out.items():
        if k is not None and k in bwd.prog.nodes and bwd.prog.nodes[k].op not in LEAF_OPS:
            carried.setdefault(k, []).append(s)
    for key, node in bwd.prog.nodes.items():
        if key == bwd.weight:
            plan.weight_slot = k = L.slot("weight w[t]", 1, 0)
            L.place(key, k, 0)
        elif node.op in LEAF_OPS:
            continue  # carry seeds, placed below
        else:
            k = L.slot(f"bwd {key_str(key)}", node.size, 1 if key in carried else 0)
            L.place(key, k, 0)
    copies = []
    for s, n in step.states.items():
        ci, co = bwd.carry_in[s], bwd.carry_out[s]
        if co in carried:
            slot = L.where[co][0]
            L.place(ci, slot, 1)
        else:
            slot = L.slot(f"carry {s}", n, 1)
            L.place(ci, slot, 1)
            if co is not None:
                dst = ("__carry", s)
                L.place(dst, slot, 0)
                copies.append(Launch(ks.copy(n, doc=f"δ⁺{s} ← {key_str(co)}"), (co, dst),
                                     note=f"carry {s}"))
        plan.carry_slot[s] = slot
    todo = [k for k, n in bwd.prog.nodes.items() if n.op not in LEAF_OPS]
    for group in _groups(bwd.prog, todo, fuse):
        plan.bwd_step.append(_group_launch(ks, bwd.prog, group, "B"))
    plan.bwd_step += copies
    for p, shape in step.params.items():
        plan.grad_slot[p] = k = L.slot(f"grad {p}", int(np.prod(shape)), -1)
        L.place(("__grad", p), k)
    for p, specs in bwd.grads.items():
        shape = step.params[p]
        for spec in specs:
            if spec[0] == "batch":
                n = shape if isinstance(shape, int) else int(np.prod(shape))
                name = ks.grad_batch(n, doc=f"∂{p} += Σ {key_str(spec[1])}")
                plan.bwd_grads.append(Launch(name, (spec[1], ("__grad", p)), rows="TB"))
            else:
                _, gk, vk, c, tr = spec
                name = ks.grad_outer(shape, bwd.prog.node(gk).size, bwd.prog.node(vk).size, c, tr,
                                     doc=f"∂{p} += {c}·{key_str(gk)}ᵀ{key_str(vk)}")
                plan.bwd_grads.append(Launch(name, (gk, vk, ("__grad", p)), rows="TB"))
    return plan


def _groups(prog, keys, fuse):
    """Schedule ``keys`` (non-leaf nodes, in program order) into launch groups.

    A group is ``[key]`` or a run of element-wise keys of one size (fused into one kernel).
    List scheduling: a ready non-element-wise node is emitted first (products start as
    early as possible); otherwise the earliest ready element-wise node opens a run, which
    takes every element-wise node of its size that is or becomes ready."""
    if not fuse:
        return [[k] for k in keys]
    order = {k: i for i, k in enumerate(keys)}
    deps = {k: {a for a in prog.nodes[k].args if a in order} for k in keys}
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
        other = [k for k in ready if prog.nodes[k].op != "ew"]
        if other:
            take(other[0])
            out.append([other[0]])
            continue
        run = [ready[0]]
        n = prog.nodes[run[0]].size
        take(run[0])
        while True:
            nxt = next((k for k in ready if prog.nodes[k].op == "ew" and prog.nodes[k].size == n), None)
            if nxt is None:
                break
            take(nxt)
            run.append(nxt)
        out.append(run)
    assert sum(map(len, out)) == len(keys), "internal: cycle in a step program"
    return out


def _group_launch(ks: KernelSet, prog, group, rows) -> Launch:
    if len(group) == 1:
        launch = _node_launch(ks, prog, group[0], prog.nodes[group[0]], rows)
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
                    ext_units.append((_units(prog.node(a)), prog.node(a).op == "param"))
                refs.append(("ext", ext.index(a)))
            items.append((node.attrs["expr"], refs))
        doc = "; ".join(f"{key_str(k)} = {prog.nodes[k].attrs['expr']}" for k in group)
        name = ks.ew_run(items, prog.nodes[group[0]].size, ext_units, doc=doc)
        launch = Launch(name, tuple(ext) + tuple(group), note=", ".join(key_str(k) for k in group))
    launch.rows = rows
    launch.computes = tuple(group)
    return launch


def _node_launch(ks: KernelSet, prog, key, node, rows="B") -> Launch:
    doc = key_str(key)
    if node.op == "ew":
        units = [(_units(prog.node(a)), prog.node(a).op == "param") for a in node.args]
        name = ks.ew(node.attrs["expr"], node.size, units, doc=f"{doc} = {node.attrs['expr']}")
        return Launch(name, tuple(node.args) + (key,), note=doc)
    if node.op == "matvec":
        terms = node.attrs["terms"]
        n_in = prog.node(node.args[0]).size
        shapes = [prog.node((p, None)).size for p, _, _ in terms]
        name = ks.matvec(n_in, node.size, terms, shapes, doc=doc, tile="large" if rows == "TB" else "small")
        return Launch(name, (node.args[0],) + tuple((p, None) for p, _, _ in terms) + (key,), note=doc)
    if node.op == "slice":
        name = ks.slice(prog.node(node.args[0]).size, node.size, node.attrs["lo"], doc=doc)
        return Launch(name, (node.args[0], key), note=doc)
    if node.op == "pad":
        name = ks.pad(prog.node(node.args[0]).size, node.size, node.attrs["lo"], doc=doc)
        return Launch(name, (node.args[0], key), note=doc)
    if node.op == "concat":
        parts = [(_units(prog.node(a)), prog.node(a).op == "param") for a in node.args]
        name = ks.concat(parts, node.size, doc=doc)
        return Launch(name, tuple(node.args) + (key,), note=doc)
    if node.op in ("sum", "lse"):
        name = ks.reduce(prog.node(node.args[0]).size, node.op == "lse", doc=doc)
        return Launch(name, (node.args[0], key), note=doc)
    raise CompileError(f"ptx backend: no kernel for op {node.op!r} ({doc})")
