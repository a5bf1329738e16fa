"""How ``Trainer.fit`` shows an epoch's progress: a live tqdm bar over its batches when
standard output is a terminal, else one line at its end (a log file or a pipe gets no
carriage returns).

    >>> p = EpochProgress(verbose=0, epoch=0, epochs=1, n_batches=2)
    >>> p.batch_done([0.5]); p.end([0.5, float("nan")], tokens=100)
    >>> nanmean([0.5, float("nan"), 1.5])
    1.0
"""
from __future__ import annotations

import sys
import time

import numpy as np


def nanmean(values) -> float:
    """The mean of the losses that are numbers (a batch with no step to learn from is nan)."""
    kept = [v for v in values if not np.isnan(v)]
    return float(np.mean(kept)) if kept else float("nan")


def _live_bar(verbose, epoch, epochs, n_batches):
    """A tqdm bar over an epoch's batches when standard output is a terminal, else None
    (then ``fit`` prints one line per epoch)."""
    if not verbose or not sys.stdout.isatty():
        return None
    import shutil

    from tqdm import tqdm
    size = shutil.get_terminal_size((100, 24))  # a terminal of unknown size reads 0 x 0: tqdm then hides the bar
    return tqdm(total=n_batches, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", file=sys.stdout,
                leave=True, ncols=size.columns or 100, nrows=size.lines or 24)


class EpochProgress:
    """One epoch of ``epochs`` (``epoch`` counts from 0); shows nothing when ``verbose`` is 0."""

    def __init__(self, verbose, epoch: int, epochs: int, n_batches: int):
        self.verbose, self.epoch, self.epochs, self.n_batches = verbose, epoch, epochs, n_batches
        self.t0 = time.perf_counter()
        self.bar = _live_bar(verbose, epoch, epochs, n_batches)

    def batch_done(self, losses) -> None:
        """After each batch: ``losses`` so far in this epoch."""
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {nanmean(losses):.5f}", refresh=False)
            self.bar.update(1)

    def end(self, losses, tokens: int) -> None:
        """After the epoch's last batch: its mean loss and speed (``tokens``: steps × sequences)."""
        if not self.verbose:
            return
        dt = time.perf_counter() - self.t0
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {nanmean(losses):.5f}, {tokens / dt:.0f} tokens/s")
            self.bar.close()
        else:  # a log file or a pipe: one line per epoch, no carriage returns
            print(f"epoch {self.epoch + 1}/{self.epochs}: loss {nanmean(losses):.5f}  "
                  f"{self.n_batches / dt:.1f} steps/s  {tokens / dt:.0f} tokens/s  ({dt:.2f} s)", flush=True)
