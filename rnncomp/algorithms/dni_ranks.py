"""DNI's windows on the ranks of ``distributed=``: the rows of a global batch each process
computes, and one Allreduce per window that makes every rank's update one process's.

A window's backward mixes two kinds of cotangent (:mod:`.dni`):

    the losses'     ∂(the masked mean over the call's steps)/∂·     normalised by the call's count
    the synthetic   γ ĝ(s[hi]), one row per sample                 not normalised

One process normalises the window's losses by the global batch's count S (the summed mask, or
steps × rows), a rank by its own rows' S_r.  So a rank scales its loss parts by r = S_r / S, its
share of the global mean, and leaves the synthetic parts as they are; the kept forward of the
losses gives both only together, so

    real → r·real,   real + synthetic → (real + synthetic) − (1 − r)·real

and the chunks before the losses, which have none, are linear in the cotangent carried into
them.  Every row's cotangent at the window's start, ĝ's bootstrap target, is then one
process's, and the sums over rows of the ranks add up to one process's sums:

    arena (n + m + 2):  ∂θ (n) | ĝ's gradient Σ_rows err s[lo]ᵀ, Σ_rows err (m = N² + N) | r·loss | failed
    Allreduce(SUM)      then every rank takes the same Adam step of ĝ and the same update of θ

Which windows learn, get ĝ or only carry the state is decided from the global mask, the same
on every rank, so every rank makes the same Allreduces in the same order (a rank whose rows
have no loss in a window still computes its ĝ parts and takes part).  A rank that fails in a
window says so in the arena, and every rank raises (:func:`rnncomp.train.distributed.stop`).
"""
from __future__ import annotations

import numpy as np


class Rows:
    """The rows of a global batch of ``B`` this process computes: all of them, or under
    ``distributed=`` its shard (:func:`rnncomp.train.distributed.shard`)."""

    def __init__(self, trainer, B: int, m: int):
        from ..train.distributed import shard
        self.group, self.dtype, self.B = trainer.dist, trainer.dtype, B
        self.rows = slice(0, B) if self.group is None else shard(B, self.group.size)[self.group.rank]
        self.n, self.m = trainer.flat.size, m  # the arena's slots: θ's gradient, ĝ's

    def sequences(self, d):
        """This process's rows of time-major arrays {name: (T, B, n)} (or a mask (T, B))."""
        if self.group is None or d is None:
            return d
        if isinstance(d, np.ndarray):
            return np.ascontiguousarray(d[:, self.rows])
        return {k: np.ascontiguousarray(v[:, self.rows]) for k, v in d.items()}

    def states(self, h0):
        """This process's rows of states {name: (B, n)}."""
        if self.group is None or h0 is None:
            return h0
        return {k: np.ascontiguousarray(np.asarray(v)[self.rows]) for k, v in h0.items()}

    def share(self, mine, everyone, lo: int, hi: int) -> float:
        """r = S_r / S: this process's share of the mean of the losses on steps [lo, hi)
        (``mine``: its rows of the mask, ``everyone``: the global batch's; None: no mask)."""
        if self.group is None:
            return 1.0
        if everyone is None:
            return (self.rows.stop - self.rows.start) / self.B
        return float(mine[lo:hi].sum(dtype=np.float64)) / float(everyone[lo:hi].sum(dtype=np.float64))

    def reduce(self, made, error, step: int):
        """(∂θ, ĝ's gradient or None, loss or None) of a window, summed over the ranks (this
        process's own where it is alone) from each rank's part ``made`` (:class:`.dni._Made`);
        ``error``: this rank's failure in the window instead (then every rank raises)."""
        if self.group is None:
            if error is not None:
                raise error
            return made.grads, made.module_grad, made.loss
        from ..train.distributed import stop
        n, m = self.n, self.m
        arena = self.group.arena(n + m, self.dtype)  # zeroed
        if error is None:
            arena[:n] = made.grads
            if made.module_grad is not None:
                arena[n:n + m] = made.module_grad
            arena[n + m] = made.loss or 0.0
        else:
            arena[n + m + 1] = 1
        self.group.allreduce(arena)
        if arena[n + m + 1] > 0:
            stop(self.group, arena[n + m + 1], error, step)
        return (arena[:n], None if made.module_grad is None else arena[n:n + m],
                None if made.loss is None else float(arena[n + m]))

    def gathered(self, final):
        """Every row's final states on every rank (this process's rows, the others' from them)."""
        if self.group is None:
            return final
        from ..train.distributed import gathered
        full = {k: np.zeros((self.B,) + np.shape(v)[1:], dtype=self.dtype) for k, v in final.items()}
        for k, v in final.items():
            full[k][self.rows] = v
        return gathered(self.group, full, self.dtype)
