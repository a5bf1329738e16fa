"""Memory schedules for BPTT: what the backward pass stores and what it recomputes.

    >>> Every(10).segment(1000), Every("sqrt").segment(1000), ALL.segment(1000)
    (10, 32, 1000)

``"all"`` stores every step's activations (memory O(T)).  ``Every(n)`` stores only
the states at the start of each n-step segment during a first forward pass, then,
segment by segment from the last, recomputes the segment's activations and runs its
backward steps (memory O(n + T/n), one extra forward pass; n = √T gives O(√T)).
``Binomial(slots)`` is Griewank's revolve (the fewest recomputed steps with at most
``slots`` stored states); ``Budget(bytes)`` the schedule with the fewest recomputed steps
whose buffers fit in ``bytes`` (Gruslys et al. 2016).  The plans themselves are made by
:mod:`rnncomp.schedules`.  The gradients are the same as storing all (tests).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .errors import ArgumentError


@dataclass(frozen=True)
class Every:
    """Checkpoint the state every ``n`` steps (``n="sqrt"``: ⌈√T⌉)."""

    n: object = "sqrt"

    def __post_init__(self):
        if self.n != "sqrt" and not (isinstance(self.n, int) and self.n >= 1):
            raise ArgumentError(f"Every(n): n must be a positive integer or 'sqrt', got {self.n!r}")

    def segment(self, T: int) -> int:
        return max(1, math.ceil(math.sqrt(T))) if self.n == "sqrt" else self.n


@dataclass(frozen=True)
class StoreAll:
    """Store every step (the default)."""

    def segment(self, T: int) -> int:
        return T


ALL = StoreAll()


@dataclass(frozen=True)
class Binomial:
    """Griewank's revolve: at most ``slots`` stored states besides the initial ones, the
    fewest forward steps recomputed; each step's forward is rerun just before its backward."""

    slots: int

    def __post_init__(self):
        if not (isinstance(self.slots, int) and self.slots >= 0):
            raise ArgumentError(f"Binomial(slots): slots must be an integer >= 0, got {self.slots!r}")


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "K": 2**10, "M": 2**20, "G": 2**30}


def parse_bytes(text) -> int:
    """``10_000_000``, ``"10MB"`` (10⁶ bytes), ``"64MiB"`` or ``"64M"`` (2²⁰ bytes) → bytes."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if not math.isfinite(text):  # int(nan): "cannot convert float NaN to integer"
            raise ArgumentError(f"cannot read {text!r} as a number of bytes (examples: 10000000, '10MB', '64MiB')")
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).upper() not in _UNITS:
        raise ArgumentError(f"cannot read {text!r} as a number of bytes (examples: 10000000, '10MB', '64MiB')")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


@dataclass(frozen=True)
class Budget:
    """At most ``nbytes`` of activation buffers (an int, or ``"10MB"``, ``"64MiB"``) for a whole
    call: the schedule with the fewest recomputed steps that fits (Gruslys et al. 2016).
    A budget below the minimum for the call's T and B is an ``ArgumentError`` (a ``ValueError``)
    naming it."""

    nbytes: int

    def __post_init__(self):
        n = parse_bytes(self.nbytes)
        if n <= 0:
            raise ArgumentError(f"Budget: the number of bytes must be positive, got {self.nbytes!r}")
        object.__setattr__(self, "nbytes", n)


def schedule(memory) -> object:
    if memory is None or (isinstance(memory, str) and memory == "all"):
        return ALL
    if isinstance(memory, (Every, StoreAll, Binomial, Budget)):
        return memory
    raise ArgumentError("memory must be 'all', rc.Every(n), rc.Binomial(slots) or rc.Budget(bytes), "
                     f"got {memory!r}")
