"""Gradient specs: how the backward step says each parameter's gradient is summed.

:func:`rnncomp.autodiff.backward_step` lists, per parameter, the terms of its gradient,
each summed by the executor over every step t and every sample b:

    Batch(g)                 ∂p += Σ_{t,b} g[t, b]                 a vector read element-wise
    Outer(g, v, c, tr)       ∂P += c · Σ_{t,b} g[t, b] ⊗ v[t, b]   a matrix in a product P·v
                                   (tr: v ⊗ g, P was read transposed)

``g`` and ``v`` are keys of the backward program.  Every executor (the NumPy oracle, native,
PTX) and every inspector reads these.  Each spec is also the tuple ``("batch", g)`` or
``("outer", g, v, c, tr)``, so code that reads them by position still works.

    >>> s = Outer(("δa", "t"), ("h", "t-1"), 1, False)
    >>> s.kind, s.reads, s == ("outer", ("δa", "t"), ("h", "t-1"), 1, False)
    ('outer', (('δa', 't'), ('h', 't-1')), True)
    >>> Batch(("δa", "t")).renamed(lambda k: (k[0] + "'", k[1]))
    Batch(kind='batch', g=("δa'", 't'))
"""
from __future__ import annotations

from typing import Callable, NamedTuple


class _Batch(NamedTuple):
    kind: str
    g: tuple


class Batch(_Batch):
    """∂p += Σ_{t,b} g[t, b]."""

    __slots__ = ()

    def __new__(cls, g):
        return super().__new__(cls, "batch", g)

    def __getnewargs__(self):
        return (self.g,)

    @property
    def reads(self) -> tuple:
        """The keys of the backward program this term reads."""
        return (self.g,)

    def renamed(self, key: Callable) -> "Batch":
        return Batch(key(self.g))


class _Outer(NamedTuple):
    kind: str
    g: tuple
    v: tuple
    c: object
    tr: bool


class Outer(_Outer):
    """∂P += c · Σ_{t,b} g[t, b] ⊗ v[t, b] (``tr``: v ⊗ g)."""

    __slots__ = ()

    def __new__(cls, g, v, c, tr):
        return super().__new__(cls, "outer", g, v, c, tr)

    def __getnewargs__(self):
        return (self.g, self.v, self.c, self.tr)

    @property
    def reads(self) -> tuple:
        return (self.g, self.v)

    def renamed(self, key: Callable) -> "Outer":
        return Outer(key(self.g), key(self.v), self.c, self.tr)

