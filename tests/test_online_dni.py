"""DNI at the truncation boundary of ``Trainer.fit(bptt=rc.Truncated(k))`` (issue #20).

Oracles: with γ = 0 the synthetic gradient is 0 and DNI is the trainer's own truncated BPTT
(equal to 1e-12: the same compiled model, the same windows, summed in the same order); a
window's gradient with a given module ĝ equals central differences of the window's loss plus
γ ĝᵀ s[hi] (ĝ held fixed, its definition), 1e-7 relative at eps 1e-6 in float64.  Overlapping
windows (k2 > k1): the unrolled VJP with the seed as an external cotangent, and central
differences.
"""
import importlib.util
import pathlib

import numpy as np
import pytest

import rnncomp as rc
from rnncomp.train.optim import Optimizer
from rnncomp.train.tasks import delayed_copy, repeat_copy


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


class _Spy(rc.DNI):
    """rc.DNI that keeps each synthetic gradient it seeds and each bootstrap target."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.seeds, self.targets = [], []

    def synthetic(self, end):
        seed = super().synthetic(end)
        self.seeds.append((end.copy(), seed.copy()))
        return seed

    def module_grad(self, start, target):
        self.targets.append((start.copy(), target.copy()))
        return super().module_grad(start, target)


def _flat(g, names):
    return np.concatenate([np.asarray(g[n]).ravel() for n in names])


@pytest.mark.parametrize("k2, masked", [(6, False), (6, True), (2, True)])
@pytest.mark.parametrize("cell", [rc.cells.elman(2, 3, 1), rc.cells.lstm(2, 3, 1)], ids=lambda c: c.name)
def test_overlapping_windows_credit_the_synthetic_gradient_to_the_first_k1_steps(cell, k2, masked):
    """Truncated(2, 6) over 12 steps: window [lo, lo + 2) back-propagates its losses to
    max(0, lo − 4), and γ ĝ(s[lo + 2]) is credited to steps [lo − 4, lo − 2) only (lo ≥ 4).
    Reference: the trainer's own truncated BPTT for the losses, plus the seed pulled back by
    the *unrolled* VJP (rnncomp.backends.numpy.unrolled_vjp: one reverse walk over the unfolded
    graph) through [lo − 2, lo + 2) without credit and [lo − 4, lo − 2) with; float64, 1e-10
    relative (the sums differ in order only).  The bootstrap target at s[lo] is the unrolled
    VJP of the window's losses and its seed.  ``masked``: steps 0–4 have no loss (a copy
    task's input phase); their windows learn from ĝ alone, and update only where it is
    credited.  Central differences of window 3's loss plus seedᵀ s[hi], with θ perturbed in
    the losses and in the first chunk's steps only, agree to 1e-7 relative (eps 1e-6:
    truncation error ~1e-12, rounding ~1e-10)."""
    from rnncomp.backends.numpy import unrolled_vjp
    k1, T = 2, 12
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(T, 3, 2)), rng.normal(size=(T, 3, 1))
    mask = np.ones((T, 3))
    mask[:5 if masked else 0] = 0
    dni = _Spy(gamma=0.8)
    N = sum(cell.step.states.values())
    dni.restore(rng.normal(size=(N, N)), rng.normal(size=N), {}, 0)
    rec = _Record()
    tr = rc.Trainer(cell, optimizer=rec, gradient=dni, bptt=rc.Truncated(k1, k2), backend="numpy", dtype="float64")
    tr.fit({"x": x}, {"target": y}, epochs=1, batch_size=3, shuffle=False, verbose=0, mask=mask)
    model = rc.compile(cell, backend="numpy", dtype="float64")
    p = {k: np.array(v) for k, v in tr.params.items()}
    names, join = tr.names, lambda d: np.concatenate([d[s] for s in cell.step.states], axis=1)
    split = lambda v: dict(zip(cell.step.states, np.split(v, np.cumsum(list(cell.step.states.values()))[:-1], axis=1)))
    state = {b: model.forward(p, {"x": x[:b]})[1] if b else None for b in range(0, T + 1, k1)}

    def pulled(a, b, seed):  # seedᵀ ∂s[b]/∂(s[a], θ in [a, b)), unrolled
        _, g, _, d_h0 = unrolled_vjp(cell, p, {"x": x[a:b]}, h0=state[a], d_final=seed)
        return g, d_h0

    assert len(dni.seeds) == T // k1 - 1 and len(dni.targets) == T // k1 - 1
    expected = []
    for w, lo in enumerate(range(0, T, k1)):
        hi, start = lo + k1, max(0, lo - (k2 - k1))
        m = np.zeros((hi - start, 3))
        m[lo - start:] = mask[lo:hi]
        lossy = m.any()
        ref = np.zeros_like(tr.flat)
        if lossy:
            ref += _flat(model.loss_and_grad(p, {"x": x[start:hi]}, {"target": y[start:hi]}, h0=state[start], mask=m)[1], names)
        seed = dni.seeds[w][1] if hi < T else None
        if seed is not None:
            np.testing.assert_allclose(dni.seeds[w][0], join(state[hi]), rtol=1e-12)
        if lo > 0:  # ĝ(s[lo])'s target: ∂(window loss + seedᵀ s[hi])/∂s[lo]
            start_state, target = dni.targets[w - 1]
            np.testing.assert_allclose(start_state, join(state[lo]), rtol=1e-12)
            labels = {"targets": {"target": y[lo:hi]}, "mask": mask[lo:hi]} if lossy else {}
            d_lo = unrolled_vjp(cell, p, {"x": x[lo:hi]}, h0=state[lo], d_final=None if seed is None else split(seed),
                                **labels)[3]
            np.testing.assert_allclose(target, join(d_lo), rtol=1e-10, atol=1e-14)
        if seed is not None and lo >= k2 - k1:
            d_mid = pulled(start + k1, hi, split(seed))[1] if hi > start + k1 else split(seed)
            ref += _flat(pulled(start, start + k1, d_mid)[0], names)
        elif not lossy:
            continue  # no update
        expected.append(ref)
    assert len(rec.grads) == len(expected)
    for w, (got, ref) in enumerate(zip(rec.grads, expected)):
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-13 * np.abs(ref).max(), err_msg=f"update {w}")
    if masked or k2 == k1:
        return
    # central differences of window 3 (lo = 6: start 2, the seed credited to steps 2, 3)
    lo, hi, start, seed = 6, 8, 2, dni.seeds[3][1]
    d = {k: rng.normal(size=v.shape) for k, v in p.items()}

    def f(eps):
        q = {k: p[k] + eps * d[k] for k in p}
        m = np.zeros((hi - start, 3))
        m[lo - start:] = 1
        loss = model.loss_and_grad(q, {"x": x[start:hi]}, {"target": y[start:hi]}, h0=state[start], mask=m)[0]
        mid = model.forward(q, {"x": x[start:start + k1]}, h0=state[start])[1]
        end = model.forward(p, {"x": x[start + k1:hi]}, h0=mid)[1]
        return loss + float((seed * join(end)).sum())

    fd = (f(1e-6) - f(-1e-6)) / 2e-6
    an = float(rec.grads[3] @ _flat(d, names))
    assert abs(fd - an) <= 1e-7 * abs(fd), (fd, an)


@pytest.mark.parametrize("cell", [rc.cells.gru(1, 4, 1), rc.cells.lstm(1, 3, 1)], ids=lambda c: c.name)
def test_overlapping_dni_without_a_future_is_the_trainers_truncated_bptt(cell):
    """γ = 0 with Truncated(2, 6): the chunked backward is the trainer's one-call window
    (1e-10: the same sums in another order, through 2 epochs of Adam updates)."""
    x, y, _ = delayed_copy(15, 6, delay=3, seed=0, dtype="float64")
    lengths = np.array([15, 15, 9, 5, 12, 3])
    runs = []
    for gradient in (rc.DNI(gamma=0.0), None):
        tr = rc.Trainer(cell, optimizer=rc.Adam(0.01), gradient=gradient, bptt=rc.Truncated(2, 6),
                        backend="numpy", dtype="float64", clip_norm=0.5)
        hist = tr.fit(x, y, epochs=2, batch_size=3, lengths=lengths, shuffle=False, verbose=0)
        runs.append((hist, dict(tr.params)))
    (ha, pa), (hb, pb) = runs
    np.testing.assert_allclose(ha, hb, rtol=1e-10)
    for k in pa:
        np.testing.assert_allclose(pa[k], pb[k], rtol=1e-9, atol=1e-12, err_msg=k)


def test_overlapping_dni_runs_natively_as_on_numpy():
    """The windows' backward is the compiled model's VJP: the native backend trains to the
    NumPy backend's parameters (1e-10, float64)."""
    x, y, _ = delayed_copy(14, 6, delay=3, seed=0, dtype="float64")
    flats = []
    for backend in ("numpy", "native"):
        tr = rc.Trainer(rc.cells.gru(1, 4, 1), optimizer=rc.Adam(0.01), gradient=rc.DNI(gamma=0.9),
                        bptt=rc.Truncated(2, 6), backend=backend, dtype="float64")
        tr.fit(x, y, epochs=2, batch_size=3, shuffle=False, verbose=0)
        flats.append((tr.flat.copy(), tr.gradient.flat.copy()))
    for a, b in zip(*flats):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_overlapping_windows_refuse_a_teacher_forced_cell():
    import sympy as sp
    cell = rc.Cell("teacher_forced")
    x, h, t = cell.input("x", 1), cell.state("h", 2), cell.target("t", 1)
    cell.update(h, sp.tanh(cell.param("W", (2, 1)) @ x + cell.param("U", (2, 2)) @ h + cell.param("A", (2, 1)) @ t))
    y = cell.output("y", cell.param("V", (1, 2)) @ h.new)
    cell.loss((y - t) ** 2 / 2)
    with pytest.raises(ValueError, match=r"Truncated\(k1=2, k2=4\): cell 'teacher_forced' reads target 't'"):
        rc.Trainer(cell, gradient=rc.DNI(), bptt=rc.Truncated(2, 4), backend="numpy")
    rc.Trainer(cell, gradient=rc.DNI(), bptt=rc.Truncated(2), backend="numpy")  # k2 = k1: every window has its targets


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


def test_repeat_copy_data():
    """Each sample: L bits, the marker with R / repeats, then the bits R times and zeros."""
    L, rep = 3, 3
    x, y, m = repeat_copy(L, rep, N=40, seed=4, dtype="float64")
    assert x.shape == (L + 1 + rep * L, 40, 3) and y.shape == (L + 1 + rep * L, 40, 1)
    for n in range(40):
        R = int(round(x[L, n, 2] * rep))
        assert 1 <= R <= rep and x[L, n, 1] == 1 and set(np.abs(x[:L, n, 0])) == {1.0}
        want = list(x[:L, n, 0]) * R + [0.0] * ((rep - R) * L)
        assert list(y[L + 1:, n, 0]) == want and not y[:L + 1, n].any()
        assert list(m[:, n]) == [0.0] * (L + 1) + [1.0] * (rep * L)
    assert {int(round(v * rep)) for v in x[L, :, 2]} == {1, 2, 3}
    assert (repeat_copy(L, rep, N=5, vary=False)[0][L, :, 2] == 1).all()


def test_the_repeat_copy_example_runs_and_dni_learns_in_the_input_phase():
    """examples/dni_repeat_copy.py --quick: the code path (two epochs, too short to learn).
    T = 13, windows of 3: the mask leaves steps 0–4 without a loss, so truncated BPTT skips
    the window [0, 3) (4 updates a batch) and DNI trains it through ĝ(s[3]) (5 a batch).
    The learning itself, seeds 0–2, is measured in docs/algorithms.md (about a minute a run)."""
    path = pathlib.Path(__file__).resolve().parent.parent / "examples" / "dni_repeat_copy.py"
    spec = importlib.util.spec_from_file_location("dni_repeat_copy", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    r = mod.main(["--quick"])
    assert r["truncated BPTT"]["updates"] == 2 * 2 * 4 and r["DNI"]["updates"] == 2 * 2 * 5, r
    for v in r.values():
        assert np.isfinite(v["mse"]) and 0 <= v["accuracy"] <= 1 and len(v["history"]) == 2
