"""Variable-length batches, stateful training over streams, chunked evaluation, generation,
learning-curve PNGs and the character-model helpers."""
import numpy as np
import pytest

import rnncomp as rc
from rnncomp.train.data import lengths_mask, stream_batches
from rnncomp.train.plot import line_plot
from rnncomp.train.text import CharVocab, bits_per_char, char_data, corpus, softmax_pick

from gradcheck import random_data


def padded_problem(lengths=(5, 2, 7), seed=0, junk=0.0):
    """Separate sequences of a GRU(2, 3, 2) and their padded batch, padding filled with ``junk``
    (a number, or "random" for random values that must not matter)."""
    rng = np.random.default_rng(seed)
    xs = [rng.normal(size=(n, 2)) for n in lengths]
    ys = [rng.normal(size=(n, 2)) for n in lengths]
    x, L = rc.pad_sequences(xs, dtype="float64", value=0.0 if junk == "random" else junk)
    y, _ = rc.pad_sequences(ys, dtype="float64")
    if junk == "random":
        pad = lengths_mask(L, x.shape[0]) == 0
        x[pad] = rng.normal(size=x[pad].shape)
        y[pad] = rng.normal(size=y[pad].shape)
    return xs, ys, x, y, L


def test_pad_sequences():
    x, L = rc.pad_sequences([np.ones((2, 3)), 2 * np.ones((4, 3)), [1.0, 2.0, 3.0]][:2])
    assert x.shape == (4, 2, 3) and x.dtype == np.float32 and L.tolist() == [2, 4]
    assert (x[2:, 0] == 0).all() and (x[:, 1] == 2).all()
    x1, L1 = rc.pad_sequences([[1.0, 2.0, 3.0], [4.0]], value=-1)
    assert x1[:, :, 0].T.tolist() == [[1, 2, 3], [4, -1, -1]] and L1.tolist() == [3, 1]
    with pytest.raises(ValueError, match="different widths"):
        rc.pad_sequences([np.ones((2, 3)), np.ones((2, 4))])
    with pytest.raises(ValueError, match="T_i >= 1"):
        rc.pad_sequences([np.ones((0, 3))])


def test_padded_batch_equals_separate_sequences():
    """Loss and gradient of a padded batch = the length-weighted mean of the per-sequence ones."""
    cell = rc.cells.gru(2, 3, 2)
    params = random_data(cell)[0]
    xs, ys, x, y, L = padded_problem(junk="random")
    model = rc.compile(cell, backend="numpy")
    parts = [model.loss_and_grad(params, xi[:, None], yi[:, None]) for xi, yi in zip(xs, ys)]
    w = L / L.sum()
    loss = sum(wi * p[0] for wi, p in zip(w, parts))
    grad = {k: sum(wi * p[1][k] for wi, p in zip(w, parts)) for k in params}

    tr = rc.Trainer(cell, rc.SGD(1.0), backend="numpy", dtype="float64", params=params)
    assert tr.evaluate(x, y, lengths=L) == pytest.approx(loss, rel=1e-12)
    tr.fit(x, y, epochs=1, batch_size=3, shuffle=False, verbose=0, lengths=L)  # one step: θ - ∇
    for k in params:
        np.testing.assert_allclose(params[k] - tr.params[k], grad[k], rtol=1e-10, atol=1e-14, err_msg=k)


@pytest.mark.parametrize("bptt", [None, rc.Truncated(2, 4)], ids=["full", "truncated"])
def test_padding_contributes_nothing(bptt):
    """Whatever the padding holds, training (full or truncated BPTT, where some windows are all
    padding) ends at the same parameters."""
    cell = rc.cells.elman(2, 3, 2)
    params = random_data(cell)[0]
    out = []
    for junk in (0.0, "random"):
        _, _, x, y, L = padded_problem(junk=junk)
        tr = rc.Trainer(cell, rc.Adam(0.05), backend="numpy", dtype="float64", params=params, bptt=bptt)
        tr.fit(x, y, epochs=3, batch_size=2, verbose=0, lengths=L)
        out.append(tr.flat.copy())
    np.testing.assert_allclose(out[0], out[1], rtol=1e-13, atol=1e-15)


def test_predict_with_lengths_stops_each_sequence_at_its_end():
    cell = rc.cells.lstm(2, 3, 2)
    params = random_data(cell)[0]
    xs, _, x, _, L = padded_problem(junk="random")
    tr = rc.Trainer(cell, backend="numpy", dtype="float64", params=params)
    out, final = tr.predict(x, lengths=L)
    for i, xi in enumerate(xs):
        oi, fi = tr.predict(xi[:, None])
        np.testing.assert_allclose(out["y"][:L[i], i], oi["y"][:, 0], rtol=1e-12)
        assert (out["y"][L[i]:, i] == 0).all()
        for s in ("h", "c"):
            np.testing.assert_allclose(final[s][i], fi[s][0], rtol=1e-12)
    with pytest.raises(rc.CallError, match="lengths must lie in 1"):
        tr.predict(x, lengths=[5, 0, 7])
    with pytest.raises(rc.CallError, match="lengths must be 3 integers"):
        tr.evaluate(x, x[..., :2], lengths=[5, 2])


def test_stream_batches_continue_each_other():
    s = np.arange(103)
    b = stream_batches(s, T=5, batch_size=4)[:, :, 0]    # 4 streams of 25 steps: 5 windows each
    assert b.shape == (5, 20)
    for k in range(4):  # batch k+1's column j starts where batch k's column j ended
        np.testing.assert_array_equal(b[0, (k + 1) * 4:(k + 2) * 4], b[-1, k * 4:(k + 1) * 4] + 1)
    assert sorted(b.ravel().tolist()) == list(range(100))


def test_stateful_fit_carries_the_state_between_batches():
    """fit(stateful=True) = a hand loop: batch k starts from batch k-1's final state (computed
    before the update), reset at each epoch."""
    cell = rc.cells.gru(2, 3, 2)
    params, inputs, targets = random_data(cell, T=4, B=6)
    tr = rc.Trainer(cell, rc.SGD(0.1), backend="numpy", dtype="float64", params=params)
    tr.fit(inputs, targets, epochs=2, batch_size=2, shuffle=False, stateful=True, verbose=0)
    oracle = rc.compile(cell, backend="numpy")
    p = {k: v.copy() for k, v in params.items()}
    x, y = inputs["x"], targets["target"]
    for _ in range(2):
        state = None
        for c in (slice(0, 2), slice(2, 4), slice(4, 6)):
            _, g, state = oracle.loss_and_grad(p, x[:, c], y[:, c], h0=state)
            p = {k: p[k] - 0.1 * g[k] for k in p}
    for k in p:
        np.testing.assert_allclose(tr.params[k], p[k], rtol=1e-12, atol=1e-14, err_msg=k)
    stateless = rc.Trainer(cell, rc.SGD(0.1), backend="numpy", dtype="float64", params=params)
    stateless.fit(inputs, targets, epochs=2, batch_size=2, shuffle=False, verbose=0)
    assert not np.allclose(stateless.flat, tr.flat)
    with pytest.raises(rc.CallError, match="shuffle=False"):
        tr.fit(inputs, targets, stateful=True, shuffle=True, verbose=0)
    with pytest.raises(rc.CallError, match="through the padding"):
        tr.fit(inputs, targets, stateful=True, lengths=np.full(6, 4), verbose=0)


def test_stateful_with_truncated_windows_and_a_short_last_batch():
    """Truncated BPTT inside each batch, the state carried across batches; the last batch has
    fewer streams (5 = 2 + 2 + 1) and takes the first rows of the carried state."""
    cell = rc.cells.elman(2, 3, 2)
    params, inputs, targets = random_data(cell, T=4, B=5)
    tr = rc.Trainer(cell, rc.SGD(0.1), backend="numpy", dtype="float64", params=params,
                    bptt=rc.Truncated(2))
    tr.fit(inputs, targets, epochs=1, batch_size=2, stateful=True, verbose=0)
    oracle = rc.compile(cell, backend="numpy")
    p = {k: v.copy() for k, v in params.items()}
    x, y = inputs["x"], targets["target"]
    state = None
    for c in (slice(0, 2), slice(2, 4), slice(4, 5)):
        state = None if state is None else {k: v[:c.stop - c.start] for k, v in state.items()}
        for w in (slice(0, 2), slice(2, 4)):
            _, g, state = oracle.loss_and_grad(p, x[w, c], y[w, c], h0=state)
            p = {k: p[k] - 0.1 * g[k] for k in p}
    for k in p:
        np.testing.assert_allclose(tr.params[k], p[k], rtol=1e-12, atol=1e-14, err_msg=k)


def test_evaluate_in_pieces_equals_evaluate_at_once():
    cell = rc.cells.lstm(2, 3, 2)
    params, inputs, targets = random_data(cell, T=9, B=5)
    mask = (np.random.default_rng(3).random((9, 5)) > 0.3).astype(float)
    mask[:4, 1] = 0  # a whole window without a counted step
    tr = rc.Trainer(cell, backend="numpy", dtype="float64", params=params)
    whole = tr.evaluate(inputs, targets, mask=mask)
    assert whole == pytest.approx(rc.compile(cell).loss_and_grad(params, inputs, targets, mask=mask)[0],
                                  rel=1e-14)
    for window, bs in [(4, None), (None, 2), (2, 3), (1, 1)]:
        assert tr.evaluate(inputs, targets, mask=mask, window=window, batch_size=bs) == \
            pytest.approx(whole, rel=1e-12)


def test_generate_feeds_back_the_picked_inputs():
    cell = rc.cells.elman(2, 4, 2)
    params, inputs, _ = random_data(cell, T=3, B=2)
    tr = rc.Trainer(cell, backend="numpy", dtype="float64", params=params)
    gen, final = tr.generate(inputs["x"], 4, lambda y, rng: np.tanh(y))
    out, state = tr.predict(inputs["x"])
    for t in range(4):
        nxt = np.tanh(out["y"][-1])
        np.testing.assert_allclose(gen[t], nxt, rtol=1e-13)
        out, state = tr.predict(nxt[None], h0=state)
    np.testing.assert_allclose(final["h"], state["h"], rtol=1e-13)


def test_plot_writes_a_png_of_the_learning_curve(tmp_path):
    from matplotlib.image import imread
    cell = rc.cells.elman(1, 4, 1)
    tr = rc.Trainer(cell, rc.Adam(0.01), backend="numpy", dtype="float64")
    with pytest.raises(rc.TrainingError, match="nothing to draw"):
        tr.plot(tmp_path / "empty.png")
    x = np.sin(np.linspace(0, 6, 21))[:, None, None].repeat(8, 1)
    tr.fit(x[:-1], x[1:], epochs=5, batch_size=2, verbose=0)
    assert len(tr.batch_history) == 20
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert tr.plot(a) == str(a)
    tr.plot(b)
    assert a.read_bytes() == b.read_bytes()  # deterministic
    img = (imread(a)[..., :3] * 255).round()
    curve = (np.abs(img - (31, 119, 180)) < 2).all(axis=-1)  # the epoch-mean line's colour
    assert curve.sum() > 100 and len(np.unique(np.nonzero(curve)[1])) > 300  # drawn across the plot


def _overlap(a, b) -> bool:
    return not (a.x1 <= b.x0 or b.x1 <= a.x0 or a.y1 <= b.y0 or b.y1 <= a.y0)


def test_line_plots_are_readable(tmp_path):
    """The hand-drawn plots' faults (issue #18): a font without [ ] ! # * < > @ { } (the
    adding example's title read |dL/dh?t?|), 22 decade labels on one axis, a legend over
    the curves.  Now: the text as written, at most ~8 labelled ticks, the legend outside."""
    t = np.arange(101)
    flows = [np.exp(-0.5 * t), np.exp(-0.1 * t), np.ones(101)]       # 1 … 1e-22
    title = "|dL/dh[t]| {x} <y> @ #1 * !"
    fig = line_plot(tmp_path / "f.png", [(t, f) for f in flows], title=title, xlabel="t",
                    ylabel="gradient norm", legend=["gru", "lstm", "elman"])
    (ax,) = fig.axes
    assert ax.get_title() == title and ax.get_xlabel() == "t" and ax.get_ylabel() == "gradient norm"
    assert ax.get_yscale() == "log"
    fig.canvas.draw()
    labelled = [tk for tk in ax.yaxis.get_ticklabels(which="both") if tk.get_text() and tk.get_visible()
                and ax.get_ylim()[0] <= tk.get_position()[1] <= ax.get_ylim()[1]]
    assert 3 <= len(labelled) <= 10, [tk.get_text() for tk in labelled]
    renderer = fig.canvas.get_renderer()
    legend = ax.get_legend()
    assert [x.get_text() for x in legend.get_texts()] == ["gru", "lstm", "elman"]
    assert not _overlap(legend.get_window_extent(renderer), ax.get_window_extent(renderer))
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"

def test_char_vocab_and_data():
    text = "abc" * 500
    v = CharVocab(text)
    assert v.chars == "abc" and len(v) == 3 and v.decode(v.encode("cab")) == "cab"
    with pytest.raises(ValueError, match="not in the vocabulary"):
        v.encode("abd")
    d = char_data(text, T=5, batch_size=4, held_out=0.25)
    assert d.x_train.shape[0] == 5 and d.x_train.shape[2] == 3 and d.x_train.shape[1] % 4 == 0
    xi, yi = d.x_train.argmax(-1), d.y_train.argmax(-1)
    np.testing.assert_array_equal((xi + 1) % 3, yi)  # each target is the next character
    assert ((d.x_test.argmax(-1) + 1) % 3 == d.y_test.argmax(-1)).all()
    assert bits_per_char(np.log(3)) == pytest.approx(np.log2(3))
    pick = softmax_pick(3, temperature=0)
    np.testing.assert_array_equal(pick(np.array([[0.1, 2.0, 0.3]]), None), [[0, 1, 0]])
    sampled = softmax_pick(3, 1.0)(np.array([[0.0, 0.0, 50.0]]), np.random.default_rng(0))
    np.testing.assert_array_equal(sampled, [[0, 0, 1]])


def test_shipped_corpus():
    text = corpus()
    assert 250_000 < len(text) < 400_000 and text.startswith("PRIDE AND PREJUDICE")
    with pytest.raises(FileNotFoundError, match="shipped: pride_and_prejudice"):
        corpus("no_such_text")


def test_a_plot_without_axis_labels_is_refused(tmp_path):
    with pytest.raises(ValueError, match="label both axes"):
        line_plot(tmp_path / "x.png", [([0, 1], [1, 2])], xlabel="t")
