"""DNI at the truncation boundary of ``Trainer.fit(bptt=rc.Truncated(k))`` (issue #20).

Oracles: with γ = 0 the synthetic gradient is 0 and DNI is the trainer's own truncated BPTT
(equal to 1e-12: the same compiled model, the same windows, summed in the same order); a
window's gradient with a given module ĝ equals central differences of the window's loss plus
γ ĝᵀ s[hi] (ĝ held fixed, its definition), 1e-7 relative at eps 1e-6 in float64.
"""
import importlib.util
import pathlib

import numpy as np
import pytest

import rnncomp as rc
from rnncomp.train.optim import Optimizer
from rnncomp.train.tasks import delayed_copy


@pytest.mark.parametrize("cell", [rc.cells.gru(1, 4, 1), rc.cells.lstm(1, 3, 1)], ids=lambda c: c.name)
def test_dni_without_a_future_is_the_trainers_truncated_bptt(cell):
    x, y, _ = delayed_copy(14, 6, delay=3, seed=0, dtype="float64")
    lengths = np.array([14, 14, 9, 5, 12, 3])  # windows past a sequence's end: padding
    runs = []
    for gradient in (rc.DNI(gamma=0.0), None):
        tr = rc.Trainer(cell, optimizer=rc.Adam(0.01), gradient=gradient, bptt=rc.Truncated(3),
                        backend="numpy", dtype="float64", clip_norm=0.5)
        hist = tr.fit(x, y, epochs=2, batch_size=3, lengths=lengths, shuffle=False, verbose=0)
        runs.append((hist, tr.batch_history, dict(tr.params)))
    (ha, ba, pa), (hb, bb, pb) = runs
    np.testing.assert_allclose(ha, hb, rtol=1e-12)
    np.testing.assert_allclose([v for _, v in ba], [v for _, v in bb], rtol=1e-12)
    for k in pa:
        np.testing.assert_allclose(pa[k], pb[k], rtol=1e-11, atol=1e-14, err_msg=k)


class _Record(Optimizer):
    """Keeps each gradient it is given and leaves the parameters alone."""

    def __init__(self):
        super().__init__(1.0)
        self.grads = []

    def step(self, flat, grad, step):
        self.grads.append(grad.copy())


def test_a_windows_gradient_is_its_loss_plus_the_synthetic_gradient_at_its_end():
    cell = rc.cells.elman(2, 3, 1)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 2, 2)), rng.normal(size=(8, 2, 1))
    dni = rc.DNI(gamma=0.7)
    A, c = rng.normal(size=(3, 3)), rng.normal(size=3)
    dni.restore(A, c, {}, 0)
    rec = _Record()
    tr = rc.Trainer(cell, optimizer=rec, gradient=dni, bptt=rc.Truncated(4), backend="numpy", dtype="float64")
    tr.fit({"x": x}, {"target": y}, epochs=1, batch_size=2, shuffle=False, verbose=0)
    assert len(rec.grads) == 2
    model = rc.compile(cell, backend="numpy", dtype="float64")
    params = {k: np.array(v) for k, v in tr.params.items()}

    def f(p):  # the first window's loss + γ ĝ(s[4])ᵀ s[4], ĝ at the unperturbed s[4]
        loss, _, final = model.loss_and_grad(p, {"x": x[:4]}, {"target": y[:4]})
        return loss + 0.7 * float((ghat * final["h"]).sum())

    s4 = model.forward(params, {"x": x[:4]})[1]["h"]
    ghat = s4 @ A.T + c
    off, eps = 0, 1e-6
    for name in tr.names:
        d = rng.normal(size=params[name].shape)
        fd = (f(dict(params, **{name: params[name] + eps * d})) - f(dict(params, **{name: params[name] - eps * d}))) / (2 * eps)
        an = float(rec.grads[0][off:off + d.size] @ d.ravel())
        assert abs(fd - an) <= 1e-9 + 1e-7 * abs(fd), (name, fd, an)
        off += d.size
    assert dni.updates == 1 and not np.array_equal(dni.module[0], A)  # trained once, on window 2


def test_overlapping_windows_are_refused():
    with pytest.raises(ValueError, match=r"rc.DNI\(lr=0.001, gamma=1\) with bptt=rc.Truncated\(k1=2, k2=4\).*k2 = k1"):
        rc.Trainer(rc.cells.elman(1, 2, 1), gradient=rc.DNI(), bptt=rc.Truncated(2, 4), backend="numpy")


def test_the_copy_example_learns_past_the_window_only_with_dni():
    """examples/dni_copy.py --quick (delay 6, windows of 4, 256 sequences × 4 epochs): measured
    held-out sign accuracy 0.66 without DNI, 0.996 with (0.5 is chance)."""
    path = pathlib.Path(__file__).resolve().parent.parent / "examples" / "dni_copy.py"
    spec = importlib.util.spec_from_file_location("dni_copy", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    r = mod.main(["--quick"])
    assert r["truncated BPTT"]["accuracy"] < 0.8 and r["truncated BPTT"]["mse"] > 0.5, r
    assert r["DNI"]["accuracy"] > 0.95 and r["DNI"]["mse"] < 0.2, r
