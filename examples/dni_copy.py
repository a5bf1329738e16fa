"""Decoupled neural interfaces (Jaderberg et al. 2017) in ``Trainer.fit``: a delayed copy
whose dependency is longer than the truncation window, learned with a synthetic gradient at
each window's boundary and not without it.

Each sequence is T random ±1 inputs; the target is the input D steps earlier (0 for the first
D steps).  Truncated BPTT over windows of k < D steps (``rc.Truncated(k)``) never
back-propagates a recall error to the step the value came in: it cannot learn the copy.
``gradient=rc.DNI()`` seeds each window's end with ĝ(s) = A s + c, trained by bootstrapping
on the cotangents BPTT computes at the windows' starts, and carries the error across.
Predicting 0 scores a recall MSE of 1 and sign accuracy 0.5.

    python examples/dni_copy.py            # D = 6, k = 4: ~3 s on 2 cores
    python examples/dni_copy.py --quick    # the smoke test
"""
import argparse
import time

import numpy as np

import rnncomp as rc
from rnncomp.train.tasks import delayed_copy


def run(gradient, args):
    x, y, _ = delayed_copy(args.T, args.N, args.D, seed=0, dtype="float64")
    xt, yt, _ = delayed_copy(args.T, 256, args.D, seed=1, dtype="float64")  # held out
    tr = rc.Trainer(rc.cells.elman(1, args.H, 1), optimizer=rc.Adam(0.01), gradient=gradient,
                    bptt=rc.Truncated(args.k), backend="numpy", dtype="float64", clip_norm=1.0,
                    seed=args.seed)
    start = time.perf_counter()
    tr.fit(x, y, epochs=args.epochs, batch_size=32, verbose=0)
    out = tr.model.forward(tr.params, {"x": xt})[0]["y"][args.D:]
    return {"mse": float(((out - yt[args.D:]) ** 2).mean()),
            "accuracy": float((np.sign(out) == yt[args.D:]).mean()), "seconds": time.perf_counter() - start}


class _Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each option's default (not for flags, nor where the default is None)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


def main(argv=None):
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()), formatter_class=_Defaults)
    p.add_argument("--D", type=int, default=6, help="the delay (the dependency's length)")
    p.add_argument("--k", type=int, default=4, help="the truncation window, k1 = k2")
    p.add_argument("--T", type=int, default=32, help="steps per sequence")
    p.add_argument("--N", type=int, default=512, help="training sequences")
    p.add_argument("--H", type=int, default=16, help="hidden units")
    p.add_argument("--epochs", type=int, default=6, help="passes over the sequences")
    p.add_argument("--seed", type=int, default=0, help="the initialisation")
    p.add_argument("--quick", action="store_true", help="fewer sequences and epochs")
    args = p.parse_args(argv)
    if args.quick:
        args.N, args.epochs = 256, 4
    out = {}
    for name, gradient in [("truncated BPTT", None), ("DNI", rc.DNI(lr=1e-3))]:
        out[name] = r = run(gradient, args)
        print(f"{name:15s} Truncated({args.k}), delay {args.D}: held-out recall MSE {r['mse']:.4f}, "
              f"sign accuracy {r['accuracy']:.3f} ({r['seconds']:.1f} s)")
    return out


if __name__ == "__main__":
    main()
