"""Checkpointing plans for BPTT: which states to keep, what to recompute, in which order.

    >>> from rnncomp.schedules import Footprint, binomial, budget, every
    >>> fp = Footprint(state=512, step=4895)    # bytes: one set of states, one step's activations
    >>> every(1000, 32).advanced                # Every(32): one advance pass, the last leaf excepted
    968
    >>> p = budget(1000, 50 * 4895 + 30 * 512, fp)
    >>> p.name, p.advanced, p.memory(fp) <= 50 * 4895 + 30 * 512
    ('budget: every 51 (leaves ≤ 51, ≤ 18 checkpoints)', 949, True)
    >>> binomial(4, 1).actions[:6]              # revolve: one slot, four steps
    (('advance', 0, 2), ('store', 2), ('advance', 2, 3), ('leaf', 3, 4), ('restore', 2), ('leaf', 2, 3))

Pure Python (no compiled code): a memory spec (``"all"``, ``rc.Every``, ``rc.Binomial``,
``rc.Budget``) and the exact byte sizes of a model (:class:`Footprint`) give a
:class:`Plan`, a list of actions that an executor (``backends/checkpoint.py``) runs::

    ("advance", a, b)   states a → b, keeping nothing (the cheap forward: states only)
    ("store", b)        keep the current states (those at b) as a checkpoint
    ("restore", a)      make the checkpoint at a current (0: the initial states, always kept)
    ("free", a)         drop the checkpoint at a
    ("leaf", a, b)      forward a..b from the current states keeping every activation, then
                        the backward steps b-1 … a (adjoint carried in from b, out at a)

Leaves run right to left and cover every step once, so every plan does one full forward
and one backward per step; plans differ only in the steps they *advance* (recompute).

The cost model is the executor's: buffers are reused for the whole call, so a plan whose
longest leaf has L steps and which holds at most k checkpoints at once takes
``L·step + (1 + k)·state`` bytes (the 1: the states a leaf or an advance starts from).
For fixed (L, k) the fewest advanced steps for t steps is the recurrence (Gruslys et
al. 2016, "Memory-Efficient Backpropagation Through Time", with leaves of full activations
as their internal-state option)::

    P(t, k) = 0                                                  t ≤ L   (one leaf)
    P(t, k) = min_{1≤y<t}  y + P(t−y, k−1) + P(y, k)             t > L
    P(t, −1) = 0 if t ≤ L else ∞                                 (a leaf needs no slot)

advance y steps, keep the state at y, solve the right part with one slot fewer, then the
left part from the start.  Its solution is binomial (Griewank's revolve for L = 1;
tests check every L against the table):  P(t, k) = r·t − L·β(k+2, r−1) for
L·β(k+1, r−1) < t ≤ L·β(k+1, r), β(s, r) = C(s+r, s).  ``Budget`` minimises P(T, k) over
the split of its bytes between the leaf length L and the slots k; ``Binomial(s)`` is
L = 1, k = s.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import comb, isqrt

import numpy as np

from .errors import ArgumentError
from .memory import Binomial, Budget, Every, StoreAll, schedule

_INF = np.iinfo(np.int64).max // 4


@dataclass(frozen=True)
class Footprint:
    """Exact bytes of a model's per-call buffers at one batch size."""

    state: int   # one copy of every state: Σ state sizes × B × itemsize
    step: int    # one step of full activations: (Σ forward values + Σ states) × B × itemsize
    B: int = 0   # the batch size these are for (for messages)

    def memory(self, leaf: int, held: int) -> int:
        """Bytes of a plan whose longest leaf has ``leaf`` steps and that holds ``held`` checkpoints."""
        return leaf * self.step + (1 + held) * self.state

    def minimum(self, T: int) -> int:
        """The least memory any plan needs: one step's activations, no checkpoint."""
        return self.memory(1, 0) if T >= 1 else 0


@dataclass(frozen=True)
class Plan:
    """A checkpointing plan for T steps; the statistics are read off the actions by :func:`simulate`."""

    T: int
    actions: tuple
    name: str
    advanced: int = 0    # forward steps recomputed (run by "advance")
    leaves: int = 0
    max_leaf: int = 0
    max_held: int = 0    # checkpoints held at once (the initial states not counted)

    @classmethod
    def of(cls, T, actions, name):
        stats = simulate(T, actions)
        return cls(T, tuple(actions), name, **stats)

    def memory(self, fp: Footprint) -> int:
        return fp.memory(self.max_leaf, self.max_held)

    def overhead(self, advance_cost: float) -> float:
        """Predicted time relative to storing all: ``advance_cost`` is the time of one advanced
        step over the time of one forward + backward step."""
        return 1.0 + self.advanced * advance_cost / self.T


def simulate(T: int, actions) -> dict:
    """Run a plan symbolically: check that it is valid and count what it does.

    Valid: an advance or a leaf starts where the current states are; a checkpoint is
    restored only while held; leaves reverse steps T-1 … 0 exactly once, right to left."""
    cur, held, todo = 0, {0}, T  # current position (None: consumed), checkpoints, steps left
    advanced = leaves = max_leaf = max_held = 0
    for act in actions:
        op = act[0]
        if op == "advance":
            a, b = act[1], act[2]
            if cur != a or not a < b <= todo:
                raise ValueError(f"invalid plan: {act} with the states at {cur} and steps < {todo} left")
            advanced, cur = advanced + b - a, b
        elif op == "store":
            if cur != act[1] or act[1] in held:
                raise ValueError(f"invalid plan: {act} with the states at {cur}")
            held.add(act[1])
            max_held = max(max_held, len(held) - 1)
        elif op == "restore":
            if act[1] not in held:
                raise ValueError(f"invalid plan: {act}: no checkpoint there")
            cur = act[1]
        elif op == "free":
            if act[1] not in held or act[1] == 0:
                raise ValueError(f"invalid plan: {act}: no checkpoint there")
            held.discard(act[1])
        elif op == "leaf":
            a, b = act[1], act[2]
            if cur != a or b != todo or not a < b:
                raise ValueError(f"invalid plan: {act} with the states at {cur} and steps < {todo} left")
            leaves, max_leaf, todo, cur = leaves + 1, max(max_leaf, b - a), a, None
        else:
            raise ValueError(f"invalid plan: unknown action {act!r}")
    if todo != 0:
        raise ValueError(f"invalid plan: steps 0 … {todo - 1} never run backward")
    return {"advanced": advanced, "leaves": leaves, "max_leaf": max_leaf, "max_held": max_held}


# ---------------------------------------------------------------------- the recurrence
def advances(t: int, k: int, L: int) -> int:
    """P(t, k): the fewest advanced steps for t steps with k checkpoint slots and leaves ≤ L."""
    if t <= L:
        return 0
    if k < 0:
        return _INF
    if k == 0:  # advance to the last leaf, run it, start over: Σ_i (t − i·L)
        n = -(-t // L) - 1
        return n * t - L * n * (n + 1) // 2
    r = 1
    while t > L * comb(k + 1 + r, r):
        r += 1
    return r * t - L * comb(k + 1 + r, r - 1)


class _Table:
    """P(u, k) for arrays u at one (k, L): thresholds L·β(k+1, r) and offsets L·β(k+2, r−1)."""

    def __init__(self, k, L, top):
        self.k, self.L = k, L
        thr, off, r = [L], [0], 0
        while k >= 0 and thr[-1] < top:
            r += 1
            thr.append(L * comb(k + 1 + r, r))
            off.append(L * comb(k + 1 + r, r - 1))
        self.thr, self.off = np.array(thr, dtype=np.int64), np.array(off, dtype=np.int64)

    def __call__(self, u):
        if self.k < 0:
            return np.where(u <= self.L, 0, _INF)
        r = np.searchsorted(self.thr, u, side="left")
        return r * u - self.off[r]


def _split(t, k, L, tables) -> int:
    """The first advance y of an optimal plan for t > L steps (the largest optimal y)."""
    if k == 0:
        return t - L  # nothing can be kept: advance straight to the last leaf
    if t <= (k + 1) * L:  # every L steps fits: y ≤ L and t − y ≥ L reach the floor t − L
        return min(L, t - L)
    for kk in (k, k - 1):
        if (kk, L) not in tables or tables[(kk, L)].thr[-1] < t:
            tables[(kk, L)] = _Table(kk, L, t)
    y = np.arange(1, t, dtype=np.int64)
    cost = y + tables[(k - 1, L)](t - y) + tables[(k, L)](y)
    return int(y[len(y) - 1 - int(np.argmin(cost[::-1]))])


def recursive_plan(T: int, L: int, k: int) -> list:
    """The actions of an optimal plan for P(T, k) with leaves ≤ L (iterative: no recursion limit)."""
    out, tables = [], {}
    work = [("solve", 0, T, k)]
    while work:
        item = work.pop()
        if item[0] != "solve":
            out.append(item)
            continue
        _, a, t, kk = item
        if t <= L:
            out.append(("leaf", a, a + t))
            continue
        y = _split(t, kk, L, tables)
        right = [("leaf", a + y, a + t)] if t - y <= L else \
            [("store", a + y), ("solve", a + y, t - y, kk - 1), ("free", a + y)]
        # run in this order: advance, the right part, then the left part from a
        work.extend(reversed([("advance", a, a + y), *right, ("restore", a), ("solve", a, y, kk)]))
    return out


# ---------------------------------------------------------------------- the schedules
def store_all(T: int) -> Plan:
    return Plan.of(T, [("leaf", 0, T)], "store all")


def every(T: int, n: int) -> Plan:
    """Keep the states every n steps (one advance pass), then each segment as a leaf.

    Segments end at T, T-n, T-2n, …: a shorter one is the first, so the last (never
    advanced) is a whole n steps."""
    n = max(1, min(n, T))
    bounds = [0] + list(range(T % n or n, T + 1, n))
    segs = list(zip(bounds[:-1], bounds[1:]))
    acts = []
    for i, (a, b) in enumerate(segs[:-1]):
        acts.append(("advance", a, b))
        if i < len(segs) - 2:  # the last segment starts from the current states
            acts.append(("store", b))
    for i in reversed(range(len(segs))):
        a, b = segs[i]
        if i != len(segs) - 1:
            acts.append(("restore", a))
        acts.append(("leaf", a, b))
        if 0 < a and i < len(segs) - 1:
            acts.append(("free", a))
    return Plan.of(T, acts, f"every {n}")


def binomial(T: int, slots: int) -> Plan:
    """Griewank's revolve: at most ``slots`` checkpoints, leaves of one step."""
    slots = min(slots, max(T - 1, 0))
    return Plan.of(T, recursive_plan(T, 1, slots), f"binomial, {slots} slots")


def best_split(T: int, nbytes: int, fp: Footprint) -> tuple:
    """(advanced steps, L, k) with the fewest advanced steps within ``nbytes`` (then the least memory)."""
    if nbytes < fp.minimum(T):
        raise ArgumentError(f"memory budget of {nbytes} bytes is below the minimum for T={T}, B={fp.B}: "
                         f"{fp.minimum(T)} bytes (one step's activations and one set of states)")
    best = None
    for L in range(1, T + 1):
        room = nbytes - fp.memory(L, 0)
        if room < 0:
            break
        k = min(room // fp.state if fp.state else T, -(-T // L) - 1)  # more slots than segments: unused
        cand = (advances(T, k, L), fp.memory(L, k), L, k)
        if best is None or cand < best:
            best = cand
    return best[0], best[2], best[3]


def budget(T: int, nbytes: int, fp: Footprint) -> Plan:
    """The fewest advanced steps within ``nbytes``; among plans that advance as few steps, the
    one with the fewest native calls: a one-pass ``every(T, n)`` plan when it ties the DP (each
    call costs a fixed time that the step count does not see)."""
    adv, L, k = best_split(T, nbytes, fp)
    plan = Plan.of(T, recursive_plan(T, L, k), f"budget: leaves ≤ {L}, ≤ {k} checkpoints")
    n = _largest_every(T, nbytes, fp)
    if n is not None:
        flat = every(T, n)
        if flat.memory(fp) <= nbytes and (flat.advanced, len(flat.actions)) <= (plan.advanced, len(plan.actions)):
            return Plan.of(T, flat.actions, f"budget: every {n} (leaves ≤ {flat.max_leaf}, "
                                            f"≤ {flat.max_held} checkpoints)")
    return plan


def _largest_every(T: int, nbytes: int, fp: Footprint):
    """The longest segment n whose ``every(T, n)`` plan fits ``nbytes`` (its fewest advances)."""
    for n in range(T, 0, -1):
        segs = -(-T // n)
        if fp.memory(n, max(segs - 2, 0)) <= nbytes:
            return n
    return None


def make_plan(memory, T: int, fp: Footprint) -> Plan:
    """The plan of a memory spec for T steps (``fp``: the model's sizes at the call's batch)."""
    memory = schedule(memory)
    if isinstance(memory, StoreAll):
        return store_all(T)
    if isinstance(memory, Every):
        return every(T, memory.segment(T))
    if isinstance(memory, Binomial):
        return binomial(T, memory.slots)
    if isinstance(memory, Budget):
        return budget(T, memory.nbytes, fp)
    raise TypeError(f"no plan for {memory!r}")


def sqrt_segment(T: int) -> int:
    """⌈√T⌉, the segment of ``Every("sqrt")``."""
    r = isqrt(T)
    return max(1, r if r * r == T else r + 1)


_LR_SCHEDULES = ("ExponentialDecay", "Cosine", "Warmup")


def __getattr__(name):
    """``rc.schedules.ExponentialDecay`` etc.: the learning-rate schedules of
    :mod:`rnncomp.train.lr_schedules`, imported on first use (the training package imports
    the compiler, which imports this module)."""
    if name in _LR_SCHEDULES:
        from .train import lr_schedules
        return getattr(lr_schedules, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
