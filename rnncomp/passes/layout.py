"""Where every value of a compiled cell lives: slots, places, and the builder both compiled
backends (native and PTX) use.

A :class:`Layout` is a list of :class:`Slot` (one buffer each: a pointer of the native
entry points' ``bufs``, a region of the PTX arena) and ``where``: ``key →`` :class:`Place`
``(slot, off, col)``.  A slot's ``rows`` says how it is laid out:

    rows ≥ 0      timed: T + rows row blocks of B rows of ``units`` (a state's T+1 rows hold h0)
    PER_SAMPLE    one step's B rows of ``units``, the same rows every step
    SHARED        ``units`` elements shared by every sample (parameters, stacked weights)

so a value at step t, sample b, unit j is at ``slot + (t+off)·B·units + b·units + col + j``
(untimed: without the step term; shared: ``slot + col + j``).  Most values have a slot of their
own; the members of a stacked product (pass "stack") share their whole's slot side by side
(``col`` > 0, row stride :meth:`Layout.ld` = the whole's width).  How a place becomes an
address is the backend's (``backends/native_emit.Gen.ptr``, ``backends/ptx/plan.address``).

The builder, in the order a backend calls it: :func:`place_weights` (parameters, stacked
weights), :func:`place_sequences` (states at off 0 = ``h[t-1]`` and off 1 = ``h[t]`` of one
slot, inputs and targets), :func:`place_values` (every computed value of a program, its rows
chosen by the backend: which values it keeps for every step is its own decision).

    >>> L = Layout(); k = L.slot("state h", 4, rows=1); L.place(("h", "t"), k, off=1)
    >>> L.where[("h", "t")], L.ld(("h", "t")), L.step_units(("h", "t")), L.elems(k, T=3, B=2)
    (Place(slot=0, off=1, col=0), 4, 4, 32)
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from typing import NamedTuple

from ..ir import LEAF_OPS, key_str

#: ops that name memory inside a stacked whole (pass "stack"): placed, never computed
MEMORY_OPS = frozenset({"view", "stackv"})
SHARED = -1       # rows of a slot: no rows, ``units`` elements shared by every sample
PER_SAMPLE = -2   # ... one step's B rows, the same every step


@dataclass(frozen=True)
class Slot:
    label: str
    units: int = 0        # elements per row (the row stride), or all elements of a shared slot
    rows: int = SHARED    # ≥ 0: timed, T + rows row blocks; PER_SAMPLE; SHARED

    @property
    def timed(self) -> bool:
        return self.rows >= 0

    def elems(self, T: int, B: int) -> int:
        if self.rows == PER_SAMPLE:
            return B * self.units
        return self.units if self.rows == SHARED else (T + self.rows) * B * self.units


class Place(NamedTuple):
    """Where one value lives (a value of :class:`Layout`'s ``where``)."""

    slot: int   # index into ``Layout.slots``
    off: int    # step offset: ``h[t-1]`` of a state is at off 0, ``h[t]`` at off 1
    col: int    # first element inside the slot's rows (members of a stacked whole, grouped gradients)


class Layout:
    """The slots and every value's place (module docstring)."""

    def __init__(self):
        self.slots: list[Slot] = []
        self.where: dict = {}

    def slot(self, label: str, units: int = 0, rows: int = SHARED) -> int:
        self.slots.append(Slot(label, units, rows))
        return len(self.slots) - 1

    def place(self, key, slot: int, off: int = 0, col: int = 0):
        self.where[key] = Place(slot, off, col)

    def of(self, key) -> Slot:
        return self.slots[self.where[key].slot]

    def ld(self, key, default=None):
        """Row stride of a per-sample value ``key``: its slot's width (``default`` for a value
        with no place or a shared one)."""
        w = self.where.get(key)
        if w is None:
            return default
        s = self.slots[w.slot]
        return default if s.rows == SHARED or not s.units else s.units

    def timed(self, key) -> bool:
        return self.of(key).timed

    def step_units(self, key) -> int:
        """Elements per sample between two steps of ``key`` (0: the same rows every step)."""
        s = self.of(key)
        return s.units if s.timed else 0

    def elems(self, slot: int, T: int, B: int) -> int:
        return self.slots[slot].elems(T, B)

    def offsets(self, T, B, itemsize, align=256):
        """Byte offset of every slot in one arena, and the arena's size."""
        out, pos = [], 0
        for s in self.slots:
            out.append(pos)
            pos += -(-max(s.elems(T, B), 1) * itemsize // align) * align
        return out, pos

    def with_rows(self, slots, rows: int) -> "Layout":
        """A copy in which ``slots`` have ``rows`` (the native "advance" entry keeps one step's
        rows of what it need not keep for every step)."""
        out = copy.copy(self)
        out.slots = [replace(s, rows=rows) if i in slots else s for i, s in enumerate(self.slots)]
        out.where = dict(self.where)
        return out


def place_weights(L: Layout, params: dict, stacks: dict, shapes: dict):
    """A shared slot per parameter and per stacked weight (pass "stack"):
    ``(param → slot, stacked name → slot)``."""
    param_slot, stack_slot = {}, {}
    for p, shape in params.items():
        param_slot[p] = k = L.slot(f"param {p}", math.prod(shape) if isinstance(shape, tuple) else shape)
        L.place((p, None), k)
    for name in stacks:
        stack_slot[name] = k = L.slot(f"stacked {name}", math.prod(shapes[name]))
        L.place((name, None), k)
    return param_slot, stack_slot


def place_sequences(L: Layout, step):
    """A timed slot per state (T+1 row blocks: ``h[t-1]`` at off 0, ``h[t]`` at off 1, row 0
    holds h0) and per input and target: ``(state → slot, input or target → slot)``."""
    state_slot, io_slot = {}, {}
    for s, n in step.states.items():
        state_slot[s] = k = L.slot(f"state {s}", n, rows=1)
        L.place((s, "t-1"), k, 0)
        L.place((s, "t"), k, 1)
    for name, n in list(step.inputs.items()) + list(step.targets.items()):
        io_slot[name] = k = L.slot(f"io {name}", n, rows=0)
        L.place((name, "t"), k, 0)
    return state_slot, io_slot


def place_values(L: Layout, nodes: dict, views: dict, kind: str, rows=None, skip=(), leaves=()) -> list:
    """Every computed value of ``nodes`` (and the leaves in ``leaves``) not yet placed, nor in
    ``skip``, gets a slot of its own: a stacked whole (pass "stack") as wide as its members side
    by side, which are then placed in it (:func:`place_members`).  ``rows(key)``: a value's
    rows (default 0, timed); a whole keeps every step if it or any member does (the most
    extra rows of them).  Returns the keys given a slot, in program order."""
    rows = rows or (lambda key: 0)
    widths, members = {}, {}
    for key, (w, _, width) in views.items():
        widths[w] = width
        members.setdefault(w, []).append(key)
    out = []
    for key, node in nodes.items():
        if (node.op in LEAF_OPS and key not in leaves) or key in L.where or key in views or key in skip:
            continue
        r = rows(key)
        if key in members:
            timed = [x for x in [r] + [rows(m) for m in members[key]] if x >= 0]
            r = max(timed) if timed else r
        L.place(key, L.slot(f"{kind} {key_str(key)}", widths.get(key, node.size), r))
        out.append(key)
    place_members(L, views, nodes)
    return out


def place_members(L: Layout, views: dict, nodes: dict):
    """The members of each stacked whole in ``nodes``: its slot, at their column offsets."""
    for key, (w, col, _) in views.items():
        if key in nodes:
            slot, off, c0 = L.where[w]
            L.place(key, slot, off, c0 + col)
