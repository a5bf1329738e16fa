"""How a place of the shared :class:`~rnncomp.passes.layout.Layout` becomes a device address
in the PTX backend's one arena (:meth:`~rnncomp.passes.layout.Layout.offsets`).

A value ``key`` at step t is at ``base + offsets[slot] + ((t + off)·B·units + col)·itemsize``
bytes (shared and per-sample slots: without the step term); its rows are ``units`` apart.
:mod:`.plan` decides the slots and places.

    >>> from rnncomp.passes.layout import Layout
    >>> L = Layout(); k = L.slot("h", 4, rows=0); L.place(("h", "t"), k)
    >>> address(L, ("h", "t"), 2, 1000, [0], B=3, itemsize=4), L.ld(("h", "t"))
    (1096, 4)
"""
from __future__ import annotations


def address(L, key, t, base, offsets, B, itemsize) -> int:
    """The byte address of ``key`` at step ``t`` in an arena at ``base`` laid out by ``offsets``."""
    slot, off, col = L.where[key]
    return base + offsets[slot] + ((t + off) * B * L.step_units(key) + col) * itemsize
