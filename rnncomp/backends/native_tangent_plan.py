"""Where the native online executor's values live (:mod:`.native_tangent`): the slots of its
``bufs`` array, which tangent values need no buffer (computed inline, or written straight into
the carried sensitivity), the reuse of tangent buffers, and what it cannot compile.

Sizes are in rows of units: "B" (per sample), "BK" (per sample and direction), "K" (per
direction: a parameter's seed, SnAp's mask), "1", "ext" (the caller's array).
"""
from __future__ import annotations

from ..errors import CompileError
from ..forward_mode import is_tangent_param
from ..ir import LEAF_OPS, internal
from .llvm.exprgen import unsupported
from ..passes.layout import PER_SAMPLE, SHARED, Layout

# the step weights and the product scratch: generated names, never a user's (a state may be "w")
WEIGHT, SCRATCH = (internal("w"), "t"), (internal("scratch"), None)


def new_slot(L: Layout, sizes: dict, label: str, rows: str, units: int, timed: bool = False) -> int:
    """A slot of ``L`` for a native online kernel, its ``(rows, units)`` recorded in ``sizes``:
    rows "ext" (the caller's array: ``timed`` a (T, B, units) sequence, else no rows of ours),
    "1" (shared), "packed" (a weight's GEMM panels, sized by the kernel for its dtype), or per
    sample ("B", "K", "BK": the buffers the kernel sizes per call)."""
    k = L.slot(label, units, 0 if timed else SHARED if rows in ("ext", "1", "packed") else PER_SAMPLE)
    sizes[k] = (rows, units)
    return k


MATRIX_OPS = ("outer", "smatvec", "mbcast", "mreduce")  # matrix states: .native_matrix
FORWARD_OPS = ("ew", "matvec", "slice", "pad", "concat", "sum", "lse") + MATRIX_OPS
TANGENT_OPS = ("seed", "ew", "matvec", "slice", "pad", "concat", "sum") + MATRIX_OPS


def check(step, ts) -> None:
    """Every op and function of both programs has code here, else one error naming them all."""
    bad_ops = sorted({n.op for n in step.prog.nodes.values() if n.op not in LEAF_OPS and n.op not in FORWARD_OPS}
                     | {n.op for n in ts.prog.nodes.values() if n.op not in TANGENT_OPS})
    funcs = sorted({f for prog in (step.prog, ts.prog) for n in prog.nodes.values() if n.op == "ew"
                    for f in unsupported(n.attrs["expr"])})
    vec_products = sorted({p for n in step.prog.nodes.values() if n.op == "matvec"
                           for p in [n.args[0][0]] if n.args[0][1] is None})
    parts = []
    if bad_ops:
        parts.append(f"op(s) {', '.join(bad_ops)}")
    if funcs:
        parts.append(f"function(s) {', '.join(funcs)}")
    if vec_products:
        parts.append(f"a product of parameter vector(s) {', '.join(vec_products)}")
    if parts:
        raise CompileError(f"cell {step.name!r}: the native online executor has no code for "
                           + "; ".join(parts) + " (use backend='numpy')")


class Plan:
    """Where each value lives: slots of the ``bufs`` pointer array and their sizes in units of
    rows (``rows`` "B": B·n, "BK": B·K·n, "K": K·n, "1": n)."""

    def __init__(self, step, ts, K, masked):
        self.L, self.sizes, self.K = Layout(), {}, K
        L = self.L

        def slot(label, rows, units, timed=False):
            return new_slot(L, self.sizes, label, rows, units, timed)

        self.param = {}
        for p, shape in step.params.items():
            self.param[p] = k = slot(f"param {p}", "ext", 0)
            L.place((p, None), k)
        self.io = {}
        for name, n in list(step.inputs.items()) + list(step.targets.items()):
            self.io[name] = k = slot(f"io {name}", "ext", n, timed=True)
            L.place((name, "t"), k)
        self.weight = slot("w", "ext", 1, timed=True)
        L.place(WEIGHT, self.weight)
        self.state = {}
        for s, n in step.states.items():
            self.state[s] = k = slot(f"state {s}", "B", n)
            L.place((s, "t-1"), k)
        for key, node in step.prog.nodes.items():
            if node.op not in LEAF_OPS:
                L.place(key, slot(f"fwd {key}", "B", node.size))
        self.seed_shared, self.seed_full = {}, {}
        readers = {}
        for key, node in ts.prog.nodes.items():
            for a in node.args:
                readers.setdefault(a, set()).add(node.op)
        for s in step.states:
            sk = ts.state_seeds[s]
            L.place(sk, slot(f"J {s}", "ext", step.states[s]))  # the caller's carry
        for p, sk in ts.param_seeds.items():
            if isinstance(sk, tuple):
                n = ts.prog.nodes[sk].size
                self.seed_shared[sk] = k = slot(f"seed {p}", "K", n)
                L.place(sk, k)
                if readers.get(sk, set()) - {"ew"} or sk in ts.out.values():
                    self.seed_full[sk] = slot(f"seed {p} (B rows)", "BK", n)
        # ∂P·v read only by element-wise nodes: no buffer, each reader computes its entries inline
        keep = {k for k in list(ts.out.values()) + [ts.loss] if k is not None}
        self.inline = {k for k, n in ts.prog.nodes.items() if n.op == "matvec" and k not in keep
                       and all(is_tangent_param(p) for p, _, _ in n.attrs["terms"]) and readers.get(k) == {"ew"}}
        self.keep = keep
        self.mask = {s: slot(f"mask {s}", "K", n) for s, n in step.states.items()} if masked else {}
        self.grad = slot("g", "1", K)
        self.loss = slot("loss", "1", 1)
        self.aliased = {} if masked else self._aliases(ts)
        self._tangent_buffers(ts)
        maxn = max([n.size for prog in (step.prog, ts.prog) for n in prog.nodes.values()
                    if isinstance(n.size, int)] + [1])
        self.scratch = slot("scratch", "BK", maxn)
        L.place(SCRATCH, self.scratch)

    def _aliases(self, ts):
        """{state: ∂h[t]} written straight into the carried J (no copy at the step's end): where
        ∂h[t] is element-wise and every reader of ∂h[t-1] comes before it in the program (a
        reader in the same fused run reads the entry before it is overwritten, in one sweep)."""
        order = {k: i for i, k in enumerate(ts.prog.nodes)}
        out = {}
        for s, key in ts.out.items():
            seed = ts.state_seeds[s]
            if key is None or ts.prog.nodes[key].op != "ew" or list(ts.out.values()).count(key) > 1:
                continue
            if all(order[r] < order[key] for r, n in ts.prog.nodes.items() if seed in n.args):
                out[s] = key
        return out

    def _tangent_buffers(self, ts):
        """Reuse a buffer once the last reader of its value has run (the step's results stay)."""
        last = {}
        keep = {k for k in list(ts.out.values()) + [ts.loss] if k is not None}
        order = list(ts.prog.nodes)
        for i, key in enumerate(order):
            for a in ts.prog.nodes[key].args:
                last[a] = i
        free, self.tan_slot = [], {}
        for i, key in enumerate(order):
            node = ts.prog.nodes[key]
            if node.op == "seed" or key in self.inline:
                continue
            alias = [s for s, k in self.aliased.items() if k == key]
            if alias:  # lives in the carried J of its state
                self.L.place(key, self.L.where[ts.state_seeds[alias[0]]].slot)
                continue
            # the same width only: a fused run may write a reused buffer in the same sweep that
            # still reads the old value, safe only when both walk the same (row, unit) entries
            fits = [k for k in free if self.sizes[k][1] == node.size]
            if fits:
                k = fits[0]
                free.remove(k)
            else:
                k = new_slot(self.L, self.sizes, f"tangent {len(self.tan_slot)}", "BK", node.size)
            self.tan_slot[key] = k
            self.L.place(key, k)
            for a in set(node.args):
                if a in self.tan_slot and last.get(a) == i and a not in keep:
                    free.append(self.tan_slot[a])
