"""A custom recurrent cell in a few lines: see its derived BPTT step, check it, run it natively.

    python examples/custom_cell.py [--quick]
"""
import argparse

import numpy as np
import sympy as sp

import rnncomp as rc

# A gated cell with a softsign candidate and a learned per-unit leak: built into no framework.
cell = rc.Cell("leaky_softsign")
x = cell.input("x", 4)
h = cell.state("h", 16)
W, U = cell.param("W", (16, 4)), cell.param("U", (16, 16))
leak = cell.param("leak", 16, init=("constant", 0.5))
gate = cell.define("gate", rc.sigmoid(cell.param("Wg", (16, 4)) @ x + cell.param("bg", 16)))
cell.update(h, (1 - gate) * rc.sigmoid(leak) * h + gate * rc.softsign(W @ x + U @ h))
y = cell.output("y", cell.param("V", (2, 16)) @ h.new)
cell.loss((y - cell.target("t", 2)) ** 2 / 2)


class _Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each option's default (not for flags, nor where the default is None)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


def main(T=50, B=8):
    print(rc.explain(cell))
    rng = np.random.default_rng(0)
    params = cell.init_params(seed=0)
    xs, ts = rng.normal(size=(T, B, 4)), rng.normal(size=(T, B, 2))
    ref_loss, ref_grads, _ = rc.compile(cell, backend="numpy").loss_and_grad(params, xs, ts)
    loss, grads, _ = rc.compile(cell, backend="native").loss_and_grad(params, xs, ts)
    worst = max(np.abs(grads[k] - ref_grads[k]).max() for k in grads)
    print(f"\nloss {loss:.10f} (reference {ref_loss:.10f}); largest gradient difference {worst:.1e}")
    return worst


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()), formatter_class=_Defaults)
    ap.add_argument("--T", type=int, default=50, help="steps")
    ap.add_argument("--B", type=int, default=8, help="sequences")
    ap.add_argument("--quick", action="store_true", help="T = 5, B = 2 (a smoke test)")
    a = ap.parse_args()
    main(*((5, 2) if a.quick else (a.T, a.B)))
