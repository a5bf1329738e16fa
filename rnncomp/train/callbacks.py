"""Callbacks of ``Trainer.fit(..., callbacks=[...])``: called after every epoch.

A callback has ``on_epoch_end(trainer, epoch, loss)`` (``epoch`` counts from 1 within the
call, ``loss`` is that epoch's mean training loss); returning True stops training after
this epoch.  ``fit`` also calls ``on_interrupt(trainer)`` when Ctrl-C stops it.
"""
from __future__ import annotations


class Callback:
    def on_epoch_end(self, trainer, epoch: int, loss: float):
        return None

    def on_interrupt(self, trainer) -> None:
        return None


class Checkpoint(Callback):
    """Save the trainer to ``path`` every ``every`` epochs, after the last one, and when
    Ctrl-C interrupts ``fit`` (atomically: an interrupted save keeps the previous file)."""

    def __init__(self, path, every: int = 1, *, epochs: int | None = None):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"Checkpoint: every must be a positive integer, got {every!r}")
        self.path, self.every, self.epochs = path, every, epochs
        self.saved_at: list = []  # trainer.step_count at each save

    def _save(self, trainer) -> None:
        trainer.save(self.path)
        self.saved_at.append(trainer.step_count)

    def on_epoch_end(self, trainer, epoch, loss):
        if epoch % self.every == 0 or epoch == self.epochs:
            self._save(trainer)

    def on_interrupt(self, trainer):
        self._save(trainer)
