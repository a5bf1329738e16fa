"""fit(validation_data=..., callbacks=[EarlyStopping, Checkpoint(best=True)]) and
batch_first data (issue #18: a trainer worth using)."""
import numpy as np
import pytest

import rnncomp as rc


def _diverging():
    """Training data y = x and validation data y = -x: the better the fit, the worse the
    validation loss, so the best validation epoch is the first."""
    x = np.sin(np.linspace(0, 12, 41))[:, None, None] * np.linspace(0.5, 1, 8)[None, :, None]
    return x[:-1], x[:-1], (x[:-1], -x[:-1])


class Keep(rc.Callback):
    def __init__(self):
        self.flats = []

    def on_epoch_end(self, trainer, epoch, loss):
        self.flats.append(trainer.flat.copy())


def test_early_stopping_stops_and_restores_the_best_parameters(tmp_path):
    x, y, val = _diverging()
    tr = rc.Trainer(rc.cells.elman(1, 6, 1), rc.Adam(0.02), backend="numpy", dtype="float64")
    keep, stop = Keep(), rc.EarlyStopping(patience=2)
    best = rc.Checkpoint(tmp_path / "best.ckpt", best=True)
    hist = tr.fit(x, y, epochs=50, batch_size=4, verbose=0, validation_data=val, callbacks=[keep, stop, best])
    v = tr.val_history
    assert len(hist) == len(v) == stop.stopped_epoch < 50            # it stopped early
    b = int(np.argmin(v))
    assert stop.best_epoch == b + 1 and stop.stopped_epoch == b + 1 + 2
    assert all(v[i] >= v[b] for i in range(b + 1, len(v)))          # no better epoch after the best
    np.testing.assert_array_equal(tr.flat, keep.flats[b])           # the best epoch's parameters
    saved = rc.Trainer.load(tmp_path / "best.ckpt")
    np.testing.assert_array_equal(saved.flat, keep.flats[b])
    assert saved.val_history == v[:b + 1]


def test_monitoring_the_validation_loss_without_validation_data_is_named(tmp_path):
    x, y, _ = _diverging()
    tr = rc.Trainer(rc.cells.elman(1, 3, 1), backend="numpy", dtype="float64")
    with pytest.raises(ValueError, match="needs fit\\(validation_data="):
        tr.fit(x, y, epochs=2, verbose=0, callbacks=[rc.EarlyStopping()])
    # before the first update (it trained an epoch, then failed; found by a probe)
    assert tr.step_count == 0 and tr.history == []
    with pytest.raises(ValueError, match="Checkpoint watches monitor='val_loss'"):
        tr.fit(x, y, epochs=2, verbose=0, callbacks=[rc.Checkpoint(str(tmp_path / "c.ckpt"), best=True)])
    tr.fit(x, y, epochs=1, verbose=0, callbacks=[rc.Checkpoint(str(tmp_path / "d.ckpt")),   # best=False: no loss
                                                 rc.EarlyStopping(monitor="loss")])
    assert tr.step_count > 0


def test_batch_first_trains_exactly_as_time_major(tmp_path):
    cell = rc.cells.gru(1, 4, 1)
    x, y, val = _diverging()
    mask = (np.random.default_rng(0).random(x.shape[:2]) > 0.3).astype(float)
    a = rc.Trainer(cell, rc.Adam(0.01), backend="numpy", dtype="float64")
    b = rc.Trainer(cell, rc.Adam(0.01), backend="numpy", dtype="float64", batch_first=True)
    bf = lambda v: np.swapaxes(v, 0, 1)  # noqa: E731
    ha = a.fit(x, y, epochs=2, batch_size=4, mask=mask, verbose=0, validation_data=val)
    hb = b.fit(bf(x), bf(y), epochs=2, batch_size=4, mask=mask.T, verbose=0, validation_data=(bf(val[0]), bf(val[1])))
    assert ha == hb and a.val_history == b.val_history
    assert a.evaluate(x, y, mask=mask) == b.evaluate(bf(x), bf(y), mask=mask.T)
    lengths = np.array([40, 30, 20, 10, 40, 40, 1, 5])
    for kw in ({}, {"lengths": lengths}):
        (oa, fa), (ob, fb) = a.predict(x, **kw), b.predict(bf(x), **kw)
        np.testing.assert_array_equal(bf(oa["y"]), ob["y"])
        np.testing.assert_array_equal(fa["h"], fb["h"])
    sa, _ = a.generate(x[:3], 4, lambda out, rng: out)
    sb, _ = b.generate(bf(x[:3]), 4, lambda out, rng: out)
    np.testing.assert_array_equal(bf(sa), sb)
    b.save(tmp_path / "b.ckpt")
    assert rc.Trainer.load(tmp_path / "b.ckpt").batch_first
    with pytest.raises(rc.CallError, match=r"expected \(8, 40\)"):
        b.fit(bf(x), bf(y), mask=mask, verbose=0)                   # a time-major mask


def test_padding_and_streams_lay_out_batch_first():
    seqs = [np.ones((3, 2)), np.ones((5, 2))]
    tm, lengths = rc.pad_sequences(seqs)
    bfirst, lengths2 = rc.pad_sequences(seqs, batch_first=True)
    np.testing.assert_array_equal(np.swapaxes(tm, 0, 1), bfirst)
    assert lengths.tolist() == lengths2.tolist()
    s = np.arange(40.0)
    np.testing.assert_array_equal(np.swapaxes(rc.stream_batches(s, T=4, batch_size=2), 0, 1),
                                  rc.stream_batches(s, T=4, batch_size=2, batch_first=True))


def test_mistakes_in_fit_options_and_data_are_named_before_training():
    # found by a probe: each trained a whole epoch first, or ended in a raw error, or dropped data
    x, y, (vx, vy) = _diverging()
    tr = rc.Trainer(rc.cells.elman(1, 6, 1), rc.Adam(0.02), backend="numpy", dtype="float64")
    before = tr.flat.copy()
    # a validation input of the wrong size named "inputs['x']" after an epoch on the training data
    with pytest.raises(rc.CallError, match=r"^fit\(validation_data=...\): cell 'elman': inputs\['x'\] has shape "
                                           r"\(40, 8, 2\), expected \(40, 8, 1\)"):
        tr.fit(x, y, epochs=1, verbose=0, validation_data=(np.concatenate([vx, vx], 2), vy))
    with pytest.raises(rc.CallError, match=r"fit\(validation_data=...\): .*contains nan"):
        tr.fit(x, y, epochs=1, verbose=0, validation_data=(vx * np.nan, vy))
    # a function as a callback: AttributeError after the first epoch
    with pytest.raises(TypeError, match=r"fit\(callbacks=...\): .* is not a callback: give rc.Callback objects"):
        tr.fit(x, y, epochs=1, verbose=0, callbacks=[lambda *a: None])
    np.testing.assert_array_equal(tr.flat, before)  # nothing trained by the refused calls
    # one callback, not in a list: "'Keep' object is not iterable"
    keep = Keep()
    tr.fit(x, y, epochs=2, verbose=0, callbacks=keep)
    assert len(keep.flats) == 2
    # complex data: NumPy dropped the imaginary part with a ComplexWarning only
    with pytest.raises(rc.CallError, match=r"inputs\['x'\] is complex \(complex128\); .* pass .real"):
        tr.fit(x + 1j, y, epochs=1, verbose=0)
    # predict(x, y): y was taken as h0 and ended in "'numpy.ndarray' object has no attribute 'items'"
    with pytest.raises(rc.CallError, match=r"h0 must be a dict \{name: array\}, got ndarray \(predict\(inputs, h0\)"):
        tr.predict(x, y)


def test_a_last_batch_too_small_for_accumulate_is_refused_before_any_update():
    # 24 sequences in batches of 7 with accumulate=4: three updates, then "needs at least 4
    # sequences (batch_size >= 4)" of a batch_size of 7 (found by a probe)
    x, y = np.ones((5, 24, 1)), np.ones((5, 24, 1))
    tr = rc.Trainer(rc.cells.elman(1, 3, 1), rc.Adam(0.02), backend="numpy", dtype="float64", accumulate=4)
    with pytest.raises(rc.CallError, match=r"^fit: 24 sequences in batches of 7 leave a last batch of 3, fewer than "
                                           r"the 4 that accumulate=4 .* remainder of 24 is 0 or 4 or more"):
        tr.fit(x, y, epochs=1, batch_size=7, verbose=0)
    assert tr.step_count == 0
    assert len(tr.fit(x, y, epochs=1, batch_size=10, verbose=0)) == 1  # a last batch of 4 is enough


@pytest.mark.parametrize("callbacks", [lambda tr, epoch, loss: None, 3])
def test_a_function_or_a_number_as_callbacks_is_named_as_not_a_callback(callbacks):
    """Was "'function' object is not iterable" (the check of each callback was never reached)."""
    x, y, _ = _diverging()
    tr = rc.Trainer(rc.cells.elman(1, 3, 1), backend="numpy", dtype="float64")
    with pytest.raises(TypeError, match=r"^fit\(callbacks=\.\.\.\): .* is not a callback: give rc\.Callback objects"):
        tr.fit(x, y, epochs=1, verbose=0, callbacks=callbacks)
    assert tr.step_count == 0
