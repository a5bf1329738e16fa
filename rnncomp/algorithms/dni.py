"""Decoupled neural interfaces (Jaderberg et al. 2017): a synthetic gradient at the truncation
boundary, trained by bootstrapping.

Truncated BPTT over a window [lo, hi) seeds the final states' cotangent with 0, so nothing
beyond the window is learned.  DNI seeds it with a prediction instead, a linear module per
sample over all state units,

    δ̂s[hi] = ĝ(s[hi]) = A·s[hi] + c          (≈ ∂(all later windows' losses)/∂s[hi])

and trains ĝ on the cotangent BPTT computes at the window's start, which already holds this
window's losses and γ·ĝ at its end: the target of ĝ(s[lo]) is δs[lo] (a bootstrap, like a
TD target; γ ≤ 1 discounts the far future).  The window's backward is the compiled model's
VJP (``forward(keep=True)`` then ``backward(d_final=...)``), so DNI runs on any backend.
"""
from __future__ import annotations

import numpy as np

from .base import Algorithm


class DNI(Algorithm):
    """``rc.DNI(lr=1e-3, gamma=1.0)``: in ``fit_online``, truncated BPTT over each window of
    ``every`` steps with a synthetic gradient at its end (trained by Adam at ``lr``)."""

    name = "DNI"

    def __init__(self, lr: float = 1e-3, gamma: float = 1.0):
        if not (lr > 0 and 0 <= gamma <= 1):
            raise ValueError(f"DNI(lr={lr!r}, gamma={gamma!r}): need lr > 0 and 0 <= gamma <= 1")
        self.lr, self.gamma = float(lr), float(gamma)
        self.module = None  # (A, c) after fit_online: the trained synthetic-gradient module

    def __repr__(self) -> str:
        return f"rc.DNI(lr={self.lr:g}, gamma={self.gamma:g})"

    def prepare(self, step):
        raise TypeError("DNI runs backward over windows (fit_online); it has no forward-only step")

    def fit_windows(self, trainer, call, every, apply):
        """Train over the stream's windows; returns the final states."""
        from ..train.optim import Adam

        st, dt, B = trainer.cell.step, trainer.dtype, call.B
        names = list(st.states)
        offs = np.cumsum([0] + [st.states[s] for s in names])
        N = int(offs[-1])
        if self.module is None or self.module[0].shape != (N, N):
            self.module = (np.zeros((N, N), dtype=dt), np.zeros(N, dtype=dt))
        A, c = self.module
        flat = np.concatenate([A.ravel(), c])  # the module's parameters, one vector for Adam
        opt = Adam(self.lr)
        opt.init(flat)
        A, c = flat[:N * N].reshape(N, N), flat[N * N:]
        self.module = (A, c)
        join = lambda d: np.concatenate([np.asarray(d[s]) for s in names], axis=1)  # noqa: E731
        split = lambda v: {s: np.ascontiguousarray(v[:, offs[i]:offs[i + 1]]) for i, s in enumerate(names)}  # noqa: E731
        state, prev, k = call.h0 or None, None, 0  # prev: s[lo], the last window's end
        for lo in range(0, call.T, every):
            cut = lambda d: {n: v[lo:lo + every] for n, v in d.items()}  # noqa: E731
            kept = trainer.model.forward(trainer.params, cut(call.inputs), h0=state, targets=cut(call.targets),
                                         keep=True, wrt=())
            end = join(kept.final)
            pred = end @ A.T + c
            res = kept.backward(d_final=split(self.gamma * pred) if hi_left(lo, every, call.T) else None)
            g = np.concatenate([res.params[p].ravel() for p in trainer.names])
            if prev is not None:  # bootstrap: ĝ(s[lo]) should be δs[lo]; ½|ĝ − δs|² by Adam
                err = prev @ A.T + c - join(res.h0)
                k += 1
                opt.step(flat, np.concatenate([(err.T @ prev).ravel(), err.sum(axis=0)]), k)
            apply(g, float(kept.loss))
            prev, state = end, {s: np.array(v) for s, v in kept.final.items()}
        return state


def hi_left(lo, every, T) -> bool:
    """Whether steps follow the window starting at ``lo`` (the last window's end has no future)."""
    return lo + every < T
