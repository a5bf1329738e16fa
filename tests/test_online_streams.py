"""A stream fed to fit_online in pieces trains as the whole stream (continue_stream=True), also
across a checkpoint; fit refuses an online algorithm it would not run.  Before: every call
started the sensitivities from zero, so RTRL fed k steps at a time with every=k was truncated
BPTT(k), and Trainer(gradient=rc.RTRL()).fit trained by BPTT without a word."""
import numpy as np
import pytest

import rnncomp as rc
from rnncomp.errors import CallError, TrainingError

ALGOS = {"rtrl": lambda: rc.RTRL(), "snap1": lambda: rc.SnAp(1), "uoro": lambda: rc.UORO(seed=3)}


def _stream(T=24, B=2):
    rng = np.random.default_rng(0)
    return rng.normal(size=(T, B, 2)), rng.normal(size=(T, B, 1))


def _trainer(algo, backend):
    return rc.Trainer(rc.cells.elman(2, 4, 1), optimizer=rc.Adam(1e-2), gradient=ALGOS[algo](),
                      backend=backend, dtype="float64")


@pytest.mark.parametrize("backend", ["numpy", "native"])
@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_a_stream_fed_in_pieces_trains_as_the_whole_stream(algo, backend, tmp_path):
    x, y = _stream()
    whole = _trainer(algo, backend)
    whole.fit_online(x, y, every=4)
    pieces = _trainer(algo, backend)
    for lo in range(0, 24, 8):  # the last call's states and sensitivities carried on
        pieces.fit_online(x[lo:lo + 8], y[lo:lo + 8], every=4, continue_stream=lo > 0)
    # the same windows, in the same order: the same arithmetic
    np.testing.assert_array_equal(pieces.flat, whole.flat)
    # the way the docs gave it before: h0=trainer.online_state (that dict) continues too
    documented = _trainer(algo, backend)
    for lo in range(0, 24, 8):
        documented.fit_online(x[lo:lo + 8], y[lo:lo + 8], every=4, h0=documented.online_state if lo else None)
    np.testing.assert_array_equal(documented.flat, whole.flat)
    # across a checkpoint
    first = _trainer(algo, backend)
    first.fit_online(x[:12], y[:12], every=4)
    first.save(tmp_path / "s.ckpt")
    resumed = rc.Trainer.load(tmp_path / "s.ckpt")
    resumed.fit_online(x[12:], y[12:], every=4, continue_stream=True)
    np.testing.assert_array_equal(resumed.flat, whole.flat)
    # a new stream from the same states is not the continued one (the sensitivities restart)
    fresh = _trainer(algo, backend)
    fresh.fit_online(x[:12], y[:12], every=4)
    fresh.fit_online(x[12:], y[12:], every=4, h0={"h": fresh.online_state["h"].copy()})
    assert not np.array_equal(fresh.flat, whole.flat)


def test_rtrl_in_pieces_is_not_truncated_bptt():
    x, y = _stream()
    pieces = _trainer("rtrl", "numpy")
    for lo in range(0, 24, 4):
        pieces.fit_online(x[lo:lo + 4], y[lo:lo + 4], every=4, continue_stream=lo > 0)
    tbptt = rc.Trainer(rc.cells.elman(2, 4, 1), optimizer=rc.Adam(1e-2), gradient=rc.BPTT(), backend="numpy",
                       dtype="float64")
    tbptt.fit_online(x, y, every=4)
    assert np.abs(pieces.flat - tbptt.flat).max() > 1e-6


def test_continuing_what_cannot_be_continued_is_named():
    x, y = _stream()
    tr = _trainer("rtrl", "numpy")
    with pytest.raises(CallError, match="there is no stream to continue"):
        tr.fit_online(x, y, continue_stream=True)
    tr.fit_online(x[:4], y[:4], every=4)
    # (the user gave no h0: the message says what the pieces disagree on, not "h0['h'] has shape")
    with pytest.raises(CallError, match=r"these steps hold 1 sequences, but the stream they would continue "
                                        r"has 2 \(trainer.online_state\)"):
        tr.fit_online(x[4:8, :1], y[4:8, :1], every=4, continue_stream=True)
    tr.fit_online(x[:4], y[:4], every=4)
    with pytest.raises(CallError, match="give h0= .* or continue_stream=True .*, not both"):
        tr.fit_online(x[4:8], y[4:8], h0={"h": np.zeros((2, 4))}, continue_stream=True)
    with pytest.raises(CallError, match="continue_stream must be True or False, got 'yes'"):
        tr.fit_online(x[4:8], y[4:8], continue_stream="yes")


def test_two_uoro_streams_draw_different_signs():
    # each call re-seeded the generator: every stream (or piece of one) drew the same signs
    x, y = _stream(T=8)
    make = lambda: rc.Trainer(rc.cells.elman(2, 4, 1), optimizer=rc.SGD(0.1), gradient=rc.UORO(seed=3),  # noqa: E731
                              backend="numpy", dtype="float64")
    tr = make()
    tr.fit_online(x, y, every=8)
    b = make()
    b.flat[:] = tr.flat  # the same parameters (SGD keeps no state): only the signs can differ
    tr.fit_online(x, y, every=8)  # this trainer's second stream
    b.fit_online(x, y, every=8)   # b's first: the generator's first signs
    assert not np.array_equal(tr.flat, b.flat)


@pytest.mark.parametrize("gradient", [rc.RTRL(), rc.SnAp(1), rc.UORO(), rc.DNI()], ids=repr)
def test_fit_refuses_an_algorithm_it_would_not_run(gradient):
    x, y = _stream(T=6, B=4)
    tr = rc.Trainer(rc.cells.elman(2, 4, 1), optimizer=rc.SGD(0.1), gradient=gradient, backend="numpy",
                    dtype="float64")
    with pytest.raises(TrainingError, match=r"Trainer.fit trains each batch by BPTT; gradient=rc\.\w+\(.*\) is the "
                                            r"algorithm of fit_online"):
        tr.fit(x, y, epochs=1, batch_size=4, verbose=0)
    before = tr.flat.copy()
    tr.fit_online(x, y, every=3)  # where it applies
    assert not np.array_equal(tr.flat, before)


def test_a_pickled_trainer_continues_the_stream():
    import pickle
    x, y = _stream()
    whole = _trainer("snap1", "native")
    whole.fit_online(x, y, every=4)
    first = _trainer("snap1", "native")
    first.fit_online(x[:12], y[:12], every=4)
    copy = pickle.loads(pickle.dumps(first))
    copy.fit_online(x[12:], y[12:], every=4, continue_stream=True)
    np.testing.assert_array_equal(copy.flat, whole.flat)


def test_a_checkpoints_carry_is_not_used_after_another_call(tmp_path):
    x, y = _stream()
    tr = _trainer("rtrl", "numpy")
    tr.fit_online(x[:8], y[:8], every=4)
    tr.save(tmp_path / "a.ckpt")
    back = rc.Trainer.load(tmp_path / "a.ckpt")
    back.gradient = rc.BPTT()
    back.fit_online(x[8:16], y[8:16], every=4, continue_stream=True)  # the states move on by BPTT
    back.gradient = rc.RTRL()
    with pytest.raises(CallError, match="the last call left no carry of this algorithm"):
        back.fit_online(x[16:], y[16:], every=4, continue_stream=True)
