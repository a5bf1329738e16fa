"""One update of a trainer's flat parameters from a flat gradient, for every loop that
updates (``train_step``, ``fit_online``, DNI): the finite check of the loss and the
gradient, clipping, the optimizer (one native call, or NumPy), then a check that the
parameters it wrote are finite.

A finite gradient can still make a parameter non-finite (a learning rate beyond the
dtype's range, an overflow in float32).  Such an update is undone, the parameters and the
optimizer state put back as they were before it, so that the error names the step that
did it rather than the next call blaming its caller's parameters, and training can go on
from there (with another learning rate, say).  Undoing needs the state before the update:
:class:`Undo` copies it into buffers it keeps from step to step.

    >>> import numpy as np, rnncomp as rc
    >>> tr = rc.Trainer(rc.cells.elman(1, 2, 1), rc.SGD(1e39), backend="numpy", dtype="float32")
    >>> before = tr.flat.copy()
    >>> g = np.ones_like(tr.flat)
    >>> try:
    ...     apply(tr, g, 1.0, "step 1")
    ... except rc.TrainingError as e:
    ...     print(str(e)[:54])
    step 1: the update made parameter 'W' non-finite (-inf
    >>> bool(np.array_equal(tr.flat, before)), tr.step_count
    (True, 0)
"""
from __future__ import annotations

import copy

import numpy as np

from ..errors import TrainingError
from .optim import global_norm


def apply(tr, g: np.ndarray, loss, where: str, native: bool = True) -> None:
    """Update ``tr``'s parameters from the flat gradient ``g`` (clipped in place) of a step
    whose loss is ``loss`` (None: an update without losses of its own); ``where`` names the
    step in errors ("step 3").  ``native``: through the trainer's compiled update when it
    has one.  The step count advances only when the update is kept."""
    step, opt = tr.step_count + 1, tr.optimizer
    tr._undo.keep(tr.flat, opt)
    finite_loss = loss is None or np.isfinite(loss)
    if finite_loss and native and tr._update is not None:  # checks g, clips, updates; writes nothing on a bad element
        bad = tr._update(opt, tr.flat, g, step, tr.clip_value, tr.clip_norm)
    else:
        bad = first_nonfinite(g)
        if bad < 0 and finite_loss:
            clip(g, tr.clip_value, tr.clip_norm)
            with np.errstate(over="ignore", invalid="ignore"):  # a non-finite result is the error below
                opt.step(tr.flat, g, step)
    if bad >= 0 or not finite_loss:  # the gradient named first: it says which parameter
        what = f"gradient of {param_at(tr, bad)!r}" + ("" if loss is None else f" (loss {loss})") if bad >= 0 \
            else f"loss ({loss})"
        raise TrainingError(f"{where}: non-finite {what}; parameters left unchanged")
    bad = first_nonfinite(tr.flat)
    if bad >= 0:
        name, value = param_at(tr, bad), tr.flat[bad]
        index = np.unravel_index(bad - (tr._ends[tr.names.index(name)] - tr.params[name].size), tr.params[name].shape)
        tr._undo.restore(tr.flat, opt)
        raise TrainingError(f"{where}: the update made parameter {name!r} non-finite ({value} at index "
                            f"{tuple(int(i) for i in index)}) from a finite gradient (a learning rate too large "
                            f"for {tr.dtype.name}?); parameters and optimizer state restored to before it")
    tr.step_count = step


def clip(g: np.ndarray, clip_value, clip_norm) -> None:
    """Clip ``g`` in place: each element to ±``clip_value``, then its norm to ``clip_norm``."""
    if clip_value is not None:
        np.clip(g, -clip_value, clip_value, out=g)
    if clip_norm is not None:
        norm = global_norm(g)  # in float64, scaled where g² would overflow
        if norm > clip_norm:
            g *= clip_norm / norm


def first_nonfinite(a: np.ndarray) -> int:
    """The flat index of ``a``'s first non-finite element, or -1 (one pass when all are finite)."""
    ok = np.isfinite(a)
    return -1 if ok.all() else int(np.argmin(ok))


def param_at(tr, index: int) -> str:
    """The name of the parameter that holds element ``index`` of ``tr.flat``."""
    return tr.names[int(np.searchsorted(tr._ends, index, side="right"))]


class Undo:
    """The parameters and the optimizer state before an update, copied into buffers reused
    from step to step, to put back when the update made a parameter non-finite."""

    def __init__(self):
        self._arrays: dict = {}  # "" -> flat, else optimizer state name -> its copy
        self._other: dict = {}   # optimizer state that is not an array (a subclass's counters)

    def keep(self, flat: np.ndarray, optimizer) -> None:
        arrays = {"": flat, **{k: v for k, v in optimizer.state.items() if isinstance(v, np.ndarray)}}
        for k in [k for k in self._arrays if k not in arrays]:
            del self._arrays[k]
        for k, a in arrays.items():
            buf = self._arrays.get(k)
            if buf is None or buf.shape != a.shape or buf.dtype != a.dtype:
                buf = self._arrays[k] = np.empty_like(a)
            np.copyto(buf, a)
        self._other = {k: copy.deepcopy(v) for k, v in optimizer.state.items() if not isinstance(v, np.ndarray)}

    def restore(self, flat: np.ndarray, optimizer) -> None:
        np.copyto(flat, self._arrays[""])
        state = optimizer.state
        for k in [k for k in state if k not in self._arrays and k not in self._other]:
            del state[k]  # created by the update undone
        for k, buf in self._arrays.items():
            if k and isinstance(state.get(k), np.ndarray) and state[k].shape == buf.shape:
                np.copyto(state[k], buf)  # in place: the native update keeps their addresses
            elif k:
                state[k] = buf.copy()
        state.update(copy.deepcopy(self._other))
