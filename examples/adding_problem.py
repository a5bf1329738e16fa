"""The adding problem (Hochreiter & Schmidhuber 1997) at T = 100: LSTM and GRU solve it,
a vanilla tanh RNN does not — and the gradient norms through time show why.

Each input step is (a random value in [0, 1], a marker); two steps are marked, one in each
half of the sequence; the target, read at the last step only, is the sum of the two marked
values.  Always answering 1 gives MSE 1/6 ≈ 0.167 (the variance of the sum): a network
"solves" the task when its MSE falls well below that, which needs the last step's error to
reach back ~50–100 steps to the marked inputs.

    python examples/adding_problem.py --plot flow.png   # ~1.5 min on 2 cores
    python examples/adding_problem.py --T 200 --epochs 12
    python examples/adding_problem.py --quick     # a few seconds (the smoke test)
"""
import argparse
import time

import numpy as np

import rnncomp as rc
from rnncomp.inspect import gradient_flow
from rnncomp.train.plot import line_plot
from rnncomp.train.tasks import adding

BASELINE = 1 / 6  # MSE of always predicting 1


def flow(cell, params, T, seed=7):
    """‖∂L/∂s[t]‖ (all states together) over 16 held-out sequences, t = 0 … T."""
    x, y, m = adding(T=T, N=16, seed=seed, dtype="float64")
    p64 = {k: np.asarray(v, dtype="float64") for k, v in params.items()}
    return gradient_flow(cell, p64, x, y, mask=m, jacobian=False).grad_norm_joint


class _Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each option's default (not for flags, nor where the default is None)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


def main(argv=None):
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()), formatter_class=_Defaults)
    p.add_argument("--T", type=int, default=100, help="sequence length")
    p.add_argument("--N", type=int, default=10000, help="training sequences")
    p.add_argument("--hidden", type=int, default=64, help="hidden units")
    p.add_argument("--epochs", type=int, default=6, help="passes over the training sequences")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam's learning rate")
    p.add_argument("--cells", default="gru,lstm,elman", help="zoo cells to train, comma-separated")
    p.add_argument("--backend", default="native", choices=["native", "numpy"], help="rnncomp backend")
    p.add_argument("--plot", help="PNG of ‖∂L/∂h[t]‖ against t for the trained networks")
    p.add_argument("--quick", action="store_true", help="a small run for the smoke test")
    a = p.parse_args(argv)
    if a.quick:
        a.T, a.N, a.hidden, a.epochs = 30, 600, 16, 2

    x, y, m = adding(T=a.T, N=a.N, seed=0)
    xt, yt, mt = adding(T=a.T, N=1000, seed=1)  # held out
    results = {}
    for name in a.cells.split(","):
        cell = getattr(rc.cells, name)(2, a.hidden, 1)
        tr = rc.Trainer(cell, rc.Adam(a.lr), clip_norm=1.0, backend=a.backend)
        init_flow, before = flow(cell, tr.params, a.T), 2 * tr.evaluate(xt, yt, mask=mt)
        t0, curve = time.perf_counter(), []
        for epoch in range(a.epochs):
            tr.fit(x, y, mask=m, epochs=1, batch_size=50, seed=epoch, verbose=0)
            curve.append(2 * tr.evaluate(xt, yt, mask=mt))  # loss ½(y − t)²: MSE = 2 × loss
            print(f"  {name:>5} epoch {epoch + 1}: held-out MSE {curve[-1]:.4f}", flush=True)
        results[name] = {"mse_before": before, "mse": curve[-1], "curve": curve,
                         "seconds": time.perf_counter() - t0, "flow_init": init_flow,
                         "flow": flow(cell, tr.params, a.T)}

    print(f"\nadding problem, T = {a.T}, {a.N} training sequences, H = {a.hidden}, Adam({a.lr}), "
          f"batch 50, {a.epochs} epochs")
    print(f"  {'cell':>6}  {'held-out MSE':>12}  {'vs. 0.167':>9}  {'solved':>6}  {'time':>7}")
    for name, r in results.items():
        print(f"  {name:>6}  {r['mse']:>12.4f}  {r['mse'] / BASELINE:>8.1%}  "
              f"{'yes' if r['mse'] < 0.1 * BASELINE else 'no':>6}  {r['seconds']:>6.1f}s")

    print(f"\n‖∂L/∂h[t]‖ of the trained networks (the loss is at t = {a.T} only; "
          "LSTM: h and c together):")
    ts = sorted(set(range(0, a.T + 1, max(1, a.T // 10))) | {a.T})
    print("  " + f"{'t':>5}" + "".join(f"{n:>12}" for n in results))
    for t in ts:
        print("  " + f"{t:>5}" + "".join(f"{r['flow'][t]:>12.3e}" for r in results.values()))
    print(f"the share of ‖∂L/∂h[{a.T}]‖ that reaches t = {a.T // 4} (the first half's markers), "
          "trained (at initialisation):")
    for name, r in results.items():
        ratio = lambda f: f[a.T // 4] / f[a.T]  # noqa: E731
        print(f"  {name:>6}: {ratio(r['flow']):.1e} ({ratio(r['flow_init']):.1e})")
    if a.plot:
        t = np.arange(a.T + 1)
        line_plot(a.plot, [(t, r["flow"]) for r in results.values()], logy=True, xlabel="t",
                  ylabel="‖∂L/∂h[t]‖ (all states)", title=f"adding problem, T = {a.T}: gradient norm after training",
                  legend=list(results))
        print(f"wrote {a.plot}")
    return results


if __name__ == "__main__":
    main()
