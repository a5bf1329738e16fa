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
    """``rc.DNI(lr=1e-3, gamma=1.0)``: truncated BPTT over windows with a synthetic gradient at
    each window's end (the module trained by Adam at ``lr``, kept across calls): the windows of
    ``every`` steps in ``fit_online``, or ``Trainer(bptt=rc.Truncated(k))`` in ``fit``."""

    name = "DNI"

    def __init__(self, lr: float = 1e-3, gamma: float = 1.0):
        if not (lr > 0 and 0 <= gamma <= 1):
            raise ValueError(f"DNI(lr={lr!r}, gamma={gamma!r}): need lr > 0 and 0 <= gamma <= 1")
        self.lr, self.gamma = float(lr), float(gamma)
        self.flat, self.updates, self.opt = None, 0, None  # the module's [A.ravel(), c], its Adam

    def __repr__(self) -> str:
        return f"rc.DNI(lr={self.lr:g}, gamma={self.gamma:g})"

    @property
    def module(self):
        """(A, c) of the trained synthetic-gradient module (None before training)."""
        if self.flat is None:
            return None
        N = int(np.sqrt(self.flat.size + 0.25) - 0.5)  # size N² + N
        return self.flat[:N * N].reshape(N, N), self.flat[N * N:]

    def restore(self, A, c, opt_state, updates) -> None:
        """The module and its optimizer as a checkpoint holds them (:mod:`.saving`)."""
        from ..train.optim import Adam
        self.flat = np.concatenate([np.asarray(A).ravel(), np.asarray(c)])
        self.opt, self.updates = Adam(self.lr), int(updates)
        self.opt.init(self.flat)
        if opt_state:
            self.opt.load_state_dict(opt_state)

    def prepare(self, step):
        raise TypeError("DNI runs backward over windows (fit_online, or fit with bptt=rc.Truncated); "
                        "it has no forward-only step")

    def check_truncation(self, bptt) -> None:
        """DNI's windows do not overlap: a synthetic gradient at s[lo] predicts the gradient of
        everything from lo on, which an overlapping window (k2 > k1) would count twice."""
        if bptt is not None and bptt.k2 != bptt.k1:
            raise ValueError(f"{self!r} with bptt=rc.Truncated(k1={bptt.k1}, k2={bptt.k2}): DNI needs "
                             "non-overlapping windows, k2 = k1")

    def fit_windows(self, trainer, call, every, apply):
        """Train over the stream's windows (``fit_online``); returns the final states."""
        return self.windows(trainer, call.inputs, call.targets, call.h0 or None, every, apply)

    def fit_truncated(self, trainer, x, t, mask, h0):
        """``Trainer.fit`` with ``bptt=rc.Truncated(k)``: one batch of sequences; returns (mean
        loss over the updates, final states), as the trainer's truncated BPTT does."""
        from .online import apply
        if trainer.dist is not None:
            raise ValueError(f"{self!r} with distributed training: the synthetic-gradient module is per process "
                             "and its updates are not reduced across ranks; train DNI on one process")
        losses = []
        final = self.windows(trainer, x, t, h0, trainer.bptt.k1,
                             lambda g, loss: apply(trainer, self, g, loss, losses), mask)
        return (float(np.mean(losses)) if losses else float("nan")), final

    def windows(self, trainer, x, t, h0, every, apply, mask=None):
        """BPTT over each window [lo, lo + every) of the (T, B, n) sequences ``x``, ``t``, its
        final-state cotangent seeded with γ ĝ(s[hi]) (0 after the last window); ĝ(s[lo]) is
        trained towards the cotangent at the window's start.  ``apply(g, loss)`` updates the
        cell's parameters (not for a window that ``mask`` zeroes: it only carries the state)."""
        st, dt = trainer.cell.step, trainer.dtype
        T, B = next(iter(x.values())).shape[:2]
        names = list(st.states)
        offs = np.cumsum([0] + [st.states[s] for s in names])
        N = int(offs[-1])
        if self.flat is None or self.flat.size != N * N + N:
            self.restore(np.zeros((N, N), dtype=dt), np.zeros(N, dtype=dt), {}, 0)
        A, c = self.module
        join = lambda d: np.concatenate([np.asarray(d[s]) for s in names], axis=1)  # noqa: E731
        split = lambda v: {s: np.ascontiguousarray(v[:, offs[i]:offs[i + 1]]) for i, s in enumerate(names)}  # noqa: E731
        state, prev = h0, None  # prev: s[lo], the last window's end
        for lo in range(0, T, every):
            cut = lambda d: {n: v[lo:lo + every] for n, v in d.items()}  # noqa: E731
            m = None if mask is None else mask[lo:lo + every]
            if m is not None and not m.any():  # padding: carry the state, learn nothing
                state, prev = trainer.model.forward(trainer.params, cut(x), h0=state)[1], None
                continue
            kept = trainer.model.forward(trainer.params, cut(x), h0=state, targets=cut(t), keep=True, wrt=(), mask=m)
            end = join(kept.final)
            seed = self.gamma * (end @ A.T + c)
            if mask is not None:  # no synthetic future for a sample whose later steps are all masked
                seed *= mask[lo + every:].any(axis=0)[:, None]
            res = kept.backward(d_final=split(seed) if hi_left(lo, every, T) else None)
            if prev is not None:  # bootstrap: ĝ(s[lo]) should be δs[lo]; ½|ĝ − δs|² by Adam
                err = prev @ A.T + c - join(res.h0)
                self.updates += 1
                self.opt.step(self.flat, np.concatenate([(err.T @ prev).ravel(), err.sum(axis=0)]), self.updates)
            apply(np.concatenate([res.params[p].ravel() for p in trainer.names]), float(kept.loss))
            prev, state = end, {s: np.array(v) for s, v in kept.final.items()}
        return state


def hi_left(lo, every, T) -> bool:
    """Whether steps follow the window starting at ``lo`` (the last window's end has no future)."""
    return lo + every < T
