"""What examples/torch_charlm.py and examples/jax_charlm.py share (NumPy only): the custom
cell, declared in rnncomp's DSL, the text cut into streams of character ids, and a timer.

The cell is an LSTM with peephole connections (Gers & Schmidhuber 2000) whose gates are
(1 + softsign(z))/2 and whose squashing function is softsign(z) = z / (1 + |z|): a cell no
framework has a fused kernel for.  With σ̃(z) = (1 + softsign(z))/2::

    i  = σ̃(Wi x + Ui h + pi ⊙ c  + bi)
    f  = σ̃(Wf x + Uf h + pf ⊙ c  + bf)        bf starts at 1
    g  = softsign(Wg x + Ug h + bg)
    c' = f ⊙ c + i ⊙ g
    o  = σ̃(Wo x + Uo h + po ⊙ c' + bo)          the output gate looks at the new cell state
    h' = o ⊙ softsign(c')

The frameworks' own versions of it (a PyTorch loop, a ``jax.lax.scan``) are written in each
example from these same equations, and each example checks them against the rnncomp layer.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import rnncomp as rc
from rnncomp.train.text import CharVocab, corpus

GATES = "ifgo"


def peephole_cell(n_in: int, n_hidden: int) -> rc.Cell:
    """The softsign peephole LSTM above; its output ``y`` is the new hidden state h."""
    cell = rc.Cell("softsign_peephole_lstm")
    x = cell.input("x", n_in)
    h, c = cell.state("h", n_hidden), cell.state("c", n_hidden)

    def affine(gate, peep=None, bias_init=None):
        W, U = cell.param(f"W{gate}", (n_hidden, n_in)), cell.param(f"U{gate}", (n_hidden, n_hidden))
        z = W @ x + U @ h + cell.param(f"b{gate}", n_hidden, init=bias_init)
        return z if peep is None else z + cell.param(f"p{gate}", n_hidden) * peep

    def gate(z):
        return (1 + rc.softsign(z)) / 2

    i, f = gate(affine("i", c)), gate(affine("f", c, "ones"))
    g = rc.softsign(affine("g"))
    cell.update(c, f * c + i * g)
    o = gate(affine("o", c.new))
    cell.update(h, o * rc.softsign(c.new))
    cell.output("y", h.new)
    return cell


class CharStreams:
    """The text as character ids: the first 90 % cut into ``batch`` parallel streams for
    stateful truncated BPTT (window k of every stream continues window k − 1), the last 10 %
    held out, cut into ``batch`` streams the same way."""

    def __init__(self, text: str | None = None, batch: int = 32, limit: int | None = None):
        text = corpus() if text is None else text
        self.vocab = CharVocab(text)  # of the whole text: no unknown character in the held-out part
        text = text if limit is None else text[:limit]
        ids = self.vocab.encode(text)
        cut = int(len(ids) * 0.9)
        self.train, self.test = self._streams(ids[:cut], batch), self._streams(ids[cut:], batch)
        self.n_chars = len(ids)

    @staticmethod
    def _streams(ids, batch):
        per = len(ids) // batch
        return np.ascontiguousarray(ids[:per * batch].reshape(batch, per).T)  # (L, B)

    def windows(self, split: str, T: int):
        """(inputs (T, B), next characters (T, B)) of ``split`` ("train" or "test"), in order."""
        s = getattr(self, split)
        for k in range(0, s.shape[0] - T, T):
            yield s[k:k + T], s[k + 1:k + T + 1]


def time_steps(step, n: int, warmup: int = 2) -> dict:
    """Wall times of ``step()`` over ``n`` calls after ``warmup`` untimed ones: their median
    and the best (on a shared machine the best is the least disturbed)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"step_s": statistics.median(times), "best_s": min(times)}


def bits(nats: float) -> float:
    return nats / np.log(2)


class _Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each option's default (not for flags, nor where the default is None)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


def arguments(description: str) -> argparse.ArgumentParser:
    """The flags both character-model examples take (each adds its own after these)."""
    p = argparse.ArgumentParser(description=description, formatter_class=_Defaults)
    p.add_argument("--epochs", type=int, default=10, help="passes over the text")
    p.add_argument("--hidden", type=int, default=128, help="hidden units")
    p.add_argument("--embed", type=int, default=32, help="embedding width")
    p.add_argument("--T", type=int, default=100, help="characters per window (the BPTT length)")
    p.add_argument("--batch", type=int, default=32, help="parallel streams")
    p.add_argument("--lr", type=float, default=1e-2, help="AdamW's learning rate")
    p.add_argument("--time-steps", type=int, default=5, help="timed steps per model (0: no timing)")
    return p
