"""rnncomp.torch with NaN and inf: they flow through the layer as through any torch op.

The layer calls its model with ``check_finite=False`` (rnncomp's own calls refuse them:
tests/test_vjp.py), so PyTorch's tools see them: GradScaler skips an overflowing step and
lowers its scale, as with ``nn.LSTM`` in the same model.  Oracle: the cell as a plain PyTorch
loop (tests/test_torch.py) in float64, NaN where it has NaN, ±inf where it has ±inf, the
finite entries equal to rounding.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="rnncomp.torch needs PyTorch (pip install 'rnncomp[torch]')")

import rnncomp as rc  # noqa: E402
from rnncomp.torch import Recurrent  # noqa: E402

from test_torch import reference  # noqa: E402

F64, INF, NAN = torch.float64, float("inf"), float("nan")


def _same(got, want, what):
    got, want = got.detach().numpy(), want.detach().numpy()
    for test in (np.isnan, np.isposinf, np.isneginf):
        assert (test(got) == test(want)).all(), f"{what}: {test.__name__} differs"
    fin = np.isfinite(want)
    assert np.allclose(got[fin], want[fin], rtol=1e-10, atol=1e-12), what


class _TorchLSTM(torch.nn.Module):
    def __init__(self, d, h, n_out):
        super().__init__()
        self.lstm, self.out = torch.nn.LSTM(d, h), torch.nn.Linear(h, n_out)

    def forward(self, x):
        return self.out(self.lstm(x)[0])


@pytest.mark.parametrize("rnn", ["rnncomp", "nn.LSTM"])
def test_grad_scaler_skips_an_overflowing_step_then_trains(rnn):
    """float16 autocast, GradScaler("cpu") starting at 2**24: the first steps' gradients
    overflow in the float16 Linears, so the cotangent into the layer is inf; each such step is
    skipped (parameters unchanged) and the scale halved, then the steps train."""
    torch.manual_seed(0)
    layer = (Recurrent(rc.cells.lstm(16, 32, 16), output="y", return_final=False) if rnn == "rnncomp"
             else _TorchLSTM(16, 32, 16))
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), layer, torch.nn.Linear(16, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 24)
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(12, 8, 4, generator=g), torch.randint(0, 10, (12, 8), generator=g)
    losses, moved, scales = [], [], []
    for _ in range(8):
        before = [p.detach().clone() for p in model.parameters()]
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = torch.nn.functional.cross_entropy(model(x).reshape(-1, 10), t.reshape(-1))
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
        scales.append(scaler.get_scale())
        moved.append(any(not torch.equal(a, b) for a, b in zip(before, model.parameters())))
    assert not moved[0] and scales[0] == 2.0 ** 23          # skipped, scale halved
    first = moved.index(True)                               # then it trains
    assert all(moved[first:]) and first <= 5 and losses[-1] < losses[first]


CASES = {   # name: (what to spoil, where)
    "all cotangents inf": ("dy", None),
    "one cotangent inf": ("dy", (3, 0, 0, INF)),
    "one cotangent nan": ("dy", (1, 1, 1, NAN)),
    "final-state cotangent -inf": ("dh", (0, 0, -INF)),
    "input inf": ("x", (1, 0, 0, INF)),
    "input nan": ("x", (2, 1, 0, NAN)),
    "h0 inf": ("h0", (0, 1, INF)),
    "parameter inf": ("param", INF),
}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the NumPy oracle's overflow and invalid-value warnings
@pytest.mark.parametrize("backend", ["native", "numpy"])
@pytest.mark.parametrize("name", ["elman", "gru", "lstm"])
@pytest.mark.parametrize("case", list(CASES))
def test_nan_and_inf_give_the_outputs_and_gradients_of_a_pytorch_loop(case, name, backend):
    T, B, D, H = 4, 3, 3, 5
    cell = rc.cells.get(name)(D, H, 2)
    layer = Recurrent(cell, output="y", backend=backend, dtype=F64, seed=1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(T, B, D, dtype=F64, generator=g)
    h0 = {s: torch.randn(B, n, dtype=F64, generator=g) for s, n in cell.step.states.items()}
    dy, dh = torch.randn(T, B, 2, dtype=F64, generator=g), torch.randn(B, H, dtype=F64, generator=g)
    what, where = CASES[case]
    if what == "param":
        with torch.no_grad():
            next(layer.parameters()).view(-1)[0] = where
    elif where is None:
        dy = dy * INF
    else:
        target = {"dy": dy, "dh": dh, "x": x, "h0": h0.get("h")}[what]
        target[where[:-1]] = where[-1]

    def run(forward, params):
        xs, hs = x.clone().requires_grad_(), {s: v.clone().requires_grad_() for s, v in h0.items()}
        y, final = forward(params, xs, hs)
        (y * dy).sum().add((final["h"] * dh).sum()).backward()
        return y, final, {"x": xs.grad, **{f"h0 {s}": v.grad for s, v in hs.items()},
                          **{n: p.grad for n, p in params.items()}}

    y, final, got = run(lambda p, xs, hs: layer(xs, hs), dict(layer.named_parameters()))
    plain = {n: p.detach().clone().requires_grad_() for n, p in layer.named_parameters()}
    y2, final2, want = run(lambda p, xs, hs: reference(name, p, xs, hs), plain)
    _same(y, y2, "y")
    for s in final2:
        _same(final[s], final2[s], f"final {s}")
    for k in want:
        _same(got[k], want[k], f"gradient of {k}")
    assert any(not torch.isfinite(v).all() for v in [y, *got.values()])  # it flowed through


@pytest.mark.filterwarnings("ignore:Error detected in:UserWarning",       # anomaly mode's traceback
                            "ignore:Anomaly Detection has been enabled:UserWarning")
def test_anomaly_mode_names_the_layer_that_returned_nan():
    """PyTorch's own tool for a NaN finds it in the layer's backward (before: rnncomp's CallError)."""
    layer = Recurrent(rc.cells.lstm(3, 4, 2), output="y", dtype=F64)
    x = torch.randn(5, 2, 3, dtype=F64, requires_grad=True)
    with torch.autograd.detect_anomaly(), pytest.raises(RuntimeError, match="rnncomp.*returned nan values"):
        (layer(x)[0] * INF).sum().backward()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_cell_with_derived_weights_lets_an_inf_parameter_through_too():
    """The derived weights are computed from parameters checked by the wrapper
    (backends/derived.py), which follows the call's check_finite: an inf in A reaches exp(A)
    in the layer (native and NumPy agree), and rc.compile's model still refuses it by name."""
    from test_derived_model import masked
    layers = [Recurrent(masked(), output="y", backend=b, dtype=F64) for b in ("native", "numpy")]
    x = torch.randn(5, 2, 3, dtype=F64)
    got = []
    for layer in layers:
        with torch.no_grad():
            layer.A[0, 1] = INF
        xs = x.clone().requires_grad_()
        y, _ = layer(xs)
        y.sum().backward()
        got.append([y, xs.grad, layer.A.grad, layer.W.grad])
    for a, b in zip(*got):
        _same(a, b, "native against NumPy")
    assert not torch.isfinite(got[0][0]).all()
    params = {n: p.detach().numpy() for n, p in layers[0].named_parameters()}
    with pytest.raises(rc.CallError, match=r"cell 'masked': param 'A' contains inf at index \(0, 1\)"):
        rc.compile(masked(), dtype="float64").forward(params, {"x": x.numpy()})
