"""One update of a trainer's flat parameters from a flat gradient, for every loop that
updates (``train_step``, ``fit_online``, DNI): the finite check of the loss and the
gradient, clipping, the optimizer (one native call, or NumPy), then a check that the
parameters it wrote are finite.

A finite gradient can still make a parameter non-finite (a learning rate beyond the
dtype's range, an overflow in float32).  The error then names that update and the
parameter, and every later step raises the same error while the parameters still hold a
non-finite value (:func:`unbroken`) rather than blaming its caller's arrays.  The update
is not undone: putting the parameters and the optimizer state back needs a copy of them
before every update, measured at 3 ms a step for an LSTM H = 512 (P = 1.7M, float32, 4 %
of its 81 ms training step, 20 MB more memory) to serve an error that a checkpoint serves
too; the check itself is one pass over the parameters (0.3 ms there).

    >>> import numpy as np, rnncomp as rc
    >>> tr = rc.Trainer(rc.cells.elman(1, 2, 1), rc.SGD(1e39), backend="numpy", dtype="float32")
    >>> g = np.ones_like(tr.flat)
    >>> try:
    ...     apply(tr, g, 1.0, "step 1")
    ... except rc.TrainingError as e:
    ...     print(str(e)[:54])
    step 1: the update made parameter 'W' non-finite (-inf
    >>> tr.step_count
    0
"""
from __future__ import annotations

import math
import signal
import threading
from contextlib import contextmanager

import numpy as np

from ..errors import TrainingError
from .optim import scaled_norm


def apply(tr, g: np.ndarray, loss, where: str, native: bool = True) -> None:
    """Update ``tr``'s parameters from the flat gradient ``g`` (clipped in place) of a step
    whose loss is ``loss`` (None: an update without losses of its own); ``where`` names the
    step in errors ("step 3").  ``native``: through the trainer's compiled update when it
    has one.  The step count advances only when the update is kept.  Under
    :func:`updates_whole` a Ctrl-C that lands in the update is raised when it is whole."""
    tr._interrupted, tr._updating = False, True  # (a flag a second Ctrl-C left behind is no interrupt now)
    try:
        _apply(tr, g, loss, where, native)
    finally:
        tr._updating = False
        interrupted, tr._interrupted = tr._interrupted, False
    if interrupted:
        raise KeyboardInterrupt


@contextmanager
def updates_whole(tr):
    """While ``tr`` trains (``Trainer.fit``): a Ctrl-C (SIGINT) that lands inside an update is
    held until the update is whole, so the parameters, the optimizer state and the step count
    change together or not at all, and the checkpoint ``callbacks.Checkpoint`` saves on
    Ctrl-C never holds a half-made update.  Elsewhere Ctrl-C is raised at once, as always.
    Only where Python's own handler is installed, in the main thread (a handler of the
    caller's is left alone); per step it costs two attribute stores."""
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return

    def held(signum, frame):
        if not tr._updating:
            raise KeyboardInterrupt
        tr._interrupted = True

    signal.signal(signal.SIGINT, held)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _apply(tr, g, loss, where, native) -> None:
    unbroken(tr)
    step, opt = tr.step_count + 1, tr.optimizer
    finite_loss = loss is None or np.isfinite(loss)
    # the compiled update checks g, clips, updates; writes nothing on a bad element.  An optimizer
    # assigned after the trainer was made may have no compiled rule: NumPy runs it, as at construction
    upd = tr._update   # (a callable without ``supports``, a test's wrapper, runs every optimizer)
    if finite_loss and native and upd is not None and getattr(upd, "supports", lambda o: True)(opt):
        bad = upd(opt, tr.flat, g, step, tr.clip_value, tr.clip_norm)
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
        tr._broken = (f"{where}: the update made parameter {name!r} non-finite ({value} at index "
                      f"{tuple(int(i) for i in index)}) from a finite gradient (a learning rate too large "
                      f"for {tr.dtype.name}?)")
        raise TrainingError(tr._broken)
    tr.step_count = step


def unbroken(tr) -> None:
    """Raise the error of the update that made a parameter non-finite while the parameters still
    hold a non-finite value (load a checkpoint or assign finite parameters to go on)."""
    if tr._broken is not None:
        if first_nonfinite(tr.flat) >= 0:
            raise TrainingError(f"{tr._broken}; the parameters still hold it: load a checkpoint "
                                "(Trainer.load) or assign finite parameters before training on")
        tr._broken = None


def clip(g: np.ndarray, clip_value, clip_norm) -> None:
    """Clip ``g`` in place: each element to ±``clip_value``, then its norm to ``clip_norm``."""
    if clip_value is not None:
        np.clip(g, -clip_value, clip_value, out=g)
    if clip_norm is not None:
        s, p = scaled_norm(g)  # ‖g‖ = s·p, in float64, scaled where g² would overflow
        norm = s * p
        if norm > clip_norm:
            if math.isinf(norm) and math.isfinite(s):  # finite elements, the norm past the float range:
                g /= p  # exact (a power of two), then clipped by its own norm
                norm = s
            g *= clip_norm / norm


def first_nonfinite(a: np.ndarray) -> int:
    """The flat index of ``a``'s first non-finite element, or -1 (one pass when all are finite)."""
    ok = np.isfinite(a)
    return -1 if ok.all() else int(np.argmin(ok))


def param_at(tr, index: int) -> str:
    """The name of the parameter that holds element ``index`` of ``tr.flat``."""
    return tr.names[int(np.searchsorted(tr._ends, index, side="right"))]
