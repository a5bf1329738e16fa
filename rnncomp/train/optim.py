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

from ..checks import real
from ..errors import ArgumentError

TINY_SUMSQ = 2.0 ** -960  # a sum of squares below it may have lost terms to underflow


def global_norm(g: np.ndarray) -> float:
    """‖g‖₂ summed in float64, without overflow or underflow (:func:`scaled_norm`'s s·p; inf
    when the norm itself is past the float range)."""
    s, p = scaled_norm(g)
    return s * p


def scaled_norm(g: np.ndarray) -> tuple:
    """(s, p) with ‖g‖₂ = s·p: where the plain sum of squares overflows (finite elements above
    ~1e154) or may have underflowed, the elements are divided by p, the power of two at the
    largest magnitude (exact), and s = sqrt(Σ (g/p)²); else p = 1.  The native update computes
    it the same way."""
    g64 = g if g.dtype == np.float64 else g.astype(np.float64)
    with np.errstate(over="ignore", under="ignore"):
        s = float(np.dot(g64, g64))
    if TINY_SUMSQ <= s < math.inf:
        return math.sqrt(s), 1.0
    m = float(np.abs(g64).max()) if g64.size else 0.0
    if not math.isfinite(m):
        return m, 1.0
    p = max(math.ldexp(1.0, math.frexp(m)[1] - 1), 2.0 ** -1022)
    q = g64 / p
    return math.sqrt(float(np.dot(q, q))), p


class Optimizer:
    """Base: ``init(flat)`` allocates state, ``step(flat, grad, step)`` updates in place.

    Every hyper-parameter is checked when given (an :class:`~rnncomp.errors.ArgumentError`
    naming the optimizer, the option and the value): ``lr`` > 0, ``weight_decay`` >= 0, the
    decay rates (``momentum``, ``betas``, ``alpha``) in [0, 1), ``eps`` > 0, all finite."""

    def __init__(self, lr=1e-3, weight_decay=0.0, schedule=None):
        self.lr, self.weight_decay = self._real("lr", lr, above=0), self._real("weight_decay", weight_decay, at_least=0)
        if schedule is not None and not callable(schedule):
            raise ArgumentError(f"{type(self).__name__}: schedule must be a function of the step (1, 2, ...) "
                                f"giving a factor of lr, or a named one (rc.schedules), got {schedule!r}")
        self.schedule = schedule
        self.state: dict = {}

    def _real(self, option, v, **bounds) -> float:
        return real(type(self).__name__, option, v, **bounds)

    def _rate(self, option, v) -> float:
        """A decay rate of a running average: in [0, 1) (1 would never forget, above 1 diverges)."""
        return self._real(option, v, at_least=0, below=1)

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
        self.momentum, self.nesterov = self._rate("momentum", momentum), bool(nesterov)

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
        if np.ndim(betas) != 1 or len(betas) != 2:
            raise ArgumentError(f"{type(self).__name__}: betas must be a pair (beta1, beta2), got {betas!r}")
        self.b1, self.b2 = (self._rate(f"betas[{i}]", b) for i, b in enumerate(betas))
        self.eps, self.decoupled = self._real("eps", eps, above=0), bool(decoupled)

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
        self.alpha, self.eps = self._rate("alpha", alpha), self._real("eps", eps, above=0)

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
        self.eps = self._real("eps", eps, above=0)

    def init(self, flat):
        self.state = {"s": np.zeros_like(flat)}

    def step(self, flat, grad, step):
        g = self._decayed(flat, grad)
        s = self.state["s"]
        s += g * g
        flat -= self.rate(step) * g / (np.sqrt(s) + self.eps)
