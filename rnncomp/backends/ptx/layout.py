"""Where every value of a PTX-compiled cell lives in device memory: slots in one arena.

A value ``key`` at step t is at ``base[slot] + (t + off)·B·units + col`` elements
(parameters and gradients: ``base[slot] + col``), see :meth:`Layout.address`; its rows
are ``units`` apart (:meth:`Layout.ld`).  The members of a stacked product (pass "stack")
share the whole's slot at a column offset; :mod:`.plan` decides the slots and places.

    >>> L = Layout(); k = L.slot("h", 4); L.place(("h", "t"), k)
    >>> L.address(("h", "t"), 2, 1000, [0], B=3, itemsize=4), L.ld(("h", "t"))
    (1096, 4)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


@dataclass
class Slot:
    label: str
    units: int          # elements per row (per sample), or total elements if shared
    extra_rows: int     # rows T + extra_rows (timed); -1: shared (no rows); -2: a row per sample, not per step

    def elems(self, T: int, B: int) -> int:
        if self.extra_rows == -2:
            return B * self.units
        return self.units if self.extra_rows < 0 else (T + self.extra_rows) * B * self.units


class Place(NamedTuple):
    """Where one value lives (a value of :class:`Layout`'s ``where``)."""

    slot: int   # index into ``Layout.slots``
    off: int    # step offset: ``h[t-1]`` of a state is at off 0, ``h[t]`` at off 1
    col: int    # first element inside the slot's rows (members of a stacked whole, grouped gradients)


class Layout:
    def __init__(self):
        self.slots: list[Slot] = []
        self.where: dict = {}   # key -> Place

    def slot(self, label, units, extra_rows=0) -> int:
        self.slots.append(Slot(label, units, extra_rows))
        return len(self.slots) - 1

    def place(self, key, slot, off=0, col=0):
        self.where[key] = Place(slot, off, col)

    def ld(self, key) -> int:
        """Row stride (elements) of a per-sample value: its slot's width."""
        return self.slots[self.where[key].slot].units

    def offsets(self, T, B, itemsize, align=256):
        """Byte offset of every slot in one arena, and the arena's size."""
        out, pos = [], 0
        for s in self.slots:
            out.append(pos)
            pos += -(-max(s.elems(T, B), 1) * itemsize // align) * align
        return out, pos

    def address(self, key, t, base, offsets, B, itemsize):
        slot, off, col = self.where[key]
        s = self.slots[slot]
        a = base + offsets[slot] + col * itemsize
        if s.extra_rows >= 0:
            a += (t + off) * B * s.units * itemsize
        return a
