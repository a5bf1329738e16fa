"""Trainer: optimizers against independent per-parameter NumPy updates, truncated BPTT, checkpoints."""
import numpy as np
import pytest
import sympy as sp

import rnncomp as rc

from gradcheck import random_data
from resume_check import resumed


def ref_update(kind, p, g, st, t, lr, **hp):
    """Textbook update of one parameter array (written independently of rnncomp.train.optim)."""
    if kind == "sgd":
        mu, nest = hp.get("momentum", 0.0), hp.get("nesterov", False)
        v = st.setdefault("v", np.zeros_like(p))
        v[...] = mu * v + g
        return p - lr * ((g + mu * v) if nest else v) if mu else p - lr * g
    if kind in ("adam", "adamw"):
        b1, b2, eps, wd = 0.9, 0.999, 1e-8, hp.get("weight_decay", 0.0)
        m = st.setdefault("m", np.zeros_like(p))
        v = st.setdefault("v", np.zeros_like(p))
        if kind == "adam" and wd:
            g = g + wd * p
        m[...] = b1 * m + (1 - b1) * g
        v[...] = b2 * v + (1 - b2) * g ** 2
        step = lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
        return p - step - (lr * wd * p if kind == "adamw" else 0)
    if kind == "rmsprop":
        s = st.setdefault("s", np.zeros_like(p))
        s[...] = 0.99 * s + 0.01 * g ** 2
        return p - lr * g / (np.sqrt(s) + 1e-8)
    s = st.setdefault("s", np.zeros_like(p))  # adagrad
    s[...] = s + g ** 2
    return p - lr * g / (np.sqrt(s) + 1e-10)


OPTS = [("sgd", lambda: rc.SGD(0.1), {}), ("sgd", lambda: rc.SGD(0.1, momentum=0.9), {"momentum": 0.9}),
        ("sgd", lambda: rc.SGD(0.1, momentum=0.9, nesterov=True), {"momentum": 0.9, "nesterov": True}),
        ("adam", lambda: rc.Adam(0.01), {}), ("adam", lambda: rc.Adam(0.01, weight_decay=0.1), {"weight_decay": 0.1}),
        ("adamw", lambda: rc.AdamW(0.01, weight_decay=0.1), {"weight_decay": 0.1}),
        ("rmsprop", lambda: rc.RMSprop(0.01), {}), ("adagrad", lambda: rc.Adagrad(0.1), {})]


@pytest.mark.parametrize("kind, make, hp", OPTS, ids=[f"{k}{i}" for i, (k, _, _) in enumerate(OPTS)])
def test_optimizer_matches_reference(kind, make, hp):
    cell = rc.cells.elman(2, 3, 1)
    params, inputs, targets = random_data(cell, T=4, B=2)
    tr = rc.Trainer(cell, make(), backend="numpy", dtype="float64", params=params)
    ref = {k: v.copy() for k, v in params.items()}
    states = {k: {} for k in ref}
    oracle = rc.compile(cell, backend="numpy")
    lr = make().lr
    for t in range(1, 4):
        _, g, _ = oracle.loss_and_grad(ref, inputs, targets)
        ref = {k: ref_update(kind, ref[k], g[k], states[k], t, lr, **hp) for k in ref}
        tr.train_step(inputs, targets)
        for k in ref:
            np.testing.assert_allclose(tr.params[k], ref[k], rtol=1e-12, atol=1e-14, err_msg=k)


def test_clip_by_norm_and_value():
    cell = rc.cells.elman(2, 3, 1)
    params, inputs, targets = random_data(cell, T=4, B=2)
    targets = {"target": targets["target"] * 100}  # big gradients
    for kw, bound in [({"clip_norm": 0.5}, 0.5), ({"clip_value": 0.01}, None)]:
        tr = rc.Trainer(cell, rc.SGD(1.0), backend="numpy", dtype="float64", params=params, **kw)
        before = tr.flat.copy()
        tr.train_step(inputs, targets)
        step = before - tr.flat
        if bound:
            assert np.linalg.norm(step) == pytest.approx(bound, rel=1e-12)
        else:
            assert np.abs(step).max() == pytest.approx(0.01, rel=1e-12)


def test_truncated_full_window_is_full_bptt():
    cell = rc.cells.gru(2, 3, 1)
    params, inputs, targets = random_data(cell, T=6, B=2)
    a = rc.Trainer(cell, rc.SGD(0.1), backend="numpy", dtype="float64", params=params)
    b = rc.Trainer(cell, rc.SGD(0.1), backend="numpy", dtype="float64", params=params, bptt=rc.Truncated(6, 6))
    a.fit(inputs, targets, epochs=1, batch_size=2, shuffle=False, verbose=0)
    b.fit(inputs, targets, epochs=1, batch_size=2, shuffle=False, verbose=0)
    np.testing.assert_array_equal(a.flat, b.flat)


def test_truncated_windows_match_hand_computation():
    """BPTT(k1=2, k2=4), T=6: windows of losses [0,2), [2,4), [4,6), back-propagated through
    [0,2), [0,4), [2,6); the state is carried from each window's forward run."""
    cell = rc.cells.elman(2, 3, 1)
    params, inputs, targets = random_data(cell, T=6, B=2)
    tr = rc.Trainer(cell, rc.SGD(0.1), backend="numpy", dtype="float64", params=params,
                    bptt=rc.Truncated(2, 4))
    tr.fit(inputs, targets, epochs=1, batch_size=2, shuffle=False, verbose=0)
    oracle = rc.compile(cell, backend="numpy")
    p = {k: v.copy() for k, v in params.items()}
    x, y = inputs["x"], targets["target"]
    state = {}
    for lo, hi, start in [(0, 2, 0), (2, 4, 0), (4, 6, 2)]:
        mask = np.zeros((hi - start, 2))
        mask[lo - start:] = 1
        _, g, final = oracle.loss_and_grad(p, x[start:hi], y[start:hi], h0=state.get(start), mask=mask)
        p = {k: p[k] - 0.1 * g[k] for k in p}
        state[hi] = final
    for k in p:
        np.testing.assert_allclose(tr.params[k], p[k], rtol=1e-12, atol=1e-14, err_msg=k)


def test_non_finite_gradient_stops_without_corrupting():
    cell = rc.Cell("nan")
    x, h = cell.input("x", 2), cell.state("h", 2)
    cell.update(h, cell.param("W", (2, 2)) @ x)
    cell.loss(sp.log(h.new - cell.target("t", 2)))  # log of a negative number: NaN
    tr = rc.Trainer(cell, rc.SGD(0.1), backend="numpy", dtype="float64")
    before = tr.flat.copy()
    with np.errstate(invalid="ignore"), pytest.raises(rc.TrainingError, match=r"step 1: non-finite loss \(nan\); parameters left unchanged"):
        tr.train_step(np.ones((3, 1, 2)), np.full((3, 1, 2), 5.0))
    np.testing.assert_array_equal(tr.flat, before)


def test_checkpoint_resume_is_exact_and_checks_the_cell(tmp_path):
    cell = rc.cells.lstm(2, 4, 1)
    params, inputs, targets = random_data(cell, T=5, B=4)
    a = rc.Trainer(cell, rc.Adam(0.01), backend="native", dtype="float64", params=params, cache=None)
    a.fit(inputs, targets, epochs=1, batch_size=2, shuffle=False, verbose=0)
    path = tmp_path / "ckpt.pkl"
    a.save(path)
    a.fit(inputs, targets, epochs=1, batch_size=2, shuffle=False, verbose=0)
    b = rc.Trainer.load(path, cell=rc.cells.lstm(2, 4, 1), dtype="float64", cache=None)
    b.fit(inputs, targets, epochs=1, batch_size=2, shuffle=False, verbose=0)
    np.testing.assert_array_equal(a.flat, b.flat)
    assert b.step_count == a.step_count == 4
    with pytest.raises(rc.TrainingError, match="other equations or sizes"):
        rc.Trainer.load(path, cell=rc.cells.lstm(2, 5, 1))
    assert [f.name for f in tmp_path.iterdir()] == ["ckpt.pkl"]  # no temp files left behind


def test_shuffled_epochs_continue_across_fit_calls_and_checkpoints(tmp_path):
    # fit(2) + save/load + fit(2) is fit(4) bit for bit with shuffling too: every fit call
    # restarted its orders from seed 0, so epochs 3-4 repeated the orders of 1-2 (found by a probe)
    cell = rc.cells.gru(1, 4, 1)
    params, inputs, targets = random_data(cell, T=6, B=12)
    make = lambda: rc.Trainer(cell, rc.SGD(0.05, momentum=0.9), backend="numpy", dtype="float64",  # noqa: E731
                              params=params)
    a = make()
    a.fit(inputs, targets, epochs=4, batch_size=3, verbose=0)
    b = resumed(make, inputs, targets, tmp_path / "t.ckpt", 2, 2, batch_size=3)
    np.testing.assert_array_equal(a.flat, b.flat)
    assert a.history == b.history and a.batch_history == b.batch_history
    # epoch by epoch in one trainer (a loop of fit(epochs=1)): the same, and each call starts
    # from where the last left the orders, not by redrawing every earlier epoch's (quadratic)
    c = make()
    for k in range(4):
        c.fit(inputs, targets, epochs=1, batch_size=3, verbose=0)
        assert c._orders["at"] == (0, 12, k + 1)
    np.testing.assert_array_equal(a.flat, c.flat)


def test_fit_learns_a_sine(capsys):
    cell = rc.cells.elman(1, 16, 1)
    s = np.sin(np.linspace(0, 20, 101))[:, None, None] * np.linspace(0.5, 1.0, 8)[None, :, None]
    tr = rc.Trainer(cell, rc.Adam(0.01), backend="native", dtype="float32", cache=None)
    hist = tr.fit(s[:-1].astype(np.float32), s[1:].astype(np.float32), epochs=30, batch_size=8, verbose=1)
    assert hist[-1] < 0.2 * hist[0]
    assert "tokens/s" in capsys.readouterr().out


def test_missing_targets_and_a_cell_without_parameters_are_named_errors():
    """Found by the #19 audit: both were bare ValueErrors from tuple unpacking and np.concatenate."""
    tr = rc.Trainer(rc.cells.elman(2, 3, 1), backend="numpy")
    x = np.zeros((4, 2, 2))
    for call in (lambda: tr.fit(x, None), lambda: tr.evaluate(x, None)):
        with pytest.raises(rc.TrainingError, match=r"'elman': targets is None, but its loss reads target"):
            call()
    free = rc.Cell("free")
    xin, h = free.input("x", 2), free.state("h", 2)
    free.update(h, sp.tanh(h + xin))
    y = free.output("y", h.new)
    free.loss(y ** 2)
    with pytest.raises(rc.TrainingError, match=r"'free' declares no parameters, so a Trainer has nothing to train"):
        rc.Trainer(free, backend="numpy")
    # a loss that reads no target trains with targets=None
    own = rc.Cell("own_target")
    xin, h = own.input("x", 2), own.state("h", 2)
    W = own.param("W", (2, 2))
    own.update(h, sp.tanh(W @ h + xin))
    own.loss(own.output("y", h.new) ** 2)
    tr = rc.Trainer(own, backend="numpy", optimizer=rc.SGD(0.1))
    before = tr.evaluate(np.ones((4, 2, 2)), None)
    tr.fit(np.ones((4, 2, 2)), None, epochs=3)
    assert tr.evaluate(np.ones((4, 2, 2)), None) < before


@pytest.mark.parametrize("update", ["numpy", "native"])
def test_ctrl_c_during_an_update_is_raised_when_the_update_is_whole(update, tmp_path):
    """A Ctrl-C that lands after the optimizer wrote the parameters but before the step count
    advanced left them disagreeing, and the checkpoint ``fit`` saves on Ctrl-C held an update
    under the previous count (found by the audit of #22).  Now ``fit`` holds it until the
    update is whole: the parameters, the optimizer state and the count, in memory and in the
    checkpoint, equal a run of two steps with no Ctrl-C."""
    import signal
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 2, 1)), rng.normal(size=(6, 2, 1))
    make = lambda: rc.Trainer(rc.cells.elman(1, 3, 1), rc.Adam(0.1), backend="numpy",  # noqa: E731
                              dtype="float64", update=update)
    ref, tr = make(), make()
    ref.fit(x, y, epochs=2, batch_size=2, shuffle=False)
    calls = []

    def interrupted_second(real):
        def call(*a):
            out = real(*a)
            calls.append(1)
            if len(calls) == 2:
                signal.raise_signal(signal.SIGINT)  # after the write, before the count
            return out
        return call

    if update == "native":
        tr._update = interrupted_second(tr._update)
    else:
        tr.optimizer.step = interrupted_second(tr.optimizer.step)
    with pytest.raises(KeyboardInterrupt):
        tr.fit(x, y, epochs=5, batch_size=2, shuffle=False, callbacks=[rc.train.Checkpoint(tmp_path / "c.ckpt")])
    saved = rc.Trainer.load(tmp_path / "c.ckpt")
    for got in (tr, saved):
        assert got.step_count == ref.step_count == 2
        np.testing.assert_array_equal(got.flat, ref.flat)
        for k, v in ref.optimizer.state.items():
            np.testing.assert_array_equal(got.optimizer.state[k], v)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


def test_a_flag_a_second_ctrl_c_left_behind_is_no_interrupt():
    """Found by the review of session 16: a second Ctrl-C landing after an update cleared its
    'updating' mark but before it read the held flag raised at once and left the flag set, so
    the next fit raised KeyboardInterrupt after its first update.  A new update clears it."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 2, 1)), rng.normal(size=(6, 2, 1))
    tr = rc.Trainer(rc.cells.elman(1, 3, 1), rc.Adam(0.1), backend="numpy", dtype="float64")
    tr._interrupted = True  # what that race leaves
    try:
        tr.fit(x, y, epochs=2, batch_size=2)
    except KeyboardInterrupt:  # (not left to stop the test session)
        pytest.fail("a flag left by an earlier Ctrl-C raised KeyboardInterrupt")
    assert tr.step_count == 2
