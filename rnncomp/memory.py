"""Memory schedules for BPTT: what the backward pass stores and what it recomputes.

    >>> Every(10).segment(1000), Every("sqrt").segment(1000), ALL.segment(1000)
    (10, 32, 1000)

``"all"`` stores every step's activations (memory O(T)).  ``Every(n)`` stores only
the states at the start of each n-step segment during a first forward pass, then,
segment by segment from the last, recomputes the segment's activations and runs its
backward steps (memory O(n + T/n), one extra forward pass; n = √T gives O(√T)).
The gradients are the same as storing all (tests).
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Every:
    """Checkpoint the state every ``n`` steps (``n="sqrt"``: ⌈√T⌉)."""

    n: object = "sqrt"

    def __post_init__(self):
        if self.n != "sqrt" and not (isinstance(self.n, int) and self.n >= 1):
            raise ValueError(f"Every(n): n must be a positive integer or 'sqrt', got {self.n!r}")

    def segment(self, T: int) -> int:
        return max(1, math.ceil(math.sqrt(T))) if self.n == "sqrt" else self.n


@dataclass(frozen=True)
class StoreAll:
    """Store every step (the default)."""

    def segment(self, T: int) -> int:
        return T


ALL = StoreAll()


def schedule(memory) -> object:
    if memory in (None, "all"):
        return ALL
    if isinstance(memory, (Every, StoreAll)):
        return memory
    raise ValueError(f"memory must be 'all' or rc.Every(n), got {memory!r}")
