"""DNI on a stream fed in pieces (issue #20): ``fit_online(..., more_follows=True)`` seeds
the piece's last window with ĝ, ``continue_stream=True`` trains ĝ at the next piece's first
step, so pieces whose lengths are multiples of ``every`` train as the whole stream does; and
``fit(stateful=True)`` with ``bptt=rc.Truncated(k)``, whose batches continue each other, does
the same at its batch boundaries.

Oracle: the whole stream in one ``fit_online`` call (its windows inside the stream get ĝ and
train it by the code the single-call tests check against central differences and the unrolled
VJP, tests/test_online_dni.py).  Equal to 1e-12 relative: the same windows, the same compiled
model, the same order of updates; only the arrays' slicing differs.
"""
import numpy as np
import pytest

import rnncomp as rc
from rnncomp.errors import CallError
from rnncomp.train.tasks import delayed_copy


def _stream(T=24):
    x, y, _ = delayed_copy(T, 3, delay=2, seed=0, dtype="float64")
    return x, y


def _trainer(backend="numpy", gamma=0.9, bptt=None):
    return rc.Trainer(rc.cells.elman(1, 5, 1), optimizer=rc.Adam(0.01), gradient=rc.DNI(lr=0.01, gamma=gamma),
                      backend=backend, dtype="float64", clip_norm=1.0, bptt=bptt)


def _same(a, b):
    np.testing.assert_allclose(a.flat, b.flat, rtol=1e-12, atol=1e-15)
    A, c = a.gradient.module
    A2, c2 = b.gradient.module
    np.testing.assert_allclose(A, A2, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(c, c2, rtol=1e-12, atol=1e-15)
    assert a.gradient.updates == b.gradient.updates


@pytest.mark.parametrize("backend", ["numpy", "native"])
@pytest.mark.parametrize("cuts", [(12,), (6, 15)], ids=lambda c: "cut at " + ",".join(map(str, c)))
def test_pieces_of_a_stream_train_as_the_whole_stream(backend, cuts):
    x, y = _stream()
    whole = _trainer(backend)
    losses = whole.fit_online(x, y, every=3)
    pieces, got = _trainer(backend), []
    bounds = [0, *cuts, len(x)]
    for i, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        got += pieces.fit_online(x[lo:hi], y[lo:hi], every=3, continue_stream=i > 0,
                                 more_follows=hi < len(x))
    np.testing.assert_allclose(got, losses, rtol=1e-12)
    _same(pieces, whole)


def test_without_more_follows_a_pieces_end_is_a_streams_end():
    x, y = _stream()
    whole, pieces = _trainer(), _trainer()
    whole.fit_online(x, y, every=3)
    pieces.fit_online(x[:12], y[:12], every=3)
    pieces.fit_online(x[12:], y[12:], every=3, continue_stream=True)
    assert not np.allclose(pieces.gradient.module[0], whole.gradient.module[0], rtol=1e-6)
    # and with γ = 0 there is no synthetic gradient to miss: truncated BPTT either way
    whole, pieces = _trainer(gamma=0.0), _trainer(gamma=0.0)
    whole.fit_online(x, y, every=3)
    pieces.fit_online(x[:12], y[:12], every=3, more_follows=True)
    pieces.fit_online(x[12:], y[12:], every=3, continue_stream=True)
    np.testing.assert_allclose(pieces.flat, whole.flat, rtol=1e-12, atol=1e-15)


def test_a_stateful_fit_trains_dni_as_the_whole_stream():
    """Two batches that continue each other (rows 0-2 steps 0-11, rows 3-5 steps 12-23), in a
    stateful fit with truncation 3: the windows and updates of fit_online over the whole stream."""
    x, y = _stream()
    whole = _trainer()
    whole.fit_online(x, y, every=3)
    fit = _trainer(bptt=rc.Truncated(3))
    lay = lambda a: np.concatenate([a[:12], a[12:]], axis=1)  # noqa: E731 - (12, 6, 1)
    fit.fit(lay(x), lay(y), epochs=1, batch_size=3, stateful=True, shuffle=False, verbose=0)
    _same(fit, whole)


def test_more_follows_must_be_a_bool():
    x, y = _stream(T=6)
    with pytest.raises(CallError, match="more_follows must be True or False"):
        _trainer().fit_online(x, y, every=3, more_follows="yes")


def test_a_checkpoint_between_pieces_trains_as_the_whole_stream(tmp_path):
    x, y = _stream()
    whole = _trainer()
    whole.fit_online(x, y, every=3)
    first = _trainer()
    first.fit_online(x[:12], y[:12], every=3, more_follows=True)
    first.save(tmp_path / "piece.npz")
    second = rc.Trainer.load(tmp_path / "piece.npz")
    second.fit_online(x[12:], y[12:], every=3, continue_stream=True)
    _same(second, whole)


def test_a_stateful_batchs_last_overlapping_window_gets_the_synthetic_gradient_at_every_step():
    """Truncated(2, 6), stateful batches of 4 steps: the batch's last window [0, 4) (losses on
    [2, 4)) is seeded with γ ĝ(s[4]), and the next batch's windows start at its step 0, so
    ĝ(s[4]) is the only future any of steps 0-3 get: it is credited to all of them.  (Before,
    only to a first chunk that the clipped window lacks: batches shorter than k2 trained as
    truncated BPTT, γ or not.)  Reference: the window's loss gradient from the compiled model
    plus the seed pulled back through [0, 4) by the unrolled VJP, 1e-10 relative."""
    from test_online_dni import _Record, _Spy

    from rnncomp.backends.numpy import unrolled_vjp
    cell = rc.cells.elman(2, 3, 1)
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(4, 6, 2)), rng.normal(size=(4, 6, 1))  # rows 3-5 continue rows 0-2
    dni, rec = _Spy(gamma=0.8), _Record()
    dni.restore(rng.normal(size=(3, 3)), rng.normal(size=3), {}, 0)
    tr = rc.Trainer(cell, optimizer=rec, gradient=dni, bptt=rc.Truncated(2, 6), backend="numpy", dtype="float64")
    tr.fit({"x": x}, {"target": y}, epochs=1, batch_size=3, stateful=True, shuffle=False, verbose=0)
    model = rc.compile(cell, backend="numpy", dtype="float64")
    p = {k: np.array(v) for k, v in tr.params.items()}
    x0, y0 = x[:, :3], y[:, :3]
    m = np.zeros((4, 3))
    m[2:] = 1
    loss_grad = model.loss_and_grad(p, {"x": x0}, {"target": y0}, mask=m)[1]
    seed = dni.seeds[1][1]  # γ ĝ(s[4]) of the batch's last window (the first: ĝ(s[2]))
    seed_grad = unrolled_vjp(cell, p, {"x": x0}, d_final={"h": seed})[1]
    ref = np.concatenate([(np.asarray(loss_grad[n]) + seed_grad[n]).ravel() for n in tr.names])
    np.testing.assert_allclose(rec.grads[1], ref, rtol=1e-10, atol=1e-13 * np.abs(ref).max())
