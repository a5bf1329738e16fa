"""Emitting a step program (forward or backward: ew, matvec, slice, pad, concat, sum, lse) over
the rows of one step, for the native online executors (:mod:`.native_tangent`, RTRL and dense
SnAp; :mod:`.native_snap`, sparse SnAp).  A mixin: the class provides ``st`` (the step),
``plan.L`` (where values live, :class:`.native_layout.Layout`) and ``plan.state`` (the slot of
each state's h[t-1]).
"""
from __future__ import annotations

import ctypes

from ..errors import CompileError
from ..forward_mode import is_tangent_param
from ..ir import LEAF_OPS
from .llvm import kernel_library
from .llvm.builder import I64
from .llvm.jit import compile_keyed
from .native_tangent_plan import SCRATCH


def compile_online(step, description, build, host, cache, what):
    """(library, callable ``online(T, B, bufs, work)``) of a kernel, through the keyed cache;
    an LLVM failure becomes a :class:`CompileError` naming the cell."""
    try:
        lib = compile_keyed(description, build, cache=cache, host=host, link=kernel_library.link)
    except CompileError:
        raise
    except Exception as exc:  # noqa: BLE001 - any LLVM failure becomes a clear error
        raise CompileError(f"cell {step.name!r}: LLVM failed to compile {what}: {exc}") from None
    fn = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_int64, ctypes.POINTER(ctypes.c_void_p),
                          ctypes.c_void_p)(lib.address("online"))
    return lib, fn


class StepEmitter:
    """Program emission shared by the native online kernels."""

    def _slot_ptr(self, g, slot):
        return g.b.load(g.b.gep(g.bufs, [I64(slot)], inbounds=True))

    def _program(self, g, prog, t):
        """Every computed node of ``prog`` (the forward step, or a backward step) over g.B rows."""
        for key, node in prog.nodes.items():
            if node.op in LEAF_OPS:
                continue
            out, args = g.ptr(key, t), [g.ptr(a, t) for a in node.args]
            if node.op == "ew":
                units = [(prog.node(a).size, a[1] is None, prog.node(a).size) for a in node.args]
                g.ew([(key, node, out, args, units, node.args)])
            elif node.op == "matvec":
                self._products(g, node, out, args[0], prog.node(node.args[0]).size, t)
            else:
                self._rows(g, prog, node, out, args)

    def _rows(self, g, prog, node, out, args):
        """slice, pad, concat, sum, lse over g.B rows (the forward's B, the tangents' B·K)."""
        if node.op in ("slice", "pad"):
            g.rows(out, node.size, args[0], prog.node(node.args[0]).size, node.attrs["lo"], node.op)
        elif node.op == "concat":
            lo = 0
            for a, p in zip(node.args, args):
                n = prog.node(a).size
                g.rows(out, node.size, p, n, lo, "part")
                lo += n
        else:
            g.reduce(out, args[0], prog.node(node.args[0]).size, node.op == "lse")

    def _products(self, g, node, out, v, n_in, t):
        """out (+)= Σ c·v·op(P)ᵀ over the terms that name a matrix (GEMMs over g.B rows)."""
        first = True
        for p, tr, c in node.attrs["terms"]:
            if is_tangent_param(p):
                continue
            m_, n_ = self.st.params[p]
            P = g.ptr((p, None), t)
            if c == 1:
                g.call_gemm(g.B, I64(node.size), I64(n_in), v, I64(n_in), False, P, I64(n_), not tr,
                            out, I64(node.size), 0 if first else 1)
            else:
                tmp = g.ptr(SCRATCH, t)
                g.call_gemm(g.B, I64(node.size), I64(n_in), v, I64(n_in), False, P, I64(n_), not tr,
                            tmp, I64(node.size), 0)
                g.scaled_rows(out, tmp, node.size, node.size, c, accumulate=not first)
            first = False
        return first  # True: nothing written yet

    def _copy_state(self, g, s, n):
        new = g.ptr((s, "t"), I64(0))
        old = self._slot_ptr(g, self.plan.state[s])
        g.copy_loop(old, new, g.b.mul(g.B, I64(n)))
