"""Character-level language modelling: a shipped public-domain corpus, a vocabulary,
batches for stateful truncated BPTT, bits per character and sampling.

The corpus is chapters 1–30 of Jane Austen's *Pride and Prejudice* (1813, public domain;
300 KB, 74 distinct characters); see ``examples/data/README.md`` for its source.

    >>> v = CharVocab("hello")
    >>> v.chars, v.decode(v.encode("hole")), v.one_hot(v.encode("eh")).tolist()
    ('ehlo', 'hole', [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from .data import stream_batches

CORPORA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpora")


def corpus(name: str = "pride_and_prejudice") -> str:
    """The text of a corpus shipped with rnncomp (``rnncomp/train/corpora/NAME.txt``)."""
    path = os.path.join(CORPORA, name + ".txt")
    if not os.path.exists(path):
        known = sorted(f[:-4] for f in os.listdir(CORPORA) if f.endswith(".txt"))
        raise FileNotFoundError(f"no corpus {name!r}; shipped: {', '.join(known)}")
    with open(path, encoding="utf-8") as fh:
        return fh.read()


class CharVocab:
    """The sorted distinct characters of a text; characters ↔ indices ↔ one-hot rows."""

    def __init__(self, text: str):
        self.chars = "".join(sorted(set(text)))
        if not self.chars:
            raise ValueError("CharVocab: empty text")
        self.index = {c: i for i, c in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        missing = sorted(set(text) - set(self.index))
        if missing:
            raise ValueError(f"CharVocab: characters not in the vocabulary: {''.join(missing)!r}")
        return np.array([self.index[c] for c in text], dtype=np.int64)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in np.ravel(ids))

    def one_hot(self, ids, dtype="float32") -> np.ndarray:
        """(…, V) rows of the identity for the indices ``ids`` (any shape)."""
        return np.eye(len(self), dtype=dtype)[np.asarray(ids)]


@dataclass
class CharData:
    """Train and held-out batches of a text for next-character prediction.

    ``x_train``/``y_train``: (T, K·B, V) one-hot inputs and next-character targets laid out by
    :func:`stream_batches` for ``fit(batch_size=B, stateful=True)``; ``x_test``/``y_test``:
    the held-out tail as B parallel streams (L, B, V), for ``evaluate(window=T)``."""

    vocab: CharVocab
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    batch_size: int
    n_train_chars: int
    n_test_chars: int


def char_data(text: str, T: int = 100, batch_size: int = 32, held_out: float = 0.1,
              dtype="float32", vocab: CharVocab | None = None) -> CharData:
    """Split ``text`` into a training head and a held-out tail (the last ``held_out`` of it)."""
    vocab = vocab or CharVocab(text)
    ids = vocab.encode(text)
    cut = int(len(ids) * (1 - held_out))
    train, test = ids[:cut], ids[cut:]
    xs = stream_batches(train[:-1], T, batch_size)[..., 0]
    ys = stream_batches(train[1:], T, batch_size)[..., 0]
    B_test = max(1, min(batch_size, (len(test) - 1) // max(T, 1)))
    per = (len(test) - 1) // B_test
    xt = test[:per * B_test].reshape(B_test, per).T
    yt = test[1:per * B_test + 1].reshape(B_test, per).T
    return CharData(vocab, vocab.one_hot(xs, dtype), vocab.one_hot(ys, dtype), vocab.one_hot(xt, dtype),
                    vocab.one_hot(yt, dtype), batch_size, xs.size, xt.size)


def bits_per_char(loss_nats: float) -> float:
    """The mean softmax cross-entropy (natural log) in bits."""
    return loss_nats / math.log(2)


def softmax_pick(vocab_size: int, temperature: float = 1.0, dtype="float32"):
    """A ``pick`` for :meth:`Trainer.generate`: sample the next character from
    softmax(y / temperature) (temperature 0: the most likely one), as a one-hot row."""
    eye = np.eye(vocab_size, dtype=dtype)

    def pick(y, rng):
        y = np.asarray(y, dtype=np.float64)
        if temperature <= 0:
            return eye[y.argmax(axis=-1)]
        z = y / temperature
        p = np.exp(z - z.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
        return eye[[rng.choice(vocab_size, p=row) for row in p]]

    return pick


def sample_text(trainer, vocab: CharVocab, prime: str, n: int, temperature: float = 0.8,
                seed: int = 0) -> str:
    """``prime`` followed by ``n`` characters sampled from a trained character model."""
    x = vocab.one_hot(vocab.encode(prime), trainer.dtype)[:, None, :]
    chosen, _ = trainer.generate(x, n, softmax_pick(len(vocab), temperature, trainer.dtype), seed=seed)
    return prime + vocab.decode(np.asarray(chosen)[:, 0].argmax(axis=-1))
