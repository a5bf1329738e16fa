"""A character-level language model: a GRU (or LSTM) with softmax cross-entropy, trained by
truncated BPTT on a long stream of text, measured in bits per character on held-out text,
and sampled from.

The text is chapters 1–30 of Jane Austen's *Pride and Prejudice* (public domain, 300 KB,
shipped with rnncomp: see examples/data/README.md); ``--text FILE`` takes any other.
The last 10 % is held out.  Training is stateful: the text is cut into 32 parallel
streams, each batch is the next 100 characters of every stream and starts from the state
the previous batch ended in (``fit(stateful=True)``), so the state runs through the whole
book while gradients are truncated at each batch's start.

    python examples/charlm.py                          # ~3 min on 2 cores: ≈ 2.0 bpc
    python examples/charlm.py --cell lstm --epochs 15
    python examples/charlm.py --quick                  # a few seconds (the smoke test)
"""
import argparse
import math
import sys
import time

import rnncomp as rc
from rnncomp.train.text import CharVocab, bits_per_char, char_data, corpus, sample_text


class _Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each option's default (not for flags, nor where the default is None)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


def main(argv=None):
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()), formatter_class=_Defaults)
    p.add_argument("--text", help="a text file (default: the shipped Pride and Prejudice)")
    p.add_argument("--cell", default="gru", choices=["gru", "lstm", "mgu", "elman"], help="zoo cell")
    p.add_argument("--hidden", type=int, default=256, help="hidden units")
    p.add_argument("--epochs", type=int, default=10, help="passes over the text")
    p.add_argument("--T", type=int, default=100, help="characters per batch (the BPTT window)")
    p.add_argument("--batch", type=int, default=32, help="parallel streams")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam's learning rate")
    p.add_argument("--sample", type=int, default=400, help="characters to sample")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature")
    p.add_argument("--save", help="write a checkpoint here")
    p.add_argument("--curve", help="PNG of the learning curve")
    p.add_argument("--quick", action="store_true", help="a small run for the smoke test")
    a = p.parse_args(argv)
    text = open(a.text, encoding="utf-8").read() if a.text else corpus()
    vocab = CharVocab(text)  # of the whole text, so the held-out part has no unknown character
    if a.quick:
        text, a.hidden, a.epochs, a.T, a.batch, a.sample = text[:20000], 48, 2, 50, 16, 60

    data = char_data(text, T=a.T, batch_size=a.batch, vocab=vocab)
    V = len(vocab)
    print(f"{len(text)} characters, {V} distinct; training on {data.n_train_chars}, "
          f"held out {data.n_test_chars}")
    t0 = time.perf_counter()
    tr = rc.Trainer(getattr(rc.cells, a.cell)(V, a.hidden, V, loss="xent"), rc.Adam(a.lr), clip_norm=1.0)
    print(f"compiled {a.cell} (H={a.hidden}, {tr.flat.size} parameters) in {time.perf_counter() - t0:.1f} s")

    def held_out_bpc():
        return bits_per_char(tr.evaluate(data.x_test, data.y_test, window=a.T))

    before = held_out_bpc()
    print(f"held-out: {before:.3f} bits per character before training "
          f"(uniform over the vocabulary: {math.log2(V):.3f})")
    curve, t0 = [], time.perf_counter()
    for epoch in range(a.epochs):
        tr.fit(data.x_train, data.y_train, epochs=1, batch_size=a.batch, stateful=True,
               verbose=int(sys.stdout.isatty() and not a.quick))
        curve.append(held_out_bpc())
        print(f"  epoch {epoch + 1}: train {bits_per_char(tr.history[-1]):.3f} bpc, "
              f"held-out {curve[-1]:.3f} bpc  ({time.perf_counter() - t0:.0f} s)", flush=True)
    seconds = time.perf_counter() - t0
    print(f"held-out: {curve[-1]:.3f} bits per character after {a.epochs} epoch{'s' if a.epochs != 1 else ''} ({seconds:.0f} s)")
    sample = sample_text(tr, vocab, "Elizabeth", a.sample, temperature=a.temperature)
    print(f"\nsampled at temperature {a.temperature}:\n{sample}\n")
    if a.save:
        tr.save(a.save)
        print(f"checkpoint: {a.save}")
    if a.curve:
        print(f"learning curve: {tr.plot(a.curve, title=f'{a.cell} character model: training loss (nats)')}")
    return {"bpc_before": before, "bpc": curve[-1], "curve": curve, "uniform_bpc": math.log2(V),
            "sample": sample, "seconds": seconds}


if __name__ == "__main__":
    main()
