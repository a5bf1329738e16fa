"""Callbacks of ``Trainer.fit(..., callbacks=[...])``: called after every epoch.

A callback has ``on_epoch_end(trainer, epoch, loss)`` (``epoch`` counts from 1 within the
call, ``loss`` is that epoch's mean training loss; the validation loss, with
``fit(validation_data=...)``, is ``trainer.val_history[-1]``); returning True stops
training after this epoch.  ``fit`` also calls ``on_interrupt(trainer)`` when Ctrl-C
stops it.
"""
from __future__ import annotations

import math

import numpy as np


def checked(callbacks, validation: bool = True) -> list:
    """``fit``'s ``callbacks``: one callback or several, each with ``on_epoch_end``, and one that
    watches the validation loss only with ``validation`` data (checked before training: a
    function, or ``EarlyStopping()`` without validation data, failed after the first epoch)."""
    iterable = hasattr(callbacks, "__iter__") and not hasattr(callbacks, "on_epoch_end")
    callbacks = list(callbacks) if iterable else [callbacks]  # a function: named below, not "not iterable"
    for cb in callbacks:
        if not callable(getattr(cb, "on_epoch_end", None)):
            raise TypeError(f"fit(callbacks=...): {cb!r} is not a callback: give rc.Callback objects "
                            "(a subclass with on_epoch_end(trainer, epoch, loss)), e.g. rc.EarlyStopping()")
        watches = getattr(cb, "monitor", None) == "val_loss" and (getattr(cb, "best", True) is not False)
        if watches and not validation:
            raise ValueError(f"fit(callbacks=...): {type(cb).__name__} watches monitor='val_loss' (its default), "
                             "which needs fit(validation_data=(inputs, targets)); give validation data or "
                             "monitor='loss'")
    return callbacks


class Callback:
    def on_epoch_end(self, trainer, epoch: int, loss: float):
        return None

    def on_interrupt(self, trainer) -> None:
        return None


def _watched(trainer, monitor: str, loss: float) -> float:
    if monitor == "loss":
        return loss
    if monitor == "val_loss":
        if not trainer.val_history:
            raise ValueError("monitor='val_loss' needs fit(validation_data=(inputs, targets))")
        return trainer.val_history[-1]
    raise ValueError(f"monitor must be 'loss' or 'val_loss', got {monitor!r}")


class Checkpoint(Callback):
    """Save the trainer to ``path`` every ``every`` epochs, after the last one, and when
    Ctrl-C interrupts ``fit`` (atomically: an interrupted save keeps the previous file).
    ``best=True``: save only when ``monitor`` ("val_loss" or "loss") reaches a new best,
    so ``path`` keeps the best model seen (and Ctrl-C does not overwrite it)."""

    def __init__(self, path, every: int = 1, *, epochs: int | None = None, best: bool = False,
                 monitor: str = "val_loss"):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"Checkpoint: every must be a positive integer, got {every!r}")
        from .checkpoint import file_path
        path = file_path("Checkpoint", path)  # None failed at the first save, after an epoch of training
        self.path, self.every, self.epochs, self.best, self.monitor = path, every, epochs, best, monitor
        self.best_value = math.inf
        self.saved_at: list = []  # trainer.step_count at each save

    def _save(self, trainer) -> None:
        trainer.save(self.path)
        self.saved_at.append(trainer.step_count)

    def on_epoch_end(self, trainer, epoch, loss):
        if self.best:
            value = _watched(trainer, self.monitor, loss)
            if value < self.best_value:
                self.best_value = value
                self._save(trainer)
        elif epoch % self.every == 0 or epoch == self.epochs:
            self._save(trainer)

    def on_interrupt(self, trainer):
        if not self.best:
            self._save(trainer)


class EarlyStopping(Callback):
    """Stop when ``monitor`` ("val_loss" or "loss") has not improved by ``min_delta`` for
    ``patience`` epochs; ``restore_best=True`` puts back the parameters of the best epoch
    (the optimizer state and step count stay those of the last)."""

    def __init__(self, patience: int = 3, *, monitor: str = "val_loss", min_delta: float = 0.0,
                 restore_best: bool = True):
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"EarlyStopping: patience must be a positive integer, got {patience!r}")
        self.patience, self.monitor, self.min_delta, self.restore_best = patience, monitor, min_delta, restore_best
        self.best_value, self.best_epoch, self.stopped_epoch = math.inf, None, None
        self._best_flat, self._waited = None, 0

    def on_epoch_end(self, trainer, epoch, loss):
        value = _watched(trainer, self.monitor, loss)
        if value < self.best_value - self.min_delta:
            self.best_value, self.best_epoch, self._waited = value, epoch, 0
            self._best_flat = np.array(trainer.flat, copy=True)
            return False
        self._waited += 1
        if self._waited < self.patience:
            return False
        self.stopped_epoch = epoch
        if self.restore_best and self._best_flat is not None:
            trainer.flat[:] = self._best_flat  # the parameter dict holds views into it
        return True
