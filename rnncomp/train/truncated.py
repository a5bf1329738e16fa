"""Truncated BPTT(k1, k2): the windows of one batch of sequences, the state carried across them.

:class:`Truncated` is the user's choice (``rc.Trainer(..., bptt=rc.Truncated(k1, k2))``);
:func:`sequence` runs one batch of whole sequences through a trainer's ``train_step``:
full BPTT when no truncation is asked for (or k1 covers the sequence), else one update
every k1 steps from the last k1 steps' losses, back-propagated through the last k2 steps.

    >>> Truncated(5, 10)
    Truncated(k1=5, k2=10)
    >>> Truncated(4).k2
    4
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ArgumentError


@dataclass(frozen=True)
class Truncated:
    """Truncated BPTT(k1, k2) (Williams & Peng 1990): every k1 steps, back-propagate the
    last k1 steps' losses through the last k2 steps; the state is carried across windows.
    k2 must be a multiple of k1 (k1 = k2 = T is full BPTT)."""

    k1: int
    k2: int | None = None

    def __post_init__(self):
        k2 = self.k1 if self.k2 is None else self.k2
        whole = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731 - True was k1 = k2 = 1
        if not (whole(self.k1) and self.k1 >= 1 and whole(k2) and k2 >= self.k1):
            raise ArgumentError(f"Truncated(k1={self.k1!r}, k2={self.k2!r}): need integers k2 >= k1 >= 1")
        if k2 % self.k1:
            raise ArgumentError(f"Truncated(k1={self.k1}, k2={k2}): k2 must be a multiple of k1")
        object.__setattr__(self, "k2", k2)


def truncation(bptt):
    """``rc.Trainer(bptt=...)``: None (full BPTT) or a :class:`Truncated` (an int or a string
    failed at the first ``fit`` with "'int' object has no attribute 'k1'")."""
    if bptt is None or isinstance(bptt, Truncated):
        return bptt
    raise ArgumentError(f"Trainer: bptt must be None (full BPTT) or rc.Truncated(k1, k2), got {bptt!r}")


def sequence(trainer, x, t, mask, h0=None, goes_on=False):
    """One batch of whole sequences from the states ``h0`` (None: the initial states):
    full BPTT, or truncated windows with the state carried.  Returns (mean loss over the
    updates, final states); steps whose mask is 0 add nothing to any gradient.  ``goes_on``:
    the next batch continues these sequences (only DNI's updates depend on it)."""
    T = next(iter(x.values())).shape[0]
    if trainer.bptt is not None and hasattr(trainer.gradient, "fit_truncated"):  # DNI (algorithms/dni.py)
        return trainer.gradient.fit_truncated(trainer, x, t, mask, h0, goes_on)
    if trainer.bptt is None or trainer.bptt.k1 >= T:
        if mask is not None and not mask.any():  # nothing to learn from: carry the state only
            return float("nan"), trainer.model.forward(trainer.params, x, h0=h0)[1]
        return trainer.train_step(x, t, h0=h0, mask=mask)
    k1, k2 = trainer.bptt.k1, trainer.bptt.k2
    B = next(iter(x.values())).shape[1]
    states, losses = {0: h0}, []  # the state at each window boundary
    for lo in range(0, T, k1):
        hi = min(lo + k1, T)
        start = max(0, lo - (k2 - k1))  # a boundary: k2 - k1 is a multiple of k1
        m = np.zeros((hi - start, B), dtype=trainer.dtype)
        m[lo - start:] = 1  # this window's losses only; gradients flow back to `start`
        if mask is not None:
            m *= mask[start:hi]
        cut = lambda d: {k: v[start:hi] for k, v in d.items()}  # noqa: E731
        if m.sum() > 0:
            loss, final = trainer.train_step(cut(x), cut(t), h0=states[start], mask=m)
            losses.append(loss)
        else:
            _, final = trainer.model.forward(trainer.params, cut(x), h0=states[start])
        states[hi] = final  # carried, never reset within a sequence
        for old in [b for b in states if b < hi - k2]:
            del states[old]
    return (float(np.mean(losses)) if losses else float("nan")), states[T]
