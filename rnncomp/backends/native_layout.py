"""Where every value of a natively compiled cell lives: how ``NativeModel`` fills the shared
:class:`~rnncomp.passes.layout.Layout` (:class:`NativeLayout`).

Each value has a slot (one of the pointers ``bufs`` an entry point receives) and a place in
it (:mod:`rnncomp.passes.layout`).  Parameters, stacked and packed weights, states, inputs and
targets, every forward value (a (T, B, n) block), every backward value (a block per step
where a pass keeps it for all steps, else one step's rows), the gradients (one arena,
:meth:`~.native_backward.NativeBackward._plan_grad_arena`), and the scratch.  What is native
here: the packed weights' slots, which backward values keep every step, the gradient arena.
"""
from __future__ import annotations

from ..ir import internal
from ..passes.layout import PER_SAMPLE, Layout, place_sequences, place_values, place_weights
from ..passes.prepare import keep_set


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
        self.param_slot, self.stack_slot = place_weights(L, st.params, self.stacks, self.shapes)
        self.pack_slot = {(p, tr): L.slot(f"packed {p}{'ᵀ' if tr else ''}")
                          for p, shp in self.shapes.items() if isinstance(shp, tuple) for tr in (False, True)}
        self.state_slot, self.io_slot = place_sequences(L, st)
        # fwd_slot / bwd_slot: key → (slot, size) of every value but a stacked whole; the members
        # of a stacked product share their whole's slot, whose row width is slot_width[slot]
        wholes = {w for w, _, _ in self.views.values()}
        fwd_nodes = dict(st.prog.nodes) | self._fwd_prog.nodes
        placed = place_values(L, fwd_nodes, self.views, "fwd")
        self.slot_width = {L.where[w].slot: L.of(w).units for w in placed if w in wholes}
        self.fwd_slot = {key: (L.where[key].slot, fwd_nodes[key].size)
                         for key in placed + [k for k in self.views if k in fwd_nodes] if key not in wholes}
        self.bwd_slot, self.grad_slot, self.bwd_timed = {}, {}, {}
        if self.bwd is None:
            return
        self._plan_deferred()
        bprog = self._bwd_prog
        seeds = self._timed_seeds()
        rows = lambda key: 0 if key in seeds or key in self.deferred_keys else PER_SAMPLE  # noqa: E731
        placed = place_values(L, bprog.nodes, self.views, "bwd", rows, leaves=set(bprog.nodes))
        for key in placed + [k for k in self.views if k in bprog.nodes]:
            k = L.where[key].slot
            self.bwd_timed[k] = L.slots[k].timed
            if key in wholes:
                self.slot_width[k] = L.slots[k].units
            else:
                self.bwd_slot[key] = (k, bprog.nodes[key].size)
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
        self.layout.place(self._scratch_key, k)
        self.scratch_slot = k
        self.prologue_slot = self.layout.slot("prologue flags")
