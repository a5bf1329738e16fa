"""Decoupled neural interfaces (Jaderberg et al. 2017) on the repeat-copy task: a pattern of L
bits, then a marker with a repeat count R ∈ {1, 2}, then the pattern R times and zeros after
(``rnncomp.train.tasks.repeat_copy``).  Recalling the first repeat needs a dependency of L + 1
steps, the second 2L + 1; trained with ``rc.Truncated(k1, k2)``, k2 ≤ L, truncated BPTT never
back-propagates a recall error to the step its bit came in.  ``gradient=rc.DNI()`` seeds each
window's end with ĝ(s) = A s + c and reaches back through the input phase's windows, which
have no losses of their own.  Predicting 0 scores MSE 0.75 on the output phase (1 on the
recall steps, 0 on the zeros after R = 1) and sign accuracy 0.5 on the recall steps.

    python examples/dni_repeat_copy.py --seed 0     # L = 4, Truncated(3): ~1 min on 2 busy cores
    python examples/dni_repeat_copy.py --quick      # the smoke test
"""
import argparse
import time

import numpy as np

import rnncomp as rc
from rnncomp.train.tasks import repeat_copy


def run(gradient, args):
    x, y, m = repeat_copy(args.L, args.repeats, args.N, seed=0, dtype="float64")
    xt, yt, mt = repeat_copy(args.L, args.repeats, 512, seed=1, dtype="float64")  # held out
    tr = rc.Trainer(rc.cells.elman(3, args.H, 1), optimizer=rc.Adam(args.lr), gradient=gradient,
                    bptt=rc.Truncated(args.k1, args.k2 or args.k1), backend="numpy", dtype="float64",
                    clip_norm=1.0, seed=args.seed)
    start = time.perf_counter()
    history = tr.fit({"x": x}, {"target": y}, epochs=args.epochs, batch_size=32, mask=m, verbose=0)
    out, target = tr.model.forward(tr.params, {"x": xt})[0]["y"][..., 0], yt[..., 0]
    recall = (mt > 0) & (target != 0)
    return {"mse": float(((out - target) ** 2 * mt).sum() / mt.sum()),
            "accuracy": float((np.sign(out) == target)[recall].mean()),
            "history": history, "updates": tr.step_count, "seconds": time.perf_counter() - start}


class _Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each option's default (not for flags, nor where the default is None)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


def main(argv=None):
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()), formatter_class=_Defaults)
    p.add_argument("--L", type=int, default=4, help="bits in the pattern")
    p.add_argument("--repeats", type=int, default=2, help="the largest repeat count")
    p.add_argument("--k1", type=int, default=3, help="steps between updates")
    p.add_argument("--k2", type=int, default=None, help="steps back-propagated (default k1)")
    p.add_argument("--N", type=int, default=1024, help="training sequences")
    p.add_argument("--H", type=int, default=32, help="hidden units")
    p.add_argument("--lr", type=float, default=0.003, help="Adam's learning rate")
    p.add_argument("--epochs", type=int, default=40, help="passes over the sequences")
    p.add_argument("--seed", type=int, default=0, help="the initialisation (the data are fixed)")
    p.add_argument("--quick", action="store_true", help="a small run: the code path only")
    args = p.parse_args(argv)
    if args.quick:
        args.N, args.epochs, args.H = 64, 2, 8
    out = {}
    for name, gradient in [("truncated BPTT", None), ("DNI", rc.DNI(lr=1e-3))]:
        out[name] = r = run(gradient, args)
        print(f"{name:15s} Truncated({args.k1}, {args.k2 or args.k1}), L = {args.L}, seed {args.seed}: "
              f"held-out MSE {r['mse']:.4f}, recall sign accuracy {r['accuracy']:.3f} ({r['seconds']:.1f} s)")
    return out


if __name__ == "__main__":
    main()
