"""The launch plan: where every value lives in device memory and which kernels run when.

A cell compiles to a :class:`~.codegen.KernelSet` and four launch lists:

    fwd_static  once, rows T·B: forward nodes that read no state (all W·x[t]), hoisted
    fwd_step    every t = 0 … T-1, rows B
    bwd_step    every t = T-1 … 0, rows B (the backward step f̄, then carry copies)
    bwd_after   once, rows T·B: what only the inputs' cotangents read (δx[t] = Wᵀ·δa[t]; pass
                "cotangents after the loop", :mod:`rnncomp.passes.cotangents_after`)
    bwd_grads   once, rows T·B: parameter gradients summed over every step and sample

Nodes are scheduled and turned into launches by :mod:`.launches` (element-wise runs of one
size fused into one kernel: :func:`.launches.fusion_groups`).

Every backward value keeps one row block per step (``(T, B, n)``), which is what
lets the gradient kernels run once over T·B rows instead of T times over B.
The adjoint carried from t+1 needs no copy: ``δ⁺h`` at t reads row t+1 of the
buffer of ``δh[t-1]`` (row T stays zero), except when that adjoint is itself a seed.

Where each value lives (its slot, step offset and column) is a :class:`rnncomp.passes.layout.Layout`,
built by its shared builder; every backward value keeps every step here.

The programs come from :func:`rnncomp.passes.prepare.prepare`, pass "stack" included
(``stack=True``, :mod:`rnncomp.passes.stacking` through :func:`rnncomp.passes.stack.stack_step`):
products sharing an operand are one product with a stacked weight, and a sum of products of different operands is one product over the
operands written side by side.  The members of such a whole share its slot (``col`` > 0,
row stride = the whole's width) and cost no launch; the stacked weights are built once
per call by one small kernel each (``fwd_prologue`` / ``bwd_prologue``); the gradients
of a group (:func:`rnncomp.passes.stack.grad_groups`: ``[∂W_1; …; ∂W_k] += δ_wholeᵀ·x``) are
adjacent in one slot and summed by one launch.  A copy node (template ``_0``, same size)
costs no launch either: its key is placed where its argument lives.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...errors import CompileError
from ...gradspec import Batch
from ...ir import LEAF_OPS, internal, key_str, placeholder
from ..llvm.exprgen import unsupported
from ...passes.cotangents_after import for_backward
from ...passes.layout import SHARED, Layout, place_sequences, place_values, place_weights
from ...passes.prepare import hoisted, prepare
from ...passes.stack import grad_groups
from .codegen import KernelSet
from .launches import FREE_OPS, Launch, fusion_groups, group_launch, stack_launch, transpose_launch
from .persistent import loop_launch
from .weight_kernels import grad_batch, grad_outer


@dataclass
class Plan:
    kernels: KernelSet
    layout: Layout
    fwd_static: list = field(default_factory=list)
    fwd_step: list = field(default_factory=list)
    bwd_step: list = field(default_factory=list)
    bwd_grads: list = field(default_factory=list)
    bwd_after: list = field(default_factory=list)
    fwd_prologue: list = field(default_factory=list)  # once per call: stacked weights of the forward
    bwd_prologue: list = field(default_factory=list)  # ... and those only the backward step uses
    param_slot: dict = field(default_factory=dict)
    grad_slot: dict = field(default_factory=dict)     # param -> slot (a gradient group shares one)
    state_slot: dict = field(default_factory=dict)
    io_slot: dict = field(default_factory=dict)
    fwd_slot: dict = field(default_factory=dict)
    weight_slot: int | None = None
    carry_slot: dict = field(default_factory=dict)   # state -> slot whose row 0 is δh[-1]
    cot_slot: dict = field(default_factory=dict)     # output -> slot of its external cotangents
    fwd_prog: object = None                          # the programs launched (stacked or not)
    bwd_prog: object = None
    stacks: dict = field(default_factory=dict)       # pass "stack": name -> Stacked
    views: dict = field(default_factory=dict)        # member key -> (whole, column, width)
    grad_groups: list = field(default_factory=list)  # (whole, kind, params, _) summed by one launch
    aliases: dict = field(default_factory=dict)      # copy nodes placed on their argument
    fwd_loop: Launch | None = None                   # persistent: the forward steps, one launch
    bwd_loop: Launch | None = None                   # ... and the backward steps
    transposed: dict = field(default_factory=dict)   # persistent: weight -> its transposed copy

    def summary(self) -> str:
        ks = self.kernels.kernels
        if self.fwd_loop is not None:
            steps = (f"1 persistent launch per pass for all steps ({len(self.fwd_step)} forward and "
                     f"{len(self.bwd_step)} backward kernels per step inlined)")
        else:
            steps = f"{len(self.fwd_step)} per forward step, {len(self.bwd_step)} per backward step"
        pro = len(self.fwd_prologue) + len(self.bwd_prologue)
        return (f"{sum(k.entry for k in ks.values())} kernels; launches: {len(self.fwd_static)} hoisted, {steps}, "
                f"{len(self.bwd_grads)} gradient" + (f", {pro} weights stacked or transposed" if pro else ""))

    def per_step(self) -> tuple:
        """Launches per forward step and per backward step."""
        return len(self.fwd_step), len(self.bwd_step)


def build_plan(step, bwd, dtype, hoist=True, fuse=True, tiled=True, stack=True, persistent=None,
               clusters=False) -> Plan:
    """Kernels and launch lists for a lowered cell (``bwd`` None: forward only).

    ``persistent``: the per-step launches become one persistent launch per pass
    (:mod:`.persistent`); their kernels are then simple (one thread per element) and their
    products read transposed weight copies, built once per call.  None: persistent unless
    the kernel would take more pointers than CUDA allows (then one launch per step).
    ``clusters``: the persistent kernels may be launched with thread-block clusters (sm_90+)."""
    required = bool(persistent)
    persistent = persistent is None or bool(persistent)
    bad = sorted({f for prog in [step.prog] + ([bwd.prog] if bwd else [])
                  for n in prog.nodes.values() if n.op == "ew" for f in unsupported(n.attrs["expr"])})
    if bad:
        raise CompileError(f"cell {step.name!r}: the ptx backend cannot lower {', '.join(bad)}")
    ks, L = KernelSet(dtype, tiled=tiled), Layout()
    plan = Plan(ks, L)
    prep = prepare(step, bwd, hoist=hoist, stack=stack)
    fwd, bprog, shapes = prep.fwd, prep.bwd, prep.shapes
    plan.fwd_prog, plan.bwd_prog, plan.stacks, plan.views = fwd, bprog, prep.stacks, prep.views
    views = plan.views

    plan.param_slot, _ = place_weights(L, step.params, plan.stacks, shapes)
    plan.state_slot, plan.io_slot = place_sequences(L, step)

    # forward values: a slot each (the members of a stacked whole: a column range of its slot);
    # the nodes pruned away keep a slot too (never written, nobody reads them)
    falias = _aliases(fwd, views, L.where)
    placed = place_values(L, dict(step.prog.nodes) | fwd.nodes, views, "fwd", skip=falias)
    plan.fwd_slot = {key: L.where[key].slot for key in placed}
    _place_aliases(L, falias)
    plan.aliases.update(falias)

    tr_weight = _transposer(plan, shapes) if persistent else None
    static = hoisted(step, fwd) if hoist else set()
    todo = [k for k, n in fwd.nodes.items() if n.op not in LEAF_OPS | FREE_OPS and k not in falias]
    for group in fusion_groups(fwd, [k for k in todo if k in static], fuse, falias):
        plan.fwd_static.append(group_launch(ks, fwd, group, "TB", L, shapes))
    ks.tiled = tiled and not persistent  # the persistent kernel inlines simple kernels
    for group in fusion_groups(fwd, [k for k in todo if k not in static], fuse, falias):
        plan.fwd_step += _split(group_launch(ks, fwd, group, "B", L, shapes, tr_weight))
    ks.tiled = tiled
    fwd_stacks = _stacks_used(fwd)
    plan.fwd_prologue = [stack_launch(ks, plan.stacks[n], step.params) for n in plan.stacks if n in fwd_stacks]
    fwd_tr = set(plan.transposed)
    plan.fwd_prologue += [transpose_launch(ks, p, plan.transposed[p], shapes) for p in plan.transposed]
    where = f"cell {step.name!r}"
    again = lambda: build_plan(step, bwd, dtype, hoist, fuse, tiled, stack, False)  # noqa: E731
    if bwd is None:
        if persistent:
            plan.fwd_loop = loop_launch(ks, L, plan.fwd_step, False, where, Launch, required, clusters)
            if plan.fwd_loop is None:  # too wide for one kernel: the plan of persistent=False
                return again()
        return plan

    # backward values: one row block per step; δh[t-1] buffers get a zero row T for δ⁺h
    balias = _aliases(bprog, views, L.where)
    root = lambda k: root(balias[k]) if k in balias else k  # noqa: E731
    carried = {}
    for s, k in bwd.carry_out.items():
        if k is not None and k in bprog.nodes and bprog.nodes[k].op not in LEAF_OPS:
            carried.setdefault(k, []).append(s)
    carried_roots = {root(k) for k in carried}
    carried_roots |= {views[k][0] for k in carried_roots if k in views}  # (never: carried keys are kept)
    # the step weights and the outputs' external cotangents are uploaded for every step; the
    # carry seeds are placed below; members and copies: where their whole / source is
    cot_seeds = {k: o for o, k in bwd.out_seeds.items()}
    place_values(L, bprog.nodes, views, "bwd", lambda key: 1 if key in carried_roots else 0,
                 skip=balias, leaves={bwd.weight} | set(cot_seeds))
    plan.weight_slot = L.where[bwd.weight].slot if bwd.weight in L.where else None
    plan.cot_slot = {cot_seeds[k]: L.where[k].slot for k in bprog.nodes if k in cot_seeds}
    _place_aliases(L, balias)
    plan.aliases.update(balias)
    copies = []
    for s, n in step.states.items():
        ci, co = bwd.carry_in[s], bwd.carry_out[s]
        if co in carried:
            slot, off, col = L.where[co]
            L.place(ci, slot, off + 1, col)
        else:
            slot = L.slot(f"carry {s}", n, 1)
            L.place(ci, slot, 1)
            if co is not None:
                dst = ("__carry", s)
                L.place(dst, slot, 0)
                copies.append(Launch(ks.copy(n, doc=f"δ⁺{s} ← {key_str(co)}", ld_src=L.ld(co)), (co, dst),
                                     note=f"carry {s}"))
        plan.carry_slot[s] = slot
    todo = [k for k, n in bprog.nodes.items() if n.op not in LEAF_OPS | FREE_OPS and k not in balias]
    # every backward value has a row block per step here, so what only the inputs' cotangents
    # read runs after the loop, over T·B rows, as the gradients do
    after, _ = for_backward(bwd, bprog)
    ks.tiled = tiled and not persistent
    for group in fusion_groups(bprog, [k for k in todo if k not in after], fuse, balias):
        plan.bwd_step += _split(group_launch(ks, bprog, group, "B", L, shapes, tr_weight))
    ks.tiled = tiled
    for group in fusion_groups(bprog, [k for k in todo if k in after], fuse, balias):
        plan.bwd_after.append(group_launch(ks, bprog, group, "TB", L, shapes))
    plan.bwd_step += copies
    plan.bwd_prologue = [stack_launch(ks, plan.stacks[n], step.params) for n in plan.stacks
                         if n in _stacks_used(bprog) and n not in fwd_stacks]
    plan.bwd_prologue += [transpose_launch(ks, p, plan.transposed[p], shapes) for p in plan.transposed
                          if p not in fwd_tr]
    if persistent:
        plan.fwd_loop = loop_launch(ks, L, plan.fwd_step, False, where, Launch, required, clusters)
        plan.bwd_loop = loop_launch(ks, L, plan.bwd_step, True, where, Launch, required, clusters)
        if plan.fwd_loop is None or plan.bwd_loop is None:  # too wide: the plan of persistent=False
            return again()

    # parameter gradients: a group's gradients are adjacent rows of one slot, summed by one launch
    plan.grad_groups = grad_groups(bwd, bprog, views) if stack else []
    grouped = set()
    for w, kind, params, _ in plan.grad_groups:
        sizes = [int(np.prod(step.params[p])) for p in params]
        k = L.slot(f"grad {'|'.join(params)}", sum(sizes), SHARED)
        at = 0
        for p, n in zip(params, sizes):
            plan.grad_slot[p] = k
            L.place(grad_key(p), k, 0, at)
            at += n
        grouped.update(params)
        width = bprog.node(w).size
        if kind[0] == "batch":
            name = grad_batch(ks, width, doc=f"∂[{';'.join(params)}] += Σ {key_str(w)}", ld=L.ld(w))
            plan.bwd_grads.append(Launch(name, (w, grad_key(params[0])), rows="TB"))
        else:
            vk = kind[1]
            cols = step.params[params[0]][1]
            if sum(step.params[p][0] for p in params) != width:
                raise CompileError(f"cell {step.name!r}: internal: gradient group {params} does not "
                                   f"cover {key_str(w)}")
            name = grad_outer(ks, (width, cols), width, bprog.node(vk).size, 1, False,
                                 doc=f"∂[{';'.join(params)}] += {key_str(w)}ᵀ{key_str(vk)}",
                                 ld_g=L.ld(w), ld_v=L.ld(vk))
            plan.bwd_grads.append(Launch(name, (w, vk, grad_key(params[0])), rows="TB"))
    for p, shape in step.params.items():
        if p not in grouped:
            plan.grad_slot[p] = k = L.slot(f"grad {p}", int(np.prod(shape)), SHARED)
            L.place(grad_key(p), k)
    for p, specs in bwd.grads.items():
        if p in grouped:
            continue
        shape = step.params[p]
        for spec in specs:
            if isinstance(spec, Batch):
                n = shape if isinstance(shape, int) else int(np.prod(shape))
                name = grad_batch(ks, n, doc=f"∂{p} += Σ {key_str(spec.g)}", ld=L.ld(spec.g))
                plan.bwd_grads.append(Launch(name, (spec.g, grad_key(p)), rows="TB"))
            else:
                gk, vk, c, tr = spec.g, spec.v, spec.c, spec.tr
                name = grad_outer(ks, shape, bprog.node(gk).size, bprog.node(vk).size, c, tr,
                                     doc=f"∂{p} += {c}·{key_str(gk)}ᵀ{key_str(vk)}",
                                     ld_g=L.ld(gk), ld_v=L.ld(vk))
                plan.bwd_grads.append(Launch(name, (gk, vk, grad_key(p)), rows="TB"))
    return plan


def _aliases(prog, views, placed) -> dict:
    """Copy nodes ``k = _0(a)`` (same size, ``a`` computed densely in ``prog``): ``{k: a}``.

    ``k`` then lives where ``a`` does and needs no launch (pass "stack" leaves
    ``δh[t-1] = [Uᵀ]·[δa]`` as such a copy of the stacked product)."""
    out = {}
    for key, node in prog.nodes.items():
        if (node.op != "ew" or len(node.args) != 1 or node.attrs["expr"] != placeholder(0)
                or key in placed or key in views):
            continue
        a = node.args[0]
        src = prog.nodes.get(a)
        if (src is None or src.op in LEAF_OPS | FREE_OPS or a in views or a in placed
                or src.size != node.size):
            continue
        out[key] = a
    return out


def _place_aliases(L, alias):
    for key, a in alias.items():  # program order: a chain's source is placed first
        L.where[key] = L.where[a]


def _stacks_used(prog) -> set:
    return {p for n in prog.nodes.values() if n.op == "matvec" for p, _, _ in n.attrs["terms"]}


def _split(x):
    """A launch, or the two launches of a split-k product, as a list."""
    return list(x) if isinstance(x, tuple) else [x]


def grad_key(p):
    """The layout key of parameter ``p``'s gradient (a generated name: never a user's key)."""
    return (internal("grad"), p)


def _transposer(plan, shapes):
    """``p -> name`` of ``p``'s transposed copy (a slot, a shape; the launch is added later)."""
    def tr_weight(p):
        if p not in plan.transposed:
            name = internal(f"{p}ᵀ")
            m_, n_ = shapes[p]
            k = plan.layout.slot(f"transposed {p}", m_ * n_, SHARED)
            plan.layout.place((name, None), k)
            plan.transposed[p] = name
            shapes[name] = (n_, m_)
        return plan.transposed[p]
    return tr_weight

