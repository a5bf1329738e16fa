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

Overlapping windows, ``rc.Truncated(k1, k2)`` with k2 > k1: every k1 steps the last k1 steps'
losses are back-propagated through the last k2 steps (Williams & Peng), and ĝ(s[hi]) is
injected at the window's end.  Each step τ must get every later loss once.  The windows'
real losses reach τ up to the end H(τ) of the last window whose k2 steps contain τ, so the
synthetic gradient at H stands for the losses after H and is credited to the steps τ with
that H: the first k1 steps of the window ending at H (all of them when k2 = k1; none in the
first windows, whose k2 steps would start before step 0: their steps meet a later boundary;
all steps of a batch's last window where the next batch continues it: none meets a later one).
The window runs as its k1-step chunks; the cotangents of the losses (credited to every
chunk) and of ĝ (to the first chunk only) are carried back separately:

    chunk c_j = [lo_j, lo_j + k1):   (δr[lo_j], g_r) = vjp_j(δr[lo_j + k1]),  δr[hi] = 0 + losses of the last chunk
                                      δg[lo_j] = vjp_j(δg[lo_j + k1]),         δg[hi] = γ ĝ(s[hi])
    ∂θ = Σ_j g_r(c_j) + g(c_0; δg)    and ĝ(s[lo]) is trained towards δr[lo] + δg[lo], lo = hi − k1.

Under ``distributed=`` each rank runs every window on its rows of the global batch, its losses'
parts scaled by its share of the global mean and its synthetic parts not, and one Allreduce per
window sums ∂θ and ĝ's gradient (:mod:`.dni_ranks`): every rank's θ and ĝ are one process's.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backends.validate import forward_targets
from ..checks import real
from .base import Algorithm
from .dni_ranks import Rows


class DNI(Algorithm):
    """``rc.DNI(lr=1e-3, gamma=1.0)``: truncated BPTT over windows with a synthetic gradient at
    each window's end (the module trained by Adam at ``lr``, kept across calls): the windows of
    ``every`` steps in ``fit_online``, or ``Trainer(bptt=rc.Truncated(k))`` in ``fit``."""

    name = "DNI"

    def __init__(self, lr: float = 1e-3, gamma: float = 1.0):
        self.lr, self.gamma = real("DNI", "lr", lr, above=0), real("DNI", "gamma", gamma, at_least=0, at_most=1)
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

    def check_truncation(self, bptt, step=None) -> None:
        """Overlapping windows (k2 > k1) run their first k2 − k1 steps without a loss, as a
        forward without targets: not for a cell whose updates read one (teacher forcing)."""
        if bptt is None or bptt.k2 == bptt.k1 or step is None:
            return
        read = forward_targets(step)
        if read:
            raise ValueError(f"{self!r} with bptt=rc.Truncated(k1={bptt.k1}, k2={bptt.k2}): cell {step.name!r} "
                             f"reads target {', '.join(map(repr, read))} in its updates (teacher forcing), and "
                             "the steps before a window's losses run without targets; use k2 = k1")

    def fit_windows(self, trainer, call, every, apply, continued=False, goes_on=False):
        """Train over the stream's windows (``fit_online``); returns the final states.
        ``continued``: these steps go on from the last call's (ĝ at their start is trained,
        as at any boundary inside a stream); ``goes_on``: more of the stream follows (the
        last window's end is seeded with ĝ, as any window's inside a stream)."""
        return self.windows(trainer, call.inputs, call.targets, call.h0 or None, every, apply,
                            continued=continued, goes_on=goes_on)

    def fit_truncated(self, trainer, x, t, mask, h0, goes_on=False):
        """``Trainer.fit`` with ``bptt=rc.Truncated(k1, k2)``: one batch of sequences; returns
        (mean loss over the updates, final states), as the trainer's truncated BPTT does.
        ``h0`` given (``fit(stateful=True)``: the previous batch's final states) continues a
        stream, ``goes_on``: the next batch continues this one (see :meth:`windows`)."""
        from .online import apply
        losses = []
        final = self.windows(trainer, x, t, h0, trainer.bptt.k1,
                             lambda g, loss: apply(trainer, self, g, loss, losses), mask, trainer.bptt.k2,
                             continued=h0 is not None, goes_on=goes_on)
        return (float(np.mean(losses)) if losses else float("nan")), final

    def synthetic(self, end):
        """γ ĝ(s) = γ (A s + c) for the joined final states ``end`` (B, N)."""
        A, c = self.module
        return self.gamma * (end @ A.T + c)

    def module_grad(self, start, target) -> np.ndarray:
        """The gradient of ½|ĝ(s[lo]) − δs[lo]|² (the bootstrap) with respect to [A.ravel(), c],
        summed over the rows of ``start`` (B, N) and ``target`` (B, N)."""
        A, c = self.module
        err = start @ A.T + c - target
        return np.concatenate([(err.T @ start).ravel(), err.sum(axis=0)])

    def learn(self, g) -> None:
        """One Adam step of ĝ from its gradient ``g`` (:meth:`module_grad`, summed over the ranks)."""
        self.updates += 1
        self.opt.step(self.flat, g, self.updates)

    def windows(self, trainer, x, t, h0, k1, apply, mask=None, k2=None, *, continued=False, goes_on=False):
        """Truncated BPTT(k1, k2) over the (T, B, n) sequences ``x``, ``t``, each window's
        final-state cotangent seeded with γ ĝ(s[hi]) (none after the last window unless the
        stream ``goes_on`` in a later call); ĝ(s[lo]) is trained towards the cotangent at the
        start of the window's losses (at step 0 too where these steps ``continued`` a stream:
        ĝ(s[0]) seeded the previous piece's last window).  ``apply(g, loss)`` updates the
        cell's parameters (not for a window that ``mask`` zeroes: it only carries the state).
        Under ``distributed=`` every rank passes the global batch and computes its rows; the
        final states of every row are returned on every rank."""
        k2 = k1 if k2 is None else k2
        st = trainer.cell.step
        T, B = next(iter(x.values())).shape[:2]
        names = list(st.states)
        offs = np.cumsum([0] + [st.states[s] for s in names])
        N = int(offs[-1])
        if self.flat is None or self.flat.size != N * N + N:
            self.restore(np.zeros((N, N), dtype=trainer.dtype), np.zeros(N, dtype=trainer.dtype), {}, 0)
        io = _Joined(names, offs)
        rows = Rows(trainer, B, self.flat.size)  # distributed=: this rank's shard, the global mask decides
        data = _Batch(rows.sequences(x), rows.sequences(t), rows.sequences(mask), mask)
        states = {0: rows.states(h0)}  # the state at each boundary, carried, never reset within a sequence
        for lo in range(0, T, k1):
            hi = min(lo + k1, T)
            if mask is not None and not mask[lo:hi].any() and not self._future(mask, hi, st, goes_on):
                # padding, or no synthetic future: carry the state, learn nothing
                states[hi] = trainer.model.forward(trainer.params, _cut(data.x, lo, hi), h0=states[lo])[1]
            else:
                span = (max(0, lo - (k2 - k1)), lo, hi, k1, k2)
                states[hi] = self._update(trainer, data, states, span, io, apply, (continued, goes_on), rows)
            for old in [b for b in states if b < hi - k2]:
                del states[old]
        return rows.gathered(states[T])

    def _future(self, mask, hi, step, goes_on=False) -> bool:
        """Whether a window without losses still learns: a synthetic gradient at its end (γ > 0,
        later steps unmasked, or the stream ``goes_on``) reaches back through it, as DNI lets a
        network learn what to keep from steps that have no loss (the bits of a copy task).  Not
        for a cell whose updates read a target: its forward needs targets, and a window without
        losses has no weights."""
        later = goes_on or (hi < mask.shape[0] and bool(mask[hi:].any()))
        return self.gamma > 0 and later and not forward_targets(step)

    def _update(self, trainer, data, states, span, io, apply, piece, rows):
        """One window's update of ĝ and θ, their gradients summed over the ranks under
        ``distributed=`` (:mod:`.dni_ranks`; a rank that fails stops every rank); returns s[hi]."""
        try:
            made, error = self._window(trainer, data, states, span, io, piece, rows), None
        except Exception as e:  # noqa: BLE001 -- reported to every rank through the arena
            if rows.group is None:
                raise
            made, error = None, e
        grads, module_grad, loss = rows.reduce(made, error, trainer.step_count + 1)
        if module_grad is not None:
            self.learn(module_grad)
        if made.applies:
            apply(grads, loss)
            if rows.group is not None:
                rows.group.check_same(trainer.flat, trainer.step_count)
        return made.final

    def _window(self, trainer, data, states, span, io, piece, rows):
        """One window [start, hi) with losses on [lo, hi), on this process's rows: its part of
        the update (:class:`_Made`).  ``piece``: (continued, goes_on) of :meth:`windows`.

        Under ``distributed=`` the losses' parts are scaled by r, this rank's share of the
        global mean, the synthetic parts not (:mod:`.dni_ranks`); r = 1 on one process."""
        start, lo, hi, k1, k2 = span
        model, params = trainer.model, trainer.params
        T = next(iter(data.x.values())).shape[0]
        kept, state = [], states[start]
        for a in range(start, lo, k1):  # the chunks before the losses: no targets
            kept.append(model.forward(params, _cut(data.x, a, a + k1), h0=state, keep=True, wrt=()))
            state = _copy(kept[-1].final)
        lossy = data.everyone is None or bool(data.everyone[lo:hi].any())  # else only ĝ(s[hi]) reaches back
        r = rows.share(data.mask, data.everyone, lo, hi) if lossy else 0.0
        # a rank whose rows have no loss here runs without targets, unless its cell's forward reads them
        labelled = lossy and (r > 0 or bool(forward_targets(trainer.cell.step)))
        mask = None if data.mask is None or r == 0 else data.mask[lo:hi]  # (r = 0: its loss counts for nothing)
        labels = {"targets": _cut(data.t, lo, hi), "mask": mask} if labelled else {}
        last = model.forward(params, _cut(data.x, lo, hi), h0=state, keep=True, wrt=(), **labels)
        seed, (continued, goes_on) = None, piece
        if hi < T or goes_on:
            seed = self.synthetic(io.join(last.final))
            if data.mask is not None and hi < T and not goes_on:  # none for a sample whose later steps are all masked
                seed *= data.mask[hi:].any(axis=0)[:, None]
        # ĝ(s[hi]) credited to the first chunk; at the end of a batch the next one continues
        # (stateful fit), to the whole window: no later window of this batch holds its steps and
        # the next batch's windows start at its step 0, so ĝ(s[T]) is the only future they get
        whole = seed is not None and hi == T and k2 > k1
        credited = seed is not None and (lo - (k2 - k1) >= 0 or whole)
        real = _Part.of(last.backward(), io, trainer.names) if labelled else \
            _Part.zero(io.join(last.final), trainer.flat)
        d_real, grads = (real.h0, real.params) if r == 1 else (r * real.h0, r * real.params)  # r·real
        target = d_real
        if seed is not None:  # δs[lo] = δr + δg
            both = _Part.of(last.backward(d_final=io.split(seed)), io, trainer.names).less(real, 1 - r)  # r·real + syn
            d_syn, target = both.h0 - target, both.h0
            if credited and (whole or not kept):
                grads = both.params
            if whole:  # every chunk gets both: carry their sum back
                d_real, credited = both.h0, False
        learns = lo > 0 or continued  # ĝ(s[lo]) seeded the previous window (of this call or the last): train it
        module_grad = self.module_grad(io.join(state), target) if learns else None
        grads = np.array(grads)  # the chunks' gradients are added in place
        for j in range(len(kept) - 1, -1, -1):
            if j == 0 and credited:
                res = kept[j].backward(d_final=io.split(d_real + d_syn))
            else:
                res = kept[j].backward(d_final=io.split(d_real))
                if credited:
                    d_syn = io.join(kept[j].backward(d_final=io.split(d_syn)).h0)
            grads += io.flat(res.params, trainer.names)
            d_real = io.join(res.h0)
        loss = None if not lossy else r * float(last.loss) if labelled else 0.0  # this rank's part of the mean
        # a window without losses learns from ĝ only where it is credited
        return _Made(grads, module_grad, loss, lossy or credited or whole, _copy(last.final))


@dataclass
class _Batch:
    """A batch of sequences as this process computes it: its rows of the inputs ``x``,
    targets ``t`` and ``mask``, and the global batch's mask (``everyone``), from which every
    rank decides alike which windows learn."""
    x: dict
    t: dict
    mask: np.ndarray | None
    everyone: np.ndarray | None


@dataclass
class _Made:
    """This process's part of a window's update: ∂θ, ĝ's gradient (None where ĝ(s[lo]) is not
    trained), r·loss (None for a window without losses), whether θ is updated, and s[hi]."""
    grads: np.ndarray
    module_grad: np.ndarray | None
    loss: float | None
    applies: bool
    final: dict


@dataclass
class _Part:
    """A backward's result, flat: the joined cotangent of the initial states (B, N) and the
    parameters' gradient."""
    h0: np.ndarray
    params: np.ndarray

    @classmethod
    def of(cls, res, io, names):
        return cls(io.join(res.h0), io.flat(res.params, names))

    @classmethod
    def zero(cls, h0, flat):
        return cls(np.zeros_like(h0), np.zeros_like(flat))

    def less(self, other, f: float):
        """self − f·other (self where f = 0: one process's, bit for bit)."""
        return self if f == 0 else _Part(self.h0 - f * other.h0, self.params - f * other.params)


class _Joined:
    """States as {name: (B, n)} and as one (B, N) array, in the cell's order."""

    def __init__(self, names, offs):
        self.names, self.offs = names, offs

    def join(self, d):
        return np.concatenate([np.asarray(d[s]) for s in self.names], axis=1)

    def split(self, v):
        return {s: np.ascontiguousarray(v[:, self.offs[i]:self.offs[i + 1]]) for i, s in enumerate(self.names)}

    @staticmethod
    def flat(grads, order):
        return np.concatenate([np.asarray(grads[p]).ravel() for p in order])


def _cut(d, lo, hi):
    return {n: v[lo:hi] for n, v in d.items()}


def _copy(states):
    return {s: np.array(v) for s, v in states.items()}
