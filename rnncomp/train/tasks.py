"""Built-in tasks: time-major (inputs, targets, mask) arrays made on the spot, no downloads.

    >>> x, y, m = adding(T=10, N=4, seed=0)
    >>> x.shape, y.shape, m.shape, float(m.sum())
    ((10, 4, 2), (10, 4, 1), (10, 4), 4.0)
"""
from __future__ import annotations

import numpy as np


def sine(T=50, N=64, seed=0, dtype="float32"):
    """Predict the next value of sines with random frequency and phase (every step)."""
    rng = np.random.default_rng(seed)
    t = np.arange(T + 1)[:, None]
    w, ph = rng.uniform(0.1, 0.5, N), rng.uniform(0, 2 * np.pi, N)
    s = np.sin(w * t + ph)[:, :, None].astype(dtype)
    return s[:-1], s[1:], None


def adding(T=100, N=256, seed=0, dtype="float32"):
    """The adding problem (Hochreiter & Schmidhuber 1997): input (value, marker); the target,
    at the last step only, is the sum of the two marked values.  Predicting 1 gives MSE ≈ 1/6·½."""
    rng = np.random.default_rng(seed)
    x = np.zeros((T, N, 2), dtype=dtype)
    x[:, :, 0] = rng.uniform(0, 1, (T, N))
    for n in range(N):
        i, j = rng.choice(T // 2, 1)[0], T // 2 + rng.choice(T - T // 2, 1)[0]
        x[[i, j], n, 1] = 1
    y = np.zeros((T, N, 1), dtype=dtype)
    y[-1, :, 0] = (x[:, :, 0] * x[:, :, 1]).sum(axis=0)
    mask = np.zeros((T, N), dtype=dtype)
    mask[-1] = 1
    return x, y, mask


TASKS = {"sine": sine, "adding": adding}
