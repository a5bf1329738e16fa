"""Optimizers that update every parameter at once.

Parameters and gradients live in one flat vector each (the parameter dict holds views
into it), so an update is a handful of vectorised NumPy operations whatever the number
of parameters: no Python loop per parameter.

    >>> import numpy as np
    >>> w = np.array([1.0, -2.0]); opt = SGD(lr=0.5); opt.init(w)
    >>> opt.step(w, np.array([1.0, 1.0]), step=1); w
    array([ 0.5, -2.5])
"""
from __future__ import annotations

import math

import numpy as np

TINY_SUMSQ = 2.0 ** -960  # a sum of squares below it may have lost terms to underflow


def global_norm(g: np.ndarray) -> float:
    """‖g‖₂ summed in float64, without overflow or underflow: where the plain sum of squares
    overflows (finite elements above ~1e154) or may have underflowed, the elements are
    divided by p, the power of two at the largest magnitude (exact), and the norm is
    p·sqrt(Σ (g/p)²).  The native update computes it the same way."""
    g64 = g if g.dtype == np.float64 else g.astype(np.float64)
    with np.errstate(over="ignore", under="ignore"):
        s = float(np.dot(g64, g64))
    if TINY_SUMSQ <= s < math.inf:
        return math.sqrt(s)
    m = float(np.abs(g64).max()) if g64.size else 0.0
    if not math.isfinite(m):
        return m
    p = max(math.ldexp(1.0, math.frexp(m)[1] - 1), 2.0 ** -1022)
    q = g64 / p
    return math.sqrt(float(np.dot(q, q))) * p


class Optimizer:
    """Base: ``init(flat)`` allocates state, ``step(flat, grad, step)`` updates in place."""

    def __init__(self, lr=1e-3, weight_decay=0.0, schedule=None):
        if lr <= 0:
            raise ValueError(f"{type(self).__name__}: lr must be positive, got {lr}")
        self.lr, self.weight_decay, self.schedule = float(lr), float(weight_decay), schedule
        self.state: dict = {}

    def rate(self, step: int) -> float:
        """The learning rate at ``step`` (1-based): ``schedule(step) * lr`` if a schedule is set."""
        return self.lr * (self.schedule(step) if self.schedule else 1.0)

    def init(self, flat: np.ndarray) -> None:
        self.state = {}

    def _decayed(self, flat, grad):
        return grad + self.weight_decay * flat if self.weight_decay else grad

    def state_dict(self) -> dict:
        return {k: v.copy() for k, v in self.state.items()}

    def load_state_dict(self, state: dict) -> None:
        self.state = {k: np.array(v) for k, v in state.items()}


class SGD(Optimizer):
    def __init__(self, lr=1e-2, momentum=0.0, nesterov=False, **kw):
        super().__init__(lr, **kw)
        self.momentum, self.nesterov = float(momentum), bool(nesterov)

    def init(self, flat):
        self.state = {"v": np.zeros_like(flat)} if self.momentum else {}

    def step(self, flat, grad, step):
        g = self._decayed(flat, grad)
        if self.momentum:
            v = self.state["v"]
            v *= self.momentum
            v += g
            g = g + self.momentum * v if self.nesterov else v
        flat -= self.rate(step) * g


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015); ``decoupled=True`` is AdamW (Loshchilov & Hutter 2019)."""

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, decoupled=False, **kw):
        super().__init__(lr, **kw)
        self.b1, self.b2 = map(float, betas)
        self.eps, self.decoupled = float(eps), bool(decoupled)

    def init(self, flat):
        self.state = {"m": np.zeros_like(flat), "v": np.zeros_like(flat)}

    def step(self, flat, grad, step):
        g = grad if self.decoupled else self._decayed(flat, grad)
        m, v = self.state["m"], self.state["v"]
        m *= self.b1
        m += (1 - self.b1) * g
        v *= self.b2
        v += (1 - self.b2) * g * g
        lr = self.rate(step)
        mhat = m / (1 - self.b1 ** step)
        vhat = v / (1 - self.b2 ** step)
        if self.decoupled and self.weight_decay:
            flat -= lr * self.weight_decay * flat
        flat -= lr * mhat / (np.sqrt(vhat) + self.eps)


class AdamW(Adam):
    def __init__(self, lr=1e-3, weight_decay=1e-2, **kw):
        super().__init__(lr, decoupled=True, weight_decay=weight_decay, **kw)


class RMSprop(Optimizer):
    def __init__(self, lr=1e-3, alpha=0.99, eps=1e-8, **kw):
        super().__init__(lr, **kw)
        self.alpha, self.eps = float(alpha), float(eps)

    def init(self, flat):
        self.state = {"s": np.zeros_like(flat)}

    def step(self, flat, grad, step):
        g = self._decayed(flat, grad)
        s = self.state["s"]
        s *= self.alpha
        s += (1 - self.alpha) * g * g
        flat -= self.rate(step) * g / (np.sqrt(s) + self.eps)


class Adagrad(Optimizer):
    def __init__(self, lr=1e-2, eps=1e-10, **kw):
        super().__init__(lr, **kw)
        self.eps = float(eps)

    def init(self, flat):
        self.state = {"s": np.zeros_like(flat)}

    def step(self, flat, grad, step):
        g = self._decayed(flat, grad)
        s = self.state["s"]
        s += g * g
        flat -= self.rate(step) * g / (np.sqrt(s) + self.eps)
