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
    if T < 2:
        from ..errors import ArgumentError
        raise ArgumentError(f"the adding task needs T >= 2 (a marked value in each half of the sequence), got T={T}")
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


def delayed_copy(T=32, N=256, delay=6, seed=0, dtype="float32"):
    """Recall the input ``delay`` steps ago: random ±1 inputs, y[t] = x[t − delay] (0 before).
    Predicting 0 gives MSE (T − delay)/T (examples/dni_copy.py)."""
    rng = np.random.default_rng(seed)
    x = rng.choice(np.array([-1.0, 1.0], dtype=dtype), size=(T, N, 1))
    y = np.zeros_like(x)
    y[delay:] = x[:-delay]
    return x, y, None


def repeat_copy(L=6, repeats=2, N=256, seed=0, dtype="float32", vary=True):
    """The repeat-copy task (Graves et al. 2014; Jaderberg et al. 2017's DNI experiments) with
    one bit per step: L random ±1 bits (channel 0), then one step that marks the end (channel 1)
    with the repeat count R ∈ 1 … ``repeats`` as R / repeats (channel 2), then the pattern R
    times as targets and 0 after them, inputs 0 (``vary=False``: R = ``repeats`` always).  T = L + 1 + repeats·L; the mask is 1 on the
    repeats·L steps after the marker.  Recalling bit i first needs a dependency of L + 1 steps,
    its r-th repeat r·L + 1; the count, up to repeats·L steps.  Predicting 0 gives MSE
    E[R]/repeats on the masked steps, sign accuracy 0.5 on the recall steps
    (examples/dni_repeat_copy.py).

    >>> x, y, m = repeat_copy(L=3, repeats=2, N=2, seed=0)
    >>> x.shape, y.shape, m.shape, m.sum(axis=0)
    ((10, 2, 3), (10, 2, 1), (10, 2), array([6., 6.], dtype=float32))
    """
    rng = np.random.default_rng(seed)
    T = L + 1 + repeats * L
    bits = rng.choice(np.array([-1.0, 1.0]), size=(L, N))
    R = rng.integers(1, repeats + 1, N) if vary else np.full(N, repeats)
    x = np.zeros((T, N, 3), dtype=dtype)
    x[:L, :, 0] = bits
    x[L, :, 1], x[L, :, 2] = 1, R / repeats
    y = np.zeros((T, N, 1), dtype=dtype)
    y[L + 1:, :, 0] = np.tile(bits, (repeats, 1))
    y[:, :, 0] *= np.arange(T)[:, None] < L + 1 + R * L  # 0 after the R-th repeat
    mask = np.zeros((T, N), dtype=dtype)
    mask[L + 1:] = 1
    return x, y, mask


TASKS = {"sine": sine, "adding": adding}


def baseline(task: str, x, y, mask, xt, yt, mt) -> tuple:
    """``(what, loss)``: the held-out loss of a prediction that learns nothing, in the zoo
    cells' cost (½ Σ over units of the squared error, the masked mean over steps).  sine:
    repeat the current value; adding: the mean target of the training data (≈ always 1).
    ``x, y, mask``: training data; ``xt, yt, mt``: held out.

    >>> x, y, m = adding(T=50, N=4000, seed=1)
    >>> what, loss = baseline("adding", x, y, m, x, y, m)
    >>> what, round(loss, 2)   # Var(U + V) / 2 = (1/6) / 2 for two uniform U, V
    ('predicting the mean target', 0.08)
    """
    w = np.ones(yt.shape[:2]) if mt is None else np.asarray(mt, dtype=float)
    if task == "sine":
        what, pred = "repeating the current value", xt
    else:
        m = np.ones(y.shape[:2]) if mask is None else mask
        what, pred = "predicting the mean target", (y * m[..., None]).sum(axis=(0, 1)) / m.sum()
    cost = ((pred - yt) ** 2).sum(axis=-1) / 2
    return what, float((cost * w).sum() / w.sum())
