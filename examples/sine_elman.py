"""Time-series prediction: an Elman network learns to continue sine waves.

Each sequence is a sine of random frequency (0.1–0.5 rad/step) and phase; the network
reads x[t] and predicts x[t+1].  After training it also runs *closed loop*: fed its own
predictions (``Trainer.generate``), it continues a wave it has only seen the start of.

    python examples/sine_elman.py                 # ~20 s on 2 cores
    python examples/sine_elman.py --plot sine.png --curve curve.png
    python examples/sine_elman.py --quick         # a few seconds (the smoke test)
"""
import argparse
import sys
import time

import numpy as np

import rnncomp as rc
from rnncomp.train.plot import line_plot
from rnncomp.train.tasks import sine


class _Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each option's default (not for flags, nor where the default is None)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


def main(argv=None):
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()), formatter_class=_Defaults)
    p.add_argument("--hidden", type=int, default=32, help="hidden units")
    p.add_argument("--T", type=int, default=50, help="training sequence length")
    p.add_argument("--N", type=int, default=1024, help="training sequences")
    p.add_argument("--epochs", type=int, default=30, help="passes over the training sequences")
    p.add_argument("--lr", type=float, default=1e-2, help="Adam's learning rate")
    p.add_argument("--backend", default="native", choices=["native", "numpy"], help="rnncomp backend")
    p.add_argument("--plot", help="PNG of a held-out wave and the closed-loop continuation")
    p.add_argument("--curve", help="PNG of the learning curve")
    p.add_argument("--quick", action="store_true", help="a small run for the smoke test")
    a = p.parse_args(argv)
    if a.quick:
        a.N, a.epochs, a.T = 128, 4, 30

    x, y, _ = sine(T=a.T, N=a.N, seed=0)
    xt, yt, _ = sine(T=a.T, N=256, seed=1)  # held out
    trainer = rc.Trainer(rc.cells.elman(1, a.hidden, 1), rc.Adam(a.lr), clip_norm=1.0, backend=a.backend)
    before = 2 * trainer.evaluate(xt, yt)  # the cell's loss is ½(y − t)²: MSE = 2 × loss
    t0 = time.perf_counter()
    trainer.fit(x, y, epochs=a.epochs, batch_size=32, verbose=int(sys.stdout.isatty() and not a.quick))
    seconds = time.perf_counter() - t0
    after = 2 * trainer.evaluate(xt, yt)
    persistence = float(np.mean((xt - yt) ** 2))  # predicting x[t+1] = x[t]
    print(f"Elman H={a.hidden}, {a.epochs} epochs of {a.N} sequences (T={a.T}): {seconds:.1f} s")
    print(f"held-out one-step MSE: {before:.5f} before, {after:.6f} after "
          f"(repeating the last value: {persistence:.5f}; the signal's variance: 0.5)")

    # closed loop: prime with 40 steps of held-out waves, then let the network run on its own
    prime, horizon = 40, 30
    waves, _, _ = sine(T=prime + horizon, N=8, seed=2)
    gen, _ = trainer.generate(waves[:prime], horizon, lambda out, rng: out)
    truth = waves[prime:, :, 0]
    free_mse = float(np.mean((gen[:, :, 0] - truth) ** 2))
    print(f"closed loop, {horizon} steps after a {prime}-step prime: MSE {free_mse:.5f} "
          f"(first 10 steps {np.mean((gen[:10, :, 0] - truth[:10]) ** 2):.5f})")
    if a.plot:
        t = np.arange(prime + horizon)
        line_plot(a.plot, [(t, waves[:, 0, 0], (150, 150, 150), 2), (t[prime:], gen[:, 0, 0], None, 2)],
                  title="Elman network continuing a sine wave", xlabel="t (step)", ylabel="value", logy=False,
                  legend=["the wave", "the network, closed loop"])
        print(f"wrote {a.plot}")
    if a.curve:
        print(f"wrote {trainer.plot(a.curve)}")
    return {"mse_before": before, "mse_after": after, "persistence": persistence,
            "closed_loop_mse": free_mse, "history": trainer.history, "seconds": seconds}


if __name__ == "__main__":
    main()
