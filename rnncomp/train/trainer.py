"""``Trainer``: training loops around a compiled model, truncated BPTT, checkpoints.

    >>> import numpy as np, rnncomp as rc
    >>> cell = rc.cells.elman(1, 8, 1)
    >>> tr = rc.Trainer(cell, optimizer=rc.Adam(1e-2), clip_norm=1.0, backend="numpy", dtype="float64")
    >>> x = np.sin(np.linspace(0, 6, 40))[:, None, None].repeat(4, 1)
    >>> h = tr.fit(x[:-1], x[1:], epochs=3, batch_size=4, verbose=0)
    >>> len(h), h[-1] < h[0]
    (3, True)
"""
from __future__ import annotations

import os
import pickle
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from ..compile import compile as rc_compile
from ..errors import RnncompError
from .optim import Adam, Optimizer


class TrainingError(RnncompError, RuntimeError):
    """Training stopped: a non-finite loss or gradient, or a checkpoint that does not fit."""


@dataclass(frozen=True)
class Truncated:
    """Truncated BPTT(k1, k2) (Williams & Peng 1990): every k1 steps, back-propagate the
    last k1 steps' losses through the last k2 steps; the state is carried across windows.
    k2 must be a multiple of k1 (k1 = k2 = T is full BPTT)."""

    k1: int
    k2: int | None = None

    def __post_init__(self):
        k2 = self.k1 if self.k2 is None else self.k2
        if not (isinstance(self.k1, int) and self.k1 >= 1 and isinstance(k2, int) and k2 >= self.k1):
            raise ValueError(f"Truncated(k1={self.k1}, k2={self.k2}): need integers k2 >= k1 >= 1")
        if k2 % self.k1:
            raise ValueError(f"Truncated(k1={self.k1}, k2={k2}): k2 must be a multiple of k1")
        object.__setattr__(self, "k2", k2)


def _as_dict(a, names, what):
    if isinstance(a, dict):
        return a
    if len(names) != 1:
        raise TrainingError(f"{what} must be a dict keyed by {', '.join(names)}")
    return {names[0]: a}


class Trainer:
    """Fit a cell's parameters: ``Trainer(cell, optimizer=rc.Adam(1e-3), clip_norm=1.0,
    bptt=rc.Truncated(k1, k2), backend="native")``."""

    def __init__(self, cell, optimizer: Optimizer | None = None, *, clip_norm=None, clip_value=None,
                 bptt: Truncated | None = None, backend="native", dtype="float32", seed=0,
                 params=None, **compile_options):
        self.cell, self.bptt = cell, bptt
        self.clip_norm, self.clip_value = clip_norm, clip_value
        self.backend, self.dtype = backend, np.dtype(dtype)
        self.model = rc_compile(cell, backend=backend, dtype=dtype, **compile_options)
        params = params if params is not None else cell.init_params(seed, dtype)
        self.names = list(cell.step.params)
        self.flat = np.concatenate([np.asarray(params[n], dtype=self.dtype).ravel() for n in self.names])
        self.params, off = {}, 0
        for n in self.names:  # views into the flat vector: one vectorised update for all
            shape = np.shape(params[n])
            size = int(np.prod(shape))
            self.params[n] = self.flat[off:off + size].reshape(shape)
            off += size
        self.optimizer = optimizer or Adam()
        self.optimizer.init(self.flat)
        self.step_count, self.history = 0, []

    # ------------------------------------------------------------------ one update
    def train_step(self, inputs, targets, h0=None, mask=None):
        """Forward + BPTT + clipping + optimizer update; returns (loss, final states)."""
        loss, grads, final = self.model.loss_and_grad(self.params, inputs, targets, h0=h0, mask=mask)
        g = np.concatenate([grads[n].ravel() for n in self.names])
        if not np.isfinite(loss) or not np.isfinite(g).all():
            bad = next((n for n in self.names if not np.isfinite(grads[n]).all()), None)
            what = f"gradient of {bad!r} (loss {loss})" if bad else f"loss ({loss})"
            raise TrainingError(f"step {self.step_count + 1}: non-finite {what}; parameters left unchanged")
        if self.clip_value is not None:
            np.clip(g, -self.clip_value, self.clip_value, out=g)
        if self.clip_norm is not None:
            norm = float(np.sqrt(np.dot(g, g)))
            if norm > self.clip_norm:
                g *= self.clip_norm / norm
        self.step_count += 1
        self.optimizer.step(self.flat, g, self.step_count)
        return loss, final

    def _sequence(self, x, t, mask):
        """One batch of whole sequences: full BPTT, or truncated windows with the state carried."""
        T = next(iter(x.values())).shape[0]
        if self.bptt is None or self.bptt.k1 >= T:
            return self.train_step(x, t, mask=mask)[0]
        k1, k2 = self.bptt.k1, self.bptt.k2
        B = next(iter(x.values())).shape[1]
        states, losses = {0: None}, []  # the state at each window boundary (None: initial)
        for lo in range(0, T, k1):
            hi = min(lo + k1, T)
            start = max(0, lo - (k2 - k1))  # a boundary: k2 - k1 is a multiple of k1
            m = np.zeros((hi - start, B), dtype=self.dtype)
            m[lo - start:] = 1  # this window's losses only; gradients flow back to `start`
            if mask is not None:
                m *= mask[start:hi]
            cut = lambda d: {k: v[start:hi] for k, v in d.items()}  # noqa: E731
            if m.sum() > 0:
                loss, final = self.train_step(cut(x), cut(t), h0=states[start], mask=m)
                losses.append(loss)
            else:
                _, final = self.model.forward(self.params, cut(x), h0=states[start])
            states[hi] = final  # carried, never reset within a sequence
            for old in [b for b in states if b < hi - k2]:
                del states[old]
        return float(np.mean(losses)) if losses else float("nan")

    # ------------------------------------------------------------------ loops
    def fit(self, inputs, targets, epochs=1, batch_size=32, mask=None, shuffle=True, seed=0, verbose=1):
        """Train on time-major arrays (T, N, n); returns the mean loss of each epoch."""
        x = _as_dict(inputs, list(self.cell.step.inputs), "inputs")
        t = _as_dict(targets, list(self.cell.step.targets), "targets")
        N = next(iter(x.values())).shape[1]
        rng = np.random.default_rng(seed)
        T = next(iter(x.values())).shape[0]
        for epoch in range(epochs):
            order = rng.permutation(N) if shuffle else np.arange(N)
            losses, t0 = [], time.perf_counter()
            batches = [order[i:i + batch_size] for i in range(0, N, batch_size)]
            for bi, idx in enumerate(batches):
                sl = lambda d: {k: np.ascontiguousarray(v[:, idx]) for k, v in d.items()}  # noqa: E731
                m = None if mask is None else np.ascontiguousarray(np.asarray(mask)[:, idx])
                losses.append(self._sequence(sl(x), sl(t), m))
                if verbose and (bi + 1 == len(batches) or (bi + 1) % max(1, len(batches) // 10) == 0):
                    dt = time.perf_counter() - t0
                    done = sum(len(b) for b in batches[:bi + 1])
                    bar = "#" * int(20 * (bi + 1) / len(batches))
                    sys.stdout.write(f"\repoch {epoch + 1}/{epochs} [{bar:<20}] loss {np.mean(losses):.5f}"
                                     f"  {(bi + 1) / dt:.1f} steps/s  {done * T / dt:.0f} tokens/s")
                    sys.stdout.flush()
            if verbose:
                sys.stdout.write("\n")
            self.history.append(float(np.mean(losses)))
        return list(self.history[-epochs:])

    def evaluate(self, inputs, targets, mask=None) -> float:
        return float(self.model.loss_and_grad(self.params, inputs, targets, mask=mask)[0])

    def predict(self, inputs, h0=None):
        """Outputs (T, N, n) and final states."""
        return self.model.forward(self.params, inputs, h0=h0)

    # ------------------------------------------------------------------ checkpoints
    def save(self, path) -> None:
        """Cell, parameters, optimizer state and step, written atomically (temp file + rename)."""
        blob = {"format": 1, "cell": self.cell, "fingerprint": str(self.cell),
                "params": {n: v.copy() for n, v in self.params.items()},
                "optimizer": self.optimizer, "step": self.step_count, "history": self.history,
                "options": {"clip_norm": self.clip_norm, "clip_value": self.clip_value, "bptt": self.bptt}}
        d = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".rnncomp-ckpt-")
        try:
            with os.fdopen(fd, "wb") as fh:
                pickle.dump(blob, fh)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path, cell=None, backend="native", dtype="float32", **compile_options) -> "Trainer":
        """Resume from :meth:`save`; with ``cell``, the checkpoint must be of that cell."""
        with open(path, "rb") as fh:
            blob = pickle.load(fh)
        if not isinstance(blob, dict) or blob.get("format") != 1:
            raise TrainingError(f"{path}: not an rnncomp checkpoint")
        if cell is not None and str(cell) != blob["fingerprint"]:
            raise TrainingError(f"{path}: the checkpoint is of cell {blob['cell'].name!r} with other "
                                f"equations or sizes than cell {cell.name!r}")
        opt_state = blob["optimizer"].state_dict()  # before __init__ re-initialises the optimizer
        tr = cls(blob["cell"], blob["optimizer"], backend=backend, dtype=dtype,
                 params=blob["params"], **blob["options"], **compile_options)
        tr.optimizer.load_state_dict(opt_state)
        tr.step_count, tr.history = blob["step"], list(blob["history"])
        return tr
