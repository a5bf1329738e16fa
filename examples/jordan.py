"""A Jordan network (Jordan 1986) learns to produce sequences from a constant "plan".

A Jordan network's recurrent state is its own previous *output* (``rc.cells.jordan``:
the state ``s`` is updated to ``y``).  That is what sequence production needs: told
only which plan to run (a one-hot input, the same at every step), the network must
emit the plan's symbols in order — each plan cycles through the 6 symbols in its own
order — and it knows where it is from what it said last.  Trained on 20 steps, it is
then run for 60.

    python examples/jordan.py          # a few seconds on 2 cores
    python examples/jordan.py --quick  # the smoke test
"""
import argparse
import time

import numpy as np

import rnncomp as rc


def plans(n_plans, n_symbols, T, seed=0):
    """One-hot plans (T, P, P) and targets (T, P, S): plan p emits order_p[t mod S]."""
    rng = np.random.default_rng(seed)
    orders = np.stack([rng.permutation(n_symbols) for _ in range(n_plans)])   # (P, S)
    x = np.repeat(np.eye(n_plans, dtype="float32")[None], T, axis=0)
    symbols = orders[:, np.arange(T) % n_symbols].T                              # (T, P)
    return x, np.eye(n_symbols, dtype="float32")[symbols], symbols, orders


class _Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each option's default (not for flags, nor where the default is None)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


def main(argv=None):
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()), formatter_class=_Defaults)
    p.add_argument("--plans", type=int, default=4, help="plans (sequences to learn)")
    p.add_argument("--symbols", type=int, default=6, help="symbols in each sequence")
    p.add_argument("--hidden", type=int, default=32, help="hidden units")
    p.add_argument("--T", type=int, default=20, help="training length (tested on 3 T)")
    p.add_argument("--steps", type=int, default=400, help="updates")
    p.add_argument("--lr", type=float, default=1e-2, help="Adam's learning rate")
    p.add_argument("--quick", action="store_true", help="a small run for the smoke test")
    a = p.parse_args(argv)
    if a.quick:
        a.steps = 80

    cell = rc.cells.jordan(a.plans, a.hidden, a.symbols, loss="xent")
    print(rc.explain(cell).forward_text(), "\n")
    x, y, _, orders = plans(a.plans, a.symbols, a.T)
    tr = rc.Trainer(cell, rc.Adam(a.lr), clip_norm=1.0)
    before = tr.evaluate(x, y)
    t0 = time.perf_counter()
    tr.fit(x, y, epochs=a.steps, batch_size=a.plans, verbose=0)  # one update per epoch: all plans
    seconds = time.perf_counter() - t0
    after = tr.evaluate(x, y)
    print(f"Jordan network H={a.hidden}: {a.steps} updates in {seconds:.1f} s; "
          f"cross-entropy {before:.3f} -> {after:.4f} (chance: ln {a.symbols} = {np.log(a.symbols):.3f})")

    T_long = 3 * a.T
    xl, _, symbols, _ = plans(a.plans, a.symbols, T_long)
    out, _ = tr.predict(xl)
    said = out["y"].argmax(axis=-1)                                                    # (T, P)
    acc_train, acc_long = float((said[:a.T] == symbols[:a.T]).mean()), float((said == symbols).mean())
    print(f"symbols right: {acc_train:.1%} of the {a.T} trained steps, {acc_long:.1%} of {T_long} steps "
          f"(chance {1 / a.symbols:.1%})")
    for k in range(a.plans):
        print(f"  plan {k}: order {''.join(map(str, orders[k]))}, says "
              f"{''.join(map(str, said[:, k]))}")
    return {"xent_before": before, "xent_after": after, "accuracy": acc_train,
            "accuracy_long": acc_long, "seconds": seconds}


if __name__ == "__main__":
    main()
