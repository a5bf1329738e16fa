"""Where every value of a natively compiled cell lives: :class:`Layout` and how
``NativeModel`` fills it (:class:`NativeLayout`).

Each value has a slot (one of the pointers ``bufs`` an entry point receives) and a
:class:`Place` in it: a value of n units at step t, sample b, unit j is at
``bufs[slot] + (t+off)·B·units + b·ld + col + j``.  Parameters, stacked and packed
weights, states (``h[t-1]`` at off 0, ``h[t]`` at off 1 of one (T+1, B, n) buffer),
inputs and targets, every forward value (a (T, B, n) block), every backward value (a
block per step where a pass keeps it for all steps, else one step's rows), the gradients
(one arena, :meth:`~.native_backward.NativeBackward._plan_grad_arena`), and the scratch.
The members of a stacked product (pass "stack") share their whole's slot side by side.

    >>> L = Layout(); k = L.slot("state h"); L.place(("h", "t"), k, 4, 1)
    >>> L.where[("h", "t")], L.ld(("h", "t"), 4)
    (Place(slot=0, units=4, off=1, timed=True, col=0, ld=4), 4)
"""
from __future__ import annotations

from typing import NamedTuple

from ..ir import LEAF_OPS, internal
from ..passes.prepare import keep_set


class Place(NamedTuple):
    """Where one value lives (a value of :class:`Layout`'s ``where``)."""

    slot: int     # index into the call's buffer pointers
    units: int    # elements per sample and step (0: one row for every sample, or shared)
    off: int      # step offset: ``h[t-1]`` of a state is at off 0, ``h[t]`` at off 1
    timed: bool   # a row block per step (else the same rows every step)
    col: int      # first column inside the slot's rows (members of a stacked whole)
    ld: int       # row stride


class Layout:
    """Where every value lives: ``key →`` :class:`Place` ``(slot, units per sample (0: shared),
    step offset, timed, column, row stride)``.

    A value of n units at step t, sample b, unit j is at ``bufs[slot] + (t+off)·B·units +
    b·ld + col + j``.  Most values have a slot of their own (col 0, ld = n); the members of
    a stacked product (pass "stack") share one slot side by side (col > 0, ld = Σn)."""

    def __init__(self):
        self.slots: list[str] = []
        self.where: dict = {}

    def slot(self, label: str) -> int:
        self.slots.append(label)
        return len(self.slots) - 1

    def place(self, key, slot, units, off=0, timed=True, col=0, ld=None):
        self.where[key] = Place(slot, units, off, timed, col, units if ld is None else ld)

    def ld(self, key, size):
        """Row stride of ``key`` (its own size unless it lives in a stacked slot)."""
        w = self.where.get(key)
        return size if w is None or not w.ld else w.ld



class NativeLayout:
    """Mixin of ``NativeModel``: the layout of its programs (after the passes, ``_transform``)."""

    def _timed_seeds(self) -> set:
        """Backward values read or written for every step by the caller: the step weights, the
        outputs' external cotangents, the inputs' cotangents."""
        bwd = self.bwd
        return ({bwd.weight} | set(bwd.out_seeds.values())
                | {k for k in bwd.input_adjoints.values() if k is not None})

    def _build_layout(self):
        st, L = self.step, Layout()
        self.layout = L
        self.param_slot = {p: L.slot(f"param {p}") for p in st.params}
        for p, s in self.param_slot.items():
            L.place((p, None), s, 0, timed=False)
        self.stack_slot = {name: L.slot(f"stacked {name}") for name in self.stacks}
        for name, s in self.stack_slot.items():
            L.place((name, None), s, 0, timed=False)
        self.pack_slot = {(p, tr): L.slot(f"packed {p}{'ᵀ' if tr else ''}")
                          for p, shp in self.shapes.items() if isinstance(shp, tuple) for tr in (False, True)}
        self.state_slot = {}
        for s_, n in st.states.items():
            k = L.slot(f"state {s_}")
            self.state_slot[s_] = k
            L.place((s_, "t-1"), k, n, 0)
            L.place((s_, "t"), k, n, 1)
        self.io_slot = {}
        for name, n in list(st.inputs.items()) + list(st.targets.items()):
            k = L.slot(f"io {name}")
            self.io_slot[name] = k
            L.place((name, "t"), k, n, 0)
        # fwd_slot / bwd_slot: key → (slot, size) of every value; members of a stacked
        # product share their whole's slot, whose row width is slot_width[slot]
        self.slot_width, self.bwd_timed = {}, {}
        wholes = {w: width for w, _, width in self.views.values()}
        self.fwd_slot = {}
        fwd_nodes = dict(st.prog.nodes) | self._fwd_prog.nodes
        for key, node in fwd_nodes.items():
            if node.op in LEAF_OPS or key in L.where or key in self.views:
                continue
            k = L.slot(f"fwd {key}")
            if key in wholes:
                self.slot_width[k] = wholes[key]
                L.place(key, k, wholes[key], 0)
            else:
                self.fwd_slot[key] = (k, node.size)
                L.place(key, k, node.size, 0)
        for key, (w, col, width) in self.views.items():
            if key in fwd_nodes:
                k = L.where[w].slot
                self.fwd_slot[key] = (k, fwd_nodes[key].size)
                L.place(key, k, width, 0, col=col)
        self.bwd_slot = {}
        self.grad_slot = {}
        if self.bwd is not None:
            self._plan_deferred()
            bprog = self._bwd_prog
            members: dict = {}
            for key, (w, _, _) in self.views.items():
                members.setdefault(w, []).append(key)
            seeds = self._timed_seeds()
            timed_of = lambda key: key in seeds or key in self.deferred_keys  # noqa: E731
            for key, node in bprog.nodes.items():
                if key in self.views:
                    continue
                k = L.slot(f"bwd {key}")
                if key in wholes:  # a stacked slot keeps every step if any member must
                    timed = any(timed_of(m) for m in members[key])
                    self.slot_width[k], self.bwd_timed[k] = wholes[key], timed
                    L.place(key, k, wholes[key] if timed else 0, 0, timed=timed, ld=wholes[key])
                    continue
                timed = timed_of(key)
                self.bwd_slot[key] = (k, node.size)
                self.bwd_timed[k] = timed
                L.place(key, k, node.size if timed else 0, 0, timed=timed, ld=node.size)
            for key, (w, col, width) in self.views.items():
                if key in bprog.nodes:
                    k = L.where[w].slot
                    self.bwd_slot[key] = (k, bprog.nodes[key].size)
                    L.place(key, k, width if self.bwd_timed[k] else 0, 0, timed=self.bwd_timed[k],
                            col=col, ld=width)
            self.grad_slot = {p: L.slot(f"grad {p}") for p in st.params}
            self._plan_grad_groups()
            self.tmp_slot = L.slot("outer scratch")

    def _readers(self) -> set:
        """Values read from memory outside the program that computes them (by the backward
        step, the gradient specs, the carried adjoints, or the caller)."""
        st, bwd = self.step, self.bwd
        keys = keep_set(st, self._cot.loss) | {(s, "t-1") for s in st.states}
        if bwd is not None:
            keys |= set(bwd.prog.external) | self._timed_seeds() | set(bwd.carry_in.values())
            keys |= {k for k in bwd.carry_out.values() if k is not None}
            keys |= {k for specs in bwd.grads.values() for spec in specs for k in spec.reads}
        return keys

    @property
    def _scratch_key(self):
        return (internal("scratch"), None)

    def _plan(self):
        """The scratch of scaled products and the prologue flags (see ``NativeModel._prologue``)."""
        st = self.step
        self.scratch_units = max([n.size for n in st.prog.nodes.values() if isinstance(n.size, int)] +
                                 ([n.size for n in self.bwd.prog.nodes.values()] if self.bwd else []) + [1])
        k = self.layout.slot("scratch")
        self.layout.place(self._scratch_key, k, 0, timed=False)
        self.scratch_slot = k
        self.prologue_slot = self.layout.slot("prologue flags")
